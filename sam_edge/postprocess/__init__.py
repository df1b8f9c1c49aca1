"""Mask post-processing: RLE, boxes, stability, small-region removal, NMS, and
the fused upsample + threshold + stability + box step.

Every op has a numpy fallback (``sam_edge.postprocess.fallback``) and, when
the compiled module ``sam_edge._C`` imports, a parallel C++ kernel with the
same results. :func:`active_path` says which is in use. Set
``SAM_EDGE_POSTPROCESS=numpy`` to force the fallback.

Inputs are numpy arrays or CPU torch tensors; outputs are numpy arrays. Masks
are (H, W) or (N, H, W), bool (uint8 0/1 is accepted). Semantics follow
``segment_anything.utils.amg``, ``Sam.postprocess_masks``, pycocotools and
``torchvision.ops.batched_nms`` exactly; differences are listed per function.
For device arrays see ``sam_edge.postprocess.cuda``; for torch tensors (the
torch reference and the Triton kernel of the fused step) ``sam_edge.postprocess.torch_ops``.
"""

from __future__ import annotations

import array
import os
from typing import Any, Dict, List, Sequence, Tuple, Union

import numpy as np

from . import fallback

BACKEND_ENV = "SAM_EDGE_POSTPROCESS"

try:
    if os.environ.get(BACKEND_ENV, "").strip().lower() == "numpy":
        raise ImportError(f"disabled by {BACKEND_ENV}=numpy")
    from .. import _C  # type: ignore[attr-defined]

    _C_ERROR = None
except ImportError as exc:  # the build is optional; say why it is not used
    _C = None
    _C_ERROR = f"{type(exc).__name__}: {exc}"


def set_num_threads(threads: int) -> None:
    """Threads the compiled kernels use from now on, for calls from this thread (OpenMP; default: all cores)."""
    if int(threads) < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    if _C is not None:
        _C.set_num_threads(int(threads))


def compiled_available() -> bool:
    """Whether the compiled CPU kernels (sam_edge._C) are in use."""
    return _C is not None


def active_path() -> str:
    """Which implementation the ops below run, for people and logs."""
    if _C is not None:
        count = _C.num_threads()
        threads = f"OpenMP, {count} thread{'s' if count > 1 else ''}" if _C.openmp else "single-threaded, no OpenMP"
        return f"compiled C++ (sam_edge._C, {threads})"
    return f"numpy fallback: {_C_ERROR}"


# ---------------------------------------------------------------- validation


def _to_numpy(x: Any, name: str) -> np.ndarray:
    if getattr(x, "is_cuda", False) or hasattr(x, "__cuda_array_interface__"):
        raise TypeError(f"{name} is on a GPU; use sam_edge.postprocess.cuda for device arrays, or move it to the CPU")
    if hasattr(x, "detach") and hasattr(x, "numpy"):  # torch tensor
        x = x.detach().numpy()
    return np.asarray(x)


def _masks(masks: Any, name: str = "masks", min_ndim: int = 2, max_ndim: int = 3) -> np.ndarray:
    """Validated C-contiguous bool masks (no copy for contiguous bool input)."""
    a = _to_numpy(masks, name)
    if not min_ndim <= a.ndim <= max_ndim:
        shapes = "(H, W)" if max_ndim == 2 else "(H, W) or (N, H, W)" if max_ndim == 3 else "(..., H, W)"
        raise ValueError(f"{name} must be {shapes}, got shape {a.shape}")
    if a.dtype != np.bool_:
        if a.dtype.kind not in "biu":
            raise TypeError(f"{name} must be bool (or integer 0/1), got dtype {a.dtype}")
        a = a != 0
    return np.ascontiguousarray(a)


def _float32(x: Any, name: str) -> np.ndarray:
    a = _to_numpy(x, name)
    if a.dtype.kind != "f":
        raise TypeError(f"{name} must be floating point, got dtype {a.dtype}")
    return np.ascontiguousarray(a, dtype=np.float32)


# ---------------------------------------------------------------- RLE

