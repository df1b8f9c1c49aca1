"""GPU benchmark helpers for the Triton kernels: CUDA-event timing, datasheet peaks, result files."""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(REPO_ROOT, "benchmarks", "results")

if REPO_ROOT not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, REPO_ROOT)

# Dense peaks from the vendors' datasheets: tensor-core TFLOPS for fp16/bf16
# (fp32 accumulate), fp32 TFLOPS without tensor cores, and memory TB/s.
# Matched against torch.cuda.get_device_name() in order; override with flags.
DEVICE_PEAKS = [
    (r"H200", {"fp16": 989.0, "bf16": 989.0, "fp32": 67.0, "tbps": 4.8}),
    (r"H100.*PCIe", {"fp16": 756.0, "bf16": 756.0, "fp32": 51.0, "tbps": 2.0}),
    (r"H100", {"fp16": 989.0, "bf16": 989.0, "fp32": 67.0, "tbps": 3.35}),
    (r"A100.*80GB", {"fp16": 312.0, "bf16": 312.0, "fp32": 19.5, "tbps": 2.04}),
    (r"A100", {"fp16": 312.0, "bf16": 312.0, "fp32": 19.5, "tbps": 1.555}),
    (r"L40S", {"fp16": 362.0, "bf16": 362.0, "fp32": 91.6, "tbps": 0.864}),
    (r"L4", {"fp16": 121.0, "bf16": 121.0, "fp32": 30.3, "tbps": 0.3}),
    (r"RTX 4090", {"fp16": 165.2, "bf16": 165.2, "fp32": 82.6, "tbps": 1.008}),
    (r"A10G", {"fp16": 70.0, "bf16": 70.0, "fp32": 31.2, "tbps": 0.6}),
    (r"T4", {"fp16": 65.0, "bf16": 0.0, "fp32": 8.1, "tbps": 0.32}),
]


def device_peaks(name: str) -> Optional[Dict[str, float]]:
    for pattern, peaks in DEVICE_PEAKS:
        if re.search(pattern, name):
            return peaks
    return None


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def time_cuda(fn: Callable[[], object], repeats: int, min_run_ms: float = 20.0) -> Dict[str, float]:
    """Median and spread (min, p10, p90, max) of per-call milliseconds over `repeats` runs.

    Each run times a loop of calls between CUDA events, long enough (>= min_run_ms)
    that launch jitter is averaged out.
    """
    import torch

    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    once = max(start.elapsed_time(end), 1e-3)
    iters = max(1, int(min_run_ms / once))
    samples = []
    for _ in range(repeats):
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        torch.cuda.synchronize()
        samples.append(start.elapsed_time(end) / iters)
    return summarize(samples, iters)


def time_cpu(fn: Callable[[], object], repeats: int) -> Dict[str, float]:
    """Wall-clock per-call milliseconds (smoke runs only)."""
    fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return summarize(samples, 1)


def summarize(samples: List[float], iters: int) -> Dict[str, float]:
    s = sorted(samples)
    pick = lambda q: s[min(len(s) - 1, int(round(q * (len(s) - 1))))]  # noqa: E731
    return {
        "median_ms": statistics.median(s),
        "min_ms": s[0],
        "p10_ms": pick(0.1),
        "p90_ms": pick(0.9),
        "max_ms": s[-1],
        "runs": len(s),
        "calls_per_run": iters,
    }


def environment(device_name: str) -> Dict[str, str]:
    import torch

    env = {
        "device": device_name,
        "torch": torch.__version__,
        "cuda": str(torch.version.cuda),
        "python": platform.python_version(),
        "host": platform.node(),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = "not installed"
    return env


def write_results(kind: str, device_name: str, payload: dict, path: Optional[str] = None) -> str:
    if path is None:
        date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
        os.makedirs(RESULTS_DIR, exist_ok=True)
        path = os.path.join(RESULTS_DIR, f"{slug(device_name)}-{date}-{kind}.json")
    with open(path, "w") as f:
        json.dump(payload, f, indent=2)
    return path


def print_table(rows: List[Dict[str, object]], columns: List[str]) -> None:
    cells = [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
    for row in cells:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths)))


def _fmt(v: object) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.3e}"
    return str(v)


NO_CUDA_MESSAGE = (
    "{script}: no CUDA device found, so nothing was measured. "
    "Run it on a machine with an NVIDIA GPU (and Triton), or pass --cpu-interpret "
    "for a smoke run of tiny shapes in the Triton CPU interpreter (no timings worth reporting)."
)
