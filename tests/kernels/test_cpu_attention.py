"""sam_edge._C's fused attention (csrc/attention/) against float64: the
core op on q, k, v and bias terms, and the block-level op that the segmented
encoder calls, from the qkv projection with the rel-pos tables and windows.
The block-level reference is itself checked against the official package's
Attention, window_partition and window_unpartition.

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

from sam_edge.kernels.cpu_attention import (
    fast_compute,
    cpu_kernel_status,
    rel_pos_attention_cpu,
    rel_pos_attention_qkv,
    rel_pos_attention_qkv_reference,
    rel_pos_attention_cpu_reference,
)
from attention_inputs import qkv_inputs  # noqa: E402

STATUS = cpu_kernel_status()
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
    ref = rel_pos_attention_cpu_reference(q, k, v, rel_h, rel_w, scale)
    ours = rel_pos_attention_cpu(q, k, v, rel_h, rel_w, scale)
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
    ref = rel_pos_attention_cpu_reference(q, k, v, rel_h, rel_w, scale)
    t = [torch.from_numpy(a).half() for a in (q, k, v, rel_h, rel_w)]
    scores = scale * t[0] @ t[1].transpose(-1, -2) + (t[3][..., :, None] + t[4][..., None, :]).reshape(
        batch, heads, q.shape[2], -1)
    torch_fp16 = (scores.float().softmax(-1).half() @ t[2]).float().numpy()
    ours = rel_pos_attention_cpu(q, k, v, rel_h, rel_w, scale, compute="fp16")
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
    ref = rel_pos_attention_cpu_reference(q, k, v, rel_h, rel_w, 0.125).reshape(4, 144, 64)
    assert _rel(fast, ref) < 1e-6 and _rel(portable, ref) < 1e-6


@needs_kernel
def test_thread_count_does_not_change_the_result():
    """Each query row is computed by one thread in a fixed order: bitwise equal."""
    q, k, v, rel_h, rel_w = _inputs(1, 3, (16, 16), (16, 16), 64, 1.0, seed=5)
    one = rel_pos_attention_cpu(q, k, v, rel_h, rel_w, 0.125, threads=1)
    two = rel_pos_attention_cpu(q, k, v, rel_h, rel_w, 0.125, threads=2)
    np.testing.assert_array_equal(one, two)


@needs_kernel
def test_bad_inputs_are_refused():
    q, k, v, rel_h, rel_w = _inputs(1, 2, (4, 4), (4, 16), 64, 1.0, seed=1)
    with pytest.raises(TypeError, match="q must be float32"):
        rel_pos_attention_cpu(q.astype(np.float64), k, v, rel_h, rel_w, 0.125)
    with pytest.raises(ValueError, match="expected q"):
        rel_pos_attention_cpu(q, k[:, :, :-1], v, rel_h, rel_w, 0.125)
    with pytest.raises(ValueError, match="compute must be one of"):
        rel_pos_attention_cpu(q, k, v, rel_h, rel_w, 0.125, compute="int4")
    with pytest.raises(ValueError, match="4 dimensions"):
        rel_pos_attention_cpu(q[0], k, v, rel_h, rel_w, 0.125)
    # head_dim 80 has no fp16 path on any CPU: refused with or without AVX512-FP16.
    q, k, v, rel_h, rel_w = _inputs(1, 2, (4, 4), (4, 16), 80, 1.0, seed=1)
    with pytest.raises(ValueError, match="fp16 compute needs"):
        rel_pos_attention_cpu(q, k, v, rel_h, rel_w, 0.125, compute="fp16")


#: CPUs described: (amx_bf16, avx512_bf16, avx512_fp16), and what fast_compute gives for
#: preferred bf16 and preferred fp16 at head_dim 64 and 80, global (64, 64) and windowed (14, 14) grids.
_RULE_GRIDS = [(64, (64, 64)), (80, (64, 64)), (64, (14, 14)), (80, (14, 14))]
_RULE_TABLE = [
    # Sapphire Rapids: AMX for bf16, and fp16 when asked for it (head_dim 64 only).
    ((True, True, True), ("bf16", "bf16", "bf16", "bf16"), ("fp16", "fp32", "fp16", None)),
    # Sapphire Rapids with the tiles refused: bf16 on AVX512-BF16, still preferred to fp16.
    ((False, True, True), ("bf16", "bf16", "bf16", "bf16"), ("fp16", "fp32", "fp16", None)),
    # AMD Zen 4 and later: bf16 on AVX512-BF16; asked for fp16, only fp32 (global grids) is there.
    ((False, True, False), ("bf16", "bf16", "bf16", "bf16"), ("fp32", "fp32", None, None)),
    # AVX512-FP16 alone: fp16, and fp32 for head_dim 80.
    ((False, False, True), ("fp16", "fp32", "fp16", None), ("fp16", "fp32", "fp16", None)),
    # AVX-512 only (Skylake, Ice Lake): fp32 for global grids, nothing windowed.
    ((False, False, False), ("fp32", "fp32", None, None), ("fp32", "fp32", None, None)),
]


@needs_kernel  # the rule is the kernel's (csrc/attention/dispatch.cpp)
@pytest.mark.parametrize("features, bf16_expected, fp16_expected", _RULE_TABLE,
                         ids=[f"amx{int(f[0][0])}-avx512bf16{int(f[0][1])}-fp16{int(f[0][2])}" for f in _RULE_TABLE])
def test_fast_compute_rule_for_the_cpus_described(monkeypatch, features, bf16_expected, fp16_expected):
    """bf16 -> fp16 -> fp32 on machines with and without AMX, AVX512-BF16 and AVX512-FP16, whatever this one has."""
    from sam_edge.kernels import cpu_attention

    amx, avx512_bf16, fp16 = features
    status = {"available": True, "avx512": True, "avx512_fp16": fp16, "amx_bf16": amx, "avx512_bf16": avx512_bf16,
              "threads": 2}
    monkeypatch.setattr(cpu_attention, "cpu_kernel_status", lambda: status)
    assert tuple(cpu_attention.fast_compute(d, grid, "bf16") for d, grid in _RULE_GRIDS) == bf16_expected
    assert tuple(cpu_attention.fast_compute(d, grid, "fp16") for d, grid in _RULE_GRIDS) == fp16_expected
    # A shape no fast path takes, on any of these CPUs.
    assert cpu_attention.fast_compute(32, (64, 64), "bf16") is None


@needs_kernel
def test_fast_compute_needs_avx512_under_the_bf16_instructions(monkeypatch):
    """AVX512-BF16 or AMX reported without AVX-512 (the OS does not save its state): nothing runs."""
    from sam_edge.kernels import cpu_attention

    status = {"available": True, "avx512": False, "avx512_fp16": False, "amx_bf16": True, "avx512_bf16": True,
              "threads": 2}
    monkeypatch.setattr(cpu_attention, "cpu_kernel_status", lambda: status)
    assert cpu_attention.fast_compute(64, (64, 64), "bf16") is None


@needs_kernel
def test_avx512_bf16_probe_agrees_with_the_kernel_of_the_os():
    """The kernel's cpuid probe against Linux's flags, which it reads from the same bit."""
    from sam_edge.bench.host import cpu_features

    flags = cpu_features()
    if not flags:
        pytest.skip("no /proc/cpuinfo flags to compare with")
    if STATUS["avx512"]:
        assert STATUS["avx512_bf16"] == ("avx512_bf16" in flags)
    else:
        assert not STATUS["avx512_bf16"]


def test_fast_compute_follows_the_machine():
    status = cpu_kernel_status()
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
    if status["avx512"]:
        # bf16 where AMX or AVX512-BF16 runs it, else down to fp16, then fp32.
        bf16 = status["amx_bf16"] or status["avx512_bf16"]
        reduced = "bf16" if bf16 else "fp16" if status["avx512_fp16"] else "fp32"
        assert fast_compute(64, (64, 64), "bf16") == reduced
        assert fast_compute(64, (64, 64), "fp16") == ("fp16" if status["avx512_fp16"] else "fp32")
        assert fast_compute(80, (64, 64), "bf16") == ("bf16" if bf16 else "fp32")
        assert fast_compute(80, (64, 64), "fp16") == "fp32"  # no fp16 path for head_dim 80
        assert fast_compute(80, (14, 14), "bf16") == ("bf16" if bf16 else None)
    with pytest.raises(ValueError, match="compute must be one of"):
        fast_compute(64, (64, 64), "int4")


# ---- from the qkv projection: rel_pos_attention_qkv ----

# (batch, (H, W), heads, head_dim, window)
QKV_SHAPES = [
    (1, (16, 16), 2, 64, 0),   # reduced global block
    (2, (8, 16), 3, 64, 0),    # batch of 2, rows not a multiple of 24
    (1, (20, 23), 2, 64, 7),   # windows padded at the bottom and the right
    (1, (30, 30), 2, 64, 14),  # ViT-B's window on a grid with 3 x 3 windows
    (1, (8, 16), 2, 80, 0),    # ViT-H head_dim
    (2, (9, 10), 1, 24, 4),    # odd head_dim: the portable loop
]
_qkv_ids = [f"b{s[0]}g{s[1][0]}x{s[1][1]}h{s[2]}d{s[3]}w{s[4]}" for s in QKV_SHAPES]




def test_qkv_reference_matches_the_official_attention():
    """The float64 reference is SAM's block attention: the official Attention
    module (its qkv and proj Linears around ours), windows partitioned and
    un-partitioned by the official functions, all in float64."""
    torch = pytest.importorskip("torch")
    image_encoder = pytest.importorskip("segment_anything.modeling.image_encoder")
    for batch, grid, heads, d, window in [(1, (12, 12), 2, 16, 0), (2, (11, 9), 2, 8, 4)]:
        torch.manual_seed(window)
        dim, size = heads * d, (window, window) if window else grid
        attn = image_encoder.Attention(dim, heads, qkv_bias=True, use_rel_pos=True, input_size=size).double()
        with torch.no_grad():
            attn.rel_pos_h.normal_(0, 0.5)
            attn.rel_pos_w.normal_(0, 0.5)
            x = torch.randn(batch, *grid, dim, dtype=torch.float64)
            if window:
                windows, pad = image_encoder.window_partition(x, window)
                official = image_encoder.window_unpartition(attn(windows), window, pad, grid)
            else:
                official = attn(x)
            qkv = attn.qkv(x).numpy()
            kv_bias = attn.qkv.bias.view(3, heads, d)[1:].numpy()
            out = rel_pos_attention_qkv_reference(qkv, attn.rel_pos_h.numpy(), attn.rel_pos_w.numpy(), kv_bias,
                                                  heads, window, attn.scale)
            ours = attn.proj(torch.from_numpy(out)).numpy()
        np.testing.assert_allclose(ours, official.numpy(), rtol=0, atol=1e-12)


@needs_kernel
@pytest.mark.parametrize("shape", QKV_SHAPES, ids=_qkv_ids)
def test_qkv_fp32_matches_float64(shape):
    batch, grid, heads, d, window = shape
    inputs = qkv_inputs(batch, grid, heads, d, window, seed=sum(grid) + d + window)
    scale = d ** -0.5
    ref = rel_pos_attention_qkv_reference(*inputs, heads, window, scale)
    baseline = _rel(rel_pos_attention_qkv_reference(*inputs, heads, window, scale, dtype=np.float32), ref)
    ours = rel_pos_attention_qkv(*inputs, heads, window, scale)
    assert ours.shape == (batch, *grid, heads * d) and ours.dtype == np.float32
    assert _rel(ours, ref) <= 4 * baseline, (_rel(ours, ref), baseline)


def _torch_reduced_qkv(torch, qkv, rel_pos_h, rel_pos_w, kv_bias, heads, window, scale, dtype):
    """The same-precision baseline for fp16 or bf16 compute: windows and rel-pos terms
    in float32 (as the kernel computes them), both products in torch `dtype`, softmax in fp32."""
    b, height, width, _ = qkv.shape
    d = qkv.shape[-1] // (3 * heads)
    s_h, s_w = (window, window) if window else (height, width)
    hp, wp = -(-height // s_h) * s_h, -(-width // s_w) * s_w
    grid = np.zeros((b, hp, wp, 3, heads, d), np.float32)
    grid[..., 1:, :, :] = kv_bias
    grid[:, :height, :width] = qkv.reshape(b, height, width, 3, heads, d)
    q, k, v = grid.reshape(b, hp // s_h, s_h, wp // s_w, s_w, 3, heads, d).transpose(5, 0, 1, 3, 6, 2, 4, 7)
    rel_h = np.einsum("...ywc,ykc->...ywk", q, rel_pos_h[np.arange(s_h)[:, None] - np.arange(s_h) + s_h - 1])
    rel_w = np.einsum("...ywc,wkc->...ywk", q, rel_pos_w[np.arange(s_w)[:, None] - np.arange(s_w) + s_w - 1])
    lead, m = q.shape[:-3], s_h * s_w
    tq, tk, tv = (torch.from_numpy(np.ascontiguousarray(a).reshape(-1, m, d)).to(dtype) for a in (q, k, v))
    bias = torch.from_numpy((rel_h[..., :, None] + rel_w[..., None, :]).reshape(-1, m, m))
    scores = (scale * tq @ tk.transpose(-1, -2)).float() + bias
    out = (scores.softmax(-1).to(dtype) @ tv).float().numpy().reshape(*lead, s_h, s_w, d)
    return out.transpose(0, 1, 4, 2, 5, 3, 6).reshape(b, hp, wp, heads * d)[:, :height, :width]


#: Reduced-precision compute: the CPU features that run it (any one), and the multiple
#: of torch's own error in that precision it must stay within. fp16 measured 3.3-3.8x
#: (torch's baseline adds its bias in fp32). bf16's sums are fp32 where torch rounds
#: the scores to bf16, so it measured 0.63-0.69x on AMX and 0.60-0.69x on AVX512-BF16
#: (the same roundings, summed in another order); 2x leaves room for other roundings.
REDUCED_COMPUTE = {"fp16": (("avx512_fp16",), 5.0, 3), "bf16": (("amx_bf16", "avx512_bf16"), 2.0, 5)}


#: head_dim 64 for both; for bf16 also ViT-H's 80: padded windows, ViT-B's and ViT-H's
#: window 14 over a grid it pads with a batch of 2, and ViT-H's whole global key grid.
_REDUCED_CASES = [(s, c) for c in REDUCED_COMPUTE for s in QKV_SHAPES if s[3] == 64 or (c == "bf16" and s[3] == 80)]
_REDUCED_CASES += [((1, (20, 23), 2, 80, 7), "bf16"), ((2, (30, 30), 1, 64, 14), "bf16"),
                   ((2, (30, 30), 2, 80, 14), "bf16"), ((1, (64, 64), 1, 80, 0), "bf16")]


@needs_kernel
@pytest.mark.parametrize("shape, compute", _REDUCED_CASES,
                         ids=[f"{c}-b{s[0]}g{s[1][0]}x{s[1][1]}h{s[2]}d{s[3]}w{s[4]}" for s, c in _REDUCED_CASES])
def test_qkv_reduced_compute_within_torch_error(shape, compute):
    torch = pytest.importorskip("torch")
    features, factor, seed = REDUCED_COMPUTE[compute]
    if not any(STATUS[feature] for feature in features):
        pytest.skip(f"this CPU has no {' or '.join(features)}" + (" (or the OS refuses AMX's tiles)" if "amx_bf16" in features else ""))
    batch, grid, heads, d, window = shape
    inputs = qkv_inputs(batch, grid, heads, d, window, seed=seed + sum(grid) + window)
    scale = d ** -0.5
    ref = rel_pos_attention_qkv_reference(*inputs, heads, window, scale)
    dtype = torch.float16 if compute == "fp16" else torch.bfloat16
    baseline = _rel(_torch_reduced_qkv(torch, *inputs, heads, window, scale, dtype), ref)
    ours = rel_pos_attention_qkv(*inputs, heads, window, scale, compute=compute)
    assert _rel(ours, ref) <= factor * baseline, (_rel(ours, ref), baseline)


@needs_kernel
@needs_avx512
def test_qkv_avx512_path_matches_the_portable_loop():
    from sam_edge import _C

    qkv, rel_pos_h, rel_pos_w, kv_bias = qkv_inputs(1, (16, 32), 2, 64, 0, seed=13)
    fast = _C.rel_pos_attention_qkv(qkv, rel_pos_h, rel_pos_w, kv_bias, 2, 0, 0.125, 0, False, _C.Compute.fp32)
    portable = _C.rel_pos_attention_qkv(qkv, rel_pos_h, rel_pos_w, kv_bias, 2, 0, 0.125, 0, True, _C.Compute.fp32)
    ref = rel_pos_attention_qkv_reference(qkv, rel_pos_h, rel_pos_w, kv_bias, 2, 0, 0.125)
    assert _rel(fast, ref) < 1e-6 and _rel(portable, ref) < 1e-6


@needs_kernel
@pytest.mark.parametrize("compute", ["fp32", "fp16", "bf16"])
def test_qkv_thread_count_does_not_change_the_result(compute):
    if compute == "fp16" and not STATUS["avx512_fp16"]:
        pytest.skip("this CPU has no AVX512-FP16")
    if compute == "bf16" and not (STATUS["amx_bf16"] or STATUS["avx512_bf16"]):
        pytest.skip("this CPU has neither AVX512-BF16 nor AMX-BF16 (that the OS grants)")
    inputs = qkv_inputs(1, (20, 23), 3, 64, 7, seed=17)
    one = rel_pos_attention_qkv(*inputs, 3, 7, 0.125, compute=compute, threads=1)
    two = rel_pos_attention_qkv(*inputs, 3, 7, 0.125, compute=compute, threads=2)
    np.testing.assert_array_equal(one, two)


@needs_kernel
def test_qkv_bad_inputs_are_refused():
    qkv, rel_pos_h, rel_pos_w, kv_bias = qkv_inputs(1, (10, 10), 2, 16, 4, seed=2)
    with pytest.raises(TypeError, match="qkv must be float32"):
        rel_pos_attention_qkv(qkv.astype(np.float64), rel_pos_h, rel_pos_w, kv_bias, 2, 4, 0.25)
    with pytest.raises(ValueError, match="3 \\* heads \\* head_dim"):
        rel_pos_attention_qkv(qkv[..., :-1], rel_pos_h, rel_pos_w, kv_bias, 2, 4, 0.25)
    with pytest.raises(ValueError, match="rel_pos_h"):
        rel_pos_attention_qkv(qkv, rel_pos_h[:-1], rel_pos_w, kv_bias, 2, 4, 0.25)
    with pytest.raises(ValueError, match="kv_bias is needed"):
        rel_pos_attention_qkv(qkv, rel_pos_h, rel_pos_w, None, 2, 4, 0.25)  # 10 x 10 in 4 x 4 windows pads
    with pytest.raises(ValueError, match="kv_bias"):
        rel_pos_attention_qkv(qkv, rel_pos_h, rel_pos_w, kv_bias[:, :1], 2, 4, 0.25)
    with pytest.raises(ValueError, match="compute must be one of"):
        rel_pos_attention_qkv(qkv, rel_pos_h, rel_pos_w, kv_bias, 2, 4, 0.25, compute="int8")
    # head_dim 16 has no reduced-precision path on any CPU: refused with or without the feature.
    with pytest.raises(ValueError, match="fp16 compute needs"):
        rel_pos_attention_qkv(qkv, rel_pos_h, rel_pos_w, kv_bias, 2, 4, 0.25, compute="fp16")
    with pytest.raises(ValueError, match="bf16 compute needs"):
        rel_pos_attention_qkv(qkv, rel_pos_h, rel_pos_w, kv_bias, 2, 4, 0.25, compute="bf16")
