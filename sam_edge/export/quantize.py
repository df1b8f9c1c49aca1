"""FP16 and INT8 versions of an exported fp32 encoder graph.

What is quantized, and why
--------------------------
The encoder's time is in its linear layers (qkv, proj, mlp.lin1, mlp.lin2:
~95% of the FLOPs at 1024 px) and in the two attention matmuls. We quantize
exactly the MatMuls whose second input is a weight, and the patch-embedding
Conv. We keep in float:

* the attention matmuls (q k^T, attn v) and the Softmax: their activations are
  the 4096 x 4096 score maps of the global blocks, which are both expensive to
  calibrate and the least tolerant of 8 bits (softmax inputs span a wide range);
* the decomposed rel-pos bias (Einsum -> Add -> Softmax): small, and an error
  there shifts every score of a row;
* LayerNorm (both the fused LayerNormalization and the neck's LayerNorm2d),
  GELU, residual adds, and the neck convs (0.3% of FLOPs, right before the
  embedding the decoder reads).

Calibration with bounded memory
-------------------------------
ONNX Runtime's stock calibrators add every tensor of every quantized node as a
graph output and keep them for all images: for ViT-B that is gigabytes per
image, and it was killed at 24 GB. Here the statistics are computed *inside*
the graph: for every activation that gets a QuantizeLinear, the augmented graph
adds ReduceMin, ReduceMax and (for percentile calibration) a TopK of |x| with
just enough values to find the percentile over all images. One run per image
returns a few scalars and short vectors per tensor, so calibration needs no
more memory than inference, whatever the depth, and each image is run once.
The augmented graph shares the fp32 graph's weight file (ViT-H) instead of
copying it, and the weights are loaded into Python only after the
calibration session is gone. Ranges go straight to ONNX Runtime's QDQ
quantizer.

Weights are int8 symmetric per output channel; activations uint8 (the fast
u8 x s8 path of ONNX Runtime on x86).

FP16: every node in fp16 except fp32 islands for LayerNorm statistics,
softmax and the rel-pos bias chain; the graph's inputs and outputs stay
float32.
"""

import os
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from .graph_patterns import fp32_island_nodes, rel_pos_nodes  # noqa: F401  (rel_pos_nodes: this module's API too)

#: Images used to calibrate when no directory is given: the photos shipped
#: with scikit-image (no download), covering people, objects, an animal, outdoors.
DEFAULT_CALIBRATION_IMAGES = ("astronaut", "coffee", "chelsea", "rocket")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
#: Percentile of |activation| kept by percentile calibration (the rest is clipped).
DEFAULT_PERCENTILE = 99.999



def calibration_images(directory: Optional[str] = None, limit: Optional[int] = None) -> Tuple[List[np.ndarray], str]:
    """(list of (H, W, 3) uint8 RGB images, description of where they came from)."""
    if directory is None:
        from skimage import data

        images = [getattr(data, name)() for name in DEFAULT_CALIBRATION_IMAGES]
        source = "scikit-image's bundled photos (" + ", ".join(DEFAULT_CALIBRATION_IMAGES) + ")"
    else:
        from PIL import Image

        if not os.path.isdir(directory):
            raise FileNotFoundError(f"--calib-images: {directory} is not a directory")
        names = sorted(n for n in os.listdir(directory) if n.lower().endswith(IMAGE_EXTENSIONS))
        if not names:
            raise ValueError(f"--calib-images: no images ({', '.join(IMAGE_EXTENSIONS)}) in {directory}")
        images = [np.asarray(Image.open(os.path.join(directory, n)).convert("RGB")) for n in names]
        source = directory
    if limit is not None:
        images = images[:limit]
    return images, source


