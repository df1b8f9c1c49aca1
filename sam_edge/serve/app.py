"""The Ray Serve application: an HTTP gateway, an encoder and a decoder deployment.

    client --HTTP--> SamGateway --(multiplexed_model_id = image_id)--> SamDecoder --miss--> SamEncoder
                        |                                                  |
                        +------------------- /v1/generate ---------------> SamEncoder

SamGateway parses and validates requests (api.py) and answers 4xx itself.
SamDecoder replicas each hold an EmbeddingCache; Ray Serve's model multiplexing,
keyed by image id, sends prompts for an image to the replica that holds its
embedding, and @serve.batch stacks prompts for one image into one decoder call
(Ray splits batches by multiplexed id). SamEncoder embeds (CPU-heavy, few
replicas) and runs the automatic mask generator.

Miss policy: a prompt that carries the image is answered, re-embedding on a
miss; a prompt by image_id alone that misses gets 404 with
"status_hint": "resend_image", and the client resends it with the image.
"""

import asyncio
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
from ray import serve
from ray.serve.handle import DeploymentHandle

from . import api
from .cache import CachedEmbedding, EmbeddingCache
from .metrics import ReplicaMetrics, keep_newest, render_prometheus

logger = logging.getLogger("sam_edge.serve")

ENDPOINTS = ("/v1/embed", "/v1/predict", "/v1/generate", "/healthz", "/metrics")


@dataclass
class ServeConfig:
    """Everything the application is built from (a Ray Serve config file's `args`).

    bundle: a bundle directory from `sam-edge build`.
    cache_bytes: each decoder replica's embedding cache bound.
    decoder_replicas, encoder_replicas: replicas of each deployment.
    *_num_cpus: Ray CPUs reserved per replica (fractions allowed).
    encoder_threads, decoder_threads: ONNX Runtime intra-op threads (None: its default).
    max_batch_size, batch_wait_timeout_s: @serve.batch of the decoder.
    limits: api.Limits as a dict.
    """

    bundle: str
    cache_bytes: int = 512 << 20
    decoder_replicas: int = 2
    encoder_replicas: int = 1
    encoder_num_cpus: float = 1.0
    decoder_num_cpus: float = 0.5
    gateway_num_cpus: float = 0.0
    encoder_threads: Optional[int] = None
    decoder_threads: Optional[int] = 1
    max_batch_size: int = 16
    batch_wait_timeout_s: float = 0.002
    limits: Dict[str, int] = field(default_factory=dict)
    verify: bool = True

    def __post_init__(self) -> None:
        for name in ("decoder_replicas", "encoder_replicas", "max_batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)}")
        if int(self.cache_bytes) < 0:
            raise ValueError(f"cache_bytes must be >= 0; got {self.cache_bytes}")
        api.Limits(**self.limits)  # unknown keys raise TypeError here, not in a replica


def _replica_name() -> str:
    context = serve.get_replica_context()
    return f"{context.replica_id.deployment_id.name}-{context.replica_id.unique_id}"


def _load_engine(bundle: str, threads: Optional[int], verify: bool):
    from ..runtime.bundle import load

    return load(bundle, threads=threads, verify=verify)


def embedding_nbytes(bundle: str) -> int:
    """Bytes of one image embedding of the bundle's model: (1, C, g, g) float32."""
    from ..runtime.bundle import read_manifest

    manifest = read_manifest(bundle)
    return 4 * int(manifest["config"]["prompt_embed_dim"]) * int(manifest["embedding_size"]) ** 2


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


