"""When the Triton kernels can run, decided without importing Triton.

Kernel modules import Triton themselves, lazily, on their first call, so the
package imports (and falls back to the torch references) without Triton.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import sys
from typing import Optional, Tuple

import torch


def interpreting() -> bool:
    """True when Triton kernels run in the CPU interpreter (TRITON_INTERPRET=1).

    Triton fixes this per kernel when the kernel is defined, so once a kernel
    module is imported its import-time value wins over the environment.
    """
    for name in ("sam_edge.kernels.triton_attention", "sam_edge.postprocess.triton_ops"):
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


#: Oldest Triton the kernels compile with: they use tl.dot(..., input_precision=).
MIN_TRITON_VERSION = (3, 0)

# Distributions that install the `triton` module (PyPI, PyTorch's nightly and ROCm builds).
_TRITON_DISTRIBUTIONS = ("triton", "pytorch-triton", "pytorch-triton-rocm")


@functools.lru_cache(maxsize=None)
def triton_version() -> Optional[str]:
    """The installed Triton's version string, from package metadata (Triton is not imported); None if unknown."""
    import importlib.metadata  # here, so importing the package stays cheap

    for dist in _TRITON_DISTRIBUTIONS:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _too_old(version: Optional[str]) -> bool:
    """True when `version` is known and older than MIN_TRITON_VERSION (an unknown version gets the benefit)."""
    match = re.match(r"(\d+)\.(\d+)", version or "")
    return match is not None and (int(match[1]), int(match[2])) < MIN_TRITON_VERSION


def triton_unavailable_reason(t: torch.Tensor) -> Optional[str]:
    """Why the Triton kernels cannot run on tensor `t`, or None when they can."""
    if not triton_installed():
        return "Triton is not installed (pip install triton)"
    version = triton_version()
    if _too_old(version):
        needed = ".".join(map(str, MIN_TRITON_VERSION))
        return (
            f"Triton {version} is installed but the kernels need Triton >= {needed} "
            f"(tl.dot input_precision); pip install 'triton>={needed}'"
        )
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


def triton_status(device: Optional[str] = None) -> dict:
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


#: CUDA's grid limits: axis 0 holds up to 2**31 - 1 programs, axes 1 and 2 up to 65535.
MAX_GRID_X = 2**31 - 1
MAX_GRID_YZ = 65535


def folded_grid(blocks: int, items: int, outer: int = 1) -> Tuple[int, int]:
    """Launch grid (blocks * items, outer) with the item index folded into axis 0.

    Axis 1 holds only 65535 programs, fewer than a large batch of windows or
    masks has items; a kernel recovers item = pid0 // blocks and block = pid0 % blocks.
    Raises ValueError when even the folded grid exceeds CUDA's limits.
    """
    if blocks * items > MAX_GRID_X or outer > MAX_GRID_YZ:
        raise ValueError(
            f"the launch needs {blocks} x {items} programs on grid axis 0 (at most {MAX_GRID_X}) and {outer} "
            f"on axis 1 (at most {MAX_GRID_YZ}); split the batch into smaller calls"
        )
    return blocks * items, outer


def autotune_configs(configs: list) -> list:
    """All configs on a GPU; only the first in the interpreter, which cannot autotune."""
    return configs[:1] if interpreting() else configs
