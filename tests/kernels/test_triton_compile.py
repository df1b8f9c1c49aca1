"""Every autotune config of every Triton kernel compiles for real GPUs, with no spill where autotune can pick it.

The CPU interpreter accepts constructs the compiler rejects and says nothing
about registers, so this compiles the kernels ahead of time (``triton.compile``
with a ``GPUTarget``; no GPU needed) for sm_80 (A100), sm_87 (Jetson Orin) and
sm_90 (H100/H200), in a subprocess without TRITON_INTERPRET, and reads the
resource report of Triton's bundled ptxas for each build.

Builds: the attention kernel for fp16, bf16 and fp32 at head dims 64 (ViT-B/L)
and 80 (ViT-H), on SAM's windowed shape (14x14 windows over the padded 64x64
grid) and global shape (one 64x64 grid); the mask kernel for fp32, fp16 and
bf16. For each (target, dtype, shape) every config that autotune can pick after
the kernel's own pruning is compiled, and:
  * fp16/bf16 attention and all mask builds spill no bytes to local memory;
  * shared memory stays within the target's per-block limit;
  * no two configs for one shape compile to the same PTX (a wasted tuning trial);
  * the mask kernel's batch offset is computed in 64 bits;
  * fp32 attention may spill: its spills are printed, and "auto" must not route fp32 to it then.
ptxas is run on each PTX (``-v --gpu-name=sm_XX``, sm_90a for Hopper as Triton
builds it); without ptxas the test skips and says why.
"""

import json
import os
import subprocess
import sys
import textwrap
from collections import defaultdict

import pytest
import torch

triton = pytest.importorskip("triton", reason="Triton is not installed")

from sam_edge.kernels.attention import auto_backend_order  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Per-block shared memory limits (opt-in maximum): 163 KB on sm_80/sm_87, 227 KB on sm_90.
SHARED_LIMIT = {80: 163 * 1024, 87: 163 * 1024, 90: 227 * 1024}