RLE = Dict[str, Any]
_UINT32_ARRAY = next((code for code in "IL" if array.array(code).itemsize == 4), None)


def mask_to_rle(masks: Any) -> List[RLE]:
    """Uncompressed COCO RLE of each mask, as amg.mask_to_rle_pytorch.

    Args:
        masks: (N, H, W) or (H, W) bool.
    Returns:
        N (or 1) dicts {"size": [H, W], "counts": [int, ...]}: run lengths in
        column-major order, starting with a (possibly zero) count of zeros.
        An H * W == 0 mask gives counts [0], as pycocotools does.
    """
    m = _masks(masks)
    m = m[None] if m.ndim == 2 else m
    h, w = m.shape[1:]
    counts = _C.rle_encode(m) if _C is not None else fallback.rle_counts(m)
    return [{"size": [h, w], "counts": c.tolist()} for c in counts]


def encode_rle(masks: Any) -> List[RLE]:
    """Compressed COCO RLE, byte-identical to pycocotools.mask.encode.

    Args:
        masks: (N, H, W) or (H, W) bool, C order (pycocotools wants (H, W, N)
            Fortran order; the encoding is the same).
    Returns:
        N dicts {"size": [H, W], "counts": bytes}. Use counts.decode() for JSON.
    """
    m = _masks(masks)
    m = m[None] if m.ndim == 2 else m
    h, w = m.shape[1:]
    if _C is not None:
        strings = _C.rle_encode_strings(m)
    else:
        strings = [fallback.counts_to_string(c) for c in fallback.rle_counts(m)]
    return [{"size": [h, w], "counts": s} for s in strings]


def compress_rle(rle: RLE) -> RLE:
    """Uncompressed RLE -> compressed (counts bytes), as pycocotools.mask.frPyObjects."""
    h, w = _rle_size(rle)
    counts = _rle_counts(rle)
    s = _C.counts_to_string(counts) if _C is not None else fallback.counts_to_string(counts)
    return {"size": [h, w], "counts": s}


def _rle_size(rle: RLE) -> Tuple[int, int]:
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise TypeError(f"an RLE is a dict with 'size' and 'counts', got {type(rle).__name__}")
    size = rle["size"]
    if len(size) != 2 or any(int(s) < 0 for s in size):
        raise ValueError(f"RLE size must be [h, w] with h, w >= 0, got {size}")
    return int(size[0]), int(size[1])


def _rle_counts(rle: RLE) -> np.ndarray:
    """Run lengths of a compressed or uncompressed RLE, as uint32."""
    counts = rle["counts"]
    if isinstance(counts, str):
        counts = counts.encode("ascii")
    if isinstance(counts, (bytes, bytearray)):
        return _C.string_to_counts(bytes(counts)) if _C is not None else fallback.string_to_counts(bytes(counts))
    if isinstance(counts, list) and _UINT32_ARRAY:
        # array.array converts a list of ints faster than numpy does, and rejects
        # negative, oversized and non-integer values on the way.
        try:
            return np.frombuffer(array.array(_UINT32_ARRAY, counts), dtype=np.uint32)
        except (OverflowError, TypeError):
            raise ValueError("uncompressed RLE counts must be a list of non-negative 32-bit integers") from None
    a = np.asarray(counts)
    if a.ndim != 1 or (a.size and (a.dtype.kind not in "iu" or a.min() < 0 or a.max() >= 2**32)):
        raise ValueError("uncompressed RLE counts must be a list of non-negative 32-bit integers")
    return a.astype(np.uint32)


def decode_rle(rles: Union[RLE, Sequence[RLE]]) -> np.ndarray:
    """Masks from RLEs (compressed or not), identical to pycocotools.mask.decode.

    Args:
        rles: one RLE dict, or a sequence of RLEs of the same size.
    Returns:
        (H, W) bool for one dict, (N, H, W) bool for a sequence (C order;
        pycocotools returns the same values as (H, W, N) uint8).
    """
    single = isinstance(rles, dict)
    rles = [rles] if single else list(rles)
    if not rles:
        raise ValueError("decode_rle needs at least one RLE")
    sizes = {_rle_size(r) for r in rles}
    if len(sizes) != 1:
        raise ValueError(f"all RLEs must have the same size, got {sorted(sizes)}")
    h, w = sizes.pop()
    counts = [_rle_counts(r) for r in rles]
    masks = _C.rle_decode(counts, h, w) if _C is not None else fallback.rle_decode(counts, h, w)
    return masks[0] if single else masks


