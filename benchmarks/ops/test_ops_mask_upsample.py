"""Mask upsampling to the original image: the official Sam.postprocess_masks (+
threshold) against sam-edge's paths: the fused upsample-threshold-stability
(compiled or numpy), the ONNX Runtime backend's numpy resize, and the torch
kernel module's reference."""

import types

import numpy as np
import pytest

LOW_RES = (1, 3, 256, 256)  # one prompt's three masks
INPUT_SIZE, ORIGINAL_SIZE = (768, 1024), (480, 640)


@pytest.fixture(scope="module")
def low_res():
    rng = np.random.default_rng(0)
    return (rng.standard_normal(LOW_RES) * 4).astype(np.float32)


def test_official(benchmark, low_res):
    torch = pytest.importorskip("torch")
    modeling = pytest.importorskip("segment_anything.modeling")
    # postprocess_masks reads only self.image_encoder.img_size: no model needed.
    owner = types.SimpleNamespace(image_encoder=types.SimpleNamespace(img_size=1024))
    x = torch.from_numpy(low_res)
    benchmark.group = "mask-upsample"
    benchmark.extra_info.update(implementation="official Sam.postprocess_masks > 0", low_res=LOW_RES,
                                original_size=ORIGINAL_SIZE)
    benchmark(lambda: modeling.Sam.postprocess_masks(owner, x, INPUT_SIZE, ORIGINAL_SIZE) > 0.0)


def test_fused(benchmark, low_res, postprocess_path):
    import sam_edge.postprocess as pp

    benchmark.group = "mask-upsample"
    benchmark.extra_info.update(implementation=postprocess_path + " upsample_threshold_stability",
                                low_res=LOW_RES, original_size=ORIGINAL_SIZE)
    benchmark(pp.upsample_threshold_stability, low_res, INPUT_SIZE, ORIGINAL_SIZE)


def test_onnxruntime_backend_resize(benchmark, low_res):
    from sam_edge import postprocess as pp

    benchmark.group = "mask-upsample"
    benchmark.extra_info.update(implementation="sam-edge onnxruntime backend postprocess_masks > 0 (numpy)",
                                low_res=LOW_RES, original_size=ORIGINAL_SIZE)
    benchmark(lambda: pp.upscale_mask_logits(low_res, INPUT_SIZE, ORIGINAL_SIZE) > 0.0)


def test_torch_kernel_module(benchmark, low_res):
    torch = pytest.importorskip("torch")
    from sam_edge.postprocess.torch_ops import mask_postprocess

    x = torch.from_numpy(low_res)
    benchmark.group = "mask-upsample"
    benchmark.extra_info.update(implementation="sam-edge postprocess.torch_ops.mask_postprocess (torch, CPU: reference)",
                                low_res=LOW_RES, original_size=ORIGINAL_SIZE)
    benchmark(mask_postprocess, x, INPUT_SIZE, ORIGINAL_SIZE)
