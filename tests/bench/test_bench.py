"""`sam-edge bench` on a tiny bundle: the JSON follows its schema, the statistics
are those of the recorded samples, --compare, --plot and usage errors; and the
IoU distribution `sam-edge validate` now reports.

Timings are never asserted (the CPU is shared): only their structure and the
invariants that hold whatever the speed.
"""

import copy
import json

import numpy as np
import pytest

from onnx_helpers import build_test_bundle, photos, reduced_config  # noqa: E402

from sam_edge.bench import runner, subjects
from sam_edge.bench.compare import compare_results
from sam_edge.bench.schema import SchemaError, load_result, stage_names, validate_result
from sam_edge.cli import main

PROMPTS, QUERIES, REPEAT = [1, 2], [1, 3], 2


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(checkpoint, bundle) of a reduced ViT-B: 2 blocks, 256 px."""
    root = tmp_path_factory.mktemp("bench")
    _, checkpoint, bundle = build_test_bundle(root, reduced_config(), 0, "fp32", official_decoder=False)
    return checkpoint, bundle


@pytest.fixture(scope="module")
def tiny_bundle(tiny):
    return tiny[1]


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    from PIL import Image

    directory = tmp_path_factory.mktemp("images")
    Image.fromarray(photos()["landscape"][::4, ::4].copy()).save(directory / "small.png")  # 100 x 150
    return directory


@pytest.fixture(scope="module")
def bench_run(tiny_bundle, image_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    argv = ["bench", str(tiny_bundle), "--images", str(image_dir), "--repeat", str(REPEAT), "--warmup", "1",
            "--prompts", ",".join(map(str, PROMPTS)), "--queries", ",".join(map(str, QUERIES)),
            "--json", str(out / "run.json"), "--note", "test run"]
    try:
        import matplotlib  # noqa: F401  (the bench extra)

        argv += ["--plot", str(out / "run.png")]
    except ImportError:
        pass
    assert main(argv) == 0
    return out / "run.json", out / "run.png"


def test_json_follows_schema_with_every_stage(bench_run):
    doc = load_result(str(bench_run[0]))  # raises SchemaError on any deviation
    assert doc["schema_version"] == 1 and doc["notes"][0] == "test run"
    (run,) = doc["runs"]
    assert run["kind"] == "bundle" and run["bundle"]["precision"] == "fp32"
    assert len(run["bundle"]["manifest_sha256"]) == 64 and run["bundle"]["bytes"] > 0
    assert list(run["stages"]) == stage_names(PROMPTS, QUERIES)
    assert run["memory"]["peak_rss_mib"] >= run["memory"]["rss_before_load_mib"] > 0
    images = 1
    for stage, s in run["stages"].items():
        assert "skipped" not in s, stage  # the test bundle has the split decoder: every stage runs
        assert s["p50_ms"] <= s["p90_ms"] <= s["p99_ms"], stage
        # The summary is of the recorded samples (an independent median).
        assert s["p50_ms"] == pytest.approx(float(np.median(s["samples_ms"])), rel=1e-9, abs=1e-6), stage
        per_image = runner.CALLS_PER_IMAGE if stage.startswith(("decoder", "mask")) else 1
        assert s["n"] == REPEAT * images * per_image, stage
    for p in PROMPTS:
        calls, prompts = run["stages"][f"decoder_call_p{p}"], run["stages"][f"decoder_prompt_p{p}"]
        assert np.allclose(np.asarray(calls["samples_ms"]) / p, prompts["samples_ms"], rtol=1e-5, atol=1e-5)
    # End to end: each sample of K=3 is a later reading of the same clock as K=1's.
    e1, e3 = (np.asarray(run["stages"][f"e2e_query_{k}"]["samples_ms"]) for k in QUERIES)
    assert (e3 >= e1).all()
    e2e = run["stages"]["e2e_query_3"]
    assert e2e["throughput_per_s"] == pytest.approx(3e3 / e2e["p50_ms"])  # queries per second


def test_schema_rejects_what_breaks_it(bench_run):
    doc = json.loads(bench_run[0].read_text())
    broken = copy.deepcopy(doc)
    del broken["runs"][0]["stages"]["encoder"]
    with pytest.raises(SchemaError, match="missing encoder"):
        validate_result(broken)
    broken = copy.deepcopy(doc)
    stage = broken["runs"][0]["stages"]["decoder_call_p1"]
    stage["p50_ms"], stage["p99_ms"] = stage["p99_ms"] + 1, stage["p50_ms"]
    with pytest.raises(SchemaError, match="p50 <= p90 <= p99"):
        validate_result(broken)
    with pytest.raises(SchemaError, match="schema_version"):
        validate_result(dict(doc, schema_version=99))


def test_compare_with_itself_reports_no_change(bench_run, capsys):
    path = str(bench_run[0])
    assert main(["bench", "--compare", path, path]) == 0
    out = capsys.readouterr().out
    assert "no change beyond noise" in out and "SLOWER" not in out and "FASTER" not in out


def test_compare_flags_a_move_beyond_the_noise(bench_run):
    a = load_result(str(bench_run[0]))
    b = copy.deepcopy(a)
    encoder = b["runs"][0]["stages"]["encoder"]
    encoder["p50_ms"] += 2 * encoder["iqr_ms"] + 1.0
    lines, moved = compare_results(a, b)
    assert moved == 1
    assert [line.split()[0] for line in lines if "SLOWER" in line] == ["encoder"]


def test_plot_is_a_readable_picture(bench_run):
    pytest.importorskip("matplotlib", reason="--plot needs the bench extra (matplotlib)")
    from PIL import Image

    with Image.open(bench_run[1]) as img:
        assert img.format == "PNG" and img.width > 200 and img.height > 200
        pixels = np.asarray(img.convert("RGB"))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 10  # not blank: bars, boxes, text


@pytest.mark.parametrize("argv, says", [
    ([], "nothing to measure"),
    (["--prompts", "0", "{bundle}"], "--prompts"),
    (["--repeat", "x", "{bundle}"], "--repeat"),
    (["{bundle}", "--model", "vit_b"], "not both"),
    (["/no/such/bundle"], "bundle not found"),
    (["--compare", "/no/a.json", "/no/b.json"], "no such file"),
    (["{bundle}", "--plot", "out.jpg"], "PNG"),
    (["--validate", "--model", "vit_b"], "--validate"),
])
def test_bad_arguments_exit_2_with_one_line(tiny_bundle, argv, says, capsys):
    argv = [a.replace("{bundle}", str(tiny_bundle)) for a in argv]
    with pytest.raises(SystemExit) as exc:
        main(["bench"] + argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if "error" in line]
    assert len(errors) == 1 and err[-1] == errors[0] and err[-1].startswith("sam-edge bench: error:")
    assert says in err[-1]


def test_reference_refuses_a_reduced_bundle_before_timing(tiny_bundle, image_dir, capsys):
    assert main(["bench", str(tiny_bundle), "--images", str(image_dir), "--reference"]) == 1
    err = capsys.readouterr().err
    assert "modified configuration" in err and "Traceback" not in err


def test_without_scikit_image_bench_says_it_uses_a_synthetic_image(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "skimage", None)  # import skimage -> ImportError
    images, source, notes = runner.bench_images(None)
    assert len(images) == 1 and images[0].dtype == np.uint8 and images[0].shape[2] == 3
    assert "synthetic" in source and "scikit-image is not installed" in notes[0]


def test_reference_ratios_are_reference_over_ours():
    def run(name, kind, p50):
        return {"name": name, "kind": kind, "model_type": "vit_b", "stages": {
            "encoder": {"p50_ms": p50}, "decoder_image": {"skipped": "one module"}}}

    runs = [run("ours", "bundle", 40.0), run("reference-vit_b", "reference", 100.0)]
    runner.add_reference_ratios(runs)
    assert runs[0]["ratio_to_reference"] == {"encoder": 2.5} and runs[0]["reference"] == "reference-vit_b"
    assert "ratio_to_reference" not in runs[1]


def test_validate_reports_the_iou_distribution(tiny):
    """Before this change the report had no mask_iou (KeyError) and one prompt per kind per image."""
    from sam_edge.export.validate import PROMPT_KINDS, format_report, validate_bundle

    checkpoint, bundle = map(str, tiny)
    rounds = 3
    report = validate_bundle(bundle, checkpoint, images=[photos()["square"][::4, ::4].copy()], progress=False,
                             prompts_per_image=rounds)
    iou = report["mask_iou"]
    multimask_kinds = len(PROMPT_KINDS) - 1  # every kind but mask_input returns 3 masks
    assert iou["count"] == rounds * (3 * multimask_kinds + 1)
    assert iou["multimask"]["count"] == rounds * 3 * multimask_kinds and iou["single_mask"]["count"] == rounds
    assert 0.0 <= iou["min"] <= iou["p5"] <= iou["mean"] <= 1.0
    # fp32 against fp32: the bundle's own tolerance (mean IoU >= 0.99) holds for the distribution too.
    assert iou["mean"] >= report["tolerance"]["mask_iou_mean_min"]
    for kind in report["prompts"].values():
        assert kind["mask_iou_min"] <= kind["mask_iou_p5"] <= kind["mask_iou_mean"]
    assert "p5" in format_report(report)
    with pytest.raises(ValueError, match="prompts_per_image"):
        validate_bundle(bundle, checkpoint, images=[photos()["square"]], prompts_per_image=0)


def test_reference_accepts_an_official_size_bundle():
    """A full-size bundle's manifest holds its config as JSON does (lists, not tuples);
    comparing it with the dataclass as-is refused every real bundle."""
    import dataclasses

    from sam_edge.config import get_config

    for model_type in ("vit_b", "vit_l", "vit_h"):
        config = json.loads(json.dumps(dataclasses.asdict(get_config(model_type))))
        manifest = {"model_type": model_type, "config": config}
        subjects.reference_config_check(manifest)  # no ValueError
        manifest["config"]["encoder_depth"] += 1
        with pytest.raises(ValueError, match="modified configuration"):
            subjects.reference_config_check(manifest)


def test_a_bundle_benches_on_the_lean_runtime(tiny_bundle, tmp_path, monkeypatch, capsys):
    """No torch, scikit-image or matplotlib (a plain `pip install sam-edge`): a bundle is
    timed on a synthetic image, said so; --plot fails with the extra to install."""
    import sys

    for name in ("torch", "skimage", "matplotlib"):
        monkeypatch.setitem(sys.modules, name, None)  # import NAME -> ImportError
    out = tmp_path / "lean.json"
    argv = ["bench", str(tiny_bundle), "--repeat", "1", "--warmup", "0", "--prompts", "1", "--queries", "1",
            "--json", str(out), "--plot", str(tmp_path / "lean.png")]
    assert main(argv) == 1
    assert "sam-edge[bench]" in capsys.readouterr().err
    doc = load_result(str(out))
    assert doc["settings"]["images"]["source"].startswith("synthetic")
    assert any("scikit-image is not installed" in n for n in doc["notes"])
    assert doc["settings"]["threads"]["torch"] is None


def test_the_torch_model_path_times_every_stage_it_has():
    """sam-edge's torch model (reduced, random weights): no separate decoder image part, said so."""
    from sam_edge.builder import random_weights_model

    model = random_weights_model(reduced_config(), 0).eval()
    image = photos()["portrait"][::4, ::4].copy()

    def factory():
        return subjects._ours("torch-test", "torch", model, "vit_b", "fp32", {"source": "random"}, "torch eager")

    run = runner.measure(factory, [image], [1, 2], [1, 2], repeat=1, warmup=0)
    assert list(run["stages"]) == stage_names([1, 2], [1, 2])
    assert "one module" in run["stages"]["decoder_image"]["skipped"]
    for stage, s in run["stages"].items():
        if stage != "decoder_image":
            assert s["n"] >= 1 and s["p50_ms"] <= s["p90_ms"] <= s["p99_ms"], stage
