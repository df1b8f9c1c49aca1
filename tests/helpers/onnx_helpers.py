"""Shared set-up of the ONNX tests: an official model with seeded random
weights saved as an official checkpoint, real photos, prompts, metrics.

The reference is the official `segment_anything` package, built with the
same hyper-parameters; the model under test only ever sees the .pth file.
"""

import numpy as np
import torch

from sam_edge.config import SamConfig

from sam_fixtures import make_checkpoint, mask_iou, real_photos, rel_l2  # noqa: F401  (re-exported)


def official_sam(config: SamConfig, seed: int):
    """The official Sam with `config`'s hyper-parameters and every parameter randomised
    (see sam_fixtures.randomize_)."""
    from sam_fixtures import build_reference_sam, randomize_

    torch.manual_seed(seed)
    sam = build_reference_sam(config)
    randomize_(sam, seed)
    return sam


def save_official_checkpoint(config: SamConfig, seed: int, path) -> "torch.nn.Module":
    """Save an official-format state_dict of official_sam(config, seed) at `path`; returns the model."""
    return make_checkpoint(config, str(path), seed)


def photos():
    """Real photos in three aspect ratios: {name: (H, W, 3) uint8 RGB}."""
    return real_photos()


def prompt_kinds(image_shape, rng: np.random.Generator):
    """Fresh random prompts of every kind, in original-image pixels: {name: predict kwargs}
    (the generator `sam-edge validate` uses)."""
    from sam_edge.export.validate import random_prompts

    return random_prompts(image_shape, rng)


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