SCRIPT = textwrap.dedent(
    r"""
    import hashlib, json, multiprocessing, os, re, subprocess, sys
    import torch
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from sam_edge.kernels import triton_attention as ta
    from sam_edge.postprocess import triton_ops as mp

    ptxas, workdir, out_path, workers = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    TARGETS = (80, 87, 90)
    DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
    # name -> (window side, windows per image, padded): SAM's 64x64 token grid.
    SHAPES = {"windowed": (14, 25, True), "global": (64, 1, False)}
    ATTENTION_POINTERS = {"Q", "K", "V", "OUT", "PAD_K", "PAD_V", "RH", "RW"}

    def attention_jobs():
        for cc in TARGETS:
            for dtype in DTYPES:
                for head_dim in (64, 80):
                    for shape, (window, windows, padded) in SHAPES.items():
                        d0, d1 = ta._head_dim_split(head_dim)
                        const = dict(
                            WIN_QH=window, WIN_QW=window, WIN_KH=window, WIN_KW=window, N_WIN=windows,
                            HEAD_DIM=head_dim, BLOCK_D0=d0, BLOCK_D1=d1, PADDED=padded, UPCAST=False,
                            IEEE_FP32=dtype == "fp32", BLOCK_N=max(16, triton.next_power_of_2(window)),
                            BLOCK_KH=max(16, triton.next_power_of_2(window)),
                        )
                        # The configs autotune can pick: the kernel's own pruning hook, called as the autotuner does.
                        q = torch.empty(0, dtype=DTYPES[dtype])
                        pickable = ta._prune_attention_configs(ta.ATTENTION_CONFIGS, {"Q": q}, **const)
                        for config in pickable:
                            yield dict(kernel="attention", cc=cc, dtype=dtype, head_dim=head_dim, shape=shape,
                                       const=const, config=ta.ATTENTION_CONFIGS.index(config))

    def mask_jobs():
        for cc in TARGETS:
            for dtype in DTYPES:
                for index in range(len(mp.MASK_CONFIGS)):
                    yield dict(kernel="mask", cc=cc, dtype=dtype, head_dim=None, shape="planes", const={},
                               config=index)

    def signature(job, fn, const):
        dtype = job["dtype"]
        if job["kernel"] == "attention":
            of = lambda n: "*" + dtype if n in ATTENTION_POINTERS else "fp32" if n == "scale" else "i32"
        else:
            pointers = {"LOW": "*" + dtype, "MASKS": "*u8", "COUNTS": "*i32", "BOXES": "*i32"}
            of = lambda n: pointers.get(n, "fp32" if n.startswith(("scale", "threshold")) else "i32")
        return {n: "constexpr" if n in const else of(n) for n in fn.arg_names}

    def build(job):
        if job["kernel"] == "attention":
            fn, config = ta._rel_pos_attention_kernel.fn, ta.ATTENTION_CONFIGS[job["config"]]
        else:
            fn, config = mp._mask_postprocess_kernel.fn, mp.MASK_CONFIGS[job["config"]]
        const = dict(job["const"], **config.kwargs)
        options = dict(num_warps=config.num_warps, num_stages=config.num_stages)
        if config.maxnreg is not None:
            options["maxnreg"] = config.maxnreg
        cc = job["cc"]
        k = triton.compile(ASTSource(fn, signature(job, fn, const), const), target=GPUTarget("cuda", cc, 32),
                           options=options)
        ptx = k.asm["ptx"]
        name = "{kernel}-{cc}-{dtype}-{head_dim}-{shape}-{config}.ptx".format(**job)
        path = os.path.join(workdir, name)
        with open(path, "w") as f:
            f.write(ptx)
        arch = "sm_90a" if cc == 90 else f"sm_{cc}"
        log = subprocess.run([ptxas, "-v", f"--gpu-name={arch}", path, "-o", os.devnull],
                             capture_output=True, text=True, check=True).stderr
        os.remove(path)
        spills = re.findall(r"(\d+) bytes spill stores", log)
        registers = re.findall(r"Used (\d+) registers", log)
        if len(spills) != 1 or len(registers) != 1:
            raise RuntimeError(f"cannot read ptxas's resource report for {name}:\n{log}")
        # The mask kernel's batch offset b * stride_lb passes 2**31 elements in large batches.
        wide_batch_offset = re.search(r"arith\.extsi %stride_lb : i32 to i64", k.asm["ttir"]) is not None
        return dict({k: v for k, v in job.items() if k != "const"}, config_repr=str(config),
                    spill=int(spills[0]), registers=int(registers[0]), shared=k.metadata.shared,
                    ptx_sha=hashlib.sha256(ptx.encode()).hexdigest(), wide_batch_offset=wide_batch_offset)

    if __name__ == "__main__":
        jobs = list(attention_jobs()) + list(mask_jobs())
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            results = pool.map(build, jobs, chunksize=1)
        with open(out_path, "w") as f:
            json.dump(results, f)
    """
)


def _ptxas_or_skip():
    """Path of the ptxas Triton compiles with, or skip with the reason it cannot be used."""
    if sys.platform != "linux":
        pytest.skip("Triton's bundled ptxas is Linux-only")
    try:
        from triton.backends import backends
    except ImportError as e:
        pytest.skip(f"this Triton has no backend registry: {e}")
    if "nvidia" not in backends:
        pytest.skip(f"this Triton has no NVIDIA backend (backends: {sorted(backends)})")
    ptxas = os.environ.get("TRITON_PTXAS_PATH") or os.path.join(
        os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas"
    )
    if not os.access(ptxas, os.X_OK):
        pytest.skip(f"ptxas is not available at {ptxas} (Triton compiles cubins with it; set TRITON_PTXAS_PATH)")
    return ptxas


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    """One record per compile: kernel, cc, dtype, head_dim, shape, config, spill, registers, shared, ptx_sha."""
    ptxas = _ptxas_or_skip()
    tmp = tmp_path_factory.mktemp("triton_aot")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env["TRITON_CACHE_DIR"] = str(tmp / "cache")
    env["TMPDIR"] = str(tmp)  # Triton's own temporary PTX files land here too
    out = tmp / "builds.json"
    workers = str(max(1, min(2, os.cpu_count() or 1)))
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, ptxas, str(tmp), str(out), workers],
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    records = json.loads(out.read_text())
    for r in records:
        print(
            f"{r['kernel']:9} sm_{r['cc']} {r['dtype']} d{r['head_dim']} {r['shape']:8} {r['config_repr']}: "
            f"{r['registers']} registers, {r['spill']} bytes spilled, {r['shared']} bytes shared"
        )
    return records


