"""SAM's attention with the decomposed rel-pos bias (a global block's, or a
windowed block's over its partitioned windows), on numpy arrays, for the ONNX
Runtime backend's segmented encoder. numpy only: no torch.

    out = softmax(scale * q @ k^T + bias) @ v,
    bias[b, n, i, (kh, kw)] = rel_h[b, n, i, kh] + rel_w[b, n, i, kw]

The fused kernel is sam_edge._C.rel_pos_attention (csrc/attention/): it
keeps each block of scores in cache instead of materialising the
(B, heads, N, M) matrix and bias. Its compute precisions:

- "fp32": float32 products and sums, as ONNX Runtime computes them.
- "fp16": both products in fp16 with fp16 partial sums over at most 64 terms
  (AVX512-FP16); softmax, inputs and output in float32. Used for int8 bundles,
  whose q, k, v come out of int8 layers: its error against float64
  (tests/kernels/test_cpu_attention.py bounds it) is far inside those bundles'.
- "bf16" (rel_pos_attention_qkv only, head_dim 64 or 80): q, k, v and the
  probabilities in bf16, every sum in fp32; both products on AMX tiles where the
  CPU has them and the OS grants them, else with AVX512-BF16's vdpbf16ps (AMD
  Zen 4 and later), the same numerics either way. int8 bundles run it where it
  runs, else fp16, and ViT-H's (head_dim 80, no fp16 path) else fp32.
  benchmarks/bench_cpu_attention.py times the three.

rel_pos_attention_qkv is the same attention as an encoder block feeds it: from
its qkv Linear's output, with the model's rel-pos tables, the windows and their
padding handled in the kernel (_C.rel_pos_attention_qkv), and the output in the
layout the block's proj Linear reads. The encoder ops graph cuts the encoder
there (sam_edge.export.encoder_ops), for the same kernel as an ONNX Runtime
custom op (csrc/ort/).

rel_pos_attention_cpu_reference and rel_pos_attention_qkv_reference are the same
math in float64 numpy, for the tests.
"""

from typing import Optional, Sequence

import numpy as np

from ._arrays import float32_array

#: Compute precisions of the kernel: rel_pos_attention's, and rel_pos_attention_qkv's.
COMPUTE = ("fp32", "fp16")
QKV_COMPUTE = ("fp32", "fp16", "bf16")


def _native():
    try:
        from .. import _C
    except ImportError:
        return None
    # A _C built before the AVX512-BF16 path takes other arguments: treated as absent.
    return _C if hasattr(_C, "rel_pos_attention_has_avx512_bf16") else None


def _compute(native, compute: str, allowed: Sequence[str]):
    """The kernel's Compute for a compute name of `allowed`."""
    if compute not in allowed:
        raise ValueError(f"compute must be one of {tuple(allowed)}; got {compute!r}")
    return getattr(native.Compute, compute)


def cpu_kernel_status() -> dict:
    """What this machine runs: {"available", "avx512", "avx512_fp16", "amx_bf16", "avx512_bf16", "threads"}
    (bools, and the kernel's OpenMP threads). bf16 compute runs where amx_bf16 or avx512_bf16 is True."""
    native = _native()
    if native is None:
        return {"available": False, "avx512": False, "avx512_fp16": False, "amx_bf16": False, "avx512_bf16": False,
                "threads": 0}
    return {
        "available": True,
        "avx512": bool(native.rel_pos_attention_has_avx512()),
        "avx512_fp16": bool(native.rel_pos_attention_has_avx512_fp16()),
        "amx_bf16": bool(native.rel_pos_attention_has_amx_bf16()),
        "avx512_bf16": bool(native.rel_pos_attention_has_avx512_bf16()),
        "threads": int(native.num_threads()),
    }


