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
graph output and keep them for all images (for ViT-B, gigabytes per image).
Here the augmented graph outputs only the activations that get a
QuantizeLinear (the inputs of the chosen nodes), one image is run at a time,
and only a running min / max per tensor is kept; each run returns at most
TENSORS_PER_RUN of them. Memory is bounded by that many activations whatever
the depth and the number of images (the graph is run once per chunk). Percentile
clipping is then a second pass with fixed-range histograms (2048 bins per
tensor). Ranges go straight to ONNX Runtime's QDQ quantizer.

Weights are int8 symmetric per output channel; activations uint8 (the fast
u8 x s8 path of ONNX Runtime on x86).

FP16: every node in fp16 except fp32 islands for LayerNorm statistics,
softmax and the rel-pos bias chain; the graph's inputs and outputs stay
float32.
"""

import os
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

#: Images used to calibrate when no directory is given: the photos shipped
#: with scikit-image (no download), covering people, objects, an animal, outdoors.
DEFAULT_CALIBRATION_IMAGES = ("astronaut", "coffee", "chelsea", "rocket")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
#: Percentile of |activation| kept by percentile calibration (the rest is clipped).
DEFAULT_PERCENTILE = 99.999
HISTOGRAM_BINS = 2048
#: Calibration tensors returned per session run: bounds memory to about this many
#: activations (ViT-H at 1024 px: ~16 x 84 MB at most) for any depth.
TENSORS_PER_RUN = 16


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
    from ..runtime.onnxruntime_backend import PIXEL_MEAN, PIXEL_STD
    from ..runtime.transforms import ResizeLongestSide

    resized = ResizeLongestSide(image_size).apply_image(np.ascontiguousarray(image)).astype(np.float32)
    out = np.zeros((1, 3, image_size, image_size), np.float32)
    h, w = resized.shape[:2]
    out[0, :, :h, :w] = ((resized - PIXEL_MEAN) / PIXEL_STD).transpose(2, 0, 1)
    return out


def quantizable_nodes(model) -> List:
    """The encoder nodes we quantize: MatMuls against a weight, and the patch-embedding Conv."""
    weights = {t.name for t in model.graph.initializer}
    chosen = []
    for node in model.graph.node:
        if node.op_type == "MatMul" and node.input[1] in weights:
            chosen.append(node)
        elif node.op_type == "Conv" and "patch_embed" in node.name:
            chosen.append(node)
    return chosen


def _augmented_session(model, tensors: Sequence[str], scratch: str):
    """A session over `model` whose outputs are just `tensors`. Saved under `scratch`
    with its weights in a side file, so ViT-H (> 2 GiB) works too."""
    import onnx
    import onnxruntime as ort

    augmented = onnx.ModelProto()
    augmented.CopyFrom(model)
    del augmented.graph.output[:]
    for name in tensors:
        augmented.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    path = os.path.join(scratch, "augmented.onnx")
    onnx.save_model(augmented, path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location="augmented.onnx.data", size_threshold=1024)
    del augmented
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"])


def collect_ranges(
    model,
    tensors: Sequence[str],
    inputs: Union[Sequence[np.ndarray], Callable[[], Iterable[np.ndarray]]],
    method: str = "minmax",
    percentile: float = DEFAULT_PERCENTILE,
    progress: bool = True,
    tensors_per_run: int = TENSORS_PER_RUN,
) -> Dict[str, Tuple[float, float]]:
    """{tensor: (low, high)} over the calibration inputs, one image at a time.

    method "minmax": running min / max. "percentile": a first pass for the
    max |x|, a second with fixed-range histograms of |x|; the range is
    symmetric at the `percentile` of |x| (clipped to the observed min / max).
    Each run returns at most `tensors_per_run` tensors (more runs, less memory).
    `inputs` are encoder inputs (1, 3, S, S), or a function returning a fresh
    iterator of them (so only one is prepared at a time, per pass).
    """
    import tempfile

    if method not in ("minmax", "percentile"):
        raise ValueError(f"calibration method must be 'minmax' or 'percentile'; got {method!r}")
    if not callable(inputs):
        inputs = list(inputs)
    with tempfile.TemporaryDirectory(prefix="sam-edge-calibration-") as scratch:
        session = _augmented_session(model, tensors, scratch)
        return _collect(session, tensors, inputs, method, percentile, progress, tensors_per_run)


def _collect(session, tensors, inputs, method, percentile, progress, tensors_per_run):
    from tqdm import tqdm

    input_name = session.get_inputs()[0].name
    low = {t: np.inf for t in tensors}
    high = {t: -np.inf for t in tensors}
    chunks = [list(tensors[i : i + tensors_per_run]) for i in range(0, len(tensors), tensors_per_run)]

    def activations(x):
        for chunk in chunks:
            yield from zip(chunk, session.run(chunk, {input_name: x}))

    fresh = inputs if callable(inputs) else (lambda: iter(inputs))
    for x in tqdm(fresh(), desc="calibrate (min/max)", unit="image", disable=not progress):
        for name, value in activations(x):
            low[name] = min(low[name], float(value.min()))
            high[name] = max(high[name], float(value.max()))
    if method == "minmax":
        return {t: (low[t], high[t]) for t in tensors}
    edges = {t: np.linspace(0.0, max(abs(low[t]), abs(high[t]), 1e-12), HISTOGRAM_BINS + 1) for t in tensors}
    counts = {t: np.zeros(HISTOGRAM_BINS, np.int64) for t in tensors}
    for x in tqdm(fresh(), desc="calibrate (histogram)", unit="image", disable=not progress):
        for name, value in activations(x):
            counts[name] += np.histogram(np.abs(value), bins=edges[name])[0]
    ranges = {}
    for t in tensors:
        cumulative = np.cumsum(counts[t]) / max(counts[t].sum(), 1)
        bound = float(edges[t][min(np.searchsorted(cumulative, percentile / 100.0) + 1, HISTOGRAM_BINS)])
        ranges[t] = (max(low[t], -bound), min(high[t], bound))
    return ranges


def quantize_static_int8(
    src: str,
    dst: str,
    images: Sequence[np.ndarray],
    image_size: int,
    method: str = "percentile",
    quiet: bool = False,
    tensors_per_run: Optional[int] = None,
) -> dict:
    """Static QDQ int8 of the encoder at `src` into `dst`, calibrated on `images`; returns
    a record for the manifest (what was quantized, calibration method and images)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantType
    from onnxruntime.quantization.calibrate import TensorData, TensorsData
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer

    model = onnx.load(src)
    nodes = quantizable_nodes(model)
    tensors = sorted({node.input[0] for node in nodes})
    ranges = collect_ranges(
        model, tensors, lambda: (encoder_input(image, image_size) for image in images), method=method,
        progress=not quiet,
        tensors_per_run=tensors_per_run or TENSORS_PER_RUN,
    )
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
        [node.name for node in nodes],
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
    onnx.save_model(quantizer.model.model, dst)
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


