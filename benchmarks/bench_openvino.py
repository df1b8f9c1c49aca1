"""OpenVINO as a peer row: SAM's image encoder through OpenVINO (fp32, and int8 by
NNCF post-training quantization with its transformer settings) beside sam-edge
bundles and the official package, in one process, on held-out photos.

    pip install openvino nncf          # or: pip install -e ".[openvino]"
    python benchmarks/bench_openvino.py --model vit_b --bundle out/vit_b-int8 [--bundle ...]
        [--checkpoint sam_vit_b_01ec64.pth] [--repeat 2] [--calib-images DIR] [--tag HOST]

Every row embeds the same images with the same weights: --checkpoint, else the
seeded random weights `sam-edge build` uses without one (each --bundle must have
been built from them: its manifest says so, and the script refuses a mismatch).
Each row's encoder time (median over images x repeats, after one warm-up per
image) and its embedding error against the official fp32 encoder (relative L2,
the worst image) are reported, with the speed ratio against the official
package measured in the same run.

- official: segment_anything's image encoder, torch fp32, torch threads = --threads.
- openvino-fp32: `openvino.convert_model` of the official encoder, compiled for
  CPU with INFERENCE_PRECISION_HINT=f32 (OpenVINO would otherwise run bf16 on a
  CPU with AVX512-BF16 or AMX, which is not fp32).
- openvino-int8: `nncf.quantize(model_type=TRANSFORMER)` over the calibration
  images, compiled with OpenVINO's defaults (its own choice for what stays float).
  For ViT-H, NNCF's statistics collection needs more than 24 GB of memory: on
  such a host quantize once in its own process with swap enabled
  (`--save-int8-ir vit_h-int8.xml`), then time the saved model beside the
  others, with swap off, through `--int8-ir vit_h-int8.xml`.
- each --bundle: `sam_edge.load(bundle).embed`.

Calibration: --calib-images DIR, else the photos `sam-edge build` calibrates on
by default; evaluation: photos disjoint from those (EVAL_PHOTOS), so neither
int8 path is scored on its own calibration set.

Writes benchmarks/results/<host>-<date>-openvino-<model>.json and prints a table.
"""

import argparse
import gc
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import cpu_features, print_table, summarize, write_results  # noqa: E402

#: scikit-image photos scored here: none is among quantize.DEFAULT_CALIBRATION_IMAGES.
EVAL_PHOTOS = ("hubble_deep_field", "immunohistochemistry", "retina")


def rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def eval_images():
    from skimage import data

    return {name: np.ascontiguousarray(getattr(data, name)()[..., :3]) for name in EVAL_PHOTOS}


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MB."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_rows(embed, inputs, repeat):
    """Seconds of every timed call, and the embeddings of the first call per image."""
    times, outputs = [], []
    for x in inputs:
        outputs.append(np.asarray(embed(x), np.float32))  # warm-up, and the output scored
        for _ in range(repeat):
            t0 = time.perf_counter()
            embed(x)
            times.append(time.perf_counter() - t0)
    return times, outputs


def convert_encoder(encoder, example):
    """The official encoder as an openvino.Model. Traced here without torch's trace
    check, which reruns the encoder twice more (minutes for ViT-H) and changes nothing."""
    import openvino as ov
    import torch

    with torch.no_grad():
        traced = torch.jit.trace(encoder, torch.from_numpy(example), check_trace=False)
        return ov.convert_model(traced, example_input=torch.from_numpy(example))


def quantize_openvino(ov_model, calib_inputs):
    """NNCF post-training quantization with its transformer settings, and the seconds it took."""
    import nncf

    t0 = time.perf_counter()
    quantized = nncf.quantize(ov_model, nncf.Dataset(calib_inputs), model_type=nncf.ModelType.TRANSFORMER,
                              subset_size=len(calib_inputs))
    return quantized, time.perf_counter() - t0


def save_int8_ir(quantized, path, provenance):
    """The quantized model as OpenVINO IR at `path` (.xml and .bin), with its provenance
    (model, weights, calibration) in `path`.json for --int8-ir to check."""
    import json

    import openvino as ov

    if not path.endswith(".xml"):
        raise ValueError(f"--save-int8-ir: an OpenVINO IR path ends in .xml; got {path!r}")
    ov.save_model(quantized, path, compress_to_fp16=False)
    with open(path + ".json", "w") as f:
        json.dump(provenance, f, indent=1)


