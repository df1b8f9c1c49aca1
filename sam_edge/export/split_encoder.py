"""Cut an encoder graph at its attentions, for sam-edge's own attention kernel.

ONNX Runtime's CPU attention materialises each global block's 12 x 4096 x 4096
scores and bias (ViT-B) several times over; sam_edge._C's fused kernel
(csrc/attention_cpu.cpp) keeps them in cache. ORT cannot call that kernel from
inside a graph (its custom-op API needs headers that no pip package ships), so
the runtime runs the graph in pieces instead:

    segment 0 -> attention 0 -> segment 1 -> ... -> attention n-1 -> segment n

Segment k computes everything that can be computed before attention k's
output is known; attention k is SAM's attention with the decomposed rel-pos
bias (a global block's, or a windowed block's over its partitioned windows),
fed by five tensors of the graph:

    q (B, heads, N, D) unscaled queries; k, v (B, heads, M, D);
    rel_h (B, heads, q_h, q_w, k_h), rel_w (B, heads, q_h, q_w, k_w)
    -> out (B, heads, N, D) = softmax(scale q k^T + rel_h[.., kh] + rel_w[.., kw]) v

split_at_global_attention writes the segments next to the encoder and returns
the plan the runtime follows (sam_edge.runtime.segmented_encoder). It reads
the plain graph (MatMul -> Add(bias) -> Softmax -> MatMul, as export_encoder
writes it and the quantizers leave it), not the fused one.
"""

import os
from typing import Any, Dict, List, Set

from ..runtime.global_attention import ATTENTION_INPUTS


def _attention_patterns(graph, config, blocks) -> List[Dict[str, Any]]:
    """The attention subgraphs of `blocks` (encoder block indexes), in graph order."""
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
    patterns = []
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
        bias_reshape = producer[next(i for i in add.input if i != scores.output[0])]
        bias_add = producer.get(bias_reshape.input[0])
        (out_matmul,) = consumers[softmax.output[0]]
        scaled, k_transposed = producer[scores.input[0]], producer[scores.input[1]]
        if (bias_reshape.op_type, getattr(bias_add, "op_type", None), out_matmul.op_type, scaled.op_type,
                k_transposed.op_type) != ("Reshape", "Add", "MatMul", "Mul", "Transpose"):
            raise ValueError(f"{softmax.name}: not the exported attention pattern; cannot split here")
        unsqueezes = [producer[i] for i in bias_add.input]
        if [u.op_type for u in unsqueezes] != ["Unsqueeze", "Unsqueeze"]:
            raise ValueError(f"{bias_add.name}: expected rel_h.unsqueeze(-1) + rel_w.unsqueeze(-2)")
        scale = next(float(constants[i]) for i in scaled.input if i in constants)
        patterns.append({
            "block": prefix,
            "index": block,
            "scale": scale,
            "q": next(i for i in scaled.input if i not in constants),
            "k": k_transposed.input[0],
            "v": out_matmul.input[1],
            "rel_h": unsqueezes[0].input[0],
            "rel_w": unsqueezes[1].input[0],
            "output": out_matmul.output[0],
            "removed": {out_matmul.name, softmax.name, add.name, scores.name},
        })
    return patterns


def _topological(nodes, available: Set[str]) -> list:
    """nodes in an order where each one's inputs come first (the quantizers do
    not keep the graph sorted)."""
    ready = set(available) | {""}
    waiting = {n.name: sum(1 for i in set(n.input) if i not in ready) for n in nodes}
    readers: Dict[str, list] = {}
    for n in nodes:
        for i in set(n.input):
            if i not in ready:
                readers.setdefault(i, []).append(n)
    order = [n for n in nodes if waiting[n.name] == 0]
    for node in order:  # grows while it is walked
        for o in node.output:
            for reader in readers.pop(o, []):
                waiting[reader.name] -= 1
                if waiting[reader.name] == 0:
                    order.append(reader)
    if len(order) != len(nodes):
        raise ValueError("the encoder graph has a cycle or an input that nothing produces")
    return order


