"""SAM's decomposed relative-position bias: the per-axis tables resampled to the
(query, key) pairs, and the two bias factors every attention path adds.
"""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F

Size2 = Tuple[int, int]


def get_rel_pos(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """Relative-position embeddings for every (query, key) pair along one axis.

    Args:
        q_size, k_size: number of query and key positions along the axis.
        rel_pos: (L, C) table. When L != 2 * max(q_size, k_size) - 1 it is
            linearly resampled, as the official model does for other resolutions.
    Returns:
        (q_size, k_size, C) embeddings.
    """
    max_rel_dist = 2 * max(q_size, k_size) - 1
    if rel_pos.shape[0] != max_rel_dist:
        resized = F.interpolate(
            rel_pos.reshape(1, rel_pos.shape[0], -1).permute(0, 2, 1),
            size=max_rel_dist,
            mode="linear",
        )
        rel_pos = resized.reshape(-1, max_rel_dist).permute(1, 0)
    # Scale coordinates with the shorter side when q and k lengths differ.
    q_coords = torch.arange(q_size, device=rel_pos.device)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size, device=rel_pos.device)[None, :] * max(q_size / k_size, 1.0)
    relative = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return rel_pos[relative.long()]


def rel_pos_bias_terms(
    q: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor, q_size: Size2, k_size: Size2
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The two factors of the decomposed bias.

    Args:
        q: (B, heads, q_h * q_w, D) queries, *unscaled* (as in the official model).
    Returns:
        rel_h: (B, heads, q_h, q_w, k_h), the bias that depends on the key row.
        rel_w: (B, heads, q_h, q_w, k_w), the bias that depends on the key column.
        bias[b, n, (i, j), (ki, kj)] = rel_h[b, n, i, j, ki] + rel_w[b, n, i, j, kj].
    """
    q_h, q_w = q_size
    k_h, k_w = k_size
    Rh = get_rel_pos(q_h, k_h, rel_pos_h).to(q.dtype)
    Rw = get_rel_pos(q_w, k_w, rel_pos_w).to(q.dtype)
    B, heads, _, D = q.shape
    r_q = q.reshape(B, heads, q_h, q_w, D)
    rel_h = torch.einsum("bnhwc,hkc->bnhwk", r_q, Rh)
    rel_w = torch.einsum("bnhwc,wkc->bnhwk", r_q, Rw)
    return rel_h, rel_w
