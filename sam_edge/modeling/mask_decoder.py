"""Predicts masks and their IoU scores from an image embedding and prompt embeddings."""

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels import mask_upscale
from .common import MLP, LayerNorm2d
from .transformer import ImageProjections, TwoWayTransformer


class MaskDecoder(nn.Module):
    def __init__(
        self,
        transformer_dim: int,
        transformer: TwoWayTransformer,
        num_multimask_outputs: int = 3,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
    ) -> None:
        super().__init__()
        self.transformer_dim = transformer_dim
        self.transformer = transformer
        self.num_multimask_outputs = num_multimask_outputs
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Returns (B, C, 4h, 4w) mask logits and (B, C) IoU predictions, where
        C is 3 with multimask_output and 1 without."""
        masks, iou_pred = self.predict_masks(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings
        )
        sl = slice(1, None) if multimask_output else slice(0, 1)
        return masks[:, sl], iou_pred[:, sl]

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """All mask tokens' outputs: (B, 4, 4h, 4w) logits and (B, 4) IoU.

        image_embeddings is (1 or B, C, h, w): one embedding is shared by a
        batch of B prompts without being copied.
        """
        # Broadcast, not expanded: with one embedding and no per-prompt mask the
        # image side stays batch 1 into the transformer (see TwoWayTransformer).
        if dense_prompt_embeddings.shape[0] > 1 and dense_prompt_embeddings.stride(0) == 0:
            dense_prompt_embeddings = dense_prompt_embeddings[:1]  # the prompt encoder's expanded no-mask embedding
        src = image_embeddings + dense_prompt_embeddings
        _, _, h, w = src.shape
        hs, src = self.transformer(src, image_pe, self._tokens(sparse_prompt_embeddings))
        return self._heads(hs, src, (h, w))

    def predict_masks_from_tokens(
        self,
        image_tokens: torch.Tensor,
        image_pe_tokens: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        first_projections: ImageProjections,
        grid: Tuple[int, int],
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """predict_masks from the image side in token layout, its first-block projections
        already computed (image_tokens = image embedding + dense embedding, (1, h*w, C);
        image_pe_tokens (1, h*w, C); first_projections =
        self.transformer.layers[0].image_projections(image_tokens, image_pe_tokens)):
        the prompt-independent part of the decoder, done once per image."""
        hs, src = self.transformer.forward_tokens(
            image_tokens, image_pe_tokens, self._tokens(sparse_prompt_embeddings), first_projections
        )
        return self._heads(hs, src, grid)

    def _tokens(self, sparse_prompt_embeddings: torch.Tensor) -> torch.Tensor:
        """(B, N, C) prompt embeddings -> (B, 1 + num_mask_tokens + N, C): output tokens first."""
        B = sparse_prompt_embeddings.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        return torch.cat([output_tokens.unsqueeze(0).expand(B, -1, -1), sparse_prompt_embeddings], dim=1)

    def _heads(self, hs: torch.Tensor, src: torch.Tensor, grid: Tuple[int, int]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Transformer outputs (tokens (B, T, C), image tokens (B, h*w, C)) -> masks and IoU."""
        B, (h, w), c = hs.shape[0], grid, src.shape[-1]
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens, :]
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )
        masks = self.masks_from_image_tokens(src, hyper_in, (h, w))
        return masks, self.iou_prediction_head(iou_token_out)

    def masks_from_image_tokens(
        self, src: torch.Tensor, hyper_in: torch.Tensor, grid: Tuple[int, int]
    ) -> torch.Tensor:
        """Image tokens src (B or 1, h*w, C) and hypernetwork outputs hyper_in (B, T, C / 8)
        -> mask logits (B, T, 4h, 4w): self.output_upscaling, then each token's
        product with the upscaled channels.

        The same math as the official channels-first modules, in an order that
        moves less data. With stride == kernel a 2x2 ConvTranspose feeds output
        pixels (2i + a, 2j + b) from input pixel (i, j) alone, so it is one
        matmul with the weight laid out as (C_in, (a, b, C_out)); LayerNorm2d,
        GELU and the hypernetwork product act per pixel. So everything runs on
        the pixels in (i, j, a1, b1, a2, b2) order, and only the T-channel
        logits are shuffled into (4i + 2 a1 + a2, 4j + 2 b1 + b2) at the end
        (not the 64- and 32-channel grids). Exported: Gemm, LayerNormalization
        and two small Transposes, instead of ConvTranspose and channel-axis
        ReduceMeans. Under mask_upscale.export_as_op(), one sam_edge_ops
        MaskUpscale node instead.
        """
        if mask_upscale.exporting_as_op():
            return mask_upscale.mask_upscale_export(src, hyper_in, self.output_upscaling, grid)
        deconv1, norm, act1, deconv2, act2 = self.output_upscaling
        h, w = grid
        c1, c2 = deconv1.out_channels, deconv2.out_channels
        x = _conv_transpose_2x2_pixels(src.reshape(-1, src.shape[-1]), deconv1)  # (B h w, 4 c1)
        x = act1(F.layer_norm(x.reshape(-1, c1), (c1,), norm.weight, norm.bias, norm.eps))  # (B h w 4, c1)
        x = act2(_conv_transpose_2x2_pixels(x, deconv2))  # (B h w 4, 4 c2)
        # Pixels as rows: the (h w 16, c2) features are read in place, not transposed
        # for the product; only the T-channel result is.
        masks = (x.reshape(-1, h * w * 16, c2) @ hyper_in.transpose(1, 2)).transpose(1, 2)
        # masks: (B, T, (h, w, a1, b1, a2, b2))
        b, t = hyper_in.shape[:2]
        # Two low-rank shuffles (one of rank 7 is ~5x slower in ONNX Runtime):
        # (h, w, a1, [b1 a2 b2]) -> (h, a1, w, [b1 a2 b2]), then (w, b1, a2, b2) -> (a2, w, b1, b2).
        masks = masks.reshape(b * t * h, w, 2, 8).transpose(1, 2)
        masks = masks.reshape(b * t * h * 2, w, 2, 2, 2).permute(0, 3, 1, 2, 4)
        return masks.reshape(b, t, 4 * h, 4 * w)


def _conv_transpose_2x2_pixels(x: torch.Tensor, deconv: nn.ConvTranspose2d) -> torch.Tensor:
    """nn.ConvTranspose2d(kernel_size=2, stride=2) per input pixel: (P, C_in) -> (P, 4 * C_out),
    columns ordered (a, b, o) for output pixel (2i + a, 2j + b) of input pixel (i, j):
    out[(a, b, o)] = sum_c x[c] * weight[c, o, a, b] + bias[o]."""
    c_in, c_out = deconv.in_channels, deconv.out_channels
    weight = deconv.weight.permute(0, 2, 3, 1).reshape(c_in, 4 * c_out)
    return torch.addmm(deconv.bias.repeat(4), x, weight)
