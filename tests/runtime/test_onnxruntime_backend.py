"""session_options and ONNX Runtime's int8 GEMMs: the signed weights stay signed, for
the u8s8 VNNI (or AMX) kernels, on CPUs that multiply u8 by s8 without saturating, and
move to the u8u8 kernels only where the u8s8 kernel saturates (x86 without VNNI); the
products are exact against float64 either way."""

import platform

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from sam_edge.runtime import cpu  # noqa: E402
from sam_edge.runtime.onnxruntime_backend import int8_gemm_saturates, session_options  # noqa: E402


def _int8_linear(w_q: np.ndarray, w_scale: np.ndarray, x_scale: float, x_zero: int, rows: int):
    """A MatMulIntegerToFloat over uint8 activations and per-column int8 weights, as the
    int8 bundles' encoder graphs hold them."""
    k, n = w_q.shape
    inits = [numpy_helper.from_array(w_q, "w"), numpy_helper.from_array(np.array(x_scale, np.float32), "x_scale"),
             numpy_helper.from_array(w_scale.astype(np.float32), "w_scale"),
             numpy_helper.from_array(np.array(x_zero, np.uint8), "x_zero"),
             numpy_helper.from_array(np.zeros(n, np.int8), "w_zero")]
    node = helper.make_node("MatMulIntegerToFloat", ["x", "w", "x_scale", "w_scale", "x_zero", "w_zero"], ["y"],
                            domain="com.microsoft")
    graph = helper.make_graph([node], "linear", [helper.make_tensor_value_info("x", TensorProto.UINT8, [rows, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, n])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])


def test_saturation_decision_follows_the_cpu_flags():
    assert int8_gemm_saturates({"avx2", "fma"}, "x86_64")
    assert int8_gemm_saturates({"avx2", "avx512f", "avx512bw"}, "x86_64")  # Skylake-SP: AVX-512, no VNNI
    assert not int8_gemm_saturates({"avx2", "avx512f", "avx512_vnni"}, "x86_64")
    assert not int8_gemm_saturates({"avx2", "avx512f", "avx512_vnni", "amx_int8", "amx_tile"}, "x86_64")
    assert not int8_gemm_saturates({"avx2", "avx_vnni"}, "x86_64")  # AVX-VNNI without AVX-512
    assert int8_gemm_saturates(set(), "AMD64")  # flags unknown on x86: the safe kernels
    assert not int8_gemm_saturates(set(), "aarch64")  # the option acts on x86 only


def test_int8_weights_stay_signed_where_the_cpu_has_vnni(tmp_path):
    """What ONNX Runtime does with the options on this host: an optimized graph with u8
    weights is the u8u8 path, which on a VNNI or AMX CPU runs at about half the u8s8 rate."""
    rng = np.random.default_rng(1)
    model = _int8_linear(rng.integers(-127, 128, (64, 32), dtype=np.int8), rng.uniform(1e-3, 2e-2, 32), 0.02, 128, 4)
    options = session_options(1)
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    weight_types = {t.name: TensorProto.DataType.Name(t.data_type)
                    for t in onnx.load(str(tmp_path / "optimized.onnx")).graph.initializer}
    weight = next(name for name in weight_types if name.startswith("w") and "scale" not in name
                  and "zero" not in name)
    flags = cpu.cpu_flags()
    if int8_gemm_saturates(flags, platform.machine()):
        assert weight_types[weight] == "UINT8", (weight_types, sorted(flags & cpu.VNNI_FLAGS))
    else:
        assert weight_types[weight] == "INT8", (weight_types, sorted(flags & cpu.VNNI_FLAGS))


def test_int8_gemm_is_exact_where_pairs_overflow_int16():
    """Activations near 255 against weights near +-127: every adjacent pair of products
    exceeds int16, which a saturating u8s8 kernel would clip; the result must be the exact
    integer product, scaled, to float32 rounding."""
    rng = np.random.default_rng(2)
    k, n, rows = 256, 48, 16
    w_q = rng.choice(np.array([-127, -120, 119, 127], np.int8), size=(k, n))
    w_scale = rng.uniform(1e-3, 2e-2, n)
    x_scale, x_zero = 0.03, 7
    x_q = rng.integers(240, 256, (rows, k), dtype=np.uint8)
    session = ort.InferenceSession(_int8_linear(w_q, w_scale, x_scale, x_zero, rows).SerializeToString(),
                                   session_options(2), providers=["CPUExecutionProvider"])
    got = session.run(None, {"x": x_q})[0]
    exact = ((x_q.astype(np.float64) - x_zero) * np.float64(np.float32(x_scale))) @ (
        w_q.astype(np.float64) * w_scale.astype(np.float32).astype(np.float64))
    pairs = x_q[:, 0:2].astype(np.int64) @ np.abs(w_q[0:2].astype(np.int64))
    assert pairs.min() > 32767, "the inputs should overflow int16 in pairs"
    # Exact int32 accumulation, then one float32 scale: within a few float32 ulps of the range.
    assert np.abs(got - exact).max() <= 1e-6 * np.abs(exact).max(), np.abs(got - exact).max() / np.abs(exact).max()
