"""Benchmark SAM's rel-pos attention: Triton kernels vs the reference and SDPA, per ViT size.

For each model size (vit_b: 12 heads x 64, vit_l: 16 x 64, vit_h: 16 x 80) and
each block kind of the 1024x1024 encoder (64x64 token grid):

* windowed: 14x14 windows, 25 per image (the grid is padded to 70x70; padded
  keys are the qkv bias), through ``windowed_rel_pos_attention``;
* global: all 4096 tokens attend to each other, through ``rel_pos_attention``;

it times
* triton: the fused kernels (``backend="triton"``),
* reference: the plain torch op (materialises bias and attention),
* sdpa+bias: ``F.scaled_dot_product_attention`` with the decomposed bias built
  as an additive float mask (what a stock PyTorch port does),

and reports the median and spread over repeated runs, the ratios measured in
this process, and the device floors: attention FLOPs / peak matmul throughput
(4 * queries * keys * head_dim per head, counting the queries the kernel
computes: padded queries are not) and bytes / peak bandwidth (q, k, v read
once, output written once).

Usage:
    python benchmarks/bench_attention.py [--sizes vit_b vit_h] [--dtypes bf16 fp16] [--batch 1]

Writes benchmarks/results/<device>-<date>-attention.json. Exits with a message
(status 0, nothing measured) when there is no CUDA device; ``--cpu-interpret``
instead runs tiny shapes in the Triton CPU interpreter as a smoke test (no JSON
unless --json is given).
"""

from __future__ import annotations

import argparse
import os
import sys

