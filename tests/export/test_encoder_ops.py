"""The encoder ops graph (export/encoder_ops.py): the encoder with each cut
attention, from its block's qkv projection to its proj input, one
sam_edge_ops RelPosAttention node; and how sam_edge.load runs it or falls back.

The bundle's standard-op encoder graph is the reference: in fp32 the two
compute the same math (the kernel's fp32 error is ~1e-7,
tests/kernels/test_cpu_attention.py), so they agree to 1e-5. int8 ops graphs
are held to a margin over their own standard graph's error against the
official fp32 model, on the same photos (INT8_MARGIN); the int8 bundles
calibrate on photos these tests do not evaluate on
(sam_fixtures.CALIBRATION_PHOTOS).
"""

import json

import numpy as np
import pytest

import sam_edge
from onnx_helpers import build_test_bundle, photos, reduced_config, rel_l2
from sam_edge.runtime.bundle import BundleError
from sam_edge.runtime.ort_ops import LIBRARY_ENV, library_refusal
from sam_edge.kernels.cpu_attention import fast_compute, cpu_kernel_status

FAST = fast_compute(64, (16, 16), "fp32") is not None
# The int8 standard graph's own error against the official model is held to the issue's
# int8 bound; the ops graph runs the same int8 linears and differs from it only in the
# attention of the cut blocks, whose rounding (float32 in the kernel's fp32 path, an 11- or
# 8-bit mantissa in fp16/bf16) is independent of int8's and far smaller: errors that add
# in quadrature, so the ops graph's error exceeds the standard graph's by well under 10%,
# plus INT8_ABS for rounding on photos where int8's error is small. A wrong cut, such as
# zeroed padding key/value in a windowed one, adds an error of int8's size or more.
INT8_BOUND, INT8_MARGIN, INT8_ABS = 0.05, 0.10, 2e-3
needs_ops = pytest.mark.skipif(
    not FAST or library_refusal() is not None,
    reason=f"sam_edge_ops cannot run here ({library_refusal() or 'no fast kernel path on this CPU'}): "
           "bundles run their standard-op encoder graph (test_a_refusing_library_falls_back shows it)")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    # Depth 4: global attention in blocks 1 and 3, so two cuts and a tensor
    # (the residual stream) that crosses both.
    _, checkpoint, path = build_test_bundle(
        tmp_path_factory.mktemp("ops-graph"), reduced_config(depth=4), seed=5, official_decoder=False
    )
    return checkpoint, path


def _graph(path, manifest=None):
    import onnx

    manifest = manifest or json.loads((path / "manifest.json").read_text())
    return onnx.load(str(path / manifest["encoder_ops"]["file"]), load_external_data=False)


def test_build_writes_the_ops_graph(bundle):
    _, path = bundle
    manifest = json.loads((path / "manifest.json").read_text())
    ops = manifest["encoder_ops"]
    assert ops["file"] == "encoder_ops.onnx" and ops["file"] in manifest["files"]
    assert ops["compute"] == "fp32" and (ops["domain"], ops["domain_version"]) == ("ai.sam_edge", 1)
    assert [a["block"] for a in ops["attention"]] == [1, 3]
    for a in ops["attention"]:
        assert a["heads"] == 12 and a["head_dim"] == 64 and a["k_size"] == [16, 16] and a["window"] == 0
        assert a["scale"] == pytest.approx(64 ** -0.5)
        assert a["qkv"].endswith("/attn/qkv/Add_output_0")
    assert not [name for name in manifest["files"] if "segment" in name]


