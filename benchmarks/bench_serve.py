"""sam-edge serve under a bounded closed-loop load on loopback.

Starts Ray Serve locally with the application of sam_edge.serve, then runs a
fixed number of requests at a fixed concurrency for each of: embed,
predict by image_id, predict with the image. Reports p50/p90/p99 latency and
throughput per phase, the cache hit rate (from /metrics), and the overhead of
a predict request over calling SamPredictor.predict in this process on the
same bundle, measured in the same run.

    python benchmarks/bench_serve.py                       # a small random-weight ViT-B (2 blocks, 256 px)
    python benchmarks/bench_serve.py --bundle DIR --requests 400 --concurrency 8
"""

import argparse
import base64
import io
import json
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import device_tag, print_table, write_results  # noqa: E402


def percentiles(seconds):
    ms = sorted(s * 1000 for s in seconds)
    q = statistics.quantiles(ms, n=100, method="inclusive") if len(ms) > 1 else [ms[0]] * 99
    return {"p50_ms": q[49], "p90_ms": q[89], "p99_ms": q[98], "n": len(ms)}


def post(url, body, content_type="application/json"):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": content_type}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def closed_loop(requests, concurrency, send):
    """Run `send(item)` for every item with `concurrency` workers; (latencies, errors, wall seconds)."""
    latencies, errors, lock = [], [], threading.Lock()
    queue = list(requests)

    def worker():
        while True:
            with lock:
                if not queue:
                    return
                item = queue.pop()
            t0 = time.perf_counter()
            try:
                ok = send(item)
            except Exception as exc:  # counted, not raised: the load goes on
                ok = repr(exc)
            with lock:
                latencies.append(time.perf_counter() - t0)
                if ok is not True:
                    errors.append(ok)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, errors, time.perf_counter() - t0


def images_for(count, seed):
    from skimage import data

    sources = [data.astronaut(), data.coffee(), data.chelsea()]
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        src = sources[i % len(sources)]
        h, w = rng.integers(200, min(src.shape[:2]), 2)
        y, x = rng.integers(0, src.shape[0] - h + 1), rng.integers(0, src.shape[1] - w + 1)
        out.append(np.ascontiguousarray(src[y:y + h, x:x + w]))
    return out


