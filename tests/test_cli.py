"""The sam-edge command line: predict on a tiny bundle, info, and the exit
statuses the README promises (0 done, 1 a failure said in one line, 2 bad
arguments, from argparse), with Hypothesis over the arguments."""

import json
import shutil

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import sam_edge
from onnx_helpers import build_test_bundle, reduced_config
from sam_edge.cli import main


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    _, _, bundle = build_test_bundle(root, reduced_config(), seed=12, official_decoder=False)
    image = np.random.default_rng(4).integers(0, 256, (60, 90, 3), dtype=np.uint8)
    Image.fromarray(image).save(root / "image.png")
    return bundle, root / "image.png", image


def _exit_status(argv):
    """(status, stderr lines) of `sam-edge argv`: main's return value, or argparse's SystemExit code."""
    try:
        return main([str(a) for a in argv]), None
    except SystemExit as exc:
        return exc.code, None


def test_predict_on_a_bundle_matches_the_predictor(tiny, tmp_path, capsys):
    bundle, image_path, image = tiny
    status = main(["predict", str(image_path), "--bundle", str(bundle), "--point", "30,20", "--point", "50,40,0",
                   "--box", "5,5,80,50", "-o", str(tmp_path / "out")])
    assert status == 0
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    predictor = sam_edge.SamPredictor(sam_edge.load(bundle))
    predictor.set_image(image)
    masks, scores, _ = predictor.predict(np.array([[30.0, 20.0], [50.0, 40.0]]), np.array([1, 0]),
                                         np.array([5.0, 5.0, 80.0, 50.0]), multimask_output=False)
    assert result["scores"] == pytest.approx(scores.tolist(), abs=0)
    assert result["image_size"] == [60, 90] and result["multimask_output"] is False
    png = np.asarray(Image.open(tmp_path / "out" / "mask_0.png")) > 0
    assert np.array_equal(png, masks[0])
    assert (tmp_path / "out" / "overlay.png").is_file()
    assert "wrote 1 mask PNG(s)" in capsys.readouterr().out


def test_info(capsys):
    from sam_edge.info import info

    assert main(["info"]) == 0
    text = capsys.readouterr().out
    assert main(["info", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report == json.loads(json.dumps(info()))
    for key in report:
        assert key in text


@pytest.mark.parametrize("argv", [
    [],
    ["frobnicate"],
    ["predict", "x.png", "-o", "out"],  # no prompt
    ["predict", "x.png", "--point", "1,2,3,4", "-o", "out"],
    ["predict", "x.png", "--point", "nan,1", "-o", "out"],
    ["predict", "x.png", "--point", "1,2,0.5", "-o", "out"],
    ["predict", "x.png", "--box", "1,2,3", "-o", "out"],
    ["predict", "x.png", "--point", "1,2"],  # no --output
    ["predict", "x.png", "--point", "1,2", "--model", "vit_x", "-o", "out"],
    ["predict", "x.png", "--point", "1,2", "--bundle", "b", "--checkpoint", "c", "-o", "out"],
    ["predict", "x.png", "--point", "1,2", "--repeat", "two", "-o", "out"],
    ["info", "--verbose"],
], ids=lambda argv: " ".join(argv) or "nothing")
def test_bad_arguments_exit_2_with_one_line(argv, capsys):
    assert _exit_status(argv)[0] == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("sam-edge") and ": error: " in err[-1], err


@pytest.mark.parametrize("case", ["missing image", "missing bundle", "damaged bundle", "prompt out of range"])
def test_failures_exit_1_with_one_line(tiny, tmp_path, capsys, case):
    bundle, image_path, _ = tiny
    argv = ["predict", str(image_path), "--bundle", str(bundle), "--point", "3,4", "-o", str(tmp_path / "o")]
    if case == "missing image":
        argv[1] = str(tmp_path / "nope.png")
    elif case == "missing bundle":
        argv[3] = str(tmp_path / "nope")
    elif case == "damaged bundle":
        damaged = shutil.copytree(bundle, tmp_path / "damaged")
        data = bytearray((damaged / "decoder.onnx").read_bytes())
        data[100] ^= 0xFF
        (damaged / "decoder.onnx").write_bytes(bytes(data))
        argv[3] = str(damaged)
    else:
        argv[5] = "1e30,4"
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sam-edge: error: "), err


TOKENS = st.sampled_from([
    "predict", "info", "--json", "--point", "--box", "--bundle", "--checkpoint", "--model", "--repeat", "-o",
    "--multimask", "--single-mask", "vit_b", "vit_q", "1,2", "3,4,0", "1,2,3,4", "nan,1", "-1,-1", "1e30,1",
    "0", "-3", "x", "", "--", "-", "--help-me", "2,2,1",
])


@settings(max_examples=max(20, settings.default.max_examples // 2))
@given(st.lists(TOKENS, max_size=8))
def test_fuzz_arguments(tiny, tmp_path_factory, argv):
    """Any argument list: exit 0, 1 or 2, never a traceback. The model source is
    always the tiny bundle, so a well-formed predict runs in a second."""
    bundle, image_path, _ = tiny
    argv = [str(bundle) if a == "--bundle" else a for a in argv]
    if "predict" in argv:
        i = argv.index("predict")
        argv = argv[: i + 1] + [str(image_path), "--bundle", str(bundle)] + [a for a in argv[i + 1:]
                                                                            if a not in ("--checkpoint", "--bundle", str(bundle))]
        if "-o" not in argv:
            argv += ["-o", str(tmp_path_factory.mktemp("fz"))]
        else:
            argv[argv.index("-o")] = "--output"
            argv += ["-o", str(tmp_path_factory.mktemp("fz"))]
    status, _ = _exit_status(argv)
    assert status in (0, 1, 2), (argv, status)