def test_the_attention_is_one_node_per_cut(bundle):
    """Everything between a cut block's qkv and proj Linears is its RelPosAttention
    node: no Softmax of a cut block is left, and each node reads the block's qkv
    projection, rel-pos tables and padding key/value, as the checkpoint has them."""
    import torch
    from onnx import numpy_helper

    checkpoint, path = bundle
    manifest = json.loads((path / "manifest.json").read_text())
    model = _graph(path, manifest)
    assert ("ai.sam_edge", 1) in {(o.domain, o.version) for o in model.opset_import}
    nodes = [n for n in model.graph.node if n.op_type == "RelPosAttention"]
    cuts = manifest["encoder_ops"]["attention"]
    assert len(nodes) == len(cuts)
    state = torch.load(str(checkpoint), map_location="cpu")
    inits = {t.name: t for t in model.graph.initializer}
    for node, a in zip(nodes, cuts):
        assert node.domain == "ai.sam_edge"
        attributes = {x.name: x for x in node.attribute}
        assert attributes["heads"].i == 12 and attributes["window"].i == 0 and attributes["compute"].s == b"fp32"
        assert attributes["scale"].f == pytest.approx(a["scale"])
        assert node.input[0] == a["qkv"] and node.output[0] == a["output"]
        key = f"image_encoder.blocks.{a['block']}.attn."
        expected = [state[key + "rel_pos_h"], state[key + "rel_pos_w"], state[key + "qkv.bias"].view(3, 12, 64)[1:]]
        for name, want in zip(node.input[1:], expected):
            np.testing.assert_array_equal(numpy_helper.to_array(inits[name]), want.numpy())
        prefix = f"/image_encoder/blocks.{a['block']}/attn/"
        assert not [n.name for n in model.graph.node if n.name.startswith(prefix) and n.op_type == "Softmax"]


def test_weights_are_stored_once(bundle):
    """encoder.onnx and the ops graph read one weights file: the graph files
    together hold less than a tenth of its bytes."""
    _, path = bundle
    data = (path / "encoder.onnx.data").stat().st_size
    graphs = (path / "encoder.onnx").stat().st_size + (path / "encoder_ops.onnx").stat().st_size
    assert data > 10 * graphs, (data, graphs)


@needs_ops
def test_ops_graph_matches_the_standard_graph(bundle):
    _, path = bundle
    ops = sam_edge.load(str(path))
    standard = sam_edge.load(str(path), native_attention=False)
    assert ops.encoder_mode == "one graph + sam_edge_ops RelPosAttention (2 cuts, fp32)", ops.encoder_mode
    assert ops.encoder_fallback is None
    assert standard.encoder_mode == "single ONNX Runtime graph"
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (2, 3, 256, 192)).astype(np.float32)  # a batch, not square
    a, b = ops.embed(images), standard.embed(images)
    assert a.shape == b.shape == (2, 256, 16, 16)
    assert rel_l2(a, b) <= 1e-5
    # The predictor's whole path, on a photo.
    image = photos()["portrait"]
    out = []
    for engine in (ops, standard):
        predictor = sam_edge.SamPredictor(engine)
        predictor.set_image(image)
        out.append(predictor.predict(point_coords=np.array([[60.0, 90.0]]), point_labels=np.array([1]))[2])
    assert rel_l2(out[0], out[1]) <= 1e-4


@pytest.mark.parametrize("library", ["missing", "not a library"])
def test_a_refusing_library_falls_back(bundle, tmp_path, monkeypatch, library):
    """Without the op library, or with one that does not register (here: not an
    ELF file; likewise a CPU without AVX-512 or an older onnxruntime, each with
    its own message), the bundle runs its standard graph and says why;
    native_attention=True is a BundleError carrying the reason."""
    _, path = bundle
    fake = tmp_path / "libsam_edge_ops.so"
    if library == "not a library":
        fake.write_bytes(b"not an ELF file")
    monkeypatch.setenv(LIBRARY_ENV, str(fake))
    engine = sam_edge.load(str(path), verify=False)
    assert engine.encoder_mode == "single ONNX Runtime graph"
    reason = "which is not a file" if library == "missing" else "does not register"
    assert reason in engine.encoder_fallback, engine.encoder_fallback
    image = np.random.default_rng(1).uniform(0, 255, (1, 3, 256, 256)).astype(np.float32)
    assert np.isfinite(engine.embed(image)).all()
    with pytest.raises(BundleError, match=reason):
        sam_edge.load(str(path), verify=False, native_attention=True)


