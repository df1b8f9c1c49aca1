"""The post-processing ops on GPU arrays, through ``sam_edge._C_cuda``.

Inputs are device arrays that expose ``__cuda_array_interface__`` (torch CUDA
tensors, CuPy, Numba, PyCUDA, cuda-python buffers) or DLPack
(``__dlpack__``), C-contiguous, all on one device; the kernels run on that
device. Every function checks dtype, contiguity, shape and that each pointer
is device memory before a pointer reaches ``_C_cuda``. Outputs are allocated
with the input's library (torch or CuPy) on the same device. Work is queued on
``stream`` (a cudaStream_t as an int); by default the current torch or CuPy
stream of the input, else the legacy default stream.

:func:`available` also launches one tiny kernel per device on first use: a
build without code for the device's architecture fails there, and callers
(the TensorRT backend, ``sam-edge info``) fall back to the host path and say why.

Semantics are those of the CPU functions of the same names in
``sam_edge.postprocess``; the fused upsample uses the same float32 formula, so
its results equal the CPU kernel's bit for bit on IEEE-conforming hardware.
Connected components (remove_small_regions) have no GPU version: the official
pipeline runs them on CPU masks too.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ..runtime.cuda_buffers import DeviceArray, device_array
from . import BACKEND_ENV

try:
    from .. import _C_cuda  # type: ignore[attr-defined]

    _CUDA_ERROR: Optional[str] = None
except ImportError as exc:
    _C_cuda = None
    _CUDA_ERROR = f"{type(exc).__name__}: {exc}"


# Probe results per device ordinal: "" when the kernels ran there, else why not.
_PROBES: Dict[int, str] = {}


def _problem(device: Optional[int] = None) -> Optional[str]:
    """None when the kernels run on `device` (default: the current one), else why not.

    The first call per device launches one tiny kernel: a build without code
    for the device's architecture imports and counts devices fine, and only
    fails at its first launch.
    """
    if _C_cuda is None:
        return f"not built: {_CUDA_ERROR}"
    try:
        count = _C_cuda.device_count()
        if count == 0:
            return "built, but no CUDA device is visible"
        device = _C_cuda.current_device() if device is None else int(device)
    except RuntimeError as exc:
        return f"built, but no usable CUDA driver: {exc}"
    if device not in _PROBES:
        try:
            _PROBES[device] = _C_cuda.probe(device)
        except RuntimeError as exc:
            _PROBES[device] = str(exc)
    if _PROBES[device]:
        return (
            f"built for {_C_cuda.CUDA_ARCHS}, but its kernels cannot run on device {device}: {_PROBES[device]}"
        )
    return None


def _disabled() -> Optional[str]:
    if os.environ.get(BACKEND_ENV, "").strip().lower() == "numpy":
        return f"disabled by {BACKEND_ENV}=numpy"
    return None


def available(device: Optional[int] = None) -> bool:
    """Whether callers that choose a path (the TensorRT backend) should use these kernels on `device`
    (default: the current one): built, a device visible, a kernel runs there, and not disabled by
    SAM_EDGE_POSTPROCESS=numpy."""
    return (_disabled() or _problem(device)) is None


def status(device: Optional[int] = None) -> Dict[str, Any]:
    """Whether the CUDA path is usable on `device` (default: the current one), for the report.

    Returns {"available": bool, "summary": one line for people}; when available also
    "cuda_archs", "cuda_runtime", "devices" and "device", else "reason".
    """
    problem = _disabled() or _problem(device)
    if problem is not None:
        return {"available": False, "reason": problem,
                "summary": f"{problem}; device masks are post-processed on the host (sam_edge.postprocess)"}
    version = _C_cuda.runtime_version()
    runtime = f"{version // 1000}.{version % 1000 // 10}"
    device = _C_cuda.current_device() if device is None else int(device)
    return {
        "available": True, "cuda_archs": _C_cuda.CUDA_ARCHS, "cuda_runtime": runtime,
        "devices": _C_cuda.device_count(), "device": device,
        "summary": (f"built for {_C_cuda.CUDA_ARCHS} (CUDA runtime {runtime}), "
                    f"{_C_cuda.device_count()} device(s), kernels run on device {device}"),
    }


def _require(device: int):
    problem = _problem(device)
    if problem is not None:
        raise RuntimeError(f"sam_edge._C_cuda cannot run here: {problem}")


# ---------------------------------------------------------------- device arrays


def _library(x):
    module = type(x).__module__.split(".")[0]
    return module if module in ("torch", "cupy") else None


def _empty(like: Any, shape, dtype) -> Any:
    """An output array on like's device, from like's library."""
    lib = _library(like)
    if lib == "torch":
        import torch

        return torch.empty(tuple(shape), dtype=getattr(torch, np.dtype(dtype).name), device=like.device)
    if lib == "cupy":
        import cupy

        with cupy.cuda.Device(like.device.id):
            return cupy.empty(tuple(shape), dtype=dtype)
    raise TypeError(
        f"cannot allocate outputs for {type(like).__name__}; pass torch or CuPy arrays "
        "(wrap other buffers with torch.as_tensor or cupy.asarray, which share memory)"
    )


def _stream(like: Any, stream: Optional[int]) -> int:
    if stream is not None:
        return int(stream)
    lib = _library(like)
    if lib == "torch":
        import torch

        return torch.cuda.current_stream(like.device).cuda_stream
    if lib == "cupy":
        import cupy

        return cupy.cuda.get_current_stream().ptr
    return 0


_INT_MAX = 2**31 - 1


def _check_dtype(a: DeviceArray, kinds: str, itemsize: int, name: str, expected: str):
    if a.dtype.kind not in kinds or a.dtype.itemsize != itemsize:
        raise TypeError(f"{name} must be {expected}, got {a.dtype}")


def _size(a: DeviceArray) -> int:
    return int(np.prod(a.shape, dtype=np.int64))


def _device_of(**arrays: DeviceArray) -> int:
    """The one device holding every non-empty array; made sure the kernels run there.

    Each pointer is asked of the driver, so arrays that carry no device
    (raw __cuda_array_interface__ buffers) are checked too, and host memory
    is refused before a kernel could read it.
    """
    _require_built()
    devices = {}
    for name, a in arrays.items():
        if a is None or _size(a) == 0:
            continue
        device = _C_cuda.pointer_device(a.ptr)
        if device < 0:
            raise TypeError(f"{name} is host memory (pointer 0x{a.ptr:x}); pass a CUDA device array")
        if a.device_id is not None and a.device_id != device:
            raise ValueError(f"{name} says it is on device {a.device_id} but its memory is on device {device}")
        devices[name] = device
    if len(set(devices.values())) > 1:
        raise ValueError(f"arrays must be on one device, got {devices}")
    device = next(iter(devices.values())) if devices else _C_cuda.current_device()
    _require(device)
    return device


def _require_built():
    if _C_cuda is None:
        raise RuntimeError(f"sam_edge._C_cuda is not available ({_CUDA_ERROR}); build with nvcc on PATH")


def _output(x: Any, name: str, kinds: str, itemsize: int, expected: str, shape: Tuple[int, ...],
            last_axes: int) -> DeviceArray:
    """A caller's output array: dtype, and a shape of the same size whose last `last_axes` axes match."""
    a = device_array(x, name)
    _check_dtype(a, kinds, itemsize, name, expected)
    tail = tuple(shape[len(shape) - last_axes:])
    if _size(a) != int(np.prod(shape, dtype=np.int64)) or tuple(a.shape[len(a.shape) - last_axes:]) != tail:
        raise ValueError(f"{name} must have shape {tuple(shape)} (or the same size and last axes), got {a.shape}")
    return a


