"""sam_edge.postprocess.cuda: host-side plumbing everywhere, kernels on a GPU.

The kernels are compared with the CPU ops of sam_edge.postprocess, which
tests/test_postprocess_ops.py ties to the official references. Without a CUDA
device (or without sam_edge._C_cuda) those tests skip and say why.
"""

import types

import numpy as np
import pytest
import torch

import sam_edge.postprocess as pp
import sam_edge.postprocess.cuda as pc

amg = pytest.importorskip("segment_anything.utils.amg")

needs_gpu = pytest.mark.skipif(
    not (pc.available() and torch.cuda.is_available()),
    reason=f"needs sam_edge._C_cuda and a CUDA device (CUDA path: {pc.status()})",
)


def column_major_boundaries(masks):
    """Run boundaries as the GPU kernel reports them, computed on the CPU."""
    n, h, w = masks.shape
    flat = masks.transpose(0, 2, 1).reshape(n, h * w)
    previous = np.concatenate([np.zeros((n, 1), bool), flat[:, :-1]], axis=1)
    mask_index, offset = np.nonzero(flat != previous)
    return mask_index * h * w + offset


@pytest.mark.parametrize("h,w", [(1, 1), (3, 5), (64, 33)])
def test_rles_from_change_positions_match_official(h, w):
    rng = np.random.default_rng(h + w)
    masks = rng.random((4, h, w)) < 0.4
    masks[0] = False
    masks[1] = True
    rles = pc.rles_from_change_positions(column_major_boundaries(masks), 4, h, w)
    official = amg.mask_to_rle_pytorch(torch.from_numpy(masks))
    assert [r["counts"] for r in rles] == [r["counts"] for r in official]


def test_cuda_array_interface_is_read():
    buf = types.SimpleNamespace(
        __cuda_array_interface__={"data": (12345, False), "shape": (2, 3), "typestr": "<f4", "version": 3}
    )
    a = pc.device_array(buf)
    assert (a.ptr, a.shape, a.dtype) == (12345, (2, 3), np.dtype(np.float32))
    strided = types.SimpleNamespace(
        __cuda_array_interface__={"data": (1, False), "shape": (2, 3), "typestr": "<f4", "strides": (4, 8)}
    )
    with pytest.raises(ValueError, match="C-contiguous"):
        pc.device_array(strided)


def test_dlpack_capsule_is_read_and_cpu_rejected():
    t = torch.arange(12, dtype=torch.float32).reshape(3, 4)[1:]
    parsed = pc._from_dlpack_capsule(t.__dlpack__(), t)
    assert parsed.ptr == t.data_ptr()
    assert parsed.shape == (2, 4) and parsed.dtype == np.float32
    with pytest.raises(TypeError, match="not on a CUDA device"):
        pc.device_array(t)
    with pytest.raises(TypeError, match="CUDA array"):
        pc.device_array([1.0, 2.0])


def test_status_explains_itself():
    s = pc.status()
    assert s.startswith(("not built: ", "built"))


# ---------------------------------------------------------------- on a GPU


def blobby(rng, n, h, w):
    noise = torch.from_numpy(rng.standard_normal((n, 1, max(2, h // 8), max(2, w // 8))).astype(np.float32))
    return (torch.nn.functional.interpolate(noise, (h, w), mode="bicubic")[:, 0] > 0.3).numpy()


@needs_gpu
@pytest.mark.parametrize("h,w", [(1, 1), (7, 5), (480, 640), (2160, 3840)])
def test_gpu_masks_rle_boxes_stability_match_cpu(h, w):
    rng = np.random.default_rng(h)
    masks = blobby(rng, 3, h, w)
    masks[0] = False
    logits = rng.standard_normal((3, h, w)).astype(np.float32) * 3
    dm = torch.from_numpy(masks).cuda()
    np.testing.assert_array_equal(pc.masks_to_boxes(dm).cpu().numpy(), pp.masks_to_boxes(masks))
    assert pc.mask_to_rle(dm) == pp.mask_to_rle(masks)
    np.testing.assert_array_equal(
        pc.stability_score(torch.from_numpy(logits).cuda(), 0.0, 1.0).cpu().numpy(), pp.stability_score(logits)
    )


@needs_gpu
@pytest.mark.parametrize("input_size,original_size", [((768, 1024), (480, 640)), ((576, 1024), (1080, 1920))])
def test_gpu_upsample_is_bit_identical_to_cpu(input_size, original_size):
    rng = np.random.default_rng(0)
    low = (rng.standard_normal((2, 3, 256, 256)) * 8).astype(np.float32)
    gpu = pc.upsample_threshold_stability(torch.from_numpy(low).cuda(), input_size, original_size, return_logits=True)
    cpu = pp.upsample_threshold_stability(low, input_size, original_size, return_logits=True)
    for g, c in zip(gpu, cpu):
        np.testing.assert_array_equal(g.cpu().numpy(), c)


@needs_gpu
@pytest.mark.parametrize("n", [1, 500, 3000])
def test_gpu_nms_matches_cpu(n):
    rng = np.random.default_rng(n)
    xy = rng.random((n, 2)).astype(np.float32) * 300
    boxes = np.concatenate([xy, xy + 5 + rng.random((n, 2)).astype(np.float32) * 60], axis=1)
    scores = rng.random(n).astype(np.float32)
    categories = rng.integers(0, 3, n)
    kept = pc.batched_nms(
        torch.from_numpy(boxes).cuda(), torch.from_numpy(scores).cuda(), torch.from_numpy(categories).cuda(), 0.6
    )
    np.testing.assert_array_equal(kept, pp.batched_nms(boxes, scores, categories, 0.6))