@needs_ops
def test_an_ops_graph_the_library_cannot_run_falls_back(bundle, tmp_path):
    """A graph needing an op this library build lacks (a bundle from a newer
    sam-edge, or a library from an older one) fails its session, not the load:
    the bundle runs its standard graph and says why; native_attention=True is a
    BundleError with the reason."""
    import shutil

    import onnx

    _, path = bundle
    copy = shutil.copytree(path, tmp_path / "newer-op")
    model = _graph(copy)
    next(n for n in model.graph.node if n.op_type == "RelPosAttention").op_type = "RelPosAttentionFromTheFuture"
    onnx.save_model(model, str(copy / "encoder_ops.onnx"))
    engine = sam_edge.load(str(copy), verify=False)
    assert engine.encoder_mode == "single ONNX Runtime graph"
    assert "encoder ops graph does not load with" in engine.encoder_fallback, engine.encoder_fallback
    assert "RelPosAttentionFromTheFuture" in engine.encoder_fallback, engine.encoder_fallback
    image = np.random.default_rng(2).uniform(0, 255, (1, 3, 256, 256)).astype(np.float32)
    assert rel_l2(engine.embed(image), sam_edge.load(str(path), native_attention=False).embed(image)) == 0
    with pytest.raises(BundleError, match="encoder ops graph does not load with"):
        sam_edge.load(str(copy), verify=False, native_attention=True)


def test_a_bundle_without_the_ops_graph_runs_the_standard_graph(bundle, tmp_path):
    """Bundles built with --no-ops-graph, or by a sam-edge from before it (their
    manifest may carry the old "encoder_split" plan), load their standard graph."""
    from sam_edge.export.build import build_bundle

    checkpoint, _ = bundle
    out = tmp_path / "plain"
    build_bundle(str(out), reduced_config(depth=4), checkpoint=str(checkpoint), ops_graph=False,
                 official_decoder=False, quiet=True)
    manifest = json.loads((out / "manifest.json").read_text())
    assert "encoder_ops" not in manifest and "encoder_ops.onnx" not in manifest["files"]
    manifest["encoder_split"] = {"segments": [{"file": "encoder_segment_0.onnx"}]}  # an older sam-edge's plan
    (out / "manifest.json").write_text(json.dumps(manifest))
    engine = sam_edge.load(str(out))
    assert engine.encoder_mode == "single ONNX Runtime graph" and "no encoder ops graph" in engine.encoder_fallback
    with pytest.raises(BundleError, match="has no encoder ops graph"):
        sam_edge.load(str(out), native_attention=True)


@pytest.mark.parametrize("damage, message", [
    (lambda m: m["encoder_ops"].update(domain_version=2), "needs the op domain 'ai.sam_edge' version 2"),
    (lambda m: m["encoder_ops"].update(file="../encoder_ops.onnx"), "names a file outside the bundle"),
    (lambda m: m["files"].pop("encoder_ops.onnx"), "encoder ops graph 'encoder_ops.onnx' is not among its hashed"),
])
def test_a_damaged_ops_graph_entry_is_a_bundle_error(bundle, tmp_path, damage, message):
    import shutil

    _, path = bundle
    copy = shutil.copytree(path, tmp_path / "damaged")
    manifest = json.loads((copy / "manifest.json").read_text())
    damage(manifest)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=message):
        sam_edge.load(str(copy))


def test_cut_refuses_a_graph_without_the_pattern(bundle):
    """The fused graph has no Softmax in its global blocks: cutting it is an error, not a silent no-op."""
    from sam_edge.export.encoder_ops import cut_encoder

    _, path = bundle
    with pytest.raises(ValueError, match="expected one Softmax"):
        cut_encoder(str(path / "encoder.onnx"), reduced_config(depth=4),
                    blocks=reduced_config(depth=4).encoder_global_attn_indexes)


