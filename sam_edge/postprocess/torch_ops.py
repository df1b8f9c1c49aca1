"""Mask post-processing: upscale SAM's low-res logits, threshold, score, box.

SAM's mask decoder returns (B, C, 256, 256) logits in the frame of the padded
1024x1024 model input. Turning them into masks of the original image takes,
as the official ``Sam.postprocess_masks`` does, a bilinear upsample to
1024x1024, a crop to the resized image (input_size), and a second bilinear
resize to the original size; then a threshold. The automatic mask generator
also needs each mask's stability score and bounding box.

:func:`mask_postprocess_reference` does exactly those steps in torch. The
Triton backend fuses them into one pass: each output pixel samples the
composed two-stage bilinear map directly (its four neighbours in the cropped
1024 frame, each itself a bilinear sample of the low-res map), thresholds it,
and accumulates the stability counts and the box with atomics, so no
full-resolution float mask is ever stored.

Backends: ``backend="auto"`` picks Triton for CUDA tensors when it can run,
else the reference. The environment variable ``SAM_EDGE_MASK_BACKEND``
("reference" or "triton") overrides "auto".
"""

from __future__ import annotations

import os
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ..kernels.triton_support import triton_unavailable_reason

#: Environment switch that forces a backend for every call that asks for "auto".
MASK_BACKEND_ENV = "SAM_EDGE_MASK_BACKEND"

_BACKENDS = ("reference", "triton")


def upscale_mask_logits(
    low_res_logits: torch.Tensor,
    input_size: Tuple[int, int],
    original_size: Tuple[int, int],
    image_size: int = 1024,
) -> torch.Tensor:
    """The official ``Sam.postprocess_masks``: (B, C, h_lr, w_lr) -> (B, C, H, W) logits.

    Args:
        low_res_logits: (B, C, h_lr, w_lr) mask logits in the padded model-input frame.
        input_size: (h, w) of the resized image inside the image_size x image_size frame.
        original_size: (H, W) of the original image.
    """
    x = F.interpolate(low_res_logits, (image_size, image_size), mode="bilinear", align_corners=False)
    x = x[..., : input_size[0], : input_size[1]]
    return F.interpolate(x, tuple(original_size), mode="bilinear", align_corners=False)


def masks_to_boxes_xyxy(masks: torch.Tensor) -> torch.Tensor:
    """(..., H, W) bool masks -> (..., 4) int64 XYXY boxes, inclusive; [0, 0, 0, 0] for empty masks."""
    H, W = masks.shape[-2:]
    rows = masks.any(dim=-1)  # (..., H)
    cols = masks.any(dim=-2)  # (..., W)
    ys = torch.arange(H, device=masks.device)
    xs = torch.arange(W, device=masks.device)
    top = torch.where(rows, ys, H).amin(dim=-1)
    bottom = torch.where(rows, ys, -1).amax(dim=-1)
    left = torch.where(cols, xs, W).amin(dim=-1)
    right = torch.where(cols, xs, -1).amax(dim=-1)
    boxes = torch.stack([left, top, right, bottom], dim=-1)
    return torch.where(rows.any(dim=-1, keepdim=True), boxes, torch.zeros_like(boxes))


