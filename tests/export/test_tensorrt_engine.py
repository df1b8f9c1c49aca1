"""build_engine (sam_edge.export.tensorrt_engine): validation without TensorRT, then against the
spec'd TensorRT fakes (tests/helpers/tensorrt_fakes.py)."""

import os

import pytest

onnx = pytest.importorskip("onnx", reason="the TensorRT preparation reads graphs with the onnx package")
pytest.importorskip("onnxruntime", reason="prepared graphs are validated with ONNX Runtime")

from sam_edge.export.tensorrt_engine import build_engine  # noqa: E402

from tensorrt_graphs import tiny_profiles  # noqa: E402


def test_build_engine_validates_before_needing_tensorrt(graphs, tmp_path):
    bad = tiny_profiles(max_points=4, max_prompts=4, opt_points=2, opt_prompts=2)[1]
    bad = {k: v for k, v in bad.items() if k != "mask_input"}
    with pytest.raises(ValueError, match="no shapes for"):
        build_engine(graphs["fast"], str(tmp_path / "x.plan"), precision="fp32", profiles=[bad])
    with pytest.raises(ValueError, match="orig_im_size"):
        profile = dict(tiny_profiles(max_points=4, max_prompts=4, opt_points=2, opt_prompts=2)[1],
                       orig_im_size=((2,),) * 3)
        build_engine(graphs["trap"], str(tmp_path / "x.plan"), precision="fp32", profiles=[profile])
    with pytest.raises(ValueError, match="workspace"):
        build_engine(graphs["fast"], str(tmp_path / "x.plan"), precision="fp32", profiles=[bad], workspace_bytes=5)


def test_build_engine_without_tensorrt_says_so(graphs, tmp_path):
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("TensorRT is installed; the message for its absence cannot be shown")
    profiles = tiny_profiles(max_points=4, max_prompts=4, opt_points=2, opt_prompts=2)
    with pytest.raises(ImportError, match="TensorRT is not installed"):
        build_engine(graphs["fast"], str(tmp_path / "x.plan"), precision="fp32", profiles=profiles)
    assert not os.path.exists(tmp_path / "x.plan")


# ---------------------------------------------------------------- against the spec'd TensorRT fakes


def test_fakes_refuse_what_tensorrt_refuses(fake_trt, graphs, tmp_path):
    """The fakes' own documented failure modes (see the citations in tests/helpers/tensorrt_fakes.py)."""
    from tensorrt_graphs import contrib_op_graph

    trt = fake_trt
    logger = trt.Logger()
    with pytest.raises(AttributeError):
        trt.NoSuchThing  # noqa: B018 - unknown names raise, as in the real module
    builder = trt.Builder(logger)
    with pytest.raises(AttributeError):
        builder.build_engine  # noqa: B018 - removed in TensorRT 10
    # No timing cache unless one was attached.
    assert builder.create_builder_config().get_timing_cache() is None
    # Precision flags on a strongly typed network: an API usage error, no engine.
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    assert trt.OnnxParser(network, logger).parse_from_file(graphs["mlp"])
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape("x", (1, 16), (2, 16), (4, 16))
    assert config.add_optimization_profile(profile) == 0
    config.set_flag(trt.BuilderFlag.FP16)
    assert builder.build_serialized_network(network, config) is None
    assert "kFP16" in logger.fake_messages[-1][1]
    config.clear_flag(trt.BuilderFlag.FP16)
    assert builder.build_serialized_network(network, config) is not None
    # The parser: contrib ops and float inputs used as shapes.
    for path, message in ((contrib_op_graph(tmp_path / "contrib.onnx"), "No importer registered for op: Gelu"),
                          (graphs["trap"], "shape-tensor network inputs must be Int32 or Int64")):
        parser = trt.OnnxParser(builder.create_network(0), logger)
        assert not parser.parse_from_file(path)
        assert message in str(parser.get_error(0))


def _fast_profiles():
    return tiny_profiles(max_points=4, max_prompts=4, opt_points=2, opt_prompts=2)


def test_first_build_writes_the_timing_cache(fake_trt, graphs, tmp_path):
    """Defect 1: with a --timing-cache file that does not exist yet, the build attaches a new
    cache and writes it; the next build reuses it. (TensorRT gives no cache back unless one was
    attached: the old code crashed on None after writing the plan.)"""
    cache_path = tmp_path / "timing.cache"
    first = build_engine(graphs["fast"], str(tmp_path / "a.plan"), precision="fp32", profiles=_fast_profiles(),
                               timing_cache_path=str(cache_path), progress=False)
    assert cache_path.is_file() and (tmp_path / "a.plan").is_file()
    assert first["timing_cache_reused"] is False
    second = build_engine(graphs["fast"], str(tmp_path / "b.plan"), precision="fp32", profiles=_fast_profiles(),
                                timing_cache_path=str(cache_path), progress=False)
    assert second["timing_cache_reused"] is True
    # A cache from another TensorRT version is refused and replaced, not mixed in.
    cache_path.write_bytes(cache_path.read_bytes().replace(b"10.13.0.35", b"10.12.0.36"))
    third = build_engine(graphs["fast"], str(tmp_path / "c.plan"), precision="fp32", profiles=_fast_profiles(),
                               timing_cache_path=str(cache_path), progress=False)
    assert third["timing_cache_reused"] is False and b"10.13.0.35" in cache_path.read_bytes()


def test_build_engine_flags_follow_the_precision_plan(fake_trt, graphs, tmp_path):
    """fp32: strongly typed with TF32 cleared (TensorRT enables it by default); an fp32 graph as
    weakly typed fp16: FP16 + OBEY_PRECISION_CONSTRAINTS with the islands pinned to fp32."""
    from tensorrt_fakes import plan_header

    record = build_engine(graphs["fast"], str(tmp_path / "fp32.plan"), precision="fp32",
                                profiles=_fast_profiles(), progress=False)
    header = plan_header((tmp_path / "fp32.plan").read_bytes())
    assert header["strongly_typed"] and "TF32" not in header["flags"] and record["cleared_builder_flags"] == ["TF32"]
    assert len(header["profiles"]) == 2 and header["profiles"][1]["point_coords"][2] == [4, 4, 2]

    mlp_profile = [{"x": ((1, 16), (2, 16), (8, 16))}]
    record = build_engine(graphs["mlp"], str(tmp_path / "weak.plan"), precision="fp16", profiles=mlp_profile,
                                strongly_typed=False, progress=False)
    header = plan_header((tmp_path / "weak.plan").read_bytes())
    assert not header["strongly_typed"] and {"FP16", "OBEY_PRECISION_CONSTRAINTS", "TF32"} <= set(header["flags"])
    assert record["precision"] == "fp16"
