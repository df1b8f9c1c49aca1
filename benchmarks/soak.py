"""Soak: many decoder queries and encoder calls in one process, sampling RSS,
and the peak memory of one encoder call per model size and precision.

    PYTHONPATH=. python benchmarks/soak.py --queries 10000 --encoder-calls 200 \
        --peak vit_b:fp32,vit_b:int8

The soak runs on a bundle of the reduced test config (2 blocks, 256 px; built
with seeded random weights unless --bundle names one): memory behaviour of
the runtime does not depend on the model's size, and the full ViT-B encoder
is too slow on a shared 2-core CPU for 200 calls. It interleaves one encoder
call (set_image on the next of 8 images) with queries/encoder-calls decoder
queries of every prompt kind, and samples RSS after every round. Growth is
the highest RSS after warm-up minus RSS at the end of warm-up.

--peak measures full-size bundles (built with random weights into --bundles,
reused when present): the peak RSS added by one encoder call (the kernel's
high-water mark, reset through /proc/self/clear_refs before each call), in
every encoder mode this CPU runs. Writes benchmarks/results/<host>-<date>-soak.json.
"""

import argparse
import gc
import os
import sys
import tempfile
import time
from typing import Dict, List, Optional

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import print_table, write_results  # noqa: E402

WARMUP_FRACTION = 0.1
N_IMAGES = 8


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark (VmHWM) to the current RSS; False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _prompts(rng: np.random.Generator, shape) -> List[dict]:
    h, w = shape[:2]
    point = np.array([[rng.uniform(0, w - 1), rng.uniform(0, h - 1)]])
    x0, x1 = np.sort(rng.uniform(0, w - 1, 2))
    y0, y1 = np.sort(rng.uniform(0, h - 1, 2))
    return [
        dict(point_coords=point, point_labels=np.array([1])),
        dict(box=np.array([x0, y0, x1, y1]), multimask_output=False),
        dict(point_coords=point, point_labels=np.array([0]), box=np.array([x0, y0, x1, y1])),
    ]


