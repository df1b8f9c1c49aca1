"""Shared test setup.

TRITON_INTERPRET must be set before any Triton kernel is defined, so it is set
here, at collection, whenever no CUDA device is present.
"""

import os
import sys

import torch

# Helper modules beside the tests import by plain name too (from _onnx_helpers import ...).
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from sam_edge.config import get_config  # noqa: E402

from .sam_fixtures import make_checkpoint  # noqa: E402


@pytest.fixture(scope="session")
def vit_b_checkpoint(tmp_path_factory):
    """(path, official reference model) for a full-size ViT-B with seeded random weights."""
    path = tmp_path_factory.mktemp("ckpt") / "sam_vit_b_random.pth"
    ref = make_checkpoint(get_config("vit_b"), path, seed=0)
    return path, ref


@pytest.fixture(scope="session")
def small_config():
    """A reduced ViT-B: 2 blocks (one windowed, one global), 256-pixel input (16x16 tokens, padded windows)."""
    return get_config("vit_b").reduced(depth=2, image_size=256)


@pytest.fixture(scope="session")
def small_checkpoint(tmp_path_factory, small_config):
    path = tmp_path_factory.mktemp("ckpt") / "sam_small_random.pth"
    ref = make_checkpoint(small_config, path, seed=1)
    return path, ref