def area_from_rle(rle: RLE) -> int:
    """Foreground pixel count of an RLE (compressed or not), as amg.area_from_rle."""
    _rle_size(rle)
    counts = rle["counts"]
    if isinstance(counts, list):
        # Summing the list as amg does beats converting it; check the result only.
        try:
            area = sum(counts[1::2])
        except TypeError:
            raise ValueError("uncompressed RLE counts must be a list of non-negative integers") from None
        if not isinstance(area, (int, np.integer)) or area < 0:
            raise ValueError("uncompressed RLE counts must be a list of non-negative integers")
        return int(area)
    return int(_rle_counts(rle)[1::2].sum(dtype=np.int64))


# ---------------------------------------------------------------- boxes, stability


def masks_to_boxes(masks: Any) -> np.ndarray:
    """XYXY boxes around masks, as amg.batched_mask_to_box.

    Args:
        masks: (..., H, W) bool.
    Returns:
        (..., 4) int64 [x0, y0, x1, y1], inclusive pixel indices; [0, 0, 0, 0]
        for an empty mask. (The official function returns float zeros when the
        input has no elements at all; this always returns int64.)
    """
    m = _masks(masks, max_ndim=64)
    lead = m.shape[:-2]
    flat = m.reshape(-1, *m.shape[-2:])
    boxes = _C.masks_to_boxes(flat) if _C is not None else fallback.masks_to_boxes(flat)
    return boxes.reshape(*lead, 4)


def stability_score(logits: Any, mask_threshold: float = 0.0, threshold_offset: float = 1.0) -> np.ndarray:
    """IoU of the masks at mask_threshold +- threshold_offset, as amg.calculate_stability_score.

    Args:
        logits: (..., H, W) float mask logits (computed in float32).
    Returns:
        (...) float32 count(logit > t + o) / count(logit > t - o); NaN when
        nothing exceeds t - o. Thresholds are rounded to float32 before the
        comparison, as torch does with Python scalars.
    """
    x = _float32(logits, "logits")
    if x.ndim < 2:
        raise ValueError(f"logits must be (..., H, W), got shape {x.shape}")
    hi = float(mask_threshold) + float(threshold_offset)
    lo = float(mask_threshold) - float(threshold_offset)
    flat = x.reshape(-1, x.shape[-2] * x.shape[-1])
    scores = _C.stability_scores(flat, hi, lo) if _C is not None else fallback.stability_scores(flat, hi, lo)
    return scores.reshape(x.shape[:-2])


# ---------------------------------------------------------------- connected components

_MODES = ("holes", "islands")


def connected_components(mask: Any, value: bool = True) -> Tuple[np.ndarray, np.ndarray]:
    """8-connected components of the pixels equal to ``value``.

    Args:
        mask: (H, W) bool.
    Returns:
        labels: (H, W) int32, 0 elsewhere and 1..K in the order
            cv2.connectedComponents(mask == value, connectivity=8) gives.
        areas: (K,) int64, areas[k - 1] = pixels of label k.
    """
    m = _masks(mask, name="mask", max_ndim=2)
    if _C is not None:
        return _C.connected_components(m, int(bool(value)))
    return fallback.connected_components(m, bool(value))


def _check_mode(mode: str) -> bool:
    if mode not in _MODES:
        raise ValueError(f"mode must be 'holes' or 'islands', got {mode!r}")
    return mode == "holes"