def encoder_input(image: np.ndarray, image_size: int) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (1, 3, S, S) float32: resized, normalised, padded, as the runtime does."""
    from ..config import PIXEL_MEAN, PIXEL_STD
    from ..runtime.transforms import ResizeLongestSide

    resized = ResizeLongestSide(image_size).apply_image(np.ascontiguousarray(image)).astype(np.float32)
    out = np.zeros((1, 3, image_size, image_size), np.float32)
    h, w = resized.shape[:2]
    out[0, :, :h, :w] = ((resized - PIXEL_MEAN) / PIXEL_STD).transpose(2, 0, 1)
    return out


def quantizable_nodes(model) -> List:
    """The encoder nodes we quantize: MatMuls against a weight (the linear
    layers), and the patch-embedding Conv."""
    weights = {t.name for t in model.graph.initializer}
    chosen = []
    for node in model.graph.node:
        if node.op_type == "MatMul" and node.input[1] in weights:
            chosen.append(node)
        elif node.op_type == "Conv" and "patch_embed" in node.name:
            chosen.append(node)
    return chosen


def _statistics_graph(model, tensors: Sequence[str], keep_fraction: Optional[float]):
    """`model` with its outputs replaced by per-tensor statistics computed in the graph.

    For each tensor t: `t/min`, `t/max` (scalars), `t/size` (int64 scalar) and,
    when keep_fraction is given, `t/top` = the ceil(keep_fraction * size) + 1
    largest |t| (capped at size). Nothing of the size of an activation leaves
    the graph, so ONNX Runtime frees every activation as it would in inference.
    """
    import onnx
    from onnx import TensorProto, helper

    graph = model.graph
    del graph.output[:]
    flat_shape = "calibration/flat_shape"
    graph.initializer.append(onnx.numpy_helper.from_array(np.array([-1], np.int64), flat_shape))
    if keep_fraction is not None:
        graph.initializer.append(onnx.numpy_helper.from_array(np.array(keep_fraction, np.float64), "calibration/keep"))
        graph.initializer.append(onnx.numpy_helper.from_array(np.array(1.0, np.float64), "calibration/one"))
    graph_inputs = {i.name for i in graph.input}
    statistics: Dict[str, list] = {}
    for i, name in enumerate(tensors):
        p = f"calibration/{i}/"
        nodes = [
            helper.make_node("Reshape", [name, flat_shape], [p + "flat"]),
            helper.make_node("ReduceMin", [p + "flat"], [name + "/min"], keepdims=0),
            helper.make_node("ReduceMax", [p + "flat"], [name + "/max"], keepdims=0),
            helper.make_node("Size", [p + "flat"], [name + "/size"]),
        ]
        outputs = [
            helper.make_tensor_value_info(name + "/min", TensorProto.FLOAT, []),
            helper.make_tensor_value_info(name + "/max", TensorProto.FLOAT, []),
            helper.make_tensor_value_info(name + "/size", TensorProto.INT64, []),
        ]
        if keep_fraction is not None:
            nodes += [
                helper.make_node("Abs", [p + "flat"], [p + "abs"]),
                helper.make_node("Cast", [name + "/size"], [p + "n"], to=TensorProto.DOUBLE),
                helper.make_node("Mul", [p + "n", "calibration/keep"], [p + "kept"]),
                helper.make_node("Ceil", [p + "kept"], [p + "ceil"]),
                helper.make_node("Add", [p + "ceil", "calibration/one"], [p + "k_float"]),
                helper.make_node("Min", [p + "k_float", p + "n"], [p + "k_capped"]),
                helper.make_node("Cast", [p + "k_capped"], [p + "k_scalar"], to=TensorProto.INT64),
                helper.make_node("Reshape", [p + "k_scalar", flat_shape], [p + "k"]),
                helper.make_node("TopK", [p + "abs", p + "k"], [name + "/top", p + "top_index"], largest=1, sorted=0),
            ]
            outputs.append(helper.make_tensor_value_info(name + "/top", TensorProto.FLOAT, [None]))
        statistics[name] = nodes
        graph.output.extend(outputs)
    # Each tensor's statistics go right after its producer: ONNX Runtime runs nodes
    # in this order, so the activation dies as early as in inference. Appended at
    # the end they would keep every calibrated activation alive to the last node.
    ordered = [node for name in tensors if name in graph_inputs for node in statistics[name]]
    for node in graph.node:
        ordered.append(node)
        for out in node.output:
            ordered.extend(statistics.get(out, []))
    del graph.node[:]
    graph.node.extend(ordered)
    return model


def _release_freed_memory() -> None:
    """Make glibc hand large freed blocks back to the OS (when the C library is glibc).

    glibc raises its mmap threshold each time a large block is freed, so later
    blocks of up to 32 MB come from the heap and stay in RSS once freed: running
    the encoder without ONNX Runtime's arena then grows RSS by gigabytes of freed
    activations (ViT-B calibration: 4.3 GB peak with the default, 3.2 GB with a
    fixed 128 KiB threshold). Fixing the threshold affects this process only.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = libc.mallopt if libc is not None else None
    except (OSError, AttributeError):
        return  # not glibc (musl, macOS): nothing to tune
    M_MMAP_THRESHOLD = -3
    mallopt(M_MMAP_THRESHOLD, 128 * 1024)


