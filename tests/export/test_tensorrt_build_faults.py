"""TensorRT bundle builds that survive faults, against the spec'd fakes of
TensorRT and cuda-python (tests/helpers/tensorrt_fakes.py), through the CLI:
`sam-edge build --backend tensorrt` killed with SIGKILL after the ONNX
preparation, during each engine's build and serialization, and at every
step of the final move leaves the output path holding the previous complete
bundle or nothing, and the next build succeeds; a full disk and a read-only
output directory give a one-line error and leave no staging directory.

The builds run in child processes with the fakes installed as `tensorrt` and
`cuda.bindings.runtime`, and with "vit_b" reduced to 2 blocks at 256 pixels
(the CLI builds a full-size model otherwise). Kill points are named by the
calls the child passes, TensorRT's API and the filesystem's, which do not
move when sam-edge's export code is reorganised.
"""

import dataclasses
import errno
import json
import os
import signal
import stat
import subprocess
import sys
import types

import pytest

from onnx_helpers import reduced_config, save_official_checkpoint
from sam_edge.runtime.bundle import BundleError, read_manifest, verify_bundle

TESTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "helpers")
UMASK = 0o027  # not the usual 0o022, so that the bundle's modes are seen to follow it

PRELUDE = r"""
import dataclasses, os, sys, types
sys.path.insert(0, {tests!r})
import sam_edge.config as config
# The CLI builds the full-size model; a reduced one keeps a build to seconds.
config.SAM_CONFIGS["vit_b"] = dataclasses.replace(config.SAM_CONFIGS["vit_b"].reduced(depth=2, image_size=256),
                                                  name="vit_b")
from tensorrt_fakes import FakeCudaRuntime, fake_tensorrt
cuda = FakeCudaRuntime()
trt = fake_tensorrt(cuda)
cuda_package, bindings = types.ModuleType("cuda"), types.ModuleType("cuda.bindings")
cuda_package.bindings, bindings.runtime = bindings, cuda
sys.modules.update({{"tensorrt": trt, "cuda": cuda_package, "cuda.bindings": bindings,
                    "cuda.bindings.runtime": cuda}})
"""

CHILD = PRELUDE + r"""
import json, time
from kill_points import KillPoints
points = KillPoints(sys.argv[1])  # "NAME#N": at the N-th event NAME; "": never
events, wrap = points.events, points.wrap

wrap(trt.OnnxParser, "parse_from_file")
wrap(trt.OnnxParser, "parse")
wrap(trt.Builder, "build_serialized_network")
for name in ("replace", "rename", "chmod", "rmdir"):
    wrap(os, name)
os.umask({umask})
from sam_edge.cli import main
print("start", flush=True)
t0 = time.perf_counter()
status = main(sys.argv[2:])
print(json.dumps({{"status": status, "events": events, "seconds": time.perf_counter() - t0}}),
      flush=True)
sys.exit(status)
"""


def _build_args(checkpoint, output):
    return ["build", "--model", "vit_b", "--backend", "tensorrt", "--precision", "fp16",
            "--checkpoint", str(checkpoint), "--output", str(output), "--overwrite", "--quiet",
            "--max-points", "4", "--max-prompts", "4", "--opt-points", "2", "--opt-prompts", "2"]


def _child(kill_at, checkpoint, output):
    code = CHILD.format(tests=TESTS, umask=oct(UMASK))
    return subprocess.run([sys.executable, "-c", code, kill_at] + _build_args(checkpoint, output),
                          capture_output=True, text=True, timeout=600)


def _record(result):
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _state(output, previous_created):
    """What the output path holds: "nothing", or a complete TensorRT bundle (every file
    of its manifest there with its size and sha256), "previous" or "new"."""
    if not os.path.exists(output):
        return "nothing"
    try:
        manifest = verify_bundle(str(output))
    except BundleError as exc:
        pytest.fail(f"a partial bundle was left at the output path: {exc}")
    assert manifest["backend"] == "tensorrt" and {"encoder.plan", "decoder.plan"} <= set(manifest["files"]), manifest
    return "previous" if manifest["created_utc"] == previous_created else "new"


def _assert_umask_modes(output):
    """Directory and files take the umask's modes (not mkdtemp's 0700 or mkstemp's 0600)."""
    assert stat.S_IMODE(os.stat(output).st_mode) == 0o777 & ~UMASK
    for name in os.listdir(output):
        assert stat.S_IMODE(os.stat(os.path.join(output, name)).st_mode) == 0o666 & ~UMASK, name


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("trt-faults") / "tiny.pth"
    save_official_checkpoint(reduced_config(), 15, path)
    return path


@pytest.fixture(scope="module")
def dry_run(checkpoint, tmp_path_factory):
    """A build with no fault, twice (the second over the first bundle, the path every
    kill below takes): the events of the second."""
    output = tmp_path_factory.mktemp("trt-dry") / "bundle"
    _record(_child("", checkpoint, output))
    second = _record(_child("", checkpoint, output))
    assert _state(output, None) == "new"
    _assert_umask_modes(output)
    return {"events": second["events"]}


