"""SAM's attention with the decomposed rel-pos bias (a global block's, or a
windowed block's over its partitioned windows), on numpy arrays, for the ONNX
Runtime backend's segmented encoder. numpy only: no torch.

    out = softmax(scale * q @ k^T + bias) @ v,
    bias[b, n, i, (kh, kw)] = rel_h[b, n, i, kh] + rel_w[b, n, i, kw]

The fused kernel is sam_edge._C.rel_pos_attention (csrc/attention_cpu.cpp): it
keeps each block of scores in cache instead of materialising the
(B, heads, N, M) matrix and bias. Two compute precisions:

- "fp32": float32 products and sums (error ~1e-6, like ONNX Runtime's).
- "fp16": both products in fp16 with fp16 partial sums over at most 64 terms
  (AVX512-FP16; a ViT-B global block 148 vs 256 ms in fp32,
  benchmarks/bench_cpu_attention.py); softmax, inputs and output in float32.
  Used for int8 bundles, whose q, k, v come out of int8 layers: 2e-3 to 5e-3
  relative error against float64 (the benchmark, tests/test_global_attention.py),
  inside those bundles' 5e-2 bound.

rel_pos_attention_reference is the same math in float64 numpy, for the tests.
"""

from typing import Optional, Sequence

import numpy as np

#: Compute precisions of the kernel.
COMPUTE = ("fp32", "fp16")
#: The kernel's inputs, in order, as an encoder split plan names them.
ATTENTION_INPUTS = ("q", "k", "v", "rel_h", "rel_w")


def _native():
    try:
        from .. import _C
    except ImportError:
        return None
    return _C if hasattr(_C, "rel_pos_attention") else None


def kernel_status() -> dict:
    """What this machine runs: {"available", "avx512", "avx512_fp16", "threads"}."""
    native = _native()
    if native is None:
        return {"available": False, "avx512": False, "avx512_fp16": False, "threads": 0}
    return {
        "available": True,
        "avx512": bool(native.rel_pos_attention_has_avx512()),
        "avx512_fp16": bool(native.rel_pos_attention_has_avx512_fp16()),
        "threads": int(native.num_threads()),
    }


def fast_compute(head_dim: int, k_size: Sequence[int], preferred: str) -> Optional[str]:
    """The compute precision the fast kernel runs for this shape: `preferred`
    when it can, "fp32" when only that can, None when neither of its AVX-512
    paths runs it (no _C, no AVX-512, or a shape they do not cover).

    fp32: head_dim 64 or 80, k_w a multiple of 16 (the global blocks).
    fp16: AVX512-FP16, head_dim 64, and k_w % 16 == 0 with k_h * k_w % 64 == 0
    (global blocks) or k_h, k_w <= 16 (windowed blocks)."""
    if preferred not in COMPUTE:
        raise ValueError(f"compute must be one of {COMPUTE}; got {preferred!r}")
    status = kernel_status()
    k_h, k_w = int(k_size[0]), int(k_size[1])
    if not status["avx512"]:
        return None
    aligned = k_w % 16 == 0
    if preferred == "fp16" and status["avx512_fp16"] and head_dim == 64:
        if (aligned and (k_h * k_w) % 64 == 0) or (k_h <= 16 and k_w <= 16):
            return "fp16"
    if head_dim in (64, 80) and aligned:
        return "fp32"
    return None


def _check(name: str, a, ndim: int) -> np.ndarray:
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy array; got {type(a).__name__}")
    if a.dtype != np.float32:
        raise TypeError(f"{name} must be float32; got {a.dtype}")
    if a.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions; got shape {a.shape}")
    return np.ascontiguousarray(a)


def rel_pos_attention(
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
    if compute not in COMPUTE:
        raise ValueError(f"compute must be one of {COMPUTE}; got {compute!r}")
    q, k, v = (_check(n, a, 4) for n, a in (("q", q), ("k", k), ("v", v)))
    rel_h, rel_w = _check("rel_h", rel_h, 5), _check("rel_w", rel_w, 5)
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
        0 if threads is None else int(threads), False, compute == "fp16",
    )
    return out.reshape(b, heads, n, d)


def rel_pos_attention_reference(q, k, v, rel_h, rel_w, scale: float) -> np.ndarray:
    """rel_pos_attention in float64 numpy, materialising the scores: for clarity."""
    q, k, v, rel_h, rel_w = (np.asarray(a, dtype=np.float64) for a in (q, k, v, rel_h, rel_w))
    b, heads, n, _ = q.shape
    bias = (rel_h[..., :, None] + rel_w[..., None, :]).reshape(b, heads, n, -1)
    scores = scale * q @ np.swapaxes(k, -1, -2) + bias
    scores -= scores.max(axis=-1, keepdims=True)
    p = np.exp(scores)
    p /= p.sum(axis=-1, keepdims=True)
    return p @ v
