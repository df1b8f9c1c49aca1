"""ONNX Runtime bundles against the official segment_anything (torch), in one process.

Per precision: encoder latency (1024 px, batch 1), decoder latency per prompt
(one prompt per call, and 16 prompts per call), peak RSS added while running
that path, and the encoder's FLOP floor at that precision on this CPU (FLOPs
from the config; peak from a measured large matmul in ONNX Runtime at the
same precision, same threads). Writes JSON and prints a table.

    PYTHONPATH=. python benchmarks/bench_onnxruntime.py --model vit_b --precisions fp32,int8 --threads 2

Bundles are built with seeded random weights (speed does not depend on the
values) into --bundles (reused when present). A bundle with an encoder ops
graph is timed in both encoder modes (--encoder-modes): that graph, with
sam-edge's attention op ("+ attention kernel"), and its standard encoder graph.
"""

import argparse
import datetime
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import cpu_features, time_call  # noqa: E402
from sam_edge.bench.host import cpu_model  # noqa: E402

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


# ---- measurement helpers -----------------------------------------------------
def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRss:
    """Samples the process RSS every 5 ms; `.peak - .start` is what a block added at most."""

    def __enter__(self):
        gc.collect()
        self.start = self.peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(0.005)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())

    @property
    def added_mb(self) -> float:
        return (self.peak - self.start) / 2**20


def timed(fn, repeat: int, warmup: int = 1):
    ms = sorted(1000 * t for t in time_call(fn, repeat, warmup))
    return {"median_ms": statistics.median(ms), "min_ms": ms[0], "max_ms": ms[-1], "n": len(ms)}


