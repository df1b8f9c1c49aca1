"""Timing the stages of SAM inference for one Subject (subjects.py): a bundle, the
torch model or the official package, each behind the same six steps (preprocess,
encode, the decoder's image part, decode, mask post-processing, and a predictor
for end-to-end runs). `measure` times them all alike, with the resident set
watched (memory.py), and returns a run of the results schema (schema.py).
"""

import gc
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .memory import RssMonitor, rss_mib
from .schema import summarize_stage
from .subjects import Subject

#: Photos bundled with scikit-image, in three aspect ratios (square, landscape, portrait).
BUNDLED_PHOTOS = ("astronaut", "coffee", "rocket")
#: Decoder and post-processing calls timed per image per repetition: they are
#: milliseconds, so one call per encoder run would leave their percentiles to a handful of samples.
CALLS_PER_IMAGE = 5


def bench_images(directory: Optional[str]) -> Tuple[List[np.ndarray], str, List[str]]:
    """(RGB uint8 images, where they came from, notes). From `directory`, else
    scikit-image's bundled photos, else (without scikit-image) one synthetic
    image, said so in the notes: the stage timings do not depend on content."""
    if directory is not None:
        from ..export.quantize import calibration_images  # numpy + PIL only

        images, source = calibration_images(directory)
        return [np.ascontiguousarray(i[..., :3]) for i in images], source, []
    try:
        from skimage import data
    except ImportError:
        rng = np.random.default_rng(0)
        yy, xx = np.mgrid[0:480, 0:640]
        base = np.stack([xx * 255 // 639, yy * 255 // 479, (xx + yy) * 255 // 1118], axis=-1)
        image = np.clip(base + rng.integers(-20, 21, base.shape), 0, 255).astype(np.uint8)
        note = ("scikit-image is not installed, so no bundled photos: timed on one synthetic 480x640 image "
                "(pass --images DIR for your own, or pip install scikit-image)")
        print(f"sam-edge bench: NOTE: {note}", file=sys.stderr)
        return [image], "synthetic 480x640 gradient + noise", [note]
    images = [getattr(data, name)() for name in BUNDLED_PHOTOS]
    images[2] = np.rot90(images[2])  # the rocket upright: a portrait image
    return [np.ascontiguousarray(i) for i in images], "scikit-image photos (" + ", ".join(BUNDLED_PHOTOS) + ")", []


def _prompts(rng: np.random.Generator, count: int, height: int, width: int) -> Tuple[np.ndarray, np.ndarray]:
    """`count` one-point prompts: coords (count, 1, 2) float32 XY within (height, width), labels (count, 1) 1."""
    coords = np.stack([rng.uniform(0, width - 1, count), rng.uniform(0, height - 1, count)], axis=-1)
    return coords[:, None].astype(np.float32), np.ones((count, 1), np.int64)


def _timed(fn: Callable, *args) -> Tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def measure(
    subject_factory: Callable[[], Subject],
    images: Sequence[np.ndarray],
    prompts: Sequence[int],
    queries: Sequence[int],
    repeat: int,
    warmup: int,
    seed: int = 0,
    progress: Optional[Any] = None,
) -> Dict[str, Any]:
    """Load a subject and time every stage; returns a run of the results schema.

    `progress`, a tqdm bar, is advanced once per image per repetition (stages,
    then end to end). The subject is loaded inside the memory window, so
    added RSS counts the model too.
    """
    samples: Dict[str, List[float]] = {}

    def add(stage: str, seconds: float) -> None:
        samples.setdefault(stage, []).append(seconds)

    with RssMonitor() as memory:
        subject, load_s = _timed(subject_factory)
        rss_loaded = rss_mib()
        if progress is not None:
            progress.set_postfix_str(subject.name)
        rng = np.random.default_rng(seed)
        max_queries = max(queries)

        def stages(image: np.ndarray, record: bool) -> None:
            original = image.shape[:2]
            (x, input_size), t_pre = _timed(subject.preprocess, image)
            embedding, t_enc = _timed(subject.encode, x)
            if record:
                add("preprocess", t_pre)
                add("encoder", t_enc)
            if input_size is None:  # a backend that resizes inside: prompts in the model's frame
                input_size = (subject.image_size, subject.image_size)
            for _ in range(CALLS_PER_IMAGE if record else 1):
                if subject.decoder_image is not None:
                    _, t = _timed(subject.decoder_image, embedding)
                    if record:
                        add("decoder_image", t)
                if subject.prepare_decode is not None:
                    subject.prepare_decode(embedding)
                low_res = None
                for p in prompts:
                    coords, labels = _prompts(rng, p, *input_size)
                    out, t = _timed(subject.decode, embedding, coords, labels)
                    if record:
                        add(f"decoder_call_p{p}", t)
                        add(f"decoder_prompt_p{p}", t / p)
                    low_res = out[:1] if low_res is None else low_res
                _, t = _timed(subject.postprocess, low_res, input_size, original)
                if record:
                    add("mask_postprocess", t)

        def end_to_end(image: np.ndarray, record: bool) -> None:
            coords, labels = _prompts(rng, max_queries if record else 1, *image.shape[:2])
            t0 = time.perf_counter()
            subject.predictor.set_image(image)
            for q in range(len(coords)):
                subject.predictor.predict(point_coords=coords[q].astype(np.float64), point_labels=labels[q],
                                          multimask_output=True)
                if record and q + 1 in queries:
                    add(f"e2e_query_{q + 1}", time.perf_counter() - t0)

        for _ in range(warmup):
            stages(images[0], record=False)
            end_to_end(images[0], record=False)
        for _ in range(repeat):
            for image in images:
                stages(image, record=True)
                end_to_end(image, record=True)
                if progress is not None:
                    progress.update()
    units = {"preprocess": ("image", 1), "encoder": ("image", 1), "decoder_image": ("image", 1),
             "mask_postprocess": ("call (3 masks at the original size)", 1)}
    for p in prompts:
        units[f"decoder_call_p{p}"] = (f"call ({p} prompt{'s' if p > 1 else ''})", 1)
        units[f"decoder_prompt_p{p}"] = ("prompt", 1)
    for k in queries:
        units[f"e2e_query_{k}"] = ("query", k)
    from .schema import stage_names

    summaries: Dict[str, Any] = {}
    for stage in stage_names(prompts, queries):
        if stage == "decoder_image" and subject.decoder_image is None:
            summaries[stage] = {"skipped": subject.decoder_image_skip}
        else:
            unit, items = units[stage]
            summaries[stage] = summarize_stage(samples[stage], unit, items)
    run = {
        "name": subject.name,
        "kind": subject.kind,
        "model_type": subject.model_type,
        "precision": subject.precision,
        "backend": subject.backend,
        "encoder_mode": subject.encoder_mode,
        "weights": subject.weights,
        "bundle": subject.bundle,
        "load_s": load_s,
        "memory": {
            "rss_before_load_mib": memory.before,
            "rss_loaded_mib": rss_loaded,
            "peak_rss_mib": memory.peak,
            "added_rss_mib": None if memory.before is None else memory.peak - memory.before,
            "method": memory.method,
        },
        "stages": summaries,
        "notes": subject.notes,
    }
    del subject
    gc.collect()
    return run


def add_reference_ratios(runs: List[Dict[str, Any]]) -> None:
    """Give every non-reference run, whose model type has a reference run, its
    ratio_to_reference per stage: reference p50 / this run's p50 (above 1: faster)."""
    references = {r["model_type"]: r for r in runs if r["kind"] == "reference"}
    for run in runs:
        ref = references.get(run["model_type"])
        if run["kind"] == "reference" or ref is None:
            continue
        ratios = {}
        for stage, summary in run["stages"].items():
            other = ref["stages"].get(stage, {})
            if "p50_ms" in summary and "p50_ms" in other and summary["p50_ms"] > 0:
                ratios[stage] = other["p50_ms"] / summary["p50_ms"]
        run["ratio_to_reference"] = ratios
        run["reference"] = ref["name"]
