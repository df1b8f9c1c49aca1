"""The TensorRT build's pure parts, without TensorRT: profiles against real ONNX graphs,
the value-dependent-shape checker, the QDQ rewrite validated with ONNX Runtime, the
precision plans, the fp32 islands, and the manifest / rebuild round trip."""

import os
import shlex

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="the TensorRT preparation reads graphs with the onnx package")
pytest.importorskip("onnxruntime", reason="prepared graphs are validated with ONNX Runtime")

from onnx import TensorProto, helper  # noqa: E402

from sam_edge.export import tensorrt_build as build  # noqa: E402
from sam_edge.export import tensorrt_prepare as prep  # noqa: E402
from sam_edge.export.tensorrt_engine import build_engine  # noqa: E402
from sam_edge.export.tensorrt_fp16 import (  # noqa: E402
    fp32_island_nodes,
    graph_float_types,
    layer_is_island,
    qdq_float_parts_to_fp16,
)
from sam_edge.export.tensorrt_graph_checks import (  # noqa: E402
    InputSpec,
    check_static_shape_graph,
    input_specs,
    value_dependent_shape_uses,
)
from sam_edge.export.tensorrt_precision import int8_latency_warning, precision_plan  # noqa: E402
from sam_edge.export.tensorrt_profiles import decoder_profiles, encoder_profile, validate_profile  # noqa: E402
from sam_edge.export.tensorrt_qdq import to_symmetric_int8_qdq  # noqa: E402
from sam_edge.runtime.tensorrt_compat import check_engine_compatibility, rebuild_command  # noqa: E402

from tensorrt_graphs import EMBED_DIM, GRID, export_mlp, export_tiny_decoder, quantize_mlp_qdq  # noqa: E402


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    d = tmp_path_factory.mktemp("trt_graphs")
    return {
        "fast": export_tiny_decoder(d / "fast.onnx", with_orig_im_size=False),
        "trap": export_tiny_decoder(d / "trap.onnx", with_orig_im_size=True),
        "mlp": export_mlp(d / "mlp.onnx"),
        "dir": d,
    }


def tiny_profiles(**kw):
    """decoder_profiles for the tiny graphs' embedding (EMBED_DIM channels, GRID x GRID)."""
    return decoder_profiles(embedding_size=GRID, embed_dim=EMBED_DIM, **kw)


# ---------------------------------------------------------------- profiles


@pytest.mark.parametrize("max_batch,opt_batch,size", [(1, 1, 1024), (4, 2, 256)])
def test_encoder_profile(max_batch, opt_batch, size):
    lo, opt, hi = encoder_profile(max_batch, size, opt_batch)["image"]
    assert lo == (1, 3, size, size) and opt == (opt_batch, 3, size, size) and hi == (max_batch, 3, size, size)
    spec = {"image": InputSpec("image", ("batch", 3, size, size), "float32")}
    validate_profile(encoder_profile(max_batch, size, opt_batch), spec, "encoder")


@pytest.mark.parametrize("bad", [dict(max_batch=0), dict(max_batch=2, opt_batch=3), dict(max_batch=1.5)])
def test_encoder_profile_rejects(bad):
    with pytest.raises(ValueError):
        encoder_profile(**bad)


@pytest.mark.parametrize("max_points,max_prompts,opt_points,opt_prompts", [(16, 64, 2, 64), (5, 8, 3, 4)])
def test_decoder_profiles_fit_the_graph(graphs, max_points, max_prompts, opt_points, opt_prompts):
    specs = input_specs(graphs["fast"])
    interactive, batched = tiny_profiles(max_points=max_points, max_prompts=max_prompts,
                                         opt_points=opt_points, opt_prompts=opt_prompts)
    for profile in (interactive, batched):
        validate_profile(profile, specs, "decoder")
    assert interactive["point_coords"][2] == (1, max_points, 2)  # one prompt: the CUDA-graph profile
    assert batched["point_coords"][1] == (opt_prompts, opt_points, 2)
    assert batched["point_coords"][2] == (max_prompts, max_points, 2)
    assert batched["mask_input"][2][0] == max_prompts and batched["has_mask_input"][2] == (max_prompts,)


def test_decoder_profiles_reject_opt_above_max():
    with pytest.raises(ValueError, match="opt"):
        decoder_profiles(max_points=4, opt_points=5)
    with pytest.raises(ValueError, match="positive"):
        decoder_profiles(max_prompts=0)


