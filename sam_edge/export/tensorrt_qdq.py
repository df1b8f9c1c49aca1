"""QDQ graphs made TensorRT's. Needs onnx (and numpy), not TensorRT.

Explicit int8 quantization is symmetric signed int8 with zero points of 0.
ONNX Runtime's static QDQ graphs quantize activations to uint8 with a zero
point; `to_symmetric_int8_qdq` rewrites each such quantizer to int8 with the
same clipping range: scale = max(|lo|, |hi|) / 127.
"""

from typing import Dict, Tuple

import numpy as np

from .tensorrt_graph_checks import load_graph, node_attribute


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
            shape[node_attribute(node, "axis", 1)] = -1
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
        axis = node_attribute(node, "axis", 1)
        shape = [1] * weight.ndim
        if np.ndim(old_scale) == 1 and weight.ndim > 0:
            shape[axis] = -1
        values = (weight.astype(np.float64) - np.reshape(old_zp, shape)) * np.reshape(old_scale, shape)
        new_scale = numpy_helper.to_array(inits[node.input[1]]).astype(np.float64)
        requantized = np.clip(np.rint(values / np.reshape(new_scale, shape)), -127, 127).astype(np.int8)
        put(node.input[0], requantized)
        counts["weights_requantized"] += 1
    return out, counts
