"""Engine compatibility, profiles and versions (sam_edge.runtime.tensorrt_compat): pure checks."""

import numpy as np
import pytest

from sam_edge.runtime import tensorrt_compat
from sam_edge.runtime.tensorrt_compat import EngineCompatibilityError, ShapeTuple, check_engine_compatibility
from tensorrt_runtime_doubles import here, manifest


# ---------------------------------------------------------------- compatibility


@pytest.mark.parametrize(
    "built,runtime",
    [
        (manifest(), here()),
        (manifest(version="10.13.0.35"), here(version="10.13.0.40")),  # the build number is not part of compatibility
        (manifest(cc="8.6", gpu="NVIDIA A10"), here(cc="8.6", gpu="NVIDIA RTX A6000")),  # same architecture
        (manifest(hardware="ampere_plus"), here(cc="9.0", gpu="NVIDIA H100")),
        (manifest(hardware="ampere_plus", cc="9.0"), here(cc="8.0", gpu="NVIDIA A100")),
        (manifest(version_compatible=True, version="10.3.0"), here(version="10.13.0.35")),
    ],
)
def test_compatible(built, runtime):
    check_engine_compatibility(built, runtime)


@pytest.mark.parametrize(
    "built,runtime,reasons,problems",
    [
        (manifest(cc="8.6"), here(cc="9.0", gpu="NVIDIA H100"), ["compute capability 8.6", "NVIDIA H100 has 9.0"], 1),
        (manifest(cc="8.7", gpu="Orin"), here(cc="8.6"), ["8.7 (Orin)"], 1),
        (manifest(version="10.13.0"), here(version="10.12.0"), ["TensorRT 10.13.0", "10.12.0"], 1),
        (manifest(version="10.3.0"), here(version="10.3.1"), ["built with TensorRT 10.3.0"], 1),
        (manifest(hardware="ampere_plus"), here(cc="7.5", gpu="Tesla T4"), ["Ampere", "Tesla T4 has 7.5"], 1),
        (manifest(version_compatible=True, version="10.13.0"), here(version="10.12.0"), ["version-compatible"], 1),
        (manifest(version_compatible=True, version="10.13.0"), here(version="11.0.0"), ["major version 10"], 1),
        (manifest(cc="8.6", version="10.3.0"), here(cc="8.9", version="10.4.0"), ["8.6", "10.3.0"], 2),
        (manifest(hardware="turing_plus"), here(), ["unknown hardware compatibility"], 1),
    ],
)
def test_incompatible_says_why_and_how_to_rebuild(built, runtime, reasons, problems):
    with pytest.raises(EngineCompatibilityError) as info:
        check_engine_compatibility(built, runtime, "/bundles/vit_l-int8")
    message = str(info.value)
    for reason in reasons:
        assert reason in message
    expected = (
        "sam-edge build --model vit_l --checkpoint sam_vit_l_0b3195.pth --backend tensorrt --precision int8"
    )
    assert expected in message and "--output /bundles/vit_l-int8 --overwrite" in message
    assert message.count("\n  - ") == problems, "one line per problem"


def test_rebuild_command_keeps_non_default_options():
    command = tensorrt_compat.rebuild_command(manifest(max_points=8, hardware_compatibility="ampere_plus", version_compatible=True))
    assert "--max-points 8" in command and "--hardware-compatibility ampere_plus" in command
    assert "--version-compatible" in command and "--output BUNDLE_DIR" in command


@pytest.mark.parametrize(
    "built,runtime,message",
    [
        ({"model_type": "vit_b"}, here(), "no 'tensorrt' section"),
        ({"tensorrt": {"version": "10.3.0"}}, here(), "lacks 'compute_capability'"),
        (manifest(), {"tensorrt": "10.13.0"}, "runtime_info needs 'compute_capability'"),
        (manifest(cc="sm_86"), here(), "compute capability must look like"),
        (manifest(version="ten"), here(), "not a version number"),
    ],
)
def test_malformed_inputs_are_value_errors(built, runtime, message):
    with pytest.raises(ValueError, match=message):
        check_engine_compatibility(built, runtime)


# ---------------------------------------------------------------- profiles and versions (pure)


