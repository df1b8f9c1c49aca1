"""Post-processing ops: ours (compiled and numpy fallback) against the official
implementations, measured in the same process on the same inputs.

References: segment_anything.utils.amg (RLE, boxes, stability, small regions
via cv2), Sam.postprocess_masks (torch F.interpolate), pycocotools and
torchvision.ops.batched_nms. Prints a table and writes JSON to
benchmarks/results/<device>-<date>-postprocess.json.

    python benchmarks/bench_postprocess.py            # ~1-2 minutes on 2 cores
    python benchmarks/bench_postprocess.py --quick    # smaller inputs, a smoke test
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sam_edge.postprocess as pp  # noqa: E402
from sam_edge.postprocess import fallback  # noqa: E402
from sam_edge.bench.host import cpu_model  # noqa: E402


def timeit(fn, budget_s: float, min_reps: int = 3, max_reps: int = 50):
    """Median and spread (p10, p90) of fn's wall time in ms, after a warm-up call."""
    fn()
    times = []
    start = time.perf_counter()
    while len(times) < max_reps and (len(times) < min_reps or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    q = lambda p: times[min(len(times) - 1, int(p * len(times)))]  # noqa: E731
    return {"median_ms": statistics.median(times), "p10_ms": q(0.1), "p90_ms": q(0.9), "reps": len(times)}


def without_compiled(fn):
    """fn run through the public API with the numpy fallback."""

    def run():
        saved = pp._C
        pp._C = None
        try:
            return fn()
        finally:
            pp._C = saved

    return run


def blobby_masks(rng, n, h, w, scale=24):
    noise = torch.from_numpy(rng.standard_normal((n, 1, h // scale, w // scale)).astype(np.float32))
    smooth = F.interpolate(noise, size=(h, w), mode="bicubic", align_corners=False)[:, 0]
    return (smooth > 0.4).numpy()


def official_fused(low_res, input_size, original_size):
    from segment_anything.modeling import Sam
    from segment_anything.utils.amg import batched_mask_to_box, calculate_stability_score

    fake = types.SimpleNamespace(image_encoder=types.SimpleNamespace(img_size=1024))
    logits = Sam.postprocess_masks(fake, low_res, input_size, original_size)
    masks = logits > 0.0
    return masks, calculate_stability_score(logits, 0.0, 1.0), batched_mask_to_box(masks)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small inputs (smoke test)")
    parser.add_argument("--budget", type=float, default=1.0, help="seconds of timing per measurement")
    parser.add_argument("--device-name", default=None, help="results file prefix (default cpu-<cores>core)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = parser.parse_args()

    from pycocotools import mask as mask_utils
    from segment_anything.utils import amg
    import torchvision.ops

    rng = np.random.default_rng(0)
    h, w = (270, 480) if args.quick else (1080, 1920)
    n_masks = 4 if args.quick else 16
    masks = blobby_masks(rng, n_masks, h, w)
    masks_t = torch.from_numpy(masks)
    logits = (rng.standard_normal((n_masks, h, w)) * 4).astype(np.float32)
    logits_t = torch.from_numpy(logits)
    rles = pp.encode_rle(masks)
    uncompressed = pp.mask_to_rle(masks)
    coco = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))

    n_boxes = 1500
    xy = rng.random((n_boxes, 2)).astype(np.float32) * 1000
    boxes = np.concatenate([xy, xy + 20 + rng.random((n_boxes, 2)).astype(np.float32) * 200], axis=1)
    scores = rng.random(n_boxes).astype(np.float32)
    cats = np.zeros(n_boxes, np.int64)
    boxes_t, scores_t, cats_t = map(torch.from_numpy, (boxes, scores, cats))

    low_res = (rng.standard_normal((4, 3, 256, 256)) * 8).astype(np.float32)
    low_res = F.interpolate(torch.from_numpy(low_res[..., ::8, ::8].copy()), (256, 256), mode="bicubic").numpy()
    input_size, original_size = ((144, 256), (270, 480)) if args.quick else ((576, 1024), (1080, 1920))
    low_res_t = torch.from_numpy(low_res)

    def rsr_official(mode):
        return lambda: [amg.remove_small_regions(m, 100, mode) for m in masks]

    def rsr_ours(mode):
        return lambda: [pp.remove_small_regions(m, 100, mode) for m in masks]

    # op -> (what, [(implementation, fn)]); the first reference listed is the one ratios use.
    cases = {
        "mask_to_rle": (
            f"{n_masks} x {h}x{w} masks -> uncompressed RLE",
            [
                ("official amg.mask_to_rle_pytorch", lambda: amg.mask_to_rle_pytorch(masks_t)),
                ("ours", lambda: pp.mask_to_rle(masks)),
            ],
        ),
        "encode_rle": (
            f"{n_masks} x {h}x{w} masks -> compressed RLE",
            [
                (
                    "official mask_to_rle_pytorch + coco_encode_rle",
                    lambda: [amg.coco_encode_rle(r) for r in amg.mask_to_rle_pytorch(masks_t)],
                ),
                (
                    "pycocotools.mask.encode (asfortranarray)",
                    lambda: mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8))),
                ),
                ("ours", lambda: pp.encode_rle(masks)),
            ],
        ),
        "decode_rle uncompressed": (
            f"{n_masks} uncompressed RLEs -> {h}x{w} masks (the generator's binary_mask output)",
            [
                ("official amg.rle_to_mask", lambda: [amg.rle_to_mask(r) for r in uncompressed]),
                ("ours", lambda: pp.decode_rle(uncompressed)),
            ],
        ),
        "decode_rle compressed": (
            f"{n_masks} compressed RLEs -> {h}x{w} masks (pycocotools: Fortran (H, W, N), ours: C (N, H, W))",
            [
                ("pycocotools.mask.decode", lambda: mask_utils.decode(coco)),
                ("ours", lambda: pp.decode_rle(rles)),
            ],
        ),
        "area_from_rle": (
            f"{n_masks} uncompressed RLEs -> areas",
            [
                ("official amg.area_from_rle", lambda: [amg.area_from_rle(r) for r in uncompressed]),
                ("ours", lambda: [pp.area_from_rle(r) for r in uncompressed]),
            ],
        ),
        "masks_to_boxes": (
            f"{n_masks} x {h}x{w} masks -> XYXY",
            [
                ("official amg.batched_mask_to_box", lambda: amg.batched_mask_to_box(masks_t)),
                ("ours", lambda: pp.masks_to_boxes(masks)),
            ],
        ),
        "stability_score": (
            f"{n_masks} x {h}x{w} logits",
            [
                ("official amg.calculate_stability_score", lambda: amg.calculate_stability_score(logits_t, 0.0, 1.0)),
                ("ours", lambda: pp.stability_score(logits, 0.0, 1.0)),
            ],
        ),
        "remove_small_regions holes": (
            f"{n_masks} x {h}x{w} blobby masks, area 100",
            [
                ("official amg.remove_small_regions (cv2)", rsr_official("holes")),
                ("ours", rsr_ours("holes")),
                ("ours batch", lambda: pp.remove_small_regions_batch(masks, 100, "holes")),
            ],
        ),
        "remove_small_regions islands": (
            f"{n_masks} x {h}x{w} blobby masks, area 100",
            [
                ("official amg.remove_small_regions (cv2)", rsr_official("islands")),
                ("ours", rsr_ours("islands")),
                ("ours batch", lambda: pp.remove_small_regions_batch(masks, 100, "islands")),
            ],
        ),
        "batched_nms": (
            f"{n_boxes} boxes, one category, IoU 0.7",
            [
                ("torchvision.ops.batched_nms", lambda: torchvision.ops.batched_nms(boxes_t, scores_t, cats_t, 0.7)),
                ("ours", lambda: pp.batched_nms(boxes, scores, cats, 0.7)),
            ],
        ),
        "upsample_threshold_stability": (
            f"(4, 3, 256, 256) logits -> {original_size[0]}x{original_size[1]} masks + stability + boxes",
            [
                ("official postprocess_masks + amg", lambda: official_fused(low_res_t, input_size, original_size)),
                ("ours", lambda: pp.upsample_threshold_stability(low_res, input_size, original_size)),
            ],
        ),
    }

    threads = pp._C.num_threads() if pp.compiled_available() else 1

    def single_thread(fn):
        def run():
            pp.set_num_threads(1)
            try:
                return fn()
            finally:
                pp.set_num_threads(threads)

        return run

    results = []
    print(f"# sam-edge post-processing benchmark: {pp.active_path()}")
    print(f"# {cpu_model()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.1f}")
    header = f"{'op':30s} {'implementation':48s} {'median ms':>10s} {'p10-p90 ms':>17s} {'vs ref':>8s}"
    print(header)
    print("-" * len(header))
    for op, (what, impls) in cases.items():
        ref_ms = None
        rows = []
        for name, fn in impls:
            variants = [(name, fn)]
            if name.startswith("ours"):
                variants = []
                if pp.compiled_available():
                    variants.append((name + " [compiled]", fn))
                    if threads > 1:
                        variants.append((name + " [compiled, 1 thread]", single_thread(fn)))
                variants.append((name + " [numpy]", without_compiled(fn)))
            for label, f in variants:
                stats = timeit(f, args.budget)
                if ref_ms is None:
                    ref_ms = stats["median_ms"]
                ratio = ref_ms / stats["median_ms"]
                rows.append({"op": op, "input": what, "implementation": label, **stats, "speedup_vs_reference": ratio})
                print(f"{op:30s} {label:48s} {stats['median_ms']:10.2f} "
                      f"{stats['p10_ms']:8.2f}-{stats['p90_ms']:<8.2f} {ratio:7.1f}x")
        results.extend(rows)

    device = args.device_name or f"cpu-{os.cpu_count()}core"
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now(datetime.timezone.utc)
    path = out_dir / f"{device}-{stamp:%Y-%m-%d}-postprocess{'-quick' if args.quick else ''}.json"
    payload = {
        "benchmark": "bench_postprocess",
        "date_utc": stamp.isoformat(timespec="seconds"),
        "device": device,
        "hardware": {"cpu": cpu_model(), "cores": os.cpu_count(), "machine": platform.machine()},
        "load_average_1min": os.getloadavg()[0],
        "active_path": pp.active_path(),
        "versions": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
        },
        "note": "speedup_vs_reference = median of the op's first listed (official) implementation / this median",
        "results": results,
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"# wrote {path}")


if __name__ == "__main__":
    main()
