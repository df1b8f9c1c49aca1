"""Cut an encoder graph at its attentions, for sam-edge's own attention kernel.

ONNX Runtime's CPU attention materialises each global block's scores and bias
several times over; sam_edge._C's fused kernel (csrc/attention/) keeps
them in cache. ORT cannot call that kernel from inside a graph (its custom-op
API needs headers that no pip package ships), so the runtime runs the graph in
pieces instead:

    segment 0 -> attention 0 -> segment 1 -> ... -> attention n-1 -> segment n

Segment k computes everything that can be computed before attention k's
output is known. Attention k is a whole block's attention between its two
Linears, as cpu_attention.rel_pos_attention_qkv computes it:

    qkv (B, H, W, 3 * heads * D), the qkv Linear's output
    -> out (B, H, W, heads * D), the proj Linear's input

so the split into q, k, v, the per-head transposes, the window partition and
padding, the rel-pos terms and the un-partition leave the graph too. The
kernel also needs each block's rel-pos tables and, for the windowed blocks,
the k and v parts of its qkv bias (a padded token's key and value): they go to
encoder_attention.npz beside the segments.

split_encoder_at_attention writes the segments next to the encoder and returns
the EncoderSplitPlan the runtime follows (sam_edge.runtime.segmented_encoder).
It reads the plain graph (MatMul -> Add(bias) -> Softmax -> MatMul, as
export_encoder writes it and the quantizers leave it), not the fused one.
"""

import os
from typing import Any, Dict, List, Sequence, Set

from ..precision import Compute
from ..kernels.cpu_attention import QKV_INPUTS
from ..runtime.segmented_encoder import AttentionCut, EncoderSplitPlan, Segment
from .graph_patterns import attention_cores

#: The file beside the segments that holds the kernel's tables.
TABLES_FILE = "encoder_attention.npz"


def _attention_patterns(graph, blocks) -> List[Dict[str, Any]]:
    """The attention cores of `blocks` (encoder block indexes), in graph order, with
    their bias checked to be the decomposed rel-pos sum that the kernel computes."""
    producer = {out: node for node in graph.node for out in node.output}
    cores = attention_cores(graph, blocks)
    for core in cores:
        bias_reshape = producer.get(core["bias"])
        bias_add = producer.get(bias_reshape.input[0]) if getattr(bias_reshape, "op_type", None) == "Reshape" else None
        if getattr(bias_add, "op_type", None) != "Add":
            raise ValueError(f"{core['softmax'].name}: not the exported attention pattern; cannot split here")
        if [getattr(producer.get(i), "op_type", None) for i in bias_add.input] != ["Unsqueeze", "Unsqueeze"]:
            raise ValueError(f"{bias_add.name}: expected rel_h.unsqueeze(-1) + rel_w.unsqueeze(-2)")
    return cores


_QUANTIZE_OPS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear")


def _with_last_dim(info, name: str, last: int):
    """A copy of value info `info`, renamed, with its last dimension `last`."""
    import copy

    out = copy.deepcopy(info)
    out.name = name
    dims = out.type.tensor_type.shape.dim
    dims[len(dims) - 1].Clear()
    dims[len(dims) - 1].dim_value = last
    return out