def remove_small_regions(mask: Any, area_thresh: float, mode: str) -> Tuple[np.ndarray, bool]:
    """Fill small holes or drop small islands, as amg.remove_small_regions.

    Args:
        mask: (H, W) bool.
        area_thresh: components with fewer pixels than this are small.
        mode: "holes" fills small 8-connected components of the background;
            "islands" removes small components of the mask (if all are small,
            the largest stays, the first in OpenCV's numbering among equals).
    Returns:
        (mask, changed). When nothing is small the input comes back unchanged
        (the same object when it was a bool numpy array) with changed False.
    """
    holes = _check_mode(mode)
    m = _masks(mask, name="mask", max_ndim=2)
    if _C is None:
        return fallback.remove_small_regions(m, float(area_thresh), holes)
    out, changed = _C.remove_small_regions(m[None], float(area_thresh), holes)
    return (out[0], True) if changed[0] else (m, False)


def remove_small_regions_batch(masks: Any, area_thresh: float, mode: str) -> Tuple[np.ndarray, np.ndarray]:
    """remove_small_regions over (N, H, W) masks, in parallel.

    Returns:
        ((N, H, W) bool masks, (N,) bool changed).
    """
    holes = _check_mode(mode)
    m = _masks(masks, min_ndim=3)
    if _C is not None:
        return _C.remove_small_regions(m, float(area_thresh), holes)
    out = np.empty_like(m)
    changed = np.zeros(m.shape[0], dtype=bool)
    for i in range(m.shape[0]):
        out[i], changed[i] = fallback.remove_small_regions(m[i], float(area_thresh), holes)
    return out, changed


# ---------------------------------------------------------------- NMS

# torchvision.ops.batched_nms on CPU offsets boxes by category (one NMS) up to
# this many boxes and loops over categories above it; the two round differently.
TORCHVISION_OFFSET_TRICK_MAX_BOXES = 1000


def batched_nms(boxes: Any, scores: Any, categories: Any, iou_threshold: float) -> np.ndarray:
    """Greedy NMS within each category, as torchvision.ops.batched_nms on CPU.

    Args:
        boxes: (N, 4) XYXY, computed in float32.
        scores: (N,) finite.
        categories: (N,) integers; boxes of different categories never suppress each other.
        iou_threshold: a box is dropped when its IoU with a kept, higher-scored box is > this.
    Returns:
        (K,) int64 indices of the kept boxes by decreasing score; equal scores
        in index order (torchvision's order among equal scores is unspecified
        above 1000 boxes, and index order at or below).
    """
    b = _float32(boxes, "boxes")
    s = _float32(scores, "scores")
    c = _to_numpy(categories, "categories")
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"boxes must be (N, 4), got shape {b.shape}")
    if s.shape != (b.shape[0],) or c.shape != (b.shape[0],):
        raise ValueError(f"scores and categories must be ({b.shape[0]},), got {s.shape} and {c.shape}")
    if c.dtype.kind not in "biu":
        raise TypeError(f"categories must be integers, got dtype {c.dtype}")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite")
    c = np.ascontiguousarray(c, dtype=np.int64)
    offset_trick = b.shape[0] <= TORCHVISION_OFFSET_TRICK_MAX_BOXES
    if _C is not None:
        return _C.batched_nms(b, s, c, float(iou_threshold), offset_trick)
    return fallback.batched_nms(b, s, c, float(iou_threshold), offset_trick)


# ---------------------------------------------------------------- fused upsample


def _pair(x: Any, name: str) -> Tuple[int, int]:
    if isinstance(x, (int, np.integer)):
        x = (x, x)
    try:
        h, w = (int(v) for v in x)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be (h, w) integers, got {x!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"{name} must be positive, got {(h, w)}")
    return h, w


