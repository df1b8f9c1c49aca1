"""Precisions as data (sam_edge.precision) and the manifest's description of
the encoder ops graph (runtime.ort_ops.EncoderOpsGraph): the JSON round trip,
and damaged or foreign descriptions refused."""

import json

import pytest

from sam_edge.precision import PRECISIONS, Compute, EncoderConversion, get_precision
from sam_edge.runtime.ort_ops import AttentionCut, EncoderOpsGraph


def _graph(compute: Compute, cuts: int = 2) -> EncoderOpsGraph:
    attention = tuple(AttentionCut(f"qkv{j}", f"attn{j}", 0.125, 2 * j + 1, 12, 64, (16, 16), 0) for j in range(cuts))
    return EncoderOpsGraph("encoder_ops.onnx", compute, attention)


@pytest.mark.parametrize("compute", list(Compute))
def test_ops_graph_json_round_trip(compute):
    graph = _graph(compute)
    data = json.loads(json.dumps(graph.to_json()))  # through a manifest file's types
    assert EncoderOpsGraph.from_json(data) == graph
    assert data["compute"] == compute.value and data["domain"] == "ai.sam_edge" and data["domain_version"] == 1


@pytest.mark.parametrize("damage, message", [
    (lambda d: d.pop("file"), "lacks the field 'file'"),
    (lambda d: d.update(file=["encoder_ops.onnx"]), "wrong form"),
    (lambda d: d["attention"][0].update(qkv=3), "wrong form"),
    (lambda d: d["attention"][0].pop("k_size"), "lacks the field 'k_size'"),
    (lambda d: d.update(compute="fp8"), "compute must be one of"),
    (lambda d: d.update(domain_version=2), "needs the op domain 'ai.sam_edge' version 2"),
    (lambda d: d.update(domain="com.example"), "needs the op domain 'com.example'"),
])
def test_damaged_ops_graphs_are_value_errors(damage, message):
    data = _graph(Compute.BF16).to_json()
    damage(data)
    with pytest.raises(ValueError, match=message):
        EncoderOpsGraph.from_json(data)


def test_registry_rows():
    """Each row's decisions, as the build and the runtime read them."""
    assert get_precision("fp32").conversion is EncoderConversion.NONE and not get_precision("fp32").reduced
    assert get_precision("fp16").native_attention is False and get_precision("fp16").fused_attention is False
    for name in ("int8", "int8-dynamic"):
        assert get_precision(name).kernel_compute is Compute.BF16 and get_precision(name).native_attention
    assert get_precision("int8").tensorrt.needs_qdq and get_precision("int8").tensorrt.fp16_float_parts
    assert PRECISIONS["int8-dynamic"].tensorrt is None
    with pytest.raises(ValueError, match="precision must be one of"):
        get_precision("int4")
    with pytest.raises(ValueError, match="compute must be one of"):
        Compute.parse("fp8")
    assert Compute("bf16") is Compute.BF16 and f"{Compute.BF16}" == "bf16" == Compute.BF16.value
