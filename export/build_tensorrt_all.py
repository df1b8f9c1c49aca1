"""Build every TensorRT bundle (vit_b / vit_l / vit_h x fp16 / int8) on this GPU, with one
shared timing cache, and report build times and engine sizes (table + JSON). Encoders
take up to 4 images per call here (--max-batch), for the throughput benchmark.

    python export/build_tensorrt_all.py --checkpoints checkpoints/ --output bundles/
    python export/build_tensorrt_all.py --models vit_b --precisions fp16 --output bundles/

For each pair: the ONNX Runtime bundle at that precision in OUTPUT/onnx/<model>-<precision>
(reused when present), then the TensorRT bundle in OUTPUT/tensorrt/<model>-<precision>.
Checkpoints are found in --checkpoints by their official names; a model without one is
built with seeded random weights (said so; build times and speeds do not depend on the
weights, masks do). Writes OUTPUT/tensorrt_build_report.json. A failed pair is reported
and the others still build; the exit status is 1 if any failed. With --measure, each
encoder's batch-1 latency is measured after its build, and an int8 encoder that is not
faster than the fp16 one of the same size is warned about (benchmarks/bench_tensorrt.py
measures everything else).
"""

import argparse
import json
import os
import platform
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sam_edge.cli.build import add_tensorrt_arguments, tensorrt_build_params  # noqa: E402
from sam_edge.export.tensorrt_build import (  # noqa: E402
    TENSORRT_PRECISIONS,
    TensorRTBuildParams,
    build_tensorrt_bundle,
)
from sam_edge.export.tensorrt_precision import int8_latency_warning  # noqa: E402

#: The official checkpoint file of each size.
CHECKPOINT_NAMES = {"vit_b": "sam_vit_b_01ec64.pth", "vit_l": "sam_vit_l_0b3195.pth", "vit_h": "sam_vit_h_4b8939.pth"}


def _checkpoint(directory, model):
    if not directory:
        return None
    path = os.path.join(directory, CHECKPOINT_NAMES[model])
    if not os.path.isfile(path):
        print(f"build_tensorrt_all: {path} not found; {model} gets seeded RANDOM weights", file=sys.stderr)
        return None
    return path


def _reusable(onnx_dir):
    """Whether an ONNX bundle is there and TensorRT can parse it (one built for ONNX Runtime may
    hold contrib ops)."""
    import json

    from sam_edge.export.tensorrt_graph_checks import check_onnx_domain

    manifest = os.path.join(onnx_dir, "manifest.json")
    if not os.path.isfile(manifest):
        return False
    with open(manifest) as f:
        graphs = json.load(f)["graphs"]
    try:
        for key in ("encoder", "decoder"):
            check_onnx_domain(os.path.join(onnx_dir, graphs[key]), key)
    except (ValueError, KeyError) as exc:
        print(f"build_tensorrt_all: rebuilding {onnx_dir}: {exc}", file=sys.stderr)
        return False
    return True


def build_pair(args, model, precision, timing_cache):
    """Build (or reuse) the ONNX bundle, then the TensorRT bundle; returns a report row."""
    from sam_edge.config import get_config
    from sam_edge.export.build import build_bundle

    checkpoint = _checkpoint(args.checkpoints, model)
    onnx_dir = os.path.join(args.output, "onnx", f"{model}-{precision}")
    trt_dir = os.path.join(args.output, "tensorrt", f"{model}-{precision}")
    row = {"model": model, "precision": precision, "weights": "checkpoint" if checkpoint else "random"}
    start = time.perf_counter()
    if _reusable(onnx_dir) and not args.rebuild_onnx:
        row["onnx_s"] = 0.0  # reused
    else:
        # Standard ops only: ONNX Runtime's contrib attention has no TensorRT importer.
        build_bundle(onnx_dir, get_config(model), checkpoint=checkpoint, precision=precision, overwrite=True,
                     official_decoder=False, fused_attention=False, ops_graph=False, quiet=args.quiet)
        row["onnx_s"] = round(time.perf_counter() - start, 1)
    params: TensorRTBuildParams = tensorrt_build_params(
        args, model, precision, checkpoint and os.path.basename(checkpoint), timing_cache, args.quiet)
    manifest = build_tensorrt_bundle(params, onnx_dir, trt_dir, overwrite=True)
    engines = manifest["tensorrt"]["engines"]
    row.update(
        encoder_build_s=engines["encoder"]["build_seconds"],
        decoder_build_s=engines["decoder"]["build_seconds"],
        encoder_mb=round(engines["encoder"]["plan_bytes"] / 2**20, 1),
        decoder_mb=round(engines["decoder"]["plan_bytes"] / 2**20, 1),
        strongly_typed=engines["encoder"]["strongly_typed"],
        timing_cache_reused=engines["encoder"]["timing_cache_reused"],
        bundle=trt_dir,
        status="ok",
    )
    if getattr(args, "measure", False):
        row["encoder_ms"] = round(measure_encoder_ms(trt_dir), 2)
    return row


