"""The exported graphs themselves: decoder semantics against the official
SamOnnxModel (run eagerly, where its sizes are right), dynamic prompt batch
and point count, every image size and aspect ratio, graph structure, and
export of the larger encoders.

Tolerances as in test_onnx_parity.py (fp32 vs fp32): rel-L2 <= 1e-3, IoU >= 0.99.
"""

import numpy as np
import onnxruntime as ort
import pytest
import torch

import sam_edge
from onnx_helpers import build_test_bundle, mask_iou, reduced_config, rel_l2, save_official_checkpoint

REL_L2 = 1e-3
MASK_IOU = 0.99


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    reference, _, bundle = build_test_bundle(tmp_path_factory.mktemp("graphs"), reduced_config(), seed=4)
    return reference, bundle


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _random_feed(config, batch, points, with_mask, rng):
    g, m = config.image_embedding_size, config.mask_input_size
    labels = rng.choice([-1.0, 0.0, 1.0, 2.0, 3.0], size=(batch, points)).astype(np.float32)
    return {
        "image_embeddings": rng.normal(0, 1, (1, 256, g, g)).astype(np.float32),
        "point_coords": rng.uniform(0, config.image_size, (batch, points, 2)).astype(np.float32),
        "point_labels": labels,
        "mask_input": rng.normal(0, 3, (batch, 1, m, m)).astype(np.float32),
        "has_mask_input": np.full(1, float(with_mask), np.float32),
    }


def _official_onnx_model(reference, feed, orig_im_size):
    from segment_anything.utils.onnx import SamOnnxModel

    model = SamOnnxModel(reference, return_single_mask=False).eval()
    names = ("image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input")
    args = [torch.from_numpy(feed[k]) for k in names]
    return [t.numpy() for t in model(*args, torch.tensor(orig_im_size, dtype=torch.float32))]


@pytest.mark.parametrize("orig_im_size", [(180, 320), (320, 180), (250, 250), (999, 37)])
@pytest.mark.parametrize("batch,points,with_mask", [(1, 1, False), (3, 5, True)])
def test_official_decoder_matches_official_at_every_aspect_ratio(built, orig_im_size, batch, points, with_mask):
    reference, bundle = built
    rng = np.random.default_rng(hash((orig_im_size, batch)) % 2**32)
    feed = _random_feed(reduced_config(), batch, points, with_mask, rng)
    masks, iou, low_res = _session(bundle / "decoder_official.onnx").run(
        None, dict(feed, orig_im_size=np.array(orig_im_size, np.float32))
    )
    ref_masks, ref_iou, ref_low_res = _official_onnx_model(reference, feed, orig_im_size)
    assert masks.shape == ref_masks.shape == (batch, 4) + tuple(orig_im_size)
    assert rel_l2(low_res, ref_low_res) <= REL_L2
    assert rel_l2(masks, ref_masks) <= REL_L2
    np.testing.assert_allclose(iou, ref_iou, atol=1e-3, rtol=0)
    for a, b in zip(masks.reshape(-1, *orig_im_size), ref_masks.reshape(-1, *orig_im_size)):
        assert mask_iou(a > 0, b > 0) >= MASK_IOU


@pytest.mark.parametrize("batch,points", [(1, 1), (2, 2), (7, 4), (16, 9)])
def test_fast_decoder_dynamic_prompts_and_points(built, batch, points):
    reference, bundle = built
    rng = np.random.default_rng(batch * 100 + points)
    feed = _random_feed(reduced_config(), batch, points, True, rng)
    iou, low_res = _session(bundle / "decoder.onnx").run(None, feed)
    _, ref_iou, ref_low_res = _official_onnx_model(reference, feed, (256, 256))
    assert low_res.shape == (batch, 4, 64, 64) and iou.shape == (batch, 4)
    assert rel_l2(low_res, ref_low_res) <= REL_L2
    np.testing.assert_allclose(iou, ref_iou, atol=1e-3, rtol=0)
    # One prompt of the batch alone gives the same answer as inside the batch.
    per_prompt = ("point_coords", "point_labels", "mask_input")
    single = {k: (v[2:3] if k in per_prompt else v) for k, v in feed.items()}
    if batch > 2:
        iou_one, low_one = _session(bundle / "decoder.onnx").run(None, single)
        assert rel_l2(low_one[0], low_res[2]) <= 1e-5


def test_mask_input_shared_across_prompts(built):
    """A (1, 1, m, m) mask_input broadcasts over B prompts."""
    _, bundle = built
    rng = np.random.default_rng(5)
    feed = _random_feed(reduced_config(), 4, 3, True, rng)
    shared = dict(feed, mask_input=feed["mask_input"][:1])
    repeated = dict(feed, mask_input=np.repeat(feed["mask_input"][:1], 4, axis=0))
    session = _session(bundle / "decoder.onnx")
    # Same math, different batch layout: agreement to float32 rounding.
    assert rel_l2(session.run(None, shared)[1], session.run(None, repeated)[1]) <= 1e-5


