"""Shared test setup.

TRITON_INTERPRET must be set before any Triton kernel is defined, so it is set
here, at collection, whenever no CUDA device is present.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