def fast_compute(head_dim: int, k_size: Sequence[int], preferred: str) -> Optional[str]:
    """The compute precision the fast qkv kernel runs for this shape: `preferred`
    when it can, else the next one down the list bf16 -> fp16 -> fp32 that it
    can, None when none of its fast paths runs it (no _C, no AVX-512, or a shape
    they do not cover).

    head_dim is D; k_size is the (k_h, k_w) key grid: (64, 64) for a global block
    of a 1024 px image, (14, 14) for a windowed one.
    fp32: head_dim 64 or 80, k_w a multiple of 16 (the global blocks).
    fp16: AVX512-FP16, head_dim 64, and k_w % 16 == 0 with k_h * k_w % 64 == 0
    (global blocks) or k_h, k_w <= 16 (windowed blocks).
    bf16: the same grids, head_dim 64 or 80, on AMX-BF16 or else AVX512-BF16
    (rel_pos_attention_qkv only).

    The rule is the kernel's own (csrc/attention/dispatch.cpp), which enforces it."""
    if preferred not in QKV_COMPUTE:
        raise ValueError(f"compute must be one of {QKV_COMPUTE}; got {preferred!r}")
    native = _native()
    if native is None:
        return None
    status = cpu_kernel_status()
    compute = native.rel_pos_attention_fast_compute(
        int(head_dim), int(k_size[0]), int(k_size[1]), _compute(native, preferred, QKV_COMPUTE),
        avx512=status["avx512"], avx512_fp16=status["avx512_fp16"], amx_bf16=status["amx_bf16"],
        avx512_bf16=status["avx512_bf16"],
    )
    return None if compute is None else compute.name


def rel_pos_attention_cpu(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    rel_h: np.ndarray,
    rel_w: np.ndarray,
    scale: float,
    compute: str = "fp32",
    threads: Optional[int] = None,
) -> np.ndarray:
    """Fused global attention.

    Arguments:
        q: (B, heads, N, D) float32 queries, unscaled.
        k, v: (B, heads, M, D) float32, M = k_h * k_w keys in row-major grid order.
        rel_h: (B, heads, q_h, q_w, k_h) float32, the bias term of the key row.
        rel_w: (B, heads, q_h, q_w, k_w) float32, the bias term of the key column.
        scale: multiplies q @ k^T (D ** -0.5 in SAM).
        compute: "fp32" or "fp16" (see the module docstring).
        threads: OpenMP threads; all of them when None.
    Returns:
        (B, heads, N, D) float32.
    """
    native = _native()
    if native is None:
        raise RuntimeError("sam_edge._C is not built: rel_pos_attention needs it (pip install . builds it)")
    kernel_compute = _compute(native, compute, COMPUTE)
    q, k, v = (float32_array(n, a, 4) for n, a in (("q", q), ("k", k), ("v", v)))
    rel_h, rel_w = float32_array("rel_h", rel_h, 5), float32_array("rel_w", rel_w, 5)
    b, heads, n, d = q.shape
    k_h, k_w = rel_h.shape[-1], rel_w.shape[-1]
    if (k.shape != (b, heads, k_h * k_w, d) or v.shape != k.shape or rel_h.shape[:2] != (b, heads)
            or rel_h.shape[2] * rel_h.shape[3] != n or rel_w.shape[:4] != rel_h.shape[:4]):
        raise ValueError(
            f"expected q (B, heads, N, D), k and v (B, heads, k_h*k_w, D), rel_h (B, heads, q_h, q_w, k_h), "
            f"rel_w (B, heads, q_h, q_w, k_w); got q {q.shape}, k {k.shape}, v {v.shape}, "
            f"rel_h {rel_h.shape}, rel_w {rel_w.shape}"
        )
    out = native.rel_pos_attention(
        q.reshape(b * heads, n, d), k.reshape(b * heads, -1, d), v.reshape(b * heads, -1, d),
        rel_h.reshape(b * heads, n, k_h), rel_w.reshape(b * heads, n, k_w), k_h, k_w, float(scale),
        0 if threads is None else int(threads), False, kernel_compute,
    )
    return out.reshape(b, heads, n, d)


def rel_pos_attention_cpu_reference(q, k, v, rel_h, rel_w, scale: float, dtype=np.float64) -> np.ndarray:
    """rel_pos_attention in numpy, materialising the scores: for clarity. float64
    by default; float32 gives the tests their same-precision baseline."""
    q, k, v, rel_h, rel_w = (np.asarray(a, dtype=dtype) for a in (q, k, v, rel_h, rel_w))
    b, heads, n, _ = q.shape
    bias = (rel_h[..., :, None] + rel_w[..., None, :]).reshape(b, heads, n, -1)
    scores = dtype(scale) * q @ np.swapaxes(k, -1, -2) + bias
    scores -= scores.max(axis=-1, keepdims=True)
    p = np.exp(scores)
    p /= p.sum(axis=-1, keepdims=True)
    return p @ v


