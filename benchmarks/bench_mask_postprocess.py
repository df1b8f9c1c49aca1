"""Benchmark mask post-processing: the fused Triton pass vs the step-by-step torch reference.

Cases are SAM's real shapes: (B, C, 256, 256) low-res logits in the 1024 frame,
upscaled to common photo sizes, for the predictor (1 prompt x 3 masks) and the
automatic mask generator (64 points x 3 masks per batch). Timed:

* triton: ``mask_postprocess(..., backend="triton")`` (one kernel + tiny torch epilogue),
* cuda (fp32 inputs, where ``sam_edge.postprocess.cuda.available()``): the
  ``_C_cuda`` fused kernel the TensorRT backend uses, through its checked
  entry point ``sam_edge.postprocess.cuda.upsample_threshold_stability``,
* reference: ``mask_postprocess_reference`` (two F.interpolate, threshold,
  stability counts, boxes: what the official predictor + AMG do),
* upscale only: the two F.interpolate of the official ``postprocess_masks``,
  without threshold, scores or boxes,

with the median and spread over repeated runs, the ratios measured in this
process, and the byte floor (low-res logits read + one byte per output mask
pixel written) at the device's datasheet bandwidth.

Usage:
    python benchmarks/bench_mask_postprocess.py [--repeats 20] [--dtypes fp32 fp16]

Writes benchmarks/results/<device>-<date>-mask_postprocess.json. Exits with a
message (status 0, nothing measured) when there is no CUDA device;
``--cpu-interpret`` runs a tiny case in the Triton CPU interpreter as a smoke test.
"""

from __future__ import annotations

import argparse
import os
import sys

# name: (B, C, input_size, original_size); input_size = original scaled so the long side is 1024.
CASES = {
    "predictor-1500x2250": (1, 3, (683, 1024), (1500, 2250)),
    "predictor-1080p": (1, 3, (576, 1024), (1080, 1920)),
    "predictor-4k": (1, 3, (576, 1024), (2160, 3840)),
    "amg-batch-1080p": (64, 3, (576, 1024), (1080, 1920)),
    "predictor-480x640": (1, 3, (768, 1024), (480, 640)),
}
DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--dtypes", nargs="+", default=["fp32"], choices=list(DTYPES))
    p.add_argument("--repeats", type=int, default=20, help="timed runs per measurement")
    p.add_argument("--peak-tbps", type=float, default=None, help="override the memory bandwidth peak")
    p.add_argument("--json", default=None)
    p.add_argument("--cpu-interpret", action="store_true", help="smoke-run a tiny case in the Triton interpreter")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.cpu_interpret:
        os.environ["TRITON_INTERPRET"] = "1"  # before any kernel is defined

    import gpu_common  # noqa: E402  (sets up sys.path for a checkout)
    import torch

    if not args.cpu_interpret and not torch.cuda.is_available():
        print(gpu_common.NO_CUDA_MESSAGE.format(script="bench_mask_postprocess"), file=sys.stderr)
        return 0

    from sam_edge.postprocess.torch_ops import mask_postprocess, mask_postprocess_reference, upscale_mask_logits
    from sam_edge.postprocess import cuda as postprocess_cuda

    if args.cpu_interpret:
        device, device_name = "cpu", "cpu-triton-interpreter"
        cases = {"tiny": (1, 2, (48, 64), (30, 40))}
        image_size, low_res, repeats = 64, 16, 2
        timer = lambda fn: gpu_common.time_cpu(fn, repeats)  # noqa: E731
    else:
        device, device_name = "cuda", torch.cuda.get_device_name()
        cases = {name: CASES[name] for name in args.cases}
        image_size, low_res = 1024, 256
        timer = lambda fn: gpu_common.time_cuda(fn, args.repeats)  # noqa: E731
    peaks = gpu_common.device_peaks(device_name) if device == "cuda" else None
    peak_tbps = args.peak_tbps or (peaks["tbps"] if peaks else None)

    rows = []
    gen = torch.Generator(device=device).manual_seed(0)
    for name, (B, C, input_size, original_size) in cases.items():
        for dtype_name in args.dtypes if not args.cpu_interpret else ["fp32"]:
            dtype = getattr(torch, DTYPES[dtype_name])
            coarse = 6 * torch.randn(B, C, 8, 8, device=device, generator=gen)
            low = torch.nn.functional.interpolate(coarse, (low_res, low_res), mode="bilinear").to(dtype)
            kwargs = dict(image_size=image_size)
            runs = {
                "triton": lambda: mask_postprocess(low, input_size, original_size, backend="triton", **kwargs),
                "reference": lambda: mask_postprocess_reference(low, input_size, original_size, **kwargs),
                "upscale_only": lambda: upscale_mask_logits(low, input_size, original_size, image_size),
            }
            if device == "cuda" and dtype == torch.float32 and postprocess_cuda.available():
                runs["cuda"] = lambda: postprocess_cuda.upsample_threshold_stability(
                    low, input_size, original_size, frame_size=image_size)
            fast_masks, fast_stab, fast_boxes = runs["triton"]()
            ref_masks, ref_stab, ref_boxes = runs["reference"]()
            differing = (fast_masks != ref_masks).sum().item()
            cuda_differing = (runs["cuda"]()[0] != ref_masks).sum().item() if "cuda" in runs else None
            timings = {k: timer(fn) for k, fn in runs.items()}
            H, W = original_size
            bytes_moved = low.numel() * low.element_size() + B * C * H * W
            floor = bytes_moved / (peak_tbps * 1e12) * 1e3 if peak_tbps else None
            t = timings["triton"]["median_ms"]
            rows.append(
                {
                    "case": name,
                    "dtype": dtype_name,
                    "masks": B * C,
                    "original_size": f"{H}x{W}",
                    "triton_ms": t,
                    "reference_ms": timings["reference"]["median_ms"],
                    "upscale_only_ms": timings["upscale_only"]["median_ms"],
                    "cuda_ms": timings["cuda"]["median_ms"] if "cuda" in timings else None,
                    "speedup_vs_reference": timings["reference"]["median_ms"] / t,
                    "byte_floor_ms": floor,
                    "fraction_of_floor": floor / t if floor else None,
                    "differing_pixels": differing,
                    "cuda_differing_pixels": cuda_differing,
                    "max_stability_diff": (fast_stab - ref_stab).abs().nan_to_num(0.0).max().item(),
                    "boxes_equal": bool(torch.equal(fast_boxes, ref_boxes)),
                    "timings": timings,
                    "bytes": bytes_moved,
                }
            )
            del low, runs
            if device == "cuda":
                torch.cuda.empty_cache()

    columns = [
        "case", "dtype", "masks", "original_size", "triton_ms", "reference_ms", "upscale_only_ms", "cuda_ms",
        "speedup_vs_reference", "byte_floor_ms", "fraction_of_floor", "differing_pixels", "cuda_differing_pixels",
        "boxes_equal",
    ]
    print(f"device: {device_name}; sam_edge._C_cuda: {postprocess_cuda.status()["summary"]}")
    gpu_common.print_table(rows, columns)
    if not args.cpu_interpret or args.json:
        payload = {
            "benchmark": "mask_postprocess",
            "environment": gpu_common.environment(device_name),
            "peaks": {"tbps": args.peak_tbps, "datasheet": peaks},
            "settings": {"repeats": args.repeats, "image_size": image_size, "low_res": low_res},
            "cuda_kernel": postprocess_cuda.status()["summary"],
            "rows": rows,
        }
        print("wrote", gpu_common.write_results("mask_postprocess", device_name, payload, args.json))
    return 0


if __name__ == "__main__":
    sys.exit(main())
