"""Inputs for the rel-pos attention kernels' tests, shared by the C++ kernel's and the
ONNX Runtime op's."""

import numpy as np


def qkv_inputs(batch, grid, heads, d, window, seed):
    """Seeded standard-normal qkv (batch, *grid, 3 * heads * d) and kv_bias (2, heads, d),
    and rel-pos tables scaled so their bias weighs as much as q . k."""
    rng = np.random.default_rng(seed)
    s_h, s_w = (window, window) if window else grid
    qkv = rng.standard_normal((batch, *grid, 3 * heads * d)).astype(np.float32)
    rel_pos_h = (rng.standard_normal((2 * s_h - 1, d)) * d ** -0.5).astype(np.float32)
    rel_pos_w = (rng.standard_normal((2 * s_w - 1, d)) * d ** -0.5).astype(np.float32)
    kv_bias = rng.standard_normal((2, heads, d)).astype(np.float32)
    return qkv, rel_pos_h, rel_pos_w, kv_bias
