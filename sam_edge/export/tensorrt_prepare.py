"""ONNX-side preparation of our graphs for TensorRT. Needs onnx (and numpy), not TensorRT.

Four things TensorRT needs that ONNX Runtime does not:

* Standard ops only. TensorRT's ONNX parser has no importer for ONNX Runtime's
  contrib ops (com.microsoft.MultiHeadAttention, which `sam-edge build` writes
  for ONNX Runtime; NVIDIA/TensorRT #3558). `check_onnx_domain` refuses any node
  outside the ONNX domain, with the command that rebuilds the graph without them.

* No graph input may decide a shape. An engine's shapes are fixed per
  optimization profile; an input whose *value* reaches the shape operand of a
  Reshape / Resize / Slice / Expand / ... (the official decoder's
  `orig_im_size`, samexporter #31, SAM_TensorRT #6) cannot be built, or builds
  a shape-tensor input that the runtime must also feed on the host.
  `value_dependent_shape_uses` finds every such use; the "fast" decoder, whose
  only shape computations start from `Shape(x)`, has none.
* Explicit int8 quantization is symmetric signed int8 with zero points of 0.
  ONNX Runtime's static QDQ graphs quantize activations to uint8 with a zero
  point; `to_symmetric_int8_qdq` rewrites each such quantizer to int8 with the
  same clipping range: scale = max(|lo|, |hi|) / 127.
* FP16 needs fp32 islands where fp16 overflows or loses the row: LayerNorm
  statistics, softmax, and the decomposed rel-pos bias chain.
  `fp32_island_nodes` names those ONNX nodes; the TensorRT build pins the
  layers imported from them to fp32 when it builds a weakly typed network, and
  `qdq_float_parts_to_fp16` keeps them fp32 when it turns the rest of a QDQ
  graph's float parts to fp16 (a strongly typed int8 engine runs the graph's
  own types, so without it every non-quantized op would run in fp32).
"""

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .graph_patterns import SHAPE_ONLY_OPS, fp32_island_nodes as _fp32_island_nodes

#: Operand indexes of each op that set the *shape* (not the values) of its output.
#: A graph input that reaches one of them, other than through Shape / Size, makes
#: an output shape depend on input values.
SHAPE_OPERANDS: Dict[str, Tuple[int, ...]] = {
    "Reshape": (1,),
    "Expand": (1,),
    "Tile": (1,),
    "ConstantOfShape": (0,),
    "Slice": (1, 2, 3, 4),
    "Resize": (1, 2, 3),
    "Upsample": (1,),
    "Pad": (1, 3),
    "Range": (0, 1, 2),
    "OneHot": (1,),
    "TopK": (1,),
    "Split": (1,),
    "Squeeze": (1,),
    "Unsqueeze": (1,),
    "CenterCropPad": (1,),
    "ReduceSum": (1,),
    "ReduceMean": (1,),
    "ReduceMax": (1,),
    "ReduceMin": (1,),
    "ReduceProd": (1,),
    "ReduceL2": (1,),
    # Output shapes that depend on how many values pass a test.
    "NonZero": (0,),
    "Compress": (1,),
    "Unique": (0,),
    "NonMaxSuppression": (0, 1, 2, 3, 4),
    # Control flow chosen by a value.
    "If": (0,),
    "Loop": (0, 1),
}
#: The domains of standard ONNX ops, the only ones TensorRT's parser imports.
ONNX_DOMAINS = ("", "ai.onnx")
#: Ops kept in fp32 by qdq_float_parts_to_fp16 whatever their place: ONNX gives them no float16 type.
FP32_ONLY_OPS = ("Range",)
#: Float operands that ONNX types as float32 whatever the data's type (Resize's scales).
FLOAT32_OPERANDS: Dict[str, Tuple[int, ...]] = {"Resize": (2,), "Upsample": (1,)}
#: The opset from which QuantizeLinear / DequantizeLinear take float16 scales (and then give float16).
FP16_QDQ_OPSET = 19


@dataclass(frozen=True)
class InputSpec:
    """A graph input: dims are ints for static sizes, strings for named dynamic
    axes, None for unnamed dynamic axes; dtype is the numpy dtype name."""

    name: str
    dims: Tuple[Union[int, str, None], ...]
    dtype: str

    @property
    def rank(self) -> int:
        return len(self.dims)

    def is_static(self, axis: int) -> bool:
        return isinstance(self.dims[axis], int)

    @property
    def is_dynamic(self) -> bool:
        return not all(self.is_static(a) for a in range(self.rank))


