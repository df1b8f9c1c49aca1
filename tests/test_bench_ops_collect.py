"""CI runs no op benchmarks (timings on shared runners mean nothing); it checks
that every file under benchmarks/ops collects, so they cannot rot unseen."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPS = os.path.join(REPO, "benchmarks", "ops")


def test_every_op_benchmark_file_collects():
    files = sorted(f for f in os.listdir(OPS) if f.startswith("test_") and f.endswith(".py"))
    assert files, "benchmarks/ops holds no benchmark files"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "benchmarks/ops"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "error" not in output.lower(), output
    collected = {line.split("::", 1)[0] for line in result.stdout.splitlines() if "::" in line}
    assert collected == {f"benchmarks/ops/{f}" for f in files}, output


def test_the_main_test_run_does_not_collect_them():
    """testpaths = tests: a bare `pytest` from the root never reaches benchmarks/ops."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        testpaths = tomllib.load(f)["tool"]["pytest"]["ini_options"]["testpaths"]
    assert all(not os.path.abspath(os.path.join(REPO, p)).startswith(os.path.dirname(OPS)) for p in testpaths)
