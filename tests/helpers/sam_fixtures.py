"""Official-architecture SAM models with seeded random weights, saved as
official-format checkpoints. No weights are ever downloaded.

Every parameter is randomised, including the ones the reference initialises
to zero (rel_pos_h/w, pos_embed), so rel-pos bugs cannot hide; the
hypernetwork MLPs' last layers are scaled so mask logits have a spread like a
trained model's (std ≈ 3), which makes mask IoU meaningful.
"""

from functools import partial
from typing import Tuple

import numpy as np
import torch

from sam_edge.config import SamConfig

LOGIT_STD = 3.0


def build_reference_sam(config: SamConfig):
    """The official segment_anything Sam with `config`'s hyper-parameters."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    grid = config.image_embedding_size
    return Sam(
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
            num_multimask_outputs=config.num_multimask_outputs,
            transformer=TwoWayTransformer(
                depth=config.decoder_depth,
                embedding_dim=config.prompt_embed_dim,
                mlp_dim=config.decoder_mlp_dim,
                num_heads=config.decoder_num_heads,
            ),
            transformer_dim=config.prompt_embed_dim,
            iou_head_depth=config.iou_head_depth,
            iou_head_hidden_dim=config.iou_head_hidden_dim,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    ).eval()


@torch.no_grad()
def randomize_(sam, seed: int) -> None:
    """Give every parameter of an official Sam seeded random values, in place."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in sam.named_parameters():
        noise = torch.randn(p.shape, generator=gen)
        if "rel_pos" in name or "pos_embed" in name:
            p.copy_(0.5 * noise)
        elif "norm" in name or "neck.1" in name or "neck.3" in name or "upscaling.1" in name or "downscaling.1" in name or "downscaling.4" in name:
            p.copy_(1.0 + 0.1 * noise if name.endswith("weight") else 0.1 * noise)
        elif name.endswith("bias"):
            # As large as rel-pos: what depends on the biases (padding by the qkv
            # bias, bias fusion, the neck) must be exercised, not hidden under 0.02.
            p.copy_(float(0.2 + 0.3 * torch.rand((), generator=gen)) * noise)
        else:
            fan_in = max(p[0].numel(), 1) if p.dim() > 1 else p.numel()
            p.copy_(noise / fan_in**0.5)
    # Scale the hypernetwork outputs so mask logits spread like a trained model's.
    emb = torch.randn(1, sam.prompt_encoder.embed_dim, *sam.prompt_encoder.image_embedding_size, generator=gen)
    pts = torch.rand(1, 3, 2, generator=gen) * sam.image_encoder.img_size
    sparse, dense = sam.prompt_encoder((pts, torch.tensor([[1, 0, 1]])), None, None)
    logits, _ = sam.mask_decoder(emb, sam.prompt_encoder.get_dense_pe(), sparse, dense, True)
    gain = LOGIT_STD / float(logits.std())
    for mlp in sam.mask_decoder.output_hypernetworks_mlps:
        mlp.layers[-1].weight.mul_(gain)
        mlp.layers[-1].bias.mul_(gain)


def make_checkpoint(config: SamConfig, path, seed: int = 0):
    """Build the official model for `config` with random weights, save its
    state_dict to `path` as an official checkpoint; return the reference model."""
    torch.manual_seed(seed)  # the prompt encoder's Gaussian matrix is a random buffer
    ref = build_reference_sam(config)
    randomize_(ref, seed)
    torch.save(ref.state_dict(), path)
    return ref


def real_photos() -> dict:
    """Real photos in three aspect ratios, from scikit-image's bundled data."""
    from skimage import data

    return {
        "square": data.astronaut(),  # 512 x 512
        "landscape": data.coffee(),  # 400 x 600
        "portrait": np.ascontiguousarray(np.rot90(data.rocket())),  # 640 x 427
    }


#: What the tests' int8 bundles calibrate on: scikit-image's bundled photos that are
#: not among real_photos(), which the tests evaluate on. Ranges fitted to the very
#: images an error is measured on would flatter that error.
CALIBRATION_PHOTOS = ("chelsea", "hubble_deep_field", "immunohistochemistry", "retina")


def write_calibration_photos(directory) -> str:
    """Write CALIBRATION_PHOTOS as PNGs into `directory` (created) for
    build_bundle(calib_images=...); returns the directory. Refuses any photo
    that is also an evaluation photo, so the two sets stay disjoint."""
    import os

    from PIL import Image
    from skimage import data

    os.makedirs(directory, exist_ok=True)
    evaluated = list(real_photos().values())
    for name in CALIBRATION_PHOTOS:
        image = getattr(data, name)()
        if any(image.shape == e.shape and np.array_equal(image, e) for e in evaluated):
            raise ValueError(f"calibration photo {name!r} is also an evaluation photo")
        Image.fromarray(image).save(os.path.join(directory, f"{name}.png"))
    return str(directory)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def rel_l2(actual, expected) -> float:
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    return float(np.linalg.norm(actual - expected) / max(np.linalg.norm(expected), 1e-12))


def prompt_cases(shape: Tuple[int, int], seed: int):
    """(name, kwargs) prompt sets for SamPredictor.predict inside an (H, W) image."""
    rng = np.random.default_rng(seed)
    h, w = shape

    def pts(n):
        return np.stack([rng.uniform(0, w - 1, n), rng.uniform(0, h - 1, n)], axis=1)

    x0, y0 = rng.uniform(0, w / 2), rng.uniform(0, h / 2)
    box = np.array([x0, y0, x0 + rng.uniform(w / 8, w / 2), y0 + rng.uniform(h / 8, h / 2)])
    return [
        ("one_point", dict(point_coords=pts(1), point_labels=np.array([1]))),
        ("points_with_negative", dict(point_coords=pts(3), point_labels=np.array([1, 0, 1]))),
        ("box", dict(box=box)),
        ("box_and_points", dict(box=box, point_coords=pts(2), point_labels=np.array([1, 0]))),
        ("single_mask", dict(point_coords=pts(2), point_labels=np.array([1, 1]), multimask_output=False)),
    ]
