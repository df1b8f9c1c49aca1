"""The int8 encoder ops graph with and without sam_edge_ops' quantize fusions
(sam_edge/export/quantize_fusions.py), timed in interleaved blocks: unfused, each
fusion alone, all of them.

    PYTHONPATH=. python benchmarks/bench_quantize_fusions.py INT8_BUNDLE [--rounds 7] [--calls 3] [--profile]

The variants are written beside the bundle's encoder_ops.onnx (encoder_ops_<name>.onnx,
removed afterwards) from the graph the bundle carries, and run as sam_edge.load runs
it (encoder_ops_session, the runtime's session options, the bundle's attention
compute). Every round runs each variant as a block: a pause, one untimed run,
then --calls timed runs back to back, the block's median its time. The sessions
share one process, and an idle session's spinning pool threads distorted single
runs interleaved between sessions, so each block runs one graph alone after its
own untimed run. Ratios compare blocks seconds apart (see
bench_encoder_interleaved.py); per round unfused / variant, then the median and
range. --profile adds one ONNX Runtime
profile per variant, summed by op type: where each fusion's time goes. The host's
load average is recorded before and after.
"""

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import write_results  # noqa: E402

#: The op types the fusions write.
FUSED_OPS = ("GeluQuantizeLinear", "LayerNormQuantizeLinear", "SkipLayerNormQuantizeLinear")


def _session(path, threads, compute, computes, profile_prefix=None):
    from sam_edge.runtime.onnxruntime_backend import session_options
    from sam_edge.runtime.ort_ops import encoder_ops_session

    options = session_options(threads)
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return encoder_ops_session(path, options, ["CPUExecutionProvider"], compute=compute, computes=computes)


def _op_totals(profile_path):
    """{op type: milliseconds} of one profiled run (the last one in the file)."""
    with open(profile_path) as f:
        events = json.load(f)
    runs = [e for e in events if e.get("name") == "model_run"]
    start = runs[-1]["ts"] if runs else 0
    totals = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= start:
            op = e["args"].get("op_name", "?")
            totals[op] = totals.get(op, 0.0) + e["dur"] / 1000
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", help="a static-int8 bundle directory (sam-edge build --precision int8)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--pause", type=float, default=2.0, help="seconds idle before each block")
    parser.add_argument("--calls", type=int, default=3, help="timed runs per block")
    parser.add_argument("--profile", action="store_true", help="also profile one run per variant by op type")
    parser.add_argument("--tag", default=None)
    parser.add_argument("--note", default=None, help="conditions of the run, stored in the results")
    args = parser.parse_args()

    from sam_edge.export.encoder_ops import fuse_ops_graph_file
    from sam_edge.export.quantize_fusions import FUSIONS
    from sam_edge.kernels.cpu_attention import fast_compute

    manifest = json.load(open(os.path.join(args.bundle, "manifest.json")))
    if manifest.get("precision") != "int8" or "encoder_ops" not in manifest:
        parser.error(f"{args.bundle} is not a static-int8 bundle with an encoder ops graph")
    base = os.path.join(args.bundle, manifest["encoder_ops"]["file"])
    compute = manifest["encoder_ops"]["compute"]
    # What each cut runs here, which decides ORT's spinning as sam_edge.load decides it.
    computes = [fast_compute(a["head_dim"], a["k_size"], compute) for a in manifest["encoder_ops"]["attention"]]
    import onnx

    fused = {n.op_type for n in onnx.load(base, load_external_data=False).graph.node} & set(FUSED_OPS)
    if fused:
        parser.error(f"{base} already has {sorted(fused)}: the baseline must be an ops graph written without "
                     "fusions (encoder_ops_graph(..., fusions=()))")
    variants = {"unfused": ([], base)}
    for fusions in [[f] for f in FUSIONS] + [list(FUSIONS)]:
        name = "+".join(fusions) if len(fusions) < len(FUSIONS) else "all"
        path = os.path.join(args.bundle, f"encoder_ops_{name.replace('+', '_')}.onnx")
        added = fuse_ops_graph_file(base, path, fusions)
        variants[name] = (added, path)
        print(f"{name}: {len(added)} fused nodes ({', '.join(sorted(set(added)))})")

    load_before = os.getloadavg()
    try:
        size = manifest["image_size"]
        x = np.random.default_rng(0).uniform(-2, 2, (1, 3, size, size)).astype(np.float32)
        sessions = {name: _session(path, args.threads, compute, computes) for name, (_, path) in variants.items()}
        feeds = {name: {s.get_inputs()[0].name: x} for name, s in sessions.items()}
        outputs = {name: s.run(None, feeds[name])[0] for name, s in sessions.items()}  # warm-up
        ref = outputs["unfused"]
        times = {name: [] for name in sessions}
        for _ in range(args.rounds):
            for name, session in sessions.items():
                time.sleep(args.pause)
                session.run(None, feeds[name])  # wakes this session's pool
                block = []
                for _ in range(args.calls):
                    start = time.perf_counter()
                    session.run(None, feeds[name])
                    block.append(1000 * (time.perf_counter() - start))
                times[name].append(statistics.median(block))
        profiles = {}
        if args.profile:
            del sessions
            for name, (_, path) in variants.items():
                session = _session(path, args.threads, compute, computes,
                                   profile_prefix=f"/tmp/fusion_profile_{os.getpid()}")
                for _ in range(2):
                    session.run(None, feeds[name])
                profile = session.end_profiling()
                profiles[name] = _op_totals(profile)
                os.remove(profile)
    finally:
        for name, (_, path) in variants.items():
            if path != base and os.path.exists(path):
                os.remove(path)
    load_after = os.getloadavg()

    rows = []
    for name, ms in times.items():
        ratios = [r / m for r, m in zip(times["unfused"], ms)]
        rows.append({
            "variant": name, "fused_nodes": len(variants[name][0]), "encoder_ms": ms,
            "median_ms": statistics.median(ms), "speedup_per_round": ratios,
            "speedup_median": statistics.median(ratios), "speedup_min": min(ratios), "speedup_max": max(ratios),
            "embedding_rel_l2_vs_unfused": float(np.linalg.norm(outputs[name] - ref) / np.linalg.norm(ref)),
            "op_ms": profiles.get(name),
        })
    model = manifest["model_type"]
    print(f"{model} int8 encoder ops graph, {args.threads} threads, {args.rounds} rounds of {args.calls}-run blocks, "
          f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after")
    print(f"{'variant':<40}{'median ms':>11}{'x unfused':>11}{'range':>14}{'rel-L2':>11}")
    for r in rows:
        print(f"{r['variant']:<40}{r['median_ms']:>11.0f}{r['speedup_median']:>11.3f}"
              f"{r['speedup_min']:>7.3f}-{r['speedup_max']:.3f}{r['embedding_rel_l2_vs_unfused']:>11.1e}")
    if profiles:
        for name, totals in profiles.items():
            print(f"{name}: " + ", ".join(f"{op} {ms:.0f}" for op, ms in list(totals.items())[:8]) + " (ms, op type)")
    import onnxruntime

    path = write_results(f"quantize-fusions-{model}", {
        "benchmark": "bench_quantize_fusions", "model": model, "threads": args.threads, "rounds": args.rounds,
        "calls_per_block": args.calls,
        "attention_compute": compute, "rows": rows,
        "load_average": {"before": list(load_before), "after": list(load_after)},
        "versions": {"onnxruntime": onnxruntime.__version__}, "note": args.note,
    }, tag=args.tag)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
