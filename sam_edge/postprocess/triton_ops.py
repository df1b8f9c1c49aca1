"""Triton launcher for :func:`sam_edge.postprocess.torch_ops.mask_postprocess` (one fused pass).

Each program handles BLOCK output pixels of one (batch, mask) plane. For each
pixel it follows the two bilinear resizes of the official model in index
space (align_corners=False, source index clamped at 0, upper neighbour clamped
at the last row/column, coordinates in fp32 as PyTorch computes them): the
pixel's source coordinate in the cropped image_size frame selects four
neighbours, each of which is a bilinear sample of the low-res map. The value
is thresholded and written as a byte mask; the stability counts and the box
are reduced in the program and merged with one atomic per quantity.

Importing this module needs Triton; ``TRITON_INTERPRET=1`` must be set before
import to run on CPU tensors.
"""

from __future__ import annotations

import os
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from ..kernels.triton_support import autotune_configs, folded_grid

#: Kernels are built for the CPU interpreter when this is set at import time.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

# 4 pixels per thread keeps the 16 gathers per pixel in registers (no spills on sm_80/87/90;
# tests/kernels/test_triton_compile.py compiles every config).
MASK_CONFIGS = [
    triton.Config({"BLOCK": 1024}, num_warps=8),
    triton.Config({"BLOCK": 512}, num_warps=4),
    triton.Config({"BLOCK": 2048}, num_warps=16),
    triton.Config({"BLOCK": 1024}, num_warps=4),
]
_CONFIGS = autotune_configs(MASK_CONFIGS)


@triton.jit
def _source_index(dst, scale, in_size):
    """PyTorch's align_corners=False source index: lower neighbour, upper neighbour, upper weight."""
    src = scale * (dst.to(tl.float32) + 0.5) - 0.5
    src = tl.maximum(src, 0.0)
    lo = src.to(tl.int32)  # src >= 0, so truncation is floor
    hi = tl.minimum(lo + 1, in_size - 1)
    return lo, hi, src - lo.to(tl.float32)


@triton.jit
def _upsampled(plane, stride_y, Y, X, scale1_y, scale1_x, LH, LW):
    """Value of the image_size-frame upsample at integer (Y, X): bilinear of the low-res map."""
    y0, y1, wy = _source_index(Y, scale1_y, LH)
    x0, x1, wx = _source_index(X, scale1_x, LW)
    v00 = tl.load(plane + y0 * stride_y + x0).to(tl.float32)
    v01 = tl.load(plane + y0 * stride_y + x1).to(tl.float32)
    v10 = tl.load(plane + y1 * stride_y + x0).to(tl.float32)
    v11 = tl.load(plane + y1 * stride_y + x1).to(tl.float32)
    return (1.0 - wy) * ((1.0 - wx) * v00 + wx * v01) + wy * ((1.0 - wx) * v10 + wx * v11)


# Tuned per power-of-two class of output pixels, not per image size, so a
# stream of photos of different sizes does not re-tune on every new size.
@triton.autotune(configs=_CONFIGS, key=["size_class"], reset_to_zero=["COUNTS"], restore_value=["BOXES"])
@triton.jit
def _mask_postprocess_kernel(
    LOW, MASKS, COUNTS, BOXES,
    stride_lb, stride_lc, stride_ly,
    C, LH, LW, crop_h, crop_w, H, W,
    scale1_y, scale1_x, scale2_y, scale2_x,
    threshold, threshold_high, threshold_low,
    size_class,  # autotuning key only
    BLOCK: tl.constexpr,
):
    # The plane (b * C + c) and the pixel block within it share axis 0 (see folded_grid).
    n_blocks = tl.cdiv(H * W, BLOCK)
    pid = tl.program_id(0) % n_blocks
    plane_id = tl.program_id(0) // n_blocks
    b = plane_id // C
    c = plane_id % C
    # 64-bit plane offset: b * stride_lb passes 2**31 elements in large batches.
    plane = LOW + b.to(tl.int64) * stride_lb + c.to(tl.int64) * stride_lc

    offs = pid * BLOCK + tl.arange(0, BLOCK)
    valid = offs < H * W
    y = offs // W
    x = offs % W

    # Second resize: (crop_h, crop_w) cropped frame -> (H, W).
    y0, y1, wy = _source_index(y, scale2_y, crop_h)
    x0, x1, wx = _source_index(x, scale2_x, crop_w)
    # Clamp masked-off lanes into range so their (unused) loads stay in bounds.
    y0 = tl.where(valid, y0, 0)
    y1 = tl.where(valid, y1, 0)
    u00 = _upsampled(plane, stride_ly, y0, x0, scale1_y, scale1_x, LH, LW)
    u01 = _upsampled(plane, stride_ly, y0, x1, scale1_y, scale1_x, LH, LW)
    u10 = _upsampled(plane, stride_ly, y1, x0, scale1_y, scale1_x, LH, LW)
    u11 = _upsampled(plane, stride_ly, y1, x1, scale1_y, scale1_x, LH, LW)
    value = (1.0 - wy) * ((1.0 - wx) * u00 + wx * u01) + wy * ((1.0 - wx) * u10 + wx * u11)

    inside = (value > threshold) & valid
    tl.store(MASKS + plane_id.to(tl.int64) * H * W + offs, inside.to(tl.int8), mask=valid)

    n_high = tl.sum(((value > threshold_high) & valid).to(tl.int32), axis=0)
    n_low = tl.sum(((value > threshold_low) & valid).to(tl.int32), axis=0)
    tl.atomic_add(COUNTS + plane_id * 2, n_high)
    tl.atomic_add(COUNTS + plane_id * 2 + 1, n_low)

    # Box [x_min, y_min, x_max, y_max]; empty programs leave the sentinels untouched.
    tl.atomic_min(BOXES + plane_id * 4 + 0, tl.min(tl.where(inside, x, W), axis=0))
    tl.atomic_min(BOXES + plane_id * 4 + 1, tl.min(tl.where(inside, y, H), axis=0))
    tl.atomic_max(BOXES + plane_id * 4 + 2, tl.max(tl.where(inside, x, -1), axis=0))
    tl.atomic_max(BOXES + plane_id * 4 + 3, tl.max(tl.where(inside, y, -1), axis=0))


