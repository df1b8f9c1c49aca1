"""SAM's attention with the decomposed rel-pos bias, global and windowed, on
torch tensors, with its plain reference implementation. Mask post-processing
lives in ``sam_edge.postprocess`` (torch and Triton paths in its ``torch_ops``).

Backends are picked per call with ``backend="auto"``: the Triton kernels for
fp16/bf16 CUDA tensors when Triton is installed (and the input needs no grad;
fp32 attention goes to ``sdpa``, where the kernel would spill registers), else
the torch references. Environment override: SAM_EDGE_ATTENTION_BACKEND.
:func:`kernel_status` says which path is active.
"""

from .rel_pos_attention import (
    BACKEND_ENV,
    available_backends,
    get_rel_pos,
    register_backend,
    rel_pos_attention,
    rel_pos_attention_reference,
    rel_pos_attention_sdpa,
    resolve_backend,
)
from .windowed_attention import (
    register_fused_backend,
    windowed_rel_pos_attention,
    windowed_rel_pos_attention_reference,
)
from .triton_support import kernel_status, triton_unavailable_reason


# The Triton kernels are imported on their first call, so the package imports
# without Triton and "auto" falls back to the references (see triton_support).
def _rel_pos_attention_triton(*args, **kwargs):
    from .triton_attention import rel_pos_attention_triton

    return rel_pos_attention_triton(*args, **kwargs)


def _windowed_rel_pos_attention_triton(*args, **kwargs):
    from .triton_attention import windowed_rel_pos_attention_triton

    return windowed_rel_pos_attention_triton(*args, **kwargs)


register_backend("triton", _rel_pos_attention_triton, triton_unavailable_reason)
register_fused_backend("triton", _windowed_rel_pos_attention_triton)

__all__ = [
    "BACKEND_ENV",
    "available_backends",
    "get_rel_pos",
    "register_backend",
    "rel_pos_attention",
    "rel_pos_attention_reference",
    "rel_pos_attention_sdpa",
    "resolve_backend",
    "register_fused_backend",
    "windowed_rel_pos_attention",
    "windowed_rel_pos_attention_reference",
    "kernel_status",
    "triton_unavailable_reason",
]
