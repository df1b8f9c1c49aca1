"""Predicts masks and their IoU scores from an image embedding and prompt embeddings."""

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .common import MLP, LayerNorm2d
from .transformer import TwoWayTransformer


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
        B = sparse_prompt_embeddings.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat([output_tokens.unsqueeze(0).expand(B, -1, -1), sparse_prompt_embeddings], dim=1)
        # Broadcast, not expanded: with one embedding and no per-prompt mask the
        # image side stays batch 1 into the transformer (see TwoWayTransformer).
        if dense_prompt_embeddings.shape[0] > 1 and dense_prompt_embeddings.stride(0) == 0:
            dense_prompt_embeddings = dense_prompt_embeddings[:1]  # the prompt encoder's expanded no-mask embedding
        src = image_embeddings + dense_prompt_embeddings
        _, c, h, w = src.shape
        hs, src = self.transformer(src, image_pe, tokens)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens, :]
        upscaled = self.upscale_channels_last(src.reshape(-1, h, w, c))
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )
        _, H, W, c_out = upscaled.shape
        masks = (hyper_in @ upscaled.reshape(-1, H * W, c_out).transpose(1, 2)).reshape(B, -1, H, W)
        return masks, self.iou_prediction_head(iou_token_out)

    def upscale_channels_last(self, x: torch.Tensor) -> torch.Tensor:
        """self.output_upscaling on a channels-last (B, h, w, C) grid -> (B, 4h, 4w, C / 8).

        The same math as the official channels-first modules, written as
        matmuls: each 2x2, stride-2 ConvTranspose is a product with its weight
        laid out as (C_in, 2 * 2 * C_out) followed by a pixel shuffle, and
        LayerNorm2d is a LayerNorm over the last axis. Exported, this is MatMul
        and LayerNormalization (fast everywhere) instead of ConvTranspose and a
        channel-axis ReduceMean (slow on ONNX Runtime's CPU), with no transposes
        of the (B, C, H, W) grid.
        """
        deconv1, norm, act1, deconv2, act2 = self.output_upscaling
        x = _conv_transpose_2x2(x, deconv1)
        x = act1(F.layer_norm(x, (deconv1.out_channels,), norm.weight, norm.bias, norm.eps))
        return act2(_conv_transpose_2x2(x, deconv2))


def _conv_transpose_2x2(x: torch.Tensor, deconv: nn.ConvTranspose2d) -> torch.Tensor:
    """nn.ConvTranspose2d(kernel_size=2, stride=2) on channels-last (B, h, w, C_in) -> (B, 2h, 2w, C_out).

    With stride == kernel the output pixels (2i + a, 2j + b) are fed by input pixel
    (i, j) alone: out[2i + a, 2j + b, o] = sum_c x[i, j, c] * weight[c, o, a, b] + bias[o].
    """
    _, h, w, _ = x.shape
    c_in, c_out = deconv.in_channels, deconv.out_channels
    weight = deconv.weight.permute(0, 2, 3, 1).reshape(c_in, 4 * c_out)  # columns ordered (a, b, o)
    y = (x @ weight).reshape(-1, h, w, 2, 2, c_out).permute(0, 1, 3, 2, 4, 5)
    return y.reshape(-1, 2 * h, 2 * w, c_out) + deconv.bias