@dataclass(frozen=True)
class ShapeDependency:
    """Graph input `input` reaches operand `operand` of node `node` (an `op_type`),
    which sets an output's shape, along `path` (node names from the input)."""

    input: str
    node: str
    op_type: str
    operand: int
    path: Tuple[str, ...]

    def describe(self) -> str:
        route = " -> ".join(self.path[-6:])
        more = "... -> " if len(self.path) > 6 else ""
        return f"input {self.input!r} sets operand {self.operand} of {self.op_type} {self.node!r} (via {more}{route})"


def load_graph(path_or_model):
    """An onnx.ModelProto from a path (weights not loaded) or a ModelProto."""
    import onnx

    if isinstance(path_or_model, onnx.ModelProto):
        return path_or_model
    return onnx.load(str(path_or_model), load_external_data=False)


def input_specs(path_or_model) -> Dict[str, InputSpec]:
    """{name: InputSpec} of the graph inputs that are not initializers, in graph order."""
    from onnx import helper

    model = load_graph(path_or_model)
    initializers = {t.name for t in model.graph.initializer}
    specs = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        dims = []
        for d in tensor.shape.dim:
            if d.HasField("dim_value"):
                dims.append(int(d.dim_value))
            else:
                dims.append(d.dim_param or None)
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type)).name
        specs[value.name] = InputSpec(value.name, tuple(dims), dtype)
    return specs


def value_dependent_shape_uses(path_or_model) -> List[ShapeDependency]:
    """Every place where a graph input's *value* reaches a shape operand (see SHAPE_OPERANDS).

    Walks forward from each input through every node, stopping at Shape / Size
    (whose outputs depend only on shapes, which TensorRT's profiles handle).
    Subgraphs of If / Loop / Scan are not entered; an input reaching their
    condition or trip count is reported. An empty list means every output
    shape is a function of input shapes alone.
    """
    model = load_graph(path_or_model)
    graph = model.graph
    consumers: Dict[str, List[Tuple[object, int]]] = {}
    for node in graph.node:
        for index, name in enumerate(node.input):
            if name:
                consumers.setdefault(name, []).append((node, index))
    found: List[ShapeDependency] = []
    for name in input_specs(model):
        # Breadth-first: the first path found to each tensor is a shortest one.
        paths: Dict[str, Tuple[str, ...]] = {name: ()}
        frontier = [name]
        reported = set()
        while frontier:
            next_frontier = []
            for tensor in frontier:
                for node, index in consumers.get(tensor, []):
                    node_name = node.name or f"<{node.op_type} #{list(graph.node).index(node)}>"
                    path = paths[tensor] + (node_name,)
                    if index in SHAPE_OPERANDS.get(node.op_type, ()) and (node_name, index) not in reported:
                        reported.add((node_name, index))
                        found.append(ShapeDependency(name, node_name, node.op_type, index, path))
                    if node.op_type in SHAPE_ONLY_OPS:
                        continue
                    for out in node.output:
                        if out and out not in paths:
                            paths[out] = path
                            next_frontier.append(out)
            frontier = next_frontier
    return found


def check_onnx_domain(path_or_model, what: str = "graph") -> None:
    """Raise ValueError, naming the nodes, if any node is outside the ONNX domain (TensorRT's
    parser imports standard ops only; ONNX Runtime's contrib ops have no importer)."""
    model = load_graph(path_or_model)
    foreign = [n for n in model.graph.node if n.domain not in ONNX_DOMAINS]
    if foreign:
        ops = sorted({f"{n.domain}.{n.op_type}" for n in foreign})
        raise ValueError(
            f"{what} cannot be a TensorRT engine: {len(foreign)} node(s) are outside the ONNX domain ({', '.join(ops)}), "
            "and TensorRT's ONNX parser imports standard ops only. These are ONNX Runtime contrib ops, which "
            "`sam-edge build` writes for ONNX Runtime. Rebuild the graphs with standard ops: "
            "`sam-edge build --backend tensorrt ...` does it for you; for an ONNX bundle to build engines from, "
            "`sam-edge build --backend onnxruntime --plain-attention ...` (build_bundle(..., fused_attention=False))."
        )


