"""The image encoder's FLOP floor on this CPU, per model and precision: its
multiply-adds (bench_onnxruntime.encoder_flops) over the peak of a measured
large MatMul in ONNX Runtime at that precision and thread count
(bench_onnxruntime.matmul_peak_gflops, ViT-B's mlp.lin1 shape). With
--results, each sam-edge row of those bench/openvino results files gets its
encoder median as a fraction of the floor.

    python benchmarks/bench_flop_floor.py --threads 2 [--results FILE ...] [--tag HOST]

The floor counts every product at the GEMM peak, attention included, so a
path whose attention runs at another precision (bf16 in int8 bundles) is
held to the int8 GEMM's rate for it: a floor, not a prediction.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench_onnxruntime import encoder_flops, matmul_peak_gflops  # noqa: E402
from common import write_results  # noqa: E402


def _encoder_rows(path):
    """(model, precision, encoder median ms, label) of each sam-edge row in a results file."""
    with open(path) as f:
        data = json.load(f)
    rows = []
    if data.get("benchmark", "").startswith("openvino-"):
        for row in data["rows"]:
            if row["path"].startswith("sam-edge"):
                precision = "int8" if "int8" in row["path"] else "fp32"
                rows.append((data["model"], precision, row["encoder"]["median_ms"], row["path"]))
    for run in data.get("runs", []):
        if run.get("kind") == "bundle" and "encoder" in run.get("stages", {}):
            rows.append((run["model_type"], run["precision"], run["stages"]["encoder"]["p50_ms"], run["name"]))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", default="vit_b,vit_h")
    parser.add_argument("--results", nargs="*", default=[], help="bench or openvino results files to rate")
    parser.add_argument("--tag", default=None)
    args = parser.parse_args()
    from sam_edge import get_config

    peaks = {p: matmul_peak_gflops(p, args.threads) for p in ("fp32", "int8")}
    floors = {}
    for model in [m for m in args.models.split(",") if m]:
        flops = encoder_flops(get_config(model))
        floors[model] = {"encoder_gflop": flops / 1e9,
                         **{f"{p}_floor_ms": flops / peak / 1e6 for p, peak in peaks.items()}}
    rated = []
    for path in args.results:
        for model, precision, median, label in _encoder_rows(path):
            if model in floors and f"{precision}_floor_ms" in floors[model]:
                floor = floors[model][f"{precision}_floor_ms"]
                rated.append({"file": os.path.basename(path), "row": label, "model": model, "precision": precision,
                              "encoder_ms": median, "floor_ms": floor, "fraction_of_floor": floor / median})
    for model, f in floors.items():
        print(f"{model}: {f['encoder_gflop']:.0f} GFLOP; floor fp32 {f['fp32_floor_ms']:.0f} ms, "
              f"int8 {f['int8_floor_ms']:.0f} ms (peaks: fp32 {peaks['fp32']:.0f}, int8 {peaks['int8']:.0f} GOP/s)")
    for r in rated:
        print(f"{r['file']}: {r['row']} ({r['model']} {r['precision']}): {r['encoder_ms']:.0f} ms, "
              f"{100 * r['fraction_of_floor']:.0f}% of the floor")
    print(write_results("flop-floor", {"threads": args.threads, "matmul_peak_gops": peaks, "floors": floors,
                                       "rated": rated}, tag=args.tag))
    return 0


if __name__ == "__main__":
    sys.exit(main())