def split_at_global_attention(
    encoder_path: str, out_dir: str, config, windowed: bool = False, prefix: str = "encoder_segment"
) -> Dict[str, Any]:
    """Write encoder_path's graph as one segment file more than it has cuts, in out_dir.

    Arguments:
        encoder_path: the plain encoder graph (export_encoder, or a quantizer's output).
        out_dir: where the segments go (the bundle's staging directory).
        config: the model's SamConfig.
        windowed: cut at every block's attention, the windowed ones too (their
            q, k, v are the (B * windows, heads, w * w, D) partitioned windows);
            by default only at the global blocks.
    Returns:
        the plan: {"segments": [{"file", "inputs", "outputs"}], "attention":
        [{"q", "k", "v", "rel_h", "rel_w", "output", "scale", "heads",
        "head_dim", "k_size", "block"}], "input", "output"}, tensor names throughout.
    Each segment carries its own weights: the bundle's encoder.onnx stays whole
    for other runtimes, so an int8 ViT-B bundle grows by about 100 MB.
    """
    import onnx
    from onnx import helper

    model = onnx.load(encoder_path)
    graph = model.graph
    glob = set(config.encoder_global_attn_indexes)
    blocks = [i for i in range(config.encoder_depth) if windowed or i in glob]
    patterns = _attention_patterns(graph, config, blocks)
    if not patterns:
        raise ValueError("the encoder has no attention to split at")
    # Shapes for every segment's tensors: without them ONNX Runtime skips the
    # fusions that check shapes (Add + Gelu -> BiasGelu among them).
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    value_info = {v.name: v for v in
                  list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}
    del inferred

    initializers = {t.name for t in graph.initializer}
    graph_inputs = [i.name for i in graph.input if i.name not in initializers]
    graph_outputs = [o.name for o in graph.output]
    if len(graph_inputs) != 1 or len(graph_outputs) != 1:
        raise ValueError(f"expected one image input and one output; got {graph_inputs} -> {graph_outputs}")

    # Drop the attentions, then whatever only they needed (the scaled q, k^T,
    # the 12 x N x M bias). The five inputs stay: the kernel reads them.
    removed: Set[str] = set().union(*(p["removed"] for p in patterns))
    # Each attention as a placeholder node, so that sorting and staging see it
    # (and its five inputs stay alive).
    placeholders = {
        f"sam_edge_attention_{j}": helper.make_node(
            "SamEdgeAttention", [p[name] for name in ATTENTION_INPUTS], [p["output"]], name=f"sam_edge_attention_{j}"
        )
        for j, p in enumerate(patterns)
    }
    nodes = [n for n in graph.node if n.name not in removed] + list(placeholders.values())
    while True:
        used = {i for n in nodes for i in n.input} | set(graph_outputs)
        live = [n for n in nodes if any(o in used for o in n.output)]
        if len(live) == len(nodes):
            break
        nodes = live

    # Stage of a tensor: -1 for values computable from constants alone (copied
    # into each segment that needs them), else the segment that produces it.
    stage: Dict[str, int] = {name: -1 for name in initializers}
    stage[graph_inputs[0]] = 0
    nodes = _topological(nodes, set(stage))
    node_stage = {}
    for node in nodes:
        s = max([-1] + [stage[i] for i in node.input if i])
        node_stage[node.name] = s
        for o in node.output:
            stage[o] = s + 1 if node.name in placeholders else s
    for j, p in enumerate(patterns):
        if stage[p["output"]] != j + 1:
            raise ValueError(f"{p['block']}: its inputs depend on a later attention; cannot split in order")
    nodes = [n for n in nodes if n.name not in placeholders]

    n_segments = len(patterns) + 1
    producer = {o: n for n in nodes for o in n.output}
    needed_later: Dict[int, Set[str]] = {k: set() for k in range(n_segments)}
    for node in nodes:
        for i in node.input:
            if i and stage.get(i, -1) >= 0 and stage[i] < node_stage[node.name]:
                needed_later[stage[i]].add(i)
    for j, p in enumerate(patterns):
        for name in ATTENTION_INPUTS:
            needed_later[stage[p[name]]].add(p[name])
    needed_later[stage[graph_outputs[0]]].add(graph_outputs[0])

    def typed(name):
        if name in value_info:
            return value_info[name]
        return helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)

    plan: Dict[str, Any] = {"input": graph_inputs[0], "output": graph_outputs[0], "segments": [], "attention": []}
    init_by_name = {t.name: t for t in graph.initializer}
    for k in range(n_segments):
        own = [n for n in nodes if node_stage[n.name] == k]
        # Constant-only nodes that this segment's nodes read, with their own inputs.
        wanted = [i for n in own for i in n.input if i and stage.get(i) == -1 and i in producer]
        const_nodes: Set[str] = set()
        while wanted:
            name = wanted.pop()
            node = producer[name]
            if node.name not in const_nodes:
                const_nodes.add(node.name)
                wanted.extend(i for i in node.input if i and i in producer)
        seg_nodes = [n for n in nodes if n.name in const_nodes or node_stage[n.name] == k]
        produced = {o for n in seg_nodes for o in n.output}
        inputs = sorted({i for n in seg_nodes for i in n.input if i and i not in produced and i not in initializers})
        outputs = sorted(needed_later[k] & produced) if k < n_segments - 1 else [graph_outputs[0]]
        if k < n_segments - 1:
            outputs = sorted(set(outputs) | {patterns[k][name] for name in ATTENTION_INPUTS})
        used_inits = {i for n in seg_nodes for i in n.input if i in initializers}
        inner = sorted(produced - set(outputs))
        seg_graph = helper.make_graph(
            seg_nodes,
            f"sam_edge_encoder_segment_{k}",
            [typed(i) for i in inputs],
            [typed(o) for o in outputs],
            [init_by_name[i] for i in sorted(used_inits)],
            value_info=[value_info[t] for t in inner if t in value_info],
        )
        seg_model = helper.make_model(seg_graph, opset_imports=list(model.opset_import))
        seg_model.ir_version = model.ir_version
        file_name = f"{prefix}_{k}.onnx"
        onnx.save_model(seg_model, os.path.join(out_dir, file_name))
        plan["segments"].append({"file": file_name, "inputs": inputs, "outputs": outputs})
    for p in patterns:
        side = config.image_embedding_size if p["index"] in glob else config.window_size
        plan["attention"].append({
            **{name: p[name] for name in ATTENTION_INPUTS},
            "output": p["output"],
            "scale": p["scale"],
            "block": p["index"],
            "heads": config.encoder_num_heads,
            "head_dim": config.encoder_embed_dim // config.encoder_num_heads,
            "k_size": [side, side],
        })
    return plan
