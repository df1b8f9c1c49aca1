"""SAM's attention with the decomposed rel-pos bias, global and windowed: one op,
its references, its dispatch and its fast paths.

- ``rel_pos``: the rel-pos tables and the two bias factors every path adds.
- ``attention``: the torch entry point ``rel_pos_attention`` (global blocks), its
  plain reference, the ``sdpa`` path and the backend registry.
- ``windowed_attention``: the windowed blocks' entry point and reference.
- ``triton_attention``: the Triton kernels (CUDA tensors; ``triton_support`` says
  whether they can run and why not).
- ``cpu_attention``: the same op on numpy arrays for the ONNX Runtime backend's
  segmented encoder: the compiled kernel (``sam_edge._C``, csrc/attention/) and its
  float64 reference. numpy only: it imports without torch.

Backends are picked per call with ``backend="auto"``: the Triton kernels for
fp16/bf16 CUDA tensors when Triton is installed (and the input needs no grad;
fp32 attention goes to ``sdpa``, where the kernel would spill registers), else
the torch references. Environment override: SAM_EDGE_ATTENTION_BACKEND.
:func:`triton_status` and :func:`sam_edge.info` say which path is active. Mask
post-processing lives in ``sam_edge.postprocess``.

The names below resolve on first use, so importing a submodule (the numpy path)
pulls in no torch.
"""

import importlib
from typing import Any, List

_EXPORTS = {
    "BACKEND_ENV": "attention",
    "available_backends": "attention",
    "get_rel_pos": "rel_pos",
    "register_backend": "attention",
    "rel_pos_attention": "attention",
    "rel_pos_attention_reference": "attention",
    "rel_pos_attention_sdpa": "attention",
    "resolve_backend": "attention",
    "register_fused_backend": "windowed_attention",
    "windowed_rel_pos_attention": "windowed_attention",
    "windowed_rel_pos_attention_reference": "windowed_attention",
    "triton_status": "triton_support",
    "triton_unavailable_reason": "triton_support",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(__all__))