# ---------------------------------------------------------------- ops


def stability_score(logits: Any, mask_threshold: float = 0.0, threshold_offset: float = 1.0, stream=None):
    """(..., H, W) float32 device logits -> (...) float32 device scores."""
    _require_built()
    a = device_array(logits, "logits")
    _check_dtype(a, "f", 4, "logits", "float32")
    if len(a.shape) < 2:
        raise ValueError(f"logits must be (..., H, W), got shape {a.shape}")
    device = _device_of(logits=a)
    lead = a.shape[:-2]
    out = _empty(logits, lead, np.float32)
    _C_cuda.stability_scores(
        a.ptr,
        int(np.prod(lead, dtype=np.int64)),
        a.shape[-2] * a.shape[-1],
        float(mask_threshold) + float(threshold_offset),
        float(mask_threshold) - float(threshold_offset),
        device_array(out).ptr,
        _stream(logits, stream),
        device,
    )
    return out


def masks_to_boxes(masks: Any, stream=None):
    """(..., H, W) bool/uint8 device masks -> (..., 4) int64 device XYXY boxes."""
    _require_built()
    a = device_array(masks, "masks")
    _check_dtype(a, "bu", 1, "masks", "bool or uint8")
    if len(a.shape) < 2:
        raise ValueError(f"masks must be (..., H, W), got shape {a.shape}")
    if max(a.shape[-2:]) > _INT_MAX:
        raise ValueError(f"masks' H and W must be below 2**31, got {a.shape[-2:]}")
    device = _device_of(masks=a)
    lead = a.shape[:-2]
    out = _empty(masks, (*lead, 4), np.int64)
    _C_cuda.masks_to_boxes(
        a.ptr, int(np.prod(lead, dtype=np.int64)), a.shape[-2], a.shape[-1], device_array(out).ptr,
        _stream(masks, stream), device,
    )
    return out