def fp32_island_nodes(model) -> List[str]:
    """Names of the nodes kept in fp32 by convert_fp16: LayerNorm (fused, and the neck's
    decomposed LayerNorm2d), and the rel-pos chain from each Einsum through the Softmax."""
    consumers: Dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    keep = set()
    for node in model.graph.node:
        in_neck_norm = "/neck/neck.1/" in node.name or "/neck/neck.3/" in node.name
        if node.op_type in ("LayerNormalization", "Softmax") or in_neck_norm:
            keep.add(node.name)
    frontier = [n for n in model.graph.node if n.op_type == "Einsum"]
    while frontier:  # Einsum -> ... -> Add(scores, bias) -> Softmax
        node = frontier.pop()
        if node.name in keep and node.op_type == "Softmax":
            continue
        keep.add(node.name)
        if node.op_type != "Softmax":
            for out in node.output:
                frontier.extend(consumers.get(out, []))
    return sorted(keep)


def convert_fp16(src: str, dst: str) -> dict:
    """FP16 weights and compute, fp32 islands (see module docstring), float32 inputs/outputs."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(src)
    islands = fp32_island_nodes(model)
    converted = convert_float_to_float16(model, keep_io_types=True, node_block_list=islands)
    onnx.save_model(converted, dst)
    return {"method": "fp16 with fp32 islands", "fp32_nodes": len(islands)}
