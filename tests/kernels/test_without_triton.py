"""Without Triton the package still imports, "auto" falls back, and forcing Triton says why it cannot."""

import os
import subprocess
import sys
import textwrap

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SCRIPT = textwrap.dedent(
    """
    import sys
    sys.modules["triton"] = None  # makes "import triton" fail, as if it were not installed
    import torch
    import sam_edge.kernels as K
    import sam_edge.postprocess.torch_ops as M

    q = torch.randn(1, 2, 16, 64)
    table = torch.randn(7, 64)
    reason = K.available_backends(q)["triton"]
    assert reason is not None and "not installed" in reason, reason
    assert K.resolve_backend(q) != "triton"
    K.rel_pos_attention(q, q, q, table, table, (4, 4), (4, 4))
    K.windowed_rel_pos_attention(q, q, q, table, table, (4, 4), 4)
    try:
        K.rel_pos_attention(q, q, q, table, table, (4, 4), (4, 4), backend="triton")
        raise SystemExit("forcing triton without triton did not raise")
    except RuntimeError as e:
        assert "not installed" in str(e), e
    masks, stability, boxes = M.mask_postprocess(torch.randn(1, 1, 16, 16), (64, 64), (8, 8), image_size=64)
    assert masks.shape == (1, 1, 8, 8)
    try:
        M.mask_postprocess(torch.randn(1, 1, 16, 16), (64, 64), (8, 8), image_size=64, backend="triton")
        raise SystemExit("forcing triton mask post-processing without triton did not raise")
    except RuntimeError as e:
        assert "not installed" in str(e), e
    assert "triton" not in [m for m in sys.modules if sys.modules[m] is not None]
    """
)


def test_package_works_without_triton():
    env = dict(os.environ, PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


OLD_TRITON_SCRIPT = textwrap.dedent(
    """
    import importlib.metadata

    real_version = importlib.metadata.version
    # Installed Triton reports 2.3.1: importable, but without tl.dot(input_precision=).
    importlib.metadata.version = lambda name: "2.3.1" if "triton" in name else real_version(name)
    import torch
    import sam_edge.kernels as K
    import sam_edge.postprocess.torch_ops as M

    q = torch.randn(1, 2, 16, 64)
    table = torch.randn(7, 64)
    reason = K.available_backends(q)["triton"]
    assert reason is not None and "2.3.1" in reason and ">= 3.0" in reason, reason
    assert M.available_mask_backends(q)["triton"] == reason
    assert K.resolve_backend(q) != "triton"
    try:
        K.rel_pos_attention(q, q, q, table, table, (4, 4), (4, 4), backend="triton")
        raise SystemExit("forcing triton with Triton 2.3.1 did not raise")
    except RuntimeError as e:
        assert ">= 3.0" in str(e), e
    assert "triton" in K.triton_status("cpu")["triton"] and ">= 3.0" in K.triton_status("cpu")["triton"]
    """
)


def test_triton_older_than_3_is_reported_unavailable():
    """The kernels use tl.dot(input_precision=), new in Triton 3.0: an older Triton is refused with the reason."""
    env = dict(os.environ, PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "-c", OLD_TRITON_SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
