"""Windowed attention on the unpadded token grid.

SAM's windowed blocks pad the (normed) token grid with zeros up to a multiple
of the window size, so a padded token's key and value are just the qkv bias.
This op takes q, k, v of the *unpadded* grid and the key/value of a padded
token, so no projection is spent on padding, and a fused backend can do the
partition in its indexing. The reference pads and partitions explicitly, then
calls :func:`rel_pos_attention` on every window.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import torch

from .attention import rel_pos_attention, resolve_backend
from .rel_pos import Size2

# name -> fused implementation with windowed_rel_pos_attention's signature
_FUSED: Dict[str, Callable[..., torch.Tensor]] = {}


def register_fused_backend(name: str, fn: Callable[..., torch.Tensor]) -> None:
    """Register a fused windowed kernel for a backend already known to rel_pos_attention."""
    _FUSED[name] = fn


def _pad_grid(t: torch.Tensor, fill: Optional[torch.Tensor], pad_h: int, pad_w: int) -> torch.Tensor:
    """(B, heads, H, W, D) -> (B, heads, H + pad_h, W + pad_w, D), padded with `fill` (heads, D)."""
    B, heads, H, W, D = t.shape
    if fill is None:
        fill = t.new_zeros(heads, D)
    fill = fill.to(t.dtype).view(1, heads, 1, 1, D)
    if pad_w:
        t = torch.cat([t, fill.expand(B, heads, H, pad_w, D)], dim=3)
    if pad_h:
        t = torch.cat([t, fill.expand(B, heads, pad_h, W + pad_w, D)], dim=2)
    return t


def _partition(t: torch.Tensor, ws: int) -> torch.Tensor:
    """(B, heads, Hp, Wp, D) -> (B * windows, heads, ws * ws, D)."""
    B, heads, Hp, Wp, D = t.shape
    t = t.view(B, heads, Hp // ws, ws, Wp // ws, ws, D).permute(0, 2, 4, 1, 3, 5, 6)
    return t.reshape(-1, heads, ws * ws, D)


def _unpartition(t: torch.Tensor, ws: int, B: int, Hp: int, Wp: int) -> torch.Tensor:
    """(B * windows, heads, ws * ws, D) -> (B, heads, Hp, Wp, D)."""
    heads, D = t.shape[1], t.shape[3]
    t = t.view(B, Hp // ws, Wp // ws, heads, ws, ws, D).permute(0, 3, 1, 4, 2, 5, 6)
    return t.reshape(B, heads, Hp, Wp, D)


def windowed_rel_pos_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rel_pos_h: torch.Tensor,
    rel_pos_w: torch.Tensor,
    grid_size: Size2,
    window_size: int,
    pad_k: Optional[torch.Tensor] = None,
    pad_v: Optional[torch.Tensor] = None,
    *,
    backend: str = "reference",
    scale: Optional[float] = None,
) -> torch.Tensor:
    """Pad, partition into windows, attend per window, unpartition, crop."""
    B, heads, N, D = q.shape
    H, W = grid_size
    ws = window_size
    pad_h, pad_w = (ws - H % ws) % ws, (ws - W % ws) % ws
    q5, k5, v5 = (t.reshape(B, heads, H, W, D) for t in (q, k, v))
    # Padded queries are computed and dropped, as in the official model.
    qw = _partition(_pad_grid(q5, None, pad_h, pad_w), ws)
    kw = _partition(_pad_grid(k5, pad_k, pad_h, pad_w), ws)
    vw = _partition(_pad_grid(v5, pad_v, pad_h, pad_w), ws)
    out = rel_pos_attention(qw, kw, vw, rel_pos_h, rel_pos_w, (ws, ws), (ws, ws), backend=backend, scale=scale)
    out = _unpartition(out, ws, B, H + pad_h, W + pad_w)[:, :, :H, :W]
    return out.reshape(B, heads, N, D)


def windowed_rel_pos_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rel_pos_h: torch.Tensor,
    rel_pos_w: torch.Tensor,
    grid_size: Size2,
    window_size: int,
    pad_k: Optional[torch.Tensor] = None,
    pad_v: Optional[torch.Tensor] = None,
    *,
    backend: str = "auto",
    scale: Optional[float] = None,
) -> torch.Tensor:
    """Attention within non-overlapping windows of a token grid, with SAM's rel-pos bias.

    Args:
        q, k, v: (B, heads, H * W, head_dim) on the unpadded (H, W) grid; q unscaled.
        rel_pos_h, rel_pos_w: (2 * window_size - 1, head_dim) tables.
        grid_size: (H, W).
        window_size: side of the square windows; the grid is padded at the
            bottom and right up to a multiple of it.
        pad_k, pad_v: (heads, head_dim) key and value of a padded token (the
            qkv bias in SAM); zeros when None.
        backend: as for :func:`rel_pos_attention`. A backend with a fused
            windowed kernel uses it; others attend per explicit window.
    Returns:
        (B, heads, H * W, head_dim) on the unpadded grid.
    """
    H, W = grid_size
    if q.dim() != 4 or q.shape[2] != H * W:
        raise ValueError(f"q must be (B, heads, {H}*{W}, head_dim) for grid {tuple(grid_size)}; got {tuple(q.shape)}")
    if window_size <= 0:
        raise ValueError(f"window_size must be positive; got {window_size}")
    name = resolve_backend(q, backend)
    if name in _FUSED:
        return _FUSED[name](q, k, v, rel_pos_h, rel_pos_w, tuple(grid_size), window_size, pad_k, pad_v, scale=scale)
    return windowed_rel_pos_attention_reference(
        q, k, v, rel_pos_h, rel_pos_w, grid_size, window_size, pad_k, pad_v, backend=name, scale=scale
    )


def _windowed_rel_pos_attention_triton(*args, **kwargs):
    # Imported on the first call, so this module imports without Triton.
    from .triton_attention import windowed_rel_pos_attention_triton

    return windowed_rel_pos_attention_triton(*args, **kwargs)


register_fused_backend("triton", _windowed_rel_pos_attention_triton)
