"""The reference attention ops against a float64 loop over the formula."""

import math

import pytest
import torch

from sam_edge.kernels import (
    rel_pos_attention,
    resolve_backend,
    windowed_rel_pos_attention,
)


def attention_float64(q, k, v, rel_h_table, rel_w_table, q_size, k_size):
    """softmax(q·k * D^-1/2 + q·Rh[i-ki+kh-1] + q·Rw[j-kj+kw-1]) v, term by term in float64.
    Only for q_size == k_size (as in SAM), where no table resampling occurs."""
    q, k, v = q.double(), k.double(), v.double()
    Th, Tw = rel_h_table.double(), rel_w_table.double()
    (qh, qw), (kh, kw) = q_size, k_size
    D = q.shape[-1]
    qi = torch.arange(qh).repeat_interleave(qw)  # row of each query token
    qj = torch.arange(qw).repeat(qh)
    ki = torch.arange(kh).repeat_interleave(kw)
    kj = torch.arange(kw).repeat(kh)
    Rh = Th[qi[:, None] - ki[None, :] + kh - 1]  # (N, M, D)
    Rw = Tw[qj[:, None] - kj[None, :] + kw - 1]
    logits = torch.einsum("bhnd,bhmd->bhnm", q, k) / math.sqrt(D)
    logits = logits + torch.einsum("bhnd,nmd->bhnm", q, Rh) + torch.einsum("bhnd,nmd->bhnm", q, Rw)
    return logits.softmax(-1) @ v


@pytest.mark.parametrize("backend", ["reference", "sdpa"])
@pytest.mark.parametrize("size", [(7, 7), (5, 9), (14, 14)])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_rel_pos_attention_torch_backends(size, dtype, tol, backend):
    """fp32 tolerance: a few ulps times sqrt of the reduction length (<= 196 keys)."""
    gen = torch.Generator().manual_seed(sum(size))
    B, H, D = 2, 3, 16
    N = size[0] * size[1]
    q, k, v = (torch.randn(B, H, N, D, generator=gen, dtype=dtype) for _ in range(3))
    th = torch.randn(2 * size[0] - 1, D, generator=gen, dtype=dtype) * 0.5
    tw = torch.randn(2 * size[1] - 1, D, generator=gen, dtype=dtype) * 0.5
    out = rel_pos_attention(q, k, v, th, tw, size, size, backend=backend)
    expected = attention_float64(q, k, v, th, tw, size, size)
    assert out.dtype == dtype
    assert ((out.double() - expected).norm() / expected.norm()).item() <= tol


@pytest.mark.parametrize("backend", ["reference", "sdpa"])
@pytest.mark.parametrize("grid,window", [((9, 11), 4), ((14, 14), 7), ((5, 5), 7)])
def test_windowed_attention_torch_backends(grid, window, backend):
    """Each window of the zero-padded grid attends within itself; padded keys
    and values take the given fill (the qkv bias in SAM)."""
    gen = torch.Generator().manual_seed(grid[0] * 31 + window)
    B, H, D = 2, 2, 8
    Hg, Wg = grid
    q, k, v = (torch.randn(B, H, Hg * Wg, D, generator=gen) for _ in range(3))
    th, tw = (torch.randn(2 * window - 1, D, generator=gen) * 0.5 for _ in range(2))
    pad_k, pad_v = torch.randn(H, D, generator=gen), torch.randn(H, D, generator=gen)
    out = windowed_rel_pos_attention(q, k, v, th, tw, grid, window, pad_k, pad_v, backend=backend)

    Hp, Wp = -(-Hg // window) * window, -(-Wg // window) * window

    def padded(t, fill):
        g = fill.double().view(1, H, 1, 1, D).repeat(B, 1, Hp, Wp, 1)
        g[:, :, :Hg, :Wg] = t.double().view(B, H, Hg, Wg, D)
        return g

    qp, kp, vp = padded(q, torch.zeros(H, D)), padded(k, pad_k), padded(v, pad_v)
    expected = torch.zeros(B, H, Hp, Wp, D, dtype=torch.float64)
    for i in range(0, Hp, window):
        for j in range(0, Wp, window):
            win = (slice(None), slice(None), slice(i, i + window), slice(j, j + window))
            qq, kk, vv = (t[win].reshape(B, H, window * window, D) for t in (qp, kp, vp))
            expected[win] = attention_float64(qq, kk, vv, th, tw, (window, window), (window, window)).view(
                B, H, window, window, D
            )
    expected = expected[:, :, :Hg, :Wg].reshape(B, H, Hg * Wg, D)
    assert ((out.double() - expected).norm() / expected.norm()).item() <= 1e-5


def test_dispatch_and_input_errors(monkeypatch):
    q = torch.randn(1, 1, 4, 8)
    assert resolve_backend(q) == "sdpa"  # CPU tensors
    monkeypatch.setenv("SAM_EDGE_ATTENTION_BACKEND", "reference")
    assert resolve_backend(q, "auto") == "reference"
    monkeypatch.setenv("SAM_EDGE_ATTENTION_BACKEND", "bogus")
    with pytest.raises(ValueError, match="unknown attention backend 'bogus'"):
        resolve_backend(q)
    with pytest.raises(ValueError, match="do not match q_size"):
        rel_pos_attention(q, q, q, torch.randn(3, 8), torch.randn(3, 8), (3, 2), (2, 2), backend="reference")
    with pytest.raises(ValueError, match=r"\(B, heads, N, head_dim\)"):
        rel_pos_attention(q[0], q[0], q[0], torch.randn(3, 8), torch.randn(3, 8), (2, 2), (2, 2))
