"""TensorRT bundles against sam-edge's PyTorch model (fp32 and bf16) on the same GPU, in one process.

Per model size and precision:
  * encoder: latency at batch 1 (from a resized host image, as set_image) and throughput
    (images/s) at the engine's max batch;
  * decoder: latency of one single-point prompt (low-res logits, decode only), of
    predict() (decode + resize to a 1500 x 1000 image + copy to the host), and
    batched-prompt throughput (prompts/s, --prompt-batch one-point prompts per call).
The PyTorch rows run the same inputs through the torch model (weights seeded; speed does
not depend on them) in fp32 and under bf16 autocast. Every timed call ends with a device
synchronisation. Where both were measured, int8 is reported beside fp16 (a second table,
and "int8_vs_fp16" in the JSON), with a warning when int8 is not the faster. Writes
benchmarks/results/<gpu>-<date>-tensorrt.json and prints the tables.

    python export/build_tensorrt_all.py --models vit_b --output bundles/
    python benchmarks/bench_tensorrt.py --bundles bundles/tensorrt --models vit_b --precisions fp16,int8
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from common import print_table, summarize, time_call, write_results  # noqa: E402

IMAGE_HW = (1000, 1500)


def requirements() -> str:
    """Why this benchmark cannot run here, or '' when it can."""
    try:
        from sam_edge.runtime.cuda_buffers import CudaError
        from sam_edge.runtime.tensorrt_compat import tensorrt_runtime_info

        tensorrt_runtime_info()
    except ImportError as exc:
        return str(exc)
    except CudaError as exc:
        return f"no usable CUDA GPU: {exc}"
    return ""


def prompts(rng, batch: int):
    coords = rng.uniform((0, 0), (IMAGE_HW[1], IMAGE_HW[0]), size=(batch, 1, 2)).astype(np.float32)
    return coords, np.ones((batch, 1), np.float32)


def bench_tensorrt(bundle: str, repeat: int, prompt_batch: int, rng):
    import sam_edge
    from sam_edge.runtime.bundle import verify_bundle
    from sam_edge.runtime.tensorrt_backend import load_tensorrt_engine

    engine = load_tensorrt_engine(bundle, verify_bundle(bundle))
    predictor = sam_edge.SamPredictor(engine)
    s = engine.image_size
    image = rng.integers(0, 256, (IMAGE_HW[0], IMAGE_HW[1], 3), dtype=np.uint8)
    one = rng.uniform(0, 255, (1, 3, s, s)).astype(np.float32)
    many = rng.uniform(0, 255, (engine.max_batch, 3, s, s)).astype(np.float32)

    def embed(x):
        engine.embed(x)
        engine.synchronize()

    out = {"encoder_batch1": summarize(time_call(lambda: embed(one), repeat, warmup=2))}
    stats = summarize(time_call(lambda: embed(many), repeat, warmup=1))
    out["encoder_images_per_s"] = engine.max_batch / (stats["median_ms"] / 1000)
    predictor.set_image(image)
    features = predictor.features
    coords, labels = prompts(rng, 1)
    transformed = predictor.transform.apply_coords(coords, IMAGE_HW).astype(np.float32)

    def decode(c, lab):
        engine.decode(features, c, lab, None, None, True)
        engine.synchronize()

    out["decode_1_prompt"] = summarize(time_call(lambda: decode(transformed, labels), repeat * 10, warmup=3))
    out["predict_1_prompt"] = summarize(
        time_call(lambda: predictor.predict(coords[0], labels[0].astype(int)), repeat * 10, warmup=3)
    )
    batch = min(prompt_batch, engine.max_prompts)
    c, lab = prompts(rng, batch)
    c = predictor.transform.apply_coords(c, IMAGE_HW).astype(np.float32)
    stats = summarize(time_call(lambda: decode(c, lab), repeat * 5, warmup=2))
    out["batched_prompts_per_s"] = batch / (stats["median_ms"] / 1000)
    out["prompt_batch"] = batch
    out["max_batch"] = engine.max_batch
    out["postprocess"] = engine.postprocess_path
    out["arrays"] = engine.arrays.name
    out["manifest_tensorrt"] = {k: engine.manifest["tensorrt"][k] for k in ("version", "gpu", "compute_capability")}
    engine.close()
    return out


def bench_torch(model_type: str, dtype: str, repeat: int, prompt_batch: int, max_batch: int, rng):
    import contextlib

    import torch

    import sam_edge
    from sam_edge.runtime.torch_backend import TorchBackend

    torch.manual_seed(0)
    sam = sam_edge.sam_model_registry[model_type]().cuda().eval()
    backend = TorchBackend(sam)
    predictor = sam_edge.SamPredictor(sam)
    s = backend.image_size
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if dtype == "bf16" else contextlib.nullcontext
    image = rng.integers(0, 256, (IMAGE_HW[0], IMAGE_HW[1], 3), dtype=np.uint8)
    one = rng.uniform(0, 255, (1, 3, s, s)).astype(np.float32)
    many = rng.uniform(0, 255, (max_batch, 3, s, s)).astype(np.float32)

    def run(fn):
        def call():
            with torch.no_grad(), autocast():
                fn()
            torch.cuda.synchronize()
        return call

    out = {"encoder_batch1": summarize(time_call(run(lambda: backend.embed(backend.from_numpy(one))), repeat, 2))}
    stats = summarize(time_call(run(lambda: backend.embed(backend.from_numpy(many))), repeat, 1))
    out["encoder_images_per_s"] = max_batch / (stats["median_ms"] / 1000)
    with torch.no_grad(), autocast():
        predictor.set_image(image)
    features = predictor.features
    coords, labels = prompts(rng, 1)
    c1 = backend.from_numpy(predictor.transform.apply_coords(coords, IMAGE_HW).astype(np.float32))
    l1 = backend.from_numpy(labels.astype(np.int64))
    out["decode_1_prompt"] = summarize(
        time_call(run(lambda: backend.decode(features, c1, l1, None, None, True)), repeat * 10, 3)
    )
    out["predict_1_prompt"] = summarize(
        time_call(run(lambda: predictor.predict(coords[0], labels[0].astype(int))), repeat * 10, 3)
    )
    c, lab = prompts(rng, prompt_batch)
    cb = backend.from_numpy(predictor.transform.apply_coords(c, IMAGE_HW).astype(np.float32))
    lb = backend.from_numpy(lab.astype(np.int64))
    stats = summarize(time_call(run(lambda: backend.decode(features, cb, lb, None, None, True)), repeat * 5, 2))
    out["batched_prompts_per_s"] = prompt_batch / (stats["median_ms"] / 1000)
    out["prompt_batch"] = prompt_batch
    out["max_batch"] = max_batch
    del sam, backend, predictor
    torch.cuda.empty_cache()
    return out


def row(model, path, result, reference):
    r = {
        "model": model,
        "path": path,
        "enc_ms": result["encoder_batch1"]["median_ms"],
        "enc_iqr": result["encoder_batch1"]["iqr_ms"],
        "img/s": result["encoder_images_per_s"],
        "decode_ms": result["decode_1_prompt"]["median_ms"],
        "predict_ms": result["predict_1_prompt"]["median_ms"],
        "prompts/s": result["batched_prompts_per_s"],
    }
    if reference:
        r["enc_speedup"] = reference["encoder_batch1"]["median_ms"] / r["enc_ms"]
        r["decode_speedup"] = reference["decode_1_prompt"]["median_ms"] / r["decode_ms"]
    return r


def int8_vs_fp16(model, trt_results):
    """One row comparing a model's int8 and fp16 engines (None unless both were measured):
    medians side by side and int8 / fp16 ratios (below 1: int8 is faster)."""
    if not {"int8", "fp16"} <= set(trt_results):
        return None
    fp16, int8 = trt_results["fp16"], trt_results["int8"]
    r = {"model": model}
    for key, label in (("encoder_batch1", "enc_ms"), ("decode_1_prompt", "decode_ms"), ("predict_1_prompt", "predict_ms")):
        r[f"{label} fp16"], r[f"{label} int8"] = fp16[key]["median_ms"], int8[key]["median_ms"]
        r[f"{label} int8/fp16"] = int8[key]["median_ms"] / fp16[key]["median_ms"]
    r["img/s fp16"], r["img/s int8"] = fp16["encoder_images_per_s"], int8["encoder_images_per_s"]
    return r


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundles", default="bundles/tensorrt", help="directory of <model>-<precision> TensorRT bundles")
    parser.add_argument("--models", default="vit_b,vit_l,vit_h")
    parser.add_argument("--precisions", default="fp16,int8")
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--prompt-batch", type=int, default=64, help="prompts per call for the throughput figure")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch reference rows")
    args = parser.parse_args()
    reason = requirements()
    if reason:
        print(f"bench_tensorrt: cannot run here: {reason}", file=sys.stderr)
        return 2
    rng = np.random.default_rng(0)
    results, rows, comparisons = {}, [], []
    for model in [m for m in args.models.split(",") if m]:
        reference = {}
        trt_results = {}
        for precision in [p for p in args.precisions.split(",") if p]:
            bundle = os.path.join(args.bundles, f"{model}-{precision}")
            if not os.path.isfile(os.path.join(bundle, "manifest.json")):
                print(f"bench_tensorrt: no bundle at {bundle}; build it with\n  python export/build_tensorrt_all.py "
                      f"--models {model} --precisions {precision} --output {os.path.dirname(args.bundles) or '.'}",
                      file=sys.stderr)
                continue
            trt_results[precision] = bench_tensorrt(bundle, args.repeat, args.prompt_batch, rng)
        if not trt_results:
            continue
        if not args.no_torch:
            try:
                max_batch = max(r["max_batch"] for r in trt_results.values())
                for dtype in ("fp32", "bf16"):
                    reference[dtype] = bench_torch(model, dtype, args.repeat, args.prompt_batch, max_batch, rng)
            except Exception as exc:  # the reference is optional: say why it is missing
                print(f"bench_tensorrt: PyTorch reference for {model} unavailable: {exc}", file=sys.stderr)
        for dtype, result in reference.items():
            rows.append(row(model, f"torch-{dtype}", result, reference.get("fp32")))
        for precision, result in trt_results.items():
            rows.append(row(model, f"tensorrt-{precision}", result, reference.get("fp32")))
        results[model] = {"tensorrt": trt_results, "torch": reference}
        comparison = int8_vs_fp16(model, trt_results)
        if comparison:
            comparisons.append(comparison)
            results[model]["int8_vs_fp16"] = comparison
    if not rows:
        print("bench_tensorrt: nothing was measured (no bundles found)", file=sys.stderr)
        return 1
    tag = next(iter(next(iter(results.values()))["tensorrt"].values()))["manifest_tensorrt"]["gpu"]
    path = write_results("tensorrt", {"results": results, "args": vars(args)}, tag=tag.replace(" ", "-").lower())
    print_table(rows, ["model", "path", "enc_ms", "enc_iqr", "img/s", "decode_ms", "predict_ms", "prompts/s",
                       "enc_speedup", "decode_speedup"])
    print(f"speedups are against torch-fp32 in the same process; wrote {path}")
    if comparisons:
        from sam_edge.export.tensorrt_precision import int8_latency_warning

        print("\nint8 beside fp16 (ratios below 1: int8 is faster)")
        print_table(comparisons, list(comparisons[0]))
        for r in comparisons:
            warning = int8_latency_warning(r["enc_ms int8"], r["enc_ms fp16"], f"{r['model']} encoder")
            if warning:
                print(warning, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
