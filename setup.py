"""Build script. Package metadata lives in pyproject.toml; this file adds the
compiled extensions from csrc/:

- ``sam_edge._C``: CPU post-processing kernels (C++17, OpenMP when the compiler
  has it). Always built.
- ``sam_edge._C_cuda``: the same operations as CUDA kernels, built when nvcc is
  found, as a fatbin for sm_80 (A100), sm_86 (A10, RTX 30), sm_87 (Jetson
  Orin), sm_89 (L4, L40S, RTX 40), sm_90 (H100, H200) plus compute_90 PTX for
  later GPUs. The kernels use sm_80 warp reductions, so nothing older.
- ``sam_edge/libsam_edge_ops.so``: the same CPU kernels as ONNX Runtime custom
  ops (csrc/ort/), a plain shared library that any ORT host loads. Always built.

Environment:
    SAM_EDGE_NO_CUDA=1        skip the CUDA extension even when nvcc exists.
    SAM_EDGE_CUDA_ARCHS=...   semicolon/comma list overriding the targets, e.g.
                              "87;90" or "80,86,90+PTX" (a "+PTX" suffix adds PTX).
                              ``python setup.py --print-cuda-gencode`` prints the
                              nvcc flags (csrc/check_cuda_build.sh uses them).
    SAM_EDGE_NVCC_THREADS=N   targets nvcc compiles at once (default 0: one per CPU).
    CUDA_HOME / CUDA_PATH     where to look for nvcc, besides PATH.

A compile error in either extension fails the build: when CUDA was found and
not disabled, a broken .cu file is an error, not a silent CPU-only install.
"""

import hashlib
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

from pybind11.setup_helpers import Pybind11Extension
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
CSRC = Path("csrc")
DEFAULT_CUDA_ARCHS = "80;86;87;89;90+PTX"