@pytest.mark.parametrize("shape,inside", [
    ((1, 1, 2), True), ((3, 4, 2), True), ((2, 3, 2), True),  # both ends and between
    ((4, 1, 2), False), ((1, 5, 2), False), ((0, 1, 2), False), ((1, 1, 3), False),  # one axis out
    ((1, 1), False), ((1, 1, 2, 1), False),  # another rank
])
def test_shape_tuple_holds(shape, inside):
    shapes = ShapeTuple(min=(1, 1, 2), opt=(1, 2, 2), max=(3, 4, 2))
    assert (shapes.min, shapes.opt, shapes.max) == ((1, 1, 2), (1, 2, 2), (3, 4, 2))
    assert shapes.holds(shape) is inside


def test_profile_holds_every_input_it_names():
    profile = {"point_coords": ShapeTuple((1, 1, 2), (1, 2, 2), (3, 4, 2)), "has_mask_input": ShapeTuple((1,), (1,), (3,))}
    assert tensorrt_compat.profile_holds(profile, {"point_coords": (2, 4, 2), "has_mask_input": (3,), "other": (9,)})
    assert not tensorrt_compat.profile_holds(profile, {"point_coords": (2, 4, 2)})  # has_mask_input missing
    assert not tensorrt_compat.profile_holds(profile, {"point_coords": (2, 4, 2), "has_mask_input": (4,)})
    assert tensorrt_compat.describe_profile(profile) == "point_coords (1, 1, 2)..(3, 4, 2), has_mask_input (1,)..(3,)"


@pytest.mark.parametrize("text,expected", [("10.13.0.35", (10, 13, 0)), ("10.3.1", (10, 3, 1)), ("10.3", (10, 3)),
                                           ("11", (11,))])
def test_parse_version_keeps_major_minor_patch(text, expected):
    assert tensorrt_compat.parse_version(text) == expected


@pytest.mark.parametrize("text,expected", [("8.6", (8, 6)), ("10.0", (10, 0)), ("12.1", (12, 1))])
def test_parse_compute_capability(text, expected):
    assert tensorrt_compat.parse_compute_capability(text) == expected


@pytest.mark.parametrize("text", ["sm_86", "8", "8.6.1", ""])
def test_parse_compute_capability_refuses(text):
    with pytest.raises(ValueError, match="compute capability must look like '8.6'"):
        tensorrt_compat.parse_compute_capability(text)


@pytest.mark.parametrize("section,allowed", [({"version_compatible": True}, True), ({"version_compatible": False}, False),
                                             ({}, False), (None, False)])
def test_host_code_allowed_only_for_version_compatible_plans(section, allowed):
    assert tensorrt_compat.host_code_allowed({"tensorrt": section}) is allowed


def _engine_io(**changes):
    """The I/O of sam-edge's engines as TensorRT reports it, with `changes` ({"decoder_out": {...}} ...)."""
    f32 = np.dtype(np.float32)
    io = {
        "encoder_in": {"image": ((-1, 3, 64, 64), f32)},
        "encoder_out": {"image_embeddings": ((-1, 8, 4, 4), f32)},
        "decoder_in": {"image_embeddings": ((1, 8, 4, 4), f32), "point_coords": ((-1, -1, 2), f32),
                       "point_labels": ((-1, -1), f32), "mask_input": ((-1, 1, 16, 16), f32),
                       "has_mask_input": ((-1,), f32)},
        "decoder_out": {"iou_predictions": ((-1, 4), f32), "low_res_masks": ((-1, 4, 16, 16), f32)},
    }
    io.update(changes)
    return {"encoder": (io["encoder_in"], io["encoder_out"]), "decoder": (io["decoder_in"], io["decoder_out"])}


def test_engine_io_of_sam_edge_engines_passes():
    tensorrt_compat.check_engine_io(_engine_io())


@pytest.mark.parametrize("changes,message", [
    ({"encoder_in": {"image": ((-1, 3, 64, 64), np.float32), "scale": ((1,), np.float32)}}, "expected image -> image_embeddings"),
    ({"encoder_out": {"features": ((-1, 8, 4, 4), np.float32)}}, "expected image -> image_embeddings"),
    ({"decoder_out": {"low_res_masks": ((-1, 4, 16, 16), np.float32)}}, "expected the fast decoder"),
    ({"encoder_out": {"image_embeddings": ((-1, 8, 4, 4), np.float16)}}, "encoder tensor image_embeddings is float16"),
])
def test_engine_io_refusals_name_the_problem(changes, message):
    with pytest.raises(ValueError, match=message):
        tensorrt_compat.check_engine_io(_engine_io(**changes))
