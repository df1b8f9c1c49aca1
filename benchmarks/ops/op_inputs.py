"""Inputs shared by the op benchmarks (a module of its own: tests/ has a conftest too)."""

import numpy as np


def blobby_masks(count: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """(count, height, width) bool masks of smooth blobs with holes and islands,
    like SAM's: smoothed noise, thresholded."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    masks = np.empty((count, height, width), dtype=bool)
    for i in range(count):
        coarse = rng.standard_normal((max(height // 24, 2), max(width // 24, 2))).astype(np.float32)
        smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC))
        masks[i] = smooth > 0.4
    return masks


def mask_logits(count: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """(count, height, width) float32 logits with a spread like a mask decoder's."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((count, height, width)) * 4).astype(np.float32)
