"""The value-dependent-shape checker (sam_edge.export.tensorrt_graph_checks)."""

import pytest

onnx = pytest.importorskip("onnx", reason="the TensorRT preparation reads graphs with the onnx package")
pytest.importorskip("onnxruntime", reason="prepared graphs are validated with ONNX Runtime")

from onnx import TensorProto, helper  # noqa: E402

from sam_edge.export import tensorrt_prepare as prep  # noqa: E402
from sam_edge.export.tensorrt_graph_checks import check_static_shape_graph, input_specs, value_dependent_shape_uses  # noqa: E402
from sam_edge.export.tensorrt_profiles import decoder_profiles, validate_profile  # noqa: E402


# ---------------------------------------------------------------- value-dependent shapes


def test_checker_catches_the_orig_im_size_trap(graphs):
    uses = value_dependent_shape_uses(graphs["trap"])
    assert uses, "the orig_im_size graph crops and resizes by an input's value"
    assert {u.input for u in uses} == {"orig_im_size"}
    assert {"Slice", "Resize"} <= {u.op_type for u in uses}
    with pytest.raises(ValueError, match="orig_im_size"):
        check_static_shape_graph(graphs["trap"], "trap")


def test_checker_passes_the_fast_decoder(graphs):
    # Its Expand / Reshape / Resize shapes all come from Shape(point_coords) or constants.
    ops = {n.op_type for n in onnx.load(graphs["fast"]).graph.node}
    assert {"Shape", "Expand"} <= ops
    assert value_dependent_shape_uses(graphs["fast"]) == []
    check_static_shape_graph(graphs["fast"])


def _graph(nodes, inputs, initializers=()):
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, None)
    model = helper.make_model(helper.make_graph(nodes, "g", inputs, [out], list(initializers)))
    return model


X = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])
S = helper.make_tensor_value_info("s", TensorProto.INT64, [2])


@pytest.mark.parametrize(
    "nodes,inputs,expected",
    [
        # An input used as a target shape, directly and after arithmetic.
        ([helper.make_node("Reshape", ["x", "s"], ["out"])], [X, S], [("s", "Reshape", 1)]),
        ([helper.make_node("Mul", ["s", "s"], ["t"]), helper.make_node("Reshape", ["x", "t"], ["out"])], [X, S],
         [("s", "Reshape", 1)]),
        ([helper.make_node("ConstantOfShape", ["s"], ["out"])], [S], [("s", "ConstantOfShape", 0)]),
        # A value-dependent output shape.
        ([helper.make_node("NonZero", ["x"], ["out"])], [X], [("x", "NonZero", 0)]),
        # Shapes of inputs are fine: that is what profiles are for.
        ([helper.make_node("Shape", ["x"], ["t"]), helper.make_node("Reshape", ["x", "t"], ["out"])], [X], []),
        ([helper.make_node("Size", ["x"], ["t"]), helper.make_node("Reshape", ["t", "t"], ["u"]),
          helper.make_node("Identity", ["x"], ["out"])], [X], []),
        # A data operand is not a shape operand.
        ([helper.make_node("Reshape", ["x", "c"], ["out"])], [X], []),
    ],
)
def test_checker_on_small_graphs(nodes, inputs, expected):
    shape = helper.make_tensor("c", TensorProto.INT64, [2], [2, -1])
    model = _graph(nodes, inputs, [shape])
    found = [(u.input, u.op_type, u.operand) for u in value_dependent_shape_uses(model)]
    assert found == expected


def test_checker_on_the_real_decoders(tmp_path, small_config, small_sam):
    """Our fast decoder passes, the official orig_im_size variant is caught."""
    from sam_edge.export import onnx_export as export

    sam = small_sam
    fast = export.export_decoder(sam, str(tmp_path / "decoder.onnx"))
    official = export.export_decoder(sam, str(tmp_path / "decoder_official.onnx"), official=True)
    assert value_dependent_shape_uses(fast) == []
    assert {u.input for u in value_dependent_shape_uses(official)} == {"orig_im_size"}
    grid = small_config.image_embedding_size
    for profile in decoder_profiles(max_points=4, max_prompts=3, opt_points=2, opt_prompts=2, embedding_size=grid):
        validate_profile(profile, input_specs(fast), "decoder")
        prep.check_profile_with_onnxruntime(fast, profile)
