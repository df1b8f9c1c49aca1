"""set_image (encoder) and predict (prompt encoder + decoder + upsampling):
sam-edge's torch path against the official segment_anything, in one process.

    python benchmarks/bench_predictor.py [--model vit_b] [--repeat 5]

Both models get the same seeded random weights through an official-format
checkpoint. Timings interleave ours and the reference so machine load hits
both alike. Peak memory is measured in a fresh child process per
implementation: the peak resident set sampled every 2 ms during one
set_image, minus the resident set just before it.
"""

import argparse
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from common import print_table, summarize, time_call, write_results  # noqa: E402


def build(which: str, model: str, checkpoint: str, attention: str = "auto"):
    if which == "reference":
        from segment_anything import SamPredictor, sam_model_registry

        return SamPredictor(sam_model_registry[model](checkpoint=checkpoint))
    import sam_edge

    sam = sam_edge.sam_model_registry[model](checkpoint=checkpoint)
    sam.image_encoder.set_attention_backend(attention)
    return sam_edge.SamPredictor(sam)


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_memory_child(which: str, model: str, checkpoint: str, attention: str) -> None:
    import threading
    import time

    from skimage import data

    predictor = build(which, model, checkpoint, attention)
    image = data.coffee()
    before = _rss_mib()
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_mib())
            time.sleep(0.002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    predictor.set_image(image)
    done.set()
    sampler.join()
    print(peak[0] - before)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_b", choices=["vit_b", "vit_l", "vit_h"])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--prompts", type=int, default=20, help="predict calls timed per repeat")
    parser.add_argument("--checkpoint", help="official checkpoint; seeded random weights if omitted")
    parser.add_argument("--_child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child:
        peak_memory_child(args._child[0], args.model, args.checkpoint, args._child[1])
        return

    from skimage import data

    checkpoint = args.checkpoint
    if checkpoint is None:
        from segment_anything import sam_model_registry

        torch.manual_seed(0)
        checkpoint = os.path.join(tempfile.mkdtemp(), f"sam_{args.model}_random.pth")
        torch.save(sam_model_registry[args.model]().state_dict(), checkpoint)
        print(f"using seeded random weights ({checkpoint})")

    impls = {"reference": ("reference", "auto"), "sam_edge (sdpa)": ("ours", "sdpa"),
             "sam_edge (reference attention)": ("ours", "reference")}
    predictors = {name: build(w, args.model, checkpoint, a) for name, (w, a) in impls.items()}
    image = data.coffee()
    rng = np.random.default_rng(0)
    points = [(rng.uniform(0, 600, (2, 2)), np.array([1, 0])) for _ in range(args.prompts)]

    embed = {n: [] for n in predictors}
    predict = {n: [] for n in predictors}
    for _ in range(args.repeat):  # interleaved
        for name, p in predictors.items():
            embed[name] += time_call(lambda: p.set_image(image), repeat=1, warmup=0)
            predict[name] += [
                t / args.prompts
                for t in time_call(lambda: [p.predict(c, l) for c, l in points], repeat=1, warmup=1)
            ]

    memory = {}
    for name, (which, attention) in impls.items():
        out = subprocess.run(
            [sys.executable, __file__, "--model", args.model, "--checkpoint", checkpoint, "--_child", which, attention, "x"],
            capture_output=True, text=True, check=True,
        )
        memory[name] = float(out.stdout.strip().splitlines()[-1])

    ref_embed = summarize(embed["reference"])["median_ms"]
    ref_predict = summarize(predict["reference"])["median_ms"]
    rows = []
    for name in predictors:
        e, p = summarize(embed[name]), summarize(predict[name])
        rows.append({
            "impl": name,
            "set_image_ms": e["median_ms"], "set_image_iqr_ms": e["iqr_ms"],
            "speedup_set_image": ref_embed / e["median_ms"],
            "speedup_set_image_min": summarize(embed["reference"])["min_ms"] / e["min_ms"],
            "predict_ms": p["median_ms"], "predict_iqr_ms": p["iqr_ms"],
            "speedup_predict": ref_predict / p["median_ms"],
            "speedup_predict_min": summarize(predict["reference"])["min_ms"] / p["min_ms"],
            "set_image_peak_mib": memory[name],
        })
    print(f"\n{args.model}, image 600x400, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{args.repeat} repeats (median; speedup = reference / ours; _min: ratio of fastest runs, robust to load)")
    print_table(rows, list(rows[0]))
    path = write_results(f"predictor-{args.model}", {"model": args.model, "repeat": args.repeat, "rows": rows})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
