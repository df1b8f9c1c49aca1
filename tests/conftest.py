"""Shared test setup.

TRITON_INTERPRET must be set before any Triton kernel is defined, so it is set
here, at collection, whenever no CUDA device is present.
"""

import os
import sys

import torch

# The helpers in tests/helpers/ import by plain name (from onnx_helpers import ...).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "helpers"))

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

# Fuzz tests: "ci" is derandomized (a fixed seed) with a bounded example count,
# so CI is repeatable and quick; SAM_EDGE_HYPOTHESIS_PROFILE=dev searches longer.
settings.register_profile(
    "ci", max_examples=60, derandomize=True, deadline=None, database=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "dev", max_examples=3000, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)
settings.load_profile(os.environ.get("SAM_EDGE_HYPOTHESIS_PROFILE", "ci"))

from sam_edge.config import get_config  # noqa: E402

from sam_fixtures import make_checkpoint, write_calibration_photos  # noqa: E402


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


@pytest.fixture(scope="session")
def calibration_dir(tmp_path_factory):
    """Held-out int8 calibration photos (sam_fixtures.CALIBRATION_PHOTOS), disjoint
    from the photos the tests evaluate on: pass as build_bundle(calib_images=...)."""
    return write_calibration_photos(tmp_path_factory.mktemp("calibration"))
