"""The torch model behind the Backend interface."""

from typing import Optional, Tuple

import numpy as np
import torch

from ..modeling import Sam


class TorchBackend:
    """The torch model behind the Backend interface.

    Shared by threads: embed and decode only read the model's weights, under
    torch.no_grad (grad mode is per thread); each SamPredictor wraps the model
    in its own TorchBackend, so nothing here holds per-image state.
    """

    name = "torch"
    takes_torch_tensors = True

    def __init__(self, model: Sam) -> None:
        self.model = model
        self.image_size = model.image_encoder.img_size
        self.mask_input_size = model.prompt_encoder.mask_input_size[0]
        self.mask_threshold = model.mask_threshold
        self.image_format = model.image_format

    @property
    def device(self) -> torch.device:
        return self.model.device

    def from_numpy(self, array: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(array, device=self.device)

    def to_numpy(self, array: torch.Tensor) -> np.ndarray:
        return array.detach().cpu().numpy()

    @torch.no_grad()
    def embed(self, input_image: torch.Tensor) -> torch.Tensor:
        return self.model.image_encoder(self.model.preprocess(input_image))

    @torch.no_grad()
    def decode(
        self,
        features: torch.Tensor,
        point_coords: Optional[torch.Tensor],
        point_labels: Optional[torch.Tensor],
        boxes: Optional[torch.Tensor],
        mask_input: Optional[torch.Tensor],
        multimask_output: bool,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        points = (point_coords, point_labels) if point_coords is not None else None
        prompt_encoder = self.model.prompt_encoder
        sparse, dense = prompt_encoder(points, boxes, mask_input)
        return self.model.mask_decoder(features, prompt_encoder.get_dense_pe(), sparse, dense, multimask_output)

    @torch.no_grad()
    def binary_masks(
        self, low_res: torch.Tensor, input_size: Tuple[int, int], original_size: Tuple[int, int]
    ) -> torch.Tensor:
        """(B, C, m, m) low-res logits -> (B, C, H, W) bool masks.

        On CUDA the fused kernel resizes and thresholds in one pass, without a
        full-resolution float mask; elsewhere the official resize-then-threshold.
        """
        from ..postprocess.torch_ops import mask_postprocess, resolve_mask_backend

        if low_res.is_cuda and resolve_mask_backend(low_res) != "reference":
            return mask_postprocess(
                low_res, input_size, original_size, mask_threshold=self.mask_threshold, image_size=self.image_size
            )[0]
        return self.postprocess_masks(low_res, input_size, original_size) > self.mask_threshold

    @torch.no_grad()
    def postprocess_masks(
        self, low_res: torch.Tensor, input_size: Tuple[int, int], original_size: Tuple[int, int]
    ) -> torch.Tensor:
        """(B, C, m, m) low-res logits -> (B, C, H, W) logits, the official Sam.postprocess_masks."""
        return self.model.postprocess_masks(low_res, input_size, original_size)
