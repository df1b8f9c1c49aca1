"""The automatic mask generator end to end: sam-edge (torch model and ONNX
Runtime bundles) against the official SamAutomaticMaskGenerator, on CPU, in
one process, with the share of time per stage for ours.

    python benchmarks/bench_automatic_mask_generator.py [--points-per-side 32] [--bundle DIR ...]

Random weights make the official thresholds (IoU 0.88, stability 0.95) drop
nearly every candidate, which would leave post-processing idle, so by default
both thresholds are 0: every candidate is upsampled, scored, boxed, NMS'd and
RLE-encoded, the worst case for post-processing. --official-thresholds
restores them.
"""

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from common import print_table, summarize, time_call, write_results  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_b", choices=["vit_b", "vit_l", "vit_h"])
    parser.add_argument("--points-per-side", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--bundle", action="append", default=[], help="ONNX Runtime bundle(s) built from the same checkpoint")
    parser.add_argument("--checkpoint", help="official checkpoint; seeded random weights if omitted")
    parser.add_argument("--official-thresholds", action="store_true")
    args = parser.parse_args()

    from segment_anything import SamAutomaticMaskGenerator as RefGenerator
    from segment_anything import sam_model_registry as ref_registry
    from skimage import data

    import sam_edge

    checkpoint = args.checkpoint
    if checkpoint is None:
        torch.manual_seed(0)
        checkpoint = os.path.join(tempfile.mkdtemp(), "random.pth")
        torch.save(ref_registry[args.model]().state_dict(), checkpoint)
        print(f"using seeded random weights ({checkpoint})")
    params = dict(points_per_side=args.points_per_side)
    if not args.official_thresholds:
        params.update(pred_iou_thresh=0.0, stability_score_thresh=0.0)

    generators = {
        "reference (segment_anything)": RefGenerator(ref_registry[args.model](checkpoint=checkpoint), **params),
        "sam_edge torch": sam_edge.SamAutomaticMaskGenerator(
            sam_edge.sam_model_registry[args.model](checkpoint=checkpoint), **params
        ),
    }
    for bundle in args.bundle:
        engine = sam_edge.load(bundle)
        generators[f"sam_edge {engine.name} {os.path.basename(bundle.rstrip('/'))}"] = (
            sam_edge.SamAutomaticMaskGenerator(engine, **params)
        )

    image = data.coffee()
    times = {name: [] for name in generators}
    stages = {}
    counts = {}
    for _ in range(args.repeat):
        for name, gen in generators.items():
            out = []
            times[name] += time_call(lambda: out.append(gen.generate(image)), repeat=1, warmup=0)
            counts[name] = len(out[-1])
            if hasattr(gen, "last_timings"):
                stages[name] = gen.last_timings
    ref_ms = summarize(times["reference (segment_anything)"])["median_ms"]
    rows = []
    for name in generators:
        s = summarize(times[name])
        row = {"impl": name, "total_ms": s["median_ms"], "spread_ms": s["max_ms"] - s["min_ms"],
               "speedup": ref_ms / s["median_ms"], "records": counts[name]}
        if name in stages:
            total = sum(stages[name].values())
            for stage, sec in stages[name].items():
                row[f"{stage}_%"] = 100.0 * sec / total
            row["post_ms"] = 1000 * sum(v for k, v in stages[name].items() if k not in ("embed", "decode"))
        rows.append(row)
    columns = sorted({c for r in rows for c in r}, key=lambda c: (c != "impl", c))
    print(f"\n{args.model}, coffee 600x400, {args.points_per_side}^2 points, {params}, "
          f"{args.repeat} repeats (median; speedup = reference / ours)")
    print_table(rows, columns)
    path = write_results(f"amg-{args.model}", {"model": args.model, "params": params, "rows": rows})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
