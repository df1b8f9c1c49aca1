"""One TensorRT engine from one ONNX graph that tensorrt_prepare made TensorRT's
(`build_engine`): the parser, the builder configuration from a PrecisionPlan, the
fp32 pins, the timing cache, and a progress bar per builder phase.

TensorRT is imported only inside build_engine; the module imports without it.
"""

import os
import sys
import threading
import time
from typing import Any, Dict, List, Optional, Sequence

from ..runtime.tensorrt_compat import import_tensorrt
from .bundle_writer import write_file_atomically
from .tensorrt_fp16 import fp32_island_nodes, graph_float_types, layer_is_island
from .tensorrt_graph_checks import check_onnx_domain, check_static_shape_graph, input_specs, load_graph
from .tensorrt_precision import precision_plan
from .tensorrt_profiles import Profile, profile_to_json, validate_profile
from .tensorrt_qdq import qdq_node_counts

#: Builder scratch memory; engines for ViT-H need more than edge boards should give by default.
DEFAULT_WORKSPACE_BYTES = 2 << 30
#: Hardware-compatibility levels we record and check (TensorRT's HardwareCompatibilityLevel).
HARDWARE_COMPATIBILITY = {"none": "NONE", "ampere_plus": "AMPERE_PLUS"}


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
        if layer.type not in always and not layer_is_island(layer.name, island_nodes):
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
    graph = load_graph(onnx_path)
    name = os.path.basename(onnx_path)
    check_onnx_domain(graph, name)
    specs = input_specs(graph)
    profiles = [validate_profile(p, specs, f"{name} profile {i}") for i, p in enumerate(profiles)]
    check_static_shape_graph(graph, name)
    if any(s.dtype == "uint8" for s in specs.values()):
        raise ValueError(f"{name}: uint8 graph inputs are not supported by TensorRT")
    quantizers, _ = qdq_node_counts(graph)
    trt = import_tensorrt()
    major = int(trt.__version__.split(".")[0])
    plan = precision_plan(precision, graph_float_types(graph), quantizers > 0, strongly_typed, major)
    islands = fp32_island_nodes(graph) if plan.pin_fp32_islands else []
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
