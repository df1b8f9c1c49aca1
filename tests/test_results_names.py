"""Results files are named <host>-<date>-<benchmark>.json, with what was compared (the variant) inside.

Checks the committed files in benchmarks/results and the helper the benchmark
scripts write them with (benchmarks/common.py).
"""

import json
import os
import re
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "benchmarks", "results")
NAME = re.compile(r"^(?P<host>[a-z0-9_.-]+?)-(?P<date>\d{4}-\d\d-\d\d)-(?P<benchmark>[a-z0-9_.-]+)\.(json|txt|png)$")
#: Words that name a story rather than a benchmark; a variant goes in the file, not in its name.
STORY_WORDS = ("run1", "run2", "run3", "qkv-cut", "bias-fusion", "amx-bf16", "attention-kernel", "quiet", "fused")


def test_committed_results_are_named_host_date_benchmark():
    names = sorted(os.listdir(RESULTS))
    assert names, "benchmarks/results is empty"
    for name in names:
        match = NAME.match(name)
        assert match, f"{name}: expected <host>-<date>-<benchmark>.json"
        assert not any(word in match["benchmark"].split("-") or word in match["benchmark"] for word in STORY_WORDS), \
            f"{name}: the variant belongs inside the file"


def test_every_text_or_plot_has_its_json():
    names = set(os.listdir(RESULTS))
    for name in names:
        stem, ext = os.path.splitext(name)
        if ext in (".txt", ".png"):
            assert stem + ".json" in names, f"{name} has no {stem}.json"


def test_results_path_numbers_repeats(tmp_path, monkeypatch):
    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    try:
        import common
    finally:
        sys.path.remove(os.path.join(REPO, "benchmarks"))
    first = common.results_path("cpu-attention", tag="box", date="2026-01-02", directory=str(tmp_path))
    assert os.path.basename(first) == "box-2026-01-02-cpu-attention.json"
    open(first, "w").close()
    second = common.results_path("cpu-attention", tag="box", date="2026-01-02", directory=str(tmp_path))
    assert os.path.basename(second) == "box-2026-01-02-cpu-attention-2.json"
    monkeypatch.setattr(common, "RESULTS_DIR", str(tmp_path))
    monkeypatch.setattr(common, "hardware", lambda: {"cpu_model": "test"})
    written = common.write_results("cpu-attention", {"rows": [1]}, tag="box", variant="bf16")
    assert os.path.dirname(written) == str(tmp_path)  # never into the committed results
    with open(written) as f:
        doc = json.load(f)
    assert NAME.match(os.path.basename(written))["benchmark"].startswith("cpu-attention")
    assert doc["variant"] == "bf16" and doc["rows"] == [1] and doc["hardware"] == {"cpu_model": "test"}