def load_int8_ir(path, model_type, weights):
    """(openvino.Model, provenance) saved by --save-int8-ir, refused where it was quantized
    from another model or other weights than this run's."""
    import json

    import openvino as ov

    try:
        with open(path + ".json") as f:
            provenance = json.load(f)
    except FileNotFoundError:
        raise SystemExit(f"--int8-ir: {path}.json is missing; save the IR with --save-int8-ir") from None
    if (provenance.get("model"), provenance.get("weights")) != (model_type, weights):
        raise SystemExit(f"--int8-ir: {path} was quantized from {provenance.get('model')} "
                         f"{provenance.get('weights')}, this run times {model_type} {weights}")
    return ov.Core().read_model(path), provenance


def openvino_rows(ov_model, model_inputs, calib_inputs, threads, repeat, which=("fp32", "int8"), int8_ir=None):
    """Timed rows of OpenVINO fp32 and int8; the int8 model is `int8_ir` = (model,
    provenance) where given, else quantized here from `ov_model` over `calib_inputs`."""
    import gc

    import openvino as ov

    core = ov.Core()
    base = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    rows = []

    def run(name, model, config, extra):
        compiled = core.compile_model(model, "CPU", config)
        request = compiled.create_infer_request()

        def embed(x):
            return request.infer({0: x})[0]

        times, outs = time_rows(embed, model_inputs, repeat)
        hint = str(compiled.get_property("INFERENCE_PRECISION_HINT"))
        rows.append({"path": name, "times": times, "outputs": outs, "inference_precision_hint": hint, **extra})

    if "fp32" in which:
        run("openvino-fp32", ov_model, {**base, "INFERENCE_PRECISION_HINT": "f32"}, {})
        gc.collect()  # the fp32 compiled model's memory, before NNCF needs its own
    if "int8" not in which:
        return rows
    if int8_ir is not None:
        quantized, provenance = int8_ir
        extra = {"quantize_s": provenance.get("quantize_s"), "calibration_images": provenance.get("calibration_images"),
                 "quantized_in": "a separate process (--save-int8-ir)"}
    else:
        quantized, quantize_s = quantize_openvino(ov_model, calib_inputs)
        extra = {"quantize_s": quantize_s, "calibration_images": len(calib_inputs)}
    run("openvino-int8", quantized, base, extra)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit_b", choices=["vit_b", "vit_l", "vit_h"])
    parser.add_argument("--bundle", action="append", default=[], help="a sam-edge bundle to time (repeatable)")
    parser.add_argument("--checkpoint", help="official checkpoint; default: seeded random weights")
    parser.add_argument("--calib-images", help="directory of calibration images for NNCF")
    parser.add_argument("--repeat", type=int, default=2, help="timed calls per image after one warm-up")
    parser.add_argument("--openvino", default="fp32,int8",
                        help="OpenVINO rows to run, a comma list of fp32, int8")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--save-int8-ir", metavar="PATH.xml",
                        help="quantize with NNCF, save the int8 model as OpenVINO IR, and exit without timing")
    parser.add_argument("--int8-ir", metavar="PATH.xml",
                        help="time this saved int8 IR (from --save-int8-ir) as the openvino-int8 row")
    parser.add_argument("--tag", help="host name in the results file (default: derived from the CPU)")
    parser.add_argument("--note", default="", help="stored in the JSON")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    args = parser.parse_args()
    if args.repeat < 1 or args.threads < 1:
        parser.error("--repeat and --threads must be >= 1")
    openvino_which = tuple(r for r in args.openvino.split(",") if r)
    if any(r not in ("fp32", "int8") for r in openvino_which):
        parser.error(f"--openvino: a comma list of fp32, int8; got {args.openvino!r}")
    if args.save_int8_ir and not args.save_int8_ir.endswith(".xml"):
        parser.error(f"--save-int8-ir: an OpenVINO IR path ends in .xml; got {args.save_int8_ir!r}")
    if args.int8_ir and "int8" not in openvino_which:
        parser.error("--int8-ir times the openvino-int8 row, which --openvino leaves out")
    try:
        import nncf
        import openvino
    except ImportError as exc:
        print(f"bench_openvino: needs OpenVINO and NNCF: pip install openvino nncf ({exc})", file=sys.stderr)
        return 2

    import json

    import torch

    import sam_edge
    from sam_edge.bench.subjects import official_model
    from sam_edge.config import get_config
    from sam_edge.export.quantize import calibration_images, encoder_input
    from sam_edge.runtime.transforms import ResizeLongestSide

    torch.set_num_threads(args.threads)
    config = get_config(args.model)
    manifests = []
    for bundle in args.bundle:
        with open(os.path.join(bundle, "manifest.json")) as f:
            manifest = json.load(f)
        if manifest.get("model_type") != args.model:
            parser.error(f"{bundle} is a {manifest.get('model_type')} bundle, not {args.model}")
        manifests.append(manifest)
    model, weights = official_model(args.model, args.checkpoint, manifests[0] if manifests else None)
    for bundle, manifest in zip(args.bundle, manifests):
        if args.checkpoint is None and manifest.get("weights") != weights:
            parser.error(f"{bundle} was built from {manifest.get('weights')}, the others from {weights}")

    images = eval_images()
    model_inputs = [encoder_input(image, config.image_size) for image in images.values()]
    calib, calib_source = calibration_images(args.calib_images)
    calib_inputs = [encoder_input(np.ascontiguousarray(image[..., :3]), config.image_size) for image in calib]

    if args.save_int8_ir:
        ov_model = convert_encoder(model.image_encoder, model_inputs[0])
        del model
        gc.collect()
        quantized, quantize_s = quantize_openvino(ov_model, calib_inputs)
        save_int8_ir(quantized, args.save_int8_ir,
                     {"model": args.model, "weights": weights, "calibration": calib_source,
                      "calibration_images": len(calib), "quantize_s": quantize_s,
                      "versions": {"openvino": openvino.__version__, "nncf": nncf.__version__},
                      "peak_rss_mb": peak_rss_mb(), "cpu_features": cpu_features()})
        print(f"saved {args.save_int8_ir} (NNCF {quantize_s:.0f} s, peak RSS {peak_rss_mb():.0f} MB)")
        return 0
    int8_ir = load_int8_ir(args.int8_ir, args.model, weights) if args.int8_ir else None
    with torch.inference_mode():
        ref_times, ref_outputs = time_rows(lambda x: model.image_encoder(torch.from_numpy(x)).numpy(),
                                           model_inputs, args.repeat)
    rows = [{"path": "official", "times": ref_times, "outputs": ref_outputs}]
    if openvino_which:
        ov_model = convert_encoder(model.image_encoder, model_inputs[0])
    del model  # the torch weights, before NNCF's statistics need the memory
    gc.collect()
    if openvino_which:
        rows += openvino_rows(ov_model, model_inputs, calib_inputs, args.threads, args.repeat, openvino_which,
                              int8_ir=int8_ir)
        del ov_model
    for bundle in args.bundle:
        engine = sam_edge.load(bundle, threads=args.threads)
        pixels = []
        for image in images.values():  # the bundle normalises and pads itself
            resized = ResizeLongestSide(config.image_size).apply_image(image)
            pixels.append(resized.transpose(2, 0, 1)[None].astype(np.float32))
        times, outs = time_rows(engine.embed, pixels, args.repeat)
        rows.append({"path": f"sam-edge {os.path.basename(os.path.normpath(bundle))}", "times": times,
                     "outputs": outs, "encoder_mode": getattr(engine, "encoder_mode", None)})
        del engine

    ref_median = summarize(ref_times)["median_ms"]
    table = []
    for row in rows:
        stats = summarize(row.pop("times"))
        outs = row.pop("outputs")
        row.update(encoder=stats, speedup_vs_official=ref_median / stats["median_ms"],
                   embedding_rel_l2_max=max(rel_l2(o, r) for o, r in zip(outs, ref_outputs)))
        table.append({"path": row["path"], "encoder_ms": stats["median_ms"], "iqr_ms": stats["iqr_ms"],
                      "x_official": row["speedup_vs_official"], "rel_l2": row["embedding_rel_l2_max"]})
    print_table(table, ["path", "encoder_ms", "iqr_ms", "x_official", "rel_l2"])
    payload = {
        "benchmark": f"openvino-{args.model}",
        "model": args.model,
        "weights": weights,
        "settings": {"repeat": args.repeat, "threads": args.threads, "eval_images": list(EVAL_PHOTOS),
                     "openvino_rows": list(openvino_which), "int8_ir": args.int8_ir,
                     "calibration": calib_source, "calibration_images": len(calib)},
        "versions": {"torch": torch.__version__, "openvino": openvino.__version__, "nncf": nncf.__version__,
                     "sam_edge": sam_edge.__version__},
        "cpu_features": cpu_features(),
        "note": args.note,
        "rows": rows,
    }
    if not args.no_write:
        print(write_results(f"openvino-{args.model}", payload, tag=args.tag))
    return 0


if __name__ == "__main__":
    sys.exit(main())
