"""The TensorRT bundle build (sam_edge.export.tensorrt_build): the manifest / rebuild round trip,
build parameters, the CLI without TensorRT, and whole bundles against the spec'd fakes."""

import os
import shlex

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="the TensorRT preparation reads graphs with the onnx package")
pytest.importorskip("onnxruntime", reason="prepared graphs are validated with ONNX Runtime")

from sam_edge.export import tensorrt_build as build  # noqa: E402
from sam_edge.export import tensorrt_prepare as prep  # noqa: E402
from sam_edge.export.tensorrt_engine import build_engine  # noqa: E402
from sam_edge.runtime.tensorrt_compat import check_engine_compatibility, rebuild_command  # noqa: E402

from tensorrt_graphs import rel_l2 as _rel_l2  # noqa: E402


# ---------------------------------------------------------------- manifest and rebuild


BASE_MANIFEST = {
    "format": "sam-edge-bundle",
    "format_version": 1,
    "model_type": "vit_b",
    "config": {"name": "vit_b", "image_size": 1024},
    "backend": "onnxruntime",
    "precision": "fp16",
    "image_size": 1024,
    "mask_input_size": 256,
    "embedding_size": 64,
    "graphs": {"encoder": "encoder.onnx", "decoder": "decoder.onnx"},
    "weights": {"source": "checkpoint", "checkpoint": "sam_vit_b_01ec64.pth"},
    "versions": {"onnx": "1.23.2"},
    "files": {"encoder.onnx": {"sha256": "0" * 64, "bytes": 1}},
    "conversion": {"method": "fp16 with fp32 islands"},
}
RUNTIME = {"tensorrt": "10.13.0.35", "gpu": "NVIDIA A10", "compute_capability": "8.6", "cuda_runtime": "12.9"}


def trt_manifest(**params):
    p = build.TensorRTBuildParams(model_type="vit_b", precision="fp16", **params)
    engines = {"encoder": {"plan": "encoder.plan"}, "decoder": {"plan": "decoder.plan"}}
    files = {"encoder.plan": {"sha256": "1" * 64, "bytes": 2}, "decoder.plan": {"sha256": "2" * 64, "bytes": 3}}
    return p, build.tensorrt_manifest(BASE_MANIFEST, p, engines, files, RUNTIME, {"encoder": {"sha256": "0" * 64}})


def test_tensorrt_manifest_extends_the_onnx_one():
    _, manifest = trt_manifest()
    for key in ("format", "format_version", "model_type", "config", "image_size", "mask_input_size", "weights"):
        assert manifest[key] == BASE_MANIFEST[key]
    assert manifest["backend"] == "tensorrt"
    assert manifest["graphs"] == {"encoder": "encoder.plan", "decoder": "decoder.plan"}
    assert set(manifest["files"]) == {"encoder.plan", "decoder.plan"}
    section = manifest["tensorrt"]
    assert (section["version"], section["gpu"], section["compute_capability"]) == ("10.13.0.35", "NVIDIA A10", "8.6")
    assert manifest["versions"]["tensorrt"] == "10.13.0.35" and manifest["versions"]["onnx"] == "1.23.2"
    assert section["onnx_conversion"] == BASE_MANIFEST["conversion"]
    check_engine_compatibility(manifest, RUNTIME)  # the machine that built it


def test_tensorrt_manifest_drops_the_onnx_runtime_graph_entries():
    """The ONNX bundle's sam_edge_ops graphs (and ORT's fused attention) are not in a
    TensorRT bundle: an entry naming them would point at files the bundle does not hold."""
    base = dict(BASE_MANIFEST, encoder_ops={"file": "encoder_ops.onnx", "domain": "ai.sam_edge"},
                decoder_prompt_ops={"file": "decoder_prompt_ops.onnx", "domain": "ai.sam_edge"},
                fused_global_attention=4)
    p = build.TensorRTBuildParams(model_type="vit_b", precision="fp16")
    engines = {"encoder": {"plan": "encoder.plan"}, "decoder": {"plan": "decoder.plan"}}
    files = {"encoder.plan": {"sha256": "1" * 64, "bytes": 2}, "decoder.plan": {"sha256": "2" * 64, "bytes": 3}}
    manifest = build.tensorrt_manifest(base, p, engines, files, RUNTIME, {"encoder": {"sha256": "0" * 64}})
    assert not {"encoder_ops", "decoder_prompt_ops", "fused_global_attention"} & set(manifest)
    assert manifest["weights"] == BASE_MANIFEST["weights"]


