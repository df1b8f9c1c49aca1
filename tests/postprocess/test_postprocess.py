"""sam_edge.postprocess against the references it promises to match.

Every op runs twice, through the compiled kernels (skipped when sam_edge._C is
not built) and through the numpy fallback, and is compared with an
independent reference: pycocotools, segment_anything.utils.amg, cv2 and
torchvision. Integer and boolean results must be identical. The only float
tolerance is in the fused upsample test, derived there.
"""

import os
import subprocess
import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import sam_edge.postprocess as pp
from sam_edge.postprocess import fallback

amg = pytest.importorskip("segment_anything.utils.amg")

BACKENDS = ["compiled", "numpy"]


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    """Runs the public API on one implementation."""
    if request.param == "compiled":
        if not pp.compiled_available():
            pytest.skip(f"sam_edge._C is not built ({pp.active_path()}); run `python setup.py build_ext --inplace`")
    else:
        monkeypatch.setattr(pp, "_C", None)
    return request.param


# ---------------------------------------------------------------- inputs


def blobby(rng, h, w, scale=8, fill=0.5):
    """Thresholded smooth noise: masks with real islands and holes."""
    gh, gw = max(2, h // scale), max(2, w // scale)
    noise = torch.from_numpy(rng.standard_normal((1, 1, gh, gw)).astype(np.float32))
    smooth = F.interpolate(noise, size=(h, w), mode="bicubic", align_corners=False)[0, 0].numpy()
    return smooth > np.quantile(smooth, 1 - fill)


def mask_zoo(rng, h, w):
    """Adversarial and random masks of one size, (N, H, W) bool."""
    masks = [np.zeros((h, w), bool), np.ones((h, w), bool)]
    for y, x in [(0, 0), (h - 1, w - 1), (h // 2, w // 2), (0, w - 1), (h - 1, 0)]:
        m = np.zeros((h, w), bool)
        m[y, x] = True
        masks.append(m)
    frame = np.zeros((h, w), bool)  # touches every border, one big hole
    frame[0, :] = frame[-1, :] = frame[:, 0] = frame[:, -1] = True
    masks.append(frame)
    masks.append((np.indices((h, w)).sum(0) % 2).astype(bool))  # checkerboard: all diagonal links
    masks.append(rng.random((h, w)) < 0.5)
    masks.append(rng.random((h, w)) < 0.03)
    masks.append(blobby(rng, h, w, fill=0.3))
    masks.append(blobby(rng, h, w, fill=0.7))
    return np.stack(masks)


SIZES = [(1, 1), (1, 9), (9, 1), (2, 2), (3, 5), (63, 65), (64, 64), (65, 128), (129, 257), (240, 321)]


def coco_rles(masks):
    from pycocotools import mask as mask_utils

    return mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))


# ---------------------------------------------------------------- RLE


@pytest.mark.parametrize("h,w", SIZES)
def test_rle_matches_official_and_pycocotools(backend, h, w):
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(h * 1000 + w)
    masks = mask_zoo(rng, h, w)
    ours = pp.mask_to_rle(masks)
    official = amg.mask_to_rle_pytorch(torch.from_numpy(masks))
    assert [r["counts"] for r in ours] == [r["counts"] for r in official]
    assert all(r["size"] == [h, w] for r in ours)

    coco = coco_rles(masks)
    compressed = pp.encode_rle(masks)
    assert [r["counts"] for r in compressed] == [r["counts"] for r in coco]
    for i, rle in enumerate(ours):
        assert pp.compress_rle(rle)["counts"] == mask_utils.frPyObjects(rle, h, w)["counts"]
        assert pp.area_from_rle(rle) == amg.area_from_rle(rle) == int(masks[i].sum())
        assert pp.area_from_rle(compressed[i]) == int(mask_utils.area(coco[i]))

    decoded = pp.decode_rle(compressed)
    assert decoded.dtype == np.bool_ and decoded.shape == masks.shape
    np.testing.assert_array_equal(decoded, mask_utils.decode(coco).transpose(2, 0, 1).astype(bool))
    np.testing.assert_array_equal(pp.decode_rle(ours), masks)
    np.testing.assert_array_equal(pp.decode_rle(ours[3]), amg.rle_to_mask(official[3]))
    # A str (JSON) string decodes like bytes.
    as_str = {"size": [h, w], "counts": compressed[-1]["counts"].decode()}
    np.testing.assert_array_equal(pp.decode_rle(as_str), masks[-1])


def test_rle_single_mask_and_torch_input(backend):
    rng = np.random.default_rng(1)
    mask = blobby(rng, 37, 53)
    assert pp.mask_to_rle(torch.from_numpy(mask)) == pp.mask_to_rle(mask[None])
    assert pp.encode_rle(mask.astype(np.uint8))[0]["counts"] == coco_rles(mask[None])[0]["counts"]


def test_rle_large_4k(backend):
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(4096)
    masks = np.stack([blobby(rng, 2160, 3840, scale=64), rng.random((2160, 3840)) < 0.5])
    coco = coco_rles(masks)
    compressed = pp.encode_rle(masks)
    assert [r["counts"] for r in compressed] == [r["counts"] for r in coco]
    official = amg.mask_to_rle_pytorch(torch.from_numpy(masks[:1]))
    assert pp.mask_to_rle(masks[:1])[0]["counts"] == official[0]["counts"]
    np.testing.assert_array_equal(pp.decode_rle(compressed), mask_utils.decode(coco).transpose(2, 0, 1) != 0)


def test_rle_errors_are_for_people(backend):
    with pytest.raises(ValueError, match="sum"):
        pp.decode_rle({"size": [3, 3], "counts": [2, 3]})
    with pytest.raises(ValueError, match="malformed"):
        pp.decode_rle({"size": [3, 3], "counts": b"0\x7f"})
    with pytest.raises(ValueError, match="malformed"):
        pp.decode_rle({"size": [3, 3], "counts": b"1a"})  # truncated: 'a' says more follows
    with pytest.raises(ValueError, match="same size"):
        pp.decode_rle([{"size": [3, 3], "counts": [9]}, {"size": [3, 4], "counts": [12]}])
    with pytest.raises(ValueError, match="non-negative"):
        pp.decode_rle({"size": [1, 2], "counts": [3, -1]})
    with pytest.raises(ValueError, match=r"\(H, W\) or \(N, H, W\)"):
        pp.mask_to_rle(np.zeros((2, 2, 2, 2), bool))
    with pytest.raises(TypeError, match="bool"):
        pp.mask_to_rle(np.zeros((2, 2), np.float32))


# ---------------------------------------------------------------- boxes, stability


@pytest.mark.parametrize("h,w", SIZES)
def test_masks_to_boxes_matches_official(backend, h, w):
    rng = np.random.default_rng(h * 7 + w)
    masks = mask_zoo(rng, h, w)
    expected = amg.batched_mask_to_box(torch.from_numpy(masks)).numpy()
    np.testing.assert_array_equal(pp.masks_to_boxes(masks), expected)
    # Leading dimensions are kept.
    lead = masks[:12].reshape(3, 4, h, w)
    np.testing.assert_array_equal(
        pp.masks_to_boxes(lead), amg.batched_mask_to_box(torch.from_numpy(lead)).numpy()
    )
    np.testing.assert_array_equal(pp.masks_to_boxes(masks[5]), expected[5])


def test_masks_to_boxes_large(backend):
    rng = np.random.default_rng(7)
    masks = np.zeros((3, 2160, 3840), bool)
    masks[0] = blobby(rng, 2160, 3840, scale=256, fill=0.05)
    masks[1, 2159, 3839] = True
    expected = amg.batched_mask_to_box(torch.from_numpy(masks)).numpy()
    np.testing.assert_array_equal(pp.masks_to_boxes(masks), expected)


@pytest.mark.parametrize("threshold,offset", [(0.0, 1.0), (0.1, 1.0), (-0.3, 0.7), (2.0, 0.05)])
def test_stability_score_matches_official(backend, threshold, offset):
    rng = np.random.default_rng(11)
    logits = (rng.standard_normal((2, 3, 67, 129)) * 3).astype(np.float32)
    # Values at, just above and just below the float32 thresholds, where a
    # double-precision comparison would disagree with torch's float32 one.
    for t in (threshold + offset, threshold - offset):
        t32 = np.float32(t)
        edge = np.array([t32, np.nextafter(t32, np.float32(np.inf)), np.nextafter(t32, np.float32(-np.inf))])
        logits[0, 0, 0, :3] = edge
        logits[1, 2, 5, 7:10] = edge
    logits[1, 1] = -10.0  # nothing above threshold - offset: 0 / 0
    expected = amg.calculate_stability_score(torch.from_numpy(logits), threshold, offset).numpy()
    ours = pp.stability_score(logits, threshold, offset)
    assert ours.dtype == np.float32 and ours.shape == (2, 3)
    np.testing.assert_array_equal(ours, expected)  # NaN positions must agree too
    assert np.isnan(ours[1, 1])


# ---------------------------------------------------------------- connected components


def cv2_components(mask, value):
    cv2 = pytest.importorskip("cv2")
    n, labels, stats, _ = cv2.connectedComponentsWithStats((mask == value).astype(np.uint8), connectivity=8)
    return labels, stats[1:, -1].astype(np.int64)


@pytest.mark.parametrize("h,w", SIZES)
def test_connected_components_match_cv2_numbering(backend, h, w):
    rng = np.random.default_rng(h + 31 * w)
    for mask in mask_zoo(rng, h, w):
        for value in (True, False):
            labels, areas = pp.connected_components(mask, value)
            ref_labels, ref_areas = cv2_components(mask, value)
            np.testing.assert_array_equal(labels, ref_labels)
            np.testing.assert_array_equal(areas, ref_areas)


def test_connected_components_large_4k(backend):
    # cv2 labels large images in parallel stripes; the numbering must still agree.
    rng = np.random.default_rng(2160)
    mask = blobby(rng, 2160, 3840, scale=12, fill=0.45)
    labels, areas = pp.connected_components(mask, True)
    ref_labels, ref_areas = cv2_components(mask, True)
    assert areas.size > 100
    np.testing.assert_array_equal(labels, ref_labels)
    np.testing.assert_array_equal(areas, ref_areas)


def equal_squares(h, w, size, positions):
    m = np.zeros((h, w), bool)
    for y, x in positions:
        m[y : y + size, x : x + size] = True
    return m


@pytest.mark.parametrize("mode", ["holes", "islands"])
@pytest.mark.parametrize("h,w", [(1, 1), (3, 5), (64, 64), (129, 257), (240, 321)])
def test_remove_small_regions_matches_official(backend, mode, h, w):
    rng = np.random.default_rng(h * w + len(mode))
    masks = list(mask_zoo(rng, h, w))
    # All islands equally small: the official code keeps the first in OpenCV's
    # numbering, which is by 2x2 block, not by first pixel.
    if h >= 6 and w >= 12:
        masks.append(equal_squares(h, w, 2, [(1, 8), (2, 1), (h - 3, w - 3)]))
        masks.append(equal_squares(h, w, 1, [(0, 5), (1, 0)]))
    for mask in masks:
        for thresh in (0, 1, 2, 3.5, 10, 100, h * w + 1):
            out, changed = pp.remove_small_regions(mask, thresh, mode)
            ref, ref_changed = amg.remove_small_regions(mask, thresh, mode)
            assert changed == ref_changed
            assert out.dtype == np.bool_
            np.testing.assert_array_equal(out, ref)
            if not changed:
                assert out is mask


def test_remove_small_regions_batch_and_large(backend):
    rng = np.random.default_rng(5)
    masks = np.stack([blobby(rng, 1080, 1920, scale=s, fill=f) for s, f in [(6, 0.5), (20, 0.3), (40, 0.8)]])
    for mode in ("holes", "islands"):
        out, changed = pp.remove_small_regions_batch(masks, 400, mode)
        for i, mask in enumerate(masks):
            ref, ref_changed = amg.remove_small_regions(mask, 400, mode)
            assert changed[i] == ref_changed
            np.testing.assert_array_equal(out[i], ref)


def test_remove_small_regions_rejects_bad_mode(backend):
    with pytest.raises(ValueError, match="'holes' or 'islands'"):
        pp.remove_small_regions(np.zeros((2, 2), bool), 1, "island")


# ---------------------------------------------------------------- NMS


def random_boxes(rng, n, n_categories, tie_scores):
    centers = rng.random((max(1, n // 8), 2)) * 500
    c = centers[rng.integers(0, len(centers), n)] + rng.standard_normal((n, 2)) * 12
    wh = rng.random((n, 2)) * 80 + 2
    boxes = np.concatenate([c - wh / 2, c + wh / 2], axis=1).astype(np.float32)
    scores = rng.random(n).astype(np.float32)
    if tie_scores:
        scores = np.round(scores * 10) / 10  # many equal scores
    categories = rng.integers(0, n_categories, n)
    return boxes, scores.astype(np.float32), categories


@pytest.mark.parametrize("n", [0, 1, 7, 300, 1000, 1001, 2500])
@pytest.mark.parametrize("n_categories", [1, 4])
@pytest.mark.parametrize("tie_scores", [False, True])
def test_batched_nms_matches_torchvision(backend, n, n_categories, tie_scores):
    tv = pytest.importorskip("torchvision.ops")
    rng = np.random.default_rng(n * 10 + n_categories + tie_scores)
    boxes, scores, categories = random_boxes(rng, n, n_categories, tie_scores)
    for iou in (0.3, 0.5, 0.7, 0.88):
        ours = pp.batched_nms(boxes, scores, categories, iou)
        ref = tv.batched_nms(
            torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(categories), iou
        ).numpy()
        assert ours.dtype == np.int64
        if n <= pp.TORCHVISION_OFFSET_TRICK_MAX_BOXES:
            np.testing.assert_array_equal(ours, ref)
        else:
            # torchvision re-sorts with an unstable sort here: same set, same
            # score sequence; ours breaks ties by index.
            np.testing.assert_array_equal(np.sort(ours), np.sort(ref))
            np.testing.assert_array_equal(scores[ours], scores[ref])
            order = np.lexsort((ours, -scores[ours]))
            np.testing.assert_array_equal(order, np.arange(ours.size))
        if n >= 300 and iou == 0.3:
            assert 0 < ours.size < n  # the boxes are clustered: suppression happens


def test_batched_nms_threshold_is_strict(backend):
    tv = pytest.importorskip("torchvision.ops")
    # IoU exactly 0.5 (2 / 4) is kept at threshold 0.5; 7 / 10 rounds to a
    # float32 just below 0.7, kept at 0.7 and dropped below it.
    boxes = np.array([[0, 0, 4, 1], [0, 0, 2, 1], [10, 0, 20, 1], [10, 0, 17, 1]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    cats = np.zeros(4, np.int64)
    for iou in (0.5, 0.7, 0.6999999, 0.49):
        ref = tv.batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(cats), iou)
        np.testing.assert_array_equal(pp.batched_nms(boxes, scores, cats, iou), ref.numpy())


# ---------------------------------------------------------------- fused upsample


def official_postprocess(low_res, input_size, original_size):
    """Sam.postprocess_masks, called on a stand-in for the model."""
    from segment_anything.modeling import Sam

    fake = types.SimpleNamespace(image_encoder=types.SimpleNamespace(img_size=1024))
    return Sam.postprocess_masks(fake, low_res, input_size, original_size)


def smooth_logits(rng, b, c, amplitude=12.0):
    base = torch.from_numpy(rng.standard_normal((b, c, 32, 32)).astype(np.float32))
    smooth = F.interpolate(base, size=(256, 256), mode="bicubic", align_corners=False)
    return (smooth * amplitude).numpy()


GEOMETRIES = [
    ((768, 1024), (480, 640)),  # landscape, downscale
    ((1024, 683), (1500, 1000)),  # portrait, upscale
    ((576, 1024), (1080, 1920)),
    ((1024, 1024), (1024, 1024)),
    ((5, 7), (3, 4)),  # degenerate crop
    ((1024, 1024), (1, 1)),
]


def torch_fuses_source_coordinate() -> bool:
    """Whether this torch computes bilinear source coordinates with a fused multiply-add.

    Its AVX2/AVX-512 and aarch64 CPU kernels do, and so do ours; a build
    without FMA rounds twice and moves coordinates by an ulp (~1e-4 in logits).
    Probed on a 1-D resize where the two conventions give different outputs.
    """
    # A square wave: a coordinate ulp (~3e-5) moves outputs by ~0.06, far
    # above their own rounding (~1e-4 at 1000).
    x = torch.from_numpy((np.arange(576) % 2 * 1000).astype(np.float32)).reshape(1, 1, 1, 576)
    ref = F.interpolate(x, (1, 1080), mode="bilinear", align_corners=False)[0, 0, 0].numpy()
    i0, i1, l0, l1 = fallback.linear_axis(576, 1080)
    ours = x[0, 0, 0].numpy()[i0] * l0 + x[0, 0, 0].numpy()[i1] * l1
    return bool(np.abs(ours - ref).max() <= 4 * np.finfo(np.float32).eps * 1000)


@pytest.mark.parametrize("input_size,original_size", GEOMETRIES)
@pytest.mark.parametrize("kind", ["smooth", "noise"])
def test_upsample_threshold_stability_matches_torch(backend, input_size, original_size, kind):
    if not torch_fuses_source_coordinate():
        pytest.skip("this torch build rounds bilinear source coordinates without FMA; ours follow its AVX2/aarch64 kernels")
    rng = np.random.default_rng(sum(original_size) + len(kind))
    if kind == "smooth":
        low = smooth_logits(rng, 2, 3)
    else:  # steep: neighbouring logits differ by ~10
        low = (rng.standard_normal((2, 3, 256, 256)) * 8).astype(np.float32)
    low[1, 2] = -4.0  # constant map: empty mask, stability 0 / 0
    masks, stability, boxes, logits = pp.upsample_threshold_stability(
        low, input_size, original_size, return_logits=True
    )
    assert masks.shape == (2, 3, *original_size) and masks.dtype == np.bool_
    assert stability.shape == (2, 3) and stability.dtype == np.float32
    assert boxes.shape == (2, 3, 4) and boxes.dtype == np.int64

    x = torch.from_numpy(low)
    ref32 = official_postprocess(x, input_size, original_size).numpy()
    ref64 = official_postprocess(x.double(), input_size, original_size).numpy()
    # Tolerance. Both we and torch evaluate the same float32 weights and
    # products; torch's vectorised kernel may fuse a multiply-add where we
    # round twice. Each of the six roundings after the weights are formed is
    # at most half an ulp of the largest magnitude, so |ours - torch| <= 8 eps M.
    # Against float64 (which also has exact weights), we must be no worse than
    # torch's own float32 error plus that bound.
    magnitude = float(np.abs(ref64).max())
    tol = 8 * np.finfo(np.float32).eps * max(magnitude, 1.0)
    assert np.abs(logits - ref32).max() <= tol
    assert np.abs(logits - ref64).max() <= np.abs(ref32 - ref64).max() + tol

    # Masks: identical except where torch's logit is within tol of the threshold.
    ambiguous = np.abs(ref32) <= tol
    assert np.array_equal(masks[~ambiguous], (ref32 > 0)[~ambiguous])
    # Stability: counts may move only by the ambiguous pixels at t +- offset.
    expected = amg.calculate_stability_score(torch.from_numpy(ref32), 0.0, 1.0).numpy()
    near_hi = (np.abs(ref32 - 1) <= tol).sum(axis=(-2, -1))
    near_lo = (np.abs(ref32 + 1) <= tol).sum(axis=(-2, -1))
    exact = (near_hi == 0) & (near_lo == 0)
    np.testing.assert_array_equal(stability[exact], expected[exact])
    assert np.isnan(stability[1, 2]) and np.isnan(expected[1, 2])
    # Boxes: those of the masks, and the official boxes where no pixel is ambiguous.
    np.testing.assert_array_equal(boxes, amg.batched_mask_to_box(torch.from_numpy(masks)).numpy())
    clear = ~ambiguous.any(axis=(-2, -1))
    ref_boxes = amg.batched_mask_to_box(torch.from_numpy(ref32 > 0)).numpy()
    np.testing.assert_array_equal(boxes[clear], ref_boxes[clear])
    # Ours without logits returns the same masks.
    again = pp.upsample_threshold_stability(low, input_size, original_size)
    np.testing.assert_array_equal(again[0], masks)


@pytest.mark.skipif(not pp.compiled_available(), reason=f"sam_edge._C is not built: {pp.active_path()}")
@pytest.mark.parametrize("input_size,original_size", GEOMETRIES + [((576, 1024), (2160, 3840))])
def test_upsample_compiled_is_bit_identical_to_fallback(input_size, original_size):
    # Same float32 operations in the same order, no contraction: equal bits.
    rng = np.random.default_rng(3)
    low = smooth_logits(rng, 1, 3)
    for threshold, offset in [(0.0, 1.0), (0.25, 0.5)]:
        masks, stability, boxes, logits = pp.upsample_threshold_stability(
            low, input_size, original_size, threshold, offset, return_logits=True
        )
        hi, lo = threshold + offset, threshold - offset
        f_masks, f_logits, f_stab, f_boxes = fallback.upsample_threshold_stability(
            low[0], (1024, 1024), input_size, original_size, threshold, hi, lo
        )
        np.testing.assert_array_equal(logits[0], f_logits)
        np.testing.assert_array_equal(masks[0], f_masks)
        np.testing.assert_array_equal(stability[0], f_stab)
        np.testing.assert_array_equal(boxes[0], f_boxes)


def test_upsample_validates_geometry(backend):
    low = np.zeros((1, 3, 256, 256), np.float32)
    with pytest.raises(ValueError, match="fit inside"):
        pp.upsample_threshold_stability(low, (1025, 10), (10, 10))
    with pytest.raises(ValueError, match="positive"):
        pp.upsample_threshold_stability(low, (0, 10), (10, 10))
    with pytest.raises(TypeError, match="floating"):
        pp.upsample_threshold_stability(low.astype(np.int32), (10, 10), (10, 10))


# ---------------------------------------------------------------- dispatch


def test_active_path_names_the_implementation():
    path = pp.active_path()
    if pp.compiled_available():
        assert path.startswith("compiled C++")
    else:
        assert path.startswith("numpy fallback: ")


def test_package_works_without_compiled_module():
    code = (
        "import numpy as np, sam_edge.postprocess as pp;"
        "print(pp.active_path());"
        "print(pp.mask_to_rle(np.eye(3, dtype=bool))[0]['counts'])"
    )
    env = dict(os.environ, SAM_EDGE_POSTPROCESS="numpy")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    lines = out.stdout.splitlines()
    assert lines[0] == "numpy fallback: ImportError: disabled by SAM_EDGE_POSTPROCESS=numpy"
    assert lines[1] == "[0, 1, 3, 1, 3, 1]"


def test_gpu_tensors_are_pointed_to_the_cuda_module():
    if not torch.cuda.is_available():
        fake = types.SimpleNamespace(is_cuda=True)
        with pytest.raises(TypeError, match="postprocess.cuda"):
            pp.masks_to_boxes(fake)
    else:
        with pytest.raises(TypeError, match="postprocess.cuda"):
            pp.masks_to_boxes(torch.zeros(1, 2, 2, dtype=torch.bool, device="cuda"))


@pytest.mark.skipif(not pp.compiled_available(), reason=f"sam_edge._C is not built: {pp.active_path()}")
@pytest.mark.parametrize("h,w", [(1, 1), (5, 3), (64, 64), (129, 257)])
def test_compiled_matches_fallback_directly(h, w):
    """Each compiled op against its numpy fallback on the same fresh inputs."""
    from sam_edge import _C

    rng = np.random.default_rng(h * w + 99)
    masks = mask_zoo(rng, h, w)
    for ours, theirs in zip(_C.rle_encode(masks), fallback.rle_counts(masks)):
        np.testing.assert_array_equal(ours, theirs)
        assert _C.counts_to_string(ours) == fallback.counts_to_string(theirs)
        np.testing.assert_array_equal(_C.string_to_counts(_C.counts_to_string(ours)), theirs)
    counts = fallback.rle_counts(masks)
    np.testing.assert_array_equal(_C.rle_decode(counts, h, w), fallback.rle_decode(counts, h, w))
    np.testing.assert_array_equal(_C.masks_to_boxes(masks), fallback.masks_to_boxes(masks))
    logits = rng.standard_normal((3, h * w)).astype(np.float32)
    np.testing.assert_array_equal(_C.stability_scores(logits, 0.5, -0.5), fallback.stability_scores(logits, 0.5, -0.5))
    for mask in masks:
        for value in (0, 1):
            labels, areas = _C.connected_components(mask, value)
            f_labels, f_areas = fallback.connected_components(mask, bool(value))
            np.testing.assert_array_equal(labels, f_labels)
            np.testing.assert_array_equal(areas, f_areas)
        for holes in (True, False):
            out, changed = _C.remove_small_regions(mask[None], 4, holes)
            f_out, f_changed = fallback.remove_small_regions(mask, 4, holes)
            assert bool(changed[0]) == f_changed
            np.testing.assert_array_equal(out[0], f_out)
    boxes, scores, cats = random_boxes(rng, 400, 3, tie_scores=True)
    for offset_trick in (True, False):
        np.testing.assert_array_equal(
            _C.batched_nms(boxes, scores, cats, 0.5, offset_trick),
            fallback.batched_nms(boxes, scores, cats, 0.5, offset_trick),
        )