def _edit(profile, name, which, shape):
    ranges = list(profile[name])
    ranges[which] = shape
    return dict(profile, **{name: tuple(ranges)})


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda p: {k: v for k, v in p.items() if k != "mask_input"}, "no shapes for"),
        (lambda p: dict(p, orig_im_size=((2,),) * 3), "no such input"),
        (lambda p: _edit(p, "point_coords", 1, (2, 2)), "rank"),
        (lambda p: _edit(p, "point_coords", 2, (4, 4, 3)), "fixed at 2"),
        (lambda p: _edit(p, "image_embeddings", 0, (1, EMBED_DIM, GRID + 1, GRID)), "fixed at"),
        (lambda p: _edit(p, "point_labels", 0, (3, 1)), "min <= opt <= max"),
        (lambda p: _edit(p, "has_mask_input", 0, (0,)), "below 1"),
    ],
)
def test_validate_profile_errors_name_the_problem(graphs, change, message):
    specs = input_specs(graphs["fast"])
    profile = tiny_profiles(max_points=4, max_prompts=4, opt_points=2, opt_prompts=2)[1]
    with pytest.raises(ValueError, match=message):
        validate_profile(change(profile), specs, "decoder")


def test_official_size_profiles_do_not_fit_a_reduced_graph(graphs):
    # The default profiles are for 1024-pixel models (64 x 64 embeddings of 256 channels).
    with pytest.raises(ValueError, match="fixed at"):
        validate_profile(decoder_profiles()[0], input_specs(graphs["fast"]), "decoder")


def test_profiles_run_in_onnxruntime(graphs):
    """The fast graph runs at every profile's min / opt / max, with the batch it was given."""
    for profile in tiny_profiles(max_points=6, max_prompts=5, opt_points=2, opt_prompts=3):
        shapes = prep.check_profile_with_onnxruntime(graphs["fast"], profile)
        for which, index in (("min", 0), ("opt", 1), ("max", 2)):
            batch = profile["point_coords"][index][0]
            iou_shape, low_res_shape = shapes[which]
            assert iou_shape == [batch, 4] and low_res_shape[0] == batch


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


@pytest.fixture(scope="module")
def small_sam(small_config):
    pytest.importorskip("torch")
    from sam_edge.builder import build_sam_from_config

    return build_sam_from_config(small_config).eval()


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


# ---------------------------------------------------------------- int8 QDQ for TensorRT


@pytest.fixture(scope="module")
def qdq(graphs):
    rng = np.random.default_rng(0)
    calibration = rng.standard_normal((64, 16)).astype(np.float32)
    path = quantize_mlp_qdq(graphs["mlp"], graphs["dir"] / "mlp_qdq.onnx", calibration)
    return path, rng.standard_normal((512, 16)).astype(np.float32)


