"""The encoder split at its attentions (export/split_encoder.py) and run as
segments with sam-edge's kernel between them (runtime/segmented_encoder.py):
each cut runs from a block's qkv projection to its proj input.

The single encoder graph of the same bundle is the reference: in fp32 the
two compute the same math (the kernel's fp32 error is ~1e-7, tests/kernels/test_cpu_attention.py),
so they agree to 1e-5. int8 segments are held to a margin over their own
single graph's error against the official fp32 model, on the same photos
(INT8_MARGIN); the int8 bundles calibrate on photos these tests do not
evaluate on (sam_fixtures.CALIBRATION_PHOTOS).
"""

import json

import numpy as np
import pytest

import sam_edge
from onnx_helpers import build_test_bundle, photos, reduced_config, rel_l2
from sam_edge.runtime.bundle import BundleError
from sam_edge.kernels.cpu_attention import fast_compute, cpu_kernel_status

FAST = fast_compute(64, (16, 16), "fp32") is not None
# The int8 single graph's own error against the official model is held to the issue's
# int8 bound; the segments run the same int8 linears and differ from it only in the
# attention between the cuts, whose rounding (float32 in the kernel's fp32 path, an 11- or
# 8-bit mantissa in fp16/bf16) is independent of int8's and far smaller: errors that add
# in quadrature, so the segments' error exceeds the single graph's by well under 10%,
# plus INT8_ABS for rounding on photos where int8's error is small. A wrong cut, such as
# zeroed padding key/value in a windowed one, adds an error of int8's size or more.
INT8_BOUND, INT8_MARGIN, INT8_ABS = 0.05, 0.10, 2e-3
needs_fast_kernel = pytest.mark.skipif(
    not FAST, reason="sam-edge's attention kernel has no fast path on this CPU (no _C or no AVX-512): "
                     "bundles run their single encoder graph"
)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    # Depth 4: global attention in blocks 1 and 3, so three segments and a tensor
    # (the residual stream) that crosses every cut.
    _, checkpoint, path = build_test_bundle(
        tmp_path_factory.mktemp("segmented"), reduced_config(depth=4), seed=5, official_decoder=False
    )
    return checkpoint, path


def test_build_writes_segments_and_plan(bundle):
    _, path = bundle
    manifest = json.loads((path / "manifest.json").read_text())
    plan = manifest["encoder_split"]
    assert [s["file"] for s in plan["segments"]] == [f"encoder_segment_{k}.onnx" for k in range(3)]
    assert len(plan["attention"]) == 2 and plan["compute"] == "fp32"
    for segment in plan["segments"]:
        assert segment["file"] in manifest["files"]
    assert plan["segments"][0]["inputs"] == ["image"]
    assert plan["segments"][-1]["outputs"] == ["image_embeddings"]
    for a in plan["attention"]:
        assert a["heads"] == 12 and a["head_dim"] == 64 and a["k_size"] == [16, 16] and a["window"] == 0
        assert a["scale"] == pytest.approx(64 ** -0.5)
        assert a["qkv"].endswith("/attn/qkv/Add_output_0")
    assert plan["tables"] in manifest["files"]


def test_the_attention_leaves_the_segments(bundle):
    """Everything between a cut block's qkv and proj Linears runs in the kernel: no
    segment holds a cut block's Softmax, and each segment passes on only the
    residual stream and the next qkv projection."""
    import onnx

    _, path = bundle
    plan = json.loads((path / "manifest.json").read_text())["encoder_split"]
    for k, segment in enumerate(plan["segments"]):
        graph = onnx.load(str(path / segment["file"])).graph
        for a in plan["attention"]:
            prefix = f"/image_encoder/blocks.{a['block']}/attn/"
            assert not [n.name for n in graph.node if n.name.startswith(prefix) and n.op_type == "Softmax"]
        if 0 < k < len(plan["segments"]) - 1:
            assert len(segment["inputs"]) == 2 and len(segment["outputs"]) == 2, segment


def test_weights_are_stored_once(bundle):
    """encoder.onnx and the segments read one weights file: the graph files
    together hold less than a tenth of its bytes."""
    _, path = bundle
    plan = json.loads((path / "manifest.json").read_text())["encoder_split"]
    data = (path / "encoder.onnx.data").stat().st_size
    graphs = (path / "encoder.onnx").stat().st_size + sum((path / s["file"]).stat().st_size for s in plan["segments"])
    assert data > 10 * graphs, (data, graphs)


