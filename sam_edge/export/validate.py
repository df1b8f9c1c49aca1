"""`sam-edge validate`: a bundle's fidelity to the PyTorch model it was built from.

For every image, `prompts_per_image` random prompts of every kind (one point,
positive + negative points, box, box + points: three masks each; mask_input
fed back: one mask), both run through `SamPredictor`: mask IoU, low-res logits
rel-L2 and score error per kind, and the IoU distribution over every mask
(min, p5, mean; also split into multimask and single-mask outputs); for the
encoder, embedding cosine similarity and rel-L2 per image. Prints a table,
writes JSON, and exits non-zero when a precision's tolerance is exceeded.
"""

from typing import Any, Dict, List, Optional

import numpy as np

#: (max low-res logits rel-L2, min mean mask IoU) per encoder precision.
TOLERANCES = {
    "fp32": (1e-3, 0.99),
    "fp16": (1e-2, 0.99),
    "int8": (0.05, 0.95),
    "int8-dynamic": (0.05, 0.95),
}
PROMPT_KINDS = ("one_point", "pos_neg_points", "box", "box_and_points", "mask_input")
#: Random prompts of each kind per image: enough masks for a 5th percentile to mean something.
PROMPTS_PER_IMAGE = 8


def _rel_l2(x: np.ndarray, ref: np.ndarray) -> float:
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(x - ref) / max(np.linalg.norm(ref), 1e-12))


def _cosine(x: np.ndarray, ref: np.ndarray) -> float:
    x, ref = np.asarray(x, np.float64).ravel(), np.asarray(ref, np.float64).ravel()
    return float(x @ ref / max(np.linalg.norm(x) * np.linalg.norm(ref), 1e-12))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def iou_distribution(ious) -> Dict[str, Any]:
    """min, 5th percentile, mean and count of mask IoUs."""
    ious = np.asarray(ious, dtype=np.float64)
    return {"min": float(ious.min()), "p5": float(np.percentile(ious, 5)), "mean": float(ious.mean()),
            "count": int(ious.size)}


def random_prompts(shape, rng: np.random.Generator) -> Dict[str, dict]:
    """Seeded prompts in original-image pixels for an (H, W, ...) image, one per kind
    (one_point, pos_neg_points, box, box_and_points): {kind: predict kwargs}."""
    h, w = shape[:2]
    points = lambda n: np.stack([rng.uniform(0, w - 1, n), rng.uniform(0, h - 1, n)], axis=1)  # noqa: E731
    x0, x1 = np.sort(rng.uniform(0, w - 1, 2))
    y0, y1 = np.sort(rng.uniform(0, h - 1, 2))
    box = np.array([x0, y0, x1, y1])
    return {
        "one_point": dict(point_coords=points(1), point_labels=np.array([1])),
        "pos_neg_points": dict(point_coords=points(3), point_labels=np.array([1, 0, 0])),
        "box": dict(box=box),
        "box_and_points": dict(box=box, point_coords=points(2), point_labels=np.array([1, 0])),
    }


def reference_model(manifest: Dict[str, Any], checkpoint: Optional[str]):
    """The torch model the bundle should match: from `checkpoint`, or the seeded random
    weights the bundle was built with when it records them."""
    from ..builder import build_sam_from_config, random_weights_model
    from ..config import SamConfig

    fields = dict(manifest["config"])
    fields["encoder_global_attn_indexes"] = tuple(fields["encoder_global_attn_indexes"])
    config = SamConfig(**fields)
    if checkpoint is not None:
        return build_sam_from_config(config, checkpoint)
    weights = manifest.get("weights", {})
    if weights.get("source") != "random":
        raise ValueError("this bundle was built from a checkpoint: pass it with --checkpoint")
    return random_weights_model(config, int(weights["seed"]))


