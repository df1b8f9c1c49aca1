"""TensorRT engines from the ONNX graphs of a bundle: a thin layer over the
builder, with the shapes, precisions and checks as data and pure functions.

    encoder.plan   from encoder.onnx: image (B, 3, S, S) -> image_embeddings (B, 256, g, g)
    decoder.plan   from decoder.onnx (the "fast" decoder, no orig_im_size):
                   image_embeddings (1, 256, g, g), point_coords (B, N, 2),
                   point_labels (B, N), mask_input (B or 1, 1, m, m),
                   has_mask_input (B or 1,) -> iou_predictions (B, 4),
                   low_res_masks (B, 4, m, m)

Precisions (see `precision_plan`):
    fp16  a strongly typed network over the fp16 ONNX graph, whose fp32
          islands (LayerNorm, softmax, rel-pos) the ONNX conversion placed;
          from an fp32 graph, a weakly typed network with BuilderFlag.FP16 and
          those layers pinned to fp32 (OBEY_PRECISION_CONSTRAINTS). FP16
          LayerNorm overflow is the most reported SAM deployment failure
          (segment-anything #540, efficientvit #142).
    int8  explicit quantization from the QDQ ONNX graph, its quantizers made
          symmetric int8 (tensorrt_prepare.to_symmetric_int8_qdq) and its float
          parts fp16 outside the fp32 islands (tensorrt_prepare.qdq_float_parts_to_fp16),
          so that a strongly typed network runs them in fp16, not fp32. No
          implicit calibrators (deprecated in TensorRT 10).
    fp32  for the decoder by default: ~4 M parameters, a few ms, and its
          logits are what users threshold. TF32 (on by default in TensorRT) is
          cleared, so fp32 means fp32.

TensorRT is imported only inside the functions that build; everything else
here runs (and is tested) without it.
"""

import dataclasses
import datetime
import json
import os
import shutil
import sys
import threading
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ..precision import PRECISIONS, TENSORRT_BUNDLE_PRECISIONS, TENSORRT_ENGINE_PRECISIONS, get_precision
from ..runtime.bundle import file_record
from ..runtime.tensorrt_compat import import_tensorrt, tensorrt_runtime_info
from . import tensorrt_prepare as prep
from .bundle_writer import (BundleStaging, checked_output, move_bundle_into_place, sibling_directory,
                            write_file_atomically)

Shape = Tuple[int, ...]
#: input name -> (min, opt, max) shapes.
Profile = Dict[str, Tuple[Shape, Shape, Shape]]

TENSORRT_PRECISIONS = TENSORRT_BUNDLE_PRECISIONS
ENGINE_PRECISIONS = TENSORRT_ENGINE_PRECISIONS
#: Builder scratch memory; engines for ViT-H need more than edge boards should give by default.
DEFAULT_WORKSPACE_BYTES = 2 << 30
ENCODER_INPUT = "image"
DECODER_INPUTS = ("image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input")
#: Hardware-compatibility levels we record and check (TensorRT's HardwareCompatibilityLevel).
HARDWARE_COMPATIBILITY = {"none": "NONE", "ampere_plus": "AMPERE_PLUS"}


# ---------------------------------------------------------------- profiles


def encoder_profile(max_batch: int = 1, image_size: int = 1024, opt_batch: int = 1) -> Profile:
    """The encoder's profile: image (B, 3, S, S) with 1 <= B <= max_batch, tuned for opt_batch."""
    _check_counts(max_batch=max_batch, opt_batch=opt_batch, image_size=image_size)
    if opt_batch > max_batch:
        raise ValueError(f"opt_batch ({opt_batch}) must not exceed max_batch ({max_batch})")
    s = image_size
    return {ENCODER_INPUT: ((1, 3, s, s), (opt_batch, 3, s, s), (max_batch, 3, s, s))}


