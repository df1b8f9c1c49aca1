"""Encoder latency of bundles against each other, interleaved: an A/B of graph changes.

    PYTHONPATH=. python benchmarks/bench_encoder_interleaved.py BASELINE_BUNDLE BUNDLE [...] [--rounds 5]
    PYTHONPATH=. python benchmarks/bench_encoder_interleaved.py BUNDLE --modes single,native

--modes loads each bundle once per encoder mode: "single" is its one encoder
graph, "native" its encoder ops graph with sam-edge's attention op (see
sam_edge.load's native_attention), "fp32", "fp16", "bf16" that graph with the
op in that precision where it runs (attention_compute); the first bundle's
first mode is the baseline.

On a shared host the load moves by tens of percent within minutes, so two
bundles timed one after the other can differ by more than the change being
measured. Here every round runs each bundle's encoder once, so each ratio
compares runs seconds apart: per round, baseline / bundle, then the median
and range over the rounds. Same input (1024 px, batch 1), same threads, a
pause before each run. The ratio against the official package is
bench_onnxruntime.py's: the official encoder is not interleaved here,
because next to ONNX Runtime sessions in one process it measured 21 s
instead of 11-14 s alone (torch and ORT thread pools on 2 cores).
Writes JSON and prints a table.
"""

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import write_results  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundles", nargs="+", help="bundle directories (sam-edge build)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--pause", type=float, default=2.0, help="seconds idle before each timed run")
    parser.add_argument("--modes", default="auto",
                        help="comma list of encoder modes per bundle: auto (load()'s default), single, native, "
                             "or the kernel's precision: fp32, fp16, bf16")
    parser.add_argument("--tag", default=None)
    args = parser.parse_args()
    # (native_attention, attention_compute) for sam_edge.load
    modes = {"auto": (None, None), "single": (False, None), "native": (True, None),
             "fp32": (True, "fp32"), "fp16": (True, "fp16"), "bf16": (True, "bf16")}
    if any(m not in modes for m in args.modes.split(",")):
        parser.error(f"--modes: expected a comma list of {sorted(modes)}; got {args.modes!r}")

    import sam_edge

    x = np.random.default_rng(0).uniform(0, 255, (1, 3, 1024, 1024)).astype(np.float32)
    engines = {}
    for i, bundle in enumerate(args.bundles):
        for mode in args.modes.split(","):
            native, compute = modes[mode]
            engine = sam_edge.load(bundle, threads=args.threads, native_attention=native, attention_compute=compute)
            if engine.encoder_mode.startswith("one graph"):
                kind = engine.encoder_mode
            else:
                kind = "MHA-fused graph" if engine.manifest.get("fused_global_attention") else "plain graph"
            engines[f"{i}: ORT {engine.manifest['precision']}, {kind}"] = engine
    paths = {name: (lambda e=engine: e.embed(x)) for name, engine in engines.items()}
    for fn in paths.values():  # warm-up: first-touch allocations, lazy initialisation
        fn()
    times = {name: [] for name in paths}
    for _ in range(args.rounds):
        for name, fn in paths.items():
            # ORT's idle pool threads spin for a while after a run: let them park.
            time.sleep(args.pause)
            start = time.perf_counter()
            fn()
            times[name].append(1000 * (time.perf_counter() - start))
    ref = next(iter(times.values()))
    rows = []
    for name, ms in times.items():
        ratios = [r / m for r, m in zip(ref, ms)]
        rows.append({
            "path": name, "encoder_ms": ms, "median_ms": statistics.median(ms),
            "speedup_per_round": ratios, "speedup_median": statistics.median(ratios),
            "speedup_min": min(ratios), "speedup_max": max(ratios),
        })
    model = next(iter(engines.values())).manifest["model_type"]
    print(f"{model} encoder, {args.threads} threads, {args.rounds} interleaved rounds, baseline {args.bundles[0]}")
    print(f"{'path':<62}{'median ms':>11}{'x baseline':>12}{'range':>16}")
    for r in rows:
        print(f"{r['path']:<62}{r['median_ms']:>11.0f}{r['speedup_median']:>12.2f}"
              f"{r['speedup_min']:>8.2f}-{r['speedup_max']:.2f}")
    import onnxruntime

    path = write_results(f"encoder-interleaved-{model}", {
        "benchmark": "bench_encoder_interleaved", "model": model, "threads": args.threads,
        "rounds": args.rounds, "rows": rows,
        "bundles": {name: {"fused_global_attention": e.manifest.get("fused_global_attention"),
                           "encoder_mode": e.encoder_mode} for name, e in engines.items()},
        "baseline": args.bundles[0], "versions": {"onnxruntime": onnxruntime.__version__},
    }, tag=args.tag)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
