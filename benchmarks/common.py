"""Shared benchmark helpers: timing statistics, hardware description, results files.

The host description lives in the package (sam_edge.bench.host), so results
from these scripts and from `sam-edge bench` describe machines alike.
"""

import datetime
import json
import os
import statistics
import time
from typing import Callable, Dict, List

from sam_edge.bench.host import CPU_FEATURES, cpu_features, device_tag, hardware  # noqa: F401  (re-exported)

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
