"""The encoder as one ONNX graph whose attentions are sam_edge_ops'
RelPosAttention nodes (csrc/ort/), for any ONNX Runtime host that registers
the op library: Python (sam_edge.load does), C, C++, C#, Triton's onnxruntime
backend.

ONNX Runtime's CPU attention materialises each global block's scores and bias
several times over; sam-edge's fused kernel (csrc/attention/) keeps them in
cache. Each cut attention is a whole block's attention between its two
Linears, which the op computes (cpu_attention.rel_pos_attention_qkv's math):

    qkv (B, H, W, 3 * heads * D), the qkv Linear's output
    -> out (B, H, W, heads * D), the proj Linear's input

so the split into q, k, v, the per-head transposes, the window partition and
padding, the rel-pos terms and the un-partition leave the graph. The op also
takes each block's rel-pos tables and, for the windowed blocks, the k and v
parts of its qkv bias (a padded token's key and value): initializers beside it.

cut_encoder reads the plain graph (MatMul -> Add(bias) -> Softmax -> MatMul,
as export_encoder writes it and the quantizers leave it), not the fused one;
write_encoder_ops_graph writes the result. The graph points into the
encoder's weight file (encoder.onnx.data), so the weights are stored once.
In static-int8 graphs the float ops before each QuantizeLinear become
sam_edge_ops' fused ones (quantize_fusions.py), each rewrite selectable.
"""

import os
from dataclasses import dataclass
from typing import Any, Dict, List, Sequence, Set, Tuple

from ..precision import Compute
from ..runtime.ort_ops import DOMAIN, DOMAIN_VERSION, AttentionCut, EncoderOpsGraph
from .graph_patterns import attention_cores
from .quantize_fusions import FUSIONS, fuse_quantize

#: The graph's file in a bundle.
OPS_GRAPH_FILE = "encoder_ops.onnx"
#: The quantize fusions bundles get: none, since each fused op beats the ORT nodes
#: it replaces but the whole int8 encoder measured no faster with them, on ORT's
#: pool as on OpenMP (benchmarks/bench_quantize_fusions.py; the quantize-fusions-vit_b results).
DEFAULT_FUSIONS: tuple = ()


def _attention_patterns(graph, blocks) -> List[Dict[str, Any]]:
    """The attention cores of `blocks` (encoder block indexes), in graph order, with
    their bias checked to be the decomposed rel-pos sum that the kernel computes."""
    producer = {out: node for node in graph.node for out in node.output}
    cores = attention_cores(graph, blocks)
    for core in cores:
        bias_reshape = producer.get(core["bias"])
        bias_add = producer.get(bias_reshape.input[0]) if getattr(bias_reshape, "op_type", None) == "Reshape" else None
        if getattr(bias_add, "op_type", None) != "Add":
            raise ValueError(f"{core['softmax'].name}: not the exported attention pattern; cannot cut here")
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
            # output and everything after it came out (?, ?, ?, ?)): the ops graph
            # declares it, so that ORT's fusions see shapes again.
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
    ops graph then points into that file instead of copying the weights."""
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


def _live(nodes, graph_outputs) -> list:
    """nodes without those whose outputs nothing reads, repeatedly."""
    while True:
        used = {i for n in nodes for i in n.input} | set(graph_outputs)
        live = [n for n in nodes if any(o in used for o in n.output)]
        if len(live) == len(nodes):
            return nodes
        nodes = live


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
    """The encoder blocks whose attention the op takes at `compute`: the global
    blocks, and the windowed ones too where a reduced-precision path runs them
    (bf16: head_dim 64 and 80, on AMX or AVX512-BF16; fp16: head_dim 64, on
    AVX512-FP16). fp32's fast path takes no windowed block (14-key rows)."""
    head_dim = config.encoder_embed_dim // config.encoder_num_heads
    windowed = {Compute.BF16: (64, 80), Compute.FP16: (64,), Compute.FP32: ()}[Compute.parse(compute)]
    if head_dim in windowed:
        return list(range(config.encoder_depth))
    return sorted(config.encoder_global_attn_indexes)