@pytest.mark.parametrize("params", [{}, dict(max_points=8, max_prompts=32, opt_prompts=16, workspace_bytes=1 << 30),
                                    dict(hardware_compatibility="ampere_plus", version_compatible=True,
                                         decoder_precision="fp16", max_batch=4, weakly_typed=True)])
def test_rebuild_command_round_trip(params):
    """The command in the compatibility error parses with the build options and gives back
    the same build parameters (checkpoint from the manifest's weights)."""
    original, manifest = trt_manifest(**params)
    command = shlex.split(rebuild_command(manifest, "/data/bundles/vit_b trt"))
    assert command[:2] == ["sam-edge", "build"]
    from sam_edge.cli import build_parser
    from sam_edge.cli.build import tensorrt_build_params

    args = build_parser().parse_args(command[1:])  # the command line sam-edge itself parses
    assert args.backend == "tensorrt" and args.output == "/data/bundles/vit_b trt" and args.overwrite
    assert args.checkpoint == "sam_vit_b_01ec64.pth"
    rebuilt = tensorrt_build_params(args, args.model, args.precision, args.checkpoint, args.timing_cache, args.quiet)
    assert rebuilt.rebuild_options() == dict(original.rebuild_options(), checkpoint="sam_vit_b_01ec64.pth")


def test_rebuild_command_for_random_weights_has_no_checkpoint():
    _, manifest = trt_manifest()
    manifest["weights"] = {"source": "random", "seed": 0}
    assert "--checkpoint" not in rebuild_command(manifest)


def test_build_params_validate():
    with pytest.raises(ValueError, match="precision"):
        build.TensorRTBuildParams(model_type="vit_b", precision="fp32")
    with pytest.raises(ValueError, match="max_points"):
        build.TensorRTBuildParams(model_type="vit_b", precision="int8", max_points=0)


def _onnx_bundle_of(directory, **graphs):
    """A minimal ONNX Runtime bundle directory holding copies of the graphs given by role."""
    import json
    import shutil

    directory.mkdir()
    for role, path in graphs.items():
        shutil.copy(path, directory / f"{role}.onnx")
    manifest = {"backend": "onnxruntime", "graphs": {role: f"{role}.onnx" for role in graphs}}
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return str(directory)


def test_onnx_graphs_refuses_wrong_inputs(tmp_path, graphs):
    with pytest.raises(ValueError, match="not an ONNX bundle"):
        build.onnx_bundle_graphs(str(tmp_path))
    with pytest.raises(ValueError, match="decoder"):
        build.onnx_bundle_graphs(_onnx_bundle_of(tmp_path / "encoder-only", encoder=graphs["mlp"]))