def mask_postprocess_triton(
    low_res_logits: torch.Tensor,
    input_size: Tuple[int, int],
    original_size: Tuple[int, int],
    *,
    mask_threshold: float = 0.0,
    stability_offset: float = 1.0,
    image_size: int = 1024,
    out: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fused :func:`sam_edge.postprocess.torch_ops.mask_postprocess`; same arguments and returns.

    Args:
        low_res_logits: (B, C, h_lr, w_lr) float32/float16/bfloat16 logits.
        input_size: (h, w) inside the image_size frame; original_size: (H, W).
        out: optional preallocated contiguous (B, C, H, W) uint8 buffer for the masks
            (returned viewed as bool).
    Returns:
        masks (B, C, H, W) bool, stability (B, C) float32, boxes (B, C, 4) int64 XYXY.
    """
    if low_res_logits.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"low_res_logits must be float32, float16 or bfloat16; got {low_res_logits.dtype}")
    low = low_res_logits if low_res_logits.stride(-1) == 1 else low_res_logits.contiguous()
    B, C, LH, LW = low.shape
    h, w = input_size
    H, W = original_size
    if H * W > 2**31 - 1:
        raise ValueError(f"original_size {(H, W)} has more than 2**31 - 1 pixels, which the kernel indexes in int32")
    device = low.device
    if out is None:
        masks = torch.empty(B, C, H, W, dtype=torch.uint8, device=device)
    elif out.shape != (B, C, H, W) or out.dtype != torch.uint8 or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous uint8 tensor of shape {(B, C, H, W)}")
    else:
        masks = out
    counts = torch.zeros(B * C, 2, dtype=torch.int32, device=device)
    # Sentinels [W, H, -1, -1] filled on the device (a host tensor would synchronise).
    boxes = torch.full((B * C, 4), -1, dtype=torch.int32, device=device)
    boxes[:, 0] = W
    boxes[:, 1] = H

    def grid(meta):
        return folded_grid(triton.cdiv(H * W, meta["BLOCK"]), B * C)

    if B * C == 0:
        return masks.view(torch.bool), torch.zeros(B, C, device=device), torch.zeros(B, C, 4, dtype=torch.long, device=device)

    # Scales in fp32 as PyTorch computes them (input size / output size).
    _mask_postprocess_kernel[grid](
        low, masks, counts, boxes,
        low.stride(0), low.stride(1), low.stride(2),
        C, LH, LW, h, w, H, W,
        LH / image_size, LW / image_size, h / H, w / W,
        float(mask_threshold), float(mask_threshold + stability_offset), float(mask_threshold - stability_offset),
        (B * C * H * W).bit_length(),
    )
    counts = counts.view(B, C, 2)
    stability = counts[..., 0] / counts[..., 1]
    boxes = boxes.view(B, C, 4).long()
    boxes = torch.where(boxes[..., 2:3] >= 0, boxes, torch.zeros_like(boxes))
    return masks.view(torch.bool), stability, boxes
