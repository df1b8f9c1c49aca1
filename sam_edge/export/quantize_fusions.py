"""Rewrites of a static-int8 encoder ops graph that end a float elementwise op in
the QuantizeLinear after it, as one sam_edge_ops node that writes the uint8
tensor the next int8 Linear reads (csrc/ort/sam_edge_ops.h has the contracts):

    gelu_quantize:        the exported erf GELU, x / sqrt(2) -> Erf -> + 1 -> * x -> * 0.5,
                          then QuantizeLinear          -> GeluQuantizeLinear
    layer_norm_quantize:  LayerNormalization then QuantizeLinear -> LayerNormQuantizeLinear;
                          with the residual Add before it whose sum the graph also
                          reads                        -> SkipLayerNormQuantizeLinear,
                          which also writes the sum

Each float tensor between the op and the quantize (the MLP's widest) then never
reaches memory. Only per-tensor quantization with initializer scale and
zero point (uint8) is matched; anything else is left as it is. fuse_quantize
applies a chosen set of them to a node list, as cut_encoder holds it.
"""

from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np

from ..runtime.ort_ops import DOMAIN

#: The rewrites, by name (encoder_ops.DEFAULT_FUSIONS says which bundles get).
FUSIONS = ("gelu_quantize", "layer_norm_quantize")

_FLOAT, _UINT8 = 1, 2  # ONNX TensorProto element types


