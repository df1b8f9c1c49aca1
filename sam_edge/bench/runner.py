"""Timing the stages of SAM inference for one bundle, torch model or the official package.

A Subject wraps one implementation behind the same six steps (preprocess,
encode, the decoder's image part, decode, mask post-processing, and a
predictor for end-to-end runs); `measure` times them all alike and returns a
run of the results schema (schema.py). The official `segment_anything` is
imported only for --reference, torch only for torch models and the reference.
"""

import gc
import json
import os
import resource
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .schema import summarize_stage

#: Photos bundled with scikit-image, in three aspect ratios (square, landscape, portrait).
BUNDLED_PHOTOS = ("astronaut", "coffee", "rocket")
#: Decoder and post-processing calls timed per image per repetition: they are
#: milliseconds, so one call per encoder run would leave their percentiles to a handful of samples.
CALLS_PER_IMAGE = 5
#: Seconds between resident-set samples while a subject runs.
RSS_SAMPLE_PERIOD_S = 0.005


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


# ------------------------------------------------------------------ memory


def _rss_mib() -> Optional[float]:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return None


def _maxrss_mib() -> float:
    # ru_maxrss is KiB on Linux, bytes on macOS.
    scale = 1 / 2**20 if sys.platform == "darwin" else 1 / 2**10
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


class RssMonitor:
    """Resident set before, and at its peak during, a `with` block.

    The peak is the process's high-water mark (getrusage) when the block raised
    it, which is exact; otherwise (an earlier subject in this process peaked
    higher) the highest of samples taken every RSS_SAMPLE_PERIOD_S."""

    def __enter__(self) -> "RssMonitor":
        self.before = _rss_mib()
        self.maxrss_before = _maxrss_mib()
        self.sampled = self.before or 0.0
        self._stop = threading.Event()
        self._thread = None
        if self.before is not None:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(RSS_SAMPLE_PERIOD_S):
            self.sampled = max(self.sampled, _rss_mib() or 0.0)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        maxrss = _maxrss_mib()
        if maxrss > self.maxrss_before or self.before is None:
            self.peak, self.method = maxrss, "getrusage high-water mark (the process's peak, set during this run)"
        else:
            self.peak = max(self.sampled, _rss_mib() or 0.0)
            self.method = f"/proc/self/statm sampled every {RSS_SAMPLE_PERIOD_S * 1e3:g} ms"


# ------------------------------------------------------------------ subjects


@dataclass
class Subject:
    """One implementation under test, as the steps the runner times.

    preprocess(image) -> (model input, input_size (h, w)); encode(x) -> embedding;
    decoder_image(embedding) (None when the runtime has no separate image part:
    decoder_image_skip says why); decode(embedding, coords (P, 1, 2), labels (P, 1))
    -> (P, 3, m, m) low-res logits, prompts in the resized input frame;
    postprocess(low_res[:1], input_size, original_size) -> binary masks;
    predictor: set_image / predict for the end-to-end runs.
    """

    name: str
    kind: str
    model_type: str
    precision: str
    backend: str
    encoder_mode: str
    weights: Any
    image_size: int
    preprocess: Callable
    encode: Callable
    decode: Callable
    postprocess: Callable
    predictor: Any
    decoder_image: Optional[Callable] = None
    decoder_image_skip: Optional[str] = None
    prepare_decode: Optional[Callable] = None
    bundle: Optional[Dict[str, Any]] = None
    notes: List[str] = field(default_factory=list)


def bundle_summary(bundle_dir: str, manifest: Dict[str, Any]) -> Dict[str, Any]:
    """Size, precision, the sam-edge version that built it, and the manifest's hash."""
    from ..runtime.bundle import MANIFEST_NAME, sha256_file

    manifest_path = os.path.join(bundle_dir, MANIFEST_NAME)
    return {
        "path": os.path.abspath(bundle_dir),
        "bytes": int(sum(r["bytes"] for r in manifest["files"].values()) + os.path.getsize(manifest_path)),
        "model_type": manifest.get("model_type"),
        "precision": manifest.get("precision"),
        "backend": manifest.get("backend"),
        "sam_edge_version": manifest.get("versions", {}).get("sam_edge"),
        "created_utc": manifest.get("created_utc"),
        "manifest_sha256": sha256_file(manifest_path),
        "weights": manifest.get("weights"),
    }


def _no_grad(fn: Callable) -> Callable:
    import torch

    def run(*args):
        with torch.inference_mode():
            return fn(*args)

    return run


