"""The one bundle writer of ONNX Runtime and TensorRT bundles: a build killed with
SIGKILL leaves its staging directory (and, during the final move, the old bundle
moved aside) next to the output; the next build of that output removes them, and
never the staging directory of a build that is still running."""

import os
import signal
import subprocess
import sys


import sam_edge
from onnx_helpers import reduced_config

TESTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "helpers")

# A build of argv[1] that, with "kill", kills itself at its second os.replace (the final move
# makes two: the old bundle aside, then the new one in); with "wait", waits for a line on
# stdin before its decoder export, its staging directory made.
CHILD = r"""
import os, signal, sys
sys.path.insert(0, {tests!r})
from onnx_helpers import reduced_config
import sam_edge.export.onnx_export as onnx_export
from sam_edge.export.build import build_bundle

output, how = sys.argv[1], sys.argv[2]
calls = []
replace, export_decoder = os.replace, onnx_export.export_decoder

def killing_replace(*args, **kwargs):
    calls.append(args)
    if len(calls) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return replace(*args, **kwargs)

def waiting_export_decoder(*args, **kwargs):
    print("waiting", flush=True)
    sys.stdin.readline()
    return export_decoder(*args, **kwargs)

if how == "kill":
    os.replace = killing_replace
else:
    onnx_export.export_decoder = waiting_export_decoder
build_bundle(output, reduced_config(), overwrite=True, official_decoder=False, ops_graph=False, quiet=True)
print("done", flush=True)
"""


def _child(output, how):
    return subprocess.Popen([sys.executable, "-c", CHILD.format(tests=TESTS), str(output), how],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _build(output):
    from sam_edge.export.build import build_bundle

    return build_bundle(str(output), reduced_config(), overwrite=True, official_decoder=False, ops_graph=False,
                        quiet=True)


def _siblings(output):
    return sorted(n for n in os.listdir(output.parent) if n.startswith(f".{output.name}."))


def test_next_build_removes_what_a_killed_build_left(tmp_path):
    output = tmp_path / "bundle"
    _build(output)
    killed = _child(output, "kill")  # between the two renames: old bundle aside, new one staged
    _, err = killed.communicate(timeout=600)
    assert killed.returncode == -signal.SIGKILL, err[-2000:]
    left = _siblings(output)
    assert any(".building-" in n for n in left) and any(".old-" in n for n in left), left
    assert not output.exists()

    _build(output)
    assert _siblings(output) == []
    assert sam_edge.load(output, native_attention=False).manifest["model_type"] == reduced_config().name


def test_next_build_keeps_a_running_build(tmp_path):
    output = tmp_path / "bundle"
    running = _child(output, "wait")
    try:
        assert running.stdout.readline().strip() == "waiting", running.stderr.read()[-2000:]
        staged = _siblings(output)
        assert len(staged) == 1 and ".building-" in staged[0], staged
        _build(output)
        assert _siblings(output) == staged, "the running build's staging directory was removed"
        running.stdin.write("\n")
        running.stdin.flush()
        out, err = running.communicate(timeout=600)
        assert running.returncode == 0 and out.strip().endswith("done"), err[-2000:]
    finally:
        if running.poll() is None:
            running.kill()
            running.communicate()
    assert _siblings(output) == []
    sam_edge.load(output, native_attention=False)