def _truthy(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def find_nvcc():
    """Path of nvcc, or None."""
    if _truthy("SAM_EDGE_NO_CUDA"):
        return None
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and (Path(home) / "bin" / "nvcc").is_file():
            return str(Path(home) / "bin" / "nvcc")
    return shutil.which("nvcc")


def cuda_arch_spec():
    """The targets to build: SAM_EDGE_CUDA_ARCHS, else DEFAULT_CUDA_ARCHS."""
    return (os.environ.get("SAM_EDGE_CUDA_ARCHS") or DEFAULT_CUDA_ARCHS).strip()


def cuda_gencode_flags(spec=None):
    """-gencode flags for "80;86;90+PTX"-style specs (SAM_EDGE_CUDA_ARCHS)."""
    spec = spec or cuda_arch_spec()
    flags = []
    for item in re.split(r"[;,\s]+", spec.strip()):
        if not item:
            continue
        arch, ptx = (item[:-4], True) if item.upper().endswith("+PTX") else (item, False)
        arch = arch.replace("sm_", "").replace(".", "")
        if not arch.isdigit():
            raise ValueError(f"SAM_EDGE_CUDA_ARCHS: cannot read {item!r}; expected e.g. '80;86;90+PTX'")
        if int(arch) < 80:
            raise ValueError(f"SAM_EDGE_CUDA_ARCHS: sm_{arch} is below sm_80, which the kernels' warp reductions need")
        flags += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
        if ptx:
            flags += ["-gencode", f"arch=compute_{arch},code=compute_{arch}"]
    if not flags:
        raise ValueError("SAM_EDGE_CUDA_ARCHS names no architecture")
    return flags


def compiler_has_openmp():
    """Whether the C++ compiler accepts -fopenmp (and can link it)."""
    cxx = os.environ.get("CXX") or sysconfig.get_config_var("CXX") or "c++"
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "omp.cpp"
        src.write_text("#include <omp.h>\nint main() { return omp_get_max_threads() > 0 ? 0 : 1; }\n")
        cmd = cxx.split() + ["-fopenmp", str(src), "-o", str(Path(tmp) / "omp")]
        try:
            return subprocess.run(cmd, capture_output=True).returncode == 0
        except OSError:
            return False


CXX_FLAGS = ["-O3", "-ffp-contract=off", "-fvisibility=hidden"]
OPENMP = compiler_has_openmp() and not _truthy("SAM_EDGE_NO_OPENMP")
if not OPENMP:
    print("sam-edge: the compiler has no OpenMP; sam_edge._C will run single-threaded", file=sys.stderr)

cpu_ext = Pybind11Extension(
    "sam_edge._C",
    [str(p) for p in sorted((CSRC / "postprocess").glob("*.cpp"))]
    + [str(p) for p in sorted((CSRC / "attention").glob("*.cpp"))]
    + [str(CSRC / "task_runner.cpp"), str(CSRC / "mask_upscale_cpu.cpp"), str(CSRC / "bindings_attention.cpp"), str(CSRC / "bindings_postprocess.cpp"),
       str(CSRC / "bindings_mask_upscale.cpp"), str(CSRC / "module.cpp")],
    include_dirs=[str(CSRC)],
    cxx_std=17,
    extra_compile_args=CXX_FLAGS + (["-fopenmp"] if OPENMP else []),
    extra_link_args=["-fopenmp"] if OPENMP else [],
    depends=[str(CSRC / "postprocess.h"), str(CSRC / "attention.h"), str(CSRC / "bindings.h"),
             str(CSRC / "mask_upscale.h"), str(CSRC / "gelu_avx512.h"), str(CSRC / "quantize_linear_avx512.h"),
             str(CSRC / "task_runner.h")]
    + [str(p) for p in sorted((CSRC / "postprocess").glob("*.h")) + sorted((CSRC / "attention").glob("*.h"))],
)

NVCC = find_nvcc()
ext_modules = [cpu_ext]
if NVCC:
    cuda_home = Path(NVCC).resolve().parent.parent
    if not (cuda_home / "include" / "cuda_runtime_api.h").is_file():
        raise RuntimeError(
            f"sam-edge: found nvcc at {NVCC} but no CUDA headers under {cuda_home}/include; "
            "set CUDA_HOME to the toolkit, or SAM_EDGE_NO_CUDA=1 for a CPU-only build"
        )
    cuda_ext = Pybind11Extension(
        "sam_edge._C_cuda",
        [str(CSRC / "cuda" / "bindings_cuda.cpp")],
        include_dirs=[str(CSRC), str(CSRC / "cuda"), str(cuda_home / "include")],
        cxx_std=17,
        extra_compile_args=CXX_FLAGS,
        library_dirs=[str(cuda_home / "lib64"), str(cuda_home / "lib")],
        # Static cudart: the module then needs only the driver (libcuda) at run time.
        libraries=["cudart_static", "dl", "rt", "pthread"],
        depends=[str(p) for p in sorted((CSRC / "cuda").glob("*.h")) + sorted((CSRC / "cuda").glob("*.cuh"))],
        # The targets, for sam_edge.postprocess.cuda's messages when a device has none of them.
        define_macros=[("SAM_EDGE_CUDA_ARCHS", '"' + cuda_arch_spec() + '"')],
    )
    cuda_ext.cuda_sources = [str(p) for p in sorted((CSRC / "cuda").glob("*.cu"))]
    ext_modules.append(cuda_ext)

# The ONNX Runtime custom-op library. A plain shared library, not a Python
# module: ORT dlopens it in any host (C, C++, Triton, Python), so it is named
# libsam_edge_ops.so with no Python ABI tag (BuildExt.get_ext_filename). It links
# neither Python nor onnxruntime (csrc/ort/ort_abi.h; --no-undefined holds it to
# that) and compiles its kernels in, their symbols hidden from _C's copies.
ORT_OPS = "sam_edge.sam_edge_ops"
ort_ops_ext = Extension(
    ORT_OPS,
    [str(CSRC / "ort" / "sam_edge_ops.cpp"), str(CSRC / "ort" / "abi_check.cpp"), str(CSRC / "layer_norm_cpu.cpp"),
     str(CSRC / "gelu_quantize_cpu.cpp"), str(CSRC / "mask_upscale_cpu.cpp"), str(CSRC / "task_runner.cpp")]
    + [str(p) for p in sorted((CSRC / "attention").glob("*.cpp"))],
    include_dirs=[str(CSRC)],
    language="c++",
    # _C's flags: both compile csrc/attention/*.cpp to the same objects in build_temp.
    extra_compile_args=CXX_FLAGS + ["-g0", "-std=c++17"] + (["-fopenmp"] if OPENMP else []),
    extra_link_args=(["-Wl,--no-undefined"] if sys.platform.startswith("linux") else [])
    + (["-fopenmp"] if OPENMP else []),
    depends=[str(CSRC / "attention.h"), str(CSRC / "layer_norm.h"), str(CSRC / "gelu_quantize.h"),
             str(CSRC / "quantize_linear_avx512.h"), str(CSRC / "gelu_avx512.h"), str(CSRC / "mask_upscale.h"),
             str(CSRC / "task_runner.h")]
    + [str(p) for p in sorted((CSRC / "ort").glob("*.h")) + sorted((CSRC / "attention").glob("*.h"))],
)
ext_modules.append(ort_ops_ext)


class BuildExt(build_ext):
    """build_ext that compiles an extension's .cu files with nvcc first, and names
    the ONNX Runtime op library as the plain shared library it is."""

    def build_extension(self, ext):
        cuda_sources = getattr(ext, "cuda_sources", None)
        if cuda_sources:
            objects = self._nvcc_compile(ext, cuda_sources)
            ext.extra_objects = list(ext.extra_objects or []) + objects
            # A freshly compiled object (new sources or targets) must relink the module.
            ext.depends = list(ext.depends) + objects
        super().build_extension(ext)

    def get_ext_filename(self, fullname):
        # Asked with the dotted name or its last part alone (build_ext does both).
        *package, name = fullname.split(".")
        if name == ORT_OPS.rsplit(".", 1)[1] and package in ([], ORT_OPS.split(".")[:-1]):
            return os.path.join(*package, f"lib{name}.so")  # loaded by ONNX Runtime, never imported
        return super().get_ext_filename(fullname)

    def _nvcc_compile(self, ext, sources):
        out_dir = Path(self.build_temp) / "cuda"
        out_dir.mkdir(parents=True, exist_ok=True)
        objects = []
        gencode = cuda_gencode_flags()
        # The object's name carries its targets, so a new SAM_EDGE_CUDA_ARCHS rebuilds it.
        tag = hashlib.sha1(" ".join(gencode).encode()).hexdigest()[:10]
        for src in sources:
            obj = out_dir / f"{Path(src).stem}-{tag}.o"
            deps = [Path(src)] + [Path(d) for d in ext.depends]
            if not self.force and obj.exists() and all(obj.stat().st_mtime >= d.stat().st_mtime for d in deps):
                objects.append(str(obj))
                continue
            cmd = [
                NVCC, "-c", src, "-o", str(obj),
                "-std=c++17", "-O3", "--fmad=false",
                # The targets compile in parallel (0: one thread per CPU).
                "--threads", os.environ.get("SAM_EDGE_NVCC_THREADS", "0"),
                "-Xcompiler", "-fPIC,-fvisibility=hidden",
                *[f"-I{d}" for d in ext.include_dirs],
                *gencode,
            ]
            print("sam-edge: " + " ".join(cmd), file=sys.stderr)
            # check_call: an nvcc error must fail the build, never be skipped.
            subprocess.check_call(cmd)
            objects.append(str(obj))
        return objects


if __name__ == "__main__":
    if sys.argv[1:] == ["--print-cuda-gencode"]:
        print(" ".join(cuda_gencode_flags()))
    else:
        setup(ext_modules=ext_modules, cmdclass={"build_ext": BuildExt})
