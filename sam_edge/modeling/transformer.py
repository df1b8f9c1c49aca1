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
        # (heads, C): 1 where channel c belongs to head h. A buffer, so an exported
        # graph holds it as a constant rather than rebuilding it on every run.
        head_of_channel = torch.arange(internal_dim) // (internal_dim // num_heads)
        head_mask = (head_of_channel == torch.arange(num_heads)[:, None]).float()
        self.register_buffer("head_mask", head_mask, persistent=False)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def _head_mask(self, x: torch.Tensor) -> torch.Tensor:
        """The (heads, C) head mask in x's dtype."""
        return self.head_mask.to(x.dtype)

    def _block_diagonal(self, x: torch.Tensor) -> torch.Tensor:
        """(B, n, C) -> (B, heads * n, C): row (h, i) is x[:, i] with only head h's channels kept."""
        b, n, c = x.shape
        return (x.unsqueeze(1) * self._head_mask(x)[:, None, :]).reshape(b, self.num_heads * n, c)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q (B, Nq, E), k and v (B, Nk, E) -> (B, Nq, E).

        With a long side, the image side may have batch 1 against B prompts: the
        products broadcast, so one image's tokens are used once for all B. The
        long side is never projected: its projection is folded into the short
        side's (see _to_long_keys and _from_long_queries).
        """
        if self.long_side == "keys":
            return self._to_long_keys(self.q_proj(q), k, v)
        if self.long_side == "queries":
            return self._from_long_queries(q, self.k_proj(k), self.v_proj(v), q_projected=False)
        return self.attend(self.q_proj(q), self.k_proj(k), self.v_proj(v))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """forward() on already projected q (B, Nq, C), k and v (B, Nk, C), C the internal width."""
        b, nq, c = q.shape
        scale = 1.0 / math.sqrt(c // self.num_heads)
        if self.long_side == "keys":  # few queries: rows (h, i) of q against all keys
            attn = ((self._block_diagonal(q) @ k.transpose(1, 2)) * scale).softmax(dim=-1)
            return self.out_proj(self._merge_heads(attn @ v, nq))
        if self.long_side == "queries":
            return self._from_long_queries(q, k, v, q_projected=True)
        q, k, v = self._heads(q), self._heads(k), self._heads(v)
        out = ((q @ k.transpose(-2, -1)) * scale).softmax(dim=-1) @ v
        return self.out_proj(out.transpose(1, 2).reshape(b, nq, c))

    def _merge_heads(self, out: torch.Tensor, nq: int) -> torch.Tensor:
        """(B, heads * nq, C) rows (h, i) -> (B, nq, C), each channel from its own head's row."""
        b, _, c = out.shape
        return (out.reshape(b, self.num_heads, nq, c) * self._head_mask(out)[:, None, :]).sum(1)

    def _to_long_keys(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Few projected queries q (B, Nq, C) against unprojected keys and values (B or 1, Nk, E).

        q_h . k_proj(key) = (q_h @ W_k) . key + q_h . b_k: the products run on the
        E-wide image tokens, with no (Nk, C) projection of them. The bias term is
        the same for every key of a row, so the softmax cancels it. Each row of
        the softmax sums to 1, so attn @ v_proj(values) = v_proj(attn @ values).
        """
        nq, c = q.shape[1], q.shape[2]
        scale = 1.0 / math.sqrt(c // self.num_heads)
        query_keys = (self._block_diagonal(q) @ self.k_proj.weight) * scale  # (B, heads * Nq, E)
        attn = (query_keys @ keys.transpose(1, 2)).softmax(dim=-1)
        return self.out_proj(self._merge_heads(self.v_proj(attn @ values), nq))

    def _from_long_queries(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_projected: bool
    ) -> torch.Tensor:
        """Many queries q (B or 1, Nq, E), or (B or 1, Nq, C) when `q_projected`, against
        few projected keys and values k, v (B, Nk, C) -> (B, Nq, E).

        q_proj(query) . k_h = query . (W_q^T k_h) + b_q . k_h, and
        out_proj(attn @ v) = attn @ (v W_o^T) + b_o: every product on the long
        side has the few tokens' width (heads * Nk) on one side, and the long
        side is never projected in or out. Each head's attention row sums to 1, so
        the heads' rows sum to `heads` and the out bias rides in the values as
        b_o / heads.
        """
        nk, c = k.shape[1], k.shape[2]
        scale = 1.0 / math.sqrt(c // self.num_heads)
        keys = self._block_diagonal(k) * scale  # (B, heads * Nk, C)
        if q_projected:
            scores = q @ keys.transpose(1, 2)
        else:
            scores = q @ (keys @ self.q_proj.weight).transpose(1, 2) + (keys @ self.q_proj.bias).unsqueeze(1)
        b, nq = scores.shape[0], scores.shape[1]
        attn = scores.reshape(b, nq, self.num_heads, nk).softmax(dim=-1).reshape(b, nq, self.num_heads * nk)
        values_out = self._block_diagonal(v) @ self.out_proj.weight.t() + self.out_proj.bias / self.num_heads
        return attn @ values_out  # (B, heads * Nk, E) values: already out-projected


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
        to_image, to_token = self.cross_attn_token_to_image, self.cross_attn_image_to_token
        if projections is not None:
            attn_out = to_image.attend(to_image.q_proj(queries + query_pe), projections.k, projections.v)
        else:
            keys_with_pe = keys + key_pe
            attn_out = to_image(queries + query_pe, keys_with_pe, keys)
        queries = self.norm2(queries + attn_out)
        queries = self.norm3(queries + self.mlp(queries))
        q_tokens = queries + query_pe
        if projections is not None:
            attn_out = to_token.attend(projections.q, to_token.k_proj(q_tokens), to_token.v_proj(queries))
        else:
            attn_out = to_token(keys_with_pe, q_tokens, queries)
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