def _where(records):
    return [
        f"{r['kernel']} sm_{r['cc']} {r['dtype']} d{r['head_dim']} {r['shape']} {r['config_repr']}" for r in records
    ]


def test_every_target_dtype_and_shape_was_built(builds):
    """The sweep itself: all targets, dtypes, head dims and shapes, and every mask config."""
    attention = {(r["cc"], r["dtype"], r["head_dim"], r["shape"]) for r in builds if r["kernel"] == "attention"}
    assert attention == {
        (cc, dtype, head_dim, shape)
        for cc in (80, 87, 90)
        for dtype in ("fp16", "bf16", "fp32")
        for head_dim in (64, 80)
        for shape in ("windowed", "global")
    }
    from sam_edge.postprocess.triton_ops import MASK_CONFIGS

    assert sum(r["kernel"] == "mask" for r in builds) == 3 * 3 * len(MASK_CONFIGS)


def test_no_spills_where_autotune_can_pick(builds):
    spilled = [r for r in builds if r["spill"] > 0 and not (r["kernel"] == "attention" and r["dtype"] == "fp32")]
    assert not spilled, "register spills in configs autotune can pick:\n" + "\n".join(
        f"{w}: {r['spill']} bytes" for w, r in zip(_where(spilled), spilled)
    )


def test_shared_memory_within_each_target(builds):
    over = [r for r in builds if r["shared"] > SHARED_LIMIT[r["cc"]]]
    assert not over, "\n".join(f"{w}: {r['shared']} bytes shared" for w, r in zip(_where(over), over))


def test_configs_of_one_shape_compile_to_different_code(builds):
    """Two configs with the same PTX for a shape make autotune time the same kernel twice."""
    by_shape = defaultdict(list)
    for r in builds:
        by_shape[(r["kernel"], r["cc"], r["dtype"], r["head_dim"], r["shape"])].append(r)
    duplicates = []
    for shape, records in by_shape.items():
        seen = {}
        for r in records:
            if r["ptx_sha"] in seen:
                duplicates.append(f"{shape}: {seen[r['ptx_sha']]} and {r['config_repr']}")
            seen[r["ptx_sha"]] = r["config_repr"]
    assert not duplicates, "configs that compile to identical PTX:\n" + "\n".join(duplicates)


def test_mask_batch_offset_is_64_bit(builds):
    """b * stride_lb is widened to int64 before the multiply (read from the kernel's Triton IR)."""
    narrow = [r for r in builds if r["kernel"] == "mask" and not r["wide_batch_offset"]]
    assert not narrow, "32-bit batch offset in:\n" + "\n".join(_where(narrow))


def test_autotune_prunes_with_the_hook_compiled_here():
    """The sweep calls _prune_attention_configs; the autotuned kernel must use that same hook."""
    from sam_edge.kernels import triton_attention

    assert triton_attention._rel_pos_attention_kernel.early_config_prune is triton_attention._prune_attention_configs


def test_fp32_spills_stay_off_auto(builds):
    """fp32 attention is recorded, not required to be spill-free; where it spills, "auto" must not send fp32 to it."""
    fp32 = [r for r in builds if r["kernel"] == "attention" and r["dtype"] == "fp32"]
    assert fp32
    for w, r in zip(_where(fp32), fp32):
        print(f"{w}: {r['spill']} bytes spilled")
    if any(r["spill"] > 0 for r in fp32):
        assert auto_backend_order("cuda", torch.float32)[0] != "triton"
