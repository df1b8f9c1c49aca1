"""The fp32 islands of an fp16 conversion: one rule (graph_patterns.fp32_island_nodes)
for ONNX Runtime's fp16 encoder (quantize.convert_fp16) and TensorRT's (weakly typed
pins, and the float parts of a QDQ graph: tensorrt_fp16).

The expected islands are derived from the graph by reachability, not listed:
    - LayerNormalization and Softmax nodes;
    - a decomposed LayerNorm's statistics: the nodes on a data path from its mean
      (ReduceMean) to its normalising Div;
    - the rel-pos bias: the nodes that read, through data, both the rel-pos table
      and the image input, up to and including the Softmax they feed.
Quantizing the Linears must not change them: a DequantizeLinear'd weight is
computed from initializers alone, like the rel-pos table, but it is no rel-pos.
"""

import warnings

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
torch = pytest.importorskip("torch")
from onnx import TensorProto  # noqa: E402
from torch import nn  # noqa: E402

from sam_edge.export import quantize  # noqa: E402
from sam_edge.export import tensorrt_fp16, tensorrt_qdq  # noqa: E402
from sam_edge.export.graph_patterns import SHAPE_ONLY_OPS, fp32_island_nodes  # noqa: E402

from tensorrt_graphs import quantize_weight_matmuls_qdq  # noqa: E402

TOKENS, DIM = 4, 8