def _rel_l2(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


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


def test_prepare_for_tensorrt(qdq, graphs, tmp_path):
    src, _ = qdq
    record = prep.prepare_for_tensorrt(src, str(tmp_path / "prepared.onnx"))
    assert record["path"] == str(tmp_path / "prepared.onnx") and record["qdq"]["quantizers_converted"] > 0
    again = prep.prepare_for_tensorrt(record["path"], str(tmp_path / "again.onnx"))
    assert again["path"] == record["path"], "a prepared graph needs no second rewrite"
    assert prep.prepare_for_tensorrt(graphs["fast"])["qdq"] is None
    with pytest.raises(ValueError, match="orig_im_size"):
        prep.prepare_for_tensorrt(graphs["trap"])


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


def test_fp32_islands(tmp_path):
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = nn.LayerNorm(8)
            self.qkv = nn.Linear(8, 24)
            self.rel = nn.Parameter(torch.randn(4, 8))

        def forward(self, x):
            q, k, v = self.qkv(self.norm(x)).chunk(3, dim=-1)
            bias = torch.einsum("bnc,mc->bnm", q, self.rel)
            return torch.softmax(q @ k.transpose(-2, -1) + bias, dim=-1) @ v

    path = tmp_path / "block.onnx"
    import warnings

    with warnings.catch_warnings(), torch.random.fork_rng():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.manual_seed(0)  # the parameters and the sample input
        torch.onnx.export(Block().eval(), (torch.randn(1, 4, 8),), str(path), opset_version=17, dynamo=False)
    model = onnx.load(str(path))
    by_name = {n.name: n.op_type for n in model.graph.node}
    islands = fp32_island_nodes(model)
    kept = {by_name[n] for n in islands}
    assert {"LayerNormalization", "Softmax", "Einsum"} <= kept
    # The bias add feeding the softmax is in the island; the projections are not.
    assert "Add" in kept and "MatMul" not in kept and "Gemm" not in kept
    assert layer_is_island(islands[0], islands)
    assert layer_is_island(islands[0] + "_1", islands)
    assert not layer_is_island(islands[0] + "x", islands)
    assert graph_float_types(model) == ["float32"]


# ---------------------------------------------------------------- manifest and rebuild


BASE_MANIFEST = {
    "format": "sam-edge-bundle",
    "format_version": 1,
    "model_type": "vit_b",
    "config": {"name": "vit_b", "image_size": 1024},
    "backend": "onnxruntime",
    "precision": "fp16",
    "image_size": 1024,
    "mask_input_size": 256,
    "embedding_size": 64,
    "graphs": {"encoder": "encoder.onnx", "decoder": "decoder.onnx"},
    "weights": {"source": "checkpoint", "checkpoint": "sam_vit_b_01ec64.pth"},
    "versions": {"onnx": "1.23.2"},
    "files": {"encoder.onnx": {"sha256": "0" * 64, "bytes": 1}},
    "conversion": {"method": "fp16 with fp32 islands"},
}
RUNTIME = {"tensorrt": "10.13.0.35", "gpu": "NVIDIA A10", "compute_capability": "8.6", "cuda_runtime": "12.9"}


def trt_manifest(**params):
    p = build.TensorRTBuildParams(model_type="vit_b", precision="fp16", **params)
    engines = {"encoder": {"plan": "encoder.plan"}, "decoder": {"plan": "decoder.plan"}}
    files = {"encoder.plan": {"sha256": "1" * 64, "bytes": 2}, "decoder.plan": {"sha256": "2" * 64, "bytes": 3}}
    return p, build.tensorrt_manifest(BASE_MANIFEST, p, engines, files, RUNTIME, {"encoder": {"sha256": "0" * 64}})


def test_tensorrt_manifest_extends_the_onnx_one():
    _, manifest = trt_manifest()
    for key in ("format", "format_version", "model_type", "config", "image_size", "mask_input_size", "weights"):
        assert manifest[key] == BASE_MANIFEST[key]
    assert manifest["backend"] == "tensorrt"
    assert manifest["graphs"] == {"encoder": "encoder.plan", "decoder": "decoder.plan"}
    assert set(manifest["files"]) == {"encoder.plan", "decoder.plan"}
    section = manifest["tensorrt"]
    assert (section["version"], section["gpu"], section["compute_capability"]) == ("10.13.0.35", "NVIDIA A10", "8.6")
    assert manifest["versions"]["tensorrt"] == "10.13.0.35" and manifest["versions"]["onnx"] == "1.23.2"
    assert section["onnx_conversion"] == BASE_MANIFEST["conversion"]
    check_engine_compatibility(manifest, RUNTIME)  # the machine that built it


@pytest.mark.parametrize("params", [{}, dict(max_points=8, max_prompts=32, opt_prompts=16, workspace_bytes=1 << 30),
                                    dict(hardware_compatibility="ampere_plus", version_compatible=True,
                                         decoder_precision="fp16", max_batch=4, weakly_typed=True)])
def test_rebuild_command_round_trip(params):
    """The command in the compatibility error parses with the build options and gives back
    the same build parameters (checkpoint from the manifest's weights)."""
    original, manifest = trt_manifest(**params)
    command = shlex.split(rebuild_command(manifest, "/data/bundles/vit_b trt"))
    assert command[:2] == ["sam-edge", "build"]
    from sam_edge.cli import build_parser
    from sam_edge.cli.build import tensorrt_build_params

    args = build_parser().parse_args(command[1:])  # the command line sam-edge itself parses
    assert args.backend == "tensorrt" and args.output == "/data/bundles/vit_b trt" and args.overwrite
    assert args.checkpoint == "sam_vit_b_01ec64.pth"
    rebuilt = tensorrt_build_params(args, args.model, args.precision, args.checkpoint, args.timing_cache, args.quiet)
    assert rebuilt.rebuild_options() == dict(original.rebuild_options(), checkpoint="sam_vit_b_01ec64.pth")


def test_rebuild_command_for_random_weights_has_no_checkpoint():
    _, manifest = trt_manifest()
    manifest["weights"] = {"source": "random", "seed": 0}
    assert "--checkpoint" not in rebuild_command(manifest)


def test_build_params_validate():
    with pytest.raises(ValueError, match="precision"):
        build.TensorRTBuildParams(model_type="vit_b", precision="fp32")
    with pytest.raises(ValueError, match="max_points"):
        build.TensorRTBuildParams(model_type="vit_b", precision="int8", max_points=0)


def test_build_engine_validates_before_needing_tensorrt(graphs, tmp_path):
    bad = tiny_profiles(max_points=4, max_prompts=4, opt_points=2, opt_prompts=2)[1]
    bad = {k: v for k, v in bad.items() if k != "mask_input"}
    with pytest.raises(ValueError, match="no shapes for"):
        build_engine(graphs["fast"], str(tmp_path / "x.plan"), precision="fp32", profiles=[bad])
    with pytest.raises(ValueError, match="orig_im_size"):
        profile = dict(tiny_profiles(max_points=4, max_prompts=4, opt_points=2, opt_prompts=2)[1],
                       orig_im_size=((2,),) * 3)
        build_engine(graphs["trap"], str(tmp_path / "x.plan"), precision="fp32", profiles=[profile])
    with pytest.raises(ValueError, match="workspace"):
        build_engine(graphs["fast"], str(tmp_path / "x.plan"), precision="fp32", profiles=[bad], workspace_bytes=5)


def test_build_engine_without_tensorrt_says_so(graphs, tmp_path):
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("TensorRT is installed; the message for its absence cannot be shown")
    profiles = tiny_profiles(max_points=4, max_prompts=4, opt_points=2, opt_prompts=2)
    with pytest.raises(ImportError, match="TensorRT is not installed"):
        build_engine(graphs["fast"], str(tmp_path / "x.plan"), precision="fp32", profiles=profiles)
    assert not os.path.exists(tmp_path / "x.plan")


def _onnx_bundle_of(directory, **graphs):
    """A minimal ONNX Runtime bundle directory holding copies of the graphs given by role."""
    import json
    import shutil

    directory.mkdir()
    for role, path in graphs.items():
        shutil.copy(path, directory / f"{role}.onnx")
    manifest = {"backend": "onnxruntime", "graphs": {role: f"{role}.onnx" for role in graphs}}
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return str(directory)


def test_onnx_graphs_refuses_wrong_inputs(tmp_path, graphs):
    with pytest.raises(ValueError, match="not an ONNX bundle"):
        build.onnx_bundle_graphs(str(tmp_path))
    with pytest.raises(ValueError, match="decoder"):
        build.onnx_bundle_graphs(_onnx_bundle_of(tmp_path / "encoder-only", encoder=graphs["mlp"]))


def test_real_int8_encoder_prepared_for_tensorrt(tmp_path, small_config, small_sam):
    """The ONNX bundles' QDQ encoder becomes TensorRT's symmetric int8 with an error against
    fp32 within the 255/127 step bound of the original's (see
    test_symmetric_int8_qdq_accuracy_in_onnxruntime)."""
    pytest.importorskip("skimage", reason="calibration photos come from scikit-image")
    from skimage import data

    from sam_edge.export import onnx_export as export
    from sam_edge.export import quantize

    sam = small_sam
    fp32 = export.export_encoder(sam, str(tmp_path / "encoder_fp32.onnx"))
    int8 = str(tmp_path / "encoder_int8.onnx")
    quantize.quantize_static_int8(fp32, int8, [data.astronaut(), data.coffee()], small_config.image_size,
                                  method="minmax", quiet=True)
    record = prep.prepare_for_tensorrt(int8, str(tmp_path / "encoder_trt.onnx"))
    assert record["qdq"]["quantizers_converted"] > 0
    x = quantize.encoder_input(data.chelsea(), small_config.image_size)
    reference = prep.run_onnxruntime(fp32, {"image": x})[0]
    original_error = _rel_l2(prep.run_onnxruntime(int8, {"image": x})[0], reference)
    assert _rel_l2(prep.run_onnxruntime(record["path"], {"image": x})[0], reference) <= 2.01 * 1.25 * original_error
    # With fp16 float parts (what the int8 TensorRT engine runs): at most the symmetric int8 graph's
    # error plus the fp16 conversion's alone, with 25% for randomness (test_qdq_float_parts_to_fp16_accuracy).
    half = prep.prepare_for_tensorrt(int8, str(tmp_path / "encoder_trt16.onnx"), fp16_float_parts=True)
    assert half["fp16_float_parts"]["fp16_tensors"] > 0 and "float16" in half["float_types"]
    fp16_only, _ = qdq_float_parts_to_fp16(onnx.load(fp32))
    run = lambda graph: prep.run_onnxruntime(graph, {"image": x}, optimize=False)[0]  # noqa: E731
    symmetric_error = _rel_l2(run(record["path"]), reference)
    fp16_error = _rel_l2(run(fp16_only.SerializeToString()), reference)
    assert _rel_l2(run(half["path"]), reference) <= 1.25 * (symmetric_error + fp16_error)


def test_tensorrt_build_command_fails_fast_without_tensorrt(tmp_path):
    """`sam-edge build --backend tensorrt` refuses before exporting anything when TensorRT is absent."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("TensorRT is installed; the message for its absence cannot be shown")
    from sam_edge.cli import build_parser

    def command(precision):
        args = build_parser().parse_args(["build", "--model", "vit_b", "--backend", "tensorrt", "--precision",
                                          precision, "--output", str(tmp_path / "out"), "--quiet"])
        return args.func(args)

    with pytest.raises(ImportError, match="TensorRT is not installed"):
        command("fp16")
    assert os.listdir(tmp_path) == []
    with pytest.raises(ValueError, match="TensorRT precision"):
        command("int8-dynamic")


def test_default_profiles_fit_the_full_size_decoder(tmp_path):
    """The defaults of `sam-edge build --backend tensorrt` against the real 1024-pixel decoder graph
    (identical for ViT-B/L/H), run in ONNX Runtime at the interactive profile's shapes."""
    from sam_edge.builder import build_sam_from_config
    from sam_edge.export import onnx_export as export
    from sam_edge.config import get_config

    sam = build_sam_from_config(get_config("vit_b")).eval()
    path = export.export_decoder(sam, str(tmp_path / "decoder.onnx"))
    specs = input_specs(path)
    interactive, batched = decoder_profiles()
    validate_profile(batched, specs, "decoder")
    shapes = prep.check_profile_with_onnxruntime(path, validate_profile(interactive, specs, "decoder"))
    assert shapes["max"] == [[1, 4], [1, 4, 256, 256]]
    assert value_dependent_shape_uses(path) == []


# ---------------------------------------------------------------- against the spec'd TensorRT fakes


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


def test_fakes_refuse_what_tensorrt_refuses(fake_trt, graphs, tmp_path):
    """The fakes' own documented failure modes (see the citations in tests/helpers/tensorrt_fakes.py)."""
    from tensorrt_graphs import contrib_op_graph

    trt = fake_trt
    logger = trt.Logger()
    with pytest.raises(AttributeError):
        trt.NoSuchThing  # noqa: B018 - unknown names raise, as in the real module
    builder = trt.Builder(logger)
    with pytest.raises(AttributeError):
        builder.build_engine  # noqa: B018 - removed in TensorRT 10
    # No timing cache unless one was attached.
    assert builder.create_builder_config().get_timing_cache() is None
    # Precision flags on a strongly typed network: an API usage error, no engine.
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    assert trt.OnnxParser(network, logger).parse_from_file(graphs["mlp"])
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape("x", (1, 16), (2, 16), (4, 16))
    assert config.add_optimization_profile(profile) == 0
    config.set_flag(trt.BuilderFlag.FP16)
    assert builder.build_serialized_network(network, config) is None
    assert "kFP16" in logger.fake_messages[-1][1]
    config.clear_flag(trt.BuilderFlag.FP16)
    assert builder.build_serialized_network(network, config) is not None
    # The parser: contrib ops and float inputs used as shapes.
    for path, message in ((contrib_op_graph(tmp_path / "contrib.onnx"), "No importer registered for op: Gelu"),
                          (graphs["trap"], "shape-tensor network inputs must be Int32 or Int64")):
        parser = trt.OnnxParser(builder.create_network(0), logger)
        assert not parser.parse_from_file(path)
        assert message in str(parser.get_error(0))


def _fast_profiles():
    return tiny_profiles(max_points=4, max_prompts=4, opt_points=2, opt_prompts=2)


def test_first_build_writes_the_timing_cache(fake_trt, graphs, tmp_path):
    """Defect 1: with a --timing-cache file that does not exist yet, the build attaches a new
    cache and writes it; the next build reuses it. (TensorRT gives no cache back unless one was
    attached: the old code crashed on None after writing the plan.)"""
    cache_path = tmp_path / "timing.cache"
    first = build_engine(graphs["fast"], str(tmp_path / "a.plan"), precision="fp32", profiles=_fast_profiles(),
                               timing_cache_path=str(cache_path), progress=False)
    assert cache_path.is_file() and (tmp_path / "a.plan").is_file()
    assert first["timing_cache_reused"] is False
    second = build_engine(graphs["fast"], str(tmp_path / "b.plan"), precision="fp32", profiles=_fast_profiles(),
                                timing_cache_path=str(cache_path), progress=False)
    assert second["timing_cache_reused"] is True
    # A cache from another TensorRT version is refused and replaced, not mixed in.
    cache_path.write_bytes(cache_path.read_bytes().replace(b"10.13.0.35", b"10.12.0.36"))
    third = build_engine(graphs["fast"], str(tmp_path / "c.plan"), precision="fp32", profiles=_fast_profiles(),
                               timing_cache_path=str(cache_path), progress=False)
    assert third["timing_cache_reused"] is False and b"10.13.0.35" in cache_path.read_bytes()


def test_build_engine_flags_follow_the_precision_plan(fake_trt, graphs, tmp_path):
    """fp32: strongly typed with TF32 cleared (TensorRT enables it by default); an fp32 graph as
    weakly typed fp16: FP16 + OBEY_PRECISION_CONSTRAINTS with the islands pinned to fp32."""
    from tensorrt_fakes import plan_header

    record = build_engine(graphs["fast"], str(tmp_path / "fp32.plan"), precision="fp32",
                                profiles=_fast_profiles(), progress=False)
    header = plan_header((tmp_path / "fp32.plan").read_bytes())
    assert header["strongly_typed"] and "TF32" not in header["flags"] and record["cleared_builder_flags"] == ["TF32"]
    assert len(header["profiles"]) == 2 and header["profiles"][1]["point_coords"][2] == [4, 4, 2]

    mlp_profile = [{"x": ((1, 16), (2, 16), (8, 16))}]
    record = build_engine(graphs["mlp"], str(tmp_path / "weak.plan"), precision="fp16", profiles=mlp_profile,
                                strongly_typed=False, progress=False)
    header = plan_header((tmp_path / "weak.plan").read_bytes())
    assert not header["strongly_typed"] and {"FP16", "OBEY_PRECISION_CONSTRAINTS", "TF32"} <= set(header["flags"])
    assert record["precision"] == "fp16"


def test_contrib_ops_are_refused_before_tensorrt(graphs, tmp_path, monkeypatch):
    """Defect 2: a graph with ONNX Runtime contrib ops is refused by the preparation, by
    build_engine and by build_tensorrt_bundle, with the command that rebuilds it, before TensorRT
    is imported (no `tensorrt` module at all here)."""
    import sys

    from tensorrt_graphs import contrib_op_graph

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # importing it would raise ImportError
    contrib = contrib_op_graph(tmp_path / "contrib.onnx")
    with pytest.raises(ValueError, match=r"com\.microsoft\.Gelu.*--plain-attention"):
        prep.prepare_for_tensorrt(contrib, str(tmp_path / "out.onnx"), "encoder")
    with pytest.raises(ValueError, match="outside the ONNX domain"):
        build_engine(contrib, str(tmp_path / "x.plan"), precision="fp32",
                           profiles=[{"x": ((1, 16), (1, 16), (2, 16))}])
    params = build.TensorRTBuildParams(model_type="vit_b", precision="fp16", progress=False)
    with pytest.raises(ValueError, match="outside the ONNX domain"):
        build.build_tensorrt_bundle(params, _onnx_bundle_of(tmp_path / "onnx", encoder=contrib, decoder=graphs["fast"]),
                                    str(tmp_path / "b"))
    assert not (tmp_path / "b").exists()


def test_build_tensorrt_all_builds_standard_ops(tmp_path, monkeypatch):
    """export/build_tensorrt_all.py asks for ONNX bundles without contrib ops."""
    import importlib.util

    from sam_edge.export import build as onnx_build
    from sam_edge.export import tensorrt_build

    spec = importlib.util.spec_from_file_location("build_tensorrt_all", os.path.join(
        os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "export", "build_tensorrt_all.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    calls = []
    monkeypatch.setattr(onnx_build, "build_bundle", lambda *a, **kw: calls.append(kw))
    engine = {"build_seconds": 1.0, "plan_bytes": 1, "strongly_typed": True, "timing_cache_reused": False}
    monkeypatch.setattr(script, "build_tensorrt_bundle",
                        lambda *a, **kw: {"tensorrt": {"engines": {"encoder": engine, "decoder": engine}}})
    args = script.build_parser().parse_args(["--output", str(tmp_path), "--quiet"])
    assert tensorrt_build.TensorRTBuildParams is script.TensorRTBuildParams
    row = script.build_pair(args, "vit_b", "int8", str(tmp_path / "t.cache"))
    assert row["status"] == "ok" and calls and calls[0]["fused_attention"] is False


def test_int8_latency_warning():
    assert int8_latency_warning(5.0, 4.0) and "not faster" in int8_latency_warning(4.0, 4.0)
    assert int8_latency_warning(3.0, 4.0) is None
    assert int8_latency_warning(None, 4.0) is None and int8_latency_warning(3.0, None) is None


# ---------------------------------------------------------------- int8: fp16 float parts


@pytest.fixture(scope="module")
def attention_qdq(tmp_path_factory):
    from tensorrt_graphs import export_attention_block, quantize_weight_matmuls_qdq

    d = tmp_path_factory.mktemp("attention")
    rng = np.random.default_rng(0)
    fp32 = export_attention_block(d / "block.onnx")
    qdq = quantize_weight_matmuls_qdq(fp32, d / "block_qdq.onnx", rng.standard_normal((16, 8, 32)).astype(np.float32))
    return fp32, qdq, rng.standard_normal((64, 8, 32)).astype(np.float32)


def _elem_types(model):
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    return {v.name: v.type.tensor_type.elem_type for v in
            list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}


def test_qdq_float_parts_to_fp16_structure(attention_qdq):
    """Defect 9, on a small attention block: the checker passes; every float tensor outside the
    fp32 islands is fp16 and the islands' are fp32; each DequantizeLinear still feeds its MatMul
    directly and each QuantizeLinear its DequantizeLinear; the graph's I/O stay float32."""
    _, qdq, _ = attention_qdq
    symmetric, _ = to_symmetric_int8_qdq(onnx.load(qdq))
    islands = set(fp32_island_nodes(symmetric))
    assert {"LayerNormalization", "Softmax", "Einsum"} <= {n.op_type for n in symmetric.graph.node if n.name in islands}
    assert not {"MatMul", "QuantizeLinear", "DequantizeLinear"} & {
        n.op_type for n in symmetric.graph.node if n.name in islands}
    converted, counts = qdq_float_parts_to_fp16(symmetric)
    onnx.checker.check_model(converted, full_check=True)
    assert counts["casts_added"] > 0 and counts["fp16_constants"] > 0
    assert graph_float_types(converted) == ["float16", "float32"]
    types = _elem_types(converted)
    FLOAT, HALF = TensorProto.FLOAT, TensorProto.FLOAT16
    inserted = {n.name for n in converted.graph.node} - {n.name for n in symmetric.graph.node}
    assert all(converted_node.op_type == "Cast" for converted_node in converted.graph.node
               if converted_node.name in inserted)
    for node in converted.graph.node:
        if node.name in inserted:
            continue
        for out in node.output:
            if types.get(out) in (FLOAT, HALF):
                assert types[out] == (FLOAT if node.name in islands else HALF), (node.op_type, node.name, out)
    consumers = {}
    for node in converted.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node.op_type)
    before = {}
    for node in symmetric.graph.node:
        for name in node.input:
            before.setdefault(name, []).append(node.op_type)
    for node in symmetric.graph.node:
        if node.op_type == "DequantizeLinear" and "MatMul" in before.get(node.output[0], []):
            assert "MatMul" in consumers[node.output[0]], f"{node.name} no longer feeds its MatMul directly"
        if node.op_type == "QuantizeLinear":
            assert consumers[node.output[0]] == ["DequantizeLinear"]
    assert [types[i.name] for i in converted.graph.input] == [FLOAT]
    assert [types[o.name] for o in converted.graph.output] == [FLOAT]


def test_qdq_float_parts_to_fp16_accuracy(attention_qdq):
    """In ONNX Runtime (node by node, see run_onnxruntime), against the fp32 block: the fp16 float
    parts add fp16 rounding to the int8 error. Taking the two as independent, the error is at most
    the int8 graph's plus the fp16 conversion's alone (measured on the fp32 graph with the same
    islands), with 25% for the randomness of summed rounding errors."""
    fp32, qdq, x = attention_qdq
    symmetric, _ = to_symmetric_int8_qdq(onnx.load(qdq))
    converted, _ = qdq_float_parts_to_fp16(symmetric)
    fp16_only, _ = qdq_float_parts_to_fp16(onnx.load(fp32))
    run = lambda model: prep.run_onnxruntime(model.SerializeToString(), {"x": x}, optimize=False)[0]  # noqa: E731
    reference = prep.run_onnxruntime(fp32, {"x": x}, optimize=False)[0]
    int8_error, fp16_error = _rel_l2(run(symmetric), reference), _rel_l2(run(fp16_only), reference)
    assert 0 < fp16_error < 2e-3 and int8_error > fp16_error
    assert _rel_l2(run(converted), reference) <= 1.25 * (int8_error + fp16_error)


# ---------------------------------------------------------------- whole bundles against the fakes


@pytest.fixture(scope="module")
def onnx_bundles(tmp_path_factory, small_config):
    """fp16 and int8 ONNX bundles of the reduced ViT-B with standard ops only (what TensorRT builds from)."""
    from sam_edge.export.build import build_bundle

    root = tmp_path_factory.mktemp("onnx_bundles")
    for precision in ("fp16", "int8"):
        build_bundle(str(root / precision), small_config, precision=precision, fused_attention=False,
                     official_decoder=False, split_encoder=False, quiet=True)
    return root


def _trt_params(precision, **kw):
    return build.TensorRTBuildParams(model_type="vit_b", precision=precision, max_points=4, max_prompts=4,
                                     opt_points=2, opt_prompts=2, progress=False, **kw)


def test_tensorrt_bundle_against_fakes_matches_onnx_runtime(fake_trt, onnx_bundles, tmp_path):
    """build_tensorrt_bundle, load_tensorrt_engine and SamPredictor end to end over the fakes (whose
    engines run the prepared graphs in ONNX Runtime): the same masks and logits as the fp16 ONNX
    Runtime bundle on the same image and prompts, to float32 rounding (both run the same graphs)."""
    import sam_edge
    from sam_edge.runtime.bundle import verify_bundle
    from sam_edge.runtime.tensorrt_backend import load_tensorrt_engine

    out = tmp_path / "trt-fp16"
    manifest = build.build_tensorrt_bundle(_trt_params("fp16", max_batch=2, timing_cache=str(tmp_path / "t.cache")),
                                           str(onnx_bundles / "fp16"), str(out))
    encoder = manifest["tensorrt"]["engines"]["encoder"]
    assert encoder["strongly_typed"] and encoder["builder_flags"] == []
    assert encoder["profiles"][0]["image"][1][0] == 2, "tuned for --max-batch when no --opt-batch is given"
    assert manifest["tensorrt"]["engines"]["decoder"]["cleared_builder_flags"] == ["TF32"]
    engine = load_tensorrt_engine(str(out), verify_bundle(str(out)), array_library="cuda-python")
    ours, reference = sam_edge.SamPredictor(engine), sam_edge.SamPredictor(sam_edge.load(str(onnx_bundles / "fp16")))
    image = np.random.default_rng(1).integers(0, 256, (200, 150, 3), dtype=np.uint8)
    ours.set_image(image)
    reference.set_image(image)
    for point in ([[40.0, 60.0]], [[100.0, 20.0], [30.0, 150.0]]):
        labels = np.ones(len(point), int)
        masks, scores, low = ours.predict(np.array(point), labels)
        ref_masks, ref_scores, ref_low = reference.predict(np.array(point), labels)
        assert _rel_l2(low, ref_low) < 1e-4 and np.allclose(scores, ref_scores, rtol=1e-4, atol=1e-5)
        assert np.mean(masks != ref_masks) < 1e-3
    engine.close()


def test_int8_tensorrt_bundle_runs_fp16_float_parts(fake_trt, onnx_bundles, tmp_path):
    """The int8 encoder engine is built strongly typed from the QDQ graph with fp16 float parts
    (and no precision flags, which a strongly typed network refuses), and runs."""
    from sam_edge.runtime.bundle import verify_bundle
    from sam_edge.runtime.tensorrt_backend import load_tensorrt_engine

    out = tmp_path / "trt-int8"
    manifest = build.build_tensorrt_bundle(_trt_params("int8"), str(onnx_bundles / "int8"), str(out))
    encoder = manifest["tensorrt"]["engines"]["encoder"]
    assert encoder["strongly_typed"] and encoder["builder_flags"] == [] and "(fp16)" in encoder["precision_note"]
    assert encoder["fp16_float_parts"]["fp16_tensors"] > 0 and encoder["qdq"]["quantize_nodes"] > 0
    engine = load_tensorrt_engine(str(out), verify_bundle(str(out)), array_library="cuda-python")
    embedding = engine.to_numpy(engine.embed(np.full((1, 3, 256, 256), 100.0, np.float32)))
    assert embedding.shape == (1, 256, 16, 16) and np.isfinite(embedding).all() and embedding.std() > 0
    engine.close()


def test_version_compatible_bundle_loads(fake_trt, onnx_bundles, tmp_path):
    """Defect 3: engines built --version-compatible carry TensorRT's lean runtime, which the
    runtime deserializes only with engine_host_code_allowed; load_tensorrt_engine sets it from the
    manifest (the old code left it off, and deserialization failed)."""
    from sam_edge.runtime.bundle import verify_bundle
    from sam_edge.runtime.tensorrt_backend import load_tensorrt_engine

    out = tmp_path / "trt-vc"
    manifest = build.build_tensorrt_bundle(_trt_params("fp16", version_compatible=True), str(onnx_bundles / "fp16"),
                                           str(out))
    assert manifest["tensorrt"]["version_compatible"] is True
    engine = load_tensorrt_engine(str(out), verify_bundle(str(out)), array_library="cuda-python")
    assert engine.embed(np.zeros((1, 3, 256, 256), np.float32)) is not None
    engine.close()


def test_tensorrt_bundle_takes_the_umask_modes(fake_trt, onnx_bundles, tmp_path):
    """TensorRT bundles are written by the ONNX bundles' writer: the directory and every file get
    the umask's modes (not mkdtemp's 0700 and mkstemp's 0600), so another user can serve them."""
    import stat

    previous = os.umask(0o027)
    try:
        out = tmp_path / "trt-modes"
        build.build_tensorrt_bundle(_trt_params("fp16"), str(onnx_bundles / "fp16"), str(out))
    finally:
        os.umask(previous)
    assert stat.S_IMODE(out.stat().st_mode) == 0o750
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
    assert set(modes) == {"manifest.json", "encoder.plan", "decoder.plan"}
    assert modes == {name: 0o640 for name in modes}, modes


def test_opt_batch_is_validated_and_recorded():
    with pytest.raises(ValueError, match="opt_batch"):
        build.TensorRTBuildParams(model_type="vit_b", precision="fp16", max_batch=2, opt_batch=3)
    params = build.TensorRTBuildParams(model_type="vit_b", precision="fp16", max_batch=4, opt_batch=2)
    assert params.rebuild_options()["opt_batch"] == 2


def test_bench_tensorrt_puts_int8_beside_fp16():
    """benchmarks/bench_tensorrt.py's comparison row: medians side by side and int8 / fp16 ratios."""
    import importlib.util

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    spec = importlib.util.spec_from_file_location("bench_tensorrt", os.path.join(root, "benchmarks", "bench_tensorrt.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    def result(enc, dec, pred, ips):
        return {"encoder_batch1": {"median_ms": enc}, "decode_1_prompt": {"median_ms": dec},
                "predict_1_prompt": {"median_ms": pred}, "encoder_images_per_s": ips}

    row = bench.int8_vs_fp16("vit_b", {"fp16": result(10.0, 2.0, 4.0, 100.0), "int8": result(8.0, 2.0, 5.0, 120.0)})
    assert row["enc_ms fp16"] == 10.0 and row["enc_ms int8"] == 8.0 and row["enc_ms int8/fp16"] == pytest.approx(0.8)
    assert row["predict_ms int8/fp16"] == pytest.approx(1.25) and row["img/s int8"] == 120.0
    assert bench.int8_vs_fp16("vit_b", {"fp16": result(10.0, 2.0, 4.0, 100.0)}) is None
