"""The checks the CPU kernels' Python entry points make on their array arguments."""

import numpy as np


def float32_array(name: str, a, ndim: int) -> np.ndarray:
    """`a` as a C-contiguous float32 array of `ndim` dimensions; TypeError or
    ValueError, naming the argument, when it is not one."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy array; got {type(a).__name__}")
    if a.dtype != np.float32:
        raise TypeError(f"{name} must be float32; got {a.dtype}")
    if a.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions; got shape {a.shape}")
    return np.ascontiguousarray(a)
