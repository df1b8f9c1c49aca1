"""Shared set-up of the ONNX tests: an official model with seeded random
weights saved as an official checkpoint, real photos, prompts, metrics.

The reference is the official `segment_anything` package, built with the
same hyper-parameters; the model under test only ever sees the .pth file.
"""

import numpy as np
import torch

from sam_edge.config import SamConfig

#: Target std of the random model's mask logits, so thresholding at 0 is a real test.
MASK_LOGIT_STD = 3.0


def official_sam(config: SamConfig, seed: int):
    """The official Sam with `config`'s hyper-parameters and every parameter randomised."""
    from functools import partial

    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    torch.manual_seed(seed)
    grid = config.image_embedding_size
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=config.encoder_depth,
            embed_dim=config.encoder_embed_dim,
            img_size=config.image_size,
            mlp_ratio=config.mlp_ratio,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=config.encoder_num_heads,
            patch_size=config.patch_size,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=config.encoder_global_attn_indexes,
            window_size=config.window_size,
            out_chans=config.prompt_embed_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=config.prompt_embed_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(config.image_size, config.image_size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=config.prompt_embed_dim, mlp_dim=2048, num_heads=8),
            transformer_dim=config.prompt_embed_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    ).eval()
    with torch.no_grad():
        for name, param in sam.named_parameters():
            if name.endswith(("rel_pos_h", "rel_pos_w", "pos_embed")):
                param.copy_(0.5 * torch.randn_like(param))
            elif "norm" in name and name.endswith("weight"):
                param.copy_(1 + 0.1 * torch.randn_like(param))
            elif "norm" in name and name.endswith("bias"):
                param.copy_(0.1 * torch.randn_like(param))
        # Scale the hypernetworks so the mask logits have std ~ MASK_LOGIT_STD.
        pe = sam.prompt_encoder
        emb = torch.randn(1, config.prompt_embed_dim, grid, grid)
        pts = torch.rand(4, 3, 2) * config.image_size
        sparse, dense = pe((pts, torch.ones(4, 3, dtype=torch.int)), None, None)
        logits, _ = sam.mask_decoder(emb, pe.get_dense_pe(), sparse, dense, multimask_output=True)
        factor = MASK_LOGIT_STD / float(logits.std())
        for mlp in sam.mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(factor)
            mlp.layers[-1].bias.mul_(factor)
    return sam


def save_official_checkpoint(config: SamConfig, seed: int, path) -> "torch.nn.Module":
    """Save an official-format state_dict of official_sam(config, seed) at `path`; returns the model."""
    sam = official_sam(config, seed)
    torch.save(sam.state_dict(), str(path))
    return sam


def photos():
    """Real photos in three aspect ratios: {name: (H, W, 3) uint8 RGB}."""
    from skimage import data

    return {
        "portrait": np.ascontiguousarray(np.rot90(data.rocket())),
        "landscape": data.coffee(),
        "square": data.astronaut(),
    }


def prompt_kinds(image_shape, rng: np.random.Generator):
    """Fresh random prompts of every kind, in original-image pixels: {name: predict kwargs}."""
    h, w = image_shape[:2]

    def points(n):
        return np.stack([rng.uniform(0, w - 1, n), rng.uniform(0, h - 1, n)], axis=1)

    x0, x1 = np.sort(rng.uniform(0, w - 1, 2))
    y0, y1 = np.sort(rng.uniform(0, h - 1, 2))
    box = np.array([x0, y0, x1, y1])
    return {
        "one_point": dict(point_coords=points(1), point_labels=np.array([1])),
        "pos_neg_points": dict(point_coords=points(3), point_labels=np.array([1, 0, 0])),
        "box": dict(box=box),
        "box_and_points": dict(box=box, point_coords=points(2), point_labels=np.array([1, 0])),
    }


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def rel_l2(x: np.ndarray, ref: np.ndarray) -> float:
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(x - ref) / max(np.linalg.norm(ref), 1e-12))


def reduced_config(model: str = "vit_b", depth: int = 2, image_size: int = 256) -> SamConfig:
    """A small variant: 2 blocks (one windowed, one global), 256 px input (a 16x16
    grid, which the 14-wide windows pad to 28)."""
    from sam_edge import get_config

    return get_config(model).reduced(depth=depth, image_size=image_size)


def build_test_bundle(root, config: SamConfig, seed: int, precision: str = "fp32", **kwargs):
    """(official reference model, checkpoint path, bundle dir) for `config`, built under `root`."""
    from sam_edge.export.build import build_bundle

    checkpoint = root / f"{config.name}-seed{seed}.pth"
    reference = save_official_checkpoint(config, seed, checkpoint)
    bundle = root / f"{config.name}-seed{seed}-{precision}"
    build_bundle(str(bundle), config, checkpoint=str(checkpoint), precision=precision, quiet=True, **kwargs)
    return reference, checkpoint, bundle