def _qkv_cuts(graph, config, blocks, value_info, base_dir: str) -> List[Dict[str, Any]]:
    """Each block's cut between its qkv and proj Linears, in graph order: the
    qkv tensor, the proj input, the scale, and the kernel's tables (read from
    the external data in base_dir)."""
    from onnx import numpy_helper

    producer = {out: node for node in graph.node for out in node.output}
    inits = {t.name: t for t in graph.initializer}
    heads, dim = config.encoder_num_heads, config.encoder_embed_dim
    head_dim = dim // heads

    def shape(name):
        info = value_info.get(name)
        if info is None or not info.type.tensor_type.HasField("shape"):
            return None
        return [d.dim_value if d.HasField("dim_value") else None for d in info.type.tensor_type.shape.dim]

    cuts = []
    for pattern in _attention_patterns(graph, blocks):
        prefix, block = pattern["block"], pattern["index"]
        qkv_scope, proj_scope = prefix + "qkv/", prefix + "proj/"
        # The qkv Linear's output: its bias Add, read by the attention's first Reshape.
        bias_adds = [n for n in graph.node if n.name.startswith(qkv_scope) and n.op_type == "Add"
                     and any(i in inits for i in n.input)]
        if len(bias_adds) != 1:
            raise ValueError(f"{qkv_scope}: expected one bias Add, found {len(bias_adds)}")
        bias_add = bias_adds[0]
        qkv = bias_add.output[0]
        bias = numpy_helper.to_array(inits[next(i for i in bias_add.input if i in inits)], base_dir)
        if bias.shape != (3 * dim,) or (shape(qkv) or [None])[-1] != 3 * dim or len(shape(qkv) or []) != 4:
            raise ValueError(f"{bias_add.name}: expected the (B, H, W, {3 * dim}) qkv projection; got {shape(qkv)}")
        # The proj Linear's input, behind whatever quantizes it for the MatMul.
        proj = [n for n in graph.node if n.name.startswith(proj_scope) and n.op_type in ("MatMul", "MatMulInteger")]
        if len(proj) != 1:
            raise ValueError(f"{proj_scope}: expected one MatMul, found {len(proj)}")
        name = proj[0].input[0]
        while name in producer and producer[name].op_type in _QUANTIZE_OPS:
            name = producer[name].input[0]
        out_shape = shape(name)
        if name not in producer or (out_shape is not None and (len(out_shape) != 4 or out_shape[-1] not in (None, dim))):
            raise ValueError(f"{proj[0].name}: expected its input to be the (B, H, W, {dim}) attention output; "
                             f"got {out_shape}")
        tables = {}
        for axis in ("h", "w"):
            key = f"image_encoder.blocks.{block}.attn.rel_pos_{axis}"
            if key not in inits:
                raise ValueError(f"{prefix}: the graph has no {key} table")
            tables[axis] = numpy_helper.to_array(inits[key], base_dir).astype("float32")
        cuts.append({
            "block": prefix,
            "index": block,
            "scale": pattern["scale"],
            "qkv": qkv,
            "output": name,
            # Removing the output's producer leaves the rest of the attention dead.
            "removed": {producer[name].name},
            # Shape inference loses the grid behind the attention's reshapes (its
            # output and everything after it came out (?, ?, ?, ?)): the segment
            # after the cut declares it, so that ORT's fusions see shapes again.
            "output_info": _with_last_dim(value_info[qkv], name, dim),
            "rel_pos_h": tables["h"],
            "rel_pos_w": tables["w"],
            "kv_bias": bias.reshape(3, heads, head_dim)[1:].astype("float32"),
        })
    return cuts


