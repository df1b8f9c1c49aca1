"""Precision plans (sam_edge.export.tensorrt_precision)."""

import pytest

onnx = pytest.importorskip("onnx", reason="the TensorRT preparation reads graphs with the onnx package")
pytest.importorskip("onnxruntime", reason="prepared graphs are validated with ONNX Runtime")

from sam_edge.export.tensorrt_precision import int8_latency_warning, precision_plan  # noqa: E402


# ---------------------------------------------------------------- precision


@pytest.mark.parametrize(
    "precision,types,has_qdq,strongly_typed,expected",
    [
        ("fp16", ["float16", "float32"], False, None, (True, ())),
        ("fp16", ["float32"], False, None, (False, ("FP16", "OBEY_PRECISION_CONSTRAINTS"))),
        ("int8", ["float32"], True, None, (True, ())),
        ("int8", ["float32"], True, False, (False, ("INT8", "FP16", "OBEY_PRECISION_CONSTRAINTS"))),
        ("fp32", ["float32"], False, None, (True, ())),
    ],
)
def test_precision_plan(precision, types, has_qdq, strongly_typed, expected):
    plan = precision_plan(precision, types, has_qdq, strongly_typed)
    assert (plan.strongly_typed, plan.flags) == expected
    assert plan.pin_fp32_islands == (not plan.strongly_typed and precision != "fp32")


@pytest.mark.parametrize(
    "args,message",
    [
        (("int8", ["float32"], False), "QDQ"),
        (("fp16", ["float32"], True), "int8"),
        (("fp32", ["float16"], False), "fp32 graph"),
        (("fp16", ["float32"], False, True), "strongly typed"),
        (("fp16", ["float32"], False, None, 11), "TensorRT 11"),
        (("bf16", ["float32"], False), "precision must be"),
    ],
)
def test_precision_plan_refuses(args, message):
    with pytest.raises(ValueError, match=message):
        precision_plan(*args)


def test_int8_latency_warning():
    assert int8_latency_warning(5.0, 4.0) and "not faster" in int8_latency_warning(4.0, 4.0)
    assert int8_latency_warning(3.0, 4.0) is None
    assert int8_latency_warning(None, 4.0) is None and int8_latency_warning(3.0, None) is None
