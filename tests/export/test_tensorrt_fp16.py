"""fp32 islands and the fp16 float parts of int8 graphs (sam_edge.export.tensorrt_fp16)."""

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="the TensorRT preparation reads graphs with the onnx package")
pytest.importorskip("onnxruntime", reason="prepared graphs are validated with ONNX Runtime")

from onnx import TensorProto  # noqa: E402

from sam_edge.export import tensorrt_prepare as prep  # noqa: E402
from sam_edge.export.tensorrt_fp16 import fp32_island_nodes, graph_float_types, layer_is_island, qdq_float_parts_to_fp16  # noqa: E402
from sam_edge.export.tensorrt_qdq import to_symmetric_int8_qdq  # noqa: E402

from tensorrt_graphs import rel_l2 as _rel_l2  # noqa: E402


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
