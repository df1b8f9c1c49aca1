"""Our model and predictor against the official segment_anything package.

Tolerances (fp32 on CPU): the two implementations do the same float32 math in
nearly the same order, so the differences are rounding only. Low-res logits
rel-L2 <= 1e-4 and |iou - iou_ref| <= 1e-4 leave room for reordered
reductions; mask IoU >= 0.99 allows only pixels whose logit is within
rounding of the threshold to flip.
"""

import numpy as np
import pytest
import torch

import sam_edge
from sam_edge.builder import build_sam_from_config

from sam_fixtures import mask_iou, prompt_cases, real_photos, rel_l2

LOGITS_REL_L2 = 1e-4
IOU_ABS = 1e-4
MASK_IOU = 0.99


def assert_outputs_match(ours, ref, case):
    masks, scores, low_res = ours
    ref_masks, ref_scores, ref_low_res = ref
    assert masks.shape == ref_masks.shape and masks.dtype == ref_masks.dtype, case
    assert scores.shape == ref_scores.shape and scores.dtype == ref_scores.dtype, case
    assert low_res.shape == ref_low_res.shape and low_res.dtype == ref_low_res.dtype, case
    assert rel_l2(low_res, ref_low_res) <= LOGITS_REL_L2, case
    assert np.abs(scores - ref_scores).max() <= IOU_ABS, case
    for m, r in zip(masks, ref_masks):
        assert mask_iou(m, r) >= MASK_IOU, case


@pytest.fixture(scope="module")
def vit_b_pair(vit_b_checkpoint):
    from segment_anything import SamPredictor as RefPredictor

    path, ref = vit_b_checkpoint
    ours = sam_edge.sam_model_registry["vit_b"](checkpoint=str(path))
    return sam_edge.SamPredictor(ours), RefPredictor(ref)


@pytest.mark.slow
@pytest.mark.parametrize("aspect", ["square", "landscape", "portrait"])
def test_vit_b_matches_reference(vit_b_pair, aspect):
    ours, ref = vit_b_pair
    image = real_photos()[aspect]
    ours.set_image(image)
    ref.set_image(image)
    assert ours.original_size == ref.original_size and ours.input_size == ref.input_size
    emb, ref_emb = ours.get_image_embedding(), ref.get_image_embedding()
    assert emb.shape == ref_emb.shape
    assert rel_l2(emb, ref_emb) <= LOGITS_REL_L2

    cases = prompt_cases(image.shape[:2], seed=len(aspect))
    fractions = []
    for name, kwargs in cases:
        out = ours.predict(**kwargs)
        expected = ref.predict(**kwargs)
        assert_outputs_match(out, expected, f"{aspect}/{name}")
        fractions += [float(m.mean()) for m in expected[0]]
    # The fixture's logits spread like a trained model's, so most masks are
    # neither empty nor full and IoU has something to measure.
    assert np.mean([0.01 < f < 0.99 for f in fractions]) >= 0.5, fractions

    # Mask refinement: feed the best low-res logits back in.
    name, kwargs = cases[1]
    _, scores, low_res = ref.predict(**kwargs)
    refine = dict(kwargs, mask_input=low_res[np.argmax(scores)][None], multimask_output=False)
    assert_outputs_match(ours.predict(**refine), ref.predict(**refine), f"{aspect}/mask_input")

    # return_logits gives float logits at the original size.
    logits = ours.predict(**cases[0][1], return_logits=True)[0]
    ref_logits = ref.predict(**cases[0][1], return_logits=True)[0]
    assert logits.dtype == ref_logits.dtype == np.float32
    assert rel_l2(logits, ref_logits) <= LOGITS_REL_L2


@pytest.mark.slow
def test_vit_b_predict_torch_batched_boxes(vit_b_pair):
    ours, ref = vit_b_pair
    image = real_photos()["landscape"]
    ours.set_image(image)
    ref.set_image(image)
    gen = torch.Generator().manual_seed(7)
    h, w = image.shape[:2]
    xy0 = torch.rand(5, 2, generator=gen) * torch.tensor([w / 2, h / 2])
    xy1 = xy0 + torch.rand(5, 2, generator=gen) * torch.tensor([w / 2, h / 2]) + 8
    boxes = torch.cat([xy0, xy1], dim=1)
    boxes_ours = ours.transform.apply_boxes_torch(boxes, image.shape[:2])
    boxes_ref = ref.transform.apply_boxes_torch(boxes, image.shape[:2])
    assert torch.equal(boxes_ours, boxes_ref)
    for multimask in (False, True):
        out = ours.predict_torch(None, None, boxes=boxes_ours, multimask_output=multimask)
        expected = ref.predict_torch(None, None, boxes=boxes_ref, multimask_output=multimask)
        assert all(isinstance(t, torch.Tensor) for t in out)
        assert_outputs_match(
            [t.numpy() for t in out], [t.numpy() for t in expected], f"predict_torch multimask={multimask}"
        )


@pytest.mark.parametrize("image_format", ["RGB", "BGR"])
def test_small_model_matches_reference(small_checkpoint, small_config, image_format):
    """A reduced model (one windowed block on a padded grid, one global block)
    exercises every code path quickly, including BGR input and set_torch_image."""
    from segment_anything import SamPredictor as RefPredictor

    path, ref = small_checkpoint
    ours = build_sam_from_config(small_config, path)
    op, rp = sam_edge.SamPredictor(ours), RefPredictor(ref)
    for aspect, image in real_photos().items():
        op.set_image(image, image_format)
        rp.set_image(image, image_format)
        assert rel_l2(op.features, rp.features) <= LOGITS_REL_L2
        for name, kwargs in prompt_cases(image.shape[:2], seed=3):
            assert_outputs_match(op.predict(**kwargs), rp.predict(**kwargs), f"{aspect}/{name}")

    image = real_photos()["portrait"]
    tensor = torch.as_tensor(op.transform.apply_image(image)).permute(2, 0, 1)[None]
    op.set_torch_image(tensor, image.shape[:2])
    rp.set_torch_image(tensor, image.shape[:2])
    assert rel_l2(op.get_image_embedding(), rp.get_image_embedding()) <= LOGITS_REL_L2


def test_transform_matches_reference():
    from segment_anything.utils.transforms import ResizeLongestSide as RefResize

    rng = np.random.default_rng(0)
    for shape in [(480, 640), (641, 333), (1, 1), (1000, 1000), (7, 1500)]:
        ours, ref = sam_edge.ResizeLongestSide(1024), RefResize(1024)
        image = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
        assert np.array_equal(ours.apply_image(image), ref.apply_image(image))
        coords = rng.uniform(0, max(shape), (5, 2))
        assert np.array_equal(ours.apply_coords(coords, shape), ref.apply_coords(coords, shape))
        boxes = rng.uniform(0, max(shape), (3, 4))
        assert np.array_equal(ours.apply_boxes(boxes, shape), ref.apply_boxes(boxes, shape))
        # The official apply_image_torch sizes from the (B, C) axes, a known
        # upstream bug; ours resizes (H, W) like apply_image does.
        timg = torch.rand(2, 3, *shape) * 255
        resized = ours.apply_image_torch(timg)
        assert tuple(resized.shape[-2:]) == ours.apply_image(image).shape[:2]
        assert max(resized.shape[-2:]) == 1024
