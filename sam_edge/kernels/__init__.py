"""Fused operations of sam-edge, each with a plain reference implementation."""

from .rel_pos_attention import (
    BACKEND_ENV,
    available_backends,
    get_rel_pos,
    register_backend,
    rel_pos_attention,
    rel_pos_attention_reference,
    rel_pos_attention_sdpa,
    resolve_backend,
)
from .windowed_attention import (
    register_fused_backend,
    windowed_rel_pos_attention,
    windowed_rel_pos_attention_reference,
)

__all__ = [
    "BACKEND_ENV",
    "available_backends",
    "get_rel_pos",
    "register_backend",
    "rel_pos_attention",
    "rel_pos_attention_reference",
    "rel_pos_attention_sdpa",
    "resolve_backend",
    "register_fused_backend",
    "windowed_rel_pos_attention",
    "windowed_rel_pos_attention_reference",
]
