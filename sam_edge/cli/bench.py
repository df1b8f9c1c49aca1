"""`sam-edge bench`: its arguments, checked here so that a mistake is a usage error
(exit status 2) before anything is measured; sam_edge.bench does the measuring."""

import argparse
import os
from typing import List

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


def add_parser(subparsers) -> argparse.ArgumentParser:
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


def check_arguments(args: argparse.Namespace) -> None:
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
    """0 on success (also when --compare finds changes), 1 on failure."""
    from ..bench.command import BenchRequest, compare, run_bench as measure_and_report

    check_arguments(args)
    if args.compare:
        return compare(args.compare[0], args.compare[1])
    return measure_and_report(BenchRequest(
        bundles=list(args.bundles), model=args.model, checkpoint=args.checkpoint, images=args.images,
        prompts=args.prompts, queries=args.queries, repeat=args.repeat, warmup=args.warmup, threads=args.threads,
        reference=args.reference, validate=args.validate, json_path=args.json, plot_path=args.plot,
        notes=list(args.note), tag=args.tag, seed=args.seed,
    ))