def check_static_shape_graph(path_or_model, what: str = "graph") -> None:
    """Raise ValueError, naming each use, if any input's value decides a shape."""
    uses = value_dependent_shape_uses(path_or_model)
    if uses:
        lines = "\n  ".join(u.describe() for u in uses[:10])
        more = f"\n  ... and {len(uses) - 10} more" if len(uses) > 10 else ""
        inputs = sorted({u.input for u in uses})
        raise ValueError(
            f"{what} cannot be a TensorRT engine: the value of input(s) {inputs} decides output shapes:\n  "
            f"{lines}{more}\nBuild from the decoder variant without orig_im_size (decoder.onnx of a bundle: "
            "low-res masks out, resized by the runtime)."
        )


# ---------------------------------------------------------------- QDQ


def qdq_node_counts(path_or_model) -> Tuple[int, int]:
    """(QuantizeLinear count, DequantizeLinear count) in the main graph."""
    model = load_graph(path_or_model)
    ops = [n.op_type for n in model.graph.node]
    return ops.count("QuantizeLinear"), ops.count("DequantizeLinear")


_INT_RANGES = {np.dtype(np.uint8): (0, 255), np.dtype(np.int8): (-128, 127)}


def to_symmetric_int8_qdq(model) -> Tuple[object, Dict[str, int]]:
    """A copy of a QDQ model in which every quantizer is signed int8 with zero point 0,
    as TensorRT's explicit quantization requires; returns (model, counts).

    Each uint8 (or int8 with non-zero zero point) quantizer keeps its clipping
    range [lo, hi] = [(qmin - zp) * scale, (qmax - zp) * scale] and becomes
    symmetric around 0: scale' = max(|lo|, |hi|) / 127, zero point int8 0. The
    rounding step grows by at most 255/127 (~2.01x, for a one-sided range), and a
    one-sided range (a clamp, e.g. a Relu folded into the quantizer) gets an
    explicit Relu / Max in front of the quantizer.
    Stored quantized weights in uint8 are requantized to the new scale, and int32
    biases (which TensorRT cannot dequantize) are folded into float constants.
    Scale / zero-point initializers are rewritten by name, so the Quantize and
    Dequantize of a pair, which share them, stay consistent.
    """
    import onnx
    from onnx import helper, numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    inits = {t.name: t for t in graph.initializer}
    converted_params: Dict[Tuple[str, str], object] = {}  # (scale, zp) -> (old scale, old zp)
    counts = {"quantizers_converted": 0, "weights_requantized": 0, "already_symmetric": 0, "int32_folded": 0,
              "clamps_added": 0}

    # ONNX Runtime stores biases as int32 with a DequantizeLinear; TensorRT dequantizes
    # only 8-bit (and narrower) types, so those become the float constants they denote.
    for node in list(graph.node):
        if node.op_type != "DequantizeLinear" or node.input[0] not in inits:
            continue
        stored = numpy_helper.to_array(inits[node.input[0]])
        if stored.dtype != np.int32:
            continue
        scale = numpy_helper.to_array(inits[node.input[1]]).astype(np.float64)
        zp = numpy_helper.to_array(inits[node.input[2]]) if len(node.input) > 2 and node.input[2] else 0
        shape = [1] * stored.ndim
        if np.ndim(scale) == 1 and stored.ndim > 0:
            shape[_attribute(node, "axis", 1)] = -1
        values = (stored.astype(np.float64) - np.reshape(zp, shape)) * np.reshape(scale, shape)
        graph.initializer.append(numpy_helper.from_array(values.astype(np.float32), node.output[0]))
        inits[node.output[0]] = graph.initializer[-1]
        graph.node.remove(node)
        counts["int32_folded"] += 1

    def array(name):
        if name not in inits:
            raise ValueError(
                f"quantization parameter {name!r} is computed in the graph, not stored; "
                "TensorRT needs constant scales and zero points"
            )
        return numpy_helper.to_array(inits[name])

    def put(name, value):
        inits[name].CopyFrom(numpy_helper.from_array(value, name))

    for node in graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        scale_name = node.input[1]
        zp_name = node.input[2] if len(node.input) > 2 and node.input[2] else None
        if zp_name is None:
            if node.op_type == "DequantizeLinear":
                continue  # type from its input; handled through its QuantizeLinear or weight
            # ONNX: a QuantizeLinear without zero point outputs uint8 with zero point 0.
            zp_name = f"{scale_name}_int8_zero_point"
            zero = np.zeros(array(scale_name).shape, np.uint8)
            if zp_name not in inits:
                graph.initializer.append(numpy_helper.from_array(zero, zp_name))
                inits[zp_name] = graph.initializer[-1]
            node.input.append(zp_name)
        key = (scale_name, zp_name)
        if key in converted_params:
            continue
        zp = array(zp_name)
        if zp.dtype not in _INT_RANGES:
            raise ValueError(f"{node.op_type} {node.name!r}: zero point dtype {zp.dtype} is not int8/uint8")
        if zp.dtype == np.int8 and not zp.any():
            counts["already_symmetric"] += 1
            converted_params[key] = array(scale_name)
            continue
        scale = array(scale_name).astype(np.float64)
        qmin, qmax = _INT_RANGES[zp.dtype]
        lo = (qmin - zp.astype(np.float64)) * scale
        hi = (qmax - zp.astype(np.float64)) * scale
        new_scale = np.maximum(np.abs(lo), np.abs(hi)) / 127.0
        new_scale = np.where(new_scale > 0, new_scale, scale)  # a degenerate [0, 0] range keeps its scale
        converted_params[key] = (scale, zp)
        put(scale_name, new_scale.astype(array(scale_name).dtype))
        put(zp_name, np.zeros(zp.shape, np.int8))
        counts["quantizers_converted"] += 1

    # A one-sided range was a clamp: ONNX Runtime drops a Relu in front of a uint8
    # quantizer with zero point 0, since the quantizer clips at 0. Symmetric int8 does
    # not, so the clamp goes back in as an explicit Relu (or Clip for lo > 0).
    nodes = list(graph.node)
    del graph.node[:]
    for node in nodes:
        old = None
        if node.op_type == "QuantizeLinear":
            old = converted_params.get((node.input[1], node.input[2]))
        if isinstance(old, tuple):
            old_scale, old_zp = old
            qmin = _INT_RANGES[old_zp.dtype][0]
            lo = (qmin - old_zp.astype(np.float64)) * old_scale
            if np.all(lo >= 0):
                clamped = f"{node.input[0]}_clamp_for_{node.name or node.output[0]}"
                if np.all(lo == 0):
                    clamp = helper.make_node("Relu", [node.input[0]], [clamped], name=f"{clamped}_Relu")
                elif np.ndim(lo) == 0:
                    lo_name = f"{clamped}_min"
                    graph.initializer.append(numpy_helper.from_array(np.array(lo, np.float32), lo_name))
                    clamp = helper.make_node("Max", [node.input[0], lo_name], [clamped], name=f"{clamped}_Max")
                else:
                    raise ValueError(f"QuantizeLinear {node.name!r}: per-channel one-sided activation ranges are not supported")
                graph.node.append(clamp)
                node.input[0] = clamped
                counts["clamps_added"] += 1
        graph.node.append(node)

    # Stored quantized weights feeding a DequantizeLinear whose parameters changed.
    for node in graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in inits:
            continue
        key = (node.input[1], node.input[2] if len(node.input) > 2 else None)
        old = converted_params.get(key)
        weight = numpy_helper.to_array(inits[node.input[0]])
        if weight.dtype in (np.int8, np.int32) and not isinstance(old, tuple):
            continue
        if not isinstance(old, tuple):
            raise ValueError(f"DequantizeLinear {node.name!r}: stored {weight.dtype} weight without a zero point")
        old_scale, old_zp = old
        axis = _attribute(node, "axis", 1)
        shape = [1] * weight.ndim
        if np.ndim(old_scale) == 1 and weight.ndim > 0:
            shape[axis] = -1
        values = (weight.astype(np.float64) - np.reshape(old_zp, shape)) * np.reshape(old_scale, shape)
        new_scale = numpy_helper.to_array(inits[node.input[1]]).astype(np.float64)
        requantized = np.clip(np.rint(values / np.reshape(new_scale, shape)), -127, 127).astype(np.int8)
        put(node.input[0], requantized)
        counts["weights_requantized"] += 1
    return out, counts