@serve.deployment(name="SamEncoder", max_ongoing_requests=4)
class SamEncoder:
    """Embeds images and runs the automatic mask generator, one at a time per replica."""

    def __init__(self, bundle: str, threads: Optional[int] = None, verify: bool = True) -> None:
        from ..runtime import SamPredictor

        self.engine = _load_engine(bundle, threads, verify)
        self.predictor = SamPredictor(self.engine)
        # Sync methods run on Ray Serve's thread pool; the predictor and the
        # backend's split-decoder slot hold one image at a time.
        self._lock = threading.Lock()
        self.metrics = ReplicaMetrics()
        self.name = _replica_name()

    def embed(self, image: np.ndarray) -> Dict[str, Any]:
        """{"entry": CachedEmbedding, "seconds", "metrics": (replica, snapshot)} for an (H, W, 3) uint8 image."""
        with self._lock:
            t0 = time.perf_counter()
            self.predictor.set_image(image)
            embedding = np.array(self.predictor.backend.to_numpy(self.predictor.get_image_embedding()), np.float32)
            entry = CachedEmbedding(embedding, tuple(self.predictor.original_size), tuple(self.predictor.input_size))
            self.predictor.reset_image()
            seconds = time.perf_counter() - t0
        self.metrics.inc("sam_edge_encoder_runs_total")
        self.metrics.observe("embed", seconds)
        return {"entry": entry, "seconds": seconds, "metrics": (self.name, self.metrics.snapshot())}

    def generate(self, request: api.GenerateRequest) -> Dict[str, Any]:
        """The official records of SamAutomaticMaskGenerator for request.image."""
        from ..runtime import SamAutomaticMaskGenerator

        with self._lock:
            t0 = time.perf_counter()
            generator = SamAutomaticMaskGenerator(self.engine, **request.options)
            records = generator.generate(request.image)
            seconds = time.perf_counter() - t0
        self.metrics.inc("sam_edge_generate_runs_total")
        self.metrics.observe("generate", seconds)
        body = {"records": records, "timings_ms": {k: _ms(v) for k, v in generator.last_timings.items()}}
        body["timings_ms"]["total"] = _ms(seconds)
        return {"body": body, "metrics": {self.name: self.metrics.snapshot()}}

    def ping(self) -> str:
        return "ok"