def rel_pos_attention_qkv(
    qkv: np.ndarray,
    rel_pos_h: np.ndarray,
    rel_pos_w: np.ndarray,
    kv_bias: Optional[np.ndarray],
    heads: int,
    window: int,
    scale: float,
    compute: str = "fp32",
    threads: Optional[int] = None,
) -> np.ndarray:
    """An encoder block's attention, from its qkv projection.

    Arguments:
        qkv: (B, H, W, 3 * heads * D) float32, the block's qkv Linear output
            (q, k, v, then heads, then channels along the last axis).
        rel_pos_h, rel_pos_w: (2 * s - 1, D) float32, the block's rel-pos tables;
            s is the window, or the grid side for a global block.
        kv_bias: (2, heads, D) float32, the key and value of a padded token (the
            qkv bias's k and v parts); None when the windows tile the grid.
        heads: attention heads.
        window: 0 for a global block, else the window side (the grid is padded
            at the bottom and right to whole windows, as SAM does).
        scale: multiplies q @ k^T (D ** -0.5 in SAM).
        compute: "fp32", "fp16" or "bf16" (see the module docstring).
        threads: OpenMP threads; all of them when None.
    Returns:
        (B, H, W, heads * D) float32: each token's attention output, heads then channels.
    """
    native = _native()
    if native is None:
        raise RuntimeError("sam_edge._C is not built: rel_pos_attention_qkv needs it (pip install . builds it)")
    kernel_compute = _compute(native, compute, QKV_COMPUTE)
    qkv = float32_array("qkv", qkv, 4)
    rel_pos_h, rel_pos_w = float32_array("rel_pos_h", rel_pos_h, 2), float32_array("rel_pos_w", rel_pos_w, 2)
    if kv_bias is not None:
        kv_bias = float32_array("kv_bias", kv_bias, 3)
    return native.rel_pos_attention_qkv(
        qkv, rel_pos_h, rel_pos_w, kv_bias, int(heads), int(window), float(scale),
        0 if threads is None else int(threads), False, kernel_compute,
    )


def rel_pos_attention_qkv_reference(qkv, rel_pos_h, rel_pos_w, kv_bias, heads: int, window: int,
                                    scale: float, dtype=np.float64) -> np.ndarray:
    """rel_pos_attention_qkv in numpy (float64 by default): pad, partition,
    attend, un-partition."""
    qkv = np.asarray(qkv, dtype=dtype)
    b, height, width, channels = qkv.shape
    d = channels // (3 * heads)
    s_h, s_w = (window, window) if window else (height, width)
    hp, wp = -(-height // s_h) * s_h, -(-width // s_w) * s_w
    grid = np.zeros((b, hp, wp, 3, heads, d), dtype)
    if kv_bias is not None:
        grid[..., 1:, :, :] = np.asarray(kv_bias, dtype=dtype)
    grid[:, :height, :width] = qkv.reshape(b, height, width, 3, heads, d)
    # (B, wy, s_h, wx, s_w, 3, heads, D) -> (3, B, wy, wx, heads, s_h, s_w, D)
    windows = grid.reshape(b, hp // s_h, s_h, wp // s_w, s_w, 3, heads, d).transpose(5, 0, 1, 3, 6, 2, 4, 7)
    q, k, v = windows
    table_h = np.asarray(rel_pos_h, dtype)[np.arange(s_h)[:, None] - np.arange(s_h)[None, :] + s_h - 1]
    table_w = np.asarray(rel_pos_w, dtype)[np.arange(s_w)[:, None] - np.arange(s_w)[None, :] + s_w - 1]
    rel_h = np.einsum("...ywc,ykc->...ywk", q, table_h)
    rel_w = np.einsum("...ywc,wkc->...ywk", q, table_w)
    lead = q.shape[:-3]
    out = rel_pos_attention_cpu_reference(
        q.reshape(-1, 1, s_h * s_w, d), k.reshape(-1, 1, s_h * s_w, d), v.reshape(-1, 1, s_h * s_w, d),
        rel_h.reshape(-1, 1, s_h, s_w, s_h), rel_w.reshape(-1, 1, s_h, s_w, s_w), scale, dtype,
    ).reshape(*lead, s_h, s_w, d)
    # (B, wy, wx, heads, s_h, s_w, D) -> (B, wy, s_h, wx, s_w, heads, D)
    out = out.transpose(0, 1, 4, 2, 5, 3, 6).reshape(b, hp, wp, heads * d)
    return out[:, :height, :width]
