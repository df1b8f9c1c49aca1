"""Fused mask post-processing against the step-by-step reference, and the reference against official SAM.

Tolerance: the fused kernel evaluates the same two bilinear resizes as
PyTorch, but with its own operation order (and, for fp16/bf16 input, without
rounding the intermediate 1024-frame map to the input dtype). So a pixel may
flip only where the reference logit lies within `band` of the threshold:
  * fp32: band = 1e-4 (logits here are O(10); fp32 rounding is ~1e-6).
  * fp16/bf16: band = 4 * eps(dtype) * max|low-res logit|. Bilinear samples are
    convex combinations, so every value is bounded by max|logit|, and the
    reference rounds twice (the intermediate map and the output) to the input dtype.
Stability counts may then differ by at most the number of pixels in the band
around threshold +- offset, and boxes must be exactly the boxes of the
returned masks.

On CPU the kernel runs in the Triton interpreter, where each pixel costs 16
gathers, so output sizes are small; the stage-2 upsampling path is covered
cheaply by a smaller model frame (image_size=64, 16x16 low-res logits).
"""

import types

import pytest
import torch
import torch.nn.functional as F

from sam_edge.kernels import triton_support
from sam_edge.postprocess.torch_ops import (
    available_mask_backends,
    mask_postprocess,
    mask_postprocess_reference,
    resolve_mask_backend,
    masks_to_boxes_xyxy,
    upscale_mask_logits,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def make_logits(B, C, low_res, seed, dtype=torch.float32, smooth=8):
    """Blobby logits with sharp-ish edges, so masks have boundaries and several components."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.randn(B, C, smooth, smooth, generator=gen) * 6
    logits = F.interpolate(coarse, (low_res, low_res), mode="bilinear", align_corners=False)
    logits = logits + 0.5 * torch.randn(B, C, low_res, low_res, generator=gen)
    return logits.to(DEVICE, dtype)


def band_for(low_res_logits):
    if low_res_logits.dtype == torch.float32:
        return 1e-4
    return 4 * torch.finfo(low_res_logits.dtype).eps * low_res_logits.float().abs().max().item()


def check_against_reference(low, input_size, original_size, image_size, threshold=0.0, offset=1.0):
    from sam_edge.postprocess.triton_ops import mask_postprocess_triton

    B, C = low.shape[:2]
    H, W = original_size
    poisoned = torch.full((B, C, H, W), 7, dtype=torch.uint8, device=low.device)
    masks, stability, boxes = mask_postprocess_triton(
        low,
        input_size,
        original_size,
        mask_threshold=threshold,
        stability_offset=offset,
        image_size=image_size,
        out=poisoned,
    )
    assert poisoned.max().item() <= 1, "some mask pixels were never written"
    assert masks.shape == (B, C, H, W) and masks.dtype == torch.bool
    assert stability.shape == (B, C) and stability.dtype == torch.float32
    assert boxes.shape == (B, C, 4) and boxes.dtype == torch.int64

    logits = upscale_mask_logits(low, input_size, original_size, image_size).float()
    ref_masks, _, _ = mask_postprocess_reference(
        low, input_size, original_size, mask_threshold=threshold, stability_offset=offset, image_size=image_size
    )
    band = band_for(low)
    # The test is only meaningful when the masks have edges.
    assert ref_masks.any() and not ref_masks.all()

    differ = masks != ref_masks
    near = (logits - threshold).abs() < band
    assert not (differ & ~near).any(), (
        f"{int((differ & ~near).sum())} mask pixels differ although their logit is >= {band:.1e} from the threshold"
    )

    # Stability: counts may move only by the pixels in the band around each threshold.
    def count_bounds(t):
        exact = (logits > t).sum(dim=(-1, -2)).double()
        slack = ((logits - t).abs() < band).sum(dim=(-1, -2)).double()
        return exact - slack, exact + slack

    inter_lo, inter_hi = count_bounds(threshold + offset)
    union_lo, union_hi = count_bounds(threshold - offset)
    s = stability.double()
    low_bound = inter_lo.clamp(min=0) / union_hi
    high_bound = inter_hi / union_lo
    assert ((s >= low_bound - 1e-6) & (s <= high_bound + 1e-6)).all(), (stability, low_bound, high_bound)

    # Boxes are the boxes of the masks returned.
    assert torch.equal(boxes, masks_to_boxes_xyxy(masks))
    return differ.sum().item()


@pytest.mark.parametrize(
    "B, C, image_size, low_res, input_size, original_size, dtype",
    [
        # SAM's frame (256 -> 1024), downscaled to small originals.
        (1, 3, 1024, 256, (1024, 768), (64, 48), torch.float32),
        (2, 2, 1024, 256, (683, 1024), (40, 60), torch.float32),
        # A small frame, so both stages upsample cheaply; odd, non-square sizes.
        (1, 3, 64, 16, (64, 48), (100, 75), torch.float32),
        (2, 1, 64, 16, (37, 64), (53, 91), torch.float32),
        (1, 2, 64, 16, (64, 64), (64, 64), torch.float32),  # identity second resize
        (1, 3, 64, 16, (64, 48), (100, 75), torch.float16),
        (1, 2, 64, 16, (37, 64), (53, 91), torch.bfloat16),
    ],
)
def test_fused_matches_reference(B, C, image_size, low_res, input_size, original_size, dtype):
    pytest.importorskip("triton", reason="Triton is not installed")
    low = make_logits(B, C, low_res, seed=B * 100 + C + original_size[0], dtype=dtype)
    check_against_reference(low, input_size, original_size, image_size)


def test_fused_thresholds_and_strided_input():
    """Non-default threshold and offset, and a channel slice (non-contiguous planes)."""
    pytest.importorskip("triton", reason="Triton is not installed")
    low = make_logits(2, 4, 16, seed=21)[:, 1:]
    assert not low.is_contiguous()
    check_against_reference(low, (48, 64), (70, 90), 64, threshold=0.5, offset=2.0)


def test_many_masks_stay_within_grid_limits(monkeypatch):
    """70000 masks (more than a grid axis 1 holds) launch on axis 0 with every config autotune can pick."""
    pytest.importorskip("triton", reason="Triton is not installed")
    from sam_edge.postprocess import triton_ops as kernels

    from tests.kernels.test_triton_attention import GRID_LIMITS, LaunchRecorder

    recorder = LaunchRecorder(kernels._mask_postprocess_kernel, kernels.MASK_CONFIGS)
    monkeypatch.setattr(kernels, "_mask_postprocess_kernel", recorder)
    kernels.mask_postprocess_triton(torch.zeros(7, 10000, 4, 4, device=DEVICE), (16, 16), (3, 5), image_size=16)
    assert len(recorder.grids) == len(kernels.MASK_CONFIGS)
    for grid in recorder.grids:
        assert all(0 < n <= limit for n, limit in zip(grid, GRID_LIMITS)), grid


def test_outputs_past_int32_indexing_are_refused():
    pytest.importorskip("triton", reason="Triton is not installed")
    from sam_edge.postprocess.triton_ops import mask_postprocess_triton

    with pytest.raises(ValueError, match="2\\*\\*31"):
        mask_postprocess_triton(torch.zeros(1, 1, 4, 4, device=DEVICE), (16, 16), (50000, 50000), image_size=16)


def test_fused_empty_and_full_masks():
    pytest.importorskip("triton", reason="Triton is not installed")
    low = torch.empty(1, 3, 16, 16, device=DEVICE)
    low[:, 0] = -10.0  # empty: union is 0, so stability is NaN as in the official code
    low[:, 1] = 10.0  # full
    low[:, 2] = -0.5  # empty mask, but every pixel is in the union
    masks, stability, boxes = mask_postprocess(low, (64, 48), (30, 20), image_size=64, backend="triton")
    ref_masks, ref_stability, ref_boxes = mask_postprocess_reference(low, (64, 48), (30, 20), image_size=64)
    assert torch.equal(masks, ref_masks)
    assert torch.equal(boxes, ref_boxes)
    assert boxes[0].tolist() == [[0, 0, 0, 0], [0, 0, 19, 29], [0, 0, 0, 0]]
    assert torch.isnan(stability[0, 0]) and torch.isnan(ref_stability[0, 0])
    assert stability[0, 1:].tolist() == [1.0, 0.0] == ref_stability[0, 1:].tolist()


@pytest.mark.parametrize(
    "input_size, original_size", [((1024, 768), (1200, 900)), ((683, 1024), (480, 720)), ((1024, 1024), (1024, 1024))]
)
def test_reference_matches_official_sam(input_size, original_size):
    """The reference is the official postprocess_masks, calculate_stability_score and batched_mask_to_box."""
    sam = pytest.importorskip("segment_anything.modeling.sam", reason="official segment_anything not installed")
    amg = pytest.importorskip("segment_anything.utils.amg")
    low = make_logits(1, 3, 256, seed=original_size[0]).cpu()
    owner = types.SimpleNamespace(image_encoder=types.SimpleNamespace(img_size=1024))
    official_logits = sam.Sam.postprocess_masks(owner, low, input_size, original_size)
    masks, stability, boxes = mask_postprocess_reference(low, input_size, original_size)
    assert torch.equal(masks, official_logits > 0.0)
    assert torch.equal(stability, amg.calculate_stability_score(official_logits, 0.0, 1.0))
    assert torch.equal(boxes, amg.batched_mask_to_box(official_logits > 0.0))


@pytest.mark.skipif(
    DEVICE == "cpu" and not triton_support.interpreting(),
    reason="no CUDA device and TRITON_INTERPRET is not 1: the Triton kernel cannot run here",
)
def test_auto_dispatch_and_env_switch(monkeypatch):
    pytest.importorskip("triton", reason="Triton is not installed")
    low = torch.zeros(1, 1, 16, 16, device=DEVICE)
    monkeypatch.delenv("SAM_EDGE_MASK_BACKEND", raising=False)
    # CUDA tensors get the kernel; CPU tensors never pick the interpreter.
    assert resolve_mask_backend(low) == ("triton" if low.is_cuda else "reference")
    assert resolve_mask_backend(low.cpu()) == "reference"
    monkeypatch.setenv("SAM_EDGE_MASK_BACKEND", "triton")
    assert resolve_mask_backend(low) == "triton"
    monkeypatch.setenv("SAM_EDGE_MASK_BACKEND", "bogus")
    with pytest.raises(ValueError, match="bogus"):
        resolve_mask_backend(low)


def test_forced_triton_without_interpreter_errors(monkeypatch):
    low = torch.zeros(1, 1, 16, 16)
    monkeypatch.setattr(triton_support, "interpreting", lambda: False)
    assert "CUDA" in available_mask_backends(low)["triton"]
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        mask_postprocess(low, (64, 64), (8, 8), image_size=64, backend="triton")


def test_rejects_bad_inputs():
    low = torch.zeros(1, 1, 16, 16)
    with pytest.raises(ValueError, match=r"\(B, C, h, w\)"):
        mask_postprocess(low[0], (64, 64), (8, 8), image_size=64)
    with pytest.raises(ValueError, match="fit"):
        mask_postprocess(low, (65, 64), (8, 8), image_size=64)
    with pytest.raises(ValueError, match="positive"):
        mask_postprocess(low, (64, 64), (0, 8), image_size=64)
    with pytest.raises(TypeError, match="float"):
        mask_postprocess(low.long(), (64, 64), (8, 8), image_size=64)
