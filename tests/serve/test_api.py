"""sam_edge.serve without Ray: the byte-bounded cache, request validation, response
encoding and the Prometheus text. Fast; the server itself is in test_serve.py."""

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from sam_edge.serve import api
from sam_edge.serve.cache import CachedEmbedding, EmbeddingCache
from sam_edge.serve.metrics import ReplicaMetrics, keep_newest, parse_prometheus, render_prometheus

LIMITS = api.Limits(max_body_bytes=1 << 20, max_pixels=300 * 300, max_points=8)
M = 64  # mask_input side of the small test bundle


def entry(nbytes: int, seed: int = 0) -> CachedEmbedding:
    values = np.random.default_rng(seed).standard_normal(nbytes // 4).astype(np.float32)
    return CachedEmbedding(values.reshape(1, -1, 1, 1), (10, 20), (8, 16))


def png_bytes(image: np.ndarray, **save) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", **save)
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture
def image():
    return np.random.default_rng(1).integers(0, 256, (40, 60, 3), dtype=np.uint8)


# ---------------------------------------------------------------- cache


def test_cache_evicts_least_recently_used_by_bytes():
    """A bound under three embeddings holds two; the one not touched longest goes first."""
    size = 4096
    cache = EmbeddingCache(max_bytes=3 * size - 1)
    a, b, c = entry(size, 1), entry(size, 2), entry(size, 3)
    assert cache.put("a", a) and cache.put("b", b)
    assert cache.get("a") is a  # a is now the most recently used
    assert cache.put("c", c)
    assert cache.ids() == ["a", "c"]  # b went, not a
    assert cache.get("b") is None
    assert cache.bytes == 2 * size <= cache.max_bytes
    stats = cache.stats()
    assert (stats["hits"], stats["misses"], stats["evictions"], stats["entries"]) == (1, 1, 1, 2)
    cache.put("d", entry(size, 4))
    assert cache.ids() == ["c", "d"]  # a is now the oldest touch
    assert cache.stats()["evictions"] == 2


def test_cache_counts_bytes_not_entries():
    cache = EmbeddingCache(max_bytes=10_000)
    for i in range(8):
        cache.put(f"small{i}", entry(1000, i))
    assert len(cache) == 8 and cache.bytes == 8000
    cache.put("big", entry(6000, 9))  # needs four small ones out
    assert len(cache) == 5 and cache.bytes == 10_000
    assert cache.ids() == ["small4", "small5", "small6", "small7", "big"]
    assert cache.stats()["evictions"] == 4


def test_cache_replacing_an_id_and_oversized_entries():
    cache = EmbeddingCache(max_bytes=5000)
    cache.put("x", entry(4000, 1))
    cache.put("x", entry(2000, 2))  # replaced, not double-counted
    assert cache.bytes == 2000 and len(cache) == 1
    assert not cache.put("huge", entry(8000, 3))
    assert cache.stats()["rejected"] == 1 and cache.ids() == ["x"]
    assert cache.peek("x") and cache.stats()["hits"] == 0  # peek counts nothing
    with pytest.raises(ValueError, match="max_bytes"):
        EmbeddingCache(-1)


# ---------------------------------------------------------------- images and ids


def test_image_id_is_a_content_hash(image):
    fast, small = png_bytes(image, compress_level=0), png_bytes(image, compress_level=9)
    assert fast != small
    a, b = api.decode_image(fast, LIMITS), api.decode_image(small, LIMITS)
    np.testing.assert_array_equal(a, image)
    assert api.image_id_of(a) == api.image_id_of(b)
    other = image.copy()
    other[0, 0, 0] ^= 1
    assert api.image_id_of(other) != api.image_id_of(image)
    # Same bytes, another shape: another image.
    assert api.image_id_of(image.reshape(60, 40, 3)) != api.image_id_of(image)


@pytest.mark.parametrize("data, status, message", [
    (b"", 400, "empty"),
    (b"not an image at all", 400, "cannot decode"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, 400, "cannot decode"),
])
def test_undecodable_images(data, status, message):
    with pytest.raises(api.RequestError, match=message) as info:
        api.decode_image(data, LIMITS)
    assert info.value.status == status and info.value.field == "image"


def test_truncated_png_and_foreign_formats(image):
    with pytest.raises(api.RequestError, match="cannot decode"):
        api.decode_image(png_bytes(image)[:-30], LIMITS)
    gif = io.BytesIO()
    Image.fromarray(image).save(gif, format="GIF")
    with pytest.raises(api.RequestError, match="GIF") as info:
        api.decode_image(gif.getvalue(), LIMITS)
    assert info.value.status == 415


def test_pixel_limit_is_checked_before_decoding():
    wide = np.zeros((2, 300 * 300 // 2 + 1, 3), np.uint8)
    with pytest.raises(api.RequestError, match="over the limit") as info:
        api.decode_image(png_bytes(wide), LIMITS)
    assert info.value.status == 413
    grey = np.arange(300, dtype=np.uint8).reshape(10, 30)  # greyscale becomes RGB
    assert api.decode_image(png_bytes(grey), LIMITS).shape == (10, 30, 3)


# ---------------------------------------------------------------- /v1/predict


def predict_body(**fields) -> bytes:
    return json.dumps(fields).encode()


def test_predict_parses_the_official_arguments(image):
    mask = np.random.default_rng(2).standard_normal((1, M, M)).astype(np.float32)
    prompt, decoded = api.parse_predict(predict_body(
        image=b64(png_bytes(image)), point_coords=[[1, 2], [3.5, 4]], point_labels=[1, 0], box=[0, 1, 30, 20],
        mask_input=api.encode_array(mask), multimask_output=False, mask_format="png", return_low_res_logits=True,
    ), LIMITS, M)
    np.testing.assert_array_equal(decoded, image)
    np.testing.assert_array_equal(prompt.point_coords, [[1, 2], [3.5, 4]])
    np.testing.assert_array_equal(prompt.point_labels, [1, 0])
    np.testing.assert_array_equal(prompt.box, [0, 1, 30, 20])
    np.testing.assert_array_equal(prompt.mask_input, mask)
    assert prompt.image_id is None and not prompt.multimask_output and prompt.mask_format == "png"
    kwargs = prompt.predict_kwargs()
    assert set(kwargs) == {"point_coords", "point_labels", "box", "mask_input", "multimask_output"}
    # nested lists are accepted for mask_input too
    prompt, decoded = api.parse_predict(predict_body(image_id="abc", mask_input=mask.tolist()), LIMITS, M)
    np.testing.assert_array_equal(prompt.mask_input, mask)
    assert decoded is None and prompt.image_id == "abc"


BAD_PREDICTS = [
    (b"{not json", "body", 400, "not valid JSON"),
    (b"[1, 2]", "body", 400, "JSON object"),
    (predict_body(image_id="a", points=[[1, 2]]), "points", 400, "unknown field"),
    (predict_body(box=[0, 0, 1, 1]), "image_id", 400, "give an image_id"),
    (predict_body(image_id="has space", box=[0, 0, 1, 1]), "image_id", 400, "not a valid image id"),
    (predict_body(image_id=7, box=[0, 0, 1, 1]), "image_id", 400, "not a valid image id"),
    (predict_body(image="%%%", box=[0, 0, 1, 1]), "image", 400, "base64"),
    (predict_body(image=b64(b"garbage"), box=[0, 0, 1, 1]), "image", 400, "cannot decode"),
    (predict_body(image_id="a"), "point_coords", 400, "no prompt"),
    (predict_body(image_id="a", point_coords=[[1, 2]]), "point_labels", 400, "go together"),
    (predict_body(image_id="a", point_coords=[1, 2], point_labels=[1]), "point_coords", 400, "shape"),
    (predict_body(image_id="a", point_coords=[[1, 2, 3]], point_labels=[1]), "point_coords", 400, "shape"),
    (predict_body(image_id="a", point_coords=[[1, 2], [3]], point_labels=[1, 1]), "point_coords", 400, "regular"),
    (predict_body(image_id="a", point_coords=[["x", 2]], point_labels=[1]), "point_coords", 400, "numbers"),
    (predict_body(image_id="a", point_coords=[[1, 2]] * 9, point_labels=[1] * 9), "point_coords", 400, "shape"),
    (predict_body(image_id="a", point_coords=[[1, 2]], point_labels=[1, 0]), "point_labels", 400, "shape"),
    (predict_body(image_id="a", point_coords=[[1, 2]], point_labels=[2]), "point_labels", 400, "values"),
    (b'{"image_id": "a", "point_coords": [[NaN, 2]], "point_labels": [1]}', "point_coords", 400, "NaN"),
    (b'{"image_id": "a", "box": [0, 0, Infinity, 1]}', "box", 400, "NaN or infinite"),
    (b'{"image_id": "a", "box": [0, 0, 1e999, 1]}', "box", 400, "NaN or infinite"),
    (predict_body(image_id="a", box=[0, 0, 1]), "box", 400, "shape"),
    (predict_body(image_id="a", box=[5, 0, 1, 1]), "box", 400, "out of order"),
    (predict_body(image_id="a", mask_input=np.zeros((1, 8, 8)).tolist()), "mask_input", 400, "shape"),
    (predict_body(image_id="a", mask_input={"shape": [1, M, M], "dtype": "float32", "data": b64(b"1234")}),
     "mask_input", 400, "needs"),
    (predict_body(image_id="a", box=[0, 0, 1, 1], multimask_output="yes"), "multimask_output", 400, "true or false"),
    (predict_body(image_id="a", box=[0, 0, 1, 1], return_logits=True), "return_logits", 400, "not served"),
    (predict_body(image_id="a", box=[0, 0, 1, 1], mask_format="jpeg"), "mask_format", 400, "got"),
]


@pytest.mark.parametrize("body, field, status, message", BAD_PREDICTS)
def test_bad_predict_requests_name_the_field(body, field, status, message):
    with pytest.raises(api.RequestError, match=message) as info:
        api.parse_predict(body, LIMITS, M)
    error = info.value
    assert (error.field, error.status) == (field, status)
    payload = error.body()["error"]
    assert payload["field"] == field and payload["message"] and payload["expected"]
    json.dumps(error.body())  # the body is JSON as it stands


def test_prompt_bounds_are_the_image():
    prompt, _ = api.parse_predict(predict_body(image_id="a", point_coords=[[0, 0], [60, 40]], point_labels=[1, 0],
                                               box=[0, 0, 60, 40]), LIMITS, M)
    api.check_prompt_bounds(prompt, (40, 60))  # edges are inside
    for bad, field in (({"point_coords": [[60.5, 1]], "point_labels": [1]}, "point_coords"),
                       ({"point_coords": [[-0.1, 1]], "point_labels": [1]}, "point_coords"),
                       ({"box": [0, 0, 10, 40.01]}, "box")):
        prompt, _ = api.parse_predict(predict_body(image_id="a", **bad), LIMITS, M)
        with pytest.raises(api.RequestError, match="outside the image") as info:
            api.check_prompt_bounds(prompt, (40, 60))
        assert info.value.field == field and "60x40" in info.value.expected


def test_unknown_image_id_tells_the_client_to_resend():
    error = api.ImageNotCached("abc")
    assert error.status == 404 and error.field == "image_id"
    assert error.body()["error"]["status_hint"] == "resend_image"


# ---------------------------------------------------------------- /v1/embed and /v1/generate


def test_embed_takes_raw_bytes_or_json(image):
    raw = png_bytes(image)
    decoded, image_id = api.parse_embed("image/png", raw, {}, LIMITS)
    assert image_id == api.image_id_of(image)
    decoded, image_id = api.parse_embed("application/json", json.dumps({"image": b64(raw), "image_id": "mine"}).encode(),
                                        {}, LIMITS)
    np.testing.assert_array_equal(decoded, image)
    assert image_id == "mine"
    assert api.parse_embed("application/octet-stream", raw, {"image_id": "q"}, LIMITS)[1] == "q"
    with pytest.raises(api.RequestError) as info:
        api.parse_embed("text/plain", raw, {}, LIMITS)
    assert info.value.status == 415 and info.value.field == "content-type"
    with pytest.raises(api.RequestError, match="no image"):
        api.parse_embed("application/json", b"{}", {}, LIMITS)


def test_generate_options(image):
    request = api.parse_generate(json.dumps({"image": b64(png_bytes(image)), "points_per_side": 4,
                                             "pred_iou_thresh": 0}).encode(), LIMITS)
    assert request.options == {"points_per_side": 4, "pred_iou_thresh": 0.0, "output_mode": "coco_rle"}
    for bad in ({"points_per_side": 0}, {"points_per_side": 65}, {"points_per_side": 2.5}, {"points_per_side": True},
                {"crop_n_layers": 3}, {"box_nms_thresh": 1.5}, {"output_mode": "binary_mask"}):
        with pytest.raises(api.RequestError) as info:
            api.parse_generate(json.dumps({"image": b64(png_bytes(image)), **bad}).encode(), LIMITS)
        assert info.value.field == next(iter(bad)) and info.value.status == 400


# ---------------------------------------------------------------- responses


def test_masks_as_coco_rle_decode_with_pycocotools():
    mask_util = pytest.importorskip("pycocotools.mask")
    masks = np.random.default_rng(3).random((3, 37, 53)) > 0.6
    masks[1] = False
    masks[2, 5:20, 9:40] = True
    rles = api.encode_masks(masks, "rle")
    json.dumps(rles)
    for rle, mask in zip(rles, masks):
        decoded = mask_util.decode({"size": rle["size"], "counts": rle["counts"].encode()})
        np.testing.assert_array_equal(decoded.astype(bool), mask)


def test_masks_as_png_and_low_res_logits():
    masks = np.random.default_rng(4).random((2, 9, 11)) > 0.5
    for png, mask in zip(api.encode_masks(masks, "png"), masks):
        decoded = np.asarray(Image.open(io.BytesIO(base64.b64decode(png))))
        np.testing.assert_array_equal(decoded.astype(bool), mask)
    logits = np.random.default_rng(5).standard_normal((3, M, M)).astype(np.float32)
    encoded = api.encode_array(logits)
    np.testing.assert_array_equal(api.decode_array(encoded, "x", "y"), logits)


# ---------------------------------------------------------------- metrics


def test_prometheus_text_round_trips_and_keeps_the_newest():
    a, b = ReplicaMetrics(), ReplicaMetrics()
    a.inc("sam_edge_requests_total", endpoint="/v1/predict", status="200")
    a.inc("sam_edge_requests_total", endpoint="/v1/predict", status="200")
    a.observe("decode", 0.25)
    old = b.snapshot()
    b.inc("sam_edge_encoder_runs_total")
    known = {}
    keep_newest(known, {"A": a.snapshot(), "B": b.snapshot()})
    keep_newest(known, {"B": old})  # late and stale: ignored
    samples = {(name, tuple(sorted(labels.items()))): value
               for name, labels, value in parse_prometheus(render_prometheus(known))}
    assert samples[("sam_edge_requests_total",
                    (("endpoint", "/v1/predict"), ("replica", "A"), ("status", "200")))] == 2
    assert samples[("sam_edge_stage_seconds_sum", (("replica", "A"), ("stage", "decode")))] == 0.25
    assert samples[("sam_edge_stage_seconds_count", (("replica", "A"), ("stage", "decode")))] == 1
    assert samples[("sam_edge_encoder_runs_total", (("replica", "B"),))] == 1
    text = render_prometheus(known)
    assert "# TYPE sam_edge_stage_seconds summary" in text and "# TYPE sam_edge_requests_total counter" in text
    with pytest.raises(KeyError, match="undeclared"):
        a.inc("sam_edge_typo_total")
