"""ONNX-side preparation of our graphs for TensorRT. Needs onnx (and numpy), not TensorRT.

What TensorRT needs that ONNX Runtime does not, each in its own module:

    tensorrt_graph_checks  standard ops only, and no graph input whose value decides a shape
    tensorrt_qdq           quantizers in symmetric int8, as explicit quantization requires
    tensorrt_fp16          fp32 islands, and fp16 float parts for a strongly typed int8 engine

`prepare_for_tensorrt` applies them to one graph; `check_profile_with_onnxruntime`
runs a graph at a profile's shapes, so that a profile it cannot take is caught
before a TensorRT build.
"""

from typing import Dict, List, Optional, Tuple

import numpy as np

from .tensorrt_fp16 import graph_float_types, qdq_float_parts_to_fp16
from .tensorrt_graph_checks import InputSpec, check_onnx_domain, check_static_shape_graph, input_specs, load_graph
from .tensorrt_qdq import qdq_node_counts, to_symmetric_int8_qdq


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