def upsample_threshold_stability(
    low_res_logits: Any,
    input_size: Tuple[int, int],
    original_size: Tuple[int, int],
    mask_threshold: float = 0.0,
    stability_offset: float = 1.0,
    frame_size=1024,
    return_logits: bool = False,
    stream=None,
    *,
    return_masks: bool = True,
    masks_out: Any = None,
    logits_out: Any = None,
    stability_out: Any = None,
    boxes_out: Any = None,
):
    """GPU twin of sam_edge.postprocess.upsample_threshold_stability (same definition).

    The checked entry point for device-array callers (the TensorRT backend):
    every array is validated (dtype, C-contiguity, device memory, one device,
    shape) before a pointer reaches the kernel. Outputs are allocated with the
    input's library (torch or CuPy), or written into the ``*_out`` arrays
    given, which any ``__cuda_array_interface__`` buffer can be.

    Args:
        low_res_logits: (..., h, w) float32 device array, e.g. (B, 3, 256, 256).
        stream: cudaStream_t as an int (default: the input library's current stream).
        return_masks: compute the masks; False returns None in their place.
        masks_out: (..., H, W) bool/uint8; logits_out: (..., H, W) float32;
        stability_out: (...) float32; boxes_out: (..., 4) int64. Any shape
            with the same size and last axes is accepted, e.g. (N, 4) boxes.
    Returns:
        masks (..., H, W) bool, stability (...) float32, boxes (..., 4) int64,
        all on the device; plus the (..., H, W) float32 logits when return_logits.
    """
    from . import _pair  # shared validation

    _require_built()
    a = device_array(low_res_logits, "low_res_logits")
    _check_dtype(a, "f", 4, "low_res_logits", "float32")
    if len(a.shape) < 3:
        raise ValueError(f"low_res_logits must be (..., h, w), got shape {a.shape}")
    frame = _pair(frame_size, "frame_size")
    crop = _pair(input_size, "input_size")
    out_size = _pair(original_size, "original_size")
    if crop[0] > frame[0] or crop[1] > frame[1]:
        raise ValueError(f"input_size {crop} must fit inside frame_size {frame}")
    if max(*a.shape[-2:], *frame, *out_size) > _INT_MAX or min(a.shape[-2:]) < 1:
        raise ValueError(
            f"low_res_logits' (h, w) {a.shape[-2:]}, frame_size and original_size must be in [1, 2**31)"
        )
    if masks_out is not None and not return_masks:
        raise ValueError("masks_out was given with return_masks=False")
    if logits_out is not None and not return_logits:
        raise ValueError("logits_out was given with return_logits=False")
    lead = a.shape[:-2]
    n = int(np.prod(lead, dtype=np.int64))
    spec = {  # name: (given, kinds, itemsize, expected dtype, shape, last axes that must match, dtype to allocate)
        "masks_out": (masks_out, "bu", 1, "bool or uint8", (*lead, *out_size), 2, np.bool_),
        "logits_out": (logits_out, "f", 4, "float32", (*lead, *out_size), 2, np.float32),
        "stability_out": (stability_out, "f", 4, "float32", lead, 0, np.float32),
        "boxes_out": (boxes_out, "i", 8, "int64", (*lead, 4), 1, np.int64),
    }
    wanted = {"masks_out": return_masks, "logits_out": return_logits, "stability_out": True, "boxes_out": True}
    outputs, views = {}, {}
    for name, (given, kinds, itemsize, expected, shape, last_axes, dtype) in spec.items():
        if not wanted[name]:
            outputs[name], views[name] = None, None
            continue
        outputs[name] = given if given is not None else _empty(low_res_logits, shape, dtype)
        views[name] = _output(outputs[name], name, kinds, itemsize, expected, shape, last_axes)
    device = _device_of(low_res_logits=a, **views)
    pointer = {name: (v.ptr if v is not None else 0) for name, v in views.items()}
    _C_cuda.upsample_threshold_stability(
        a.ptr, n, a.shape[-2], a.shape[-1], frame[0], frame[1], crop[0], crop[1], out_size[0], out_size[1],
        float(mask_threshold),
        float(mask_threshold) + float(stability_offset),
        float(mask_threshold) - float(stability_offset),
        pointer["masks_out"], pointer["logits_out"], pointer["stability_out"], pointer["boxes_out"],
        _stream(low_res_logits, stream),
        device,
    )
    result = (outputs["masks_out"], outputs["stability_out"], outputs["boxes_out"])
    return result + (outputs["logits_out"],) if return_logits else result