@serve.deployment(name="SamDecoder", max_ongoing_requests=64)
class SamDecoder:
    """Holds embeddings (an EmbeddingCache) and answers prompts against them."""

    def __init__(self, bundle: str, encoder: DeploymentHandle, cache_bytes: int, threads: Optional[int] = 1,
                 max_batch_size: int = 16, batch_wait_timeout_s: float = 0.002, verify: bool = True) -> None:
        from ..runtime import SamPredictor

        self.predictor = SamPredictor(_load_engine(bundle, threads, verify))
        self.encoder = encoder
        self.cache = EmbeddingCache(cache_bytes)
        self.metrics = ReplicaMetrics()
        self.name = _replica_name()
        self._encoder_metrics: Dict[str, Any] = {}
        self._embedding: Dict[str, "asyncio.Future"] = {}
        self._decode_batch.set_max_batch_size(int(max_batch_size))
        self._decode_batch.set_batch_wait_timeout_s(float(batch_wait_timeout_s))
        # Ray's per-replica id list is an LRU by count; sized to what the byte
        # bound holds, it drops ids in step with the cache, so routing follows
        # the cache's contents.
        capacity = max(1, int(cache_bytes) // embedding_nbytes(bundle))

        async def confirm_held(image_id: str) -> str:
            if not self.cache.peek(image_id):
                raise KeyError(f"{image_id} is not in this replica's cache")
            return image_id

        self._register = serve.multiplexed(max_num_models_per_replica=capacity)(confirm_held)

    def _snapshots(self) -> Dict[str, Any]:
        self.metrics.set_cache(self.cache.stats())
        return {self.name: self.metrics.snapshot(), **self._encoder_metrics}

    async def _entry(self, image_id: str, image: Optional[np.ndarray]) -> Tuple[CachedEmbedding, str]:
        """(entry, "hit" | "embedded" | "joined"): from the cache, or embedded now when the
        image came with the request; ImageNotCached when it did not."""
        entry = self.cache.get(image_id)
        if entry is not None:
            status = "hit"
        elif image is None:
            self.metrics.inc("sam_edge_cache_resend_total")
            raise api.ImageNotCached(image_id)
        elif image_id in self._embedding:
            # Another request is embedding this image here: wait for it, not a second encoder run.
            entry, status = await asyncio.shield(self._embedding[image_id]), "joined"
        else:
            future = asyncio.get_running_loop().create_future()
            future.add_done_callback(lambda f: f.cancelled() or f.exception())
            self._embedding[image_id] = future
            try:
                result = await self.encoder.embed.remote(image)
                entry = result["entry"]
                keep_newest(self._encoder_metrics, dict([result["metrics"]]))
                self.metrics.observe("embed_remote", result["seconds"])
                self.cache.put(image_id, entry)
                future.set_result(entry)
            except BaseException as exc:
                future.set_exception(exc)
                raise
            finally:
                del self._embedding[image_id]
            status = "embedded"
        if self.cache.peek(image_id):
            await self._register(image_id)
        return entry, status

    async def embed(self, image: np.ndarray, image_id: str) -> Dict[str, Any]:
        t0 = time.perf_counter()
        entry, status = await self._entry(image_id, image)
        h, w = entry.original_size
        body = {"image_id": image_id, "height": h, "width": w, "cache": status,
                "timings_ms": {"decoder_replica": _ms(time.perf_counter() - t0)}}
        return {"body": body, "replica": self.name, "metrics": self._snapshots()}

    async def predict(self, prompt: api.PromptRequest, image: Optional[np.ndarray]) -> Dict[str, Any]:
        """{"body" | "error", "status", "replica", "metrics"}: errors come back as values,
        so that a bad prompt never raises through Ray."""
        t0 = time.perf_counter()
        try:
            entry, status = await self._entry(prompt.image_id, image)
            api.check_prompt_bounds(prompt, entry.original_size)
        except api.RequestError as exc:
            return {"error": exc.body(), "status": exc.status, "replica": self.name, "metrics": self._snapshots()}
        body = await self._decode_batch((prompt, entry))
        body["cache"] = status
        body["timings_ms"]["decoder_replica"] = _ms(time.perf_counter() - t0)
        return {"body": body, "status": 200, "replica": self.name, "metrics": self._snapshots()}

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.002)
    async def _decode_batch(self, items: List[Tuple[api.PromptRequest, CachedEmbedding]]) -> List[Dict[str, Any]]:
        groups: Dict[Tuple, List[int]] = {}
        for i, (prompt, entry) in enumerate(items):
            groups.setdefault((id(entry), prompt.batch_key()), []).append(i)
        out: List[Optional[Dict[str, Any]]] = [None] * len(items)
        loop = asyncio.get_running_loop()
        for indexes in groups.values():
            prompts = [items[i][0] for i in indexes]
            bodies = await loop.run_in_executor(None, self._answer, prompts, items[indexes[0]][1])
            for i, body in zip(indexes, bodies):
                out[i] = body
        return out

    def _answer(self, prompts: List[api.PromptRequest], entry: CachedEmbedding) -> List[Dict[str, Any]]:
        """One decoder call for B prompts of one shape on one image (the batched
        form of SamPredictor.predict, numpy in and out)."""
        t0 = time.perf_counter()
        backend, transform = self.predictor.backend, self.predictor.transform
        size = entry.original_size
        coords = labels = boxes = masks_in = None
        first = prompts[0]
        if first.point_coords is not None:
            coords = np.stack([transform.apply_coords(p.point_coords, size) for p in prompts]).astype(np.float32)
            labels = np.stack([p.point_labels for p in prompts]).astype(np.int64)
        if first.box is not None:
            boxes = np.stack([transform.apply_boxes(p.box, size).reshape(4) for p in prompts]).astype(np.float32)
        if first.mask_input is not None:
            masks_in = np.stack([p.mask_input for p in prompts]).astype(np.float32)
        convert = lambda a: None if a is None else backend.from_numpy(a)  # noqa: E731
        low_res, scores = backend.decode(backend.from_numpy(entry.embedding), convert(coords), convert(labels),
                                         convert(boxes), convert(masks_in), first.multimask_output)
        if hasattr(backend, "binary_masks"):
            masks = backend.binary_masks(low_res, entry.input_size, size)
        else:
            masks = backend.postprocess_masks(low_res, entry.input_size, size) > backend.mask_threshold
        masks, scores, low_res = backend.to_numpy(masks), backend.to_numpy(scores), backend.to_numpy(low_res)
        decoded = time.perf_counter()
        bodies = [api.prediction_body(p, p.image_id, masks[i], scores[i], low_res[i]) for i, p in enumerate(prompts)]
        encoded = time.perf_counter()
        self.metrics.inc("sam_edge_decoder_calls_total")
        self.metrics.inc("sam_edge_decoder_prompts_total", len(prompts))
        self.metrics.observe("decode", decoded - t0)
        self.metrics.observe("encode_masks", encoded - decoded)
        for body in bodies:
            body["timings_ms"] = {"decode": _ms(decoded - t0), "encode_masks": _ms(encoded - decoded),
                                  "batch_size": len(prompts)}
        return bodies

    def ping(self) -> str:
        return "ok"