def png(image):
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def metric_sum(url, name):
    from sam_edge.serve.metrics import parse_prometheus

    with urllib.request.urlopen(url + "/metrics", timeout=60) as r:
        return sum(v for n, _, v in parse_prometheus(r.read().decode()) if n == name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", help="a bundle directory (default: build a small random-weight one)")
    parser.add_argument("--requests", type=int, default=200, help="requests per predict phase")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--decoder-replicas", type=int, default=2)
    parser.add_argument("--encoder-threads", type=int, default=None)
    parser.add_argument("--notes", default="", help="free text for the results file")
    parser.add_argument("--tag", default=None, help="results file tag (default: the device tag)")
    args = parser.parse_args()

    import ray
    from ray import serve

    import sam_edge
    from sam_edge.serve.app import ServeConfig, build_app

    bundle = args.bundle
    if bundle is None:
        from sam_edge import get_config
        from sam_edge.export.build import build_bundle

        bundle = os.path.join(tempfile.mkdtemp(prefix="sam-edge-bench-serve-"), "vit_b-d2-256")
        build_bundle(bundle, get_config("vit_b").reduced(depth=2, image_size=256), quiet=True,
                     official_decoder=False)
    manifest = json.load(open(os.path.join(bundle, "manifest.json")))
    images = images_for(args.images, seed=0)
    pngs = [png(im) for im in images]
    rng = np.random.default_rng(1)

    def point(k):
        h, w = images[k].shape[:2]
        return {"point_coords": [[float(rng.uniform(0, w)), float(rng.uniform(0, h))]], "point_labels": [1],
                "multimask_output": True}

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    ray.init(include_dashboard=False, log_to_driver=False)
    results = {}
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        config = ServeConfig(bundle=bundle, decoder_replicas=args.decoder_replicas, encoder_threads=args.encoder_threads,
                             encoder_num_cpus=0.5, decoder_num_cpus=0.25)
        serve.run(build_app(config), name="sam-edge", route_prefix="/")

        ids = {}

        def embed(k):
            status, body = post(url + "/v1/embed", pngs[k], "image/png")
            ids[k] = body.get("image_id")
            return status == 200 or body

        embed_lat, embed_err, embed_wall = closed_loop(list(range(args.images)) * 2, args.concurrency, embed)

        def predict_by_id(k):
            prompt = point(k)
            status, body = post(url + "/v1/predict", dict(prompt, image_id=ids[k]))
            if status == 404 and body["error"].get("status_hint") == "resend_image":
                status, body = post(url + "/v1/predict", dict(prompt, image_id=ids[k], image=base64.b64encode(pngs[k]).decode()))
            return status == 200 or body

        def predict_with_image(k):
            status, body = post(url + "/v1/predict", dict(point(k), image=base64.b64encode(pngs[k]).decode()))
            return status == 200 or body

        work = [int(k) for k in rng.integers(0, args.images, args.requests)]
        hits0, misses0 = metric_sum(url, "sam_edge_cache_hits_total"), metric_sum(url, "sam_edge_cache_misses_total")
        by_id = closed_loop(work, args.concurrency, predict_by_id)
        hits = metric_sum(url, "sam_edge_cache_hits_total") - hits0
        misses = metric_sum(url, "sam_edge_cache_misses_total") - misses0
        single = closed_loop(work[: max(20, args.requests // 4)], 1, predict_by_id)
        with_image = closed_loop(work, args.concurrency, predict_with_image)
        prompts = metric_sum(url, "sam_edge_decoder_prompts_total")
        calls = metric_sum(url, "sam_edge_decoder_calls_total")
        for name, (lat, err, wall) in (("embed", (embed_lat, embed_err, embed_wall)), ("predict_by_id", by_id),
                                       ("predict_by_id_one_client", single), ("predict_with_image", with_image)):
            results[name] = dict(percentiles(lat), errors=len(err), throughput_rps=len(lat) / wall,
                                 concurrency=1 if name.endswith("one_client") else args.concurrency)
    finally:
        serve.shutdown()
        ray.shutdown()

    # The same prompts in this process, one at a time, on the same bundle, with the
    # decoder replicas' thread count.
    engine = sam_edge.load(bundle, threads=config.decoder_threads)
    predictors = []
    for image in images:
        predictor = sam_edge.SamPredictor(engine)
        predictor.set_image(image)
        predictors.append(predictor)
    local = []
    for k in work[: max(20, args.requests // 4)]:
        prompt = point(k)
        t0 = time.perf_counter()
        predictors[k].predict(np.array(prompt["point_coords"]), np.array([1]), multimask_output=True)
        local.append(time.perf_counter() - t0)
    results["in_process_predict"] = dict(percentiles(local), errors=0, throughput_rps=len(local) / sum(local),
                                         concurrency=1)

    payload = {
        "benchmark": "serve",
        "bundle": {k: manifest.get(k) for k in ("model_type", "precision", "image_size", "backend")},
        "config": {"requests": args.requests, "concurrency": args.concurrency, "images": args.images,
                   "decoder_replicas": args.decoder_replicas, "encoder_replicas": 1},
        "phases": results,
        "cache_hit_rate_predict_by_id": hits / max(1, hits + misses),
        "decoder_prompts_per_call": prompts / max(1, calls),
        "overhead_per_predict_p50_ms": results["predict_by_id_one_client"]["p50_ms"] - results["in_process_predict"]["p50_ms"],
        "notes": args.notes,
    }
    path = write_results("serve", payload, tag=args.tag or device_tag())
    rows = [dict(phase=name, **{k: v for k, v in r.items()}) for name, r in results.items()]
    print_table(rows, ["phase", "concurrency", "n", "p50_ms", "p90_ms", "p99_ms", "throughput_rps", "errors"])
    print(f"cache hit rate (predict by id): {payload['cache_hit_rate_predict_by_id']:.3f}; "
          f"prompts per decoder call: {payload['decoder_prompts_per_call']:.2f}; "
          f"overhead per predict (p50, one client): {payload['overhead_per_predict_p50_ms']:.2f} ms")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