def test_tensorrt_build_command_fails_fast_without_tensorrt(tmp_path):
    """`sam-edge build --backend tensorrt` refuses before exporting anything when TensorRT is absent."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("TensorRT is installed; the message for its absence cannot be shown")
    from sam_edge.cli import build_parser

    def command(precision):
        args = build_parser().parse_args(["build", "--model", "vit_b", "--backend", "tensorrt", "--precision",
                                          precision, "--output", str(tmp_path / "out"), "--quiet"])
        return args.func(args)

    with pytest.raises(ImportError, match="TensorRT is not installed"):
        command("fp16")
    assert os.listdir(tmp_path) == []
    with pytest.raises(ValueError, match="TensorRT precision"):
        command("int8-dynamic")


def test_contrib_ops_are_refused_before_tensorrt(graphs, tmp_path, monkeypatch):
    """Defect 2: a graph with ONNX Runtime contrib ops is refused by the preparation, by
    build_engine and by build_tensorrt_bundle, with the command that rebuilds it, before TensorRT
    is imported (no `tensorrt` module at all here)."""
    import sys

    from tensorrt_graphs import contrib_op_graph

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # importing it would raise ImportError
    contrib = contrib_op_graph(tmp_path / "contrib.onnx")
    with pytest.raises(ValueError, match=r"com\.microsoft\.Gelu.*--plain-attention"):
        prep.prepare_for_tensorrt(contrib, str(tmp_path / "out.onnx"), "encoder")
    with pytest.raises(ValueError, match="outside the ONNX domain"):
        build_engine(contrib, str(tmp_path / "x.plan"), precision="fp32",
                           profiles=[{"x": ((1, 16), (1, 16), (2, 16))}])
    params = build.TensorRTBuildParams(model_type="vit_b", precision="fp16", progress=False)
    with pytest.raises(ValueError, match="outside the ONNX domain"):
        build.build_tensorrt_bundle(params, _onnx_bundle_of(tmp_path / "onnx", encoder=contrib, decoder=graphs["fast"]),
                                    str(tmp_path / "b"))
    assert not (tmp_path / "b").exists()


def test_build_tensorrt_all_builds_standard_ops(tmp_path, monkeypatch):
    """export/build_tensorrt_all.py asks for ONNX bundles without contrib ops."""
    import importlib.util

    from sam_edge.export import build as onnx_build
    from sam_edge.export import tensorrt_build

    spec = importlib.util.spec_from_file_location("build_tensorrt_all", os.path.join(
        os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "export", "build_tensorrt_all.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    calls = []
    monkeypatch.setattr(onnx_build, "build_bundle", lambda *a, **kw: calls.append(kw))
    engine = {"build_seconds": 1.0, "plan_bytes": 1, "strongly_typed": True, "timing_cache_reused": False}
    monkeypatch.setattr(script, "build_tensorrt_bundle",
                        lambda *a, **kw: {"tensorrt": {"engines": {"encoder": engine, "decoder": engine}}})
    args = script.build_parser().parse_args(["--output", str(tmp_path), "--quiet"])
    assert tensorrt_build.TensorRTBuildParams is script.TensorRTBuildParams
    row = script.build_pair(args, "vit_b", "int8", str(tmp_path / "t.cache"))
    assert row["status"] == "ok" and calls and calls[0]["fused_attention"] is False


# ---------------------------------------------------------------- whole bundles against the fakes


@pytest.fixture(scope="module")
def onnx_bundles(tmp_path_factory, small_config):
    """fp16 and int8 ONNX bundles of the reduced ViT-B with standard ops only (what TensorRT builds from)."""
    from sam_edge.export.build import build_bundle

    root = tmp_path_factory.mktemp("onnx_bundles")
    for precision in ("fp16", "int8"):
        build_bundle(str(root / precision), small_config, precision=precision, fused_attention=False,
                     official_decoder=False, ops_graph=False, quiet=True)
    return root


def _trt_params(precision, **kw):
    return build.TensorRTBuildParams(model_type="vit_b", precision=precision, max_points=4, max_prompts=4,
                                     opt_points=2, opt_prompts=2, progress=False, **kw)


def test_tensorrt_bundle_against_fakes_matches_onnx_runtime(fake_trt, onnx_bundles, tmp_path):
    """build_tensorrt_bundle, load_tensorrt_engine and SamPredictor end to end over the fakes (whose
    engines run the prepared graphs in ONNX Runtime): the same masks and logits as the fp16 ONNX
    Runtime bundle on the same image and prompts, to float32 rounding (both run the same graphs)."""
    import sam_edge
    from sam_edge.runtime.bundle import verify_bundle
    from sam_edge.runtime.tensorrt_backend import load_tensorrt_engine

    out = tmp_path / "trt-fp16"
    manifest = build.build_tensorrt_bundle(_trt_params("fp16", max_batch=2, timing_cache=str(tmp_path / "t.cache")),
                                           str(onnx_bundles / "fp16"), str(out))
    encoder = manifest["tensorrt"]["engines"]["encoder"]
    assert encoder["strongly_typed"] and encoder["builder_flags"] == []
    assert encoder["profiles"][0]["image"][1][0] == 2, "tuned for --max-batch when no --opt-batch is given"
    assert manifest["tensorrt"]["engines"]["decoder"]["cleared_builder_flags"] == ["TF32"]
    engine = load_tensorrt_engine(str(out), verify_bundle(str(out)), array_library="cuda-python")
    ours, reference = sam_edge.SamPredictor(engine), sam_edge.SamPredictor(sam_edge.load(str(onnx_bundles / "fp16")))
    image = np.random.default_rng(1).integers(0, 256, (200, 150, 3), dtype=np.uint8)
    ours.set_image(image)
    reference.set_image(image)
    for point in ([[40.0, 60.0]], [[100.0, 20.0], [30.0, 150.0]]):
        labels = np.ones(len(point), int)
        masks, scores, low = ours.predict(np.array(point), labels)
        ref_masks, ref_scores, ref_low = reference.predict(np.array(point), labels)
        assert _rel_l2(low, ref_low) < 1e-4 and np.allclose(scores, ref_scores, rtol=1e-4, atol=1e-5)
        assert np.mean(masks != ref_masks) < 1e-3
    engine.close()


def test_int8_tensorrt_bundle_runs_fp16_float_parts(fake_trt, onnx_bundles, tmp_path):
    """The int8 encoder engine is built strongly typed from the QDQ graph with fp16 float parts
    (and no precision flags, which a strongly typed network refuses), and runs."""
    from sam_edge.runtime.bundle import verify_bundle
    from sam_edge.runtime.tensorrt_backend import load_tensorrt_engine

    out = tmp_path / "trt-int8"
    manifest = build.build_tensorrt_bundle(_trt_params("int8"), str(onnx_bundles / "int8"), str(out))
    encoder = manifest["tensorrt"]["engines"]["encoder"]
    assert encoder["strongly_typed"] and encoder["builder_flags"] == [] and "(fp16)" in encoder["precision_note"]
    assert encoder["fp16_float_parts"]["fp16_tensors"] > 0 and encoder["qdq"]["quantize_nodes"] > 0
    engine = load_tensorrt_engine(str(out), verify_bundle(str(out)), array_library="cuda-python")
    embedding = engine.to_numpy(engine.embed(np.full((1, 3, 256, 256), 100.0, np.float32)))
    assert embedding.shape == (1, 256, 16, 16) and np.isfinite(embedding).all() and embedding.std() > 0
    engine.close()


def test_version_compatible_bundle_loads(fake_trt, onnx_bundles, tmp_path):
    """Defect 3: engines built --version-compatible carry TensorRT's lean runtime, which the
    runtime deserializes only with engine_host_code_allowed; load_tensorrt_engine sets it from the
    manifest (the old code left it off, and deserialization failed)."""
    from sam_edge.runtime.bundle import verify_bundle
    from sam_edge.runtime.tensorrt_backend import load_tensorrt_engine

    out = tmp_path / "trt-vc"
    manifest = build.build_tensorrt_bundle(_trt_params("fp16", version_compatible=True), str(onnx_bundles / "fp16"),
                                           str(out))
    assert manifest["tensorrt"]["version_compatible"] is True
    engine = load_tensorrt_engine(str(out), verify_bundle(str(out)), array_library="cuda-python")
    assert engine.embed(np.zeros((1, 3, 256, 256), np.float32)) is not None
    engine.close()


def test_tensorrt_bundle_takes_the_umask_modes(fake_trt, onnx_bundles, tmp_path):
    """TensorRT bundles are written by the ONNX bundles' writer: the directory and every file get
    the umask's modes (not mkdtemp's 0700 and mkstemp's 0600), so another user can serve them."""
    import stat

    previous = os.umask(0o027)
    try:
        out = tmp_path / "trt-modes"
        build.build_tensorrt_bundle(_trt_params("fp16"), str(onnx_bundles / "fp16"), str(out))
    finally:
        os.umask(previous)
    assert stat.S_IMODE(out.stat().st_mode) == 0o750
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
    assert set(modes) == {"manifest.json", "encoder.plan", "decoder.plan"}
    assert modes == {name: 0o640 for name in modes}, modes


