"""Patterns of the plain exported encoder graph, found once for the passes that
rewrite it: the attention cores (onnx_export.fuse_global_attention,
encoder_ops), the rel-pos products, and the fp32 islands that every fp16
conversion keeps (quantize.convert_fp16 for ONNX Runtime, tensorrt_fp16 for
TensorRT).

export_encoder writes each block's attention core as

    Mul(q, scale) -> MatMul(., Transpose(k)) -> Add(., bias) -> Softmax -> MatMul(., v)

with the bias Reshape(Add(Unsqueeze(rel_h), Unsqueeze(rel_w))). No torch here.
"""

from typing import Any, Dict, List, Sequence

#: Ops whose outputs depend only on the *shape* of their input: value dependence stops here.
SHAPE_ONLY_OPS = ("Shape", "Size")


def graph_index(graph):
    """(producer, consumers, scalar constants) of an ONNX graph: the node making each
    tensor, the nodes reading each, and the value of every 0-d initializer or Constant."""
    from onnx import numpy_helper

    producer = {out: node for node in graph.node for out in node.output}
    consumers: Dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer if len(t.dims) == 0}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            if len(node.attribute[0].t.dims) == 0:
                constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return producer, consumers, constants


def attention_cores(graph, blocks: Sequence[int]) -> List[Dict[str, Any]]:
    """The attention core of each of `blocks` (encoder block indexes), in that order:
    {"block": its name prefix, "index", "softmax", "add", "scores", "scaled",
    "k_transposed", "out_matmul" (nodes), "bias", "q", "k", "v", "output" (tensor
    names), "scale" (float)}. ValueError where a block's graph is not the exported
    pattern (a fused or otherwise rewritten graph)."""
    producer, consumers, constants = graph_index(graph)
    cores = []
    for block in blocks:
        prefix = f"/image_encoder/blocks.{block}/attn/"
        softmaxes = [n for n in graph.node if n.op_type == "Softmax" and n.name.startswith(prefix)]
        if len(softmaxes) != 1:
            raise ValueError(f"{prefix}: expected one Softmax, found {len(softmaxes)}; is this the plain graph?")
        softmax = softmaxes[0]
        add = producer.get(softmax.input[0])
        if add is None or add.op_type != "Add":
            raise ValueError(f"{softmax.name}: not the exported attention pattern (no Add before Softmax)")
        scores = next((producer[i] for i in add.input if i in producer and producer[i].op_type == "MatMul"), None)
        if scores is None:
            raise ValueError(f"{add.name}: no scores MatMul")
        readers = consumers.get(softmax.output[0], [])
        scaled, k_transposed = producer.get(scores.input[0]), producer.get(scores.input[1])
        if (len(readers) != 1 or readers[0].op_type != "MatMul" or getattr(scaled, "op_type", None) != "Mul"
                or getattr(k_transposed, "op_type", None) != "Transpose"
                or not any(i in constants for i in scaled.input)):
            raise ValueError(f"{softmax.name}: not the exported attention pattern")
        out_matmul = readers[0]
        cores.append({
            "block": prefix,
            "index": block,
            "softmax": softmax,
            "add": add,
            "scores": scores,
            "scaled": scaled,
            "k_transposed": k_transposed,
            "out_matmul": out_matmul,
            "bias": next(i for i in add.input if i != scores.output[0]),
            "q": next(i for i in scaled.input if i not in constants),
            "k": k_transposed.input[0],
            "v": out_matmul.input[1],
            "output": out_matmul.output[0],
            "scale": next(float(constants[i]) for i in scaled.input if i in constants),
        })
    return cores


def rel_pos_nodes(model) -> List:
    """The nodes that compute the rel-pos terms from q: MatMuls (or Einsums, in
    older exports) whose second input is computed from weights alone (the
    gathered, transposed rel-pos table) rather than being a weight itself."""
    static = {t.name for t in model.graph.initializer}
    for node in model.graph.node:  # ONNX graphs are topologically sorted
        if node.op_type == "Constant" or (node.input and all(i in static for i in node.input if i)):
            static.update(node.output)
    weights = {t.name for t in model.graph.initializer}
    return [
        n for n in model.graph.node
        if n.op_type == "Einsum" or (n.op_type == "MatMul" and n.input[1] in static and n.input[1] not in weights)
    ]


def fp32_island_nodes(model) -> List[str]:
    """Names of the nodes of `model` (an onnx.ModelProto) to keep in fp32 under fp16,
    where fp16 overflows or loses the row: LayerNormalization and Softmax, a
    decomposed LayerNorm (the neck's LayerNorm2d: ReduceMean, Pow, Sqrt and their
    Sub / Add / Div consumers), and the rel-pos bias from each rel-pos product
    (rel_pos_nodes) down to the Softmax it feeds.

    In a QDQ graph a linear layer's weight is a DequantizeLinear of a stored int8
    tensor, which rel_pos_nodes would take for a rel-pos table (computed from
    weights alone): MatMuls fed by a DequantizeLinear are not rel-pos products. The
    chain follows data, not shapes: it does not pass through Shape / Size."""
    consumers: Dict[str, list] = {}
    producers = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
        producers.update({out: node.op_type for out in node.output})
    keep = set()
    for node in model.graph.node:
        if node.op_type in ("LayerNormalization", "Softmax", "ReduceMean", "Pow", "Sqrt"):
            keep.add(node.name)
            if node.op_type in ("ReduceMean", "Pow", "Sqrt"):
                for out in node.output:
                    keep.update(c.name for c in consumers.get(out, []) if c.op_type in ("Sub", "Add", "Div"))
    frontier = [n for n in rel_pos_nodes(model)
                if not (n.op_type == "MatMul" and producers.get(n.input[1]) == "DequantizeLinear")]
    seen = set()
    while frontier:
        node = frontier.pop()
        if node.name in seen:
            continue
        seen.add(node.name)
        keep.add(node.name)
        if node.op_type == "Softmax":
            continue
        for out in node.output:
            # Not into the attention MatMuls: the chain ends at the Softmax.
            frontier.extend(c for c in consumers.get(out, []) if c.op_type not in ("MatMul",) + SHAPE_ONLY_OPS)
    return sorted(n for n in keep if n)
