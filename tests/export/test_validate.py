"""`sam-edge validate` records what made its report: the git commit (or, outside a
checkout, only the package version), the host and the CPU features, so two reports
with identical figures can be told apart as copies or as fresh runs.

The commit is checked against git itself, the features against /proc/cpuinfo read
here, and checkouts are made in temporary directories with real git.
"""

import os
import shutil
import subprocess

import pytest

import sam_edge
from sam_edge.bench.host import CPU_FEATURES
from sam_edge.export.validate import run_record

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _git(cwd, *args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True, env=env).stdout.strip()


def _checkout(path):
    path.mkdir()
    _git(path, "init", "-q")
    (path / "a.txt").write_text("one\n")
    _git(path, "add", "a.txt")
    _git(path, "commit", "-q", "-m", "first")
    return path


def test_the_commit_of_a_checkout_and_whether_it_was_clean(tmp_path):
    repo = _checkout(tmp_path / "repo")
    record = run_record(str(repo))
    assert record["git_commit"] == _git(repo, "rev-parse", "HEAD") and len(record["git_commit"]) == 40
    assert record["git_dirty"] is False
    (repo / "a.txt").write_text("two\n")
    assert run_record(str(repo))["git_dirty"] is True
    (repo / "untracked.txt").write_text("x")  # build outputs and the like do not make a run dirty
    (repo / "a.txt").write_text("one\n")
    assert run_record(str(repo))["git_dirty"] is False
    assert record["sam_edge_version"] == sam_edge.__version__


def test_outside_a_checkout_only_the_version(tmp_path):
    plain = tmp_path / "site-packages"
    plain.mkdir()
    record = run_record(str(plain))
    assert record["git_commit"] is None and record["git_dirty"] is None
    assert record["sam_edge_version"] == sam_edge.__version__
    # an install that sits inside some other repository is not that repository's code
    inner = _checkout(tmp_path / "other") / "venv" / "site-packages"
    inner.mkdir(parents=True)
    assert run_record(str(inner))["git_commit"] is None


def test_this_package_records_its_own_checkout():
    if not os.path.isdir(os.path.join(REPO, ".git")):
        pytest.skip("sam_edge is not running from a git checkout")
    before = _git(REPO, "rev-parse", "HEAD")
    record = run_record()
    after = _git(REPO, "rev-parse", "HEAD")  # other commits may land meanwhile
    assert record["git_commit"] in (before, after)


def test_host_and_cpu_features_match_cpuinfo():
    record = run_record()
    host = record["host"]
    assert host["cpus"] == os.cpu_count() and host["tag"]
    if not os.path.exists("/proc/cpuinfo"):
        pytest.skip("no /proc/cpuinfo to compare the features with")
    with open("/proc/cpuinfo") as f:
        flags = next((set(line.split(":", 1)[1].split()) for line in f if line.startswith("flags")), set())
    assert set(host["cpu_features"]) == {name for name in CPU_FEATURES if name in flags}
    assert "created" in record and record["created"].endswith("+00:00")


def test_validate_report_carries_the_record(tmp_path):
    """Before the record, three reports from three code states could not be told from copies."""
    from onnx_helpers import build_test_bundle, photos, reduced_config

    from sam_edge.export.validate import validate_bundle

    _, checkpoint, bundle = build_test_bundle(tmp_path, reduced_config(), 0, "fp32", official_decoder=False)
    report = validate_bundle(str(bundle), str(checkpoint), images=[photos()["square"][::4, ::4].copy()],
                             progress=False, prompts_per_image=1)
    record = report["record"]
    assert set(record) >= {"created", "sam_edge_version", "git_commit", "git_dirty", "host"}
    assert record["host"]["cpu_features"] == run_record()["host"]["cpu_features"]
