"""Serving sam-edge: a Ray Serve application (`sam-edge serve`) and a Triton
Inference Server model repository (`sam-edge export-triton`).

    pip install "sam-edge[serve]"
    sam-edge serve BUNDLE --replicas 2 --host 127.0.0.1 --port 8000

Modules: api (request validation, pure), cache (the byte-bounded embedding
cache), metrics (Prometheus text), app (the Ray Serve deployments; imports
ray), triton_repo (the Triton model repository; no ray).
Ray is imported only when app's names are used, so the lean runtime and the
Triton export do not need it.
"""

_LAZY = {
    "ServeConfig": "app",
    "build_app": "app",
    "app_builder": "app",
    "run_server": "app",
    "EmbeddingCache": "cache",
    "CachedEmbedding": "cache",
    "export_triton_repository": "triton_repo",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'sam_edge.serve' has no attribute {name!r}")


__all__ = list(_LAZY)