def decoder_profiles(
    max_points: int = 16,
    max_prompts: int = 64,
    opt_points: int = 2,
    opt_prompts: int = 64,
    embedding_size: int = 64,
    embed_dim: int = 256,
) -> List[Profile]:
    """Two profiles of the fast decoder, B prompts of N points each (N counts the
    padding point or the two box corners the runtime adds):

    0. interactive: one prompt, 1 <= N <= max_points, tuned for opt_points (a
       click plus its padding point is N = 2). The CUDA graph is captured here.
    1. batched: 1 <= B <= max_prompts, tuned for (opt_prompts, opt_points), as
       the automatic mask generator's point grid.

    mask_input / has_mask_input take 1 (shared, or no mask) up to max_prompts rows.
    """
    _check_counts(max_points=max_points, max_prompts=max_prompts, opt_points=opt_points, opt_prompts=opt_prompts)
    if opt_points > max_points or opt_prompts > max_prompts:
        raise ValueError(
            f"opt shapes must fit the max shapes: opt_points {opt_points} <= max_points {max_points}, "
            f"opt_prompts {opt_prompts} <= max_prompts {max_prompts}"
        )
    g, m = embedding_size, 4 * embedding_size

    def profile(opt_b: int, max_b: int) -> Profile:
        return {
            "image_embeddings": ((1, embed_dim, g, g),) * 3,
            "point_coords": ((1, 1, 2), (opt_b, opt_points, 2), (max_b, max_points, 2)),
            "point_labels": ((1, 1), (opt_b, opt_points), (max_b, max_points)),
            "mask_input": ((1, 1, m, m), (1, 1, m, m), (max_b, 1, m, m)),
            "has_mask_input": ((1,), (1,), (max_b,)),
        }

    return [profile(1, 1), profile(opt_prompts, max_prompts)]


def _check_counts(**values: int) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer; got {value!r}")


def validate_profile(profile: Mapping[str, Sequence[Sequence[int]]], specs: Mapping[str, prep.InputSpec], what: str) -> Profile:
    """Check a profile against the graph's inputs and return it as tuples.

    Every graph input needs a (min, opt, max) of its rank; static dims must be
    equal to the graph's in all three; min <= opt <= max per axis; sizes >= 1.
    """
    missing = [n for n in specs if n not in profile]
    unknown = [n for n in profile if n not in specs]
    if missing or unknown:
        raise ValueError(
            f"{what}: the profile does not match the graph's inputs {list(specs)}: "
            + ", ".join(filter(None, [missing and f"no shapes for {missing}", unknown and f"no such input {unknown}"]))
        )
    out: Profile = {}
    for name, spec in specs.items():
        ranges = profile[name]
        if len(ranges) != 3:
            raise ValueError(f"{what}: {name} needs (min, opt, max) shapes; got {ranges!r}")
        shapes = tuple(tuple(int(d) for d in shape) for shape in ranges)
        for label, shape in zip(("min", "opt", "max"), shapes):
            if len(shape) != spec.rank:
                raise ValueError(f"{what}: {name} has rank {spec.rank} {spec.dims}; the {label} shape is {shape}")
            if any(d < 1 for d in shape):
                raise ValueError(f"{what}: {name} {label} shape {shape} has a size below 1")
            for axis, (d, graph_d) in enumerate(zip(shape, spec.dims)):
                if isinstance(graph_d, int) and d != graph_d:
                    raise ValueError(
                        f"{what}: {name} axis {axis} is fixed at {graph_d} in the graph {spec.dims}; "
                        f"the {label} shape {shape} gives {d}"
                    )
        lo, opt, hi = shapes
        if not all(a <= b <= c for a, b, c in zip(lo, opt, hi)):
            raise ValueError(f"{what}: {name} needs min <= opt <= max on every axis; got {lo}, {opt}, {hi}")
        out[name] = shapes
    return out


def profile_to_json(profile: Profile) -> Dict[str, List[List[int]]]:
    return {name: [list(s) for s in ranges] for name, ranges in profile.items()}


# ---------------------------------------------------------------- precision


@dataclasses.dataclass(frozen=True)
class PrecisionPlan:
    """How one engine gets its precision: network typing, builder flags (names in
    trt.BuilderFlag), and whether the fp32 islands are pinned by layer constraints."""

    precision: str
    strongly_typed: bool
    flags: Tuple[str, ...] = ()
    pin_fp32_islands: bool = False
    note: str = ""
    #: Flags to clear (TensorRT sets some by default).
    cleared_flags: Tuple[str, ...] = ()


