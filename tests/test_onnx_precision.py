"""fp16 and int8 bundles against the official fp32 model.

Tolerances, from the issue's acceptance criteria and the precision:
fp16 (10-bit mantissa, ~5e-4 relative per rounding, fp32 islands for the
statistics): low-res logits rel-L2 <= 1e-2. int8 (8-bit weights and
activations in the linear layers): logits rel-L2 <= 0.05 and mean mask IoU
>= 0.95, all against the fp32 reference.
"""

import numpy as np
import onnx
import pytest

import sam_edge
from _onnx_helpers import build_test_bundle, mask_iou, photos, prompt_kinds, reduced_config, rel_l2

TOLERANCES = {"fp16": (1e-2, 0.99), "int8": (0.05, 0.95), "int8-dynamic": (0.05, 0.95)}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("precision")


@pytest.mark.parametrize("precision", ["fp16", "int8", "int8-dynamic"])
def test_reduced_precision_bundle_against_fp32_reference(root, precision):
    from segment_anything import SamPredictor as OfficialPredictor

    reference, _, bundle = build_test_bundle(
        root, reduced_config(), seed=8, precision=precision, official_decoder=False
    )
    max_rel_l2, min_mean_iou = TOLERANCES[precision]
    ours, official = sam_edge.SamPredictor(sam_edge.load(str(bundle))), OfficialPredictor(reference)
    errors, ious = [], []
    rng = np.random.default_rng(9)
    for image in photos().values():
        ours.set_image(image)
        official.set_image(image)
        for kwargs in prompt_kinds(image.shape, rng).values():
            m1, _, l1 = ours.predict(multimask_output=True, **kwargs)
            m2, _, l2 = official.predict(multimask_output=True, **kwargs)
            errors.append(rel_l2(l1, l2))
            ious.extend(mask_iou(a, b) for a, b in zip(m1, m2))
    print(f"{precision}: logits rel-L2 max {max(errors):.2e}, mask IoU mean {np.mean(ious):.4f} min {min(ious):.4f}")
    assert max(errors) <= max_rel_l2
    assert np.mean(ious) >= min_mean_iou
    if precision == "int8":
        # Every linear layer is quantized, those after the fused global attention
        # included (qkv, proj, lin1, lin2 per block + patch embed).
        graph = onnx.load(str(bundle / "encoder.onnx")).graph
        ops = [n.op_type for n in graph.node]
        config = reduced_config()
        assert ops.count("MultiHeadAttention") == len(config.encoder_global_attn_indexes)
        assert ops.count("QuantizeLinear") == 4 * config.encoder_depth + 1


def test_int8_graph_quantizes_only_the_linear_layers(tmp_path):
    """QDQ pairs sit on the inputs of weight MatMuls and the patch embedding;
    softmax, rel-pos and LayerNorm inputs stay float."""
    from _onnx_helpers import save_official_checkpoint
    from sam_edge.export import quantize
    from sam_edge.export.onnx_export import export_encoder

    config = reduced_config()
    save_official_checkpoint(config, 10, tmp_path / "ck.pth")
    export_encoder(sam_edge.build_sam_from_config(config, tmp_path / "ck.pth"), str(tmp_path / "fp32.onnx"))
    images, _ = quantize.calibration_images(limit=2)
    quantize.quantize_static_int8(str(tmp_path / "fp32.onnx"), str(tmp_path / "int8.onnx"), images, 256, quiet=True)
    model = onnx.load(str(tmp_path / "int8.onnx"))
    graph = model.graph
    rel_pos = {n.name for n in quantize.rel_pos_nodes(onnx.load(str(tmp_path / "fp32.onnx")))}
    assert len(rel_pos) == 2 * config.encoder_depth  # rows and columns, per block
    producer = {out: node for node in graph.node for out in node.output}
    for node in graph.node:
        if node.op_type in ("Softmax", "LayerNormalization") or node.name in rel_pos:
            dequantized = [i for i in node.input if i in producer and producer[i].op_type == "DequantizeLinear"]
            assert not dequantized, node.name
    quantized_activations = [n for n in graph.node if n.op_type == "QuantizeLinear"]
    assert len(quantized_activations) == 4 * config.encoder_depth + 1  # qkv, proj, lin1, lin2 per block + patch embed


def test_in_graph_calibration_statistics_match_numpy(tmp_path):
    """The ranges computed inside the graph (ReduceMin/ReduceMax/TopK) equal numpy's
    over the same activations fetched whole: min/max, and the percentile as the
    order statistic of |x| over all images. The two sessions run different graphs,
    so ONNX Runtime fuses differently and activations differ by float32 rounding:
    rtol 1e-5 (a few ulp through two blocks)."""
    import onnxruntime as ort

    from _onnx_helpers import save_official_checkpoint
    from sam_edge.export import quantize
    from sam_edge.export.onnx_export import export_encoder

    config = reduced_config()
    save_official_checkpoint(config, 11, tmp_path / "ck.pth")
    src = str(tmp_path / "fp32.onnx")
    export_encoder(sam_edge.build_sam_from_config(config, tmp_path / "ck.pth"), src)
    model = onnx.load(src)
    tensors = sorted({n.input[0] for n in quantize.quantizable_nodes(model)})
    inputs = [quantize.encoder_input(image, 256) for image in list(photos().values())[:3]]

    # The reference: every activation returned whole, statistics in numpy.
    del model.graph.output[:]
    model.graph.output.extend(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None) for t in tensors)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    values = {t: [] for t in tensors}
    for x in inputs:
        for t, value in zip(tensors, session.run(tensors, {"image": x})):
            values[t].append(value.ravel())
    values = {t: np.concatenate(v) for t, v in values.items()}

    minmax = quantize.collect_ranges(src, tensors, inputs, method="minmax", progress=False)
    for percentile in (99.9, 99.999):
        clipped = quantize.collect_ranges(src, tensors, inputs, method="percentile", percentile=percentile,
                                          progress=False)
        for t, v in values.items():
            np.testing.assert_allclose(minmax[t], (v.min(), v.max()), rtol=1e-5, err_msg=t)
            j = int(np.floor((1 - percentile / 100) * v.size))
            bound = np.sort(np.abs(v))[::-1][j]
            expected = (max(v.min(), -bound), min(v.max(), bound))
            np.testing.assert_allclose(clipped[t], expected, rtol=1e-5, err_msg=t)
    assert any(clipped[t] != minmax[t] for t in tensors)  # the percentile did clip something


def test_calibration_refuses_bad_arguments(tmp_path):
    from sam_edge.export import quantize

    with pytest.raises(ValueError, match="minmax"):
        quantize.collect_ranges(str(tmp_path / "x.onnx"), [], [], method="kl")
    with pytest.raises(ValueError, match="percentile"):
        quantize.collect_ranges(str(tmp_path / "x.onnx"), [], [], method="percentile", percentile=0)
    with pytest.raises(ValueError, match="num_inputs"):
        quantize.collect_ranges(str(tmp_path / "x.onnx"), [], lambda: iter([]), method="percentile")
