"""scripts/perf_table.py: the README's performance table from `sam-edge bench` results.

The results here are schema-valid documents built from random samples (every
stage summarised by the same summarize_stage bench uses); the table is read
back cell by cell, so these checks do not depend on its exact wording.
"""

import importlib.util
import json
import os

import numpy as np
import pytest

from sam_edge.bench.schema import stage_names, summarize_stage, validate_result

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def perf_table():
    spec = importlib.util.spec_from_file_location("perf_table", os.path.join(REPO, "scripts", "perf_table.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _doc(tag, features, created, encoder_ms, rng, precision="int8", notes=()):
    """A bench result with one bundle run and its reference, encoder samples around encoder_ms."""
    prompts, queries = [1, 16], [1, 10, 100]

    def run(name, kind, scale):
        stages = {}
        for stage in stage_names(prompts, queries):
            centre = encoder_ms * scale if stage == "encoder" else rng.uniform(1, 50)
            stages[stage] = summarize_stage(list(rng.normal(centre, centre * 0.01, 6) / 1e3), "item")
        return {"name": name, "kind": kind, "model_type": "vit_b", "precision": precision if kind == "bundle" else
                "fp32", "backend": "onnxruntime" if kind == "bundle" else "torch", "encoder_mode": "x",
                "bundle": None, "memory": {"rss_before_load_mib": 1.0, "rss_loaded_mib": 2.0, "peak_rss_mib": 3.0,
                                           "added_rss_mib": 2.0, "method": "test"}, "stages": stages}

    ours, reference = run(f"vit_b-{precision}", "bundle", 1.0), run("reference-vit_b", "reference", 3.0)
    ours["ratio_to_reference"] = {s: reference["stages"][s]["p50_ms"] / v["p50_ms"] for s, v in ours["stages"].items()}
    doc = {"schema": "sam-edge-bench", "schema_version": 1, "created": created, "sam_edge_version": "0.1.0",
           "command": ["sam-edge", "bench"], "notes": list(notes), "runs": [ours, reference],
           "host": {"tag": tag, "cpu_model": "Test CPU", "cpus": 2, "cpu_features": list(features)},
           "settings": {"repeat": 6, "warmup": 0, "prompts": prompts, "queries": queries, "threads": {},
                        "images": {"source": "test", "count": 1, "sizes": [[10, 10]]}}}
    return validate_result(doc)


def _write(directory, name, doc):
    with open(directory / name, "w") as f:
        json.dump(doc, f)


def _parse(table):
    """(header cells, {(model, precision, runtime, stage): [cells per host]}) of the markdown table."""
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines() if line.startswith("|")]
    header, body = rows[0], rows[2:]
    return header, {tuple(r[:4]): r[4:] for r in body}


def _three_runs(directory, rng):
    """(old, new, amx) results written into `directory`: two runs of one AVX2 host called "box"
    (the newer with notes) and one of an AMX host of the same name."""
    old = _doc("box", ["avx2"], "2026-11-01T00:00:00+00:00", 900.0, rng)
    new = _doc("box", ["avx2"], "2026-12-01T00:00:00+00:00", 500.0, rng, notes=["shared CPU"])
    amx = _doc("box", ["avx2", "avx512f", "amx_tile"], "2026-11-15T00:00:00+00:00", 200.0, rng)
    for name, doc in (("a.json", new), ("b.json", old), ("c.json", amx)):
        _write(directory, name, doc)
    return old, new, amx


def test_latest_run_per_host_and_different_features_apart(perf_table, tmp_path):
    old, new, amx = _three_runs(tmp_path, np.random.default_rng(0))
    (tmp_path / "other.json").write_text(json.dumps({"median_ms": 1.0}))  # another benchmark's file: skipped
    header, rows = _parse(perf_table.generate_table(perf_table.load_results(str(tmp_path))))
    assert len(header) == 4 + 2  # one column per (tag, features), though both hosts are called "box"
    avx2_col = [i for i, h in enumerate(header[4:]) if "(AVX2)" in h]
    amx_col = [i for i, h in enumerate(header[4:]) if "(AMX)" in h]
    assert len(avx2_col) == len(amx_col) == 1
    encoder = rows[("vit_b", "int8", "onnxruntime", "encoder")]
    expected_new = new["runs"][0]["stages"]["encoder"]["p50_ms"]
    assert encoder[avx2_col[0]].startswith(f"{expected_new:.0f} ms")  # the later run, not the 900 ms one
    assert f"({new['runs'][0]['ratio_to_reference']['encoder']:.2f}x)" in encoder[avx2_col[0]]
    assert encoder[avx2_col[0]].endswith("†") and not encoder[amx_col[0]].endswith("†")  # notes flagged
    assert encoder[amx_col[0]].startswith(f"{amx['runs'][0]['stages']['encoder']['p50_ms']:.0f} ms")
    assert not any(key[2] == "torch" for key in rows)  # reference runs are ratios, not rows


def test_check_passes_on_the_written_table_and_fails_when_data_moves(perf_table, tmp_path):
    rng = np.random.default_rng(1)
    results = tmp_path / "results"
    results.mkdir()
    doc = _doc("box", ["avx2"], "2026-12-01T00:00:00+00:00", 700.0, rng)
    _write(results, "run.json", doc)
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\ntext\n{perf_table.BEGIN}\nhand-typed\n{perf_table.END}\nmore\n")
    argv = ["--results", str(results)]
    assert perf_table.main(argv + ["--check", str(readme)]) == 1  # the hand-typed table differs
    assert perf_table.main(argv + ["--write", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("# title\n\ntext\n") and text.endswith(f"{perf_table.END}\nmore\n")
    assert perf_table.main(argv + ["--check", str(readme)]) == 0
    doc["runs"][0]["stages"]["encoder"] = summarize_stage([0.35] * 6, "item")
    _write(results, "run.json", doc)
    assert perf_table.main(argv + ["--check", str(readme)]) == 1


def test_check_without_markers_fails(perf_table, tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("# no table here\n")
    assert perf_table.main(["--results", str(tmp_path), "--check", str(readme)]) == 1
    assert "markers" in capsys.readouterr().err


def test_compact_table_has_a_row_per_bundle_and_host(perf_table, tmp_path):
    _, new, amx = _three_runs(tmp_path, np.random.default_rng(2))
    table = perf_table.generate_compact(perf_table.load_results(str(tmp_path)))
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines() if line.startswith("|")]
    header, body = rows[0], rows[2:]
    assert header[:5] == ["model", "precision", "runtime", "host", "encoder"]
    assert len(body) == 2  # the two hosts called "box" apart, the older avx2 run dropped
    by_features = {("AMX" if "(AMX)" in r[3] else "AVX2"): r for r in body}
    expected = {"AVX2": new, "AMX": amx}
    for label, doc in expected.items():
        run = doc["runs"][0]
        assert by_features[label][4] == (f"{run['stages']['encoder']['p50_ms']:.0f} ms "
                                          f"({run['ratio_to_reference']['encoder']:.2f}x)")
    assert by_features["AVX2"][-1].endswith("†") and not by_features["AMX"][-1].endswith("†")


def _peer_doc(features, encoder_ms, rng, model="vit_b"):
    """A bench_openvino.py result: the official row, both OpenVINO rows and two sam-edge bundles,
    each encoder median drawn around encoder_ms / a speed-up, the ratio and errors as the script
    computes them."""
    def row(path, ms, rel_l2, **extra):
        return {"path": path, **extra, "encoder": {"median_ms": ms, "min_ms": ms * 0.9, "max_ms": ms * 1.1,
                                                   "iqr_ms": ms * rng.uniform(0.01, 0.2), "n": 6},
                "embedding_rel_l2_max": rel_l2}

    official = encoder_ms * rng.uniform(0.9, 1.1)
    rows = [row("official", official, 0.0),
            row("openvino-fp32", official / rng.uniform(2, 5), rng.uniform(1e-7, 1e-5)),
            row("openvino-int8", official / rng.uniform(5, 10), rng.uniform(1e-3, 1e-1)),
            row(f"sam-edge {model}-fp32", official / rng.uniform(2, 5), rng.uniform(1e-7, 1e-5),
                encoder_mode="one graph (4 cuts, fp32)"),
            row(f"sam-edge {model}-int8", official / rng.uniform(5, 10), rng.uniform(1e-3, 1e-1),
                encoder_mode="one graph (12 cuts, bf16)")]
    for r in rows:
        r["speedup_vs_official"] = official / r["encoder"]["median_ms"]
    return {"variant": None, "benchmark": f"openvino-{model}", "model": model, "settings": {"repeat": 2, "threads": 2},
            "cpu_features": list(features), "note": "", "date": "2026-12-03", "rows": rows,
            "hardware": {"cpus": 2, "cpu_model": "Test CPU", "cpu_features": list(features)}}


def _peer_rows(table):
    """{results file name: [row cells, in table order]} of the peer table, by the file each row links."""
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines() if line.startswith("|")]
    header, by_file = rows[0], {}
    for r in rows[2:]:
        by_file.setdefault(r[-1][1:r[-1].index("]")], []).append(dict(zip(header, r)))
    return header, by_file


def test_peer_table_shows_every_row_of_the_latest_run_per_host_and_model(perf_table, tmp_path):
    rng = np.random.default_rng(3)
    avx2, amx = ["avx2"], ["avx2", "avx512f", "amx_tile"]
    files = {  # the same host tag on two machines (AVX2, AMX), and a day's repeats numbered -2, -3
        "box-2026-12-01-openvino-vit_b.json": _peer_doc(avx2, 9000.0, rng),
        "box-2026-12-03-openvino-vit_b.json": _peer_doc(avx2, 8000.0, rng),
        "box-2026-12-03-openvino-vit_b-3.json": _peer_doc(avx2, 7000.0, rng),  # latest: -3 after -2
        "box-2026-12-03-openvino-vit_b-2.json": _peer_doc(avx2, 7500.0, rng),
        "box-2026-12-02-openvino-vit_b.json": _peer_doc(amx, 3000.0, rng),
        "box-2026-12-03-openvino-vit_h.json": _peer_doc(avx2, 40000.0, rng, model="vit_h"),
    }
    for name, doc in files.items():
        _write(tmp_path, name, doc)
    # another benchmark whose host tag says openvino, and another's results: neither is a peer file
    (tmp_path / "cpu-openvino-2026-12-04-bench-vit_b.json").write_text(json.dumps({"median_ms": 1.0}))
    _write(tmp_path, "box-2026-12-04-bench-vit_b.json", _doc("box", avx2, "2026-12-04T00:00:00+00:00", 1.0, rng))
    header, by_file = _peer_rows(perf_table.generate_peer_table(str(tmp_path)))
    latest = ["box-2026-12-03-openvino-vit_b-3.json", "box-2026-12-02-openvino-vit_b.json",
              "box-2026-12-03-openvino-vit_h.json"]
    assert sorted(by_file) == sorted(latest)
    # tolerances: what the table's rounding allows (whole ms, two decimals, two significant digits)
    for name in latest:
        doc, table_rows = files[name], by_file[name]
        assert len(table_rows) == len(doc["rows"])
        for expected, cells in zip(doc["rows"], table_rows):
            path, median, iqr, ratio, rel_l2 = cells["path"], *(cells[h] for h in header[3:7])
            assert path.startswith(expected["path"])
            if "encoder_mode" in expected:
                assert expected["encoder_mode"] in path
            assert cells["model"] == doc["model"]
            assert ("(AMX)" in cells["host"]) == (doc["cpu_features"] == amx)
            assert abs(float(median) - expected["encoder"]["median_ms"]) <= 0.5
            assert abs(float(iqr) - expected["encoder"]["iqr_ms"]) <= 0.5
            assert abs(float(ratio) - expected["speedup_vs_official"]) <= 0.005
            assert float(rel_l2) == pytest.approx(expected["embedding_rel_l2_max"], rel=0.05, abs=0)
            assert f"(../benchmarks/results/{name})" in cells["results"]


def test_peer_check_fails_on_a_differing_block_and_passes_after_write(perf_table, tmp_path, capsys):
    results = tmp_path / "results"
    results.mkdir()
    _write(results, "box-2026-12-03-openvino-vit_b.json", _peer_doc(["avx2"], 8000.0, np.random.default_rng(4)))
    docs = tmp_path / "benchmarks.md"
    other = f"{perf_table.BEGIN}\nthe main table, not the peers'\n{perf_table.END}\n"
    docs.write_text(f"# title\n{other}\n{perf_table.PEER_BEGIN}\nhand-typed\n{perf_table.PEER_END}\nmore\n")
    argv = ["--results", str(results), "--peers"]
    assert perf_table.main(argv + ["--check", str(docs)]) == 1
    assert "--peers --write" in capsys.readouterr().err  # the command that fixes it
    assert perf_table.main(argv + ["--write", str(docs)]) == 0
    assert perf_table.main(argv + ["--check", str(docs)]) == 0
    text = docs.read_text()
    assert text.startswith(f"# title\n{other}\n") and text.endswith(f"{perf_table.PEER_END}\nmore\n")
    assert "hand-typed" not in text and "box-2026-12-03-openvino-vit_b.json" in text


def test_committed_readme_table_matches_committed_results(perf_table):
    readme = os.path.join(REPO, "README.md")
    with open(readme, encoding="utf-8") as f:
        if perf_table.BEGIN not in f.read():
            pytest.skip("README.md has no perf-table markers yet (the lead adds them with the table)")
    assert perf_table.main(["--compact", "--check", readme]) == 0


def test_committed_docs_match_committed_results(perf_table):
    """docs/benchmarks.md: the full table, the OpenVINO comparison and the index of every results file."""
    import sys

    docs = os.path.join(REPO, "docs", "benchmarks.md")
    assert perf_table.main(["--check", docs]) == 0
    assert perf_table.main(["--peers", "--check", docs]) == 0
    sys.path.insert(0, os.path.join(REPO, "scripts"))
    try:
        import results_index
    finally:
        sys.path.remove(os.path.join(REPO, "scripts"))
    assert results_index.main(["--check", docs]) == 0