def encoder_flops(config) -> float:
    """Multiply-adds x 2 of the image encoder at batch 1 (linear layers, attention
    incl. windows' padding, rel-pos terms, patch embedding, neck)."""
    d, s, p, ws = config.encoder_embed_dim, config.image_size, config.patch_size, config.window_size
    g = s // p
    n = g * g
    heads_dim = d  # all heads together
    flops = 2 * n * (3 * p * p) * d  # patch embedding
    for i in range(config.encoder_depth):
        flops += 2 * n * d * (3 * d + d + 2 * int(d * config.mlp_ratio))  # qkv, proj, mlp
        if i in config.encoder_global_attn_indexes:
            tokens, keys, side = n, n, g
        else:
            padded = -(-g // ws) * ws
            tokens, keys, side = padded * padded, ws * ws, ws
        flops += 2 * 2 * tokens * keys * heads_dim  # q k^T and attn v
        flops += 2 * 2 * tokens * side * heads_dim  # rel-pos terms (rows and columns)
    flops += 2 * n * d * config.prompt_embed_dim + 2 * n * config.prompt_embed_dim**2 * 9  # neck
    return float(flops)


def matmul_peak_gflops(precision: str, threads: int, m: int = 4096, k: int = 768, n: int = 3072) -> float:
    """Measured GFLOP/s of an (m, k) x (k, n) MatMul in ONNX Runtime at `precision`
    (the shape of ViT-B's mlp.lin1 at 1024 px): the peak the encoder's linear layers can reach."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if precision in ("int8", "int8-dynamic"):
        w = numpy_helper.from_array(rng.integers(-127, 127, (k, n), dtype=np.int8), "w")
        zero = numpy_helper.from_array(np.array(0, np.uint8), "a_zero")
        node = helper.make_node("MatMulInteger", ["x", "w", "a_zero"], ["y"])
        inputs = [helper.make_tensor_value_info("x", TensorProto.UINT8, [m, k])]
        outputs = [helper.make_tensor_value_info("y", TensorProto.INT32, [m, n])]
        inits = [w, zero]
        x = rng.integers(0, 255, (m, k), dtype=np.uint8)
    else:
        dtype, proto = (np.float16, TensorProto.FLOAT16) if precision == "fp16" else (np.float32, TensorProto.FLOAT)
        inits = [numpy_helper.from_array(rng.standard_normal((k, n)).astype(dtype), "w")]
        node = helper.make_node("MatMul", ["x", "w"], ["y"])
        inputs = [helper.make_tensor_value_info("x", proto, [m, k])]
        outputs = [helper.make_tensor_value_info("y", proto, [m, n])]
        x = rng.standard_normal((m, k)).astype(dtype)
    model = helper.make_model(
        helper.make_graph([node], "matmul", inputs, outputs, inits), opset_imports=[helper.make_opsetid("", 17)]
    )
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    stats = timed(lambda: session.run(None, {"x": x}), repeat=10, warmup=2)
    return 2 * m * k * n / (stats["min_ms"] / 1000) / 1e9


# ---- the paths ------------------------------------------------------------------
def bench_reference(model_type: str, threads: int, repeat: int, prompts: int):
    import torch
    from segment_anything import sam_model_registry

    torch.set_num_threads(threads)
    with PeakRss() as rss:
        torch.manual_seed(0)
        sam = sam_model_registry[model_type]().eval()
        x = torch.randn(1, 3, 1024, 1024)
        with torch.inference_mode():
            encoder = timed(lambda: sam.image_encoder(x), repeat)
            emb = sam.image_encoder(x)
            pe = sam.prompt_encoder.get_dense_pe()

            def decode(batch):
                coords = torch.rand(batch, 2, 2) * 1024
                labels = torch.ones(batch, 2, dtype=torch.int)
                sparse, dense = sam.prompt_encoder((coords, labels), None, None)
                return sam.mask_decoder(emb, pe, sparse, dense, multimask_output=True)

            decoder_one = timed(lambda: decode(1), repeat * 4)
            decoder_many = timed(lambda: decode(prompts), repeat)
    del sam
    return encoder, decoder_one, decoder_many, rss.added_mb


def bench_bundle(bundle: str, threads: int, repeat: int, prompts: int, native_attention=None):
    import sam_edge

    with PeakRss() as rss:
        engine = sam_edge.load(bundle, threads=threads, native_attention=native_attention)
        mode = engine.encoder_mode
        x = np.random.default_rng(0).uniform(0, 255, (1, 3, 1024, 1024)).astype(np.float32)
        encoder = timed(lambda: engine.embed(x), repeat)
        emb = engine.embed(x)
        rng = np.random.default_rng(1)

        def decode(batch):
            coords = (rng.uniform(0, 1024, (batch, 1, 2))).astype(np.float32)
            return engine.decode(emb, coords, np.ones((batch, 1), np.int64), None, None, True)

        decoder_one = timed(lambda: decode(1), repeat * 4)
        decoder_many = timed(lambda: decode(prompts), repeat)
        # The split decoder's image part runs once per embedding, on its first prompt
        # (decoder_one above reuses it, as a predictor does for every later prompt).
        image_part = None
        if getattr(engine, "decoder_image", None) is not None:
            image_part = timed(lambda: engine.decoder_image.run(None, {"image_embeddings": emb}), repeat * 4)
    del engine
    return encoder, decoder_one, decoder_many, image_part, rss.added_mb, mode


def ensure_bundle(root: str, model_type: str, precision: str, calib_images: int) -> str:
    from sam_edge import get_config
    from sam_edge.export.build import build_bundle

    path = os.path.join(root, f"{model_type}-{precision}")
    if not os.path.exists(os.path.join(path, "manifest.json")):
        build_bundle(path, get_config(model_type), precision=precision, num_calib_images=calib_images,
                     official_decoder=False, overwrite=True)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit_b", choices=["vit_b", "vit_l", "vit_h"])
    parser.add_argument("--precisions", default="fp32,int8,int8-dynamic,fp16")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3, help="timed encoder runs per path (decoder: 4x)")
    parser.add_argument("--prompts", type=int, default=16, help="prompts per call in the batched decoder timing")
    parser.add_argument("--calib-images", type=int, default=4)
    parser.add_argument("--bundles", default=os.path.join(tempfile.gettempdir(), "sam-edge-bench-bundles"),
                        help="where bundles are built (and reused)")
    parser.add_argument("--encoder-modes", default="native,single",
                        help="for bundles with an encoder ops graph: native (sam-edge's attention op, load()'s "
                             "default where it can run) and/or single (the standard encoder graph)")
    parser.add_argument("--tag", default=None, help="results file tag (default cpu-<threads>core-<date>)")
    args = parser.parse_args()
    modes = [m for m in args.encoder_modes.split(",") if m]
    if not modes or any(m not in ("native", "single") for m in modes):
        parser.error(f"--encoder-modes: a comma list of native, single; got {args.encoder_modes!r}")

    from sam_edge import get_config

    config = get_config(args.model)
    flops = encoder_flops(config)
    load_start = os.getloadavg()
    rows = []
    ref_enc, ref_one, ref_many, ref_rss = bench_reference(args.model, args.threads, args.repeat, args.prompts)
    peak32 = matmul_peak_gflops("fp32", args.threads)
    rows.append({
        "path": "official torch (reference)", "precision": "fp32",
        "encoder": ref_enc, "decoder_one_prompt": ref_one, "decoder_per_prompt_batched": _per(ref_many, args.prompts),
        "peak_rss_added_mb": ref_rss, "matmul_peak_gflops": peak32,
        "encoder_floor_ms": flops / peak32 / 1e6,
    })
    for precision in [p for p in args.precisions.split(",") if p]:
        bundle = ensure_bundle(
            os.path.abspath(args.bundles), args.model, precision, args.calib_images
        )
        peak = matmul_peak_gflops(precision, args.threads)
        with open(os.path.join(bundle, "manifest.json")) as f:
            has_ops_graph = "encoder_ops" in json.load(f)
        for mode in (modes if has_ops_graph else ["single"]):
            enc, one, many, image_part, rss, encoder_mode = bench_bundle(
                bundle, args.threads, args.repeat, args.prompts, native_attention=None if mode == "native" else False
            )
            rows.append({
                "path": "sam-edge onnxruntime" + (" + attention kernel" if encoder_mode.startswith("one graph") else ""),
                "precision": precision, "encoder_mode": encoder_mode,
                "encoder": enc, "decoder_one_prompt": one, "decoder_per_prompt_batched": _per(many, args.prompts),
                "decoder_image_part_once_per_image": image_part,
                "peak_rss_added_mb": rss, "matmul_peak_gflops": peak,
                "encoder_floor_ms": flops / peak / 1e6,
            })
    ref = rows[0]
    for row in rows:
        # On a shared machine the minimum is the least disturbed run; both are reported.
        row["encoder_speedup"] = ref["encoder"]["median_ms"] / row["encoder"]["median_ms"]
        row["encoder_speedup_min"] = ref["encoder"]["min_ms"] / row["encoder"]["min_ms"]
        row["decoder_speedup"] = ref["decoder_one_prompt"]["median_ms"] / row["decoder_one_prompt"]["median_ms"]
        row["encoder_fraction_of_floor"] = row["encoder_floor_ms"] / row["encoder"]["median_ms"]

    import onnxruntime
    import torch

    date = datetime.date.today().isoformat()
    tag = args.tag or f"cpu-{args.threads}core-{date}"
    payload = {
        "benchmark": "bench_onnxruntime", "model": args.model, "threads": args.threads, "repeat": args.repeat,
        "encoder_gflops": flops / 1e9, "rows": rows, "date": date,
        "hardware": {"cpu": cpu_model(), "cpu_features": cpu_features(), "cpus_visible": os.cpu_count(),
                     "machine": platform.machine(),
                     "load_average_at_start": load_start, "load_average_at_end": os.getloadavg()},
        "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__},
        "note": "shared machine: other jobs ran concurrently (see load averages); '% floor' uses the median",
    }
    os.makedirs(RESULTS_DIR, exist_ok=True)
    stem = os.path.join(RESULTS_DIR, f"{tag}-onnxruntime-{args.model}")
    with open(stem + ".json", "w") as f:
        json.dump(payload, f, indent=2)
    table = format_table(payload)
    with open(stem + ".txt", "w") as f:
        f.write(table + "\n")
    print(table)
    print(f"wrote {stem}.json")
    return 0


def _per(stats, prompts):
    return {k: (v / prompts if k.endswith("_ms") else v) for k, v in stats.items()}


def format_table(payload) -> str:
    lines = [
        f"{payload['model']} encoder {payload['encoder_gflops']:.0f} GFLOP, {payload['threads']} threads, "
        f"{payload['hardware']['cpu']} ({' '.join(payload['hardware'].get('cpu_features', [])) or 'features unknown'}), "
        f"load avg start {payload['hardware']['load_average_at_start'][0]:.2f} "
        f"end {payload['hardware']['load_average_at_end'][0]:.2f}",
        f"{'path':<45}{'prec':<14}{'enc median ms':>14}{'x ref':>7}{'enc min ms':>11}{'x ref':>7}"
        f"{'floor ms':>10}{'% floor':>9}{'dec 1 ms':>10}{'x ref':>7}{'dec/prompt@16':>15}{'RSS+ MB':>9}"
        f"{'dec image part ms':>19}",
    ]
    for r in payload["rows"]:
        image_part = r.get("decoder_image_part_once_per_image")
        lines.append(
            f"{r['path']:<45}{r['precision']:<14}{r['encoder']['median_ms']:>14.0f}{r['encoder_speedup']:>7.2f}"
            f"{r['encoder']['min_ms']:>11.0f}{r['encoder_speedup_min']:>7.2f}"
            f"{r['encoder_floor_ms']:>10.0f}{100 * r['encoder_fraction_of_floor']:>8.0f}%"
            f"{r['decoder_one_prompt']['median_ms']:>10.1f}{r['decoder_speedup']:>7.2f}"
            f"{r['decoder_per_prompt_batched']['median_ms']:>15.2f}{r['peak_rss_added_mb']:>9.0f}"
            + (f"{image_part['median_ms']:>19.1f}" if image_part else f"{'-':>19}")
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
