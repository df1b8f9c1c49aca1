"""The quantize fusions (sam_edge/export/quantize_fusions.py) on small graphs built
here: each pattern becomes its one sam_edge_ops node and computes what the
unfused graph does under ONNX Runtime, to one quantization step where float32
rounding sits on a boundary (the ops' own tests bound where: tests/kernels/
test_ort_ops.py); and every near miss of a pattern is left as it is.
"""

import math

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from sam_edge.export.quantize_fusions import FUSIONS, fuse_quantize  # noqa: E402
from sam_edge.runtime.ort_ops import DOMAIN, library_refusal, register_ort_ops  # noqa: E402

needs_library = pytest.mark.skipif(library_refusal() is not None,
                                   reason=f"sam_edge_ops cannot run here: {library_refusal()}")

SHAPE = [2, 5, 48]


def _const(name, value):
    return helper.make_node("Constant", [], [name], name=name + "_node",
                            value=numpy_helper.from_array(np.array(value, dtype=np.float32), name + "_value"))


def _quantize_inits(scale=0.021, zero=7, zero_dtype=np.uint8, per_channel=False):
    scale_value = np.full(SHAPE[-1], scale, np.float32) if per_channel else np.array(scale, np.float32)
    return [numpy_helper.from_array(scale_value, "y_scale"),
            numpy_helper.from_array(np.array(zero, dtype=zero_dtype), "y_zero_point")]


def _gelu_nodes(half=0.5, sqrt2=math.sqrt(2.0)):
    """GELU as torch's exporter writes nn.GELU(), then QuantizeLinear."""
    return [
        _const("sqrt2", sqrt2), _const("one", 1.0), _const("half", half),
        helper.make_node("Div", ["x", "sqrt2"], ["div"], name="div"),
        helper.make_node("Erf", ["div"], ["erf"], name="erf"),
        helper.make_node("Add", ["erf", "one"], ["add"], name="add"),
        helper.make_node("Mul", ["x", "add"], ["mul"], name="mul"),
        helper.make_node("Mul", ["mul", "half"], ["gelu"], name="mul_half"),
        helper.make_node("QuantizeLinear", ["gelu", "y_scale", "y_zero_point"], ["q"], name="quantize"),
    ]


def _fused(nodes, inits, outputs=("q",), fusions=FUSIONS, value_info=None):
    """fuse_quantize, then the dead-node sweep cut_encoder does."""
    nodes = fuse_quantize(nodes, {t.name: t for t in inits}, list(outputs), value_info or {}, fusions)
    while True:
        used = {i for n in nodes for i in n.input} | set(outputs)
        live = [n for n in nodes if any(o in used for o in n.output)]
        if len(live) == len(nodes):
            return live
        nodes = live


def _run(nodes, inits, feeds, outputs):
    graph = helper.make_graph(
        nodes, "fusion", [helper.make_tensor_value_info(name, TensorProto.FLOAT, SHAPE) for name in feeds],
        [helper.make_tensor_value_info(name, kind, SHAPE) for name, kind in outputs], inits)
    model = helper.make_model(graph, ir_version=8, opset_imports=[helper.make_opsetid("", 17),
                                                                  helper.make_opsetid(DOMAIN, 1)])
    options = ort.SessionOptions()
    register_ort_ops(options)
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"]).run(None, feeds)


def _assert_within_a_step(fused, unfused):
    """One step at most, and on few values: float32 rounding on a boundary."""
    diff = np.abs(fused.astype(np.int64) - unfused.astype(np.int64))
    assert diff.max() <= 1 and np.count_nonzero(diff) <= 0.01 * diff.size, (diff.max(), np.count_nonzero(diff))


@needs_library
def test_gelu_then_quantize_becomes_one_node():
    inits = _quantize_inits()
    nodes = _gelu_nodes()
    fused = _fused(nodes, inits)
    assert [(n.op_type, n.domain) for n in fused] == [("GeluQuantizeLinear", DOMAIN)]
    assert list(fused[0].input) == ["x", "y_scale", "y_zero_point"] and list(fused[0].output) == ["q"]
    x = (np.random.default_rng(1).standard_normal(SHAPE) * 2).astype(np.float32)
    (ours,) = _run(fused, inits, {"x": x}, [("q", TensorProto.UINT8)])
    (theirs,) = _run(nodes, inits, {"x": x}, [("q", TensorProto.UINT8)])
    _assert_within_a_step(ours, theirs)


@pytest.mark.parametrize("case", ["per-channel scale", "int8 zero point", "not GELU's half", "not sqrt(2)",
                                  "GELU read twice", "turned off"])
