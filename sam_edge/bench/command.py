"""The `sam-edge bench` sub-command: its arguments, and the run that ties
runner, schema, table, plot and compare together. Importing this module costs
argparse only; the rest is imported when the command runs."""

import argparse
import datetime
import json
import os
import sys
from typing import Any, Dict, List

from .schema import SCHEMA_NAME, SCHEMA_VERSION

MODELS = ("vit_b", "vit_l", "vit_h")


def _counts(text: str) -> List[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive integers, e.g. 1,16; got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers; got {text!r}")
    return sorted(set(values))


def _integer_at_least(minimum: int):
    """An argparse type: an integer >= minimum, or a usage error saying so."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}; got {text!r}")
        return value

    return parse


def add_bench_arguments(subparsers) -> argparse.ArgumentParser:
    """Add the `bench` sub-command; its handler is set as `func`."""
    p = subparsers.add_parser(
        "bench",
        help="time every stage of a bundle or model on this machine (JSON, table, plot)",
        description="Latency per stage (p50/p90/p99, throughput), memory and host, for bundles or the torch model; "
                    "--reference times the official segment_anything alongside. See docs/benchmarking.md.",
    )
    p.add_argument("bundles", nargs="*", metavar="BUNDLE", help="bundle directories from `sam-edge build`")
    p.add_argument("--model", choices=MODELS, help="time sam-edge's torch model of this size instead of a bundle")
    p.add_argument("--checkpoint", metavar="PATH",
                   help="official .pth: the torch model's weights, and the reference's (random weights if omitted "
                        "and the bundle was built without one)")
    p.add_argument("--images", metavar="DIR", help="directory of images (default: scikit-image's bundled photos)")
    p.add_argument("--prompts", type=_counts, default=[1, 16], metavar="P[,P...]",
                   help="prompts per decoder call (default 1,16)")
    p.add_argument("--queries", type=_counts, default=[1, 10, 100], metavar="K[,K...]",
                   help="predict() calls per image for the end-to-end runs (default 1,10,100)")
    p.add_argument("--repeat", type=_integer_at_least(1), default=3, metavar="N",
                   help="timed passes over the images (default 3)")
    p.add_argument("--warmup", type=_integer_at_least(0), default=1, metavar="N",
                   help="untimed passes first (default 1)")
    p.add_argument("--threads", type=_integer_at_least(1), metavar="N",
                   help="intra-op threads for ONNX Runtime, torch and the post-processing kernels (default: theirs)")
    p.add_argument("--reference", action="store_true",
                   help="also time the official segment_anything with the same weights; report ratios")
    p.add_argument("--validate", action="store_true",
                   help="embed a `sam-edge validate` report per bundle (needs torch and the export extra)")
    p.add_argument("--json", metavar="FILE", help="write the results (schema: docs/benchmarking.md)")
    p.add_argument("--plot", metavar="FILE.png", help="write a PNG (needs matplotlib: pip install 'sam-edge[bench]')")
    p.add_argument("--compare", nargs=2, metavar=("A.json", "B.json"),
                   help="compare two results files per stage instead of measuring")
    p.add_argument("--note", action="append", default=[], metavar="TEXT",
                   help="a note stored in the JSON (e.g. 'the CPU was shared'); repeatable")
    p.add_argument("--tag", metavar="NAME", help="this host's short name in the results (default cpu-<cores>core)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random prompts (default 0)")
    p.set_defaults(func=run_bench, bench_parser=p)
    return p


def _check_arguments(args: argparse.Namespace) -> None:
    error = args.bench_parser.error  # exit status 2 and a one-line message, as every usage error
    if args.compare:
        if args.bundles or args.model or args.plot or args.json:
            error("--compare takes two results files and nothing to measure, --json or --plot")
        for path in args.compare:
            if not os.path.isfile(path):
                error(f"--compare: no such file: {path}")
        return
    if not args.bundles and not args.model:
        error("nothing to measure: give BUNDLE directories or --model vit_b|vit_l|vit_h")
    if args.bundles and args.model:
        error("give BUNDLE directories or --model, not both")
    for bundle in args.bundles:
        if not os.path.isdir(bundle):
            error(f"bundle not found: {bundle} is not a directory (build one with `sam-edge build`)")
    if args.checkpoint and not os.path.isfile(args.checkpoint):
        error(f"--checkpoint: no such file: {args.checkpoint}")
    if args.images and not os.path.isdir(args.images):
        error(f"--images: {args.images} is not a directory")
    if args.validate and not args.bundles:
        error("--validate checks bundles against the torch model: give BUNDLE directories")
    if args.plot and not args.plot.lower().endswith(".png"):
        error(f"--plot writes a PNG: give a path ending in .png; got {args.plot}")


def run_bench(args: argparse.Namespace) -> int:
    """The `bench` sub-command: 0 on success (also when --compare finds changes), 1 on failure."""
    _check_arguments(args)
    if args.compare:
        from .compare import compare_results
        from .schema import load_result

        lines, _ = compare_results(load_result(args.compare[0]), load_result(args.compare[1]))
        print("\n".join(lines))
        return 0
    doc = measure_all(args)
    from .table import format_table

    print(format_table(doc))
    if args.json:
        directory = os.path.dirname(os.path.abspath(args.json))
        os.makedirs(directory, exist_ok=True)
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")
        print(f"wrote {args.json}")
    if args.plot:
        from .plot import plot_results

        print(f"wrote {plot_results(doc, args.plot)}")
    return 0


def measure_all(args: argparse.Namespace) -> Dict[str, Any]:
    """Measure every subject the arguments name; returns the validated results document."""
    from tqdm import tqdm

    from .. import __version__, postprocess
    from . import runner
    from .schema import validate_result

    load_at_start = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    images, source, notes = runner.bench_images(args.images)
    notes = list(args.note) + notes
    needs_torch = bool(args.model or args.reference or args.validate)
    if args.threads:
        postprocess.set_num_threads(args.threads)
        if needs_torch:
            import torch

            torch.set_num_threads(args.threads)
    factories = []
    manifests = {}
    if args.bundles:
        from ..runtime.bundle import read_manifest

        for bundle in args.bundles:
            manifests[bundle] = read_manifest(bundle)
            factories.append(lambda b=bundle: runner.bundle_subject(b, args.threads))
        model_types = []
        for bundle, manifest in manifests.items():
            if manifest["model_type"] not in model_types:
                model_types.append(manifest["model_type"])
        references = [(t, next(m for m in manifests.values() if m["model_type"] == t)) for t in model_types]
    else:
        factories.append(lambda: runner.torch_subject(args.model, args.checkpoint))
        references = [(args.model, None)]
    if args.reference:
        for model_type, manifest in references:
            if manifest is not None:  # refuse a reduced test bundle before any timing
                runner.reference_config_check(manifest)
            factories.append(lambda t=model_type, m=manifest: runner.reference_subject(t, args.checkpoint, m))
    runs = []
    with tqdm(total=len(factories) * args.repeat * len(images), desc="bench", unit="image") as bar:
        for factory in factories:
            runs.append(runner.measure(factory, images, args.prompts, args.queries, args.repeat, args.warmup,
                                       seed=args.seed, progress=bar))
    runner.add_reference_ratios(runs)
    for run in runs:
        notes.extend(f"{run['name']}: {n}" for n in run.pop("notes", []))
    from .host import device_tag, hardware

    host = hardware()
    host["load_average_at_start"] = load_at_start
    host["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    host["tag"] = args.tag or device_tag()
    torch_module = sys.modules.get("torch")
    doc = {
        "schema": SCHEMA_NAME,
        "schema_version": SCHEMA_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "sam_edge_version": __version__,
        "command": ["sam-edge"] + sys.argv[1:] if os.path.basename(sys.argv[0]).startswith("sam-edge") else sys.argv,
        "host": host,
        "settings": {
            "repeat": args.repeat,
            "warmup": args.warmup,
            "prompts": args.prompts,
            "queries": args.queries,
            "calls_per_image": runner.CALLS_PER_IMAGE,
            "seed": args.seed,
            "threads": {
                "requested": args.threads,
                "onnxruntime_intra_op": args.threads or "onnxruntime default (one per core)",
                "torch": torch_module.get_num_threads() if torch_module is not None else None,
                "postprocess": postprocess.active_path(),
            },
            "images": {"source": source, "count": len(images), "sizes": [list(i.shape[:2]) for i in images]},
        },
        "notes": notes,
        "runs": runs,
    }
    if args.validate:
        from ..export.validate import validate_bundle

        doc["validate"] = {}
        for bundle, run in zip(args.bundles, runs):
            doc["validate"][run["name"]] = validate_bundle(bundle, args.checkpoint, images, seed=args.seed)
    return validate_result(doc)
