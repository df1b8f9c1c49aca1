"""sam_edge._C's fused global attention (csrc/attention_cpu.cpp) against float64.

Tolerances follow the flash-attention convention: the kernel's error against
a float64 reference may be a small multiple of the error of a plain
implementation in the same precision, measured against the same reference.
- fp32: at most 4x numpy's materialised float32 attention (both ~1e-7; the
  kernel's exp is a degree-6 polynomial, 1.2e-7, and it sums in another order).
- fp16 compute: at most 5x torch's fp16 attention (fp16 products, softmax in
  fp32). The kernel also keeps its partial sums in fp16 over up to 64 terms,
  where torch accumulates in fp32: measured 1.4-3.2x torch's error.
"""

import numpy as np
import pytest

from sam_edge.runtime.global_attention import (
    fast_compute,
    kernel_status,
    rel_pos_attention,
    rel_pos_attention_reference,
)

STATUS = kernel_status()
needs_kernel = pytest.mark.skipif(not STATUS["available"], reason="sam_edge._C is not built")
needs_avx512 = pytest.mark.skipif(not STATUS["avx512"], reason="this CPU has no AVX-512: the portable loop runs")
needs_fp16 = pytest.mark.skipif(not STATUS["avx512_fp16"], reason="this CPU has no AVX512-FP16")

# (batch, heads, (q_h, q_w), (k_h, k_w), head_dim, query scale)
SHAPES = [
    (1, 2, (16, 16), (16, 16), 64, 1.0),   # reduced ViT-B/L global block
    (2, 3, (8, 12), (8, 16), 64, 3.0),     # batch of 2, peaked softmax, rows not a multiple of 24
    (1, 2, (10, 10), (4, 32), 80, 1.0),    # ViT-H head_dim
    (1, 2, (7, 9), (7, 14), 64, 1.0),      # k_w % 16 != 0: fp32 runs the portable loop, fp16 the small-grid path
    (3, 2, (14, 14), (14, 14), 64, 2.0),   # a windowed block's windows (fp16: keys padded to 256)
    (2, 1, (5, 5), (3, 5), 24, 2.0),       # odd head_dim: the portable loop
]


def _inputs(batch, heads, q_size, k_size, d, q_scale, seed):
    rng = np.random.default_rng(seed)
    n, m = q_size[0] * q_size[1], k_size[0] * k_size[1]
    q = (rng.standard_normal((batch, heads, n, d)) * q_scale).astype(np.float32)
    k = rng.standard_normal((batch, heads, m, d)).astype(np.float32)
    v = rng.standard_normal((batch, heads, m, d)).astype(np.float32)
    rel_h = rng.standard_normal((batch, heads, *q_size, k_size[0])).astype(np.float32)
    rel_w = rng.standard_normal((batch, heads, *q_size, k_size[1])).astype(np.float32)
    return q, k, v, rel_h, rel_w


def _rel(a, ref):
    return float(np.linalg.norm(a.astype(np.float64) - ref) / np.linalg.norm(ref))


def _fp32_numpy(q, k, v, rel_h, rel_w, scale):
    """The materialised attention in float32 numpy: the same-precision baseline."""
    b, heads, n, _ = q.shape
    s = np.float32(scale) * q @ np.swapaxes(k, -1, -2) + (rel_h[..., :, None] + rel_w[..., None, :]).reshape(
        b, heads, n, -1)
    s -= s.max(axis=-1, keepdims=True)
    p = np.exp(s)
    return (p / p.sum(axis=-1, keepdims=True)) @ v


@needs_kernel
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"b{s[0]}h{s[1]}q{s[2]}k{s[3]}d{s[4]}x{s[5]}")
def test_fp32_matches_float64(shape):
    batch, heads, q_size, k_size, d, q_scale = shape
    q, k, v, rel_h, rel_w = _inputs(batch, heads, q_size, k_size, d, q_scale, seed=sum(q_size) + d)
    scale = d ** -0.5
    ref = rel_pos_attention_reference(q, k, v, rel_h, rel_w, scale)
    ours = rel_pos_attention(q, k, v, rel_h, rel_w, scale)
    baseline = _rel(_fp32_numpy(q, k, v, rel_h, rel_w, scale), ref)
    assert ours.shape == q.shape and ours.dtype == np.float32
    assert _rel(ours, ref) <= 4 * baseline, (_rel(ours, ref), baseline)


@needs_kernel
@needs_fp16
@pytest.mark.parametrize("shape", [s for s in SHAPES if s[4] == 64 and (s[3][1] % 16 == 0 or max(s[3]) <= 16)],
                         ids=lambda s: f"b{s[0]}h{s[1]}q{s[2]}k{s[3]}x{s[5]}")