@pytest.fixture(scope="module")
def int8_bundle(tmp_path_factory, calibration_dir):
    reference, _, path = build_test_bundle(
        tmp_path_factory.mktemp("ops-graph-int8"), reduced_config(depth=4), seed=5, precision="int8",
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
def int8_standard_errors(int8_bundle):
    """(official embeddings, the int8 standard graph's errors against them): the baseline of the margin."""
    reference, path = int8_bundle
    official = _official_embeddings(reference)
    errors = _embedding_errors(sam_edge.load(str(path), native_attention=False), official)
    assert max(errors.values()) <= INT8_BOUND, errors
    return official, errors


def _assert_within_margin(errors: dict, standard: dict) -> None:
    for name, error in errors.items():
        bound = standard[name] * (1 + INT8_MARGIN) + INT8_ABS
        assert error <= bound, f"{name}: ops graph {error:.4e} > {bound:.4e} (standard graph {standard[name]:.4e})"


def _load_anywhere(path, monkeypatch, **options):
    """sam_edge.load with the ops graph admitted on any CPU the library registers on:
    the op runs the kernel's portable fp32 loop where no fast path takes a cut."""
    from sam_edge.kernels import cpu_attention

    if library_refusal() is not None:
        pytest.skip(f"sam_edge_ops cannot run here: {library_refusal()}")
    monkeypatch.setattr(cpu_attention, "fast_compute", lambda head_dim, k_size, preferred: preferred)
    engine = sam_edge.load(str(path), native_attention=True, **options)
    monkeypatch.undo()
    return engine


def test_int8_bundle_cuts_every_block(int8_bundle):
    """int8 bundles (head_dim 64) are cut at the windowed blocks too, for the reduced-precision paths."""
    _, path = int8_bundle
    ops = json.loads((path / "manifest.json").read_text())["encoder_ops"]
    assert ops["compute"] == "bf16"
    assert [a["block"] for a in ops["attention"]] == [0, 1, 2, 3]
    assert [a["k_size"] for a in ops["attention"]] == [[14, 14], [16, 16], [14, 14], [16, 16]]
    assert [a["window"] for a in ops["attention"]] == [14, 0, 14, 0]  # 16 x 16 grid: 2 x 2 padded windows


def test_int8_ops_graph_in_fp32_within_a_margin_of_the_standard_graph(int8_bundle, int8_standard_errors,
                                                                      monkeypatch):
    """The int8 ops graph cut at every block (windowed ones padded 16 -> 28), the op
    in fp32, within INT8_MARGIN of the int8 standard graph's own error against the
    official fp32 model, photo by photo."""
    _, path = int8_bundle
    official, standard = int8_standard_errors
    engine = _load_anywhere(path, monkeypatch, attention_compute="fp32")
    assert engine.encoder_mode == "one graph + sam_edge_ops RelPosAttention (4 cuts, fp32)", engine.encoder_mode
    errors = _embedding_errors(engine, official)
    print("int8 embedding rel-L2, standard graph:", standard, "ops graph (fp32 op):", errors)
    _assert_within_margin(errors, standard)


@pytest.mark.skipif(fast_compute(64, (14, 14), "bf16") in (None, "fp32"),
                    reason="this CPU has no reduced-precision attention path (AVX512-FP16, AVX512-BF16 or AMX)")
def test_int8_ops_graph_in_reduced_precision_within_a_margin_of_the_standard_graph(int8_bundle,
                                                                                   int8_standard_errors):
    """The default load (the bundle's bf16, or the nearest reduced path this CPU has)
    and each reduced compute this CPU runs, within INT8_MARGIN of the int8 standard
    graph's own error against the official model."""
    _, path = int8_bundle
    official, standard = int8_standard_errors
    runs = [None] + [c for c in ("fp16", "bf16") if fast_compute(64, (14, 14), c) == c]
    for compute in runs:
        engine = sam_edge.load(str(path), attention_compute=compute)
        expected = fast_compute(64, (14, 14), compute or "bf16")
        assert engine.encoder_mode.endswith(f"(4 cuts, {expected})"), engine.encoder_mode
        errors = _embedding_errors(engine, official)
        print(engine.encoder_mode, errors, "standard graph:", standard)
        _assert_within_margin(errors, standard)


def test_static_int8_linears_take_their_bias(int8_bundle):
    """Every static-int8 Linear of the ops graph is one MatMulIntegerToFloat that adds
    the bias: no float MatMul on dequantized weights, no bias Add after it."""
    _, path = int8_bundle
    model = _graph(path)
    producer = {o: n for n in model.graph.node for o in n.output}
    fused = 0
    for node in model.graph.node:
        if node.op_type == "MatMul":
            assert not any(getattr(producer.get(i), "op_type", "") == "DequantizeLinear" for i in node.input), \
                node.name
        if node.op_type == "MatMulIntegerToFloat":
            assert node.domain == "com.microsoft" and len(node.input) == 7 and node.input[6], node.name
            fused += 1
    assert any(o.domain == "com.microsoft" for o in model.opset_import)
    assert fused == 4 * 4  # depth 4: qkv, proj, lin1, lin2


def test_quantized_linear_fusion_against_float64():
    """The fused MatMulIntegerToFloat computes DQ(x_q) @ DQ(W_q) + bias as the QDQ graph
    does: both within float32 rounding of the float64 math on the same quantized values."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from sam_edge.export.encoder_ops import _fuse_quantized_linear_bias
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


def test_vit_h_int8_bundle_cuts_every_block(tmp_path, calibration_dir):
    """ViT-H (head_dim 80, which the fp16 path does not cover): int8 bundles are cut at
    every block for the bf16 paths (AMX or AVX512-BF16); they run within INT8_MARGIN
    of the int8 standard graph's own error against the official fp32 model."""
    config = reduced_config("vit_h", depth=2)
    reference, _, path = build_test_bundle(tmp_path, config, seed=9, precision="int8", official_decoder=False,
                                           calib_images=calibration_dir)
    ops = json.loads((path / "manifest.json").read_text())["encoder_ops"]
    assert [a["block"] for a in ops["attention"]] == list(range(config.encoder_depth))
    assert {a["window"] for a in ops["attention"]} == {0, config.window_size}
    assert {a["head_dim"] for a in ops["attention"]} == {80}
    engine = sam_edge.load(str(path))
    computes = {fast_compute(80, tuple(a["k_size"]), "bf16") for a in ops["attention"]}
    if None in computes or library_refusal() is not None:
        assert engine.encoder_mode == "single ONNX Runtime graph"
        pytest.skip(f"sam_edge_ops cannot run here ({library_refusal() or 'no fast kernel path for every cut'}): "
                    "the ViT-H bundle loads its standard encoder graph (checked)")
    assert engine.encoder_mode.endswith(f"({len(ops['attention'])} cuts, {', '.join(sorted(computes))})"), \
        engine.encoder_mode
    official = _official_embeddings(reference)
    standard = _embedding_errors(sam_edge.load(str(path), native_attention=False), official)
    assert max(standard.values()) <= INT8_BOUND, standard
    _assert_within_margin(_embedding_errors(engine, official), standard)


def test_fully_cut_fp32_encoder_matches_the_standard_graph(tmp_path, monkeypatch):
    """The fp32 encoder cut at every block, the windowed ones (padded 16 -> 28) too,
    the op in fp32, against the bundle's standard graph: the same math, so they
    agree to float32 rounding (1e-5), where padding with the wrong key/value
    would not. The op runs the kernel's portable loop where no fast path does,
    so this runs on every CPU the library registers on."""
    import shutil

    from sam_edge.export.encoder_ops import encoder_ops_graph
    from sam_edge.precision import Compute

    # The plain graph (no fused attention, no ops graph), then cut at every block here.
    _, _, path = build_test_bundle(tmp_path, reduced_config(depth=4), seed=6, official_decoder=False,
                                   fused_attention=False, ops_graph=False)
    copy = shutil.copytree(path, tmp_path / "cut-everywhere")
    graph = encoder_ops_graph(str(copy / "encoder.onnx"), reduced_config(depth=4), blocks=range(4),
                              compute=Compute.FP32)
    assert [a.window for a in graph.attention] == [14, 0, 14, 0]
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["encoder_ops"] = graph.to_json()
    (copy / "manifest.json").write_text(json.dumps(manifest))
    cut = _load_anywhere(copy, monkeypatch, verify=False)
    assert cut.encoder_mode == "one graph + sam_edge_ops RelPosAttention (4 cuts, fp32)", cut.encoder_mode
    standard = sam_edge.load(str(path), native_attention=False)
    images = np.random.default_rng(3).uniform(0, 255, (1, 3, 256, 200)).astype(np.float32)
    a, b = cut.embed(images), standard.embed(images)
    assert rel_l2(a, b) <= 1e-5, rel_l2(a, b)


@pytest.fixture(scope="module")
def int8_plain_bundle(tmp_path_factory, calibration_dir):
    """The int8 bundle with its encoder.onnx left plain (no contrib attention), so
    that its ops graph can be cut again here, with the quantize fusions."""
    reference, _, path = build_test_bundle(
        tmp_path_factory.mktemp("ops-graph-int8-plain"), reduced_config(depth=4), seed=5, precision="int8",
        official_decoder=False, calib_images=calibration_dir, fused_attention=False,
    )
    return reference, path


#: Quantize fusions in the int8 ops graph of depth 4: one GELU per block; the
#: first block's first norm alone reads no residual Add, the 7 others do.
FUSED_NODES = {"GeluQuantizeLinear": 4, "LayerNormQuantizeLinear": 1, "SkipLayerNormQuantizeLinear": 7}
#: The fused ops round each value as QuantizeLinear does except within float32
#: rounding of a boundary, where one step may flip (tests/kernels/test_ort_ops.py).
#: The int8 graph carries such a flip on as it does any float32 rounding of its
#: input, which moves its quantized values just as much: the unfused graph's own
#: change when its input is scaled by 1 + 2^-22 (a few float32 roundings) is the
#: baseline, and the fused graph stays within FUSED_FACTOR of it.
FUSED_FACTOR = 2.0


@needs_ops
def test_int8_quantize_fusions_against_the_unfused_graph(int8_plain_bundle, tmp_path, monkeypatch):
    """The int8 ops graph cut with the quantize fusions (bundles get none by default:
    encoder_ops.DEFAULT_FUSIONS); against the bundle's graph without them its
    embeddings agree to FUSED_FACTOR of input rounding's own effect, and against the
    official fp32 model it stays within INT8_MARGIN of the standard graph."""
    import collections
    import shutil

    from sam_edge.export.encoder_ops import attention_blocks, encoder_ops_graph
    from sam_edge.export.quantize_fusions import FUSIONS
    from sam_edge.precision import Compute

    reference, path = int8_plain_bundle
    config = reduced_config(depth=4)
    assert not {n.op_type for n in _graph(path).graph.node} & set(FUSED_NODES)
    fused_path = shutil.copytree(path, tmp_path / "fused")
    ops = json.loads((path / "manifest.json").read_text())["encoder_ops"]
    graph = encoder_ops_graph(str(fused_path / "encoder.onnx"), config,
                              attention_blocks(config, Compute.parse(ops["compute"])),
                              ops["compute"], fusions=FUSIONS)
    types = collections.Counter(n.op_type for n in _graph(fused_path).graph.node)
    assert {op: types[op] for op in FUSED_NODES} == FUSED_NODES, types
    assert types["Erf"] == 0 and types["LayerNormalization"] == 0, types
    assert graph.to_json() == ops
    # verify=False: the copy's ops graph no longer matches the manifest's hash.
    fused = _load_anywhere(fused_path, monkeypatch, attention_compute="fp32", verify=False)
    unfused = _load_anywhere(path, monkeypatch, attention_compute="fp32")
    images = np.random.default_rng(4).uniform(0, 255, (2, 3, 256, 224)).astype(np.float32)
    reference_embedding = unfused.embed(images)
    error = rel_l2(fused.embed(images), reference_embedding)
    baseline = rel_l2(unfused.embed(images * np.float32(1 + 2.0 ** -22)), reference_embedding)
    print(f"fused against unfused, rel-L2: {error:.3e}; the unfused graph's change under input rounding: {baseline:.3e}")
    assert baseline > 0  # the perturbation must reach the quantizers for the baseline to mean anything
    assert error <= FUSED_FACTOR * baseline, (error, baseline)
    official = _official_embeddings(reference)
    standard = _embedding_errors(sam_edge.load(str(path), native_attention=False), official)
    assert max(standard.values()) <= INT8_BOUND, standard
    _assert_within_margin(_embedding_errors(fused, official), standard)
