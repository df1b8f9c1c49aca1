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


def results_path(benchmark: str, tag: str = None, date: str = None, directory: str = None) -> str:
    """<directory, by default RESULTS_DIR>/<host>-<date>-<benchmark>.json, numbered -2, -3, ... after
    the first of a day, so a repeat never overwrites a result."""
    date = date or datetime.date.today().isoformat()
    directory = RESULTS_DIR if directory is None else directory  # read when called: tests redirect it
    stem = os.path.join(directory, f"{tag or device_tag()}-{date}-{benchmark}")
    path, n = stem + ".json", 1
    while os.path.exists(path):
        n += 1
        path = f"{stem}-{n}.json"
    return path


def write_results(name: str, payload: Dict[str, object], tag: str = None, variant: str = None) -> str:
    """Write JSON to benchmarks/results/<host>-<date>-<name>.json (see results_path); return the path.

    `name` is the benchmark (e.g. "cpu-attention", "amg-vit_b"); what is being compared (a code
    state, a build option) goes in `variant`, a field of the file, never into its name.
    """
    os.makedirs(RESULTS_DIR, exist_ok=True)
    date = datetime.date.today().isoformat()
    path = results_path(name, tag, date)
    payload = {"variant": variant, **payload, "date": date, "hardware": hardware()}
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
