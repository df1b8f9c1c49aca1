"""Multi-head attention with SAM's decomposed relative-position bias.

One operation serves every attention block of the image encoder, windowed or
global. Backends (reference torch, Triton, CUDA) sit behind
:func:`rel_pos_attention` and must agree with :func:`rel_pos_attention_reference`.
"""

from __future__ import annotations

import os
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from .rel_pos import Size2, rel_pos_bias_terms
from .triton_support import triton_unavailable_reason

def rel_pos_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rel_pos_h: torch.Tensor,
    rel_pos_w: torch.Tensor,
    q_size: Size2,
    k_size: Size2,
    scale: Optional[float] = None,
) -> torch.Tensor:
    """Plain torch attention with the decomposed rel-pos bias, written for clarity.

    Materialises the (N, M) attention matrix, exactly like the official model:
    softmax(q k^T * scale + bias) v, computed in the input dtype.
    """
    B, heads, N, D = q.shape
    M = k.shape[2]
    scale = D**-0.5 if scale is None else scale
    attn = (q * scale) @ k.transpose(-2, -1)
    rel_h, rel_w = rel_pos_bias_terms(q, rel_pos_h, rel_pos_w, q_size, k_size)
    attn = attn.view(B, heads, q_size[0], q_size[1], k_size[0], k_size[1])
    attn = attn + rel_h[..., :, None] + rel_w[..., None, :]
    attn = attn.view(B, heads, N, M).softmax(dim=-1)
    return attn @ v


def rel_pos_attention_sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rel_pos_h: torch.Tensor,
    rel_pos_w: torch.Tensor,
    q_size: Size2,
    k_size: Size2,
    scale: Optional[float] = None,
) -> torch.Tensor:
    """The same math through PyTorch's fused scaled_dot_product_attention,
    with the bias as an additive mask: softmax and the second matmul are fused,
    so the (N, M) logits are written once instead of four times."""
    B, heads, N, _ = q.shape
    rel_h, rel_w = rel_pos_bias_terms(q, rel_pos_h, rel_pos_w, q_size, k_size)
    bias = (rel_h[..., :, None] + rel_w[..., None, :]).reshape(B, heads, N, k_size[0] * k_size[1])
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)


# name -> (function, availability check(q) -> reason it cannot run, or None)
_BACKENDS: Dict[str, Tuple[Callable[..., torch.Tensor], Callable[[torch.Tensor], Optional[str]]]] = {}

#: Environment switch that forces a backend for every call that asks for "auto".
BACKEND_ENV = "SAM_EDGE_ATTENTION_BACKEND"


def auto_backend_order(device_type: str, dtype: torch.dtype) -> Tuple[str, ...]:
    """Backends that backend="auto" tries, in order, for queries on `device_type` in `dtype`.

    The first one that can run the call is used; "sdpa" ends every list. Triton
    is tried for fp16/bf16 CUDA tensors only: its fp32 path runs IEEE matmuls off
    the tensor cores and is not shown faster than sdpa, and it has no fp64 path.
    """
    if device_type == "cuda" and dtype in (torch.float16, torch.bfloat16):
        return ("triton", "sdpa")
    return ("sdpa",)


def register_backend(
    name: str,
    fn: Callable[..., torch.Tensor],
    unavailable_reason: Callable[[torch.Tensor], Optional[str]] = lambda q: None,
) -> None:
    """Register `fn(q, k, v, rel_pos_h, rel_pos_w, q_size, k_size, scale)` as a backend."""
    _BACKENDS[name] = (fn, unavailable_reason)


def _rel_pos_attention_triton(*args, **kwargs):
    # Imported on the first call, so this module imports without Triton and
    # "auto" falls back to the references (see triton_support).
    from .triton_attention import rel_pos_attention_triton

    return rel_pos_attention_triton(*args, **kwargs)


register_backend("reference", rel_pos_attention_reference)
register_backend("sdpa", rel_pos_attention_sdpa)
register_backend("triton", _rel_pos_attention_triton, triton_unavailable_reason)


def available_backends(q: Optional[torch.Tensor] = None) -> Dict[str, Optional[str]]:
    """Map of backend name to None (usable) or the reason it cannot run on `q`."""
    probe = q if q is not None else torch.empty(0)
    return {name: check(probe) for name, (_, check) in _BACKENDS.items()}


def resolve_backend(q: torch.Tensor, backend: str = "auto") -> str:
    """The backend that `rel_pos_attention(..., backend=backend)` would run for `q`."""
    if backend == "auto":
        forced = os.environ.get(BACKEND_ENV, "").strip()
        if forced and forced != "auto":
            backend = forced
        else:
            for name in auto_backend_order(q.device.type, q.dtype):
                if name in _BACKENDS and _BACKENDS[name][1](q) is None:
                    return name
            return "sdpa"
    if backend not in _BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; known: {sorted(_BACKENDS)}")
    reason = _BACKENDS[backend][1](q)
    if reason is not None:
        raise RuntimeError(f"attention backend {backend!r} cannot run here: {reason}")
    return backend


def rel_pos_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rel_pos_h: torch.Tensor,
    rel_pos_w: torch.Tensor,
    q_size: Size2,
    k_size: Size2,
    *,
    backend: str = "auto",
    scale: Optional[float] = None,
) -> torch.Tensor:
    """softmax(q k^T * scale + decomposed rel-pos bias) v, as in SAM's image encoder.

    Args:
        q: (B, heads, q_h * q_w, head_dim) queries, unscaled.
        k, v: (B, heads, k_h * k_w, head_dim).
        rel_pos_h: (2 * max(q_h, k_h) - 1, head_dim) table along rows.
        rel_pos_w: (2 * max(q_w, k_w) - 1, head_dim) table along columns.
        q_size, k_size: (rows, cols) of the query and key grids.
        backend: "auto" (Triton for fp16/bf16 CUDA tensors when available, else "sdpa";
            the environment variable SAM_EDGE_ATTENTION_BACKEND overrides it),
            or a registered name: "reference" (plain math, what ONNX export
            uses), "sdpa" (torch's fused attention with an additive bias), "triton".
        scale: logit scale; head_dim ** -0.5 when None.
    Returns:
        (B, heads, q_h * q_w, head_dim), the dtype of q.
    """
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(
            f"q, k, v must be (B, heads, N, head_dim); got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if q.shape[2] != q_size[0] * q_size[1] or k.shape[2] != k_size[0] * k_size[1]:
        raise ValueError(
            f"token counts {q.shape[2]}, {k.shape[2]} do not match q_size {tuple(q_size)} and k_size {tuple(k_size)}"
        )
    name = resolve_backend(q, backend)
    fn = _BACKENDS[name][0]
    return fn(q, k, v, rel_pos_h, rel_pos_w, tuple(q_size), tuple(k_size), scale)