def test_fp16_compute_within_torch_fp16_error(shape):
    torch = pytest.importorskip("torch")
    batch, heads, q_size, k_size, d, q_scale = shape
    q, k, v, rel_h, rel_w = _inputs(batch, heads, q_size, k_size, d, q_scale, seed=7 + d)
    scale = d ** -0.5
    ref = rel_pos_attention_reference(q, k, v, rel_h, rel_w, scale)
    t = [torch.from_numpy(a).half() for a in (q, k, v, rel_h, rel_w)]
    scores = scale * t[0] @ t[1].transpose(-1, -2) + (t[3][..., :, None] + t[4][..., None, :]).reshape(
        batch, heads, q.shape[2], -1)
    torch_fp16 = (scores.float().softmax(-1).half() @ t[2]).float().numpy()
    ours = rel_pos_attention(q, k, v, rel_h, rel_w, scale, compute="fp16")
    assert _rel(ours, ref) <= 5 * _rel(torch_fp16, ref), (_rel(ours, ref), _rel(torch_fp16, ref))


@needs_kernel
@needs_avx512
def test_avx512_path_matches_the_portable_loop():
    """The two C++ paths, on a shape both run: float32 rounding apart only."""
    from sam_edge import _C

    q, k, v, rel_h, rel_w = _inputs(2, 2, (12, 12), (12, 16), 64, 2.0, seed=11)
    args = (q.reshape(4, 144, 64), k.reshape(4, 192, 64), v.reshape(4, 192, 64), rel_h.reshape(4, 144, 12),
            rel_w.reshape(4, 144, 16), 12, 16, 0.125)
    fast = _C.rel_pos_attention(*args, 0, False)
    portable = _C.rel_pos_attention(*args, 0, True)
    ref = rel_pos_attention_reference(q, k, v, rel_h, rel_w, 0.125).reshape(4, 144, 64)
    assert _rel(fast, ref) < 1e-6 and _rel(portable, ref) < 1e-6


@needs_kernel
def test_thread_count_does_not_change_the_result():
    """Each query row is computed by one thread in a fixed order: bitwise equal."""
    q, k, v, rel_h, rel_w = _inputs(1, 3, (16, 16), (16, 16), 64, 1.0, seed=5)
    one = rel_pos_attention(q, k, v, rel_h, rel_w, 0.125, threads=1)
    two = rel_pos_attention(q, k, v, rel_h, rel_w, 0.125, threads=2)
    np.testing.assert_array_equal(one, two)


@needs_kernel
def test_bad_inputs_are_refused():
    q, k, v, rel_h, rel_w = _inputs(1, 2, (4, 4), (4, 16), 64, 1.0, seed=1)
    with pytest.raises(TypeError, match="q must be float32"):
        rel_pos_attention(q.astype(np.float64), k, v, rel_h, rel_w, 0.125)
    with pytest.raises(ValueError, match="expected q"):
        rel_pos_attention(q, k[:, :, :-1], v, rel_h, rel_w, 0.125)
    with pytest.raises(ValueError, match="compute must be one of"):
        rel_pos_attention(q, k, v, rel_h, rel_w, 0.125, compute="int4")
    with pytest.raises(ValueError, match="4 dimensions"):
        rel_pos_attention(q[0], k, v, rel_h, rel_w, 0.125)
    if STATUS["avx512_fp16"]:
        q, k, v, rel_h, rel_w = _inputs(1, 2, (4, 4), (4, 16), 80, 1.0, seed=1)
        with pytest.raises(ValueError, match="fp16 compute needs"):
            rel_pos_attention(q, k, v, rel_h, rel_w, 0.125, compute="fp16")


def test_fast_compute_follows_the_machine():
    status = kernel_status()
    got = fast_compute(64, (64, 64), "fp16")
    if not status["avx512"]:
        assert got is None
    else:
        assert got == ("fp16" if status["avx512_fp16"] else "fp32")
        assert fast_compute(64, (64, 64), "fp32") == "fp32"
        assert fast_compute(80, (64, 64), "fp16") == "fp32"  # fp16 compute is for head_dim 64
    assert fast_compute(32, (64, 64), "fp32") is None  # no fast path for this head_dim
    assert fast_compute(64, (14, 14), "fp32") is None  # windowed grids: fp16 only
    if status["avx512_fp16"]:
        assert fast_compute(64, (14, 14), "fp16") == "fp16"
        assert fast_compute(80, (14, 14), "fp16") is None
    with pytest.raises(ValueError, match="compute must be one of"):
        fast_compute(64, (64, 64), "bf16")
