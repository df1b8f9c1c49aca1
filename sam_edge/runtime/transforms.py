"""Resize images so their longest side is the model's input size, and map
prompt coordinates into that frame. Same results as the official
`segment_anything.utils.transforms.ResizeLongestSide`; the numpy paths need
no torch."""

from copy import deepcopy
from typing import Tuple

import numpy as np
from PIL import Image


def get_preprocess_shape(oldh: int, oldw: int, long_side_length: int) -> Tuple[int, int]:
    """(h, w) of an (oldh, oldw) image resized so that its longest side is long_side_length.

    A side never rounds to 0 pixels (a 1 x 10000 image resizes to 1 x 1024),
    where the official rounding would leave nothing to resize to."""
    scale = long_side_length * 1.0 / max(oldh, oldw)
    return max(1, int(oldh * scale + 0.5)), max(1, int(oldw * scale + 0.5))


class ResizeLongestSide:
    def __init__(self, target_length: int) -> None:
        self.target_length = target_length

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> (h, w, 3) uint8, bilinear (PIL, as the official package)."""
        h, w = get_preprocess_shape(image.shape[0], image.shape[1], self.target_length)
        return np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))

    def apply_coords(self, coords: np.ndarray, original_size: Tuple[int, ...]) -> np.ndarray:
        """(..., 2) XY pixel coordinates in the original image -> the resized frame (float64)."""
        old_h, old_w = original_size
        new_h, new_w = get_preprocess_shape(old_h, old_w, self.target_length)
        coords = deepcopy(coords).astype(float)
        coords[..., 0] = coords[..., 0] * (new_w / old_w)
        coords[..., 1] = coords[..., 1] * (new_h / old_h)
        return coords

    def apply_boxes(self, boxes: np.ndarray, original_size: Tuple[int, ...]) -> np.ndarray:
        """(N, 4) XYXY boxes in the original image -> (N, 4) in the resized frame."""
        return self.apply_coords(boxes.reshape(-1, 2, 2), original_size).reshape(-1, 4)

    def apply_image_torch(self, image):
        """(B, 3, H, W) float tensor -> (B, 3, h, w), bilinear with antialiasing."""
        import torch.nn.functional as F

        size = get_preprocess_shape(image.shape[2], image.shape[3], self.target_length)
        return F.interpolate(image, size, mode="bilinear", align_corners=False, antialias=True)

    def apply_coords_torch(self, coords, original_size: Tuple[int, ...]):
        import torch

        old_h, old_w = original_size
        new_h, new_w = get_preprocess_shape(old_h, old_w, self.target_length)
        coords = deepcopy(coords).to(torch.float)
        coords[..., 0] = coords[..., 0] * (new_w / old_w)
        coords[..., 1] = coords[..., 1] * (new_h / old_h)
        return coords

    def apply_boxes_torch(self, boxes, original_size: Tuple[int, ...]):
        return self.apply_coords_torch(boxes.reshape(-1, 2, 2), original_size).reshape(-1, 4)