def _fuse_quantized_linear_bias(nodes, inits, graph_outputs) -> list:
    """nodes with each static-int8 Linear, DequantizeLinear(x_q) and
    DequantizeLinear(W_q) -> MatMul -> Add(bias), as one ONNX Runtime
    MatMulIntegerToFloat that takes the bias (a com.microsoft op). ORT turns
    the QDQ MatMul into MatMulIntegerToFloat by itself but leaves the bias Add
    as a separate pass over the output; fused, it gives the same bits. The
    dequantize nodes are left to the caller's dead-node sweep."""
    from onnx import helper

    producer = {o: n for n in nodes for o in n.output}
    readers: Dict[str, list] = {}
    for n in nodes:
        for i in n.input:
            readers.setdefault(i, []).append(n)

    def per_tensor(name):
        return name in inits and list(inits[name].dims) in ([], [1])

    fused, replaced = {}, set()
    for node in nodes:
        if node.op_type != "MatMul" or node.output[0] in graph_outputs or len(readers.get(node.output[0], [])) != 1:
            continue
        dq_x, dq_w = producer.get(node.input[0]), producer.get(node.input[1])
        if dq_x is None or dq_w is None or not dq_x.op_type == dq_w.op_type == "DequantizeLinear":
            continue
        weight = inits.get(dq_w.input[0])
        if weight is None or len(weight.dims) != 2 or not per_tensor(dq_x.input[1]):
            continue
        axis = next((a.i for a in dq_w.attribute if a.name == "axis"), 1)
        if not (per_tensor(dq_w.input[1]) or axis in (1, -1)):
            continue  # MatMulIntegerToFloat scales its weight per tensor or per output column
        (add,) = readers[node.output[0]]
        bias = next((i for i in add.input if i != node.output[0]), None)
        if add.op_type != "Add" or bias not in inits or list(inits[bias].dims) != [weight.dims[1]]:
            continue
        x_q, x_scale, x_zero = (list(dq_x.input) + ["", ""])[:3]
        w_q, w_scale, w_zero = (list(dq_w.input) + ["", ""])[:3]
        fused[add.name] = helper.make_node(
            "MatMulIntegerToFloat", [x_q, w_q, x_scale, w_scale, x_zero, w_zero, bias], [add.output[0]],
            name=node.name + "_with_bias", domain="com.microsoft",
        )
        replaced.add(node.name)
    return [fused.get(n.name, n) for n in nodes if n.name not in replaced]


def _externalize_weights(path: str) -> None:
    """Move every initializer of 1 KB or more of the graph at `path` into
    `path + ".data"`, unless they are there already (ViT-H's export): the
    segments then point into that file instead of copying the weights."""
    import onnx

    model = onnx.load(path, load_external_data=False)
    inline = [t for t in model.graph.initializer
              if t.data_location != onnx.TensorProto.EXTERNAL and t.ByteSize() >= 1024]
    if not inline:
        return
    del model
    model = onnx.load(path)  # with any external data, into memory
    data = path + ".data"
    if os.path.exists(data):
        os.remove(data)  # onnx appends to an existing data file
    onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location=os.path.basename(data), size_threshold=1024)


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


def attention_blocks(config, compute: Compute) -> List[int]:
    """The encoder blocks whose attention the kernel takes at `compute`: the global
    blocks, and the windowed ones too where its reduced-precision path runs them
    (head_dim 64: ViT-B, ViT-L)."""
    head_dim = config.encoder_embed_dim // config.encoder_num_heads
    if compute is not Compute.FP32 and head_dim == 64:
        return list(range(config.encoder_depth))
    return sorted(config.encoder_global_attn_indexes)


