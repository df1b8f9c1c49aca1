"""The ViT image encoder: windowed and global attention with SAM's decomposed
relative-position bias, followed by a convolutional neck.

Attention goes through `sam_edge.kernels` so the same module runs the
reference math, Triton or CUDA kernels, and exports to ONNX.
"""

from typing import Sequence, Tuple

import torch
from torch import nn

from ..kernels import rel_pos_attention, windowed_rel_pos_attention
from .common import LayerNorm2d, MLPBlock


class PatchEmbed(nn.Module):
    """(B, 3, H, W) image -> (B, H/p, W/p, dim) tokens, channels last."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class Attention(nn.Module):
    """Multi-head self-attention over a (B, H, W, dim) token grid.

    With window_size > 0 it attends within window_size² windows of the grid,
    padding the grid at the bottom/right as the official model does; otherwise
    over the whole grid.
    """

    def __init__(self, dim: int, num_heads: int, input_size: Tuple[int, int], window_size: int = 0) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.window_size = window_size
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * input_size[0] - 1, self.head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * input_size[1] - 1, self.head_dim))
        #: Passed to the attention op; "auto" picks the best available kernel.
        self.backend = "auto"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, dim = x.shape
        heads, head_dim = self.num_heads, self.head_dim
        qkv = self.qkv(x).reshape(B, H * W, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, heads, H*W, head_dim)
        if self.window_size > 0:
            # A padded token is zero after the norm, so its key and value are the qkv bias.
            bias = self.qkv.bias.view(3, heads, head_dim)
            out = windowed_rel_pos_attention(
                q, k, v, self.rel_pos_h, self.rel_pos_w, (H, W), self.window_size,
                bias[1], bias[2], backend=self.backend,
            )
        else:
            out = rel_pos_attention(q, k, v, self.rel_pos_h, self.rel_pos_w, (H, W), (H, W), backend=self.backend)
        out = out.transpose(1, 2).reshape(B, H, W, dim)
        return self.proj(out)


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float, window_size: int, input_size: Tuple[int, int]
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        attn_size = (window_size, window_size) if window_size > 0 else input_size
        self.attn = Attention(dim, num_heads, attn_size, window_size)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio))
        self.window_size = window_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ImageEncoderViT(nn.Module):
    """(B, 3, img_size, img_size) normalised image -> (B, out_chans, img_size/p, img_size/p) embedding."""

    def __init__(
        self,
        img_size: int,
        patch_size: int,
        embed_dim: int,
        depth: int,
        num_heads: int,
        global_attn_indexes: Sequence[int],
        window_size: int,
        mlp_ratio: float = 4.0,
        out_chans: int = 256,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        self.img_size = img_size
        grid = img_size // patch_size
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, embed_dim))
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, 0 if i in global_attn_indexes else window_size, (grid, grid))
            for i in range(depth)
        )
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dim, out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def set_attention_backend(self, backend: str) -> None:
        """Route every block's attention to `backend` ("auto", "reference", "triton", ...)."""
        for block in self.blocks:
            block.attn.backend = backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.neck(x.permute(0, 3, 1, 2))
