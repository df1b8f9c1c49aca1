"""`sam-edge validate`: a bundle's fidelity to the PyTorch model it was built from."""

import argparse
import json

from ..export.validate import PROMPTS_PER_IMAGE  # numpy only; the rest loads when the command runs


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "validate",
        help="compare a bundle with the PyTorch model per prompt kind",
        description="Fidelity of a bundle to the PyTorch reference: mask IoU, logits rel-L2, score error, embeddings.",
    )
    parser.add_argument("bundle", help="bundle directory from `sam-edge build`")
    parser.add_argument("--checkpoint", default=None,
                        help="the .pth the bundle was built from (not needed for random-weight bundles)")
    parser.add_argument("--images", default=None, help="directory of images (default: scikit-image's bundled photos)")
    parser.add_argument("--json", default=None, help="write the report as JSON to this path ('-' for stdout)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random prompts")
    parser.add_argument("--prompts-per-image", type=int, default=PROMPTS_PER_IMAGE, metavar="N",
                        help=f"random prompts of each kind per image (default {PROMPTS_PER_IMAGE})")
    parser.set_defaults(func=run_validate)
    return parser


def run_validate(args: argparse.Namespace) -> int:
    """0 when the bundle is within its precision's tolerance, 1 otherwise."""
    from ..export.quantize import calibration_images
    from ..export.validate import format_report, validate_bundle

    images = calibration_images(args.images)[0] if args.images is not None else None
    if args.prompts_per_image < 1:
        raise ValueError(f"--prompts-per-image must be >= 1; got {args.prompts_per_image}")
    report = validate_bundle(args.bundle, args.checkpoint, images, seed=args.seed,
                             prompts_per_image=args.prompts_per_image)
    print(format_report(report))
    if args.json == "-":
        print(json.dumps(report, indent=2))
    elif args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
    return 0 if report["passed"] else 1
