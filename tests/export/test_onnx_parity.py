"""An fp32 bundle against the official segment_anything model, on real photos.

Tolerances (fp32 throughout): the ONNX graphs compute the same math as the
official model in a different operation order, so differences are float32
rounding accumulated through the network: low-res logits rel-L2 <= 1e-3 (we
observe ~1e-6), IoU of thresholded masks >= 0.99 (pixels with |logit| below
the rounding error may flip), scores within 1e-3.
"""

import numpy as np
import pytest

import sam_edge
from onnx_helpers import build_test_bundle, mask_iou, photos, prompt_kinds, reduced_config, rel_l2

LOGITS_REL_L2 = 1e-3
MASK_IOU = 0.99
SCORE_ABS = 1e-3


@pytest.fixture(scope="module")
def reduced(tmp_path_factory):
    reference, _, bundle = build_test_bundle(tmp_path_factory.mktemp("parity"), reduced_config(), seed=1)
    return reference, sam_edge.load(str(bundle))


def _compare(ours, official, kwargs, multimask):
    m1, s1, l1 = ours.predict(multimask_output=multimask, **kwargs)
    m2, s2, l2 = official.predict(multimask_output=multimask, **kwargs)
    assert m1.shape == m2.shape and m1.dtype == m2.dtype == bool
    for a, b in zip(m1, m2):
        assert mask_iou(a, b) >= MASK_IOU
    assert rel_l2(l1, l2) <= LOGITS_REL_L2
    np.testing.assert_allclose(s1, s2, atol=SCORE_ABS, rtol=0)
    return l2


@pytest.mark.parametrize("photo", ["portrait", "landscape", "square"])
def test_fp32_bundle_matches_official(reduced, photo):
    from segment_anything import SamPredictor as OfficialPredictor

    reference, engine = reduced
    image = photos()[photo]
    ours, official = sam_edge.SamPredictor(engine), OfficialPredictor(reference)
    ours.set_image(image)
    official.set_image(image)
    assert rel_l2(ours.get_image_embedding(), official.get_image_embedding().numpy()) <= LOGITS_REL_L2
    rng = np.random.default_rng(["portrait", "landscape", "square"].index(photo))
    for name, kwargs in prompt_kinds(image.shape, rng).items():
        for multimask in (True, False):
            low_res = _compare(ours, official, kwargs, multimask)
        # Feed the official model's own best low-res logits back as mask_input.
        _compare(ours, official, dict(kwargs, mask_input=low_res[:1]), False)
    # A mask prompt alone: no points and no box, so the decoder sees zero sparse prompts.
    _compare(ours, official, dict(mask_input=low_res[:1]), True)


def test_bgr_input_and_batched_boxes(reduced):
    import torch
    from segment_anything import SamPredictor as OfficialPredictor

    reference, engine = reduced
    image = photos()["landscape"]
    ours, official = sam_edge.SamPredictor(engine), OfficialPredictor(reference)
    ours.set_image(np.ascontiguousarray(image[..., ::-1]), image_format="BGR")
    official.set_image(image)
    rng = np.random.default_rng(7)
    h, w = image.shape[:2]
    corners = np.sort(rng.uniform(0, 1, (5, 2, 2)), axis=1) * [w - 1, h - 1]
    boxes = torch.as_tensor(ours.transform.apply_boxes(corners.reshape(5, 4), (h, w)), dtype=torch.float32)
    m1, s1, l1 = ours.predict_torch(None, None, boxes=boxes, multimask_output=True)
    m2, s2, l2 = official.predict_torch(None, None, boxes=boxes, multimask_output=True)
    assert tuple(m1.shape) == tuple(m2.shape) == (5, 3, h, w)
    assert rel_l2(l1.numpy(), l2.numpy()) <= LOGITS_REL_L2
    assert min(mask_iou(a, b) for a, b in zip(m1.numpy().reshape(15, h, w), m2.numpy().reshape(15, h, w))) >= MASK_IOU