def split_encoder_at_attention(
    encoder_path: str, out_dir: str, config, blocks: Sequence[int], compute: Compute,
    prefix: str = "encoder_segment",
) -> EncoderSplitPlan:
    """Write encoder_path's graph as one segment file more than it has cuts, in out_dir.

    Arguments:
        encoder_path: the plain encoder graph (export_encoder, or a quantizer's output).
        out_dir: where the segments go (the bundle's staging directory).
        config: the model's SamConfig.
        blocks: the encoder blocks to cut at (attention_blocks), global or windowed.
        compute: the kernel's arithmetic, which the plan records.
    Returns:
        the EncoderSplitPlan, tensor names throughout; its tables file is written
        beside the segments.
    The encoder's weights move to encoder_path + ".data" (if not there already),
    and the segments point into that file: encoder.onnx stays whole for other
    runtimes, and the weights are stored once.
    In a static int8 graph each Linear becomes one MatMulIntegerToFloat with its
    bias in the segments (ONNX Runtime's contrib op); encoder.onnx keeps the
    standard QDQ form.
    """
    import onnx
    from onnx import helper

    _externalize_weights(encoder_path)
    model = onnx.load(encoder_path, load_external_data=False)
    graph = model.graph
    base_dir = os.path.dirname(os.path.abspath(encoder_path))
    glob = set(config.encoder_global_attn_indexes)
    compute = Compute.parse(compute)
    blocks = sorted({int(b) for b in blocks})
    if not blocks or blocks[0] < 0 or blocks[-1] >= config.encoder_depth:
        raise ValueError(f"blocks must be encoder block indexes in [0, {config.encoder_depth}); got {blocks}")
    # Shapes for every segment's tensors: without them ONNX Runtime skips the
    # fusions that check shapes (Add + Gelu -> BiasGelu among them).
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    value_info = {v.name: v for v in
                  list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}
    del inferred
    patterns = _qkv_cuts(graph, config, blocks, value_info, base_dir)
    if not patterns:
        raise ValueError("the encoder has no attention to split at")
    for p in patterns:
        value_info[p["output"]] = p["output_info"]

    initializers = {t.name for t in graph.initializer}
    graph_inputs = [i.name for i in graph.input if i.name not in initializers]
    graph_outputs = [o.name for o in graph.output]
    if len(graph_inputs) != 1 or len(graph_outputs) != 1:
        raise ValueError(f"expected one image input and one output; got {graph_inputs} -> {graph_outputs}")

    # Drop the attentions, then whatever only they needed (from the split of qkv
    # to the un-partitioned output). The qkv tensors stay: the kernel reads them.
    removed: Set[str] = set().union(*(p["removed"] for p in patterns))
    # Each attention as a placeholder node, so that sorting and staging see it
    # (and its input stays alive).
    placeholders = {
        f"sam_edge_attention_{j}": helper.make_node(
            "SamEdgeAttention", [p[name] for name in QKV_INPUTS], [p["output"]], name=f"sam_edge_attention_{j}"
        )
        for j, p in enumerate(patterns)
    }
    nodes = [n for n in graph.node if n.name not in removed] + list(placeholders.values())
    nodes = _fuse_quantized_linear_bias(nodes, {t.name: t for t in graph.initializer}, set(graph_outputs))
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
        for name in QKV_INPUTS:
            needed_later[stage[p[name]]].add(p[name])
    needed_later[stage[graph_outputs[0]]].add(graph_outputs[0])

    def typed(name):
        if name in value_info:
            return value_info[name]
        return helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)

    segments: List[Segment] = []
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
            outputs = sorted(set(outputs) | {patterns[k][name] for name in QKV_INPUTS})
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
        opsets = list(model.opset_import)
        if any(n.domain == "com.microsoft" for n in seg_nodes) and all(o.domain != "com.microsoft" for o in opsets):
            opsets.append(helper.make_opsetid("com.microsoft", 1))
        seg_model = helper.make_model(seg_graph, opset_imports=opsets)
        seg_model.ir_version = model.ir_version
        file_name = f"{prefix}_{k}.onnx"
        onnx.save_model(seg_model, os.path.join(out_dir, file_name))
        segments.append(Segment(file_name, tuple(inputs), tuple(outputs)))
    import numpy as np

    tables, attention = {}, []
    for j, p in enumerate(patterns):
        is_global = p["index"] in glob
        side = config.image_embedding_size if is_global else config.window_size
        attention.append(AttentionCut(
            qkv=p["qkv"],
            output=p["output"],
            scale=p["scale"],
            block=p["index"],
            heads=config.encoder_num_heads,
            head_dim=config.encoder_embed_dim // config.encoder_num_heads,
            k_size=(side, side),
            window=0 if is_global else config.window_size,
        ))
        tables.update({f"rel_pos_h_{j}": p["rel_pos_h"], f"rel_pos_w_{j}": p["rel_pos_w"], f"kv_bias_{j}": p["kv_bias"]})
    np.savez(os.path.join(out_dir, TABLES_FILE), **tables)
    return EncoderSplitPlan(graph_inputs[0], graph_outputs[0], tuple(segments), tuple(attention), TABLES_FILE,
                            compute)