def measure_encoder_ms(bundle, repeat=10):
    """Median batch-1 latency of a bundle's encoder engine, in ms (synchronised)."""
    import numpy as np

    from sam_edge.runtime.bundle import verify_bundle
    from sam_edge.runtime.tensorrt_backend import load_tensorrt_engine

    engine = load_tensorrt_engine(bundle, verify_bundle(bundle))
    image = np.zeros((1, 3, engine.image_size, engine.image_size), np.float32)
    times = []
    for i in range(repeat + 2):
        start = time.perf_counter()
        engine.embed(image)
        engine.synchronize()
        if i >= 2:  # the first calls initialise
            times.append(time.perf_counter() - start)
    engine.close()
    return 1000 * float(np.median(times))


def print_table(rows, columns):
    widths = [max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(str(r.get(c, "")).ljust(w) for c, w in zip(columns, widths)))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="vit_b,vit_l,vit_h", help="comma-separated sizes")
    parser.add_argument("--precisions", default=",".join(TENSORRT_PRECISIONS), help="comma-separated: fp16,int8")
    parser.add_argument("--checkpoints", default=None, help="directory with the official .pth files")
    parser.add_argument("--output", default="bundles", help="root directory of the bundles and the report")
    parser.add_argument("--rebuild-onnx", action="store_true", help="re-export ONNX bundles even when present")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--measure", action="store_true",
                        help="measure each encoder's latency and warn when int8 is not faster than fp16")
    add_tensorrt_arguments(parser)
    # Room for the encoder-throughput figure of benchmarks/bench_tensorrt.py; edge bundles may want 1.
    parser.set_defaults(max_batch=4)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    precisions = [p for p in args.precisions.split(",") if p]
    for m in models:
        if m not in CHECKPOINT_NAMES:
            parser.error(f"unknown model {m!r}; expected {sorted(CHECKPOINT_NAMES)}")
    for p in precisions:
        if p not in TENSORRT_PRECISIONS:
            parser.error(f"unknown precision {p!r}; expected {list(TENSORRT_PRECISIONS)}")

    from sam_edge.runtime.cuda_buffers import CudaError
    from sam_edge.runtime.tensorrt_compat import tensorrt_runtime_info

    try:
        runtime = tensorrt_runtime_info()
    except (ImportError, CudaError) as exc:
        print(f"build_tensorrt_all: cannot build TensorRT engines on this machine: {exc}", file=sys.stderr)
        return 2
    os.makedirs(args.output, exist_ok=True)
    timing_cache = args.timing_cache or os.path.join(args.output, f"timing-{runtime['gpu'].replace(' ', '_')}.cache")
    print(f"TensorRT {runtime['tensorrt']} on {runtime['gpu']} (compute capability {runtime['compute_capability']}); "
          f"timing cache {timing_cache}")
    rows = []
    for model in models:
        for precision in precisions:
            try:
                rows.append(build_pair(args, model, precision, timing_cache))
            except Exception as exc:  # report it and build the others
                traceback.print_exc()
                rows.append({"model": model, "precision": precision, "status": f"FAILED: {type(exc).__name__}: {exc}"})
    report = {"runtime": runtime, "host": platform.node(), "results": rows,
              "options": {k: v for k, v in vars(args).items() if k not in ("checkpoints",)}}
    path = os.path.join(args.output, "tensorrt_build_report.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=2)
    print_table(rows, ["model", "precision", "weights", "onnx_s", "encoder_build_s", "decoder_build_s", "encoder_mb",
                       "decoder_mb", "encoder_ms", "timing_cache_reused", "status"])
    for model in models:
        measured = {r["precision"]: r.get("encoder_ms") for r in rows if r["model"] == model}
        warning = int8_latency_warning(measured.get("int8"), measured.get("fp16"), f"{model} encoder")
        if warning:
            print(warning, file=sys.stderr)
    print(f"wrote {path}")
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