def test_encoder_graph_structure(built):
    """Every windowed attention is MatMul -> Add(bias) -> Softmax -> MatMul and every
    global one ONNX Runtime's fused MultiHeadAttention; the rel-pos gather indices
    are constants (no Range / index arithmetic left)."""
    from sam_edge.export.onnx_export import attention_pattern_count, op_counts

    _, bundle = built
    config = reduced_config()
    counts = op_counts(str(bundle / "encoder.onnx"))
    softmaxes, fused = attention_pattern_count(str(bundle / "encoder.onnx"))
    assert len(config.encoder_global_attn_indexes) >= 1
    assert counts["MultiHeadAttention"] == len(config.encoder_global_attn_indexes)
    assert softmaxes == config.encoder_depth - len(config.encoder_global_attn_indexes)
    assert fused == softmaxes
    assert "Range" not in counts
    # Node counts as exported; recorded so a change in the graph shows up here.
    print("encoder op counts:", dict(sorted(counts.items())))


def test_encoder_dynamic_batch(built):
    reference, bundle = built
    config = reduced_config()
    x = torch.randn(3, 3, config.image_size, config.image_size)
    out = _session(bundle / "encoder.onnx").run(None, {"image": x.numpy()})[0]
    with torch.no_grad():
        ref = reference.image_encoder(x).numpy()
    assert out.shape == (3, 256, 16, 16)
    for i in range(3):
        assert rel_l2(out[i], ref[i]) <= REL_L2


@pytest.mark.parametrize("model", ["vit_l", "vit_h"])
def test_larger_encoders_export_at_reduced_depth(tmp_path, model):
    from sam_edge.export.onnx_export import export_encoder

    config = reduced_config(model)
    reference = save_official_checkpoint(config, 6, tmp_path / "ck.pth")
    ours = sam_edge.build_sam_from_config(config, tmp_path / "ck.pth")
    export_encoder(ours, str(tmp_path / "encoder.onnx"))
    x = torch.randn(1, 3, config.image_size, config.image_size)
    out = _session(tmp_path / "encoder.onnx").run(None, {"image": x.numpy()})[0]
    with torch.no_grad():
        ref = reference.image_encoder(x).numpy()
    assert rel_l2(out, ref) <= REL_L2


def test_fused_global_attention_is_the_same_graph(tmp_path):
    """fuse_global_attention rewrites the global blocks' attention into one op; ONNX
    Runtime then runs the same products, so the outputs agree to float32 rounding
    (rel-L2 <= 1e-6) on a fresh random image, and the unfused graph has no contrib op."""
    import shutil

    from sam_edge.export.onnx_export import export_encoder, fuse_global_attention, op_counts

    config = reduced_config()
    plain = str(tmp_path / "plain.onnx")
    fused = str(tmp_path / "fused.onnx")
    save_official_checkpoint(config, 3, tmp_path / "ck.pth")  # every parameter random, rel-pos included
    export_encoder(sam_edge.build_sam_from_config(config, tmp_path / "ck.pth"), plain)
    shutil.copy(plain, fused)
    assert fuse_global_attention(fused, config) == len(config.encoder_global_attn_indexes)
    assert "MultiHeadAttention" not in op_counts(plain)
    # No initializer is left without a reader (ORT warned about each at every load).
    import onnx

    graph = onnx.load(fused).graph
    read = {i for node in graph.node for i in node.input}
    assert [t.name for t in graph.initializer if t.name not in read] == []
    x = np.random.default_rng(5).standard_normal((2, 3, config.image_size, config.image_size)).astype(np.float32)
    expected = _session(plain).run(None, {"image": x})[0]
    assert rel_l2(_session(fused).run(None, {"image": x})[0], expected) <= 1e-6


@pytest.fixture(scope="module")
def full_grid_split_decoder(tmp_path_factory):
    """(official reference, image part, prompt part, path of the prompt ops graph) of the
    split decoder at the official 1024 px input (a 64 x 64 grid, the size the decoder
    runs at); the encoder is not exported."""
    from sam_edge.export.onnx_export import export_split_decoder

    root = tmp_path_factory.mktemp("split_decoder")
    config = reduced_config(image_size=1024)
    reference = save_official_checkpoint(config, 8, root / "ck.pth")
    ours = sam_edge.build_sam_from_config(config, root / "ck.pth").eval()
    image_path, prompt_path = export_split_decoder(ours, str(root / "image.onnx"), str(root / "prompt.onnx"),
                                                   prompt_ops_path=str(root / "prompt_ops.onnx"))
    return reference, _session(image_path), _session(prompt_path), root / "prompt_ops.onnx"