def _calibration_session(src: str, tensors: Sequence[str], keep_fraction: Optional[float], scratch: str):
    """A session over the statistics graph of the ONNX file `src` (see _statistics_graph).

    The graph is read without its external weights and written next to `src`,
    so it points at the same weight file (ViT-H's 2.5 GB are neither copied
    nor held in Python); weights stored inside `src` are small enough to copy.
    """
    import onnx
    import onnxruntime as ort

    model = onnx.load(src, load_external_data=False)
    external = any(
        t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer
    )
    _statistics_graph(model, tensors, keep_fraction)
    directory = os.path.dirname(os.path.abspath(src)) if external else scratch
    path = os.path.join(directory, f".calibration-{os.getpid()}-{os.path.basename(scratch)}.onnx")
    onnx.save_model(model, path)
    del model
    _release_freed_memory()
    options = ort.SessionOptions()
    # Memory over speed for a graph run once per image: no packed copies of the
    # weights, and activations freed when they die rather than kept in an arena
    # sized for the largest moment of any run.
    options.add_session_config_entry("session.disable_prepacking", "1")
    options.enable_cpu_mem_arena = False
    options.enable_mem_pattern = False
    options.execution_order = ort.ExecutionOrder.PRIORITY_BASED  # run the nodes in our order
    try:
        return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    finally:
        os.remove(path)  # the session has read it


def collect_ranges(
    src: str,
    tensors: Sequence[str],
    inputs: Union[Sequence[np.ndarray], Callable[[], Iterable[np.ndarray]]],
    method: str = "minmax",
    percentile: float = DEFAULT_PERCENTILE,
    progress: bool = True,
    num_inputs: Optional[int] = None,
) -> Dict[str, Tuple[float, float]]:
    """{tensor: (low, high)} of the float tensors `tensors` of the ONNX file `src`
    over the calibration inputs, one image and one run at a time.

    method "minmax": the min and max over all inputs. "percentile": symmetric
    at the `percentile` of |x| over all inputs (exact: the in-graph TopK keeps
    enough of each image's largest values), clipped to the observed min / max.
    `inputs` are encoder inputs (1, 3, S, S), or a function returning an
    iterator of them (so only one is prepared at a time); pass `num_inputs`
    with a function when percentile calibration needs the count up front.
    """
    import tempfile

    from tqdm import tqdm

    if method not in ("minmax", "percentile"):
        raise ValueError(f"calibration method must be 'minmax' or 'percentile'; got {method!r}")
    if not 0.0 < percentile <= 100.0:
        raise ValueError(f"percentile must be in (0, 100]; got {percentile}")
    if callable(inputs):
        count = num_inputs
        fresh = inputs
    else:
        inputs = list(inputs)
        count, fresh = len(inputs), (lambda: iter(inputs))
    if method == "percentile" and not count:
        raise ValueError("percentile calibration needs the number of inputs (num_inputs) and at least one")
    # Over `count` same-size images, the percentile of |x| is the j-th largest value,
    # j = floor(f * total) with f = 1 - percentile / 100; each image's ceil(f * count * size) + 1
    # largest values contain every value above it.
    fraction = 1.0 - percentile / 100.0
    keep = fraction * count if method == "percentile" else None
    low = {t: np.inf for t in tensors}
    high = {t: -np.inf for t in tensors}
    total = {t: 0 for t in tensors}
    tops: Dict[str, List[np.ndarray]] = {t: [] for t in tensors}
    with tempfile.TemporaryDirectory(prefix="sam-edge-calibration-") as scratch:
        session = _calibration_session(src, tensors, keep, scratch)
        input_name = session.get_inputs()[0].name
        names = [o.name for o in session.get_outputs()]
        for x in tqdm(fresh(), desc=f"calibrate ({method})", unit="image", total=count, disable=not progress):
            stats = dict(zip(names, session.run(names, {input_name: x})))
            for t in tensors:
                low[t] = min(low[t], float(stats[t + "/min"]))
                high[t] = max(high[t], float(stats[t + "/max"]))
                total[t] += int(stats[t + "/size"])
                if keep is not None:
                    tops[t].append(stats[t + "/top"])
        del session
    if method == "minmax":
        return {t: (low[t], high[t]) for t in tensors}
    ranges = {}
    for t in tensors:
        largest = np.sort(np.concatenate(tops[t]))[::-1]
        bound = float(largest[min(int(np.floor(fraction * total[t])), len(largest) - 1)])
        ranges[t] = (max(low[t], -bound), min(high[t], bound))
    return ranges


