"""What a predictor needs from an inference backend.

A backend embeds images and decodes prompts in its own array type (torch
tensors for the torch backend, numpy arrays for ONNX Runtime); everything
user-facing is written once above this interface, in predictor.py.
"""

from typing import Any, Optional, Protocol, Tuple, runtime_checkable

import numpy as np


@runtime_checkable
class Backend(Protocol):
    #: Short name reported by info() and the CLI, e.g. "torch", "onnxruntime".
    name: str
    #: Side of the square model input (1024 for the official models).
    image_size: int
    #: Side of the low-res mask logits (256 for the official models).
    mask_input_size: int
    mask_threshold: float
    image_format: str
    device: Any

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
        """(B, C, m, m) low-res logits -> (B, C, H, W) logits at the original size.

        A backend may also offer binary_masks(low_res, input_size, original_size)
        -> (B, C, H, W) bool, a fused resize + threshold the predictor then uses
        when logits are not asked for."""
