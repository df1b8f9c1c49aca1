"""Builds that survive faults: a build killed with SIGKILL at any step leaves
the output path holding the previous complete bundle or nothing, never a
partial one, and the next build succeeds; a full disk and a read-only
output directory give a one-line error and leave no staging directory.

Kill points are deterministic: the child build counts the steps it passes
(each export, the int8 calibration, the ops graph, every rename and chmod of
the final move) and kills itself at step K, for K across the whole build;
a few more kills land at random times.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

import sam_edge
from onnx_helpers import reduced_config, save_official_checkpoint
from sam_edge.runtime.bundle import BundleError, read_manifest

TESTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "helpers")
MIN_KILL_POINTS = 20

CHILD = r"""
import json, os, sys, time
sys.path.insert(0, {tests!r})
from kill_points import KillPoints
points = KillPoints(sys.argv[1])  # "NAME#N": at the N-th event NAME; "": never
events, wrap = points.events, points.wrap

from onnx_helpers import reduced_config
import sam_edge.export.build as build
import sam_edge.export.onnx_export as onnx_export
import sam_edge.export.encoder_ops as encoder_ops
for name in ("export_encoder", "export_decoder", "export_split_decoder", "fuse_global_attention"):
    if hasattr(onnx_export, name):
        wrap(onnx_export, name)
wrap(encoder_ops, "write_encoder_ops_graph")
wrap(build, "_convert_encoder")
wrap(build, "move_bundle_into_place")
wrap(os, "replace")
wrap(os, "chmod")
wrap(os, "rmdir")
print("start", flush=True)
t0 = time.perf_counter()
build.build_bundle(sys.argv[2], reduced_config(), checkpoint=sys.argv[3], precision={precision!r},
                   num_calib_images=2, overwrite=True, official_decoder=False, quiet=True)
print(json.dumps({{"events": events, "seconds": time.perf_counter() - t0}}), flush=True)
"""


def _child(kill_at, output, checkpoint, precision="int8"):
    code = CHILD.format(tests=TESTS, precision=precision)
    return subprocess.Popen([sys.executable, "-c", code, str(kill_at), str(output), str(checkpoint)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _check_output(output, previous_created):
    """The output path holds nothing, or a complete bundle (every file verified):
    the previous one or a finished new one."""
    if not os.path.exists(output):
        return "nothing"
    try:
        engine = sam_edge.load(output, native_attention=False)  # verifies every file's size and sha256
    except BundleError as exc:
        pytest.fail(f"a partial bundle was left at the output path: {exc}")
    return "previous" if engine.manifest["created_utc"] == previous_created else "new"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("faults") / "tiny.pth"
    save_official_checkpoint(reduced_config(), 13, path)
    return path


def test_sigkill_at_every_step_leaves_a_complete_bundle_or_nothing(checkpoint, tmp_path):
    output = tmp_path / "bundle"
    # Twice: the second run, over an existing bundle, takes the path every kill below takes
    # (the old bundle moved aside, the new one renamed in), and its steps are counted.
    for _ in range(2):
        dry = _child("", output, checkpoint)
        out, err = dry.communicate(timeout=600)
        assert dry.returncode == 0, err[-3000:]
    record = json.loads(out.strip().splitlines()[-1])
    events, seconds = record["events"], record["seconds"]
    assert {"_convert_encoder", "write_encoder_ops_graph", "move_bundle_into_place"} <= set(events)
    assert events.count("replace") == 2, events
    previous = read_manifest(output)["created_utc"]

    # Step boundaries before the move, spread evenly; then every step of the move
    # (the renames and the rmdir of the aside name), and its first and last chmod.
    move = events.index("move_bundle_into_place")
    points = {round(1 + i * (move - 1) / 13) for i in range(14)}
    points |= {k + 1 for k in range(move, len(events)) if not events[k].startswith("chmod")}
    chmods = [k + 1 for k in range(move, len(events)) if events[k].startswith("chmod")]
    points |= {chmods[0], chmods[-1]}
    outcomes = {}
    for k in sorted(points):
        # Named by event and occurrence, which do not shift when another step's count varies.
        name = f"{events[k - 1]}#{events[:k].count(events[k - 1])}"
        child = _child(name, output, checkpoint)
        _, err = child.communicate(timeout=600)
        state = _check_output(output, previous)
        if child.returncode == 0 and name.startswith(("replace#2", "rmdir")) :
            # A kill between the renames left nothing, so this build had no old bundle to
            # move aside and fewer steps: it finished, and must have left a new bundle.
            assert state == "new", (name, state)
            previous = read_manifest(output)["created_utc"]
            continue
        assert child.returncode == -signal.SIGKILL, f"kill point {name}: exit {child.returncode}\n{err[-2000:]}"
        outcomes[name] = state
        if state == "new":
            previous = read_manifest(output)["created_utc"]

    # And some at random times, after the child's imports.
    rng = random.Random(14)
    for _ in range(3):
        child = _child("", output, checkpoint)
        assert child.stdout.readline().strip() == "start"
        time.sleep(rng.uniform(0, seconds))
        child.kill()
        child.communicate(timeout=60)
        state = _check_output(output, previous)
        outcomes[f"at random time {len(outcomes)}"] = state
        if state == "new":
            previous = read_manifest(output)["created_utc"]

    assert len(outcomes) >= MIN_KILL_POINTS, outcomes
    # Between the two renames the old bundle is aside and the new one not yet in
    # place: nothing at the output path, which the contract allows.
    states = set(outcomes.values())
    assert states <= {"nothing", "previous", "new"} and "previous" in states, outcomes
    print(f"{len(outcomes)} kill points:", outcomes)

    debris = [name for name in os.listdir(tmp_path) if name != "bundle"]
    final = _child("", output, checkpoint)
    _, err = final.communicate(timeout=600)
    assert final.returncode == 0, err[-3000:]
    assert _check_output(output, previous) == "new"
    # What the killed builds left beside the output, the next build removes (their processes are gone).
    assert os.listdir(tmp_path) == ["bundle"], f"left: {os.listdir(tmp_path)}; before the build: {debris}"


def _mount_tmpfs(path, options):
    path.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip()}); needs root")


def _build_into(output, checkpoint):
    from sam_edge.export.build import build_bundle

    return build_bundle(str(output), reduced_config(), checkpoint=str(checkpoint), quiet=True, official_decoder=False)


@pytest.mark.parametrize("fault", ["full disk", "read-only"])
def test_disk_faults_give_one_line_and_leave_no_debris(checkpoint, tmp_path, fault):
    mount = tmp_path / "mnt"
    _mount_tmpfs(mount, "size=1m" if fault == "full disk" else "size=1m,ro")
    try:
        with pytest.raises(OSError) as caught:
            _build_into(mount / "bundle", checkpoint)
        message = str(caught.value)
        assert "\n" not in message, message
        assert ("No space left on device" in message) if fault == "full disk" else ("Read-only file system" in message)
        assert os.listdir(mount) == [], f"debris left behind: {os.listdir(mount)}"
    finally:
        subprocess.run(["umount", str(mount)], check=False)
    _build_into(tmp_path / "bundle", checkpoint)  # and a build elsewhere still succeeds
    assert sam_edge.load(tmp_path / "bundle", native_attention=False).manifest["precision"] == "fp32"