def _json(body: Dict[str, Any], status: int = 200, headers: Optional[Dict[str, str]] = None):
    from starlette.responses import JSONResponse

    return JSONResponse(body, status_code=status, headers=headers)


@serve.deployment(name="SamGateway", max_ongoing_requests=256)
class SamGateway:
    """The HTTP ingress: parses, validates, routes, and keeps /metrics."""

    def __init__(self, decoder: DeploymentHandle, encoder: DeploymentHandle, limits: Dict[str, int],
                 mask_input_size: int) -> None:
        self.decoder = decoder
        self.encoder = encoder
        self.limits = api.Limits(**limits)
        self.mask_input_size = int(mask_input_size)
        self.metrics = ReplicaMetrics()
        self.name = _replica_name()
        self._replica_metrics: Dict[str, Any] = {}

    async def __call__(self, request) -> Any:
        t0 = time.perf_counter()
        path = request.url.path.rstrip("/") or "/"
        status = 500
        try:
            response = await self._route(request, path)
            status = response.status_code
        except api.RequestError as exc:
            status = exc.status
            response = _json(exc.body(), exc.status)
        except Exception:  # a bug or a replica failure, never the client's input: no trace to the client
            logger.exception("sam-edge serve: internal error on %s", path)
            response = _json({"error": {"field": None, "message": "internal server error; see the server log"}}, 500)
        endpoint = path if path in ENDPOINTS else "other"
        self.metrics.inc("sam_edge_requests_total", endpoint=endpoint, status=str(status))
        self.metrics.observe(f"http{endpoint if endpoint != 'other' else '_other'}", time.perf_counter() - t0)
        return response

    async def _route(self, request, path: str):
        method = request.method
        expected_method = {"/healthz": "GET", "/metrics": "GET"}.get(path, "POST")
        if path not in ENDPOINTS:
            raise api.RequestError("path", f"no endpoint {path}", expected=f"one of {list(ENDPOINTS)}", status=404)
        if method != expected_method:
            raise api.RequestError("method", f"{path} does not take {method}", expected=expected_method, status=405)
        if path == "/healthz":
            return await self._health()
        if path == "/metrics":
            from starlette.responses import PlainTextResponse

            snapshots = dict(self._replica_metrics, **{self.name: self.metrics.snapshot()})
            return PlainTextResponse(render_prometheus(snapshots), media_type="text/plain; version=0.0.4")
        body = await self._read_body(request)
        if path == "/v1/embed":
            t0 = time.perf_counter()
            image, image_id = api.parse_embed(request.headers.get("content-type", ""), body,
                                              dict(request.query_params), self.limits)
            self.metrics.observe("parse", time.perf_counter() - t0)
            result = await self.decoder.options(multiplexed_model_id=image_id).embed.remote(image, image_id)
            return self._answer(result)
        if path == "/v1/predict":
            t0 = time.perf_counter()
            prompt, image = api.parse_predict(body, self.limits, self.mask_input_size)
            if image is not None and prompt.image_id is None:
                prompt.image_id = api.image_id_of(image)
            self.metrics.observe("parse", time.perf_counter() - t0)
            result = await self.decoder.options(multiplexed_model_id=prompt.image_id).predict.remote(prompt, image)
            return self._answer(result)
        request_ = api.parse_generate(body, self.limits)
        result = await self.encoder.generate.remote(request_)
        return self._answer(result)

    def _answer(self, result: Dict[str, Any]):
        keep_newest(self._replica_metrics, result.get("metrics", {}))
        headers = {"x-sam-edge-replica": result["replica"]} if "replica" in result else None
        if "error" in result:
            return _json(result["error"], result["status"], headers)
        return _json(result["body"], 200, headers)

    async def _read_body(self, request) -> bytes:
        limit = self.limits.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise api.RequestError("content-length", f"got {declared[:40]!r}", expected="a byte count")
            if int(declared) > limit:
                raise api.RequestError("body", f"the body is {declared} bytes, over the limit of {limit}",
                                       expected=f"at most {limit} bytes", status=413)
        chunks, total = [], 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                raise api.RequestError("body", f"the body is over the limit of {limit} bytes",
                                       expected=f"at most {limit} bytes", status=413)
            chunks.append(chunk)
        return b"".join(chunks)

    async def _health(self):
        checks = {}
        for name, handle in (("encoder", self.encoder), ("decoder", self.decoder)):
            try:
                checks[name] = await asyncio.wait_for(handle.ping.remote(), timeout=10.0)
            except Exception as exc:  # report, do not raise: health is an answer, not an error
                checks[name] = f"unavailable: {type(exc).__name__}"
        healthy = all(v == "ok" for v in checks.values())
        return _json({"status": "ok" if healthy else "degraded", **checks}, 200 if healthy else 503)