def test_gelu_near_misses_are_left_alone(case):
    inits = _quantize_inits(per_channel=case == "per-channel scale",
                            zero_dtype=np.int8 if case == "int8 zero point" else np.uint8)
    nodes = _gelu_nodes(half=0.4 if case == "not GELU's half" else 0.5,
                        sqrt2=1.5 if case == "not sqrt(2)" else math.sqrt(2.0))
    outputs = ["q", "gelu"] if case == "GELU read twice" else ["q"]
    fusions = [f for f in FUSIONS if f != "gelu_quantize"] if case == "turned off" else FUSIONS
    fused = _fused(nodes, inits, outputs, fusions)
    assert [n.op_type for n in fused] == [n.op_type for n in nodes]


def test_unknown_fusions_are_refused():
    with pytest.raises(ValueError, match=r"unknown fusions \['gelu'\]"):
        fuse_quantize([], {}, [], {}, ["gelu"])


def _layer_norm_graph(with_residual=True, per_channel=False, read_twice=False, axis=-1):
    """(nodes, inits, value_info): [residual Add ->] LayerNormalization -> QuantizeLinear,
    the sum also read by the next residual Add, as in an encoder block."""
    rng = np.random.default_rng(2)
    inits = _quantize_inits(scale=0.04, zero=120, per_channel=per_channel) + [
        numpy_helper.from_array(rng.standard_normal(SHAPE[-1]).astype(np.float32), "gamma"),
        numpy_helper.from_array(rng.standard_normal(SHAPE[-1]).astype(np.float32), "beta")]
    x = "sum" if with_residual else "x"
    nodes = ([helper.make_node("Add", ["x", "block"], ["sum"], name="residual")] if with_residual else []) + [
        helper.make_node("LayerNormalization", [x, "gamma", "beta"], ["norm"], name="norm", axis=axis,
                         epsilon=1e-6),
        helper.make_node("QuantizeLinear", ["norm", "y_scale", "y_zero_point"], ["q"], name="quantize"),
        helper.make_node("Add", [x, "block"], ["next"], name="next_residual"),
    ]
    value_info = {name: helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", *SHAPE[1:]])
                  for name in ("x", "block", "sum", "norm")}
    outputs = ["q", "next"] + (["norm"] if read_twice else [])
    return nodes, inits, value_info, outputs


@needs_library
@pytest.mark.parametrize("with_residual", [True, False], ids=["residual", "no-residual"])
def test_layer_norm_then_quantize_becomes_one_node(with_residual):
    nodes, inits, value_info, outputs = _layer_norm_graph(with_residual)
    fused = _fused(nodes, inits, outputs, value_info=value_info)
    op = "SkipLayerNormQuantizeLinear" if with_residual else "LayerNormQuantizeLinear"
    assert [n.op_type for n in fused] == [op, "Add"]
    if with_residual:  # the sum keeps its name: the next residual Add reads it
        assert list(fused[0].output) == ["q", "sum"] and list(fused[0].input[:2]) == ["x", "block"]
    rng = np.random.default_rng(3)
    feeds = {"x": (rng.standard_normal(SHAPE) * 3 + 1).astype(np.float32),
             "block": rng.standard_normal(SHAPE).astype(np.float32)}
    kinds = [("q", TensorProto.UINT8), ("next", TensorProto.FLOAT)]
    ours = _run(fused, inits, feeds, kinds)
    theirs = _run(nodes, inits, feeds, kinds)
    _assert_within_a_step(ours[0], theirs[0])
    np.testing.assert_array_equal(ours[1], theirs[1])  # the residual stream is untouched


@pytest.mark.parametrize("case", ["per-channel scale", "norm read twice", "not the last axis", "turned off"])
def test_layer_norm_near_misses_are_left_alone(case):
    nodes, inits, value_info, outputs = _layer_norm_graph(
        per_channel=case == "per-channel scale", read_twice=case == "norm read twice",
        axis=1 if case == "not the last axis" else -1)
    fusions = [f for f in FUSIONS if f != "layer_norm_quantize"] if case == "turned off" else FUSIONS
    fused = _fused(nodes, inits, outputs, fusions, value_info=value_info)
    assert [n.op_type for n in fused] == [n.op_type for n in nodes]


def test_a_broadcasting_residual_add_keeps_its_add():
    """An Add that broadcasts (a known 1 against another size) is not the residual
    the skip op takes: the norm alone is fused."""
    nodes, inits, value_info, outputs = _layer_norm_graph()
    value_info["block"] = helper.make_tensor_value_info("block", TensorProto.FLOAT, [1, 1, SHAPE[-1]])
    fused = _fused(nodes, inits, outputs, value_info=value_info)
    assert [n.op_type for n in fused] == ["Add", "LayerNormQuantizeLinear", "Add"]
