"""Fixtures shared by the TensorRT export tests (test_tensorrt_*.py): the tiny ONNX graphs, their
int8 QDQ form, a small SAM, and the spec'd TensorRT fakes installed where sam-edge imports them."""

import pytest


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    from tensorrt_graphs import export_mlp, export_tiny_decoder

    d = tmp_path_factory.mktemp("trt_graphs")
    return {
        "fast": export_tiny_decoder(d / "fast.onnx", with_orig_im_size=False),
        "trap": export_tiny_decoder(d / "trap.onnx", with_orig_im_size=True),
        "mlp": export_mlp(d / "mlp.onnx"),
        "dir": d,
    }


@pytest.fixture(scope="module")
def small_sam(small_config):
    pytest.importorskip("torch")
    from sam_edge.builder import build_sam_from_config

    return build_sam_from_config(small_config).eval()


@pytest.fixture(scope="module")
def qdq(graphs):
    import numpy as np

    from tensorrt_graphs import quantize_mlp_qdq

    rng = np.random.default_rng(0)
    calibration = rng.standard_normal((64, 16)).astype(np.float32)
    path = quantize_mlp_qdq(graphs["mlp"], graphs["dir"] / "mlp_qdq.onnx", calibration)
    return path, rng.standard_normal((512, 16)).astype(np.float32)


@pytest.fixture
def fake_trt(monkeypatch):
    """The spec'd fakes of TensorRT and the CUDA runtime (tests/helpers/tensorrt_fakes.py), installed where
    sam-edge imports them; returns the fake `tensorrt` module."""
    import sys

    from sam_edge.runtime import cuda_buffers

    from tensorrt_fakes import FakeCudaRuntime, fake_tensorrt

    cuda = FakeCudaRuntime()
    trt = fake_tensorrt(cuda)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(cuda_buffers, "cudart", lambda: cuda)
    return trt