@pytest.mark.parametrize("batch,points", [(1, 1), (1, 4), (3, 2)])
def test_split_decoder_matches_official_at_full_grid(full_grid_split_decoder, batch, points):
    """The prompt part over the image part's outputs against the official decoder (no
    mask_input) on a fresh random embedding and prompts, at the fp32 tolerances above."""
    reference, image_part, prompt_part, _ = full_grid_split_decoder
    config = reduced_config(image_size=1024)
    rng = np.random.default_rng(batch * 10 + points)
    feed = _random_feed(config, batch, points, False, rng)
    names = [o.name for o in image_part.get_outputs()]
    prompt_feed = dict(zip(names, image_part.run(None, {"image_embeddings": feed["image_embeddings"]})))
    prompt_feed.update(point_coords=feed["point_coords"], point_labels=feed["point_labels"])
    iou, low_res = prompt_part.run(None, prompt_feed)
    _, ref_iou, ref_low_res = _official_onnx_model(reference, feed, (1024, 1024))
    assert low_res.shape == ref_low_res.shape == (batch, 4, 256, 256)
    assert rel_l2(low_res, ref_low_res) <= REL_L2
    np.testing.assert_allclose(iou, ref_iou, atol=1e-3, rtol=0)
    for a, b in zip(low_res.reshape(-1, 256, 256), ref_low_res.reshape(-1, 256, 256)):
        assert mask_iou(a > 0, b > 0) >= MASK_IOU


# The ops prompt graph against the standard one: both float32, differing only in the
# mask upscaling's rounding. Each is within ~2x torch float32's error of float64
# (tests/kernels/test_mask_upscale.py), a few 1e-7 of the logits' norm, so their
# difference is at most about twice that; 2e-6 is that with a margin. A wrong
# layout or weight is O(1).
OPS_REL_L2 = 2e-6


def test_prompt_ops_graph_holds_one_mask_upscale_node(full_grid_split_decoder):
    import onnx

    from sam_edge.runtime.ort_ops import DOMAIN, DOMAIN_VERSION

    model = onnx.load(str(full_grid_split_decoder[3]))
    ops = [n for n in model.graph.node if n.domain == DOMAIN]
    assert [n.op_type for n in ops] == ["MaskUpscale"]
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in ops[0].attribute}
    assert attributes["height"] == attributes["width"] == 64 and attributes["epsilon"] == pytest.approx(1e-6)
    initializers = {t.name: t.dims for t in model.graph.initializer}
    assert [list(initializers[name]) for name in ops[0].input[2:]] == [[256, 64, 2, 2], [64], [64], [64],
                                                                        [64, 32, 2, 2], [32]]
    assert {(o.domain, o.version) for o in model.opset_import} >= {(DOMAIN, DOMAIN_VERSION)}
    assert [o.name for o in model.graph.output] == ["iou_predictions", "low_res_masks"]
    # The upscaling's Gemms, LayerNormalization, Gelus and shuffles are gone from the graph.
    assert not any(n.op_type == "Gelu" for n in model.graph.node)


@pytest.mark.parametrize("batch,points", [(1, 1), (1, 4), (3, 2)])
def test_prompt_ops_graph_matches_the_standard_graph_and_official(full_grid_split_decoder, batch, points):
    from sam_edge.runtime.ort_ops import decoder_prompt_ops_session, library_refusal

    if library_refusal() is not None:
        pytest.skip(library_refusal())
    reference, image_part, prompt_part, ops_path = full_grid_split_decoder
    ops_part = decoder_prompt_ops_session(str(ops_path), ort.SessionOptions(), ["CPUExecutionProvider"])
    config = reduced_config(image_size=1024)
    rng = np.random.default_rng(100 + batch * 10 + points)
    feed = _random_feed(config, batch, points, False, rng)
    names = [o.name for o in image_part.get_outputs()]
    prompt_feed = dict(zip(names, image_part.run(None, {"image_embeddings": feed["image_embeddings"]})))
    prompt_feed.update(point_coords=feed["point_coords"], point_labels=feed["point_labels"])
    iou, low_res = ops_part.run(None, prompt_feed)
    std_iou, std_low_res = prompt_part.run(None, prompt_feed)
    assert low_res.shape == std_low_res.shape == (batch, 4, 256, 256)
    assert rel_l2(low_res, std_low_res) <= OPS_REL_L2
    np.testing.assert_array_equal(iou, std_iou)  # the IoU head does not pass through the op
    _, ref_iou, ref_low_res = _official_onnx_model(reference, feed, (1024, 1024))
    assert rel_l2(low_res, ref_low_res) <= REL_L2
    np.testing.assert_allclose(iou, ref_iou, atol=1e-3, rtol=0)
    for a, b in zip(low_res.reshape(-1, 256, 256), ref_low_res.reshape(-1, 256, 256)):
        assert mask_iou(a > 0, b > 0) >= MASK_IOU
