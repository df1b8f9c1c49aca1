"""Float types for TensorRT: fp32 islands, and the fp16 float parts of an int8 graph.
Needs onnx (and numpy), not TensorRT.

FP16 needs fp32 islands where fp16 overflows or loses the row: LayerNorm
statistics, softmax, and the decomposed rel-pos bias chain.
`fp32_island_nodes` names those ONNX nodes; the TensorRT build pins the
layers imported from them to fp32 when it builds a weakly typed network
(`layer_is_island`), and `qdq_float_parts_to_fp16` keeps them fp32 when it
turns the rest of a QDQ graph's float parts to fp16 (a strongly typed int8
engine runs the graph's own types, so without it every non-quantized op would
run in fp32).
"""

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .graph_patterns import SHAPE_ONLY_OPS, fp32_island_nodes as _fp32_island_nodes
from .tensorrt_graph_checks import ONNX_DOMAINS, load_graph, node_attribute

#: Ops kept in fp32 by qdq_float_parts_to_fp16 whatever their place: ONNX gives them no float16 type.
FP32_ONLY_OPS = ("Range",)
#: Float operands that ONNX types as float32 whatever the data's type (Resize's scales).
FLOAT32_OPERANDS: Dict[str, Tuple[int, ...]] = {"Resize": (2,), "Upsample": (1,)}
#: The opset from which QuantizeLinear / DequantizeLinear take float16 scales (and then give float16).
FP16_QDQ_OPSET = 19


def graph_float_types(path_or_model) -> List[str]:
    """Sorted float dtype names used by the graph's weights and Casts ("float16", "float32", ...)."""
    from onnx import TensorProto, helper

    model = load_graph(path_or_model)
    floats = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE}
    found = {t.data_type for t in model.graph.initializer if t.data_type in floats}
    for node in model.graph.node:
        if node.op_type == "Cast":
            to = node_attribute(node, "to", None)
            if to in floats:
                found.add(to)
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and attr.t.data_type in floats:
                    found.add(attr.t.data_type)
    names = {TensorProto.BFLOAT16: "bfloat16"}
    return sorted(names.get(t) or np.dtype(helper.tensor_dtype_to_np_dtype(t)).name for t in found)


def fp32_island_nodes(path_or_model) -> List[str]:
    """graph_patterns.fp32_island_nodes of a graph given as a path or a model: the
    islands ONNX Runtime's fp16 conversion keeps, the same for TensorRT."""
    return _fp32_island_nodes(load_graph(path_or_model))


