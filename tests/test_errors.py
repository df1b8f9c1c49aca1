"""Bad input gets a ValueError/TypeError (or FileNotFoundError) that says what is wrong."""

import pickle

import numpy as np
import pytest
import torch

import sam_edge
from sam_edge.builder import CheckpointError, build_sam_from_config
from sam_edge.config import get_config

from sam_fixtures import make_checkpoint


@pytest.fixture(scope="module")
def predictor(small_checkpoint, small_config):
    path, _ = small_checkpoint
    return sam_edge.SamPredictor(build_sam_from_config(small_config, path))


@pytest.fixture(scope="module")
def ready(predictor):
    image = np.random.default_rng(0).integers(0, 256, (120, 90, 3), dtype=np.uint8)
    predictor.set_image(image)
    return predictor


def test_predict_before_set_image(small_checkpoint, small_config):
    p = sam_edge.SamPredictor(build_sam_from_config(small_config, small_checkpoint[0]))
    for call in (lambda: p.predict(np.array([[1, 1]]), np.array([1])), p.get_image_embedding,
                 lambda: p.predict_torch(None, None, boxes=torch.zeros(1, 4))):
        with pytest.raises(ValueError, match="set_image"):
            call()
        with pytest.raises(RuntimeError):  # as the official package
            call()


@pytest.mark.parametrize(
    "image,error,match",
    [
        (np.zeros((10, 10), np.uint8), ValueError, "3 colour channels"),
        (np.zeros((10, 10, 4), np.uint8), ValueError, "3 colour channels"),
        (np.zeros((0, 10, 3), np.uint8), ValueError, "empty"),
        (np.zeros((10, 10, 3), np.float32), TypeError, "uint8"),
        ([[1, 2, 3]], TypeError, "numpy array"),
    ],
)
def test_bad_images(predictor, image, error, match):
    with pytest.raises(error, match=match):
        predictor.set_image(image)


def test_unknown_image_format(predictor):
    with pytest.raises(ValueError, match="image_format"):
        predictor.set_image(np.zeros((8, 8, 3), np.uint8), image_format="RGBA")


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(point_coords=np.array([[1.0, np.nan]]), point_labels=np.array([1])), "NaN"),
        (dict(point_coords=np.array([1.0, 2.0]), point_labels=np.array([1])), r"\(N, 2\)"),
        (dict(point_coords=np.array([[1.0, 2.0, 3.0]]), point_labels=np.array([1])), r"\(N, 2\)"),
        (dict(point_coords=np.array([[1.0, 2.0]])), "together"),
        (dict(point_labels=np.array([1])), "together"),
        (dict(point_coords=np.array([[1.0, 2.0]]), point_labels=np.array([1, 0])), "one label per point"),
        (dict(point_coords=np.array([[1.0, 2.0]]), point_labels=np.array([5])), "foreground"),
        (dict(box=np.array([1.0, 2.0, 3.0])), "4 numbers"),
        (dict(box=np.array([1.0, 2.0, np.inf, 4.0])), "NaN or infinite"),
        (dict(box="abcd"), "numeric"),
        (dict(mask_input=np.zeros((1, 32, 32), np.float32)), r"\(1, 64, 64\)"),
        (dict(mask_input=np.zeros((64, 64), np.float32)), r"\(1, 64, 64\)"),
    ],
)
def test_bad_prompts(ready, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        ready.predict(**kwargs)


def test_bad_torch_prompts(ready):
    with pytest.raises(ValueError, match=r"\(B, N, 2\)"):
        ready.predict_torch(torch.zeros(3, 2), torch.zeros(3))
    with pytest.raises(ValueError, match="point_labels must be"):
        ready.predict_torch(torch.zeros(1, 3, 2), torch.zeros(1, 2))
    with pytest.raises(ValueError, match="batch sizes disagree"):
        ready.predict_torch(torch.zeros(2, 1, 2), torch.ones(2, 1), boxes=torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"\(1, 3, h, w\)"):
        ready.set_torch_image(torch.zeros(1, 3, 100, 100), (100, 100))


def test_not_a_model():
    with pytest.raises(TypeError, match="expected a sam_edge Sam model"):
        sam_edge.SamPredictor(object())


# ---- checkpoints -------------------------------------------------------------

def test_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        sam_edge.sam_model_registry["vit_b"](checkpoint=tmp_path / "nope.pth")


def test_empty_and_truncated_checkpoint(tmp_path, small_checkpoint, small_config):
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        build_sam_from_config(small_config, empty)
    data = small_checkpoint[0].read_bytes()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        build_sam_from_config(small_config, truncated)
    text = tmp_path / "notes.pth"
    text.write_text("these are not weights\n" * 10)
    with pytest.raises(CheckpointError):
        build_sam_from_config(small_config, text)


class _Payload:
    def __reduce__(self):
        return (print, ("PICKLE CODE RAN",))


def test_pickle_code_never_runs(tmp_path, small_config, capsys):
    evil = tmp_path / "evil.pth"
    torch.save({"image_encoder.patch_embed.proj.weight": torch.zeros(1), "x": _Payload()}, evil)
    with pytest.raises(CheckpointError, match="weights-only"):
        build_sam_from_config(small_config, evil)
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps(_Payload()))
    with pytest.raises(CheckpointError):
        build_sam_from_config(small_config, raw)
    assert "PICKLE CODE RAN" not in capsys.readouterr().out


def test_non_state_dict(tmp_path, small_config):
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], path)
    with pytest.raises(CheckpointError, match="not a state_dict"):
        build_sam_from_config(small_config, path)
    path = tmp_path / "other.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(CheckpointError, match="not a SAM state_dict"):
        build_sam_from_config(small_config, path)


def test_wrong_size_checkpoint_is_named(tmp_path):
    """A ViT-L checkpoint given to ViT-B says it looks like vit_l."""
    with torch.device("meta"):
        vit_l = build_sam_from_config(get_config("vit_l"))
    state = {k: torch.zeros(v.shape, dtype=v.dtype) for k, v in vit_l.state_dict().items()}
    path = tmp_path / "vit_l.pth"
    torch.save(state, path)
    del state
    with pytest.raises(CheckpointError, match="looks like vit_l") as info:
        sam_edge.sam_model_registry["vit_b"](checkpoint=path)
    assert "shape mismatches" in str(info.value)


def test_reduced_checkpoint_missing_keys(tmp_path, small_config):
    deeper = get_config("vit_b").reduced(depth=4, image_size=256)
    make_checkpoint(deeper, tmp_path / "deep.pth", seed=2)
    with pytest.raises(CheckpointError, match="unexpected keys"):
        build_sam_from_config(small_config, tmp_path / "deep.pth")