class LayerNorm2d(nn.Module):
    """SAM's neck norm, which exports decomposed (ReduceMean, Sub, Pow, Sqrt, Div)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(1 + 0.1 * torch.randn(channels))
        self.bias = nn.Parameter(0.1 * torch.randn(channels))

    def forward(self, x):
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + 1e-6)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class RelPosBlock(nn.Module):
    """LayerNorm -> qkv -> scores + q @ (gathered rel-pos table)^T -> Softmax -> proj -> LayerNorm2d:
    the encoder's island-bearing parts at a small size, the rel-pos product a MatMul as export_encoder
    writes it."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(DIM)
        self.qkv = nn.Linear(DIM, 3 * DIM)
        self.proj = nn.Linear(DIM, DIM)
        self.rel_pos = nn.Parameter(0.5 * torch.randn(2 * TOKENS - 1, DIM))
        index = torch.arange(TOKENS)[:, None] - torch.arange(TOKENS)[None, :] + TOKENS - 1
        self.register_buffer("index", index, persistent=False)
        self.neck = LayerNorm2d(DIM)

    def forward(self, x):  # (1, TOKENS, DIM)
        q, k, v = self.qkv(self.norm(x)).chunk(3, dim=-1)
        table = self.rel_pos[self.index]  # (TOKENS, TOKENS, DIM), from weights alone
        bias = (q.transpose(0, 1) @ table.transpose(1, 2)).transpose(0, 1)  # (1, TOKENS, TOKENS)
        attn = torch.softmax(q @ k.transpose(-2, -1) * DIM ** -0.5 + bias, dim=-1)
        out = self.proj(attn @ v)
        return self.neck(out.transpose(1, 2).reshape(1, DIM, 2, TOKENS // 2))


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    """(fp32 model, QDQ model) of a RelPosBlock with fresh random weights."""
    root = tmp_path_factory.mktemp("islands")
    torch.manual_seed(int(np.random.default_rng().integers(1 << 31)))
    path = root / "block.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(RelPosBlock().eval(), (torch.randn(1, TOKENS, DIM),), str(path), input_names=["x"],
                          output_names=["y"], opset_version=17, dynamo=False)
    calibration = np.random.default_rng().standard_normal((1, TOKENS, DIM)).astype(np.float32)  # batch 1
    qdq = quantize_weight_matmuls_qdq(path, root / "block.qdq.onnx", calibration)
    return onnx.load(str(path)), onnx.load(qdq)


def _reachable(model, start, forward: bool, stop=()) -> set:
    """Names of the nodes reachable from the tensors `start` along data edges (not through
    Shape / Size), forward or backward, not past nodes whose op type is in `stop`."""
    nodes = list(model.graph.node)
    seen, tensors, changed = set(), set(start), True
    while changed:
        changed = False
        for node in nodes:
            if node.name in seen or node.op_type in SHAPE_ONLY_OPS:
                continue
            ins, outs = set(node.input), set(node.output)
            if (ins if forward else outs) & tensors:
                seen.add(node.name)
                if node.op_type not in stop:
                    tensors |= outs if forward else {i for i in ins if i}
                changed = True
    return seen


def expected_islands(model) -> set:
    by_name = {n.name: n for n in model.graph.node}
    fused = {n.name for n in model.graph.node if n.op_type in ("LayerNormalization", "Softmax")}
    softmax_inputs = [n.input[0] for n in model.graph.node if n.op_type == "Softmax"]
    before_softmax = _reachable(model, softmax_inputs, forward=False)
    from_input = _reachable(model, [model.graph.input[0].name], forward=True, stop=("Softmax",))
    table = next(t.name for t in model.graph.initializer if "rel_pos" in t.name)
    from_table = _reachable(model, [table], forward=True, stop=("Softmax",))
    rel_pos = {n for n in from_table & from_input & before_softmax}
    (mean,) = [n for n in model.graph.node if n.op_type == "ReduceMean" and "neck" in n.name][:1]
    (div,) = [n for n in model.graph.node if n.op_type == "Div" and "neck" in n.name]
    statistics = _reachable(model, mean.output, forward=True, stop=("Div",)) & (
        _reachable(model, div.input, forward=False) | {div.name})
    assert rel_pos and statistics and all(by_name[n].op_type != "MatMul" or n in rel_pos for n in rel_pos)
    return fused | rel_pos | statistics | {mean.name}


def test_islands_derived_from_the_graph(graphs):
    """The one rule finds exactly the islands the graph's data paths define, the rel-pos
    product and the decomposed LayerNorm's statistics included; the attention's
    products, the Linears and the norm's affine are not islands."""
    fp32, _ = graphs
    islands = set(fp32_island_nodes(fp32))
    assert islands == expected_islands(fp32)
    ops = {n.name: n.op_type for n in fp32.graph.node}
    assert sum(ops[n] == "MatMul" for n in islands) == 1  # the rel-pos product, not q @ k^T, attn @ v or a Linear


def test_quantizing_does_not_move_the_islands(graphs):
    """In the QDQ graph the Linears' weights are DequantizeLinear outputs, computed from
    initializers alone like the rel-pos table: they must not become islands. The islands
    are the fp32 graph's (the quantizer keeps the names of the nodes it does not replace)."""
    fp32, qdq = graphs
    assert any(n.op_type == "DequantizeLinear" for n in qdq.graph.node)
    assert set(fp32_island_nodes(qdq)) == expected_islands(qdq) == set(fp32_island_nodes(fp32))


def test_both_fp16_paths_keep_the_same_islands(graphs, tmp_path):
    """ONNX Runtime's fp16 conversion computes exactly the islands in fp32 and the rest
    of the float nodes in fp16; TensorRT's pins (tensorrt_fp16.fp32_island_nodes) and
    its fp16 float parts of the QDQ graph keep the same nodes in fp32."""
    fp32, qdq = graphs
    islands = expected_islands(fp32)
    onnx.save(fp32, str(tmp_path / "fp32.onnx"))
    quantize.convert_fp16(str(tmp_path / "fp32.onnx"), str(tmp_path / "fp16.onnx"))
    converted = onnx.load(str(tmp_path / "fp16.onnx"))
    inferred = onnx.shape_inference.infer_shapes(converted)
    types = {v.name: v.type.tensor_type.elem_type for v in
             list(inferred.graph.value_info) + list(inferred.graph.output)}
    original = {n.name for n in fp32.graph.node}
    fp32_nodes, fp16_nodes = set(), set()
    for node in converted.graph.node:
        if node.name not in original or node.op_type in ("Constant",) + SHAPE_ONLY_OPS:
            continue  # the converter's Casts, and nodes with no float compute
        kinds = {types.get(o) for o in node.output} & {TensorProto.FLOAT, TensorProto.FLOAT16}
        if kinds == {TensorProto.FLOAT}:
            fp32_nodes.add(node.name)
        elif kinds == {TensorProto.FLOAT16}:
            fp16_nodes.add(node.name)
    assert fp32_nodes == islands
    assert fp16_nodes and not fp16_nodes & islands
    assert set(tensorrt_fp16.fp32_island_nodes(fp32)) == islands
    symmetric, _ = tensorrt_qdq.to_symmetric_int8_qdq(qdq)
    _, counts = tensorrt_fp16.qdq_float_parts_to_fp16(symmetric)
    assert counts["fp32_island_nodes"] == len(islands)