def test_tables_are_the_checkpoint_s(bundle):
    """encoder_attention.npz holds each cut block's rel-pos tables and the k and v
    parts of its qkv bias, as the checkpoint has them."""
    import torch

    checkpoint, path = bundle
    state = torch.load(str(checkpoint), map_location="cpu")
    plan = json.loads((path / "manifest.json").read_text())["encoder_split"]
    with np.load(path / plan["tables"]) as tables:
        for j, a in enumerate(plan["attention"]):
            key = f"image_encoder.blocks.{a['block']}.attn."
            np.testing.assert_array_equal(tables[f"rel_pos_h_{j}"], state[key + "rel_pos_h"].numpy())
            np.testing.assert_array_equal(tables[f"rel_pos_w_{j}"], state[key + "rel_pos_w"].numpy())
            np.testing.assert_array_equal(tables[f"kv_bias_{j}"], state[key + "qkv.bias"].view(3, 12, 64)[1:].numpy())


def test_a_plan_without_tables_runs_the_single_graph(bundle, tmp_path):
    """Bundles split by an older sam-edge (their cuts were q, k, v and the bias
    terms, with no tables file) still load, on their single graph."""
    import shutil

    _, path = bundle
    copy = tmp_path / "old-plan"
    shutil.copytree(path, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    del manifest["encoder_split"]["tables"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert sam_edge.load(str(copy)).encoder_mode == "single ONNX Runtime graph"
    with pytest.raises(BundleError, match="has no encoder segments for this sam-edge"):
        sam_edge.load(str(copy), native_attention=True)


@needs_fast_kernel
def test_segments_match_the_single_graph(bundle):
    _, path = bundle
    segmented = sam_edge.load(str(path))
    single = sam_edge.load(str(path), native_attention=False)
    assert segmented.encoder_mode.startswith("segments") and single.encoder_mode == "single ONNX Runtime graph"
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (2, 3, 256, 192)).astype(np.float32)  # a batch, not square
    a, b = segmented.embed(images), single.embed(images)
    assert a.shape == b.shape == (2, 256, 16, 16)
    assert rel_l2(a, b) <= 1e-5
    # The predictor's whole path, on a photo.
    image = photos()["portrait"]
    out = []
    for engine in (segmented, single):
        predictor = sam_edge.SamPredictor(engine)
        predictor.set_image(image)
        out.append(predictor.predict(point_coords=np.array([[60.0, 90.0]]), point_labels=np.array([1]))[2])
    assert rel_l2(out[0], out[1]) <= 1e-4


def test_native_attention_true_without_segments_is_refused(bundle, tmp_path):
    from sam_edge.export.build import build_bundle

    checkpoint, _ = bundle
    out = tmp_path / "plain"
    build_bundle(str(out), reduced_config(depth=4), checkpoint=str(checkpoint), split_encoder=False,
                 official_decoder=False, quiet=True)
    assert "encoder_split" not in json.loads((out / "manifest.json").read_text())
    assert sam_edge.load(str(out)).encoder_mode == "single ONNX Runtime graph"
    with pytest.raises(BundleError, match="has no encoder segments"):
        sam_edge.load(str(out), native_attention=True)


def test_split_refuses_a_graph_without_the_pattern(bundle, tmp_path):
    """The fused graph has no Softmax in its global blocks: splitting it is an error, not a silent no-op."""
    from sam_edge.export.split_encoder import split_encoder_at_attention
    from sam_edge.precision import Compute

    _, path = bundle
    with pytest.raises(ValueError, match="expected one Softmax"):
        split_encoder_at_attention(str(path / "encoder.onnx"), str(tmp_path), reduced_config(depth=4),
                                   blocks=reduced_config(depth=4).encoder_global_attn_indexes, compute=Compute.FP32)


@pytest.fixture(scope="module")
def int8_bundle(tmp_path_factory, calibration_dir):
    reference, _, path = build_test_bundle(
        tmp_path_factory.mktemp("segmented-int8"), reduced_config(depth=4), seed=5, precision="int8",
        official_decoder=False, calib_images=calibration_dir,
    )
    return reference, path


def _official_embeddings(reference) -> dict:
    import torch
    from segment_anything import SamPredictor as OfficialPredictor

    official, out = OfficialPredictor(reference), {}
    for name, image in photos().items():
        official.set_image(image)
        with torch.no_grad():
            out[name] = official.get_image_embedding().numpy()
    return out


def _embedding_errors(engine, official: dict) -> dict:
    """{photo: embedding rel-L2 of `engine` against the official model's}."""
    predictor, errors = sam_edge.SamPredictor(engine), {}
    for name, image in photos().items():
        predictor.set_image(image)
        errors[name] = rel_l2(predictor.get_image_embedding(), official[name])
    return errors


@pytest.fixture(scope="module")
def int8_single_errors(int8_bundle):
    """(official embeddings, the int8 single graph's errors against them): the baseline of the margin."""
    reference, path = int8_bundle
    official = _official_embeddings(reference)
    errors = _embedding_errors(sam_edge.load(str(path), native_attention=False), official)
    assert max(errors.values()) <= INT8_BOUND, errors
    return official, errors


def _assert_within_margin(errors: dict, single: dict) -> None:
    for name, error in errors.items():
        bound = single[name] * (1 + INT8_MARGIN) + INT8_ABS
        assert error <= bound, f"{name}: segments {error:.4e} > {bound:.4e} (single graph {single[name]:.4e})"


def test_int8_bundle_cuts_every_block(int8_bundle):
    """int8 bundles (head_dim 64) are cut at the windowed blocks too, for the fp16 path."""
    _, path = int8_bundle
    plan = json.loads((path / "manifest.json").read_text())["encoder_split"]
    assert plan["compute"] == "fp16"
    assert [a["block"] for a in plan["attention"]] == [0, 1, 2, 3]
    assert [a["k_size"] for a in plan["attention"]] == [[14, 14], [16, 16], [14, 14], [16, 16]]
    assert [a["window"] for a in plan["attention"]] == [14, 0, 14, 0]  # 16 x 16 grid: 2 x 2 padded windows
    assert len(plan["segments"]) == 5


def test_int8_segments_within_a_margin_of_the_single_graph(int8_bundle, int8_single_errors, monkeypatch):
    """The int8 bundle cut at every block (windowed ones padded 16 -> 28), the kernel
    in fp32, within INT8_MARGIN of the int8 single graph's own error against the
    official fp32 model, photo by photo. The kernel's portable path runs where no
    fast one does, so this runs on every CPU."""
    from sam_edge.kernels import cpu_attention

    if not cpu_kernel_status()["available"]:
        pytest.skip("sam_edge._C is not built")
    _, path = int8_bundle
    official, single = int8_single_errors
    monkeypatch.setattr(cpu_attention, "fast_compute", lambda head_dim, k_size, preferred: "fp32")
    engine = sam_edge.load(str(path), native_attention=True)
    assert engine.encoder_mode == "segments + sam-edge attention kernel (4 cuts, fp32)", engine.encoder_mode
    monkeypatch.undo()
    errors = _embedding_errors(engine, official)
    print("int8 embedding rel-L2, single graph:", single, "segments (fp32 kernel):", errors)
    _assert_within_margin(errors, single)


@pytest.mark.skipif(fast_compute(64, (14, 14), "fp16") is None, reason="this CPU has no AVX512-FP16")
def test_int8_segments_in_reduced_precision_within_a_margin_of_the_single_graph(int8_bundle, int8_single_errors):
    """The default load (bf16 where AMX or AVX512-BF16 runs it, else fp16) and fp16 forced, within
    INT8_MARGIN of the int8 single graph's own error against the official model."""
    _, path = int8_bundle
    official, single = int8_single_errors
    for options in ({}, {"attention_compute": "fp16"}):
        engine = sam_edge.load(str(path), **options)
        if not options:
            bf16 = cpu_kernel_status()["amx_bf16"] or cpu_kernel_status()["avx512_bf16"]
            assert engine.encoder_mode.endswith("bf16)" if bf16 else "fp16)"), \
                engine.encoder_mode
        errors = _embedding_errors(engine, official)
        print(engine.encoder_mode, errors, "single graph:", single)
        _assert_within_margin(errors, single)


def test_static_int8_linears_take_their_bias(int8_bundle):
    """Every static-int8 Linear of the segments is one MatMulIntegerToFloat that adds the
    bias: no float MatMul on dequantized weights, no bias Add after it."""
    import onnx

    _, path = int8_bundle
    plan = json.loads((path / "manifest.json").read_text())["encoder_split"]
    fused = 0
    for segment in plan["segments"]:
        model = onnx.load(str(path / segment["file"]), load_external_data=False)
        producer = {o: n for n in model.graph.node for o in n.output}
        for node in model.graph.node:
            if node.op_type == "MatMul":
                assert not any(getattr(producer.get(i), "op_type", "") == "DequantizeLinear" for i in node.input), \
                    node.name
            if node.op_type == "MatMulIntegerToFloat":
                assert node.domain == "com.microsoft" and len(node.input) == 7 and node.input[6], node.name
                fused += 1
        if any(n.domain == "com.microsoft" for n in model.graph.node):
            assert any(o.domain == "com.microsoft" for o in model.opset_import)
    assert fused == 4 * 4  # depth 4: qkv, proj, lin1, lin2


def test_quantized_linear_fusion_against_float64():
    """The fused MatMulIntegerToFloat computes DQ(x_q) @ DQ(W_q) + bias as the QDQ graph
    does: both within float32 rounding of the float64 math on the same quantized values."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from sam_edge.export.split_encoder import _fuse_quantized_linear_bias
    from sam_edge.runtime.onnxruntime_backend import session_options

    rng = np.random.default_rng(11)
    k, n = 96, 80
    w_q = rng.integers(-127, 128, size=(k, n), dtype=np.int8)
    w_scale = rng.uniform(1e-3, 2e-2, size=n).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    x_scale, x_zero = np.float32(0.03), np.uint8(121)
    inits = [
        numpy_helper.from_array(w_q, "w_q"), numpy_helper.from_array(w_scale, "w_scale"),
        numpy_helper.from_array(np.zeros(n, np.int8), "w_zero"), numpy_helper.from_array(bias, "bias"),
        numpy_helper.from_array(np.array(x_scale), "x_scale"), numpy_helper.from_array(np.array(x_zero), "x_zero"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zero"], ["x_q"], name="q"),
        helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zero"], ["x_dq"], name="dq_x"),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["w_dq"], name="dq_w", axis=1),
        helper.make_node("MatMul", ["x_dq", "w_dq"], ["y"], name="matmul"),
        helper.make_node("Add", ["y", "bias"], ["out"], name="bias_add"),
    ]
    fused_nodes = _fuse_quantized_linear_bias(nodes, {t.name: t for t in inits}, {"out"})
    assert [node.op_type for node in fused_nodes] == ["QuantizeLinear", "DequantizeLinear", "DequantizeLinear",
                                                      "MatMulIntegerToFloat"]
    fused_nodes = [node for node in fused_nodes if node.op_type != "DequantizeLinear"]  # the caller's sweep

    def run(graph_nodes, opsets):
        graph = helper.make_graph(graph_nodes, "linear", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 7, k])],
                                  [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2, 7, n])], inits)
        model = helper.make_model(graph, opset_imports=opsets)
        model.ir_version = 9
        # The runtime's options: without VNNI, ORT's default u8s8 kernel saturates here.
        session = ort.InferenceSession(model.SerializeToString(), session_options(), providers=["CPUExecutionProvider"])
        return session.run(None, {"x": x})[0]

    x = rng.uniform(-3.5, 4.0, size=(2, 7, k)).astype(np.float32)
    qdq = run(nodes, [helper.make_opsetid("", 17)])
    fused = run(fused_nodes, [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    x_q = np.clip(np.round(x / x_scale) + int(x_zero), 0, 255)
    exact = ((x_q - int(x_zero)) * float(x_scale)) @ (w_q.astype(np.float64) * w_scale) + bias
    scale = np.abs(exact).max()
    # float32 rounding of a k-term sum: well under 1e-5 of the output's range.
    assert np.abs(qdq - exact).max() <= 1e-5 * scale
    assert np.abs(fused - exact).max() <= 1e-5 * scale


def test_vit_h_int8_bundle_runs_its_global_cuts_in_the_kernel(tmp_path, calibration_dir):
    """ViT-H (head_dim 80, which the fp16 path does not cover): int8 bundles are cut at
    the global blocks only; they run bf16 on AMX or AVX512-BF16, else fp32, within INT8_MARGIN
    of the int8 single graph's own error against the official fp32 model."""
    config = reduced_config("vit_h", depth=2)
    reference, _, path = build_test_bundle(tmp_path, config, seed=9, precision="int8", official_decoder=False,
                                           calib_images=calibration_dir)
    plan = json.loads((path / "manifest.json").read_text())["encoder_split"]
    assert [a["block"] for a in plan["attention"]] == list(config.encoder_global_attn_indexes)
    assert {a["head_dim"] for a in plan["attention"]} == {80}
    engine = sam_edge.load(str(path))
    status = cpu_kernel_status()
    if not status["avx512"]:
        assert engine.encoder_mode == "single ONNX Runtime graph"
        pytest.skip("no AVX-512 here: the ViT-H bundle loads its single encoder graph (checked), so the "
                    "kernel's head_dim-80 cuts cannot be compared with the official model")
    bf16 = status["amx_bf16"] or status["avx512_bf16"]
    assert engine.encoder_mode.endswith("bf16)" if bf16 else "fp32)"), engine.encoder_mode
    official = _official_embeddings(reference)
    single = _embedding_errors(sam_edge.load(str(path), native_attention=False), official)
    assert max(single.values()) <= INT8_BOUND, single
    _assert_within_margin(_embedding_errors(engine, official), single)


def test_int8_tables_of_every_cut_are_the_checkpoint_s(int8_bundle):
    """Exact tables for the windowed cuts too: their padded keys and values are the
    qkv bias's k and v parts (a padded token is zero after the norm), so a table
    of zeros, or of another block's bias, is a wrong encoder."""
    reference, path = int8_bundle
    state = {k: v.detach().numpy() for k, v in reference.state_dict().items()}
    plan = json.loads((path / "manifest.json").read_text())["encoder_split"]
    assert any(a["window"] for a in plan["attention"])
    with np.load(path / plan["tables"]) as tables:
        for j, a in enumerate(plan["attention"]):
            key = f"image_encoder.blocks.{a['block']}.attn."
            np.testing.assert_array_equal(tables[f"rel_pos_h_{j}"], state[key + "rel_pos_h"])
            np.testing.assert_array_equal(tables[f"rel_pos_w_{j}"], state[key + "rel_pos_w"])
            np.testing.assert_array_equal(tables[f"kv_bias_{j}"], state[key + "qkv.bias"].reshape(3, 12, 64)[1:])
            assert np.abs(tables[f"kv_bias_{j}"]).max() > 0


def test_fully_cut_fp32_encoder_matches_the_single_graph(tmp_path, monkeypatch):
    """The fp32 bundle's encoder cut at every block, the windowed ones (padded
    16 -> 28) too, the kernel in fp32 against the bundle's single graph: the
    same math, so they agree to float32 rounding (1e-5), deterministically,
    where padding with the wrong key/value would not. The kernel's portable
    path runs where no fast one does, so this runs on every CPU."""
    import shutil

    from sam_edge.export.split_encoder import split_encoder_at_attention
    from sam_edge.precision import Compute
    from sam_edge.kernels import cpu_attention

    if not cpu_kernel_status()["available"]:
        pytest.skip("sam_edge._C is not built")
    # The plain graph (no fused attention, not split), then cut at every block here.
    _, _, path = build_test_bundle(tmp_path, reduced_config(depth=4), seed=6, official_decoder=False,
                                   fused_attention=False, split_encoder=False)
    copy = shutil.copytree(path, tmp_path / "cut-everywhere")
    plan = split_encoder_at_attention(str(copy / "encoder.onnx"), str(copy), reduced_config(depth=4),
                                      blocks=range(4), compute=Compute.FP32).to_json()
    assert [a["window"] for a in plan["attention"]] == [14, 0, 14, 0]
    plan["compute"] = "fp32"
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["encoder_split"] = plan
    (copy / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setattr(cpu_attention, "fast_compute", lambda head_dim, k_size, preferred: "fp32")
    cut = sam_edge.load(str(copy), native_attention=True, verify=False)
    assert cut.encoder_mode == "segments + sam-edge attention kernel (4 cuts, fp32)", cut.encoder_mode
    monkeypatch.undo()
    single = sam_edge.load(str(path), native_attention=False)
    images = np.random.default_rng(3).uniform(0, 255, (1, 3, 256, 200)).astype(np.float32)
    a, b = cut.embed(images), single.embed(images)
    assert rel_l2(a, b) <= 1e-5, rel_l2(a, b)
