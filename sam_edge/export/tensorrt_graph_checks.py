"""What TensorRT's ONNX parser cannot take, found before a build. Needs onnx (and
numpy), not TensorRT.

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

The graph readers the checks share (`load_graph`, `input_specs`, `node_attribute`)
live here too, for the other preparation steps to use.
"""

from dataclasses import dataclass
from typing import Dict, List, Tuple, Union

import numpy as np

from .graph_patterns import SHAPE_ONLY_OPS

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


def node_attribute(node, name: str, default):
    """The value of attribute `name` of an ONNX node, or `default` when the node has none."""
    from onnx import helper

    for attr in node.attribute:
        if attr.name == name:
            return helper.get_attribute_value(attr)
    return default
