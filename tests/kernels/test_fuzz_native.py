"""Hypothesis fuzzing of every sam_edge._C entry point, called directly: wrong
shapes, dtypes, strides, zero and negative sizes, non-contiguous arrays,
absurd thread counts. Each call either answers (checked against numpy or the
float64 reference) or raises ValueError/TypeError; never a crash or a hang.

A crash would kill pytest, so the fuzz targets run in a child pytest
(test_native_fuzz_in_a_subprocess); they are skipped in the parent. The
inputs that once crashed are kept as regression tests below, also run in the
child.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

CHILD_ENV = "SAM_EDGE_FUZZ_CHILD"
IN_CHILD = os.environ.get(CHILD_ENV) == "1"
child_only = pytest.mark.skipif(not IN_CHILD, reason="runs in the child process of test_native_fuzz_in_a_subprocess")
ERRORS = (ValueError, TypeError)


def _native():
    from sam_edge.kernels.cpu_attention import _native

    return _native()


def test_native_fuzz_in_a_subprocess():
    if IN_CHILD:
        pytest.skip("this is the child: it runs the fuzz targets, not another child")
    if _native() is None:
        pytest.skip("sam_edge._C is not built (pip install -e . builds it)")
    env = dict(os.environ, **{CHILD_ENV: "1"})
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "-x", __file__,
         "-k", "not test_native_fuzz_in_a_subprocess"],
        env=env, capture_output=True, text=True, timeout=600, cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    )
    out = (proc.stdout + proc.stderr)[-6000:]
    assert proc.returncode >= 0, f"the fuzz child died of signal {-proc.returncode}:\n{out}"
    assert proc.returncode == 0, out
    assert " passed" in out and "skipped" not in out.split("passed")[-1], out


# ---- strategies ----------------------------------------------------------------
DTYPES = st.sampled_from([np.float32, np.float32, np.float32, np.float64, np.float16, np.int32, np.uint8, bool])


def _array(draw, shape, dtype=None):
    dtype = dtype or draw(DTYPES)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    a = rng.standard_normal(shape).astype(dtype) if np.prod(shape) else np.zeros(shape, dtype)
    layout = draw(st.sampled_from(["c", "c", "c", "fortran", "strided"]))
    if layout == "fortran":
        a = np.asfortranarray(a)
    elif layout == "strided" and a.ndim:
        a = np.repeat(a, 2, axis=-1)[..., ::2]
    return a


THREADS = st.one_of(st.sampled_from([0, 1, 2]), st.integers(-3, 8), st.sampled_from([10**5, 2**31 - 1, -(2**31)]))


@st.composite
def qkv_case(draw):
    b, h, w = draw(st.integers(0, 2)), draw(st.integers(0, 20)), draw(st.integers(0, 20))
    heads, d = draw(st.integers(-1, 3)), draw(st.sampled_from([0, 1, 8, 64, 80]))
    window = draw(st.sampled_from([0, 0, 1, 7, 14, -1, 40]))
    channels = 3 * heads * d + draw(st.sampled_from([0, 0, 0, 1, -1]))
    s_h, s_w = (window, window) if window > 0 else (h, w)
    fit = draw(st.booleans())
    rows_h = 2 * s_h - 1 if fit else draw(st.integers(0, 40))
    rows_w = 2 * s_w - 1 if fit else draw(st.integers(0, 40))
    qkv = _array(draw, (b, h, w, max(channels, 0)), draw(st.sampled_from([np.float32, np.float32, np.float64])))
    table_h = _array(draw, (max(rows_h, 0), d), np.float32)
    table_w = _array(draw, (max(rows_w, 0), d), np.float32)
    kv_bias = draw(st.sampled_from([None, "fit", "wrong"]))
    if kv_bias == "fit":
        kv_bias = _array(draw, (2, max(heads, 0), d), np.float32)
    elif kv_bias == "wrong":
        kv_bias = _array(draw, (3, max(heads, 1), d + 1))
    compute = draw(st.sampled_from(["fp32", "fp32", "fp16", "bf16"]))
    return qkv, table_h, table_w, kv_bias, heads, window, d, compute, draw(THREADS)


@child_only
@given(qkv_case())
def test_fuzz_rel_pos_attention_qkv(case):
    qkv, table_h, table_w, kv_bias, heads, window, d, compute, threads = case
    from sam_edge.kernels.cpu_attention import rel_pos_attention_qkv_reference

    C = _native()
    try:
        out = C.rel_pos_attention_qkv(qkv, table_h, table_w, kv_bias, heads, window, 0.125, threads, False,
                                      getattr(C.Compute, compute))
    except ERRORS:
        return
    assert (compute == "fp32" or (compute == "fp16" and C.rel_pos_attention_has_avx512_fp16())
            or (compute == "bf16" and (C.rel_pos_attention_has_amx_bf16() or C.rel_pos_attention_has_avx512_bf16())))
    assert out.shape == (*qkv.shape[:3], heads * d) and out.dtype == np.float32
    if compute == "fp32":
        ref = rel_pos_attention_qkv_reference(qkv, table_h, table_w, kv_bias, heads, window, 0.125)
        np.testing.assert_allclose(out, ref, rtol=1e-3, atol=1e-3)


@st.composite
def attention_case(draw):
    bh, n, d = draw(st.integers(0, 3)), draw(st.integers(0, 20)), draw(st.sampled_from([0, 1, 16, 64]))
    k_h, k_w = draw(st.integers(-2, 6)), draw(st.integers(-2, 6))
    m = k_h * k_w
    fit = draw(st.booleans())
    kshape = (bh, max(m, 0) if fit else draw(st.integers(0, 30)), d)
    return (_array(draw, (bh, n, d)), _array(draw, kshape), _array(draw, kshape),
            _array(draw, (bh, n, max(k_h, 0))), _array(draw, (bh, n, max(k_w, 0))), k_h, k_w,
            draw(st.sampled_from([False, False, True])), draw(THREADS))


@child_only
@given(attention_case())
def test_fuzz_rel_pos_attention(case):
    q, k, v, rel_h, rel_w, k_h, k_w, fp16, threads = case
    C = _native()
    try:
        out = C.rel_pos_attention(q, k, v, rel_h, rel_w, k_h, k_w, 0.125, threads, False,
                                  C.Compute.fp16 if fp16 else C.Compute.fp32)
    except ERRORS:
        return
    assert out.shape == q.shape and out.dtype == np.float32
    if not fp16:
        bias = rel_h.astype(np.float64)[..., :, None] + rel_w.astype(np.float64)[..., None, :]
        scores = 0.125 * q.astype(np.float64) @ np.swapaxes(k.astype(np.float64), -1, -2) + bias.reshape(*q.shape[:2], -1)
        p = np.exp(scores - scores.max(-1, keepdims=True))
        ref = (p / p.sum(-1, keepdims=True)) @ v.astype(np.float64)
        np.testing.assert_allclose(out, ref, rtol=1e-3, atol=1e-3)


MASKS = st.builds(lambda n, h, w, seed: np.random.default_rng(seed).random((n, h, w)) < 0.5,
                  st.integers(0, 3), st.integers(0, 40), st.integers(0, 40), st.integers(0, 2**32 - 1))


@st.composite
def mask_array(draw, ndim=3):
    masks = draw(MASKS)
    if ndim == 2:
        masks = masks[0] if len(masks) else np.zeros((0, 0), bool)
    kind = draw(st.sampled_from(["bool", "bool", "uint8", "int8", "float32", "strided", "fortran", "ndim"]))
    if kind == "uint8":
        return masks.astype(np.uint8)
    if kind == "int8":
        return masks.astype(np.int8)
    if kind == "float32":
        return masks.astype(np.float32)
    if kind == "strided" and masks.ndim and masks.shape[-1]:
        return np.repeat(masks, 2, axis=-1)[..., ::2]
    if kind == "fortran":
        return np.asfortranarray(masks)
    if kind == "ndim":
        return masks[None]
    return masks


@child_only
@given(mask_array())
def test_fuzz_rle_masks_boxes(masks):
    C = _native()
    try:
        counts = C.rle_encode(masks)
    except ERRORS:
        assert not (masks.ndim == 3 and masks.dtype in (np.bool_, np.uint8) and masks.flags.c_contiguous)
        return
    assert masks.ndim == 3 and masks.flags.c_contiguous
    n, h, w = masks.shape
    decoded = C.rle_decode(counts, h, w)
    assert np.array_equal(decoded, masks.astype(bool))
    strings = C.rle_encode_strings(masks)
    for c, s in zip(counts, strings):
        assert np.array_equal(C.string_to_counts(s), c) and C.counts_to_string(c) == s
    boxes = C.masks_to_boxes(masks)
    assert boxes.shape == (n, 4)
    for i in range(n):
        ys, xs = np.nonzero(masks[i])
        expected = [xs.min(), ys.min(), xs.max(), ys.max()] if len(xs) else [0, 0, 0, 0]
        assert boxes[i].tolist() == expected


@child_only
@given(st.lists(st.one_of(st.integers(0, 2**32 - 1), st.integers(0, 50)), max_size=6),
       st.integers(-2, 12), st.integers(-2, 12), st.sampled_from([np.uint32, np.int64, np.float64, np.int8]))
def test_fuzz_rle_decode(counts, h, w, dtype):
    try:
        out = _native().rle_decode([np.asarray(counts).astype(dtype)], h, w)
    except ERRORS:
        return
    assert out.shape == (1, h, w) and sum(int(c) for c in np.asarray(counts).astype(dtype)) == h * w


@child_only
@given(st.binary(max_size=40))
def test_fuzz_string_to_counts(raw):
    try:
        counts = _native().string_to_counts(raw)
    except ERRORS:
        return
    assert counts.dtype == np.uint32 and counts.ndim == 1


@child_only
@given(mask_array(ndim=2), st.sampled_from([0, 1, 7]))
def test_fuzz_connected_components(mask, value):
    try:
        labels, areas = _native().connected_components(mask, value)
    except ERRORS:
        return
    assert labels.shape == mask.shape and int(areas.sum()) == int((mask.astype(bool) == bool(value)).sum())


@child_only
@given(mask_array(), st.one_of(st.floats(-5, 100), st.just(float("nan"))), st.booleans())
def test_fuzz_remove_small_regions(masks, area, holes):
    try:
        out, changed = _native().remove_small_regions(masks, area, holes)
    except ERRORS:
        return
    assert out.shape == masks.shape and changed.shape == (masks.shape[0],)


@child_only
@given(st.integers(0, 3), st.integers(0, 50), st.floats(allow_nan=True), st.floats(allow_nan=True),
       st.sampled_from([np.float32, np.float64]))
def test_fuzz_stability_scores(n, hw, hi, lo, dtype):
    logits = np.random.default_rng(n * 100 + hw).standard_normal((n, hw)).astype(dtype)
    try:
        scores = _native().stability_scores(logits, hi, lo)
    except ERRORS:
        return
    assert scores.shape == (n,)


@child_only
@given(st.integers(0, 30), st.integers(3, 5), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
       st.sampled_from([np.float32, np.float64]), st.sampled_from([np.int64, np.int32]), st.integers(0, 2**32 - 1))
def test_fuzz_batched_nms(n, cols, iou, offset, box_dtype, cat_dtype, seed):
    rng = np.random.default_rng(seed)
    boxes = (rng.random((n, cols)) * 100).astype(box_dtype)
    if n and rng.random() < 0.2:
        boxes[rng.integers(0, n, 2)] = np.nan
    scores = rng.random(n).astype(np.float32)
    cats = rng.integers(0, 3, n).astype(cat_dtype)
    try:
        keep = _native().batched_nms(boxes, scores, cats, iou, offset)
    except ERRORS:
        return
    assert keep.ndim == 1 and len(set(keep.tolist())) == len(keep) and all(0 <= i < n for i in keep)


@child_only
@given(st.integers(0, 3), st.integers(0, 9), st.integers(0, 9), st.tuples(st.integers(-2, 40), st.integers(-2, 40)),
       st.tuples(st.integers(-2, 40), st.integers(-2, 40)), st.tuples(st.integers(-2, 60), st.integers(-2, 60)),
       st.booleans(), st.booleans())
def test_fuzz_upsample_threshold_stability(n, h, w, frame, crop, out_size, want_masks, want_logits):
    low_res = np.random.default_rng(n + 10 * h + 100 * w).standard_normal((n, h, w)).astype(np.float32)
    try:
        masks, logits, stability, boxes = _native().upsample_threshold_stability(
            low_res, frame, crop, out_size, 0.0, 1.0, -1.0, want_masks, want_logits)
    except ERRORS:
        return
    assert stability.shape == (n,) and boxes.shape == (n, 4)
    if want_masks:
        assert masks.shape == (n, *out_size)
    if want_logits:
        assert logits.shape == (n, *out_size)


@child_only
@given(st.integers(-(2**31), 2**31 - 1))
def test_fuzz_set_num_threads(threads):
    C = _native()
    before = C.num_threads()
    try:
        C.set_num_threads(threads)
    except ERRORS:
        return
    finally_threads = C.num_threads()
    C.set_num_threads(max(before, 1))
    assert finally_threads == threads


# ---- inputs that once crashed ------------------------------------------------------
@child_only
def test_regression_huge_thread_count_is_refused():
    """threads=100000 reached `omp parallel num_threads(...)` and the process died (SIGSEGV)."""
    C = _native()
    qkv = np.zeros((1, 4, 4, 192), np.float32)
    table = np.zeros((7, 64), np.float32)
    with pytest.raises(ValueError, match="threads"):
        C.rel_pos_attention_qkv(qkv, table, table, None, 1, 0, 1.0, 100000)
    with pytest.raises(ValueError, match="threads"):
        C.set_num_threads(100000)


@child_only
def test_regression_window_larger_than_the_grid_is_refused():
    """A 1000-wide window over a 20 x 20 grid padded it to 10^6 keys a window: minutes
    of work and gigabytes, for a window no SAM block has."""
    C = _native()
    table = np.zeros((1999, 64), np.float32)
    with pytest.raises(ValueError, match="window"):
        C.rel_pos_attention_qkv(np.zeros((1, 20, 20, 192), np.float32), table, table,
                                np.zeros((2, 1, 64), np.float32), 1, 1000, 1.0)
