"""sam_edge.serve against the real Ray Serve, started here on 127.0.0.1 with the
small test bundle: one module-scoped deployment (2 decoder replicas, 1 encoder),
shut down at the end with a check that no process is left behind.

Answers are compared with a local SamPredictor on the same bundle. The server
stacks prompts for one image into one decoder call, which reorders float32
sums; so scores agree to SCORE_ATOL, and masks agree exactly except at pixels
where the local logit is within LOGIT_ATOL of the threshold (observed batched
vs single differences are ~1e-5 on logits of order 1; the margin is 100x).
"""

import base64
import http.client
import io
import json
import os
import select
import socket
import threading
import time
import urllib.parse

import numpy as np
import pytest

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")
mask_util = pytest.importorskip("pycocotools.mask")

from onnx_helpers import build_test_bundle, photos, reduced_config  # noqa: E402

import sam_edge  # noqa: E402
from sam_edge.serve.app import ServeConfig, build_app, embedding_nbytes  # noqa: E402
from sam_edge.serve.metrics import parse_prometheus  # noqa: E402

SCORE_ATOL = 1e-4
LOGIT_ATOL = 1e-3
DECODER_REPLICAS = 2
CACHE_ENTRIES = 4  # per decoder replica


def _children(pid: int) -> set:
    """Every live descendant of pid, from /proc."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            fields = stat[stat.rfind(")") + 2:].split()
            if fields[0] != "Z":
                parents.setdefault(int(fields[1]), []).append(int(entry))
    out, todo = set(), [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.add(child)
            todo.append(child)
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, url: str, bundle, engine):
        self.url = url
        self.bundle = bundle
        self.engine = engine
        self._local = {}

    def local(self, image):
        """A local SamPredictor on the same bundle with `image` set (kept per image)."""
        key = sam_edge.serve.api.image_id_of(image)
        if key not in self._local:
            self._local[key] = sam_edge.SamPredictor(self.engine)
            self._local[key].set_image(image)
        return self._local[key]

    def request(self, path, body=None, content_type="application/json", method=None):
        """(status, JSON body or text, replica header)."""
        data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
        address = urllib.parse.urlsplit(self.url)
        conn = http.client.HTTPConnection(address.hostname, address.port, timeout=120)
        try:
            conn.putrequest(method or ("POST" if data is not None else "GET"), path)
            conn.putheader("Content-Type", content_type)
            conn.putheader("Connection", "close")
            if data is not None:
                conn.putheader("Content-Length", str(len(data)))
            conn.endheaders()
            # As curl does: stop sending once the server has answered (a 413 by Content-Length comes
            # before the body is read, and the server then closes), so the answer is read, not a broken pipe.
            view = memoryview(data or b"")
            for start in range(0, len(view), 1 << 16):
                if select.select([conn.sock], [], [], 0)[0]:
                    break
                try:
                    conn.sock.sendall(view[start:start + (1 << 16)])
                except (BrokenPipeError, ConnectionResetError):
                    break
            response = conn.getresponse()
            status, raw, headers = response.status, response.read(), response.headers
        finally:
            conn.close()
        text = raw.decode()
        payload = json.loads(text) if headers.get("content-type", "").startswith("application/json") else text
        return status, payload, headers.get("x-sam-edge-replica")

    def predict(self, prompt, image_id, png):
        """The documented client protocol: by image_id; on 404 resend_image, again with the image.
        Returns (final status, body, [(status, replica, cache), ...])."""
        trail = []
        status, body, replica = self.request("/v1/predict", dict(prompt, image_id=image_id))
        trail.append((status, replica, body.get("cache")))
        if status == 404 and body["error"].get("status_hint") == "resend_image":
            status, body, replica = self.request("/v1/predict", dict(prompt, image_id=image_id, image=b64(png)))
            trail.append((status, replica, body.get("cache")))
        return status, body, trail

    def metric(self, name, **labels):
        """Sum of a metric over replicas (and any labels not given)."""
        _, text, _ = self.request("/metrics")
        return sum(v for n, ls, v in parse_prometheus(text) if n == name
                   and all(ls.get(k) == w for k, w in labels.items()))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def png(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def fresh_images(count: int, seed: int):
    """`count` fresh crops of real photos, 60-220 px a side, so every test embeds new ids."""
    rng = np.random.default_rng(seed)
    sources = list(photos().values())
    out = []
    for i in range(count):
        src = sources[i % len(sources)]
        h, w = rng.integers(60, 220, 2)
        y, x = rng.integers(0, src.shape[0] - h), rng.integers(0, src.shape[1] - w)
        out.append(np.ascontiguousarray(src[y:y + h, x:x + w]))
    return out


def random_prompt(shape, rng):
    """A JSON prompt of a random kind in original-image pixels."""
    h, w = shape[:2]
    kind = rng.integers(0, 4)
    points = np.stack([rng.uniform(0, w, 3), rng.uniform(0, h, 3)], axis=1)
    x0, x1 = np.sort(rng.uniform(0, w, 2))
    y0, y1 = np.sort(rng.uniform(0, h, 2))
    prompt = {"multimask_output": bool(rng.integers(0, 2))}
    if kind in (0, 2):
        n = 1 if kind == 0 else 2
        prompt.update(point_coords=points[:n].tolist(), point_labels=[1] + [0] * (n - 1))
    if kind in (1, 2, 3):
        prompt["box"] = [x0, y0, x1, y1]
    if kind == 3:
        prompt.update(point_coords=points[:3].tolist(), point_labels=[1, 1, 0])
    return prompt


def assert_matches_local(server, image, prompt, body):
    """The server's answer equals the local predictor's (see the module docstring)."""
    predictor = server.local(image)
    kwargs = dict(point_coords=np.array(prompt["point_coords"]) if "point_coords" in prompt else None,
                  point_labels=np.array(prompt["point_labels"]) if "point_labels" in prompt else None,
                  box=np.array(prompt["box"]) if "box" in prompt else None,
                  multimask_output=prompt["multimask_output"])
    masks, scores, _ = predictor.predict(**kwargs)
    logits, _, _ = predictor.predict(**kwargs, return_logits=True)
    served = np.stack([mask_util.decode({"size": r["size"], "counts": r["counts"].encode()}) for r in body["masks"]])
    assert served.shape == masks.shape
    differ = served.astype(bool) != masks
    assert np.all(np.abs(logits[differ]) <= LOGIT_ATOL), f"{differ.sum()} pixels differ away from the threshold"
    np.testing.assert_allclose(body["scores"], scores, atol=SCORE_ATOL, rtol=0)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    _, _, bundle = build_test_bundle(tmp_path_factory.mktemp("serve"), reduced_config(), seed=11)
    before = _children(os.getpid())
    port = _free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        config = ServeConfig(
            bundle=str(bundle), decoder_replicas=DECODER_REPLICAS, encoder_replicas=1,
            cache_bytes=CACHE_ENTRIES * embedding_nbytes(str(bundle)) + embedding_nbytes(str(bundle)) // 2,
            encoder_threads=1, decoder_threads=1, encoder_num_cpus=1.0, decoder_num_cpus=0.5,
            limits={"max_body_bytes": 2 << 20, "max_pixels": 400 * 400},
        )
        serve.run(build_app(config), name="sam-edge", route_prefix="/")
        yield Server(f"http://127.0.0.1:{port}", bundle, sam_edge.load(str(bundle)))
    finally:
        serve.shutdown()
        ray.shutdown()
        deadline = time.monotonic() + 30
        while _children(os.getpid()) - before and time.monotonic() < deadline:
            time.sleep(0.5)
        left = _children(os.getpid()) - before
        assert not left, f"processes left behind: {sorted(left)}"
    with socket.socket() as s:  # and nothing listens on the port (TIME_WAIT is not a listener)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))


def test_embed_once_query_many(server):
    image = fresh_images(1, seed=1)[0]
    data = png(image)
    runs_before = server.metric("sam_edge_encoder_runs_total")
    status, body, replica = server.request("/v1/embed", data, content_type="image/png")
    assert status == 200, body
    assert (body["height"], body["width"]) == image.shape[:2]
    image_id = body["image_id"]
    serving = {replica: [body["cache"]]}
    rng = np.random.default_rng(2)
    for _ in range(50):
        prompt = random_prompt(image.shape, rng)
        status, answer, trail = server.predict(prompt, image_id, data)
        assert status == 200, answer
        assert answer["image_id"] == image_id
        for _, rep, cache in trail:
            serving.setdefault(rep, []).append(cache)
        assert_matches_local(server, image, prompt, answer)
    embedded_on = [rep for rep, caches in serving.items() if "embedded" in caches]
    # Each replica that served the image embedded it at most once, and the
    # encoder ran exactly that often.
    assert all(caches.count("embedded") <= 1 for caches in serving.values()), serving
    assert server.metric("sam_edge_encoder_runs_total") - runs_before == len(embedded_on) <= DECODER_REPLICAS
    hits = sum(caches.count("hit") for caches in serving.values())
    assert hits >= 50 - DECODER_REPLICAS


def test_concurrent_clients(server):
    """8 clients x 25 requests over 4 images: no error, no lost or crossed answer."""
    images = fresh_images(4, seed=3)
    datas = [png(im) for im in images]
    ids = []
    for data in datas:
        status, body, _ = server.request("/v1/embed", {"image": b64(data)})
        assert status == 200, body
        ids.append(body["image_id"])
    results, failures = [], []

    def client(seed):
        rng = np.random.default_rng(seed)
        for _ in range(25):
            k = int(rng.integers(0, 4))
            prompt = random_prompt(images[k].shape, rng)
            try:
                status, body, _ = server.predict(prompt, ids[k], datas[k])
                results.append((k, prompt, status, body))
            except Exception as exc:  # a lost answer is a failure too
                failures.append(repr(exc))

    threads = [threading.Thread(target=client, args=(100 + i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not failures and len(results) == 200
    for k, prompt, status, body in results:
        assert status == 200, body
        assert body["image_id"] == ids[k]
        assert_matches_local(server, images[k], prompt, body)


def test_evicted_ids_are_reported_then_reembedded(server):
    """More images than all replicas' caches hold: some ids must miss everywhere, and
    each miss is the documented 404 resend_image, answered once the image is resent."""
    images = fresh_images(DECODER_REPLICAS * CACHE_ENTRIES + 2, seed=4)
    evictions_before = server.metric("sam_edge_cache_evictions_total")
    ids = []
    for image in images:
        status, body, _ = server.request("/v1/embed", png(image), content_type="image/png")
        assert status == 200, body
        ids.append(body["image_id"])
    assert server.metric("sam_edge_cache_evictions_total") - evictions_before >= 2
    resends = 0
    rng = np.random.default_rng(5)
    for image, image_id in zip(images, ids):
        prompt = random_prompt(image.shape, rng)
        status, body, _ = server.request("/v1/predict", dict(prompt, image_id=image_id))
        if status == 404:
            assert body["error"]["field"] == "image_id" and body["error"]["status_hint"] == "resend_image"
            resends += 1
            status, body, _ = server.request("/v1/predict", dict(prompt, image_id=image_id, image=b64(png(image))))
            assert body["cache"] in ("embedded", "hit")
        assert status == 200, body
        assert_matches_local(server, image, prompt, body)
    assert resends >= 2


def test_png_masks_and_low_res_logits(server):
    from PIL import Image

    image = fresh_images(1, seed=6)[0]
    prompt = {"point_coords": [[image.shape[1] / 2, image.shape[0] / 2]], "point_labels": [1],
              "multimask_output": True}
    status, body, _ = server.request("/v1/predict", dict(prompt, image=b64(png(image)), mask_format="png",
                                                         return_low_res_logits=True))
    assert status == 200, body
    assert body["image_id"] == sam_edge.serve.api.image_id_of(image)
    local = server.local(image)
    masks, scores, low_res = local.predict(np.array(prompt["point_coords"]), np.array([1]))
    served = np.stack([np.asarray(Image.open(io.BytesIO(base64.b64decode(p)))) for p in body["masks"]]).astype(bool)
    logits, _, _ = local.predict(np.array(prompt["point_coords"]), np.array([1]), return_logits=True)
    assert np.all(np.abs(logits[served != masks]) <= LOGIT_ATOL)
    encoded = body["low_res_logits"]
    served_low = np.frombuffer(base64.b64decode(encoded["data"]), "<f4").reshape(encoded["shape"])
    np.testing.assert_allclose(served_low, low_res, atol=LOGIT_ATOL, rtol=0)


def test_generate_returns_the_official_records(server):
    image = fresh_images(1, seed=7)[0]
    options = {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
    status, body, _ = server.request("/v1/generate", dict(options, image=b64(png(image))))
    assert status == 200, body
    local = sam_edge.SamAutomaticMaskGenerator(server.engine, output_mode="coco_rle", **options).generate(image)
    assert len(body["records"]) == len(local) > 0
    keys = {"segmentation", "area", "bbox", "predicted_iou", "point_coords", "stability_score", "crop_box"}
    for served, ref in zip(body["records"], local):
        assert set(served) == keys
        a = mask_util.decode({"size": served["segmentation"]["size"], "counts": served["segmentation"]["counts"].encode()})
        b = mask_util.decode({"size": ref["segmentation"]["size"], "counts": ref["segmentation"]["counts"].encode()})
        assert np.logical_xor(a, b).sum() <= 0.01 * max(1, b.sum())
        assert abs(served["predicted_iou"] - ref["predicted_iou"]) <= SCORE_ATOL


def test_bad_requests_get_4xx_and_the_server_keeps_answering(server):
    image = fresh_images(1, seed=8)[0]
    status, body, _ = server.request("/v1/embed", png(image), content_type="image/png")
    image_id = body["image_id"]
    h, w = image.shape[:2]
    big = np.zeros((401, 400, 3), np.uint8)
    cases = [
        # (path, body, content type, method, status, field)
        ("/v1/embed", b"definitely not a picture", "image/png", None, 400, "image"),
        ("/v1/embed", png(big), "image/png", None, 413, "image"),
        ("/v1/embed", b"x" * (3 << 20), "image/png", None, 413, "body"),
        ("/v1/embed", b"{}", "text/csv", None, 415, "content-type"),
        # with the image, so that whichever replica answers knows the size
        ("/v1/predict", {"image": b64(png(image)), "point_coords": [[w + 5, 1]], "point_labels": [1]},
         "application/json", None, 400, "point_coords"),
        ("/v1/predict", {"image": b64(png(image)), "box": [0, 0, w, h + 1]}, "application/json", None, 400, "box"),
        ("/v1/predict", b'{"image_id": "%s", "point_coords": [[NaN, 1]], "point_labels": [1]}' % image_id.encode(),
         "application/json", None, 400, "point_coords"),
        ("/v1/predict", {"image_id": image_id, "point_coords": [[1, 2, 3]], "point_labels": [1]},
         "application/json", None, 400, "point_coords"),
        ("/v1/predict", {"image_id": image_id, "mask_input": [[0.0] * 4]}, "application/json", None, 400, "mask_input"),
        ("/v1/predict", {"image_id": "never-embedded", "box": [0, 0, 1, 1]}, "application/json", None, 404, "image_id"),
        ("/v1/predict", b"{", "application/json", None, 400, "body"),
        ("/v1/generate", {"image": b64(png(image)), "points_per_side": 1000}, "application/json", None, 400,
         "points_per_side"),
        ("/v1/nothing", {}, "application/json", None, 404, "path"),
        ("/v1/predict", None, "application/json", "GET", 405, "method"),
    ]
    for path, payload, content_type, method, expected_status, field in cases:
        status, body, _ = server.request(path, payload, content_type=content_type, method=method)
        assert status == expected_status, (path, field, body)
        assert body["error"]["field"] == field and body["error"]["message"], body
        assert "Traceback" not in json.dumps(body)
    assert server.metric("sam_edge_requests_total", status="500") == 0
    status, body, _ = server.request("/healthz")
    assert status == 200 and body["status"] == "ok"
    prompt = {"point_coords": [[w / 3, h / 3]], "point_labels": [1], "multimask_output": False}
    status, body, _ = server.predict(prompt, image_id, png(image))
    assert status == 200, body
    assert_matches_local(server, image, prompt, body)
