"""scripts/gpu_check.sh where no GPU is: it must say so and exit 0, having run
nothing. The summary it writes on a GPU is checked here from real pytest
output and step files laid out as the script lays them out."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_common  # noqa: E402


def run_check(tmp_path, **env):
    """The script with a clean environment plus `env`; its results directory is watched for writes."""
    before = set(os.listdir(gpu_common.RESULTS_DIR)) if os.path.isdir(gpu_common.RESULTS_DIR) else set()
    result = subprocess.run(
        ["bash", str(SCRIPT)], capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env={**os.environ, "PYTHON": sys.executable, **env},
    )
    after = set(os.listdir(gpu_common.RESULTS_DIR)) if os.path.isdir(gpu_common.RESULTS_DIR) else set()
    return result, after - before


def test_without_nvidia_smi_it_says_so_and_exits_0(tmp_path):
    result, written = run_check(tmp_path, GPU_CHECK_NVIDIA_SMI=str(tmp_path / "no-such-nvidia-smi"))
    assert result.returncode == 0, result.stderr
    assert "no GPU here (nvidia-smi not found); nothing to check" in result.stdout
    assert not written


def test_with_a_driver_but_no_cuda_device_for_torch_it_says_so_and_exits_0(tmp_path):
    # An nvidia-smi that answers, and a torch that sees no device (hidden where there is one).
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'GPU 0: stand-in'\n")
    smi.chmod(0o755)
    result, written = run_check(tmp_path, GPU_CHECK_NVIDIA_SMI=str(smi), CUDA_VISIBLE_DEVICES="")
    assert result.returncode == 0, result.stderr
    assert "no GPU here (torch.cuda.is_available() is false" in result.stdout
    assert not written


def test_pytest_counts_read_pytest_summary_lines(tmp_path):
    (tmp_path / "test_sample.py").write_text(textwrap.dedent("""
        import pytest
        def test_a(): pass
        def test_b(): pass
        def test_c(): assert False
        @pytest.mark.skip(reason="sample")
        def test_d(): pass
    """))
    output = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path / "test_sample.py")],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    ).stdout
    counts = gpu_common.pytest_counts(output)
    assert {k: counts[k] for k in ("passed", "failed", "skipped", "errors")} == {
        "passed": 2, "failed": 1, "skipped": 1, "errors": 0}
    assert gpu_common.pytest_counts("collecting ... (killed by timeout)") is None


def test_summary_reads_the_step_files(tmp_path):
    steps = tmp_path / "steps"
    steps.mkdir()
    for name, files in {
        "01-tests": {"cmd": "python -m pytest tests", "status": "ran", "rc": "1", "wall": "12",
                     "log": "...F\n1 failed, 3 passed in 2.50s\n"},
        "02-bench": {"cmd": "python bench.py", "status": "ran", "rc": "124", "wall": "60", "log": "warming up"},
        "03-tensorrt": {"cmd": "python bench_tensorrt.py", "status": "skipped: import tensorrt failed"},
    }.items():
        for ext, text in files.items():
            (steps / f"{name}.{ext}").write_text(text)
    summary = gpu_common.gpu_check_summary(str(steps), budget_s=450)
    json.dumps(summary)  # it must serialise as written
    tests, bench, trt = summary["steps"]
    assert (tests["step"], tests["exit_code"], tests["passed"], tests["wall_s"]) == ("tests", 1, False, 12.0)
    assert (tests["pytest"]["failed"], tests["pytest"]["passed"]) == (1, 3)
    assert bench["timed_out"] and bench["pytest"] is None and bench["output_tail"] == "warming up"
    assert trt == {"step": "tensorrt", "command": "python bench_tensorrt.py",
                   "status": "skipped: import tensorrt failed"}
    assert summary["all_passed"] is False and summary["total_wall_s"] == 72.0