def _kill_points(events):
    """Named kill points: after the ONNX preparation (TensorRT parses the prepared graph),
    at the start of every engine build, at the rename that publishes each
    serialized plan, and at every rename, rmdir and the first chmod of the final move."""
    def name(k):
        return f"{events[k]}#{events[:k + 1].count(events[k])}"

    parses = [k for k, e in enumerate(events) if e.startswith("parse")]
    builds = [k for k, e in enumerate(events) if e == "build_serialized_network"]
    built = [k for k, e in enumerate(events) if e == "build_serialized_network done"]
    assert parses and len(builds) == len(built) == 2, events  # the encoder's engine and the decoder's
    points = [name(parses[0])]
    plan_writes = []
    for start, end in zip(builds, built):
        points.append(name(start))
        plan_writes.append(next(k for k in range(end, len(events)) if events[k] in ("replace", "rename")))
    points += [name(k) for k in plan_writes]
    move = [k for k in range(plan_writes[-1] + 1, len(events)) if events[k] in ("replace", "rename", "rmdir", "chmod")]
    chmods = [k for k in move if events[k] == "chmod"]
    points += [name(k) for k in move if events[k] != "chmod"] + [name(chmods[0])]
    return points


def test_sigkill_at_named_steps_leaves_the_previous_bundle_or_nothing(checkpoint, dry_run, tmp_path):
    output = tmp_path / "bundle"
    previous = None
    points = _kill_points(dry_run["events"])
    outcomes = {}
    for point in points:
        if _state(output, previous) == "nothing":  # every kill point below is taken over an existing bundle
            _record(_child("", checkpoint, output))
            previous = read_manifest(str(output))["created_utc"]
        result = _child(point, checkpoint, output)
        assert result.returncode == -signal.SIGKILL, f"kill point {point}: exit {result.returncode}\n" \
                                                     f"{result.stderr[-2000:]}"
        outcomes[point] = _state(output, previous)
        if outcomes[point] == "new":
            previous = read_manifest(str(output))["created_utc"]
    print(f"{len(outcomes)} TensorRT kill points:", outcomes)
    # The previous bundle stays until the new one is complete; only between the move's two
    # renames is there nothing at the output path.
    assert "previous" in outcomes.values() and set(outcomes.values()) <= {"previous", "nothing", "new"}, outcomes
    assert all(state == "previous" for point, state in outcomes.items()
               if point.startswith(("parse", "build_serialized_network"))), outcomes

    debris = sorted(set(os.listdir(tmp_path)) - {"bundle"})
    assert debris, "the kills left nothing beside the output: the clean-up below is not exercised"
    record = _record(_child("", checkpoint, output))
    assert record["status"] == 0 and _state(output, previous) == "new"
    _assert_umask_modes(output)
    # What the killed builds left beside the output, the next build removes (their processes are gone).
    assert os.listdir(tmp_path) == ["bundle"], f"left: {os.listdir(tmp_path)}; before the build: {debris}"


def _fill(path):
    """Write zeros to `path` until its file system is full."""
    block = bytes(1 << 20)
    with open(path, "wb", buffering=0) as f:
        try:
            while True:
                f.write(block)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
    with open(path, "ab", buffering=0) as f:  # and the last partial block's worth
        try:
            while True:
                f.write(bytes(4096))
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise


def _mount_tmpfs(path, options):
    path.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip()}); needs root")


@pytest.mark.parametrize("fault", ["full disk before the ONNX export", "full disk at the engines", "read-only"])
def test_disk_faults_give_one_line_and_leave_no_debris(checkpoint, tmp_path, monkeypatch, capsys, fault):
    from tensorrt_fakes import FakeCudaRuntime, fake_tensorrt

    import sam_edge.config as config
    from sam_edge.cli import main

    monkeypatch.setitem(config.SAM_CONFIGS, "vit_b",
                        dataclasses.replace(reduced_config(depth=2, image_size=256), name="vit_b"))
    cuda = FakeCudaRuntime()
    package, bindings = types.ModuleType("cuda"), types.ModuleType("cuda.bindings")
    package.bindings, bindings.runtime = bindings, cuda
    trt = fake_tensorrt(cuda)
    for name, module in (("tensorrt", trt), ("cuda", package), ("cuda.bindings", bindings),
                         ("cuda.bindings.runtime", cuda)):
        monkeypatch.setitem(sys.modules, name, module)

    mount = tmp_path / "mnt"
    parsed = []
    parse = trt.OnnxParser.parse_from_file

    def parse_then_fill(self, path):
        parsed.append(path)
        if fault == "full disk at the engines" and len(parsed) == 1:
            _fill(mount / "filler")  # the disk fills up as TensorRT starts: the plans find no room
        return parse(self, path)

    monkeypatch.setattr(trt.OnnxParser, "parse_from_file", parse_then_fill)
    # Room for the whole build, for the case that fills it later; a tmpfs holds nothing more.
    size = (256 << 20) if fault == "full disk at the engines" else (1 << 20)
    _mount_tmpfs(mount, f"size={size}" + (",ro" if fault == "read-only" else ""))
    try:
        capsys.readouterr()
        status = main(_build_args(checkpoint, mount / "bundle"))
        err = capsys.readouterr().err
        assert status == 1, err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("sam-edge: error: "), err
        assert ("Read-only file system" if fault == "read-only" else "No space left on device") in lines[0], err
        if fault == "full disk at the engines":
            os.remove(mount / "filler")
        assert os.listdir(mount) == [], f"debris left behind: {os.listdir(mount)}"
        assert bool(parsed) == (fault == "full disk at the engines"), parsed  # where the fault struck
    finally:
        subprocess.run(["umount", str(mount)], check=False)
