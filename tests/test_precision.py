"""Precisions as data (sam_edge.precision) and the encoder's split plan as a
dataclass (runtime.segmented_encoder.EncoderSplitPlan): the JSON round trip, and
plans written before the plan said which compute runs."""

import json

import pytest

from sam_edge.precision import PRECISIONS, Compute, EncoderConversion, get_precision
from sam_edge.runtime.segmented_encoder import AttentionCut, EncoderSplitPlan, Segment


def _plan(compute: Compute, cuts: int = 2) -> EncoderSplitPlan:
    segments = tuple(Segment(f"encoder_segment_{k}.onnx", (f"in{k}",), (f"out{k}", f"qkv{k}"))
                     for k in range(cuts + 1))
    attention = tuple(AttentionCut(f"qkv{j}", f"attn{j}", 0.125, 2 * j + 1, 12, 64, (16, 16), 0) for j in range(cuts))
    return EncoderSplitPlan("image", "image_embeddings", segments, attention, "encoder_attention.npz", compute)


@pytest.mark.parametrize("compute", list(Compute))
def test_plan_json_round_trip(compute):
    plan = _plan(compute)
    data = json.loads(json.dumps(plan.to_json()))  # through a manifest file's types
    assert EncoderSplitPlan.from_json(data) == plan
    assert data["kernel_compute"] == compute.value
    assert plan.files() == [f"encoder_segment_{k}.onnx" for k in range(3)] + ["encoder_attention.npz"]


@pytest.mark.parametrize("legacy, expected", [("fp32", Compute.FP32), ("fp16", Compute.BF16), (None, Compute.FP32)])
def test_plans_from_before_kernel_compute(legacy, expected):
    """Older plans carry only "compute", where "fp16" meant reduced precision (bf16 where the
    CPU runs it, as load chose): they read as the compute that ran."""
    data = _plan(Compute.FP32).to_json()
    del data["kernel_compute"]
    if legacy is None:
        del data["compute"]
    else:
        data["compute"] = legacy
    assert EncoderSplitPlan.from_json(data).compute is expected


def test_new_plans_keep_the_legacy_field():
    """A new plan's "compute" is what older sam-edge versions read: reduced precision is "fp16" there."""
    assert _plan(Compute.BF16).to_json()["compute"] == "fp16"
    assert _plan(Compute.FP32).to_json()["compute"] == "fp32"


@pytest.mark.parametrize("damage, message", [
    (lambda d: d.pop("tables"), "lacks the field 'tables'"),
    (lambda d: d["segments"][0].update(inputs="image"), "wrong form"),
    (lambda d: d["attention"][0].update(qkv=3), "wrong form"),
    (lambda d: d.update(kernel_compute="fp8"), "compute must be one of"),
    (lambda d: d["segments"].pop(), "need 3 segments"),
])
def test_damaged_plans_are_value_errors(damage, message):
    data = _plan(Compute.BF16).to_json()
    damage(data)
    with pytest.raises(ValueError, match=message):
        EncoderSplitPlan.from_json(data)


def test_registry_rows():
    """Each row's decisions, as the build and the runtime read them."""
    assert get_precision("fp32").conversion is EncoderConversion.NONE and not get_precision("fp32").reduced
    assert get_precision("fp16").split is False and get_precision("fp16").fused_attention is False
    for name in ("int8", "int8-dynamic"):
        assert get_precision(name).kernel_compute is Compute.BF16 and get_precision(name).split
    assert get_precision("int8").tensorrt.needs_qdq and get_precision("int8").tensorrt.fp16_float_parts
    assert PRECISIONS["int8-dynamic"].tensorrt is None
    with pytest.raises(ValueError, match="precision must be one of"):
        get_precision("int4")
    with pytest.raises(ValueError, match="compute must be one of"):
        Compute.parse("fp8")
    assert Compute("bf16") is Compute.BF16 and f"{Compute.BF16}" == "bf16" == Compute.BF16.value
