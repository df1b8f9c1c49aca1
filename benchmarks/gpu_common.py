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


# ---------------------------------------------------------------- scripts/gpu_check.sh summary

_PYTEST_COUNT = re.compile(r"(\d+) (passed|failed|errors?|skipped|xfailed|xpassed|deselected|warnings?)\b")


def pytest_counts(output: str) -> Optional[Dict[str, int]]:
    """Counts from the last pytest summary line in `output` ("3 failed, 10 passed, 2 skipped in 4.1s"),
    or None when there is none (pytest did not finish)."""
    for line in reversed(output.splitlines()):
        if re.search(r"\b(passed|failed|skipped|errors?|deselected|no tests ran)\b.* in [\d.]+s", line):
            counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
            for number, word in _PYTEST_COUNT.findall(line):
                key = {"error": "errors", "warning": "warnings"}.get(word, word)
                counts[key] = int(number)
            return counts
    return None


def _command_output(cmd: List[str]) -> str:
    import subprocess

    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unavailable ({type(exc).__name__}: {exc})"


def gpu_check_summary(steps_dir: str, budget_s: float, tail_chars: int = 4000) -> Dict[str, object]:
    """The JSON summary of a scripts/gpu_check.sh run from its step files.

    Each step NAME left NAME.cmd (the command), NAME.status ("ran", or why it
    was skipped), and when it ran NAME.rc, NAME.wall (seconds) and NAME.log.
    """
    steps = []
    for name in sorted(f[:-4] for f in os.listdir(steps_dir) if f.endswith(".cmd")):
        def read(ext, default=""):
            path = os.path.join(steps_dir, f"{name}.{ext}")
            return open(path, errors="replace").read().strip() if os.path.exists(path) else default

        status, log = read("status", "not run"), read("log")
        step = {"step": name.split("-", 1)[-1], "command": read("cmd"), "status": status}
        if status == "ran":
            rc = int(read("rc", "-1"))
            step.update(exit_code=rc, timed_out=rc in (124, 137), wall_s=float(read("wall", "nan")),
                        passed=rc == 0, pytest=pytest_counts(log), output_tail=log[-tail_chars:])
        steps.append(step)
    nvidia_smi = os.environ.get("GPU_CHECK_NVIDIA_SMI", "nvidia-smi")
    smi = _command_output([nvidia_smi, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"])
    smi = smi.splitlines()
    summary: Dict[str, object] = {
        "kind": "gpu-check",
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "budget_s": budget_s,
        "total_wall_s": sum(s.get("wall_s", 0.0) for s in steps),
        "all_passed": all(s.get("passed", True) for s in steps),
        "nvidia_smi": smi,
        "steps": steps,
    }
    try:
        import torch

        summary["environment"] = environment(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
    except Exception as exc:  # the summary must still be written: say why this part is missing
        summary["environment"] = f"unavailable ({type(exc).__name__}: {exc})"
    try:
        from sam_edge.info import info

        summary["sam_edge_info"] = info()
    except Exception as exc:
        summary["sam_edge_info"] = f"unavailable ({type(exc).__name__}: {exc})"
    return summary


def _main(argv: List[str]) -> int:
    if len(argv) != 4 or argv[1] != "gpu-check-summary":
        print("usage: gpu_common.py gpu-check-summary STEPS_DIR BUDGET_S", file=sys.stderr)
        return 2
    summary = gpu_check_summary(argv[2], float(argv[3]))
    smi = summary["nvidia_smi"]
    device = smi[0].split(",")[0] if smi else "unknown-gpu"
    path = write_results("gpu-check", device, summary)
    for s in summary["steps"]:
        counts = s.get("pytest") or {}
        tally = ", ".join(f"{v} {k}" for k, v in counts.items() if v) if counts else ""
        if s["status"] != "ran":
            state = s["status"]
        elif s["passed"]:
            state = "ok"
        else:
            state = "TIMED OUT" if s["timed_out"] else f"FAILED (exit {s['exit_code']})"
        print(f"  {s['step']:<24} {s.get('wall_s', 0.0):6.0f} s  {state}  {tally}")
    print(f"gpu_check: wrote {path}")
    return 0 if summary["all_passed"] else 1


if __name__ == "__main__":
    sys.exit(_main(sys.argv))
