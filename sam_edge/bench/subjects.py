"""The implementations `sam-edge bench` times, each as a Subject: a bundle from
`sam-edge build`, sam-edge's torch model, or the official `segment_anything`
with the same weights. The official package is imported only for --reference,
torch only for torch models and the reference.
"""

import json
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

import numpy as np


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


def official_model(model_type: str, checkpoint: Optional[str], manifest: Optional[Dict[str, Any]] = None):
    """(the official segment_anything Sam in eval mode, a description of its weights):
    `checkpoint`, or the seeded random weights the bundle (or torch run) was built with."""
    try:
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
    return model.eval(), weights


def reference_subject(model_type: str, checkpoint: Optional[str], manifest: Optional[Dict[str, Any]] = None) -> Subject:
    """A Subject for the official segment_anything package with the same weights:
    `checkpoint`, or the seeded random weights the bundle (or torch run) was built with."""
    model, weights = official_model(model_type, checkpoint, manifest)
    import torch
    from segment_anything import SamPredictor as OfficialPredictor

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