@pytest.mark.slow
def test_full_size_vit_b_matches_official(tmp_path):
    """One full-size ViT-B (1024 px, 12 blocks) check: about a minute on 2 cores."""
    from segment_anything import SamPredictor as OfficialPredictor

    reference, _, bundle = build_test_bundle(tmp_path, sam_edge.get_config("vit_b"), seed=2, official_decoder=False)
    image = photos()["portrait"]
    ours, official = sam_edge.SamPredictor(sam_edge.load(str(bundle))), OfficialPredictor(reference)
    ours.set_image(image)
    official.set_image(image)
    assert rel_l2(ours.get_image_embedding(), official.get_image_embedding().numpy()) <= LOGITS_REL_L2
    kinds = prompt_kinds(image.shape, np.random.default_rng(3))
    for name in ("pos_neg_points", "box_and_points"):
        _compare(ours, official, kinds[name], True)


def test_set_image_batch_matches_one_at_a_time(reduced):
    """Three photos of different sizes in one encoder call give what set_image gives
    for each: the same math in a different batch layout, so agreement to float32
    rounding (rel-L2 <= 1e-5)."""
    _, engine = reduced
    images = list(photos().values())
    batched, single = sam_edge.SamPredictor(engine), sam_edge.SamPredictor(engine)
    batched.set_image_batch(images)
    assert batched.num_images == 3
    prompt = dict(point_coords=np.array([[60.0, 90.0], [200.0, 150.0]]), point_labels=np.array([1, 0]))
    for i, image in enumerate(images):
        batched.select_image(i)
        single.set_image(image)
        assert batched.original_size == single.original_size and batched.input_size == single.input_size
        assert rel_l2(batched.get_image_embedding(), single.get_image_embedding()) <= 1e-5
        _, _, low_batched = batched.predict(**prompt)
        _, _, low_single = single.predict(**prompt)
        assert rel_l2(low_batched, low_single) <= 1e-5
    with pytest.raises(ValueError, match="image index"):
        batched.select_image(3)


def test_set_image_batch_with_the_torch_backend(tmp_path):
    """The same batching through the torch model: pixel-mean padding is zero after normalisation."""
    from onnx_helpers import save_official_checkpoint

    config = reduced_config()
    save_official_checkpoint(config, 12, tmp_path / "ck.pth")
    model = sam_edge.build_sam_from_config(config, tmp_path / "ck.pth")
    images = [photos()["portrait"], photos()["landscape"]]
    batched, single = sam_edge.SamPredictor(model), sam_edge.SamPredictor(model)
    batched.set_image_batch(images)
    for i, image in enumerate(images):
        batched.select_image(i)
        single.set_image(image)
        assert rel_l2(batched.get_image_embedding().numpy(), single.get_image_embedding().numpy()) <= 1e-5


def test_split_decoder_matches_the_whole_decoder(reduced):
    """Prompts without mask_input go through the decoder split at the image (its image
    part cached per embedding); the same math as decoder.onnx in a different graph, so
    float32 rounding only: rel-L2 <= 1e-5. A new embedding, even one changed in place,
    is never answered from the cache."""
    _, engine = reduced
    assert engine.decoder_prompt is not None
    rng = np.random.default_rng(7)
    g = engine.decoder.get_inputs()[0].shape[-1]
    embedding = rng.standard_normal((1, 256, g, g)).astype(np.float32)

    def whole(coords, labels, boxes):
        feed = engine.decoder_inputs(embedding, coords, labels, boxes, None)
        iou, low_res = engine.decoder.run(None, feed)
        return low_res[:, 1:], iou[:, 1:]

    for _ in range(2):  # the second round changes the embedding in place
        for batch, points, with_box in ((1, 1, False), (1, 3, True), (5, 2, False), (4, 0, True)):
            coords = rng.uniform(0, engine.image_size, (batch, points, 2)).astype(np.float32) if points else None
            labels = rng.integers(0, 2, (batch, points)).astype(np.float32) if points else None
            xy = rng.uniform(0, engine.image_size / 2, (batch, 2))
            boxes = np.concatenate([xy, xy + rng.uniform(8, engine.image_size / 2, (batch, 2))], 1) if with_box else None
            low_res, iou = engine.decode(embedding, coords, labels, boxes, None, True)
            expected_low_res, expected_iou = whole(coords, labels, boxes)
            assert rel_l2(low_res, expected_low_res) <= 1e-5
            assert rel_l2(iou, expected_iou) <= 1e-5
        embedding *= 1.5