def precision_plan(
    precision: str,
    float_types: Sequence[str],
    has_qdq: bool,
    strongly_typed: Optional[bool] = None,
    tensorrt_major: int = 10,
) -> PrecisionPlan:
    """The PrecisionPlan for a graph (its float types, whether it has Q/DQ nodes).

    strongly_typed None chooses: strongly typed whenever the graph carries its
    own precision (fp16 graphs, QDQ graphs), as TensorRT recommends since 10.12;
    weak typing (deprecated, removed in 11) only to run an fp32 graph in fp16.
    """
    trt = get_precision(precision, ENGINE_PRECISIONS).tensorrt
    has_fp16 = "float16" in float_types
    if trt.needs_qdq and not has_qdq:
        raise ValueError(
            f"{precision} engines are built by explicit quantization from a QDQ graph; this graph has no "
            f"QuantizeLinear/DequantizeLinear nodes. Build the bundle with --precision {precision} "
            "(implicit calibration is deprecated in TensorRT 10 and not supported)"
        )
    if not trt.needs_qdq and has_qdq:
        raise ValueError(f"a QDQ (int8) graph cannot be built as {precision}; use precision 'int8'")
    if not PRECISIONS[precision].reduced and has_fp16:
        raise ValueError(f"an fp16 graph cannot be built as {precision}; build from the fp32 graph")
    # Whether the graph itself carries the precision (a strongly typed network follows it).
    graph_typed = trt.graph_carries_precision or has_fp16
    if strongly_typed is None:
        strongly_typed = graph_typed
    if strongly_typed:
        if not graph_typed:
            raise ValueError(
                "a strongly typed network runs in the graph's own types, so this fp32 graph would build as fp32. "
                "Build from the fp16 ONNX graph (sam-edge build --precision fp16) or pass strongly_typed=False"
            )
        note = trt.strong_note.format(floats="fp16" if has_fp16 else "fp32")
        return PrecisionPlan(precision, True, (), False, note, trt.strong_cleared_flags)
    if tensorrt_major >= 11:
        raise ValueError(
            "TensorRT 11 builds only strongly typed networks: convert the graph first "
            "(sam-edge build --precision fp16 writes an fp16 encoder with fp32 islands)"
        )
    return PrecisionPlan(
        precision, False, trt.weak_flags, PRECISIONS[precision].reduced,
        "weakly typed (deprecated since TensorRT 10.12), LayerNorm / softmax / rel-pos pinned to fp32",
    )


def int8_latency_warning(int8_ms: Optional[float], fp16_ms: Optional[float], what: str = "encoder") -> Optional[str]:
    """A warning when an int8 engine measured no faster than the fp16 one (None when it is
    faster, or when either was not measured): int8 is only worth its accuracy cost if it is."""
    if int8_ms is None or fp16_ms is None or int8_ms < fp16_ms:
        return None
    return (f"WARNING: the int8 {what} ({int8_ms:.2f} ms) is not faster than the fp16 one ({fp16_ms:.2f} ms) "
            "on this GPU; use the fp16 bundle")


# ---------------------------------------------------------------- TensorRT


def _make_logger(trt, verbose: bool):
    """A trt.ILogger that prints warnings (all with verbose) and keeps errors for the exception."""

    class CollectingLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: List[str] = []

        def log(self, severity, msg) -> None:
            if severity in (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR):
                self.errors.append(str(msg))
            limit = trt.ILogger.Severity.VERBOSE if verbose else trt.ILogger.Severity.WARNING
            if int(severity) <= int(limit):  # lower is more severe
                print(f"[TensorRT] {msg}", file=sys.stderr, flush=True)

    return CollectingLogger()


def _make_progress_monitor(trt):
    """A trt.IProgressMonitor drawing one tqdm bar per builder phase, or None without tqdm."""
    try:
        from tqdm import tqdm
    except ImportError:
        return None

    class TqdmProgressMonitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self._bars: Dict[str, Any] = {}
            self._depth: Dict[str, int] = {}
            self._lock = threading.Lock()  # TensorRT may report from several threads

        def phase_start(self, phase_name, parent_phase, num_steps) -> None:
            with self._lock:
                depth = self._depth.get(parent_phase, -1) + 1 if parent_phase else 0
                self._depth[phase_name] = depth
                self._bars[phase_name] = tqdm(
                    total=num_steps, desc="  " * depth + phase_name, position=depth, leave=depth == 0, unit="step"
                )

        def step_complete(self, phase_name, step) -> bool:
            with self._lock:
                bar = self._bars.get(phase_name)
                if bar is not None:
                    bar.update(step + 1 - bar.n)
            return True  # False would cancel the build

        def phase_finish(self, phase_name) -> None:
            with self._lock:
                bar = self._bars.pop(phase_name, None)
                self._depth.pop(phase_name, None)
                if bar is not None:
                    bar.close()

    return TqdmProgressMonitor()