def qdq_float_parts_to_fp16(model, islands: Optional[Sequence[str]] = None) -> Tuple[object, Dict[str, int]]:
    """A copy of a QDQ model whose float parts are fp16 except the fp32 islands; returns (model, counts).

    For a strongly typed TensorRT int8 engine, which runs the graph's own types: the
    Q/DQ pairs and their MatMul / Conv stay adjacent (DequantizeLinear gives fp16
    directly: its scales become fp16, from opset 19), the island nodes
    (`fp32_island_nodes`, or `islands`) and FP32_ONLY_OPS keep fp32 with Casts at
    their borders, and the graph's inputs and outputs stay float32. A graph below
    opset 19 is converted to it first (onnx.version_converter).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    FLOAT, HALF = TensorProto.FLOAT, TensorProto.FLOAT16
    if _default_opset(model) < FP16_QDQ_OPSET:
        from onnx import version_converter

        model = version_converter.convert_version(model, FP16_QDQ_OPSET)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    island = set(fp32_island_nodes(out) if islands is None else islands)
    inferred = onnx.shape_inference.infer_shapes(out)
    types = {v.name: v.type.tensor_type.elem_type
             for v in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}
    types.update({t.name: t.data_type for t in graph.initializer})
    constants = {}
    for node in graph.node:
        if node.op_type == "Constant":
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None:
                types[node.output[0]] = value.data_type
                constants[node.output[0]] = node
    for node in graph.node:
        missing = [o for o in node.output if o and o not in types]
        if missing:
            raise ValueError(f"{node.op_type} {node.name!r}: ONNX shape inference gives no type for {missing}")

    def in_fp32(node) -> bool:
        return node.name in island or node.op_type in FP32_ONLY_OPS

    def wanted(node, index: int):
        """The type a float operand must have: None when the op reads only its shape."""
        if node.op_type in SHAPE_ONLY_OPS:
            return None
        if in_fp32(node) or index in FLOAT32_OPERANDS.get(node.op_type, ()):
            return FLOAT
        return HALF

    consumers: Dict[str, list] = {}
    for node in graph.node:
        for index, name in enumerate(node.input):
            if name:
                consumers.setdefault(name, []).append((node, index))
    half = {o for node in graph.node if node.op_type != "Constant" and not in_fp32(node)
            for o in node.output if types[o] == FLOAT}
    counts = {"fp32_island_nodes": len(island), "fp16_tensors": 0, "fp16_constants": 0, "casts_added": 0,
              "fp16_subnormal_scales": 0}
    # Weights and constants become fp16 when every reader wants fp16 (else they stay, and Casts feed the others).
    stored = {t.name: t for t in graph.initializer}
    for name in list(stored) + list(constants):
        wants = {wanted(node, index) for node, index in consumers.get(name, [])} - {None}
        if types[name] != FLOAT or wants != {HALF}:
            continue
        tensor = stored[name] if name in stored else next(a.t for a in constants[name].attribute if a.name == "value")
        values = numpy_helper.to_array(tensor)
        converted = values.astype(np.float16)
        if any(node.op_type in ("QuantizeLinear", "DequantizeLinear") and index == 1
               for node, index in consumers.get(name, [])):
            if not (np.isfinite(converted).all() and (converted > 0).all()):
                raise ValueError(f"quantization scale {name!r} is not representable in float16: {values}")
            counts["fp16_subnormal_scales"] += int((np.abs(converted) < np.finfo(np.float16).tiny).sum())
        tensor.CopyFrom(numpy_helper.from_array(converted, name))
        half.add(name)
        counts["fp16_constants"] += 1

    nodes, casts = [], {}

    def cast(name: str, to: int) -> str:
        if (name, to) not in casts:
            target = f"{name}_as_{'fp16' if to == HALF else 'fp32'}"
            nodes.append(helper.make_node("Cast", [name], [target], name=f"{target}_Cast", to=to))
            casts[(name, to)] = target
            counts["casts_added"] += 1
        return casts[(name, to)]

    for node in list(graph.node):
        for index, name in enumerate(node.input):
            if not name or types.get(name) != FLOAT:
                continue
            want, have = wanted(node, index), HALF if name in half else FLOAT
            if want is not None and want != have:
                node.input[index] = cast(name, want)
        if not in_fp32(node):
            for attr in node.attribute:
                if node.op_type == "Cast" and attr.name == "to" and attr.i == FLOAT:
                    attr.i = HALF
                if node.op_type == "ConstantOfShape" and attr.name == "value" and attr.t.data_type == FLOAT:
                    attr.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attr.t).astype(np.float16)))
        nodes.append(node)
    # Outputs stay float32: the fp16 tensor gets an internal name and a Cast gives the output its own.
    for output in graph.output:
        if output.name in half:
            internal = f"{output.name}_fp16"
            for node in nodes:
                node.input[:] = [internal if i == output.name else i for i in node.input]
                node.output[:] = [internal if o == output.name else o for o in node.output]
            nodes.append(helper.make_node("Cast", [internal], [output.name], name=f"{output.name}_Cast", to=FLOAT))
            counts["casts_added"] += 1
    counts["fp16_tensors"] = len(half)
    del graph.node[:]
    graph.node.extend(topologically_sorted(nodes, {i.name for i in graph.input} | set(stored)))
    del graph.value_info[:]  # the old types; ONNX shape inference recomputes them
    return out, counts


def _default_opset(model) -> int:
    return next((o.version for o in model.opset_import if o.domain in ONNX_DOMAINS), 1)


def topologically_sorted(nodes: Sequence, available: Sequence[str]) -> list:
    """`nodes` in an order where each node follows the producers of its inputs (ONNX requires it;
    ONNX Runtime's QDQ quantizer appends its nodes at the end). Keeps the given order where it can."""
    ready = set(available) | {""}
    pending, ordered = list(nodes), []
    while pending:
        remaining = []
        for node in pending:
            if all(name in ready for name in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                remaining.append(node)
        if len(remaining) == len(pending):
            names = [f"{n.op_type} {n.name!r}" for n in remaining[:5]]
            raise ValueError(f"the graph has a cycle or inputs nobody produces: {names}")
        pending = remaining
    return ordered


def layer_is_island(layer_name: str, island_nodes: Sequence[str]) -> bool:
    """Whether a TensorRT layer was imported from one of `island_nodes`.

    The ONNX parser names a layer after its node, with a suffix (`_1`,
    `_output`, ...) when one node becomes several layers.
    """
    for node in island_nodes:
        if layer_name == node:
            return True
        if layer_name.startswith(node) and not layer_name[len(node)].isalnum():
            return True
    return False