def soak(engine, queries: int, encoder_calls: int, seed: int = 0, on_round=None) -> Dict[str, object]:
    """Run `queries` decoder queries and `encoder_calls` encoder calls on one
    predictor over `engine`; RSS samples after every round (one encoder call and
    its share of queries). Returns {"samples": [(queries done, encoder calls done,
    rss MB)], "growth_mb", "warmup_rounds", "seconds"}."""
    from sam_edge import SamPredictor

    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 256, (int(rng.integers(64, 400)), int(rng.integers(64, 400)), 3), dtype=np.uint8)
              for _ in range(N_IMAGES)]
    predictor = SamPredictor(engine)
    mask_side = predictor.backend.mask_input_size
    rounds = max(1, encoder_calls)
    per_round = [queries // rounds + (1 if r < queries % rounds else 0) for r in range(rounds)]
    warmup = max(1, int(rounds * WARMUP_FRACTION))
    samples = []
    done = 0
    t0 = time.perf_counter()
    for r in range(rounds):
        image = images[r % N_IMAGES]
        predictor.set_image(image)
        low_res = None
        for q in range(per_round[r]):
            kwargs = _prompts(rng, image.shape)[q % 3]
            if low_res is not None and q % 5 == 4:
                kwargs["mask_input"] = low_res[None, 0]
            masks, scores, low_res = predictor.predict(**kwargs)
            assert low_res.shape[-1] == mask_side
        done += per_round[r]
        gc.collect()
        samples.append((done, r + 1, round(rss_bytes() / 2**20, 2)))
        if on_round is not None:
            on_round(samples[-1])
    seconds = time.perf_counter() - t0
    after = [s[2] for s in samples[warmup - 1:]]
    return {
        "samples": samples,
        "warmup_rounds": warmup,
        "rss_at_warmup_mb": after[0],
        "rss_final_mb": samples[-1][2],
        "growth_mb": round(max(after) - after[0], 2),
        "seconds": round(seconds, 1),
    }


def encoder_peak(bundle: str, native_attention: Optional[bool], calls: int = 3) -> Dict[str, object]:
    """Peak RSS added by one encoder call (MB, per call) on a full-size bundle."""
    import sam_edge

    engine = sam_edge.load(bundle, native_attention=native_attention, threads=None)
    side = engine.image_size
    image = np.random.default_rng(0).uniform(0, 255, (1, 3, side, side)).astype(np.float32)
    added, seconds = [], []
    for _ in range(calls):
        gc.collect()
        start = rss_bytes()
        if not reset_peak_rss():
            return {"encoder_mode": engine.encoder_mode, "error": "cannot reset VmHWM (/proc/self/clear_refs)"}
        t0 = time.perf_counter()
        engine.embed(image)
        seconds.append(time.perf_counter() - t0)
        added.append(round((_status_kb("VmHWM") * 1024 - start) / 2**20, 1))
    return {"encoder_mode": engine.encoder_mode, "peak_added_mb_per_call": added,
            "peak_added_mb_max": max(added), "seconds_per_call": [round(s, 2) for s in seconds]}


def tiny_bundle(root: str) -> str:
    from sam_edge import get_config
    from sam_edge.export.build import build_bundle

    path = os.path.join(root, "vit_b-d2-256-soak")
    if not os.path.exists(os.path.join(path, "manifest.json")):
        build_bundle(path, get_config("vit_b").reduced(depth=2, image_size=256), precision="fp32", quiet=True,
                     overwrite=True)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=10000)
    parser.add_argument("--encoder-calls", type=int, default=200)
    parser.add_argument("--bundle", default=None, help="bundle to soak (default: a reduced-config test bundle)")
    parser.add_argument("--peak", default="vit_b:fp32",
                        help="model:precision list for the per-call encoder peak ('' for none)")
    parser.add_argument("--bundles", default=os.path.join(tempfile.gettempdir(), "sam-edge-bench-bundles"))
    parser.add_argument("--calib-images", type=int, default=4)
    parser.add_argument("--tag", default=None)
    args = parser.parse_args()

    import sam_edge
    from sam_edge.kernels.cpu_attention import cpu_kernel_status

    bundle = args.bundle or tiny_bundle(args.bundles)
    engine = sam_edge.load(bundle)
    print(f"soak: {args.queries} queries, {args.encoder_calls} encoder calls on {bundle} ({engine.encoder_mode})")
    result = soak(engine, args.queries, args.encoder_calls,
                  on_round=lambda s: print(f"  {s[0]:6d} queries {s[1]:4d} encoder calls  RSS {s[2]:.1f} MB")
                  if s[1] % 20 == 0 else None)
    print(f"RSS growth after warm-up: {result['growth_mb']} MB ({result['rss_at_warmup_mb']} -> max over the rest)")
    peaks = []
    for item in filter(None, args.peak.split(",")):
        from bench_onnxruntime import ensure_bundle

        model, precision = item.split(":")
        path = ensure_bundle(args.bundles, model, precision, args.calib_images)
        modes = [False] + ([True] if cpu_kernel_status()["avx512"] else [])
        for native in modes:
            peak = dict(model=model, precision=precision, **encoder_peak(path, native))
            print(peak)
            peaks.append(peak)
    payload = {
        "soak": dict(result, bundle=os.path.basename(bundle.rstrip("/")),
                     encoder_mode=engine.encoder_mode, queries=args.queries, encoder_calls=args.encoder_calls,
                     note="reduced config (vit_b, 2 blocks, 256 px) for the soak; --peak bundles are full size"),
        "encoder_peak": peaks,
        "kernel": cpu_kernel_status(),
    }
    if peaks:
        print_table([{k: v for k, v in p.items() if not isinstance(v, list)} for p in peaks],
                    ["model", "precision", "encoder_mode", "peak_added_mb_max"])
    print(write_results("soak", payload, tag=args.tag))
    return 0


if __name__ == "__main__":
    sys.exit(main())
