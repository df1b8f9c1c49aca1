"""Bundles: manifest and hashes, atomic builds, and the torch-free runtime."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import sam_edge
from onnx_helpers import build_test_bundle, photos, reduced_config
from sam_edge.runtime.bundle import BundleError

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    _, checkpoint, bundle = build_test_bundle(tmp_path_factory.mktemp("bundle"), reduced_config(), seed=3)
    return checkpoint, bundle


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_manifest_records_build(bundle):
    checkpoint, path = bundle
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["model_type"] == reduced_config().name
    assert manifest["backend"] == "onnxruntime" and manifest["precision"] == "fp32"
    assert manifest["image_size"] == 256
    assert manifest["weights"]["source"] == "checkpoint"
    from sam_edge.runtime.bundle import sha256_file

    assert manifest["weights"]["checkpoint_sha256"] == sha256_file(str(checkpoint))
    assert set(manifest["files"]) == {
        "encoder.onnx", "decoder.onnx", "decoder_image.onnx", "decoder_prompt.onnx", "decoder_official.onnx",
        "encoder_ops.onnx",  # the encoder with sam-edge's attention op at its one global block
        "decoder_prompt_ops.onnx",  # the prompt part with sam-edge's mask upscaling op
        "encoder.onnx.data",  # the weights, which encoder.onnx and encoder_ops.onnx share
    }
    for name, record in manifest["files"].items():
        assert record["sha256"] == sha256_file(str(path / name))
    for key in ("torch", "onnx", "onnxruntime", "sam_edge"):
        assert manifest["versions"][key]


def test_tampered_file_is_refused(bundle, tmp_path):
    path = _copy(bundle[1], tmp_path / "b")
    graph = path / "decoder.onnx"
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte changed
    graph.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="decoder.onnx does not match its sha256"):
        sam_edge.load(str(path))


def test_bundle_takes_the_umask_modes(bundle):
    """The staging directory is private while it is written; the finished bundle
    and every file in it get the umask's modes, as `mkdir` and `open` give them
    (onnx writes external weights 0600), so that another user can serve it."""
    import os
    import stat

    path = bundle[1]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o777 & ~umask
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in path.iterdir()}
    assert modes == {name: 0o666 & ~umask for name in modes}, modes


def test_truncated_file_is_refused(bundle, tmp_path):
    path = _copy(bundle[1], tmp_path / "b")
    graph = path / "encoder.onnx"
    graph.write_bytes(graph.read_bytes()[:1000])
    with pytest.raises(BundleError, match="encoder.onnx has 1000 bytes"):
        sam_edge.load(str(path))


def test_missing_file_and_manifest_are_refused(bundle, tmp_path):
    path = _copy(bundle[1], tmp_path / "b")
    (path / "decoder.onnx").unlink()
    with pytest.raises(BundleError, match="decoder.onnx is missing"):
        sam_edge.load(str(path))
    (path / "manifest.json").unlink()
    with pytest.raises(BundleError, match="no manifest.json"):
        sam_edge.load(str(path))
    with pytest.raises(BundleError, match="not a directory"):
        sam_edge.load(str(tmp_path / "nowhere"))


def test_failed_build_leaves_nothing(tmp_path, monkeypatch):
    from sam_edge.export import build, onnx_export

    def fail(*args, **kwargs):
        raise RuntimeError("simulated failure in the decoder export")

    monkeypatch.setattr(onnx_export, "export_decoder", fail)
    with pytest.raises(RuntimeError, match="simulated"):
        build.build_bundle(str(tmp_path / "out"), reduced_config(), quiet=True)
    assert os.listdir(tmp_path) == []


def test_existing_output_needs_overwrite(tmp_path):
    (tmp_path / "out").mkdir()
    from sam_edge.export.build import build_bundle

    with pytest.raises(FileExistsError, match="--overwrite"):
        build_bundle(str(tmp_path / "out"), reduced_config(), quiet=True)


def test_random_weights_are_said_and_recorded(tmp_path, capsys):
    from sam_edge.builder import RANDOM_WEIGHTS_SEED
    from sam_edge.cli import build as build_command
    from sam_edge.cli import build_parser
    from sam_edge.export import build

    args = build_parser().parse_args(["build", "--model", "vit_b", "--output", str(tmp_path / "b"), "--quiet"])
    assert args.func is build_command.run_build
    # The CLI path with a reduced config, to keep the test fast.
    build.build_bundle(args.output, reduced_config(), checkpoint=args.checkpoint, official_decoder=False)
    assert "RANDOM weights" in capsys.readouterr().err
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["weights"] == {"source": "random", "seed": RANDOM_WEIGHTS_SEED}
    assert [p.name for p in tmp_path.iterdir()] == ["b"]
    # validate rebuilds the same seeded weights as the torch reference.
    from sam_edge.export.validate import format_report, validate_bundle

    report = validate_bundle(args.output, images=[photos()["square"]], progress=False)
    print(format_report(report))
    assert report["passed"] and report["weights"] == "random"
    assert set(report["prompts"]) == {"one_point", "pos_neg_points", "box", "box_and_points", "mask_input"}


def test_predict_and_build_use_the_same_random_weights(tmp_path, monkeypatch):
    """`sam-edge predict` without --checkpoint runs the seeded random model that `sam-edge build`
    without one exports: the bundle answers as the torch model does, to fp32 rounding (scores
    within 1e-4, masks equal but for pixels at the threshold). Another random model gives
    unrelated scores and masks. vit_b is swapped for a reduced one to keep the test fast."""
    from PIL import Image

    from sam_edge import config as config_module
    from sam_edge.cli import main

    monkeypatch.setitem(config_module.SAM_CONFIGS, "vit_b", reduced_config())
    bundle = tmp_path / "bundle"
    assert main(["build", "--model", "vit_b", "--output", str(bundle), "--no-ops-graph", "--quiet"]) == 0
    Image.fromarray(photos()["landscape"]).save(tmp_path / "image.png")
    results = {}
    for source in (["--model", "vit_b"], ["--bundle", str(bundle)]):
        out = tmp_path / source[0].strip("-")
        argv = ["predict", str(tmp_path / "image.png"), *source, "--point", "120,90", "--multimask", "-o", str(out)]
        assert main(argv) == 0
        masks = [np.asarray(Image.open(out / f"mask_{i}.png")) > 0 for i in range(3)]
        results[source[0]] = json.loads((out / "result.json").read_text())["scores"], np.stack(masks)
    (torch_scores, torch_masks), (bundle_scores, bundle_masks) = results["--model"], results["--bundle"]
    np.testing.assert_allclose(bundle_scores, torch_scores, rtol=0, atol=1e-4)
    assert np.mean(bundle_masks != torch_masks) < 1e-3


RUNTIME_WITHOUT_TORCH = textwrap.dedent(
    """
    import sys

    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "segment_anything", "onnx"):
                raise ImportError("blocked for this test: " + name)
            return None

    sys.meta_path.insert(0, Blocker())
    import numpy as np
    import sam_edge

    image = np.load(sys.argv[2])
    predictor = sam_edge.SamPredictor(sam_edge.load(sys.argv[1]))
    predictor.set_image(image)
    masks, scores, low_res = predictor.predict(point_coords=np.array([[100.0, 80.0]]), point_labels=np.array([1]))
    assert not any(m.split(".")[0] in ("torch", "onnx") for m in sys.modules), "torch or onnx got imported"
    np.savez(sys.argv[3], masks=masks, scores=scores, low_res=low_res)
    """
)


def test_runtime_runs_without_torch(bundle, tmp_path):
    image = photos()["landscape"]
    np.save(tmp_path / "image.npy", image)
    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    result = subprocess.run(
        [sys.executable, "-c", RUNTIME_WITHOUT_TORCH, str(bundle[1]), str(tmp_path / "image.npy"),
         str(tmp_path / "out.npz")],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    out = np.load(tmp_path / "out.npz")
    predictor = sam_edge.SamPredictor(sam_edge.load(str(bundle[1])))
    predictor.set_image(image)
    masks, scores, low_res = predictor.predict(point_coords=np.array([[100.0, 80.0]]), point_labels=np.array([1]))
    np.testing.assert_array_equal(out["masks"], masks)
    np.testing.assert_array_equal(out["low_res"], low_res)


@pytest.mark.parametrize("original_size", [(300, 500), (500, 300), (37, 1001), (256, 256)])
def test_numpy_postprocess_matches_torch_interpolate(original_size):
    """The numpy bilinear resize against F.interpolate(align_corners=False): the same
    float32 math in another order, so agreement to float32 rounding (1e-5 of the range)."""
    import torch
    import torch.nn.functional as F

    from sam_edge import postprocess
    from sam_edge.runtime.transforms import get_preprocess_shape

    image_size = 1024
    input_size = get_preprocess_shape(*original_size, image_size)
    low_res = np.random.default_rng(0).normal(0, 3, (2, 3, 256, 256)).astype(np.float32)
    ref = F.interpolate(torch.from_numpy(low_res), (image_size, image_size), mode="bilinear", align_corners=False)
    ref = ref[..., : input_size[0], : input_size[1]]
    ref = F.interpolate(ref, original_size, mode="bilinear", align_corners=False).numpy()
    ours = postprocess.upscale_mask_logits(low_res, input_size, original_size, frame_size=image_size)
    assert ours.shape == ref.shape == (2, 3) + tuple(original_size)
    np.testing.assert_allclose(ours, ref, atol=1e-5 * np.abs(ref).max(), rtol=0)


def test_external_data_bundle(bundle, tmp_path, monkeypatch):
    """ViT-H's weights exceed a 2 GiB protobuf; the same path is taken here by
    lowering the threshold: weights go to <graph>.onnx.data, which the manifest
    hashes and load() checks, and the results do not change."""
    from sam_edge.export import onnx_export
    from sam_edge.export.build import build_bundle

    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_THRESHOLD", 1000)
    checkpoint, inline = bundle
    out = tmp_path / "external"
    build_bundle(str(out), reduced_config(), checkpoint=str(checkpoint), official_decoder=False, quiet=True)
    manifest = json.loads((out / "manifest.json").read_text())
    assert {"encoder.onnx.data", "decoder.onnx.data"} <= set(manifest["files"])
    image = photos()["portrait"]
    embeddings = []
    for path in (inline, out):
        predictor = sam_edge.SamPredictor(sam_edge.load(str(path)))
        predictor.set_image(image)
        embeddings.append(predictor.get_image_embedding())
    np.testing.assert_array_equal(embeddings[0], embeddings[1])
    data = out / "encoder.onnx.data"
    data.write_bytes(data.read_bytes()[:-4])
    with pytest.raises(BundleError, match="encoder.onnx.data has"):
        sam_edge.load(str(out))


def test_a_flipped_byte_in_any_file_is_refused(bundle, tmp_path):
    """Every file the manifest lists is hashed, not only the graphs: the shared
    weights and the encoder ops graph too."""
    path = _copy(bundle[1], tmp_path / "b")
    manifest = json.loads((path / "manifest.json").read_text())
    assert {"encoder.onnx.data", "encoder_ops.onnx"} <= set(manifest["files"])
    for name in manifest["files"]:
        target = path / name
        original = target.read_bytes()
        data = bytearray(original)
        data[len(data) // 3] ^= 0x01  # same size, one bit changed
        target.write_bytes(bytes(data))
        with pytest.raises(BundleError, match=f"{name} does not match its sha256"):
            sam_edge.load(path)
        target.write_bytes(original)
    sam_edge.load(path)  # restored: accepted again


def test_a_thousand_queries_do_not_grow_rss(bundle):
    """benchmarks/soak.py's loop, shortened for CI: 1,000 decoder queries and 20
    encoder calls. A leak of one low-res mask a query (48 KB) would add ~48 MB,
    of one full-size mask far more; warm-up growth of arenas is excluded."""
    sys.path.insert(0, os.path.join(REPO_ROOT, "benchmarks"))
    from soak import soak

    result = soak(sam_edge.load(bundle[1]), queries=1000, encoder_calls=20, seed=1)
    assert result["samples"][-1][:2] == (1000, 20)
    assert result["growth_mb"] < 40, result


# ---- the decoder's prompt part with sam_edge_ops' MaskUpscale ----

# Both graphs float32, differing in the mask upscaling's rounding only
# (test_onnx_export.OPS_REL_L2 states why this bound).
PROMPT_OPS_REL_L2 = 2e-6


def _decode(engine, seed):
    rng = np.random.default_rng(seed)
    image = rng.uniform(0, 255, (1, 3, 256, 200)).astype(np.float32)
    coords = rng.uniform(0, 200, (3, 2, 2)).astype(np.float32)
    labels = np.array([[1, 0], [1, 1], [0, 1]], np.float32)
    return engine.decode(engine.embed(image), coords, labels, None, None, True)


def test_the_runtime_runs_the_prompt_ops_graph(bundle):
    from sam_edge.runtime.ort_ops import library_refusal

    if library_refusal() is not None:
        pytest.skip(library_refusal())
    _, path = bundle
    ops = sam_edge.load(str(path))
    standard = sam_edge.load(str(path), native_decoder=False)
    assert ops.decoder_prompt_mode == "one graph + sam_edge_ops MaskUpscale" and ops.decoder_prompt_fallback is None
    assert standard.decoder_prompt_mode == "single ONNX Runtime graph"
    assert standard.decoder_prompt_fallback == "native_decoder=False"
    (low_res, iou), (std_low_res, std_iou) = _decode(ops, 1), _decode(standard, 1)
    assert low_res.shape == std_low_res.shape == (3, 3, 64, 64)
    assert np.linalg.norm(low_res - std_low_res) <= PROMPT_OPS_REL_L2 * np.linalg.norm(std_low_res)
    np.testing.assert_array_equal(iou, std_iou)


@pytest.mark.parametrize("library", ["missing", "not a library"])
def test_without_the_library_the_standard_prompt_graph_runs_and_says_why(bundle, tmp_path, monkeypatch, library):
    from sam_edge.runtime.ort_ops import LIBRARY_ENV

    _, path = bundle
    fake = tmp_path / "libsam_edge_ops.so"
    if library == "not a library":
        fake.write_bytes(b"not an ELF file")
    monkeypatch.setenv(LIBRARY_ENV, str(fake))
    engine = sam_edge.load(str(path), verify=False)
    reason = "which is not a file" if library == "missing" else "does not register"
    assert engine.decoder_prompt_mode == "single ONNX Runtime graph"
    assert reason in engine.decoder_prompt_fallback, engine.decoder_prompt_fallback
    low_res, _ = _decode(engine, 2)
    assert np.isfinite(low_res).all()
    with pytest.raises(BundleError, match=reason):
        sam_edge.load(str(path), verify=False, native_decoder=True)


def test_a_prompt_ops_graph_the_library_cannot_run_falls_back(bundle, tmp_path):
    """A graph needing an op this library build lacks fails its session, not the load."""
    import onnx

    from sam_edge.runtime.ort_ops import library_refusal

    if library_refusal() is not None:
        pytest.skip(library_refusal())
    _, path = bundle
    copy = _copy(path, tmp_path / "newer-op")
    model = onnx.load(str(copy / "decoder_prompt_ops.onnx"))
    next(n for n in model.graph.node if n.op_type == "MaskUpscale").op_type = "MaskUpscaleFromTheFuture"
    onnx.save_model(model, str(copy / "decoder_prompt_ops.onnx"))
    engine = sam_edge.load(str(copy), verify=False)
    assert engine.decoder_prompt_mode == "single ONNX Runtime graph"
    assert "MaskUpscaleFromTheFuture" in engine.decoder_prompt_fallback, engine.decoder_prompt_fallback
    np.testing.assert_array_equal(_decode(engine, 3)[0], _decode(sam_edge.load(str(path), native_decoder=False), 3)[0])
    with pytest.raises(BundleError, match="decoder prompt ops graph does not load"):
        sam_edge.load(str(copy), verify=False, native_decoder=True)


def test_a_bundle_without_the_prompt_ops_graph_loads_as_before(bundle, tmp_path):
    _, path = bundle
    copy = _copy(path, tmp_path / "older")
    manifest = json.loads((copy / "manifest.json").read_text())
    del manifest["decoder_prompt_ops"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    engine = sam_edge.load(str(copy))
    assert engine.decoder_prompt_mode == "single ONNX Runtime graph"
    assert "no decoder prompt ops graph" in engine.decoder_prompt_fallback
    with pytest.raises(BundleError, match="no decoder prompt ops graph"):
        sam_edge.load(str(copy), native_decoder=True)


@pytest.mark.parametrize("damage, message", [
    (lambda m: m["decoder_prompt_ops"].update(domain_version=2), "needs the op domain 'ai.sam_edge' version 2"),
    (lambda m: m["decoder_prompt_ops"].update(file="../decoder_prompt_ops.onnx"), "names a file outside the bundle"),
    (lambda m: m["decoder_prompt_ops"].pop("file"), "decoder_prompt_ops lacks a file name"),
    (lambda m: m["files"].pop("decoder_prompt_ops.onnx"), "decoder prompt ops graph 'decoder_prompt_ops.onnx' is not"),
])
def test_a_damaged_prompt_ops_entry_is_a_bundle_error(bundle, tmp_path, damage, message):
    _, path = bundle
    copy = _copy(path, tmp_path / "damaged")
    manifest = json.loads((copy / "manifest.json").read_text())
    damage(manifest)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=message):
        sam_edge.load(str(copy))