def build_app(config: ServeConfig):
    """The Ray Serve application (pass to serve.run) for `config`."""
    from ..runtime.bundle import read_manifest

    manifest = read_manifest(config.bundle)
    encoder = SamEncoder.options(
        num_replicas=int(config.encoder_replicas),
        ray_actor_options={"num_cpus": float(config.encoder_num_cpus)},
    ).bind(config.bundle, config.encoder_threads, config.verify)
    decoder = SamDecoder.options(
        num_replicas=int(config.decoder_replicas),
        ray_actor_options={"num_cpus": float(config.decoder_num_cpus)},
    ).bind(config.bundle, encoder, int(config.cache_bytes), config.decoder_threads, int(config.max_batch_size),
           float(config.batch_wait_timeout_s), config.verify)
    return SamGateway.options(ray_actor_options={"num_cpus": float(config.gateway_num_cpus)}).bind(
        decoder, encoder, dict(config.limits), int(manifest["mask_input_size"])
    )


def app_builder(args: Dict[str, Any]):
    """For Ray Serve config files and `serve run`: `import_path: sam_edge.serve.app:app_builder`,
    `args:` the fields of ServeConfig (bundle required)."""
    return build_app(ServeConfig(**args))


def run_server(config: ServeConfig, host: str, port: int, ready=None) -> None:
    """Start Ray, Serve and the application on host:port, block until interrupted, and
    shut everything down. `ready(url)` is called once it answers."""
    import signal

    import ray

    def stop(signum, frame):
        raise KeyboardInterrupt

    # SIGTERM (systemd, Kubernetes, kill) shuts down as Ctrl-C does, not leaving Ray behind.
    signal.signal(signal.SIGTERM, stop)
    ray.init(include_dashboard=False, configure_logging=False)
    try:
        serve.start(http_options={"host": host, "port": int(port)})
        serve.run(build_app(config), name="sam-edge", route_prefix="/")
        url = f"http://{host}:{port}"
        (ready or (lambda u: print(f"sam-edge serve: listening on {u} (Ctrl-C stops)", flush=True)))(url)
        while True:
            time.sleep(3600)
    finally:
        serve.shutdown()
        ray.shutdown()


__all__ = ["ServeConfig", "SamEncoder", "SamDecoder", "SamGateway", "build_app", "app_builder", "run_server",
           "embedding_nbytes"]