def test_opt_batch_is_validated_and_recorded():
    with pytest.raises(ValueError, match="opt_batch"):
        build.TensorRTBuildParams(model_type="vit_b", precision="fp16", max_batch=2, opt_batch=3)
    params = build.TensorRTBuildParams(model_type="vit_b", precision="fp16", max_batch=4, opt_batch=2)
    assert params.rebuild_options()["opt_batch"] == 2


def test_bench_tensorrt_puts_int8_beside_fp16():
    """benchmarks/bench_tensorrt.py's comparison row: medians side by side and int8 / fp16 ratios."""
    import importlib.util

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    spec = importlib.util.spec_from_file_location("bench_tensorrt", os.path.join(root, "benchmarks", "bench_tensorrt.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    def result(enc, dec, pred, ips):
        return {"encoder_batch1": {"median_ms": enc}, "decode_1_prompt": {"median_ms": dec},
                "predict_1_prompt": {"median_ms": pred}, "encoder_images_per_s": ips}

    row = bench.int8_vs_fp16("vit_b", {"fp16": result(10.0, 2.0, 4.0, 100.0), "int8": result(8.0, 2.0, 5.0, 120.0)})
    assert row["enc_ms fp16"] == 10.0 and row["enc_ms int8"] == 8.0 and row["enc_ms int8/fp16"] == pytest.approx(0.8)
    assert row["predict_ms int8/fp16"] == pytest.approx(1.25) and row["img/s int8"] == 120.0
    assert bench.int8_vs_fp16("vit_b", {"fp16": result(10.0, 2.0, 4.0, 100.0)}) is None