def _attribute(node, name: str, default):
    from onnx import helper

    for attr in node.attribute:
        if attr.name == name:
            return helper.get_attribute_value(attr)
    return default


# ---------------------------------------------------------------- precision


def graph_float_types(path_or_model) -> List[str]:
    """Sorted float dtype names used by the graph's weights and Casts ("float16", "float32", ...)."""
    from onnx import TensorProto, helper

    model = load_graph(path_or_model)
    floats = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE}
    found = {t.data_type for t in model.graph.initializer if t.data_type in floats}
    for node in model.graph.node:
        if node.op_type == "Cast":
            to = _attribute(node, "to", None)
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


# ---------------------------------------------------------------- validation with ONNX Runtime


def random_feed(specs: Dict[str, InputSpec], shapes: Dict[str, Tuple[int, ...]], seed: int = 0) -> Dict[str, np.ndarray]:
    """Random inputs of the given shapes and the graph's dtypes (labels-like inputs in {-1, 0, 1})."""
    rng = np.random.default_rng(seed)
    feed = {}
    for name, spec in specs.items():
        shape = tuple(shapes[name])
        if np.dtype(spec.dtype).kind == "f":
            feed[name] = rng.standard_normal(shape).astype(spec.dtype)
        else:
            feed[name] = rng.integers(-1, 2, shape).astype(spec.dtype)
    return feed