def _pin_fp32_islands(trt, network, island_nodes: Sequence[str]) -> int:
    """Set precision and output types to fp32 on layers from the island nodes and on every
    normalization, softmax and reduction layer; returns how many layers were pinned."""
    always = {trt.LayerType.NORMALIZATION, trt.LayerType.SOFTMAX, trt.LayerType.REDUCE}
    floats = (trt.float32, trt.float16)
    pinned = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.type not in always and not prep.layer_is_island(layer.name, island_nodes):
            continue
        layer.precision = trt.float32
        for j in range(layer.num_outputs):
            if layer.get_output(j).dtype in floats:
                layer.set_output_type(j, trt.float32)
        pinned += 1
    return pinned


def _attach_timing_cache(config, path: str, logger) -> bool:
    """Attach the timing cache read from `path`, or a new empty one when the file is missing
    or does not match this GPU / TensorRT; returns whether the file's cache was reused.

    A cache is always attached: a builder without one times into a temporary cache and
    destroys it (TensorRT's "Optimizing Builder Performance"), which would leave nothing
    to write back."""
    data = b""
    if os.path.isfile(path):
        with open(path, "rb") as f:
            data = f.read()
    if data:
        cache = config.create_timing_cache(data)
        # A cache from another TensorRT version or GPU is refused rather than mixed in.
        if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
            return True
        print(f"sam-edge: timing cache {path} does not match this GPU / TensorRT; starting a new one",
              file=sys.stderr)
    cache = config.create_timing_cache(b"")
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        raise RuntimeError("TensorRT refused a new, empty timing cache:\n  " + "\n  ".join(logger.errors or ["?"]))
    return False


