"""Shared benchmark helpers: timing statistics, hardware description, results files."""

import datetime
import json
import os
import platform
import statistics
import time
from typing import Callable, Dict, List

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def time_call(fn: Callable[[], object], repeat: int, warmup: int = 1) -> List[float]:
    """Wall-clock seconds of `repeat` calls of fn, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def summarize(times: List[float]) -> Dict[str, float]:
    """Median, min, max and interquartile spread in milliseconds."""
    ms = sorted(t * 1000 for t in times)
    q = statistics.quantiles(ms, n=4) if len(ms) >= 2 else [ms[0]] * 3
    return {"median_ms": statistics.median(ms), "min_ms": ms[0], "max_ms": ms[-1], "iqr_ms": q[2] - q[0], "n": len(ms)}


#: The CPU features that decide which kernels run (ONNX Runtime's int8 GEMMs use
#: AMX where present; sam-edge's attention kernel needs AVX-512, and AVX512-FP16
#: for its fp16 path): hosts that print the same model name differ in these.
CPU_FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16")


def cpu_features() -> List[str]:
    """The CPU_FEATURES this CPU has, from /proc/cpuinfo (empty where it is absent)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return [name for name in CPU_FEATURES if name in flags]
    except OSError:
        pass
    return []


def hardware() -> Dict[str, object]:
    info = {"machine": platform.machine(), "processor": platform.processor(), "cpus": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    info["cpu_features"] = cpu_features()
    info["load_average_at_start"] = os.getloadavg()
    return info


def device_tag() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0).replace(" ", "-").lower()
    except ImportError:
        pass
    return f"cpu-{os.cpu_count()}core"


def write_results(name: str, payload: Dict[str, object], tag: str = None) -> str:
    """Write JSON to benchmarks/results/<device>-<date>-<name>.json; return the path."""
    os.makedirs(RESULTS_DIR, exist_ok=True)
    date = datetime.date.today().isoformat()
    path = os.path.join(RESULTS_DIR, f"{tag or device_tag()}-{date}-{name}.json")
    payload = dict(payload, date=date, hardware=hardware())
    with open(path, "w") as f:
        json.dump(payload, f, indent=2)
    return path


def print_table(rows: List[Dict[str, object]], columns: List[str]) -> None:
    widths = [max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(_fmt(r.get(c)).ljust(w) for c, w in zip(columns, widths)))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
    return "" if v is None else str(v)
