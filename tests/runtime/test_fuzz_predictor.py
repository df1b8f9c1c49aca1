"""Hypothesis fuzzing of the predictor's public inputs: prompts of every shape,
dtype and value (NaN, inf, negative, huge, empty), and images of every size,
layout and dtype. Each call answers with the documented shapes and finite
scores, or raises ValueError/TypeError; nothing else.
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import sam_edge
from onnx_helpers import build_test_bundle, reduced_config

ERRORS = (ValueError, TypeError)


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    _, _, path = build_test_bundle(tmp_path_factory.mktemp("fuzz"), reduced_config(), seed=8, official_decoder=False)
    predictor = sam_edge.SamPredictor(sam_edge.load(path, native_attention=False))
    predictor.set_image(np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8))
    return predictor


FLOATS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(-1e6, 1e6),
    st.sampled_from([0.0, -1.0, 1e9, -1e9, 1e30, -1e30, 3.4e38, 1e300, float("nan"), float("inf")]),
)
DTYPES = st.sampled_from(["float64", "float32", "float16", "int64", "int8", "uint8", "bool", "complex64", "object"])


@st.composite
def array_like(draw, shapes):
    shape = draw(shapes)
    dtype = draw(DTYPES)
    if dtype == "object":
        return np.array(draw(st.lists(st.one_of(FLOATS, st.text(max_size=2), st.none()), min_size=1, max_size=4)),
                        dtype=object)
    values = draw(hnp.arrays(np.float64, shape, elements=FLOATS))
    with np.errstate(all="ignore"):
        array = values.astype(dtype)
    if draw(st.booleans()) and array.ndim >= 1:
        array = np.asfortranarray(array) if array.ndim > 1 else array[::-1]
    if draw(st.booleans()):
        array.setflags(write=False)
    return array if draw(st.integers(0, 4)) else array.tolist()


SHAPES = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5)
PROMPTS = st.fixed_dictionaries({}, optional={
    "point_coords": st.one_of(array_like(st.one_of(SHAPES, st.tuples(st.integers(0, 6), st.just(2)))), st.none()),
    "point_labels": st.one_of(array_like(st.one_of(SHAPES, st.tuples(st.integers(0, 6)))),
                              st.lists(st.sampled_from([-1, 0, 1, 2, 0.5]), max_size=6), st.none()),
    "box": st.one_of(array_like(st.one_of(SHAPES, st.just((4,)), st.just((1, 4)))), st.text(max_size=3), st.none()),
    "mask_input": st.one_of(array_like(st.one_of(SHAPES, st.just((1, 64, 64)))), st.none()),
    "multimask_output": st.one_of(st.booleans(), st.none(), st.integers(-1, 2)),
    "return_logits": st.booleans(),
})


def _check_answer(predictor, prompts, answer):
    masks, scores, low_res = answer
    c = 3 if prompts.get("multimask_output", True) else 1
    h, w = predictor.original_size
    m = predictor.backend.mask_input_size
    assert masks.shape == (c, h, w) and scores.shape == (c,) and low_res.shape == (c, m, m)
    assert masks.dtype == (np.float32 if prompts.get("return_logits") else np.bool_)
    assert np.isfinite(scores).all() and np.isfinite(low_res).all(), "an accepted prompt gave NaN or inf"


@given(PROMPTS)
def test_fuzz_prompts(predictor, prompts):
    try:
        answer = predictor.predict(**prompts)
    except ERRORS:
        return
    _check_answer(predictor, prompts, answer)


@given(st.tuples(st.integers(1, 6), st.just(2)).flatmap(
    lambda shape: st.tuples(hnp.arrays(np.float64, shape, elements=FLOATS),
                            hnp.arrays(np.int64, shape[:1], elements=st.sampled_from([-1, 0, 1])))))
def test_fuzz_point_values(predictor, points):
    """Well-formed points with any values: finite ones up to VALUE_LIMIT are answered
    (a point far outside the image is still a prompt); NaN, inf and values past
    the limit, where float32 encodings overflow, are refused."""
    from sam_edge.runtime.predictor import VALUE_LIMIT

    coords, labels = points
    acceptable = np.isfinite(coords).all() and np.abs(coords).max() <= VALUE_LIMIT
    try:
        answer = predictor.predict(point_coords=coords, point_labels=labels)
    except ValueError as exc:
        assert not acceptable, exc
        return
    assert acceptable
    _check_answer(predictor, {}, answer)


IMAGE_DTYPES = st.sampled_from([np.uint8, np.uint8, np.uint8, np.float32, np.int64, np.uint16, bool])


@st.composite
def images(draw):
    h, w = draw(st.integers(0, 70)), draw(st.integers(0, 70))
    c = draw(st.sampled_from([3, 3, 3, 1, 4, 0]))
    shape = draw(st.sampled_from([(h, w, c), (h, w), (1, h, w, c)]))
    seed = draw(st.integers(0, 2**32 - 1))
    image = np.random.default_rng(seed).integers(0, 256, shape).astype(draw(IMAGE_DTYPES))
    layout = draw(st.sampled_from(["c", "fortran", "strided", "flipped", "readonly"]))
    if layout == "fortran":
        image = np.asfortranarray(image)
    elif layout == "strided" and image.ndim >= 2:
        image = np.repeat(image, 2, axis=1)[:, ::2]
    elif layout == "flipped" and image.ndim >= 2:
        image = image[::-1, ::-1]
    elif layout == "readonly":
        image.setflags(write=False)
    return image


@given(images(), st.sampled_from(["RGB", "BGR", "rgb", ""]))
def test_fuzz_images(predictor, image, image_format):
    local = sam_edge.SamPredictor(predictor.model)
    try:
        local.set_image(image, image_format)
    except ERRORS:
        return
    assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8
    assert local.original_size == image.shape[:2]
    masks, scores, _ = local.predict(box=np.array([0, 0, image.shape[1], image.shape[0]]))
    assert masks.shape == (3, *image.shape[:2]) and np.isfinite(scores).all()


def test_a_non_contiguous_image_answers_as_its_contiguous_copy(predictor):
    rng = np.random.default_rng(5)
    base = rng.integers(0, 256, (80, 140, 3), dtype=np.uint8)
    view = base[::-1, ::2]
    view.setflags(write=False)
    a, b = sam_edge.SamPredictor(predictor.model), sam_edge.SamPredictor(predictor.model)
    a.set_image(view)
    b.set_image(np.ascontiguousarray(view))
    prompt = dict(point_coords=np.array([[30.0, 40.0]]), point_labels=np.array([1]))
    for x, y in zip(a.predict(**prompt), b.predict(**prompt)):
        assert np.array_equal(x, y)


@pytest.mark.parametrize("shape", [(1, 1, 3), (1, 10000, 3), (10000, 1, 3)])
def test_extreme_aspect_ratios_answer(predictor, shape):
    local = sam_edge.SamPredictor(predictor.model)
    local.set_image(np.full(shape, 128, np.uint8))
    masks, scores, _ = local.predict(point_coords=np.array([[0.0, 0.0]]), point_labels=np.array([1]))
    assert masks.shape == (3, *shape[:2]) and np.isfinite(scores).all()


def _peak_rss_bytes():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def test_a_10000_square_image_stays_within_its_memory_bound(predictor):
    """A 10000 x 10000 image (300 MB) is under the default max_image_pixels: it is
    embedded with at most two image-sized copies added (the resize's input and
    PIL's buffer); the stated bound is 3x the image's bytes."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM, the kernel's peak-RSS mark
    except OSError:
        pytest.skip("cannot reset the peak-RSS mark (/proc/self/clear_refs) here")
    image = np.full((10000, 10000, 3), 17, np.uint8)  # every page touched before the mark is read
    image[::7, ::5] = 200
    start = _peak_rss_bytes()
    local = sam_edge.SamPredictor(predictor.model)
    local.set_image(image)
    added = _peak_rss_bytes() - start
    assert added < 3 * image.nbytes, f"{added / 2**20:.0f} MB added for a {image.nbytes / 2**20:.0f} MB image"
    assert local.predict(box=np.array([0, 0, 5000, 5000]))[0].shape == (3, 10000, 10000)