def _ours(name: str, kind: str, engine_or_model: Any, model_type: str, precision: str, weights: Any,
          encoder_mode: str, bundle: Optional[Dict[str, Any]] = None) -> Subject:
    """A Subject over sam-edge's SamPredictor and its backend (a bundle's engine or a torch Sam)."""
    from ..runtime.predictor import SamPredictor

    predictor = SamPredictor(engine_or_model)
    backend = predictor.backend
    transform = predictor.transform
    notes: List[str] = []
    prepare_decode = None

    def resize(image):
        resized = transform.apply_image(image)
        return np.ascontiguousarray(resized.transpose(2, 0, 1)[None]), resized.shape[:2]

    if backend.name == "torch":
        import torch

        model = engine_or_model

        def preprocess(image):
            batch, size = resize(image)
            return model.preprocess(torch.as_tensor(batch, device=backend.device)), size

        encode = _no_grad(model.image_encoder)
        decoder_image, skip = None, "the torch decoder is one module: its image part runs inside every call"
    elif hasattr(backend, "preprocess") and hasattr(getattr(backend, "encoder", None), "run"):
        def preprocess(image):
            batch, size = resize(image)
            return backend.preprocess(batch), size

        def encode(x):
            return backend.encoder.run(None, {"image": x})[0]

        if getattr(backend, "decoder_image", None) is not None:
            names = [o.name for o in backend.decoder_image.get_outputs()]

            def decoder_image(embedding):
                return backend.decoder_image.run(names, {"image_embeddings": embedding})

            # The runtime keeps the image part with the embedding it was computed for:
            # fill that cache untimed, so the decoder calls are timed as they run in use.
            prepare_decode, skip = backend.image_side, None
        else:
            decoder_image, skip = None, "this bundle's decoder is one graph: its image part runs inside every call"
    else:
        def preprocess(image):
            return backend.from_numpy(resize(image)[0]), None

        def encode(x):
            return backend.embed(x)

        decoder_image = None
        skip = f"the {backend.name} runtime does not expose its decoder's image part"
        notes.append(f"{backend.name}: normalisation is timed inside the encoder stage (the backend fuses it)")

    def decode(embedding, coords, labels):
        low_res, _ = backend.decode(embedding, backend.from_numpy(coords), backend.from_numpy(labels), None, None, True)
        return low_res

    if hasattr(backend, "binary_masks"):
        postprocess = backend.binary_masks
    else:
        def postprocess(low_res, input_size, original_size):
            return backend.postprocess_masks(low_res, input_size, original_size) > backend.mask_threshold

    return Subject(name=name, kind=kind, model_type=model_type, precision=precision, backend=backend.name,
                   encoder_mode=encoder_mode, weights=weights, image_size=backend.image_size,
                   preprocess=preprocess, encode=encode, decode=decode, postprocess=postprocess,
                   predictor=predictor, decoder_image=decoder_image, decoder_image_skip=skip,
                   prepare_decode=prepare_decode, bundle=bundle, notes=notes)


def bundle_subject(bundle_dir: str, threads: Optional[int]) -> Subject:
    """A Subject for a bundle from `sam-edge build`, loaded as sam_edge.load does."""
    from ..runtime.bundle import load

    engine = load(bundle_dir, threads=threads)
    manifest = engine.manifest
    name = f"{manifest['model_type']}-{manifest['precision']}"
    if manifest["backend"] != "onnxruntime":
        name += f"-{manifest['backend']}"
    return _ours(name, "bundle", engine, manifest["model_type"], manifest["precision"], manifest["weights"],
                 getattr(engine, "encoder_mode", manifest["backend"]), bundle_summary(bundle_dir, manifest))


def torch_subject(model_type: str, checkpoint: Optional[str]) -> Subject:
    """A Subject for sam-edge's torch model from an official checkpoint, or seeded random weights."""
    model = torch_model(model_type, checkpoint)
    backends = sorted({block.attn.backend for block in model.image_encoder.blocks})
    env = os.environ.get("SAM_EDGE_ATTENTION_BACKEND")
    mode = f"torch eager, attention backend {'/'.join(backends)}"
    if env:
        mode += f" (SAM_EDGE_ATTENTION_BACKEND={env})"
    weights = {"source": "checkpoint", "checkpoint": os.path.basename(checkpoint)} if checkpoint else \
        {"source": "random", "seed": _random_seed()}
    return _ours(f"{model_type}-torch", "torch", model, model_type, "fp32", weights, mode)


