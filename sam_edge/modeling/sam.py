"""The SAM model: image encoder, prompt encoder and mask decoder."""

from typing import Any, Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..config import PIXEL_MEAN, PIXEL_STD
from .image_encoder import ImageEncoderViT
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder


class Sam(nn.Module):
    mask_threshold: float = 0.0
    image_format: str = "RGB"

    def __init__(self, image_encoder: ImageEncoderViT, prompt_encoder: PromptEncoder, mask_decoder: MaskDecoder) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        # Not persistent: official checkpoints do not carry them.
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(-1, 1, 1), False)
        #: The SamConfig this model was built from (set by the builder).
        self.config = None

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise (B, 3, h, w) pixel values and pad bottom/right to a square of img_size."""
        x = (x - self.pixel_mean) / self.pixel_std
        size = self.image_encoder.img_size
        return F.pad(x, (0, size - x.shape[-1], 0, size - x.shape[-2]))

    def postprocess_masks(
        self, masks: torch.Tensor, input_size: Tuple[int, ...], original_size: Tuple[int, ...]
    ) -> torch.Tensor:
        """(B, C, 4h, 4w) low-res logits -> (B, C, H, W) logits at the original image size.

        Upsample to the padded input frame, crop the padding, resize to the original size.
        """
        size = self.image_encoder.img_size
        masks = F.interpolate(masks, (size, size), mode="bilinear", align_corners=False)
        masks = masks[..., : input_size[0], : input_size[1]]
        return F.interpolate(masks, tuple(original_size), mode="bilinear", align_corners=False)

    @torch.no_grad()
    def forward(self, batched_input: List[Dict[str, Any]], multimask_output: bool) -> List[Dict[str, torch.Tensor]]:
        """The official end-to-end call: a list of per-image dicts with 'image'
        (3, h, w) already resized, 'original_size', and optional 'point_coords',
        'point_labels', 'boxes', 'mask_inputs' in the resized frame."""
        images = torch.stack([self.preprocess(x["image"]) for x in batched_input], dim=0)
        embeddings = self.image_encoder(images)
        outputs = []
        for record, emb in zip(batched_input, embeddings):
            points = (record["point_coords"], record["point_labels"]) if "point_coords" in record else None
            sparse, dense = self.prompt_encoder(points, record.get("boxes"), record.get("mask_inputs"))
            low_res, iou = self.mask_decoder(
                emb.unsqueeze(0), self.prompt_encoder.get_dense_pe(), sparse, dense, multimask_output
            )
            masks = self.postprocess_masks(low_res, record["image"].shape[-2:], record["original_size"])
            outputs.append(
                {"masks": masks > self.mask_threshold, "iou_predictions": iou, "low_res_logits": low_res}
            )
        return outputs
