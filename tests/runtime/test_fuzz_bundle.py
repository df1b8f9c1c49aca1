"""Hypothesis fuzzing of what sam-edge reads from disk: bundle manifests and
graphs with bytes flipped, truncated, or fields replaced by JSON of the wrong
type (load answers or raises BundleError), and checkpoints truncated, zipped
with the wrong entries, or carrying a malicious pickle (CheckpointError, and
the pickle's code never runs).
"""

import io
import json
import os
import pickle
import zipfile

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import sam_edge
from onnx_helpers import build_test_bundle, reduced_config
from sam_edge.builder import CheckpointError, build_sam_from_config, read_checkpoint
from sam_edge.runtime.bundle import BundleError


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    _, checkpoint, path = build_test_bundle(tmp_path_factory.mktemp("fuzzb"), reduced_config(), seed=9,
                                            official_decoder=False)
    return checkpoint, path


_counter = iter(range(10**9))
# Each example loads (and runs) a bundle: a third of the profile's examples.
LOADS = settings(max_examples=max(10, settings.default.max_examples // 3))


def _linked_copy(src, root):
    """A copy of the bundle whose files are hard links (cheap); files an example
    changes are written anew, never through the link."""
    dst = root / f"b{next(_counter)}"
    dst.mkdir()
    for name in os.listdir(src):
        os.link(src / name, dst / name)
    return dst


def _rewrite(path, data: bytes):
    os.unlink(path)
    path.write_bytes(data)


def _load_answers_or_refuses(path, **kwargs):
    try:
        engine = sam_edge.load(path, **kwargs)
    except BundleError:
        return None
    predictor = sam_edge.SamPredictor(engine)
    predictor.set_image(np.zeros((20, 30, 3), np.uint8))
    masks, scores, _ = predictor.predict(point_coords=np.array([[3.0, 4.0]]), point_labels=np.array([1]))
    assert masks.shape == (3, 20, 30)
    return engine


def _paths(value, prefix=()):
    """Every key path into a JSON document."""
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, prefix + (i,))


JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-3, 10**12), st.floats(allow_nan=False), st.text(max_size=8)),
    lambda children: st.one_of(st.lists(children, max_size=3), st.dictionaries(st.text(max_size=6), children, max_size=3)),
    max_leaves=6,
)


@LOADS
@given(data=st.data())
def test_fuzz_manifest_fields(built, tmp_path_factory, data):
    _, src = built
    manifest = json.loads((src / "manifest.json").read_text())
    paths = sorted(_paths(manifest), key=repr)
    target = data.draw(st.sampled_from(paths))
    replacement = data.draw(JSON)
    if target == ():
        manifest = replacement
    else:
        node = manifest
        for key in target[:-1]:
            node = node[key]
        if data.draw(st.booleans()) and isinstance(node, dict):
            del node[target[-1]]
        else:
            node[target[-1]] = replacement
    path = _linked_copy(src, tmp_path_factory.getbasetemp())
    _rewrite(path / "manifest.json", json.dumps(manifest).encode())
    _load_answers_or_refuses(path, verify=data.draw(st.booleans()), native_attention=False)


@LOADS
@given(st.data())
def test_fuzz_file_bytes(built, tmp_path_factory, data):
    """Bytes flipped or the file truncated, in any file: refused when verified; unverified,
    the graphs either still run (a flip in a weight) or are refused as BundleError."""
    _, src = built
    names = sorted(os.listdir(src))
    name = data.draw(st.sampled_from(names))
    original = (src / name).read_bytes()
    if data.draw(st.booleans()):
        cut = data.draw(st.integers(0, len(original) - 1))
        changed = original[:cut]
    else:
        changed = bytearray(original)
        for i in data.draw(st.lists(st.integers(0, len(original) - 1), min_size=1, max_size=4)):
            changed[i] ^= data.draw(st.integers(1, 255))
        changed = bytes(changed)
    path = _linked_copy(src, tmp_path_factory.getbasetemp())
    _rewrite(path / name, changed)
    verify = data.draw(st.booleans())
    engine = _load_answers_or_refuses(path, verify=verify, native_attention=False)
    if verify and changed != original:
        assert engine is None, f"a changed {name} was accepted"


# ---- checkpoints ---------------------------------------------------------------
@given(st.data())
def test_fuzz_truncated_checkpoint(built, tmp_path_factory, data):
    checkpoint, _ = built
    raw = checkpoint.read_bytes()
    cut = data.draw(st.one_of(st.integers(0, len(raw) - 1), st.integers(max(0, len(raw) - 2000), len(raw) - 1)))
    path = tmp_path_factory.getbasetemp() / f"t{next(_counter)}.pth"
    path.write_bytes(raw[:cut])
    with pytest.raises(CheckpointError):
        build_sam_from_config(reduced_config(), path)


@LOADS
@given(st.data())
def test_fuzz_zip_entries(built, tmp_path_factory, data):
    """The checkpoint's zip with entries dropped, renamed, duplicated, or replaced by garbage."""
    checkpoint, _ = built
    with zipfile.ZipFile(checkpoint) as z:
        entries = [(info.filename, z.read(info.filename)) for info in z.infolist()]
    i = data.draw(st.integers(0, len(entries) - 1))
    action = data.draw(st.sampled_from(["drop", "rename", "garbage", "swap"]))
    name, payload = entries[i]
    if action == "drop":
        entries.pop(i)
    elif action == "rename":
        entries[i] = (name + "x", payload)
    elif action == "garbage":
        entries[i] = (name, data.draw(st.binary(max_size=64)))
    else:
        j = data.draw(st.integers(0, len(entries) - 1))
        entries[i], entries[j] = (name, entries[j][1]), (entries[j][0], payload)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        for n, p in entries:
            z.writestr(n, p)
    path = tmp_path_factory.getbasetemp() / f"z{next(_counter)}.pth"
    path.write_bytes(buffer.getvalue())
    try:
        sam = build_sam_from_config(reduced_config(), path)
    except CheckpointError:
        return
    # What still loads is either a change to an entry the weights do not depend
    # on (the byte order, the format version), so every tensor is as saved, or a
    # swap of two same-sized tensors' data, which is a well-formed state_dict.
    if action != "swap":
        original = read_checkpoint(checkpoint)
        loaded = sam.state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in original.items()), (action, name)


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("container", ["torch.save", "plain pickle", "inside a state_dict"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, container):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    payload = _Payload(marker)
    if container == "torch.save":
        torch.save(payload, path)
    elif container == "plain pickle":
        path.write_bytes(pickle.dumps(payload))
    else:
        torch.save({"image_encoder.patch_embed.proj.weight": torch.zeros(1), "x": payload}, path)
    with pytest.raises(CheckpointError, match="refusing checkpoint|cannot read checkpoint"):
        read_checkpoint(path)
    assert not marker.exists(), "the pickle's code ran"


@pytest.mark.parametrize("state", [
    [torch.zeros(1)],
    {"model": {"a": torch.zeros(1)}},
    {1: torch.zeros(2), "image_encoder.patch_embed.proj.weight": torch.zeros(768, 3, 16, 16)},
    {"image_encoder.patch_embed.proj.weight": torch.zeros(768, 3, 16, 16), "image_encoder.blocks": torch.zeros(1)},
    {"image_encoder.patch_embed.proj.weight": torch.zeros(())},
], ids=["list", "nested", "int key", "short block key", "scalar patch embed"])
def test_state_dicts_of_the_wrong_form_are_refused(tmp_path, state):
    path = tmp_path / "odd.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError):
        build_sam_from_config(reduced_config(), path)
