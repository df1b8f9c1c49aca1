"""Whether TensorRT engines can run here, and their optimization profiles as data.

Everything here but :func:`import_tensorrt`, :func:`tensorrt_runtime_info` and
:func:`status` is pure: a bundle's manifest checked against a runtime
description (``{"tensorrt", "compute_capability", "gpu"}``), testable without
TensorRT or a GPU. Those three import TensorRT and cuda-python when called.
"""

import shlex
from typing import Any, Dict, Mapping, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from . import cuda_buffers

Shape = Tuple[int, ...]


class EngineCompatibilityError(RuntimeError):
    """A TensorRT engine cannot run here (GPU architecture or TensorRT version); says how to rebuild."""


# ---------------------------------------------------------------- profiles


class ShapeTuple(NamedTuple):
    """The (min, opt, max) shapes of one input in an optimization profile."""

    min: Shape
    opt: Shape
    max: Shape

    def holds(self, shape: Sequence[int]) -> bool:
        """Whether `shape` has the rank of these shapes and min <= shape <= max on every axis."""
        shape = tuple(shape)
        return len(shape) == len(self.min) == len(self.max) and all(
            lo <= d <= hi for lo, d, hi in zip(self.min, shape, self.max)
        )


#: One optimization profile: input name -> ShapeTuple.
Profile = Dict[str, ShapeTuple]


def profile_holds(profile: Profile, shapes: Mapping[str, Sequence[int]]) -> bool:
    """Whether every input of `profile` has its shape in `shapes` within the profile's range."""
    return all(name in shapes and shape_range.holds(shapes[name]) for name, shape_range in profile.items())


def describe_profile(profile: Profile) -> str:
    """"name (min)..(max), ..." for messages."""
    return ", ".join(f"{name} {shapes.min}..{shapes.max}" for name, shapes in profile.items())


# ---------------------------------------------------------------- TensorRT and the device, guarded


def import_tensorrt():
    """The tensorrt module (>= 10), or an ImportError that says how to get it."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise ImportError(
            "TensorRT is not installed: install NVIDIA TensorRT >= 10 with its Python bindings "
            f"(matching your CUDA and driver) to build or run TensorRT bundles ({exc})"
        ) from exc
    major = int(str(trt.__version__).split(".")[0])
    if major < 10:
        raise ImportError(f"sam-edge needs TensorRT >= 10; found {trt.__version__}")
    return trt


def tensorrt_runtime_info(device: int = 0) -> Dict[str, str]:
    """What an engine must match: {"tensorrt", "gpu", "compute_capability", "cuda_runtime"}."""
    trt = import_tensorrt()
    return {"tensorrt": str(trt.__version__), **cuda_buffers.device_info(device)}


def status(device: int = 0) -> Dict[str, Any]:
    """The TensorRT part of the "which path runs here" report.

    Returns {"available": bool, "summary": one line for people}; with TensorRT and
    a GPU also the tensorrt_runtime_info keys and "mask_postprocess" (where a TensorRT
    backend resizes masks), else "reason".
    """
    try:
        info = tensorrt_runtime_info(device)
    except (ImportError, cuda_buffers.CudaError) as exc:
        return {"available": False, "reason": str(exc), "summary": f"unavailable ({exc})"}
    from ..postprocess import cuda as postprocess_cuda

    where = postprocess_cuda.status(device)
    masks = "CUDA (sam_edge.postprocess.cuda)" if where["available"] else f"numpy on the host ({where['summary']})"
    summary = (f"TensorRT {info['tensorrt']} on {info['gpu']} (compute capability {info['compute_capability']}, "
               f"CUDA {info['cuda_runtime']}); mask postprocess: {masks}")
    return {"available": True, **info, "mask_postprocess": masks, "summary": summary}


# ---------------------------------------------------------------- compatibility (pure)

#: The I/O of sam-edge's engines: the encoder, and the fast decoder (all four mask tokens).
ENGINE_INPUTS = {
    "encoder": ("image",),
    "decoder": ("image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input"),
}
ENGINE_OUTPUTS = {"encoder": ("image_embeddings",), "decoder": ("iou_predictions", "low_res_masks")}


def check_engine_io(engines: Mapping[str, Tuple[Mapping[str, Any], Mapping[str, Any]]]) -> None:
    """ValueError unless the engines have the I/O of sam-edge's, all float32.

    Arguments:
        engines: {"encoder": (inputs, outputs), "decoder": (inputs, outputs)}, each
            {tensor name: (shape, numpy dtype)} as the engine reports it.
    """
    encoder_in, encoder_out = engines["encoder"]
    decoder_in, decoder_out = engines["decoder"]
    if set(encoder_in) != set(ENGINE_INPUTS["encoder"]) or set(ENGINE_OUTPUTS["encoder"]) - set(encoder_out):
        raise ValueError(f"encoder engine has I/O {list(encoder_in)} -> {list(encoder_out)}; "
                         "expected image -> image_embeddings")
    expected = set(ENGINE_INPUTS["decoder"])
    if set(decoder_in) != expected or set(ENGINE_OUTPUTS["decoder"]) - set(decoder_out):
        raise ValueError(
            f"decoder engine has I/O {list(decoder_in)} -> {list(decoder_out)}; expected the fast "
            f"decoder {sorted(expected)} -> iou_predictions, low_res_masks (not the orig_im_size variant)"
        )
    for engine, (inputs, outputs) in engines.items():
        for name, (_, dtype) in {**inputs, **outputs}.items():
            if np.dtype(dtype) != np.float32:
                raise ValueError(f"{engine} tensor {name} is {np.dtype(dtype)}; sam-edge engines take and give float32")



def parse_version(text: str) -> Tuple[int, ...]:
    """"10.13.0.35" -> (10, 13, 0): major, minor, patch (the build number does not count)."""
    try:
        return tuple(int(p) for p in str(text).split(".")[:3])
    except ValueError:
        raise ValueError(f"not a version number: {text!r}") from None


def parse_compute_capability(text: Any) -> Tuple[int, int]:
    """"8.6" -> (8, 6)."""
    try:
        major, minor = str(text).split(".")
        return int(major), int(minor)
    except ValueError:
        raise ValueError(f"compute capability must look like '8.6'; got {text!r}") from None


def host_code_allowed(manifest: Mapping[str, Any]) -> bool:
    """Whether the bundle's plans need Runtime.engine_host_code_allowed: version-compatible plans
    carry TensorRT's lean runtime, which TensorRT runs only when the application allows it."""
    return bool((manifest.get("tensorrt") or {}).get("version_compatible"))