def _random_seed() -> int:
    from ..builder import RANDOM_WEIGHTS_SEED

    return RANDOM_WEIGHTS_SEED


def torch_model(model_type: str, checkpoint: Optional[str]):
    """sam-edge's Sam from `checkpoint`, or the seeded random weights `sam-edge build` uses."""
    from ..builder import random_weights_model, sam_model_registry
    from ..config import get_config

    if checkpoint is not None:
        return sam_model_registry[model_type](checkpoint=checkpoint).eval()

    print(f"sam-edge bench: WARNING: no --checkpoint: {model_type} with SEEDED RANDOM WEIGHTS (seed "
          f"{_random_seed()}); timings are real, masks are meaningless", file=sys.stderr)
    return random_weights_model(get_config(model_type), _random_seed()).eval()


def reference_config_check(manifest: Dict[str, Any]) -> None:
    """ValueError unless the bundle is of an official size: the official package builds only those."""
    import dataclasses

    from ..config import SAM_CONFIGS

    official = SAM_CONFIGS.get(manifest.get("model_type"))
    # Compared as JSON holds it (tuples become lists in the manifest).
    if official is None or manifest.get("config") != json.loads(json.dumps(dataclasses.asdict(official))):
        raise ValueError(f"--reference times the official {manifest['model_type']}, but this bundle was built "
                         "from a modified configuration (a reduced test model?): drop --reference for it")


def reference_subject(model_type: str, checkpoint: Optional[str], manifest: Optional[Dict[str, Any]] = None) -> Subject:
    """A Subject for the official segment_anything package with the same weights:
    `checkpoint`, or the seeded random weights the bundle (or torch run) was built with."""
    try:
        import torch
        from segment_anything import SamPredictor as OfficialPredictor
        from segment_anything import sam_model_registry as official_registry
    except ImportError as exc:
        raise ImportError(
            f"--reference needs the official package: pip install segment-anything torch ({exc})") from None
    from ..config import get_config

    if manifest is not None:
        reference_config_check(manifest)
    if checkpoint is not None:
        model = official_registry[model_type](checkpoint=checkpoint)
        weights = {"source": "checkpoint", "checkpoint": os.path.basename(checkpoint)}
    else:
        weights = (manifest or {}).get("weights") or {"source": "random", "seed": _random_seed()}
        if weights.get("source") != "random":
            raise ValueError(f"--reference needs the checkpoint the bundle was built from "
                             f"({weights.get('checkpoint', 'see its manifest')}): pass --checkpoint PATH")
        from ..builder import random_weights_model

        state = random_weights_model(get_config(model_type), int(weights["seed"])).state_dict()
        model = official_registry[model_type](checkpoint=None)
        model.load_state_dict(state, strict=True)
        del state
    model.eval()
    predictor = OfficialPredictor(model)

    def preprocess(image):
        resized = predictor.transform.apply_image(image)
        x = torch.as_tensor(resized, device=model.device).permute(2, 0, 1).contiguous()[None]
        return model.preprocess(x), resized.shape[:2]

    def decode(embedding, coords, labels):
        points = (torch.as_tensor(coords), torch.as_tensor(labels, dtype=torch.int))
        sparse, dense = model.prompt_encoder(points=points, boxes=None, masks=None)
        low_res, _ = model.mask_decoder(image_embeddings=embedding, image_pe=model.prompt_encoder.get_dense_pe(),
                                        sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                        multimask_output=True)
        return low_res

    def postprocess(low_res, input_size, original_size):
        return model.postprocess_masks(low_res, input_size, original_size) > model.mask_threshold

    import segment_anything

    version = getattr(segment_anything, "__version__", "1.0")
    return Subject(name=f"reference-{model_type}", kind="reference", model_type=model_type, precision="fp32",
                   backend="torch (official segment_anything)", encoder_mode=f"official segment_anything {version}, "
                   "torch eager fp32", weights=weights, image_size=model.image_encoder.img_size,
                   preprocess=_no_grad(preprocess), encode=_no_grad(model.image_encoder), decode=_no_grad(decode),
                   postprocess=_no_grad(postprocess), predictor=predictor, decoder_image=None,
                   decoder_image_skip="the official decoder is one module: its image part runs inside every call")


# ------------------------------------------------------------------ measuring


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
        rss_loaded = _rss_mib()
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
