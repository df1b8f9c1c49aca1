"""When the Triton kernels can run, decided without importing Triton.

Kernel modules import Triton themselves, lazily, on their first call, so the
package imports (and falls back to the torch references) without Triton.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import Optional

import torch


def interpreting() -> bool:
    """True when Triton kernels run in the CPU interpreter (TRITON_INTERPRET=1).

    Triton fixes this per kernel when the kernel is defined, so once a kernel
    module is imported its import-time value wins over the environment.
    """
    for name in ("sam_edge.kernels.triton_attention", "sam_edge.kernels.mask_postprocess_triton"):
        module = sys.modules.get(name)
        if module is not None:
            return module.INTERPRET
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_installed() -> bool:
    """Whether Triton can be imported, checked without importing it."""
    try:
        return importlib.util.find_spec("triton") is not None
    except (ImportError, ValueError):  # a stub or None in sys.modules
        return False


def triton_unavailable_reason(t: torch.Tensor) -> Optional[str]:
    """Why the Triton kernels cannot run on tensor `t`, or None when they can."""
    if not triton_installed():
        return "Triton is not installed (pip install triton)"
    if t.requires_grad and torch.is_grad_enabled():
        return (
            "the Triton kernels are forward-only and the input requires grad "
            "(run under torch.inference_mode() / torch.no_grad(), or use the reference)"
        )
    if t.is_cuda or interpreting():
        return None
    return (
        f"Triton kernels need CUDA tensors; got a {t.device.type} tensor "
        "(set TRITON_INTERPRET=1 before the first kernel call to run them in the slow CPU interpreter)"
    )


def kernel_status(device: Optional[str] = None) -> dict:
    """Whether the Triton kernels would run on `device` (default: CUDA when present), and why not.

    For ``sam-edge info``-style reports: {"device", "triton", "interpreter"}.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    probe = torch.empty(0, device=device)
    reason = triton_unavailable_reason(probe)
    return {
        "device": str(probe.device),
        "triton": "available" if reason is None else f"unavailable: {reason}",
        "interpreter": interpreting(),
    }


def autotune_configs(configs: list) -> list:
    """All configs on a GPU; only the first in the interpreter, which cannot autotune."""
    return configs[:1] if interpreting() else configs