SIZES = {
    # name: (heads, head_dim), as in the official build_sam configs (embed dim / heads).
    "vit_b": (12, 64),
    "vit_l": (16, 64),
    "vit_h": (16, 80),
}
DTYPES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    p.add_argument("--dtypes", nargs="+", default=["bf16", "fp16"], choices=list(DTYPES))
    p.add_argument("--kinds", nargs="+", default=["windowed", "global"], choices=["windowed", "global"])
    p.add_argument("--batch", type=int, default=1, help="images per call")
    p.add_argument("--grid", type=int, default=64, help="token grid side (64 for a 1024 input)")
    p.add_argument("--window", type=int, default=14)
    p.add_argument("--repeats", type=int, default=20, help="timed runs per measurement")
    p.add_argument("--peak-tflops", type=float, default=None, help="override the matmul peak of this dtype")
    p.add_argument("--peak-tbps", type=float, default=None, help="override the memory bandwidth peak")
    p.add_argument("--json", default=None, help="output path (default benchmarks/results/<device>-<date>-attention.json)")
    p.add_argument(
        "--cpu-interpret", action="store_true", help="smoke-run tiny shapes in the Triton interpreter on CPU"
    )
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.cpu_interpret:
        os.environ["TRITON_INTERPRET"] = "1"  # before any kernel is defined

    import gpu_common  # noqa: E402  (sets up sys.path for a checkout)
    import torch
    import torch.nn.functional as F

    if not args.cpu_interpret and not torch.cuda.is_available():
        print(gpu_common.NO_CUDA_MESSAGE.format(script="bench_attention"), file=sys.stderr)
        return 0

    from sam_edge.kernels import (
        available_backends,
        register_backend,
        rel_pos_attention,
        rel_pos_attention_reference,
        windowed_rel_pos_attention,
        windowed_rel_pos_attention_reference,
    )
    from sam_edge.kernels.rel_pos import rel_pos_bias_terms

    def sdpa_with_bias(q, k, v, rel_pos_h, rel_pos_w, q_size, k_size, scale):
        rel_h, rel_w = rel_pos_bias_terms(q, rel_pos_h, rel_pos_w, q_size, k_size)
        B, heads, N, _ = q.shape
        bias = (rel_h[..., :, None] + rel_w[..., None, :]).reshape(B, heads, N, k.shape[2])
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)

    if "sdpa" not in available_backends():  # main may already register the same math
        register_backend("sdpa", sdpa_with_bias)

    if args.cpu_interpret:
        device, device_name = "cpu", "cpu-triton-interpreter"
        sizes = {"tiny": (2, 64), "tiny_h": (2, 80)}
        dtypes, grid, window, repeats = ["fp32"], 8, 4, 2
        timer = lambda fn: gpu_common.time_cpu(fn, repeats)  # noqa: E731
    else:
        device, device_name = "cuda", torch.cuda.get_device_name()
        sizes = {name: SIZES[name] for name in args.sizes}
        dtypes, grid, window = args.dtypes, args.grid, args.window
        timer = lambda fn: gpu_common.time_cuda(fn, args.repeats)  # noqa: E731
    peaks = gpu_common.device_peaks(device_name) if device == "cuda" else None

    rows = []
    gen = torch.Generator(device=device).manual_seed(0)
    for size, (heads, head_dim) in sizes.items():
        for dtype_name in dtypes:
            dtype = getattr(torch, DTYPES[dtype_name])
            for kind in args.kinds:
                B, N = args.batch, grid * grid
                q, k, v = (torch.randn(B, heads, N, head_dim, device=device, dtype=dtype, generator=gen) for _ in range(3))
                table = 2 * (window if kind == "windowed" else grid) - 1
                rph, rpw = (
                    0.5 * torch.randn(table, head_dim, device=device, dtype=dtype, generator=gen) for _ in range(2)
                )
                if kind == "windowed":
                    pad_k, pad_v = (torch.randn(heads, head_dim, device=device, dtype=dtype, generator=gen) for _ in range(2))
                    shape = ((grid, grid), window, pad_k, pad_v)
                    runs = {
                        "triton": lambda: windowed_rel_pos_attention(q, k, v, rph, rpw, *shape, backend="triton"),
                        "reference": lambda: windowed_rel_pos_attention_reference(
                            q, k, v, rph, rpw, *shape, backend="reference"
                        ),
                        "sdpa+bias": lambda: windowed_rel_pos_attention_reference(
                            q, k, v, rph, rpw, *shape, backend="sdpa"
                        ),
                    }
                    keys_per_query = window * window
                else:
                    sz = (grid, grid)
                    runs = {
                        "triton": lambda: rel_pos_attention(q, k, v, rph, rpw, sz, sz, backend="triton"),
                        "reference": lambda: rel_pos_attention_reference(q, k, v, rph, rpw, sz, sz),
                        "sdpa+bias": lambda: rel_pos_attention(q, k, v, rph, rpw, sz, sz, backend="sdpa"),
                    }
                    keys_per_query = N

                fast, ref = runs["triton"]().float(), runs["reference"]().float()
                rel_err = ((fast - ref).norm() / ref.norm()).item()
                timings = {name: timer(fn) for name, fn in runs.items()}

                flops = 4.0 * B * heads * N * keys_per_query * head_dim
                bytes_moved = 4.0 * B * heads * N * head_dim * q.element_size()
                peak_tflops = args.peak_tflops or (peaks[dtype_name] if peaks else None)
                peak_tbps = args.peak_tbps or (peaks["tbps"] if peaks else None)
                flop_floor = flops / (peak_tflops * 1e12) * 1e3 if peak_tflops else None
                byte_floor = bytes_moved / (peak_tbps * 1e12) * 1e3 if peak_tbps else None
                floor = max(f for f in (flop_floor, byte_floor) if f is not None) if (flop_floor or byte_floor) else None
                t = timings["triton"]["median_ms"]
                rows.append(
                    {
                        "size": size,
                        "kind": kind,
                        "dtype": dtype_name,
                        "batch": B,
                        "heads": heads,
                        "head_dim": head_dim,
                        "tokens": N,
                        "keys_per_query": keys_per_query,
                        "triton_ms": t,
                        "reference_ms": timings["reference"]["median_ms"],
                        "sdpa_ms": timings["sdpa+bias"]["median_ms"],
                        "speedup_vs_reference": timings["reference"]["median_ms"] / t,
                        "speedup_vs_sdpa": timings["sdpa+bias"]["median_ms"] / t,
                        "triton_tflops": flops / (t * 1e-3) / 1e12,
                        "flop_floor_ms": flop_floor,
                        "byte_floor_ms": byte_floor,
                        "fraction_of_floor": floor / t if floor else None,
                        "rel_l2_vs_reference": rel_err,
                        "timings": timings,
                        "flops": flops,
                        "bytes": bytes_moved,
                    }
                )
                del q, k, v, runs
                if device == "cuda":
                    torch.cuda.empty_cache()

    columns = [
        "size", "kind", "dtype", "triton_ms", "reference_ms", "sdpa_ms", "speedup_vs_reference",
        "speedup_vs_sdpa", "triton_tflops", "flop_floor_ms", "byte_floor_ms", "fraction_of_floor",
        "rel_l2_vs_reference",
    ]
    print(f"device: {device_name}  batch: {args.batch}  grid: {grid}x{grid}  window: {window}")
    gpu_common.print_table(rows, columns)
    if peaks is None and device == "cuda" and not (args.peak_tflops and args.peak_tbps):
        print(f"(no datasheet peaks known for {device_name!r}: pass --peak-tflops/--peak-tbps for floors)")

    if not args.cpu_interpret or args.json:
        payload = {
            "benchmark": "rel_pos_attention",
            "environment": gpu_common.environment(device_name),
            "peaks": {"tflops": args.peak_tflops, "tbps": args.peak_tbps, "datasheet": peaks},
            "settings": {"batch": args.batch, "grid": grid, "window": window, "repeats": args.repeats},
            "rows": rows,
        }
        print("wrote", gpu_common.write_results("attention", device_name, payload, args.json))
    return 0


if __name__ == "__main__":
    sys.exit(main())
