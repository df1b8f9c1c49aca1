"""Optimization profiles (sam_edge.export.tensorrt_profiles) against real ONNX graphs."""

import pytest

onnx = pytest.importorskip("onnx", reason="the TensorRT preparation reads graphs with the onnx package")
pytest.importorskip("onnxruntime", reason="prepared graphs are validated with ONNX Runtime")

from sam_edge.export import tensorrt_prepare as prep  # noqa: E402
from sam_edge.export.tensorrt_graph_checks import InputSpec, input_specs, value_dependent_shape_uses  # noqa: E402
from sam_edge.export.tensorrt_profiles import decoder_profiles, encoder_profile, validate_profile  # noqa: E402

from tensorrt_graphs import EMBED_DIM, GRID, tiny_profiles  # noqa: E402


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
