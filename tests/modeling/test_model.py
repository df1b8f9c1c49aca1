"""Model structure: every size loads official state_dicts unchanged, and the
reduced-depth forward of each size matches the reference."""

import pytest
import torch

from sam_edge.builder import build_sam_from_config
from sam_edge.config import SAM_CONFIGS, get_config

from sam_fixtures import build_reference_sam, make_checkpoint, rel_l2


@pytest.mark.parametrize("model_type", ["vit_b", "vit_l", "vit_h"])
def test_state_dict_matches_official_full_size(model_type):
    from segment_anything import sam_model_registry as ref_registry

    with torch.device("meta"):
        ours = build_sam_from_config(get_config(model_type)).state_dict()
        ref = ref_registry[model_type]().state_dict()
    assert list(ours) == list(ref)
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in ref.items()}


def test_registry_is_data():
    import sam_edge

    assert set(sam_edge.sam_model_registry) == {"default", "vit_b", "vit_l", "vit_h"}
    assert sam_edge.build_sam is sam_edge.sam_model_registry["vit_h"]
    assert [c.encoder_embed_dim for c in SAM_CONFIGS.values()] == [1280, 1024, 768]
    with pytest.raises(ValueError, match="unknown model type"):
        get_config("vit_x")


@pytest.mark.parametrize("model_type", ["vit_l", "vit_h"])
def test_reduced_forward_matches_reference(tmp_path, model_type):
    """ViT-L/H widths and head dims (64, 80) at reduced depth and input size."""
    config = get_config(model_type).reduced(depth=2, image_size=256)
    ref = make_checkpoint(config, tmp_path / "ck.pth", seed=5)
    ours = build_sam_from_config(config, tmp_path / "ck.pth")
    x = torch.randn(2, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert rel_l2(ours.image_encoder(x), ref.image_encoder(x)) <= 1e-4
        inputs = [
            {"image": torch.rand(3, 256, 192) * 255, "original_size": (400, 300),
             "point_coords": torch.rand(1, 3, 2) * 190, "point_labels": torch.tensor([[1, 0, 1]])},
            {"image": torch.rand(3, 200, 256) * 255, "original_size": (200, 256),
             "boxes": torch.tensor([[10.0, 20.0, 150.0, 120.0]])},
        ]
        for multimask in (True, False):
            out, expected = ours(inputs, multimask), ref(inputs, multimask)
            for o, e in zip(out, expected):
                assert rel_l2(o["low_res_logits"], e["low_res_logits"]) <= 1e-4
                assert (o["iou_predictions"] - e["iou_predictions"]).abs().max() <= 1e-4
                assert (o["masks"] != e["masks"]).float().mean() <= 1e-3


def test_attention_backend_switch(small_checkpoint, small_config):
    path, _ = small_checkpoint
    model = build_sam_from_config(small_config, path)
    model.image_encoder.set_attention_backend("nonexistent")
    with pytest.raises(ValueError, match="unknown attention backend"):
        model.image_encoder(torch.zeros(1, 3, 256, 256))


def test_encoder_with_triton_attention_matches_reference(small_checkpoint, small_config):
    """Every block through the Triton kernels (global, and windowed on a padded
    grid), under the interpreter on CPU, against the official encoder.
    fp32 tolerance as for the torch path: reordered reductions only."""
    pytest.importorskip("triton")
    import os

    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("Triton needs CUDA or TRITON_INTERPRET=1")
    path, ref = small_checkpoint
    ours = build_sam_from_config(small_config, path)
    ours.image_encoder.set_attention_backend("triton")
    x = torch.randn(2, 3, 256, 256, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert rel_l2(ours.image_encoder(x), ref.image_encoder(x)) <= 1e-4


def test_encoder_compiles_as_one_graph(small_config):
    """The attention ops dispatch in Python but must not break torch.compile's graph."""
    model = build_sam_from_config(small_config)
    x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = model.image_encoder(x)
        compiled = torch.compile(model.image_encoder, fullgraph=True)
        assert rel_l2(compiled(x), expected) <= 1e-5