def save_graph(model, path: str) -> None:
    """Save an ONNX model, its weights in `path + ".data"` when they would not fit a
    2 GiB protobuf (ViT-H)."""
    import onnx

    from .onnx_export import EXTERNAL_DATA_THRESHOLD

    if sum(t.ByteSize() for t in model.graph.initializer) > EXTERNAL_DATA_THRESHOLD:
        onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                        location=os.path.basename(path) + ".data", size_threshold=1024)
    else:
        onnx.save_model(model, path)


def quantize_static_int8(
    src: str,
    dst: str,
    images: Sequence[np.ndarray],
    image_size: int,
    method: str = "percentile",
    quiet: bool = False,
) -> dict:
    """Static QDQ int8 of the encoder at `src` into `dst`, calibrated on `images`; returns
    a record for the manifest (what was quantized, calibration method and images)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantType
    from onnxruntime.quantization.calibrate import TensorData, TensorsData
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer

    # The graph alone picks the tensors; the weights are loaded only once the
    # calibration session has been freed (two copies of ViT-H's would not fit small hosts).
    nodes = quantizable_nodes(onnx.load(src, load_external_data=False))
    node_names = [node.name for node in nodes]
    tensors = sorted({node.input[0] for node in nodes})
    ranges = collect_ranges(
        src, tensors, lambda: (encoder_input(image, image_size) for image in images), method=method,
        progress=not quiet, num_inputs=len(images),
    )
    model = onnx.load(src)
    tensors_range = TensorsData(
        CalibrationMethod.MinMax,
        {t: TensorData(lowest=np.float32(lo), highest=np.float32(hi)) for t, (lo, hi) in ranges.items()},
    )
    quantizer = QDQQuantizer(
        model,
        True,  # per_channel
        False,  # reduce_range: not needed with VNNI / on GPUs
        QuantType.QInt8,
        QuantType.QUInt8,
        tensors_range,
        node_names,
        [],
        ["MatMul", "Conv"],
        # Only the inputs get a QuantizeLinear; outputs stay float for the bias add.
        {
            "ActivationSymmetric": False,
            "WeightSymmetric": True,
            "OpTypesToExcludeOutputQuantization": ["MatMul", "Conv"],
        },
    )
    quantizer.quantize_model()
    quantized = quantizer.model.model
    del quantizer, model
    save_graph(quantized, dst)
    return {
        "method": f"static QDQ int8 ({method} calibration)",
        "quantized_nodes": len(nodes),
        "calibration_images": len(images),
        "weights": "int8 symmetric per channel",
        "activations": "uint8 asymmetric per tensor",
        "kept_float": "attention matmuls, softmax, rel-pos bias, LayerNorm, GELU, neck",
    }


def quantize_dynamic_int8(src: str, dst: str) -> dict:
    """Int8 weights, activations quantized on the fly per call (no calibration)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    nodes = [n.name for n in quantizable_nodes(onnx.load(src, load_external_data=False)) if n.op_type == "MatMul"]
    quantize_dynamic(src, dst, weight_type=QuantType.QInt8, nodes_to_quantize=nodes, op_types_to_quantize=["MatMul"])
    return {"method": "dynamic int8 (int8 weights, per-call activation quantization)", "quantized_nodes": len(nodes)}


def convert_fp16(src: str, dst: str) -> dict:
    """FP16 weights and compute, fp32 islands (see module docstring), float32 inputs/outputs."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(src)
    islands = fp32_island_nodes(model)
    converted = convert_float_to_float16(model, keep_io_types=True, node_block_list=islands)
    onnx.save_model(converted, dst)
    return {"method": "fp16 with fp32 islands", "fp32_nodes": len(islands)}
