"""`sam-edge predict`: segment one image with point and box prompts, on a bundle or the torch model."""

import argparse
import json
import os
import sys
import time
from typing import List, Sequence

import numpy as np

from .errors import CommandError


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("predict", help="segment one image with point/box prompts")
    p.add_argument("image", metavar="IMAGE", help="image file, or skimage:NAME for a scikit-image photo")
    p.add_argument("--model", default="vit_b", choices=["vit_b", "vit_l", "vit_h"], help="model size (default vit_b)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", metavar="PATH", help="official SAM checkpoint (.pth); random weights if omitted")
    src.add_argument("--bundle", metavar="DIR", help="a bundle built by `sam-edge build` (ONNX Runtime, TensorRT)")
    p.add_argument("--point", type=point_arg, action="append", metavar="X,Y[,LABEL]",
                   help="point prompt in image pixels; LABEL 1 foreground (default) or 0 background; repeatable")
    p.add_argument("--box", type=box_arg, metavar="X0,Y0,X1,Y1", help="box prompt in image pixels")
    mm = p.add_mutually_exclusive_group()
    mm.add_argument("--multimask", dest="multimask", action="store_true", default=None,
                    help="return 3 masks (default when the prompt is a single point)")
    mm.add_argument("--single-mask", dest="multimask", action="store_false", help="return 1 mask")
    p.add_argument("--repeat", type=int, default=1, metavar="N", help="time predict N times, report the median")
    p.add_argument("--output", "-o", required=True, metavar="DIR", help="directory for the PNGs and result.json")
    p.set_defaults(func=run_predict)
    return p


def _parse_numbers(text: str, counts: Sequence[int], what: str) -> List[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} must be comma-separated numbers; got {text!r}") from None
    if len(values) not in counts:
        raise argparse.ArgumentTypeError(f"{what} needs {' or '.join(map(str, counts))} numbers; got {text!r}")
    if not all(np.isfinite(values)):
        raise argparse.ArgumentTypeError(f"{what} must be finite; got {text!r}")
    return values


def point_arg(text: str) -> List[float]:
    values = _parse_numbers(text, (2, 3), "--point X,Y[,LABEL]")
    if len(values) == 3 and values[2] not in (0.0, 1.0):
        raise argparse.ArgumentTypeError(f"point label must be 1 (foreground) or 0 (background); got {text!r}")
    return values if len(values) == 3 else values + [1.0]


def box_arg(text: str) -> List[float]:
    return _parse_numbers(text, (4,), "--box X0,Y0,X1,Y1")


def read_image(spec: str) -> np.ndarray:
    """An RGB uint8 image from a file path, or `skimage:NAME` for a photo bundled with scikit-image."""
    if spec.startswith("skimage:"):
        name = spec.split(":", 1)[1]
        try:
            from skimage import data
        except ImportError:
            raise CommandError("skimage:NAME images need scikit-image: pip install scikit-image") from None
        loader = getattr(data, name, None)
        if loader is None or not callable(loader):
            raise CommandError(f"scikit-image has no bundled image {name!r} (try astronaut, coffee, chelsea, rocket)")
        image = loader()
    else:
        from PIL import Image, UnidentifiedImageError

        if not os.path.isfile(spec):
            raise CommandError(f"image not found: {spec}")
        try:
            with Image.open(spec) as img:
                image = np.asarray(img.convert("RGB"))
        except UnidentifiedImageError:
            raise CommandError(f"not an image file PIL can read: {spec}") from None
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return np.ascontiguousarray(image[..., :3].astype(np.uint8))


