"""The attention of the plain exported encoder graph, found once for the passes
that rewrite it (onnx_export.fuse_global_attention, split_encoder).

export_encoder writes each block's attention core as

    Mul(q, scale) -> MatMul(., Transpose(k)) -> Add(., bias) -> Softmax -> MatMul(., v)

with the bias Reshape(Add(Unsqueeze(rel_h), Unsqueeze(rel_w))). No torch here.
"""

from typing import Any, Dict, List, Sequence


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