def run_onnxruntime(path_or_bytes, feed: Dict[str, np.ndarray], optimize: bool = True) -> List[np.ndarray]:
    """Outputs of a graph (path or serialized bytes) on the CPU provider. optimize=False runs
    each node as written (Q/DQ as float math), not ONNX Runtime's fused integer kernels, whose
    results depend on the CPU's int8 instructions: what graph rewrites are checked against."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(path_or_bytes, options, providers=["CPUExecutionProvider"])
    return session.run(None, feed)


def check_profile_with_onnxruntime(path: str, profile: Dict[str, Tuple[tuple, tuple, tuple]]) -> Dict[str, List[list]]:
    """Run the graph with ONNX Runtime at the min, opt and max shapes of `profile`; returns
    {"min" | "opt" | "max": output shapes}. Raises ValueError if a run fails or an output is
    not finite, so a profile the graph cannot take is caught before a TensorRT build."""
    import onnxruntime as ort

    specs = input_specs(path)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    shapes_out = {}
    for which, index in (("min", 0), ("opt", 1), ("max", 2)):
        shapes = {name: ranges[index] for name, ranges in profile.items()}
        try:
            outputs = session.run(None, random_feed(specs, shapes))
        except Exception as exc:  # ONNX Runtime raises its own exception types
            raise ValueError(f"{path} fails in ONNX Runtime at the profile's {which} shapes {shapes}: {exc}") from exc
        for i, out in enumerate(outputs):
            if np.issubdtype(out.dtype, np.floating) and not np.isfinite(out).all():
                raise ValueError(f"{path}: output {i} is not finite at the profile's {which} shapes {shapes}")
        shapes_out[which] = [list(o.shape) for o in outputs]
    return shapes_out


def prepare_for_tensorrt(src: str, dst: Optional[str] = None, what: str = "graph",
                         fp16_float_parts: bool = False) -> Dict[str, object]:
    """Check `src` for nodes outside the ONNX domain and value-dependent shapes, make its
    quantizers TensorRT's (symmetric int8), with fp16_float_parts turn a QDQ graph's float
    parts to fp16 outside its fp32 islands (qdq_float_parts_to_fp16), and write the result to
    `dst` if given and anything changed. Returns a record: {"path": the graph to build from,
    "qdq": counts or None, "fp16_float_parts": counts or None, "float_types": [...]}.

    External weights (ViT-H) are not rewritten: a QDQ graph with external data
    is refused with a message, since our int8 encoders are below 2 GB.
    """
    import onnx

    model = load_graph(src)
    check_onnx_domain(model, what)
    check_static_shape_graph(model, what)
    record: Dict[str, object] = {"path": src, "qdq": None, "fp16_float_parts": None}
    quantizers, dequantizers = qdq_node_counts(model)
    if quantizers or dequantizers:
        if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
            raise ValueError(f"{src}: QDQ graphs with external weights are not supported by the TensorRT preparation")
        converted, counts = to_symmetric_int8_qdq(model)
        record["qdq"] = dict(counts, quantize_nodes=quantizers, dequantize_nodes=dequantizers)
        changed = bool(counts["quantizers_converted"] or counts["weights_requantized"])
        if fp16_float_parts and "float16" not in graph_float_types(converted):
            converted, record["fp16_float_parts"] = qdq_float_parts_to_fp16(converted)
            changed = True
        if changed:
            if dst is None:
                raise ValueError(f"{src} needs its graph rewritten for TensorRT; give a destination path")
            onnx.save_model(converted, dst)
            record["path"] = dst
            model = converted
    record["float_types"] = graph_float_types(model)
    return record