def run_record(root: Optional[str] = None) -> Dict[str, Any]:
    """What made a report and where: the time, the package version; the git commit, and whether
    tracked files differed from it, when `root` (default: the directory holding this sam_edge
    package) is the top of a git checkout, else None; the host as `sam-edge bench` describes it
    (tag, CPU model and features, cores, threads)."""
    import datetime
    import os
    import subprocess

    from .. import __version__
    from ..bench.host import device_tag, hardware

    root = os.path.abspath(root or os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    record: Dict[str, Any] = {"created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                              "sam_edge_version": __version__, "git_commit": None, "git_dirty": None}

    def git(*args: str) -> Optional[str]:
        # the repository is root's own, and reading must not take the index lock from a concurrent commit
        env = {k: v for k, v in os.environ.items() if k not in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE")}
        env["GIT_OPTIONAL_LOCKS"] = "0"
        try:
            done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30, env=env)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    top = git("rev-parse", "--show-toplevel")
    # only the checkout the package itself lives in: an install inside some other repository is not one
    if top and os.path.isdir(top) and os.path.samefile(top, root):
        record["git_commit"] = git("rev-parse", "HEAD")
        status = git("status", "--porcelain", "--untracked-files=no")
        record["git_dirty"] = None if status is None else bool(status)
    host = hardware()
    host["tag"] = device_tag()
    record["host"] = host
    return record


def validate_bundle(
    bundle_dir: str,
    checkpoint: Optional[str] = None,
    images: Optional[List[np.ndarray]] = None,
    seed: int = 0,
    progress: bool = True,
    prompts_per_image: int = PROMPTS_PER_IMAGE,
) -> Dict[str, Any]:
    """Fidelity report of the bundle against its torch reference (see module docstring)."""
    if int(prompts_per_image) < 1:
        raise ValueError(f"prompts_per_image must be >= 1; got {prompts_per_image}")
    from tqdm import tqdm

    from ..runtime.bundle import load, sha256_file
    from ..runtime.predictor import SamPredictor
    from .quantize import calibration_images

    engine = load(bundle_dir)
    manifest = engine.manifest
    notes = []
    if checkpoint is not None and manifest["weights"].get("checkpoint_sha256") not in (None, sha256_file(checkpoint)):
        notes.append("the checkpoint differs from the one recorded in the manifest")
    model = reference_model(manifest, checkpoint)
    source = "given images"
    if images is None:
        images, source = calibration_images()
    ours, reference = SamPredictor(engine), SamPredictor(model)
    rng = np.random.default_rng(seed)
    per_kind: Dict[str, Dict[str, list]] = {k: {"iou": [], "rel_l2": [], "score_err": []} for k in PROMPT_KINDS}
    encoder = {"cosine": [], "rel_l2": []}
    for image in tqdm(images, desc="validate", unit="image", disable=not progress):
        ours.set_image(image)
        reference.set_image(image)
        emb, ref_emb = ours.get_image_embedding(), reference.backend.to_numpy(reference.get_image_embedding())
        encoder["cosine"].append(_cosine(emb, ref_emb))
        encoder["rel_l2"].append(_rel_l2(emb, ref_emb))
        for _ in range(int(prompts_per_image)):
            for kind, kwargs in random_prompts(image.shape, rng).items():
                m1, s1, l1 = ours.predict(multimask_output=True, **kwargs)
                m2, s2, l2 = reference.predict(multimask_output=True, **kwargs)
                _record(per_kind[kind], m1, s1, l1, m2, s2, l2)
                if kind == "one_point":  # feed the reference's best logits back as a mask prompt
                    call = dict(kwargs, mask_input=l2[np.argmax(s2)][None])
                    m1, s1, l1 = ours.predict(multimask_output=False, **call)
                    m2, s2, l2 = reference.predict(multimask_output=False, **call)
                    _record(per_kind["mask_input"], m1, s1, l1, m2, s2, l2)
    max_rel_l2, min_iou = TOLERANCES[manifest["precision"]]
    kinds = {
        k: {
            "mask_iou_mean": float(np.mean(v["iou"])),
            "mask_iou_min": float(np.min(v["iou"])),
            "mask_iou_p5": float(np.percentile(v["iou"], 5)),
            "logits_rel_l2_max": float(np.max(v["rel_l2"])),
            "score_abs_err_max": float(np.max(v["score_err"])),
        }
        for k, v in per_kind.items()
    }
    passed = all(r["logits_rel_l2_max"] <= max_rel_l2 and r["mask_iou_mean"] >= min_iou for r in kinds.values())
    return {
        "bundle": bundle_dir,
        "model_type": manifest["model_type"],
        "precision": manifest["precision"],
        "encoder_mode": getattr(engine, "encoder_mode", "single graph"),
        "weights": manifest["weights"]["source"],
        "images": {"count": len(images), "source": source},
        "encoder": {
            "embedding_cosine_min": float(np.min(encoder["cosine"])),
            "embedding_rel_l2_max": float(np.max(encoder["rel_l2"])),
        },
        "prompts": kinds,
        "prompts_per_image": int(prompts_per_image),
        "mask_iou": dict(
            iou_distribution([i for v in per_kind.values() for i in v["iou"]]),
            multimask=iou_distribution([i for k, v in per_kind.items() if k != "mask_input" for i in v["iou"]]),
            single_mask=iou_distribution(per_kind["mask_input"]["iou"]),
        ),
        "tolerance": {"logits_rel_l2_max": max_rel_l2, "mask_iou_mean_min": min_iou},
        "passed": passed,
        "notes": notes,
        "record": run_record(),
    }


def _record(store, m1, s1, l1, m2, s2, l2) -> None:
    store["iou"].extend(_iou(a, b) for a, b in zip(m1, m2))
    store["rel_l2"].append(_rel_l2(l1, l2))
    store["score_err"].append(float(np.max(np.abs(np.asarray(s1) - np.asarray(s2)))))


def format_report(report: Dict[str, Any]) -> str:
    lines = [
        f"{report['bundle']}: {report['model_type']} {report['precision']} "
        f"(weights: {report['weights']}; {report['images']['count']} images from {report['images']['source']})",
        f"encoder mode: {report['encoder_mode']}",
        f"encoder: embedding cosine min {report['encoder']['embedding_cosine_min']:.6f}, "
        f"rel-L2 max {report['encoder']['embedding_rel_l2_max']:.2e}",
        f"{'prompt':<16}{'IoU mean':>10}{'IoU min':>10}{'logits rel-L2':>15}{'score err':>11}",
    ]
    for kind, r in report["prompts"].items():
        lines.append(
            f"{kind:<16}{r['mask_iou_mean']:>10.4f}{r['mask_iou_min']:>10.4f}"
            f"{r['logits_rel_l2_max']:>15.2e}{r['score_abs_err_max']:>11.2e}"
        )
    iou = report["mask_iou"]
    lines.append(
        f"mask IoU over {iou['count']} masks ({report['prompts_per_image']} prompts of each kind per image): "
        f"min {iou['min']:.4f}, p5 {iou['p5']:.4f}, mean {iou['mean']:.4f}"
    )
    tol = report["tolerance"]
    verdict = "PASS" if report["passed"] else "FAIL"
    lines.append(
        f"{verdict} (tolerance for {report['precision']}: logits rel-L2 <= {tol['logits_rel_l2_max']:g}, "
        f"mean IoU >= {tol['mask_iou_mean_min']:g})"
    )
    lines.extend(f"note: {n}" for n in report["notes"])
    return "\n".join(lines)