def mask_to_rle(masks: Any, stream=None, scratch_bytes: Optional[int] = None) -> List[Dict[str, Any]]:
    """(N, H, W) or (H, W) device masks -> uncompressed COCO RLEs (on the host).

    scratch_bytes caps the device memory of the pass (default
    ``_C_cuda.RLE_DEFAULT_SCRATCH_BYTES``): the masks are scanned in chunks
    that fit, with the same result for any cap.
    """
    _require_built()
    a = device_array(masks, "masks")
    _check_dtype(a, "bu", 1, "masks", "bool or uint8")
    if len(a.shape) not in (2, 3):
        raise ValueError(f"masks must be (H, W) or (N, H, W), got shape {a.shape}")
    if scratch_bytes is None:
        scratch_bytes = _C_cuda.RLE_DEFAULT_SCRATCH_BYTES
    smallest = _C_cuda.RLE_RESERVED_BYTES + 8
    if not isinstance(scratch_bytes, (int, np.integer)) or scratch_bytes < smallest:
        raise ValueError(f"scratch_bytes must be an integer >= {smallest}, got {scratch_bytes!r}")
    device = _device_of(masks=a)
    n, h, w = (1, *a.shape) if len(a.shape) == 2 else a.shape
    positions = _C_cuda.rle_change_positions(a.ptr, n, h, w, _stream(masks, stream), device, int(scratch_bytes))
    return rles_from_change_positions(positions, n, h, w)


def rles_from_change_positions(positions: np.ndarray, n: int, h: int, w: int) -> List[Dict[str, Any]]:
    """Run boundaries (mask * h * w + column-major offset) -> uncompressed RLEs."""
    hw = h * w
    mask_of = positions // hw if hw else positions
    splits = np.searchsorted(mask_of, np.arange(1, n))
    out = []
    for i, local in enumerate(np.split(positions - (mask_of * hw), splits)):
        bounds = np.concatenate(([0], local, [hw]))
        counts = np.diff(bounds)
        # A boundary at 0 means the first pixel is set: the zero-length first run.
        out.append({"size": [h, w], "counts": counts.tolist()})
    return out


def batched_nms(boxes: Any, scores: Any, categories: Any, iou_threshold: float, stream=None) -> np.ndarray:
    """GPU twin of sam_edge.postprocess.batched_nms; kept indices come back as a host int64 array."""
    from . import TORCHVISION_OFFSET_TRICK_MAX_BOXES

    _require_built()
    b = device_array(boxes, "boxes")
    s = device_array(scores, "scores")
    c = device_array(categories, "categories")
    _check_dtype(b, "f", 4, "boxes", "float32")
    _check_dtype(s, "f", 4, "scores", "float32")
    _check_dtype(c, "i", 8, "categories", "int64")
    n = b.shape[0] if b.shape else 0
    if b.shape != (n, 4) or s.shape != (n,) or c.shape != (n,):
        raise ValueError(f"boxes (N, 4), scores (N,), categories (N,) expected, got {b.shape}, {s.shape}, {c.shape}")
    if 4 * n > _INT_MAX:
        raise ValueError(f"at most {_INT_MAX // 4} boxes, got {n}")
    device = _device_of(boxes=b, scores=s, categories=c)
    return _C_cuda.batched_nms(
        b.ptr, s.ptr, c.ptr, n, float(iou_threshold), n <= TORCHVISION_OFFSET_TRICK_MAX_BOXES,
        _stream(boxes, stream), device,
    )