def load_predictor(args: argparse.Namespace) -> tuple:
    """(predictor, description of the weights) for --bundle or --model/--checkpoint."""
    from ..runtime import SamPredictor

    if args.bundle:
        from .. import load  # the ONNX Runtime / TensorRT engine

        engine = load(args.bundle)
        mode = getattr(engine, "encoder_mode", None)
        return SamPredictor(engine), f"bundle {args.bundle}" + (f", encoder: {mode}" if mode else "")
    try:
        import torch  # noqa: F401
    except ImportError:
        raise CommandError("the torch model path needs torch (pip install 'sam-edge[torch]'), or pass --bundle") from None
    from ..builder import RANDOM_WEIGHTS_SEED, random_weights_model, sam_model_registry
    from ..config import get_config

    if args.checkpoint:
        model = sam_model_registry[args.model](checkpoint=args.checkpoint)
        return SamPredictor(model), f"checkpoint {args.checkpoint}"
    print(
        f"sam-edge: WARNING: no --checkpoint given: using SEEDED RANDOM WEIGHTS (seed {RANDOM_WEIGHTS_SEED}); "
        "the masks are meaningless. Pass --checkpoint with an official SAM .pth for real results.",
        file=sys.stderr,
    )
    # The model `sam-edge build` exports without a checkpoint, so the two can be compared.
    model = random_weights_model(get_config(args.model), RANDOM_WEIGHTS_SEED)
    return SamPredictor(model), f"random weights (seed {RANDOM_WEIGHTS_SEED})"


def overlay_image(image: np.ndarray, mask: np.ndarray, points, box) -> "Image":
    from PIL import Image, ImageDraw

    colour = np.array([30, 144, 255], dtype=np.float32)
    out = image.astype(np.float32)
    out[mask] = 0.45 * out[mask] + 0.55 * colour
    img = Image.fromarray(out.astype(np.uint8))
    draw = ImageDraw.Draw(img)
    r = max(3, round(max(image.shape[:2]) / 120))
    for x, y, label in points:
        fill = (0, 200, 0) if label == 1 else (220, 0, 0)
        draw.ellipse([x - r, y - r, x + r, y + r], fill=fill, outline=(255, 255, 255))
    if box is not None:
        draw.rectangle(box, outline=(0, 255, 0), width=max(2, r // 2))
    return img


def run_predict(args: argparse.Namespace) -> int:
    from PIL import Image

    timings = {}
    t0 = time.perf_counter()
    image = read_image(args.image)
    timings["read_image"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    predictor, weights = load_predictor(args)
    timings["load_model"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    predictor.set_image(image)
    timings["embed (set_image)"] = time.perf_counter() - t0

    coords = np.array([p[:2] for p in args.point], dtype=np.float64) if args.point else None
    labels = np.array([int(p[2]) for p in args.point]) if args.point else None
    box = np.array(args.box) if args.box else None
    multimask = args.multimask if args.multimask is not None else (box is None and len(args.point or []) <= 1)
    decode_times = []
    for _ in range(max(args.repeat, 1)):
        t0 = time.perf_counter()
        masks, scores, _ = predictor.predict(coords, labels, box, multimask_output=multimask)
        decode_times.append(time.perf_counter() - t0)
    timings["predict (decode + postprocess)"] = float(np.median(decode_times))

    t0 = time.perf_counter()
    os.makedirs(args.output, exist_ok=True)
    best = int(np.argmax(scores))
    for i, mask in enumerate(masks):
        Image.fromarray(mask.astype(np.uint8) * 255).save(os.path.join(args.output, f"mask_{i}.png"))
    overlay_image(image, masks[best], args.point or [], args.box).save(os.path.join(args.output, "overlay.png"))
    timings["write_outputs"] = time.perf_counter() - t0

    summary = {
        "image": args.image,
        "image_size": list(image.shape[:2]),
        "model": args.model,
        "weights": weights,
        "backend": predictor.backend.name,
        "points": args.point or [],
        "box": args.box,
        "multimask_output": multimask,
        "scores": [float(s) for s in scores],
        "best_mask": best,
        "mask_areas": [int(m.sum()) for m in masks],
        "latency_s": timings,
        "predict_repeats": len(decode_times),
    }
    with open(os.path.join(args.output, "result.json"), "w") as f:
        json.dump(summary, f, indent=2)

    print(f"sam-edge predict: {args.model} on {predictor.backend.name}, {weights}")
    print(f"image {args.image} {image.shape[1]}x{image.shape[0]}; {len(masks)} mask(s), best #{best} score {scores[best]:.3f}")
    print("stage latencies:")
    for stage, seconds in timings.items():
        print(f"  {stage:<32} {seconds * 1000:10.1f} ms")
    print(f"wrote {len(masks)} mask PNG(s), overlay.png and result.json to {args.output}")
    return 0
