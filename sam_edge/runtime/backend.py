"""What a predictor needs from an inference backend.

A backend embeds images and decodes prompts in its own array type (torch
tensors for the torch backend, numpy or device arrays for ONNX Runtime and
TensorRT); everything user-facing is written once above this interface, in
predictor.py and automatic_mask_generator.py. A backend has every member
below: the predictor never asks which backend it holds.
"""

from typing import Any, Optional, Protocol, Tuple, runtime_checkable

import numpy as np


@runtime_checkable
class Backend(Protocol):
    #: Short name reported by info() and the CLI, e.g. "torch", "onnxruntime", "tensorrt".
    name: str
    #: Side of the square model input (1024 for the official models).
    image_size: int
    #: Side of the low-res mask logits (256 for the official models).
    mask_input_size: int
    #: Logit above which a pixel is in the mask (0.0 for the official models).
    mask_threshold: float
    #: Channel order embed expects: "RGB" or "BGR".
    image_format: str
    device: Any
    #: True when the backend's arrays are torch tensors, so predict_torch and
    #: set_torch_image hand tensors straight through; False when they go in
    #: through from_numpy and come back through to_numpy.
    takes_torch_tensors: bool

    def from_numpy(self, array: np.ndarray) -> Any:
        """Move a numpy array into the backend's array type."""

    def to_numpy(self, array: Any) -> np.ndarray:
        """Bring a backend array back as numpy."""

    def embed(self, input_image: Any) -> Any:
        """(B, 3, h, w) resized pixel values in [0, 255], max(h, w) == image_size
        -> (B, C, g, g) image embeddings."""

    def decode(
        self,
        features: Any,
        point_coords: Optional[Any],
        point_labels: Optional[Any],
        boxes: Optional[Any],
        mask_input: Optional[Any],
        multimask_output: bool,
    ) -> Tuple[Any, Any]:
        """Prompts in the resized input frame for a batch of B prompts on one
        image: point_coords (B, N, 2) float32, point_labels (B, N), boxes
        (B, 4) XYXY, mask_input (B, 1, m, m) logits -> low-res logits
        (B, C, m, m) and IoU predictions (B, C), C = 3 if multimask_output else 1."""

    def postprocess_masks(self, low_res: Any, input_size: Tuple[int, int], original_size: Tuple[int, int]) -> Any:
        """(B, C, m, m) low-res logits -> (B, C, H, W) float32 logits at the original size:
        bilinear to image_size, crop to input_size (h, w), bilinear to original_size (H, W),
        as the official Sam.postprocess_masks."""

    def binary_masks(self, low_res: Any, input_size: Tuple[int, int], original_size: Tuple[int, int]) -> Any:
        """(B, C, m, m) low-res logits -> (B, C, H, W) bool masks: the logits of
        postprocess_masks > mask_threshold, from the same resize (a backend may fuse
        the resize and the threshold so that no full-resolution float mask is stored)."""