def mask_postprocess_reference(
    low_res_logits: torch.Tensor,
    input_size: Tuple[int, int],
    original_size: Tuple[int, int],
    *,
    mask_threshold: float = 0.0,
    stability_offset: float = 1.0,
    image_size: int = 1024,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Plain torch post-processing, step by step as in the official model. See :func:`mask_postprocess`."""
    logits = upscale_mask_logits(low_res_logits, input_size, original_size, image_size)
    masks = logits > mask_threshold
    # Counted as the official amg.calculate_stability_score counts them.
    intersections = (logits > mask_threshold + stability_offset).sum(dim=(-1, -2), dtype=torch.int32)
    unions = (logits > mask_threshold - stability_offset).sum(dim=(-1, -2), dtype=torch.int32)
    return masks, intersections / unions, masks_to_boxes_xyxy(masks)


def resolve_mask_backend(low_res_logits: torch.Tensor, backend: str = "auto") -> str:
    """The backend that `mask_postprocess(..., backend=backend)` would run."""
    if backend == "auto":
        forced = os.environ.get(MASK_BACKEND_ENV, "").strip()
        if forced and forced != "auto":
            backend = forced
        elif low_res_logits.is_cuda and triton_unavailable_reason(low_res_logits) is None:
            return "triton"
        else:
            return "reference"
    if backend not in _BACKENDS:
        raise ValueError(f"unknown mask post-processing backend {backend!r}; known: {list(_BACKENDS)}")
    if backend == "triton":
        reason = triton_unavailable_reason(low_res_logits)
        if reason is not None:
            raise RuntimeError(f"mask post-processing backend 'triton' cannot run here: {reason}")
    return backend


def _check_size(name: str, size: Sequence[int]) -> Tuple[int, int]:
    try:
        h, w = (int(s) for s in size)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a pair of ints (height, width); got {size!r}") from None
    if h <= 0 or w <= 0:
        raise ValueError(f"{name} must be positive; got {(h, w)}")
    return h, w


def mask_postprocess(
    low_res_logits: torch.Tensor,
    input_size: Tuple[int, int],
    original_size: Tuple[int, int],
    *,
    mask_threshold: float = 0.0,
    stability_offset: float = 1.0,
    image_size: int = 1024,
    backend: str = "auto",
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Binary masks, stability scores and boxes from SAM's low-res mask logits.

    Args:
        low_res_logits: (B, C, 256, 256) float logits from the mask decoder, in
            the frame of the padded image_size x image_size model input.
        input_size: (h, w) of the resized image inside that frame (before padding).
        original_size: (H, W) of the original image.
        mask_threshold: logit threshold of a mask pixel.
        stability_offset: the stability score is the IoU of the masks
            thresholded at mask_threshold + offset and mask_threshold - offset.
        image_size: side of the square model input (1024 in SAM).
        backend: "auto", "reference" or "triton" (see the module docstring).
    Returns:
        masks: (B, C, H, W) bool, logits upscaled to the original image > mask_threshold.
        stability: (B, C) float32, intersections / unions as the official
            ``amg.calculate_stability_score`` (NaN when no pixel exceeds the low threshold).
        boxes: (B, C, 4) int64 XYXY pixel boxes of the masks, inclusive, in the
            original image frame; [0, 0, 0, 0] for an empty mask (as ``amg.batched_mask_to_box``).
    """
    if not isinstance(low_res_logits, torch.Tensor):
        raise TypeError(f"low_res_logits must be a torch.Tensor; got {type(low_res_logits).__name__}")
    if low_res_logits.dim() != 4:
        raise ValueError(f"low_res_logits must be (B, C, h, w); got shape {tuple(low_res_logits.shape)}")
    if not low_res_logits.is_floating_point():
        raise TypeError(f"low_res_logits must be a float tensor; got {low_res_logits.dtype}")
    h, w = _check_size("input_size", input_size)
    if h > image_size or w > image_size:
        raise ValueError(f"input_size {(h, w)} must fit in the {image_size}x{image_size} model input")
    H, W = _check_size("original_size", original_size)
    name = resolve_mask_backend(low_res_logits, backend)
    if name == "triton":
        from .triton_ops import mask_postprocess_triton

        return mask_postprocess_triton(
            low_res_logits,
            (h, w),
            (H, W),
            mask_threshold=mask_threshold,
            stability_offset=stability_offset,
            image_size=image_size,
        )
    return mask_postprocess_reference(
        low_res_logits,
        (h, w),
        (H, W),
        mask_threshold=mask_threshold,
        stability_offset=stability_offset,
        image_size=image_size,
    )


def available_mask_backends(low_res_logits: Optional[torch.Tensor] = None) -> dict:
    """Map of backend name to None (usable) or the reason it cannot run."""
    probe = low_res_logits if low_res_logits is not None else torch.empty(0)
    return {"reference": None, "triton": triton_unavailable_reason(probe)}