#: Build options recorded in the manifest and the flag each takes on the command line.
REBUILD_OPTIONS = (
    "decoder_precision",
    "max_batch",
    "opt_batch",
    "max_points",
    "max_prompts",
    "opt_points",
    "opt_prompts",
    "workspace_bytes",
    "hardware_compatibility",
)


def rebuild_command(manifest: Mapping[str, Any], bundle_dir: Optional[str] = None) -> str:
    """The `sam-edge build` command that rebuilds this TensorRT bundle on the current machine."""
    section = manifest.get("tensorrt") or {}
    build = dict(section.get("build") or {})
    # Compatibility choices are also recorded beside the build options; either place counts.
    for key in ("hardware_compatibility", "version_compatible"):
        if key not in build and section.get(key) not in (None, "none", False):
            build[key] = section[key]
    weights = manifest.get("weights") or {}
    parts = ["sam-edge", "build", "--model", str(build.get("model_type") or manifest.get("model_type", "MODEL"))]
    checkpoint = build.get("checkpoint") or (weights.get("checkpoint") if weights.get("source") == "checkpoint" else None)
    if checkpoint:
        parts += ["--checkpoint", str(checkpoint)]
    parts += ["--backend", "tensorrt", "--precision", str(build.get("precision") or manifest.get("precision", "fp16"))]
    for option in REBUILD_OPTIONS:
        if option in build:
            parts += ["--" + option.replace("_", "-"), str(build[option])]
    for flag in ("version_compatible", "weakly_typed"):
        if build.get(flag):
            parts.append("--" + flag.replace("_", "-"))
    parts += ["--output", bundle_dir or "BUNDLE_DIR", "--overwrite"]
    return shlex.join(parts)


def check_engine_compatibility(
    manifest: Mapping[str, Any], runtime_info: Mapping[str, Any], bundle_dir: Optional[str] = None
) -> None:
    """Raise EngineCompatibilityError, with the exact rebuild command, if the engines of a
    TensorRT bundle cannot run with `runtime_info` (see tensorrt_runtime_info).

    GPU: the same compute capability, or >= 8.0 for engines built with hardware
    compatibility "ampere_plus". TensorRT: the same major.minor.patch, or for
    version-compatible engines the same major and a runtime at least as new.
    """
    section = manifest.get("tensorrt")
    if not isinstance(section, Mapping):
        raise ValueError("not a TensorRT bundle manifest: it has no 'tensorrt' section")
    for key in ("version", "compute_capability"):
        if key not in section:
            raise ValueError(f"the manifest's tensorrt section lacks {key!r}; rebuild the bundle")
    for key in ("tensorrt", "compute_capability"):
        if key not in runtime_info:
            raise ValueError(f"runtime_info needs {key!r} (see tensorrt_runtime_info); got {sorted(runtime_info)}")
    built_gpu = section.get("gpu", "unknown GPU")
    here_gpu = runtime_info.get("gpu", "this GPU")
    built_cc = parse_compute_capability(section["compute_capability"])
    here_cc = parse_compute_capability(runtime_info["compute_capability"])
    level = section.get("hardware_compatibility", "none")
    problems = []
    if level == "ampere_plus":
        if here_cc < (8, 0):
            problems.append(
                f"the engines are hardware-compatible with Ampere and newer (compute capability >= 8.0); "
                f"{here_gpu} has {here_cc[0]}.{here_cc[1]}"
            )
    elif level == "none":
        if built_cc != here_cc:
            problems.append(
                f"the engines were built for compute capability {built_cc[0]}.{built_cc[1]} ({built_gpu}); "
                f"{here_gpu} has {here_cc[0]}.{here_cc[1]}, and TensorRT engines run only on the GPU "
                "architecture they were built for"
            )
    else:
        problems.append(f"unknown hardware compatibility level {level!r} in the manifest")
    built_v = parse_version(section["version"])
    here_v = parse_version(runtime_info["tensorrt"])
    if section.get("version_compatible"):
        if here_v[0] != built_v[0] or here_v < built_v:
            problems.append(
                f"the engines are version-compatible from TensorRT {section['version']} within major version "
                f"{built_v[0]}; this runtime is TensorRT {runtime_info['tensorrt']}"
            )
    elif here_v != built_v:
        problems.append(
            f"the engines were built with TensorRT {section['version']}; this runtime is TensorRT "
            f"{runtime_info['tensorrt']}, and an engine loads only in the TensorRT version that built it"
        )
    if problems:
        where = f"bundle {bundle_dir}: " if bundle_dir else ""
        raise EngineCompatibilityError(
            f"{where}cannot run these TensorRT engines here:\n  - " + "\n  - ".join(problems)
            + "\nRebuild the bundle on this machine:\n  " + rebuild_command(manifest, bundle_dir)
        )