def upsample_threshold_stability(
    low_res_logits: Any,
    input_size: Tuple[int, int],
    original_size: Tuple[int, int],
    mask_threshold: float = 0.0,
    stability_offset: float = 1.0,
    frame_size: Union[int, Tuple[int, int]] = 1024,
    return_logits: bool = False,
    *,
    return_masks: bool = True,
):
    """Sam.postprocess_masks, then threshold, stability score and box, fused.

    Definition (identical to the official code, in float32):
        up = F.interpolate(low_res_logits, frame_size, mode="bilinear", align_corners=False)
        up = up[..., :input_size[0], :input_size[1]]
        logits = F.interpolate(up, original_size, mode="bilinear", align_corners=False)
        masks = logits > mask_threshold
        stability = calculate_stability_score(logits, mask_threshold, stability_offset)
        boxes = batched_mask_to_box(masks)
    Each output pixel is computed directly: its bilinear source point in the
    cropped frame, whose four neighbours are each a bilinear sample of the
    low-res map, with torch's float32 weights and order of operations. The
    frame is never materialised (the kernel caches the two frame rows it needs).
    Agreement with torch: logits within a few float32 ulps of |logit| (torch's
    vectorised kernel may fuse multiply-adds), so masks agree except at pixels
    whose logit is within ~1e-4 of a threshold.

    Args:
        low_res_logits: (B, C, h, w) or (N, h, w) float32, e.g. (B, 3, 256, 256).
        input_size: (h, w) of the resized image inside the frame (the crop).
        original_size: (H, W) of the original image (the output).
        frame_size: the model's input frame, 1024 for SAM.
        return_logits: also return the (..., H, W) float32 upsampled logits.
        return_masks: compute the masks; False returns None in their place.
    Returns:
        masks (..., H, W) bool, stability (...) float32, boxes (..., 4) int64
        XYXY in original-image pixels; plus logits when return_logits.
    """
    x = _float32(low_res_logits, "low_res_logits")
    if x.ndim < 3:
        raise ValueError(f"low_res_logits must be (B, C, h, w) or (N, h, w), got shape {x.shape}")
    frame = _pair(frame_size, "frame_size")
    crop = _pair(input_size, "input_size")
    out_size = _pair(original_size, "original_size")
    if crop[0] > frame[0] or crop[1] > frame[1]:
        raise ValueError(f"input_size {crop} must fit inside frame_size {frame}")
    lead = x.shape[:-2]
    flat = x.reshape(-1, *x.shape[-2:])
    hi = float(mask_threshold) + float(stability_offset)
    lo = float(mask_threshold) - float(stability_offset)
    if _C is not None:
        masks, logits, stability, boxes = _C.upsample_threshold_stability(
            flat, frame, crop, out_size, float(mask_threshold), hi, lo, bool(return_masks), bool(return_logits)
        )
    else:
        masks, logits, stability, boxes = fallback.upsample_threshold_stability(
            flat, frame, crop, out_size, float(mask_threshold), hi, lo
        )
    masks = masks.reshape(*lead, *out_size) if return_masks else None
    result = (masks, stability.reshape(lead), boxes.reshape(*lead, 4))
    if return_logits:
        result += (logits.reshape(*lead, *out_size),)
    return result


def upscale_mask_logits(
    low_res_logits: Any,
    input_size: Tuple[int, int],
    original_size: Tuple[int, int],
    frame_size: Union[int, Tuple[int, int]] = 1024,
) -> np.ndarray:
    """Sam.postprocess_masks on numpy: (..., h, w) float32 low-res logits -> (..., H, W)
    float32 logits at original_size (H, W), by the resize of upsample_threshold_stability,
    so thresholding them gives its masks. The torch twin is
    sam_edge.postprocess.torch_ops.upscale_mask_logits."""
    logits = upsample_threshold_stability(
        low_res_logits, input_size, original_size, frame_size=frame_size, return_logits=True, return_masks=False
    )[3]
    return logits


__all__ = [
    "BACKEND_ENV",
    "active_path",
    "area_from_rle",
    "batched_nms",
    "compiled_available",
    "compress_rle",
    "connected_components",
    "decode_rle",
    "encode_rle",
    "mask_to_rle",
    "masks_to_boxes",
    "remove_small_regions",
    "remove_small_regions_batch",
    "set_num_threads",
    "stability_score",
    "upsample_threshold_stability",
    "upscale_mask_logits",
]
