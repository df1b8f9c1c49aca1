"""The two-way transformer of the mask decoder: prompt tokens and image
tokens attend to each other."""

import math
from typing import NamedTuple, Optional, Tuple

import torch
from torch import nn

from .common import MLPBlock


class ImageProjections(NamedTuple):
    """A two-way block's projections of its input image tokens, each (B, N, C_internal):
    keys and values of the token->image attention, queries of the image->token one."""

    k: torch.Tensor
    v: torch.Tensor
    q: torch.Tensor


class Attention(nn.Module):
    """Multi-head attention whose projections may shrink the width by `downsample_rate`.

    `long_side` says which side is the 4096 image tokens: "keys" (token -> image),
    "queries" (image -> token) or None (token self-attention). The long side is
    then never split into heads: the short side is spread over a block-diagonal
    (heads * n, C) matrix instead, so every product runs on (B, N, C) layouts
    with no transposes of image-sized tensors (the official split costs four per
    attention). Zeros outside each head's block leave the sums unchanged, and
    the short side is at most a few tokens, so the extra products are tiny.
    """

    def __init__(
        self, embedding_dim: int, num_heads: int, downsample_rate: int = 1, long_side: Optional[str] = None
    ) -> None:
        super().__init__()
        if long_side not in (None, "keys", "queries"):
            raise ValueError(f"long_side must be None, 'keys' or 'queries'; got {long_side!r}")
        self.num_heads = num_heads
        self.long_side = long_side
        internal_dim = embedding_dim // downsample_rate
        self.q_proj = nn.Linear(embedding_dim, internal_dim)
        self.k_proj = nn.Linear(embedding_dim, internal_dim)
        self.v_proj = nn.Linear(embedding_dim, internal_dim)
        self.out_proj = nn.Linear(internal_dim, embedding_dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def _head_mask(self, x: torch.Tensor) -> torch.Tensor:
        """(heads, C) in x's dtype: 1 where channel c belongs to head h."""
        c = x.shape[-1]
        head_of_channel = torch.arange(c, device=x.device) // (c // self.num_heads)
        return (head_of_channel == torch.arange(self.num_heads, device=x.device)[:, None]).to(x.dtype)

    def _block_diagonal(self, x: torch.Tensor) -> torch.Tensor:
        """(B, n, C) -> (B, heads * n, C): row (h, i) is x[:, i] with only head h's channels kept."""
        b, n, c = x.shape
        return (x.unsqueeze(1) * self._head_mask(x)[:, None, :]).reshape(b, self.num_heads * n, c)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q (B, Nq, E), k and v (B, Nk, E) -> (B, Nq, E).

        With a long side, the image side may have batch 1 against B prompts: the
        products broadcast, so one image's tokens are projected once for all B.
        """
        return self.attend(self.q_proj(q), self.k_proj(k), self.v_proj(v))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """forward() on already projected q (B, Nq, C), k and v (B, Nk, C), C the internal width."""
        b, nq, c = q.shape
        scale = 1.0 / math.sqrt(c // self.num_heads)
        if self.long_side == "keys":  # few queries: rows (h, i) of q against all keys
            attn = ((self._block_diagonal(q) @ k.transpose(1, 2)) * scale).softmax(dim=-1)
            out = (attn @ v).reshape(b, self.num_heads, nq, c)
            out = (out * self._head_mask(q)[:, None, :]).sum(1)
        elif self.long_side == "queries":  # few keys: columns (h, j) of k for all queries
            nk = k.shape[1]
            attn = ((q @ self._block_diagonal(k).transpose(1, 2)) * scale).reshape(-1, nq, self.num_heads, nk)
            out = attn.softmax(dim=-1).reshape(-1, nq, self.num_heads * nk) @ self._block_diagonal(v)
        else:
            q, k, v = self._heads(q), self._heads(k), self._heads(v)
            out = ((q @ k.transpose(-2, -1)) * scale).softmax(dim=-1) @ v
            out = out.transpose(1, 2).reshape(b, nq, c)
        return self.out_proj(out)


class TwoWayAttentionBlock(nn.Module):
    """Token self-attention, token->image cross-attention, MLP, image->token cross-attention."""

    def __init__(
        self, embedding_dim: int, num_heads: int, mlp_dim: int, downsample_rate: int, skip_first_layer_pe: bool
    ) -> None:
        super().__init__()
        self.self_attn = Attention(embedding_dim, num_heads)
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.cross_attn_token_to_image = Attention(embedding_dim, num_heads, downsample_rate, long_side="keys")
        self.norm2 = nn.LayerNorm(embedding_dim)
        self.mlp = MLPBlock(embedding_dim, mlp_dim, nn.ReLU)
        self.norm3 = nn.LayerNorm(embedding_dim)
        self.norm4 = nn.LayerNorm(embedding_dim)
        self.cross_attn_image_to_token = Attention(embedding_dim, num_heads, downsample_rate, long_side="queries")
        self.skip_first_layer_pe = skip_first_layer_pe

    def image_projections(self, keys: torch.Tensor, key_pe: torch.Tensor) -> ImageProjections:
        """The projections of this block's input image tokens (B, N, C): they depend on the
        image alone, so for the first block they can be computed once per image."""
        k = keys + key_pe
        return ImageProjections(
            self.cross_attn_token_to_image.k_proj(k),
            self.cross_attn_token_to_image.v_proj(keys),
            self.cross_attn_image_to_token.q_proj(k),
        )

    def forward(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        query_pe: torch.Tensor,
        key_pe: torch.Tensor,
        projections: Optional[ImageProjections] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """`projections`: image_projections(keys, key_pe), when already computed."""
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)
        image = projections if projections is not None else self.image_projections(keys, key_pe)
        to_image = self.cross_attn_token_to_image
        queries = self.norm2(queries + to_image.attend(to_image.q_proj(queries + query_pe), image.k, image.v))
        queries = self.norm3(queries + self.mlp(queries))
        to_token = self.cross_attn_image_to_token
        q_tokens = queries + query_pe
        attn_out = to_token.attend(image.q, to_token.k_proj(q_tokens), to_token.v_proj(queries))
        keys = self.norm4(keys + attn_out)
        return queries, keys


class TwoWayTransformer(nn.Module):
    def __init__(
        self, depth: int, embedding_dim: int, num_heads: int, mlp_dim: int, attention_downsample_rate: int = 2
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(embedding_dim, num_heads, mlp_dim, attention_downsample_rate, i == 0)
            for i in range(depth)
        )
        self.final_attn_token_to_image = Attention(
            embedding_dim, num_heads, attention_downsample_rate, long_side="keys"
        )
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def forward(
        self, image_embedding: torch.Tensor, image_pe: torch.Tensor, point_embedding: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """image_embedding, image_pe: (B or 1, C, h, w); point_embedding: (B, N, C).
        Returns the processed tokens (B, N, C) and image tokens (B, h*w, C). An
        image side of batch 1 is shared by all B prompts without a copy (the
        products broadcast) until the first image->token update makes it B."""
        image_embedding = image_embedding.flatten(2).permute(0, 2, 1)
        image_pe = image_pe.flatten(2).permute(0, 2, 1)
        return self.forward_tokens(image_embedding, image_pe, point_embedding)

    def forward_tokens(
        self,
        image_tokens: torch.Tensor,
        image_pe: torch.Tensor,
        point_embedding: torch.Tensor,
        first_projections: Optional[ImageProjections] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """forward() on image tokens and PE already laid out as (B or 1, h*w, C).
        `first_projections`: self.layers[0].image_projections(image_tokens, image_pe),
        when cached for this image."""
        queries, keys = point_embedding, image_tokens
        for i, layer in enumerate(self.layers):
            queries, keys = layer(queries, keys, point_embedding, image_pe, first_projections if i == 0 else None)
        attn_out = self.final_attn_token_to_image(queries + point_embedding, keys + image_pe, keys)
        return self.norm_final_attn(queries + attn_out), keys