def build_engine(
    onnx_path: str,
    plan_path: str,
    *,
    precision: str,
    profiles: Sequence[Profile],
    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
    timing_cache_path: Optional[str] = None,
    progress: bool = True,
    strongly_typed: Optional[bool] = None,
    hardware_compatibility: str = "none",
    version_compatible: bool = False,
    verbose: bool = False,
) -> Dict[str, Any]:
    """Build a serialized TensorRT engine from an ONNX graph prepared by
    `tensorrt_prepare.prepare_for_tensorrt`; returns a record for the manifest.

    Arguments:
        onnx_path: the graph (weights may sit in a side file next to it).
        plan_path: where to write the engine (atomically).
        precision: "fp16", "int8" or "fp32" (see precision_plan).
        profiles: optimization profiles, input name -> (min, opt, max) shapes
            (encoder_profile / decoder_profiles); checked against the graph.
        workspace_bytes: the builder's scratch-memory limit.
        timing_cache_path: read if it exists, written back after the build, so
            a rebuild (or the other precision, or the other size) reuses tactic timings.
        progress: tqdm bars from trt.IProgressMonitor.
        hardware_compatibility: "none" (this GPU's architecture only) or
            "ampere_plus" (any GPU of compute capability >= 8.0, slower).
        version_compatible: engines that later TensorRT 10.x runtimes can load.
    """
    if not isinstance(workspace_bytes, int) or workspace_bytes < (1 << 20):
        raise ValueError(f"workspace_bytes must be an integer >= 1 MiB; got {workspace_bytes!r}")
    if hardware_compatibility not in HARDWARE_COMPATIBILITY:
        raise ValueError(f"hardware_compatibility must be one of {list(HARDWARE_COMPATIBILITY)}; got {hardware_compatibility!r}")
    if not profiles:
        raise ValueError("at least one optimization profile is needed")
    graph = prep.load_graph(onnx_path)
    name = os.path.basename(onnx_path)
    prep.check_onnx_domain(graph, name)
    specs = prep.input_specs(graph)
    profiles = [validate_profile(p, specs, f"{name} profile {i}") for i, p in enumerate(profiles)]
    prep.check_static_shape_graph(graph, name)
    if any(s.dtype == "uint8" for s in specs.values()):
        raise ValueError(f"{name}: uint8 graph inputs are not supported by TensorRT")
    quantizers, _ = prep.qdq_node_counts(graph)
    trt = import_tensorrt()
    major = int(trt.__version__.split(".")[0])
    plan = precision_plan(precision, prep.graph_float_types(graph), quantizers > 0, strongly_typed, major)
    islands = prep.fp32_island_nodes(graph) if plan.pin_fp32_islands else []
    del graph

    logger = _make_logger(trt, verbose)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if plan.strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(os.path.abspath(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise RuntimeError(f"TensorRT's ONNX parser rejected {onnx_path}:\n  " + "\n  ".join(errors or logger.errors))

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    for flag in plan.flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    for flag in plan.cleared_flags:
        config.clear_flag(getattr(trt.BuilderFlag, flag))
    pinned = _pin_fp32_islands(trt, network, islands) if plan.pin_fp32_islands else 0
    if hardware_compatibility != "none":
        config.hardware_compatibility_level = getattr(
            trt.HardwareCompatibilityLevel, HARDWARE_COMPATIBILITY[hardware_compatibility]
        )
    if version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    for index, profile in enumerate(profiles):
        optimization_profile = builder.create_optimization_profile()
        for input_name, (lo, opt, hi) in profile.items():
            if specs[input_name].is_dynamic:  # static inputs take no profile
                optimization_profile.set_shape(input_name, lo, opt, hi)
        if config.add_optimization_profile(optimization_profile) < 0:
            raise RuntimeError(f"TensorRT refused optimization profile {index} of {name}:\n  "
                               + "\n  ".join(logger.errors or [str(profile)]))

    cache_loaded = _attach_timing_cache(config, timing_cache_path, logger) if timing_cache_path else False
    monitor = _make_progress_monitor(trt) if progress else None
    if monitor is not None:
        config.progress_monitor = monitor

    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - start
    if serialized is None:
        raise RuntimeError(
            f"TensorRT could not build {onnx_path} ({plan.note}):\n  " + "\n  ".join(logger.errors or ["see the log above"])
        )
    write_file_atomically(plan_path, bytes(serialized))
    if timing_cache_path:
        cache = config.get_timing_cache()
        if cache is None:  # attached above; a build that dropped it must not lose the plan over it
            print(f"sam-edge: TensorRT gave back no timing cache; {timing_cache_path} not updated", file=sys.stderr)
        else:
            write_file_atomically(timing_cache_path, bytes(cache.serialize()))
    return {
        "onnx": os.path.basename(onnx_path),
        "plan": os.path.basename(plan_path),
        "precision": precision,
        "strongly_typed": plan.strongly_typed,
        "builder_flags": list(plan.flags),
        "cleared_builder_flags": list(plan.cleared_flags),
        "precision_note": plan.note,
        "fp32_pinned_layers": pinned,
        "workspace_bytes": workspace_bytes,
        "profiles": [profile_to_json(p) for p in profiles],
        "hardware_compatibility": hardware_compatibility,
        "version_compatible": bool(version_compatible),
        "timing_cache_reused": cache_loaded,
        "build_seconds": round(seconds, 2),
        "plan_bytes": os.path.getsize(plan_path),
    }


# ---------------------------------------------------------------- bundles


@dataclasses.dataclass
class TensorRTBuildParams:
    """What `sam-edge build --backend tensorrt` decides; recorded in the manifest, and
    enough to print the exact command that rebuilds the bundle."""

    model_type: str
    precision: str  # the encoder's: fp16 or int8
    checkpoint: Optional[str] = None
    decoder_precision: str = "fp32"
    max_batch: int = 1
    #: Images per encoder call to tune for; None: max_batch (a bundle built for batches is used with them).
    opt_batch: Optional[int] = None
    max_points: int = 16
    max_prompts: int = 64
    opt_points: int = 2
    opt_prompts: int = 64
    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES
    timing_cache: Optional[str] = None
    hardware_compatibility: str = "none"
    version_compatible: bool = False
    #: Encoder only: a weakly typed network (INT8/FP16 flags, fp32 islands pinned) instead of
    #: following the graph's types. For int8 the QDQ graph's float parts then run in fp16,
    #: not fp32; deprecated in TensorRT 10.12 and refused by 11, so off by default.
    weakly_typed: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if self.precision not in TENSORRT_PRECISIONS:
            raise ValueError(f"TensorRT precision must be one of {TENSORRT_PRECISIONS}; got {self.precision!r}")
        if self.decoder_precision not in ENGINE_PRECISIONS:
            raise ValueError(f"decoder precision must be one of {ENGINE_PRECISIONS}; got {self.decoder_precision!r}")
        _check_counts(max_batch=self.max_batch, max_points=self.max_points, max_prompts=self.max_prompts,
                      opt_points=self.opt_points, opt_prompts=self.opt_prompts)
        if self.opt_batch is not None:
            _check_counts(opt_batch=self.opt_batch)
            if self.opt_batch > self.max_batch:
                raise ValueError(f"opt_batch ({self.opt_batch}) must not exceed max_batch ({self.max_batch})")

    def rebuild_options(self) -> Dict[str, Any]:
        """The options that differ from the defaults (plus the required ones), for the rebuild command."""
        defaults = {f.name: f.default for f in dataclasses.fields(self) if f.default is not dataclasses.MISSING}
        record = dataclasses.asdict(self)
        return {k: v for k, v in record.items() if k not in ("progress",) and (k not in defaults or defaults[k] != v)}


def onnx_bundle_graphs(onnx_bundle: str) -> Tuple[Dict[str, str], Dict[str, Any]]:
    """({"encoder": path, "decoder": path, ...}, manifest) of an ONNX Runtime bundle directory."""
    directory = os.fspath(onnx_bundle)
    manifest_path = os.path.join(directory, "manifest.json")
    if not os.path.isfile(manifest_path):
        raise ValueError(f"{directory} is not an ONNX bundle (no manifest.json); build one with `sam-edge build`")
    with open(manifest_path, encoding="utf-8") as f:
        base = json.load(f)
    if base.get("backend") != "onnxruntime":
        raise ValueError(f"{directory} is a {base.get('backend')!r} bundle; TensorRT engines build from ONNX bundles")
    paths = {k: os.path.join(directory, v) for k, v in base["graphs"].items()}
    for key in ("encoder", "decoder"):
        if key not in paths:
            raise ValueError(f"no {key} graph given (have {sorted(paths)}); the TensorRT bundle needs both")
        if not os.path.isfile(paths[key]):
            raise FileNotFoundError(f"{key} graph not found: {paths[key]}")
    return paths, base


def tensorrt_manifest(
    base: Mapping[str, Any],
    params: TensorRTBuildParams,
    engines: Mapping[str, Dict[str, Any]],
    files: Mapping[str, Dict[str, Any]],
    runtime: Mapping[str, Any],
    onnx_sources: Mapping[str, Dict[str, Any]],
) -> Dict[str, Any]:
    """The bundle manifest: the ONNX Runtime bundle's fields (model, config, sizes,
    weights, versions), backend "tensorrt", the engines as graphs, and a
    "tensorrt" section that check_engine_compatibility reads."""
    manifest = {k: v for k, v in base.items() if k not in ("files", "graphs", "conversion")}
    manifest.update(
        backend="tensorrt",
        model_type=base.get("model_type", params.model_type),
        precision=params.precision,
        decoder_precision=params.decoder_precision,
        graphs={name: record["plan"] for name, record in engines.items()},
        files=dict(files),
        created_utc=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )
    manifest.setdefault("format", "sam-edge-bundle")
    manifest.setdefault("format_version", 1)
    manifest["versions"] = dict(base.get("versions", {}), tensorrt=runtime["tensorrt"])
    manifest["tensorrt"] = {
        "version": runtime["tensorrt"],
        "gpu": runtime["gpu"],
        "compute_capability": runtime["compute_capability"],
        "cuda_runtime": runtime.get("cuda_runtime"),
        "hardware_compatibility": params.hardware_compatibility,
        "version_compatible": params.version_compatible,
        "build": params.rebuild_options(),
        "engines": dict(engines),
        "onnx_source": dict(onnx_sources),
    }
    if "conversion" in base:
        manifest["tensorrt"]["onnx_conversion"] = base["conversion"]
    return manifest


def build_tensorrt_bundle(params: TensorRTBuildParams, onnx_bundle: str, out_dir: str,
                          overwrite: bool = False) -> Dict[str, Any]:
    """Build encoder.plan and decoder.plan from the ONNX Runtime bundle directory `onnx_bundle`
    into the bundle directory `out_dir`; returns its manifest.

    The ONNX bundle is at the same precision (the fp16 encoder with fp32 islands, or the
    QDQ int8 encoder) and has standard ops only (build_bundle(..., fused_attention=False));
    build_tensorrt_bundle_from_model makes it. The bundle is written by bundle_writer, as
    ONNX Runtime bundles are.
    """
    paths, base = onnx_bundle_graphs(onnx_bundle)
    for name, path in paths.items():  # before any TensorRT work: contrib ops cannot be parsed
        prep.check_onnx_domain(path, f"{name} graph {path}")
    if base and base.get("precision") not in (params.precision, None):
        raise ValueError(
            f"the ONNX bundle's encoder is {base.get('precision')!r}; a TensorRT {params.precision} build needs the "
            f"{params.precision} ONNX bundle (sam-edge build --precision {params.precision})"
        )
    writer = BundleStaging(out_dir, overwrite)
    out_dir = writer.output
    config = base.get("config", {})
    image_size = int(base.get("image_size", config.get("image_size", 1024)))
    grid = int(base.get("embedding_size", image_size // config.get("patch_size", 16)))
    runtime = tensorrt_runtime_info()

    staging = writer.begin()
    try:
        jobs = {
            "encoder": (params.precision, [encoder_profile(params.max_batch, image_size,
                                                           params.opt_batch or params.max_batch)]),
            "decoder": (params.decoder_precision, decoder_profiles(
                params.max_points, params.max_prompts, params.opt_points, params.opt_prompts, grid)),
        }
        engines, sources = {}, {}
        for name, (precision, profiles) in jobs.items():
            # int8 encoders, strongly typed, run the graph's float parts in the graph's types: fp16.
            fp16_float_parts = (name == "encoder" and PRECISIONS[precision].tensorrt.fp16_float_parts
                                and not params.weakly_typed)
            prepared = prep.prepare_for_tensorrt(paths[name], os.path.join(staging, f".{name}.trt.onnx"), name,
                                                 fp16_float_parts=fp16_float_parts)
            if name == "decoder":  # cheap: catch a profile the graph cannot take before a TensorRT build
                for profile in profiles:
                    prep.check_profile_with_onnxruntime(prepared["path"], profile)
            engines[name] = build_engine(
                prepared["path"], os.path.join(staging, f"{name}.plan"), precision=precision, profiles=profiles,
                strongly_typed=False if (params.weakly_typed and name == "encoder") else None,
                workspace_bytes=params.workspace_bytes, timing_cache_path=params.timing_cache,
                progress=params.progress, hardware_compatibility=params.hardware_compatibility,
                version_compatible=params.version_compatible,
            )
            engines[name]["qdq"] = prepared["qdq"]
            engines[name]["fp16_float_parts"] = prepared["fp16_float_parts"]
            sources[name] = dict(file_record(paths[name]), file=os.path.basename(paths[name]))
            if prepared["path"] != paths[name]:
                os.remove(prepared["path"])
        manifest = tensorrt_manifest(base, params, engines, writer.file_records(), runtime, sources)
        manifest.setdefault("image_size", image_size)
        manifest.setdefault("embedding_size", grid)
        manifest.setdefault("mask_input_size", 4 * grid)
        writer.write_manifest(manifest)
        move_bundle_into_place(staging, out_dir)
    except BaseException:
        writer.discard()
        raise
    return manifest


def build_tensorrt_bundle_from_model(params: TensorRTBuildParams, output: str, overwrite: bool = False,
                                     calib_images: Optional[str] = None,
                                     num_calib_images: Optional[int] = None) -> Dict[str, Any]:
    """`sam-edge build --backend tensorrt`: the model of params.model_type (from params.checkpoint,
    or seeded random weights) exported to an ONNX Runtime bundle at the same precision in a
    scratch directory next to `output` (removed afterwards), then its engines into the bundle
    at `output`; returns the TensorRT bundle's manifest."""
    from ..config import get_config
    from .build import build_bundle

    tensorrt_runtime_info()  # TensorRT and a GPU are here, before minutes of export
    output = checked_output(output, overwrite)
    os.makedirs(os.path.dirname(output), exist_ok=True)
    scratch = sibling_directory(output, "onnx")
    try:
        onnx_dir = os.path.join(scratch, "bundle")
        build_bundle(onnx_dir, get_config(params.model_type), checkpoint=params.checkpoint,
                     precision=params.precision, backend="onnxruntime", official_decoder=False,
                     fused_attention=False,  # ONNX Runtime contrib ops are not TensorRT's
                     calib_images=calib_images, num_calib_images=num_calib_images, quiet=not params.progress)
        return build_tensorrt_bundle(params, onnx_dir, output, overwrite=overwrite)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
