"""The symmetric int8 QDQ rewrite for TensorRT (sam_edge.export.tensorrt_qdq), validated with ONNX Runtime."""

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="the TensorRT preparation reads graphs with the onnx package")
pytest.importorskip("onnxruntime", reason="prepared graphs are validated with ONNX Runtime")

from onnx import TensorProto  # noqa: E402

from sam_edge.export import tensorrt_prepare as prep  # noqa: E402
from sam_edge.export.tensorrt_qdq import to_symmetric_int8_qdq  # noqa: E402

from tensorrt_graphs import rel_l2 as _rel_l2  # noqa: E402


# ---------------------------------------------------------------- int8 QDQ for TensorRT


def test_symmetric_int8_qdq_is_what_tensorrt_takes(qdq):
    from onnx import numpy_helper

    src, _ = qdq
    original = onnx.load(src)
    uint8_zero_points = [t for t in original.graph.initializer if t.data_type == TensorProto.UINT8]
    assert uint8_zero_points, "ONNX Runtime's QDQ graph quantizes activations to uint8"
    converted, counts = to_symmetric_int8_qdq(original)
    onnx.checker.check_model(converted)
    inits = {t.name: numpy_helper.to_array(t) for t in converted.graph.initializer}
    for node in converted.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            assert len(node.input) == 3
            zp = inits[node.input[2]]
            assert zp.dtype == np.int8 and not zp.any(), f"{node.name}: zero point must be int8 0"
            assert (inits[node.input[1]] > 0).all()
            if node.input[0] in inits:
                assert inits[node.input[0]].dtype == np.int8  # no int32 bias left to dequantize
    assert counts["quantizers_converted"] == len(uint8_zero_points)
    assert counts["int32_folded"] > 0 and counts["clamps_added"] >= 1  # ORT folded the ReLU into a uint8 quantizer


def test_symmetric_int8_qdq_accuracy_in_onnxruntime(qdq, graphs):
    """Each activation quantizer keeps its range; its step grows by at most 255/127 (~2.01x,
    one-sided ranges), and rounding noise scales with the step. So the converted graph's
    error against fp32 is at most ~2.01x the original QDQ graph's (weights are unchanged),
    with 25% for the randomness of summed rounding errors. Graphs run node by node
    (optimize=False): ONNX Runtime's fused int8 kernels saturate on CPUs without VNNI,
    which would measure the CPU, not the rewrite."""
    src, x = qdq
    converted, _ = to_symmetric_int8_qdq(onnx.load(src))
    reference = prep.run_onnxruntime(graphs["mlp"], {"x": x}, optimize=False)[0]
    original = prep.run_onnxruntime(src, {"x": x}, optimize=False)[0]
    ours = prep.run_onnxruntime(converted.SerializeToString(), {"x": x}, optimize=False)[0]
    original_error = _rel_l2(original, reference)
    assert original_error > 1e-4, "the QDQ graph should actually quantize"
    assert _rel_l2(ours, reference) <= 2.01 * 1.25 * original_error


def test_clamp_is_restored(qdq):
    """Without the restored Relu the folded ReLU would be lost: negative activations would pass."""
    src, x = qdq
    converted, _ = to_symmetric_int8_qdq(onnx.load(src))
    relus = [n for n in converted.graph.node if n.op_type == "Relu"]
    assert relus
    without = onnx.ModelProto()
    without.CopyFrom(converted)
    for node in without.graph.node:
        if node.op_type == "Relu":
            node.op_type = "Identity"
    reference = prep.run_onnxruntime(src, {"x": x}, optimize=False)[0]
    assert _rel_l2(prep.run_onnxruntime(without.SerializeToString(), {"x": x}, optimize=False)[0], reference) > 0.1
    assert _rel_l2(prep.run_onnxruntime(converted.SerializeToString(), {"x": x}, optimize=False)[0], reference) < 0.1