@dataclass
class EncoderCut:
    """The encoder graph with its attentions taken out (cut_encoder): `nodes` in
    an order where each one's inputs come first, each attention j a placeholder
    node named PLACEHOLDER + str(j) that reads its qkv tensor and writes its
    output; `patterns` the cuts (_qkv_cuts), `value_info` every tensor's type and
    shape that inference found."""

    model: Any
    nodes: list
    patterns: List[Dict[str, Any]]
    value_info: Dict[str, Any]
    input: str
    output: str

    def attention(self, config) -> Tuple[AttentionCut, ...]:
        """Each cut as the runtime describes it."""
        glob = set(config.encoder_global_attn_indexes)
        cuts = []
        for p in self.patterns:
            side = config.image_embedding_size if p["index"] in glob else config.window_size
            cuts.append(AttentionCut(
                qkv=p["qkv"], output=p["output"], scale=p["scale"], block=p["index"],
                heads=config.encoder_num_heads, head_dim=config.encoder_embed_dim // config.encoder_num_heads,
                k_size=(side, side), window=0 if p["index"] in glob else config.window_size,
            ))
        return tuple(cuts)

    def typed(self, name: str):
        """`name`'s value info, or an untyped float one."""
        import onnx
        from onnx import helper

        if name in self.value_info:
            return self.value_info[name]
        return helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)


#: The name of attention j's placeholder node in EncoderCut.nodes is PLACEHOLDER + str(j).
PLACEHOLDER = "sam_edge_attention_"


def cut_encoder(encoder_path: str, config, blocks: Sequence[int], fusions: Sequence[str] = DEFAULT_FUSIONS) -> EncoderCut:
    """encoder_path's graph with the attentions of `blocks` (encoder block indexes)
    taken out, each from its qkv Linear's output to its proj Linear's input. The
    encoder's weights move to encoder_path + ".data" (if not there already); the
    graph returned points into that file. Static int8 Linears become one
    MatMulIntegerToFloat each, with their bias (ONNX Runtime's contrib op), and
    the elementwise ops before their QuantizeLinears sam_edge_ops' fused ones, for
    each rewrite named in `fusions` (some of quantize_fusions.FUSIONS; none in float
    graphs; DEFAULT_FUSIONS when not given)."""
    import onnx
    from onnx import helper

    _externalize_weights(encoder_path)
    model = onnx.load(encoder_path, load_external_data=False)
    graph = model.graph
    base_dir = os.path.dirname(os.path.abspath(encoder_path))
    blocks = sorted({int(b) for b in blocks})
    if not blocks or blocks[0] < 0 or blocks[-1] >= config.encoder_depth:
        raise ValueError(f"blocks must be encoder block indexes in [0, {config.encoder_depth}); got {blocks}")
    # Shapes for every tensor: without them ONNX Runtime skips the fusions that
    # check shapes (Add + Gelu -> BiasGelu among them).
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    value_info = {v.name: v for v in
                  list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}
    del inferred
    patterns = _qkv_cuts(graph, config, blocks, value_info, base_dir)
    if not patterns:
        raise ValueError("the encoder has no attention to cut at")
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
    placeholders = [
        helper.make_node("SamEdgeAttention", [p["qkv"]], [p["output"]],
                         name=f"{PLACEHOLDER}{j}")
        for j, p in enumerate(patterns)
    ]
    nodes = [n for n in graph.node if n.name not in removed] + placeholders
    inits = {t.name: t for t in graph.initializer}
    nodes = _fuse_quantized_linear_bias(nodes, inits, set(graph_outputs))
    nodes = _live(fuse_quantize(nodes, inits, graph_outputs, value_info, fusions), graph_outputs)
    nodes = _topological(nodes, initializers | {graph_inputs[0]})
    return EncoderCut(model, nodes, patterns, value_info, graph_inputs[0], graph_outputs[0])


def opsets_for(model, nodes, *extra) -> list:
    """model's opset imports, with com.microsoft's when a node is in it, and `extra`."""
    from onnx import helper

    opsets = list(model.opset_import)
    if any(n.domain == "com.microsoft" for n in nodes) and all(o.domain != "com.microsoft" for o in opsets):
        opsets.append(helper.make_opsetid("com.microsoft", 1))
    return opsets + list(extra)