class _Graph:
    """Lookups over a node list: producers, readers, constant values, shapes."""

    def __init__(self, nodes, inits, graph_outputs, value_info):
        from onnx import numpy_helper

        self.nodes, self.inits, self.graph_outputs, self.value_info = nodes, inits, set(graph_outputs), value_info
        self.producer = {o: n for n in nodes for o in n.output}
        self.readers: Dict[str, list] = {}
        for n in nodes:
            for i in n.input:
                self.readers.setdefault(i, []).append(n)
        self._to_array = numpy_helper.to_array

    def constant(self, name) -> Optional[np.ndarray]:
        """The value of an initializer or a Constant node's output with a `value` tensor, else None."""
        if name in self.inits:
            return self._to_array(self.inits[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            value = next((a for a in node.attribute if a.name == "value"), None)
            if value is not None:
                return self._to_array(value.t)
        return None

    def is_constant(self, name) -> bool:
        node = self.producer.get(name)
        return name in self.inits or (node is not None and node.op_type == "Constant")

    def dims(self, name):
        """A constant's dims, read without its data (which may be in an external file), else None."""
        if name in self.inits:
            return list(self.inits[name].dims)
        value = self.constant(name) if self.is_constant(name) else None
        return None if value is None else list(value.shape)

    def scalar_is(self, name, want: float) -> bool:
        value = self.constant(name)
        return value is not None and value.size == 1 and bool(np.isclose(float(value.reshape(())), want, rtol=1e-6))

    def only_reader(self, name):
        """The one node reading `name`, when exactly one does and it is not a graph output."""
        readers = self.readers.get(name, [])
        return readers[0] if len(readers) == 1 and name not in self.graph_outputs else None

    def per_tensor_quantize(self, node) -> bool:
        """A QuantizeLinear to uint8 with an initializer scale (float32) and zero point, one value each."""
        if node is None or node.op_type != "QuantizeLinear" or len(node.input) != 3:
            return False
        scale, zero = (self.inits.get(i) for i in node.input[1:])
        return (scale is not None and zero is not None and scale.data_type == _FLOAT and zero.data_type == _UINT8
                and list(scale.dims) in ([], [1]) and list(zero.dims) in ([], [1]))

    def shape(self, name):
        """name's dims (ints, dim_param strings, None where unknown), or None without a shape."""
        info = self.value_info.get(name)
        if info is None or not info.type.tensor_type.HasField("shape"):
            return None
        return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                for d in info.type.tensor_type.shape.dim]


def _other(node, name):
    """node's input that is not `name` (a binary op's other operand)."""
    others = [i for i in node.input if i != name]
    return others[0] if len(others) == 1 else None


def _fuse_gelu(g: _Graph) -> Dict[int, object]:
    """{id of a node to replace: its replacement, or None to remove it} for each GELU then QuantizeLinear."""
    from onnx import helper

    changes: Dict[int, object] = {}
    for div in g.nodes:
        if div.op_type != "Div" or len(div.input) != 2 or not g.scalar_is(div.input[1], np.sqrt(2.0)):
            continue
        x = div.input[0]
        erf = g.only_reader(div.output[0])
        one = g.only_reader(erf.output[0]) if erf is not None and erf.op_type == "Erf" else None
        if one is None or one.op_type != "Add" or not g.scalar_is(_other(one, erf.output[0]), 1.0):
            continue
        times_x = g.only_reader(one.output[0])
        if times_x is None or times_x.op_type != "Mul" or _other(times_x, one.output[0]) != x:
            continue
        half = g.only_reader(times_x.output[0])
        if half is None or half.op_type != "Mul" or not g.scalar_is(_other(half, times_x.output[0]), 0.5):
            continue
        quantize = g.only_reader(half.output[0])
        if not g.per_tensor_quantize(quantize):
            continue
        for node in (div, erf, one, times_x, half):
            changes[id(node)] = None
        changes[id(quantize)] = helper.make_node(
            "GeluQuantizeLinear", [x, *quantize.input[1:]], [quantize.output[0]],
            name=quantize.name + "/GeluQuantizeLinear", domain=DOMAIN)
    return changes


def _residual_add(g: _Graph, name):
    """The Add producing `name` from two computed tensors of one shape (the residual
    stream and a block's output), else None. Shapes inference left partly symbolic
    are accepted unless a known 1 faces another size (a broadcast, which the op
    does not do; it refuses unequal shapes at run time)."""
    add = g.producer.get(name)
    if add is None or add.op_type != "Add" or len(add.input) != 2:
        return None
    if any(g.is_constant(i) for i in add.input):
        return None
    shapes = [g.shape(i) for i in add.input]
    if any(s is None for s in shapes) or len(shapes[0]) != len(shapes[1]) or not shapes[0]:
        return None
    for a, b in zip(*shapes):
        if (a == 1) != (b == 1) and (a == 1 or b == 1):
            return None
    last = {shapes[0][-1], shapes[1][-1]}
    return add if len(last) == 1 and isinstance(shapes[0][-1], int) else None


def _fuse_layer_norm(g: _Graph) -> Dict[int, object]:
    """{id of a node to replace: its replacement, or None to remove it} for each
    LayerNormalization over the last axis then QuantizeLinear, with the residual
    Add before it when there is one."""
    from onnx import helper

    changes: Dict[int, object] = {}
    taken = set()  # an Add feeds one fused norm at most
    for norm in g.nodes:
        if norm.op_type != "LayerNormalization" or len(norm.input) != 3:
            continue
        if any(o for o in norm.output[1:]):
            continue  # its mean or inverse deviation is read
        attributes = {a.name: a for a in norm.attribute}
        x, weight, bias = norm.input
        rank = len(g.shape(x) or [])
        axis = attributes["axis"].i if "axis" in attributes else -1
        if axis != -1 and not (rank and axis == rank - 1):
            continue
        if any(len(g.dims(i) or []) != 1 for i in (weight, bias)):
            continue
        quantize = g.only_reader(norm.output[0])
        if not g.per_tensor_quantize(quantize):
            continue
        epsilon = attributes["epsilon"].f if "epsilon" in attributes else 1e-5
        add = _residual_add(g, x)
        if add is not None and id(add) not in taken:
            taken.add(id(add))
            changes[id(add)] = None
            changes[id(norm)] = None
            changes[id(quantize)] = helper.make_node(
                "SkipLayerNormQuantizeLinear", [*add.input, weight, bias, *quantize.input[1:]],
                [quantize.output[0], add.output[0]], name=norm.name + "/SkipLayerNormQuantizeLinear",
                domain=DOMAIN, epsilon=epsilon)
        else:
            changes[id(norm)] = None
            changes[id(quantize)] = helper.make_node(
                "LayerNormQuantizeLinear", [x, weight, bias, *quantize.input[1:]], [quantize.output[0]],
                name=norm.name + "/LayerNormQuantizeLinear", domain=DOMAIN, epsilon=epsilon)
    return changes


def fuse_quantize(nodes: Sequence, inits: Dict[str, object], graph_outputs: Iterable[str],
                  value_info: Dict[str, object], fusions: Iterable[str] = FUSIONS) -> List:
    """nodes with the rewrites named in `fusions` (a subset of FUSIONS) applied, in
    order; nodes left dead (Constant operands) are the caller's to sweep.

    inits: {name: TensorProto} of the graph's initializers; value_info: {name:
    ValueInfoProto} of its tensors, for the residual Add's shapes."""
    fusions = list(fusions)
    unknown = sorted(set(fusions) - set(FUSIONS))
    if unknown:
        raise ValueError(f"unknown fusions {unknown}; expected some of {list(FUSIONS)}")
    rewrites = {"gelu_quantize": _fuse_gelu, "layer_norm_quantize": _fuse_layer_norm}
    nodes = list(nodes)
    for name in FUSIONS:
        if name not in fusions or name not in rewrites:
            continue
        changes = rewrites[name](_Graph(nodes, inits, graph_outputs, value_info))
        nodes = [changes.get(id(n), n) for n in nodes if changes.get(id(n), n) is not None]
    return nodes
