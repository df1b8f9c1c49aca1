"""Graphs prepared for TensorRT (sam_edge.export.tensorrt_prepare)."""

import pytest

onnx = pytest.importorskip("onnx", reason="the TensorRT preparation reads graphs with the onnx package")
pytest.importorskip("onnxruntime", reason="prepared graphs are validated with ONNX Runtime")

from sam_edge.export import tensorrt_prepare as prep  # noqa: E402
from sam_edge.export.tensorrt_fp16 import qdq_float_parts_to_fp16  # noqa: E402

from tensorrt_graphs import rel_l2 as _rel_l2  # noqa: E402


def test_prepare_for_tensorrt(qdq, graphs, tmp_path):
    src, _ = qdq
    record = prep.prepare_for_tensorrt(src, str(tmp_path / "prepared.onnx"))
    assert record["path"] == str(tmp_path / "prepared.onnx") and record["qdq"]["quantizers_converted"] > 0
    again = prep.prepare_for_tensorrt(record["path"], str(tmp_path / "again.onnx"))
    assert again["path"] == record["path"], "a prepared graph needs no second rewrite"
    assert prep.prepare_for_tensorrt(graphs["fast"])["qdq"] is None
    with pytest.raises(ValueError, match="orig_im_size"):
        prep.prepare_for_tensorrt(graphs["trap"])


def test_real_int8_encoder_prepared_for_tensorrt(tmp_path, small_config, small_sam):
    """The ONNX bundles' QDQ encoder becomes TensorRT's symmetric int8 with an error against
    fp32 within the 255/127 step bound of the original's (see
    test_symmetric_int8_qdq_accuracy_in_onnxruntime)."""
    pytest.importorskip("skimage", reason="calibration photos come from scikit-image")
    from skimage import data

    from sam_edge.export import onnx_export as export
    from sam_edge.export import quantize

    sam = small_sam
    fp32 = export.export_encoder(sam, str(tmp_path / "encoder_fp32.onnx"))
    int8 = str(tmp_path / "encoder_int8.onnx")
    quantize.quantize_static_int8(fp32, int8, [data.astronaut(), data.coffee()], small_config.image_size,
                                  method="minmax", quiet=True)
    record = prep.prepare_for_tensorrt(int8, str(tmp_path / "encoder_trt.onnx"))
    assert record["qdq"]["quantizers_converted"] > 0
    x = quantize.encoder_input(data.chelsea(), small_config.image_size)
    reference = prep.run_onnxruntime(fp32, {"image": x})[0]
    original_error = _rel_l2(prep.run_onnxruntime(int8, {"image": x})[0], reference)
    assert _rel_l2(prep.run_onnxruntime(record["path"], {"image": x})[0], reference) <= 2.01 * 1.25 * original_error
    # With fp16 float parts (what the int8 TensorRT engine runs): at most the symmetric int8 graph's
    # error plus the fp16 conversion's alone, with 25% for randomness (test_qdq_float_parts_to_fp16_accuracy).
    half = prep.prepare_for_tensorrt(int8, str(tmp_path / "encoder_trt16.onnx"), fp16_float_parts=True)
    assert half["fp16_float_parts"]["fp16_tensors"] > 0 and "float16" in half["float_types"]
    fp16_only, _ = qdq_float_parts_to_fp16(onnx.load(fp32))
    run = lambda graph: prep.run_onnxruntime(graph, {"image": x}, optimize=False)[0]  # noqa: E731
    symmetric_error = _rel_l2(run(record["path"]), reference)
    fp16_error = _rel_l2(run(fp16_only.SerializeToString()), reference)
    assert _rel_l2(run(half["path"]), reference) <= 1.25 * (symmetric_error + fp16_error)