def write_encoder_ops_graph(
    cut: EncoderCut, out_dir: str, config, compute: Compute, file_name: str = OPS_GRAPH_FILE,
) -> EncoderOpsGraph:
    """Write `cut` (cut_encoder's) as one graph, in out_dir.

    Arguments:
        cut: the encoder with its attentions taken out.
        out_dir: the directory of the encoder graph the cut came from (the graph
            reads that graph's weight file by its relative name).
        config: the model's SamConfig.
        compute: the most reduced arithmetic each RelPosAttention may use; the op
            runs the nearest one down that the CPU has (its `compute` attribute).
    Returns:
        the manifest's description of the graph.
    """
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    compute = Compute.parse(compute)
    attention = cut.attention(config)
    nodes, tables = [], []
    for node in cut.nodes:
        if not node.name.startswith(PLACEHOLDER):
            nodes.append(node)
            continue
        j = int(node.name[len(PLACEHOLDER):])
        p, a = cut.patterns[j], attention[j]
        names = [p["qkv"], f"sam_edge.rel_pos_h_{j}", f"sam_edge.rel_pos_w_{j}", f"sam_edge.kv_bias_{j}"]
        for name, key in zip(names[1:], ("rel_pos_h", "rel_pos_w", "kv_bias")):
            tables.append(numpy_helper.from_array(np.ascontiguousarray(p[key], dtype=np.float32), name))
        nodes.append(helper.make_node(
            "RelPosAttention", names, [a.output], name=f"sam_edge/blocks.{a.block}/RelPosAttention", domain=DOMAIN,
            heads=a.heads, window=a.window, scale=float(a.scale), compute=compute.value,
        ))
    graph = cut.model.graph
    produced = {o for n in nodes for o in n.output}
    inner = sorted(produced - {cut.output})
    used = {i for n in nodes for i in n.input}
    one = helper.make_graph(
        nodes, "sam_edge_encoder_ops", [cut.typed(cut.input)], [cut.typed(cut.output)],
        [t for t in graph.initializer if t.name in used] + tables,
        value_info=[cut.value_info[t] for t in inner if t in cut.value_info],
    )
    model = helper.make_model(one, opset_imports=opsets_for(cut.model, nodes,
                                                          helper.make_opsetid(DOMAIN, DOMAIN_VERSION)))
    model.ir_version = cut.model.ir_version
    onnx.save_model(model, os.path.join(out_dir, file_name))
    return EncoderOpsGraph(file_name, compute, attention)


def encoder_ops_graph(
    encoder_path: str, config, blocks: Sequence[int], compute: Compute, file_name: str = OPS_GRAPH_FILE,
    fusions: Sequence[str] = DEFAULT_FUSIONS,
) -> EncoderOpsGraph:
    """cut_encoder then write_encoder_ops_graph, beside encoder_path."""
    cut = cut_encoder(encoder_path, config, blocks, fusions)
    return write_encoder_ops_graph(cut, os.path.dirname(os.path.abspath(encoder_path)), config, compute, file_name)


def fuse_ops_graph_file(path: str, out_path: str, fusions: Sequence[str] = FUSIONS) -> List[str]:
    """Apply the quantize fusions named in `fusions` to the ops graph at `path`
    (written without them, or with others) and write it to out_path, in the same
    directory so that it reads the same weight file. Returns the op types of the
    nodes the rewrite added: a way to measure each fusion on a built bundle,
    whose encoder.onnx may no longer be the plain graph cut_encoder needs."""
    import onnx

    if os.path.dirname(os.path.abspath(path)) != os.path.dirname(os.path.abspath(out_path)):
        raise ValueError(f"{out_path} must be beside {path}: the graph reads its weights by a relative name")
    model = onnx.load(path, load_external_data=False)
    graph = model.graph
    value_info = {v.name: v for v in list(graph.value_info) + list(graph.input) + list(graph.output)}
    outputs = [o.name for o in graph.output]
    original = list(graph.node)  # held, so that each node's id stays its own
    before = {id(n) for n in original}
    nodes = fuse_quantize(original, {t.name: t for t in graph.initializer}, outputs, value_info, fusions)
    added = [n.op_type for n in nodes if id(n) not in before]
    nodes = [onnx.NodeProto.FromString(n.SerializeToString()) for n in _live(nodes, outputs)]  # detached copies
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.save_model(model, out_path)
    return added
