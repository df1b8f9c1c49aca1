"""Counters, gauges and stage-latency summaries per replica, rendered as Prometheus text.

Each replica keeps a ReplicaMetrics and sends a snapshot of it back with its
answers; the HTTP ingress keeps the newest snapshot of every replica it has
heard from and renders them all at GET /metrics, one `replica` label each.
So /metrics costs no extra calls, and a replica's figures are as fresh as its
last answer.
"""

import threading
from collections import defaultdict
from typing import Dict, Iterable, NamedTuple, Tuple

#: name -> (Prometheus type, help). Every metric a replica records is declared here.
METRICS = {
    "sam_edge_requests_total": ("counter", "HTTP requests by endpoint and status code."),
    "sam_edge_encoder_runs_total": ("counter", "Images the encoder embedded."),
    "sam_edge_generate_runs_total": ("counter", "Automatic mask generator runs."),
    "sam_edge_decoder_calls_total": ("counter", "Decoder calls (a batch of prompts for one image is one call)."),
    "sam_edge_decoder_prompts_total": ("counter", "Prompts the decoder answered."),
    "sam_edge_cache_hits_total": ("counter", "Embedding cache hits."),
    "sam_edge_cache_misses_total": ("counter", "Embedding cache misses."),
    "sam_edge_cache_evictions_total": ("counter", "Embeddings evicted to stay under the byte bound."),
    "sam_edge_cache_rejected_total": ("counter", "Embeddings larger than the whole bound, not kept."),
    "sam_edge_cache_resend_total": ("counter", "Prompts by image_id alone that missed: the client was told to resend."),
    "sam_edge_cache_bytes": ("gauge", "Bytes of embeddings held."),
    "sam_edge_cache_max_bytes": ("gauge", "The cache's byte bound."),
    "sam_edge_cache_entries": ("gauge", "Embeddings held."),
    "sam_edge_stage_seconds": ("summary", "Seconds spent per stage (decode_image, embed, decode, encode_masks, ...)."),
}

Labels = Tuple[Tuple[str, str], ...]


class ReplicaMetrics:
    """One replica's metrics. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: Dict[Tuple[str, Labels], float] = defaultdict(float)
        self._version = 0

    @staticmethod
    def _key(name: str, labels: Dict[str, str]) -> Tuple[str, Labels]:
        if name not in METRICS:
            raise KeyError(f"undeclared metric {name!r}; declare it in sam_edge.serve.metrics.METRICS")
        return name, tuple(sorted((k, str(v)) for k, v in labels.items()))

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        key = self._key(name, labels)
        with self._lock:
            self._values[key] += value
            self._version += 1

    def set(self, name: str, value: float, **labels: str) -> None:
        key = self._key(name, labels)
        with self._lock:
            self._values[key] = float(value)
            self._version += 1

    def observe(self, stage: str, seconds: float) -> None:
        """One sample of a stage's latency (kept as sum and count)."""
        with self._lock:
            self._values[("sam_edge_stage_seconds_sum", (("stage", stage),))] += seconds
            self._values[("sam_edge_stage_seconds_count", (("stage", stage),))] += 1
            self._version += 1

    def set_cache(self, stats: Dict[str, int]) -> None:
        """Mirror an EmbeddingCache.stats() into the cache metrics."""
        for stat in ("hits", "misses", "evictions", "rejected"):
            self.set(f"sam_edge_cache_{stat}_total", stats[stat])
        self.set("sam_edge_cache_bytes", stats["bytes"])
        self.set("sam_edge_cache_max_bytes", stats["max_bytes"])
        self.set("sam_edge_cache_entries", stats["entries"])

    def snapshot(self) -> "Snapshot":
        with self._lock:
            return Snapshot(self._version, dict(self._values))


class Snapshot(NamedTuple):
    """A replica's metrics at one moment; `version` grows with every change, so of two
    snapshots of one replica that arrive out of order the newer is kept."""

    version: int
    values: Dict[Tuple[str, Labels], float]


def keep_newest(known: Dict[str, Snapshot], incoming: Dict[str, Snapshot]) -> None:
    """Merge {replica: snapshot} into `known`, keeping each replica's newest."""
    for replica, snapshot in incoming.items():
        if replica not in known or snapshot.version >= known[replica].version:
            known[replica] = snapshot


def _family(sample_name: str) -> str:
    for suffix in ("_sum", "_count"):
        if sample_name.endswith(suffix) and sample_name[: -len(suffix)] in METRICS:
            return sample_name[: -len(suffix)]
    return sample_name


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render_prometheus(snapshots: Dict[str, Snapshot]) -> str:
    """Prometheus text exposition (version 0.0.4) of {replica: snapshot}."""
    families: Dict[str, list] = defaultdict(list)
    for replica, snapshot in sorted(snapshots.items()):
        for (name, labels), value in snapshot.values.items():
            families[_family(name)].append((name, labels + (("replica", replica),), value))
    lines = []
    for family in sorted(families):
        kind, help_text = METRICS.get(family, ("untyped", ""))
        lines.append(f"# HELP {family} {help_text}")
        lines.append(f"# TYPE {family} {kind}")
        for name, labels, value in sorted(families[family]):
            label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
            lines.append(f"{name}{{{label_text}}} {_number(value)}")
    return "\n".join(lines) + "\n"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def parse_prometheus(text: str) -> Iterable[Tuple[str, Dict[str, str], float]]:
    """(name, labels, value) of each sample in Prometheus text (the subset render_prometheus writes)."""
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, value = line.rsplit(" ", 1)
        name, _, rest = head.partition("{")
        labels = {}
        for part in rest.rstrip("}").split('",'):
            if part:
                key, _, val = part.partition('="')
                labels[key] = val.rstrip('"')
        yield name, labels, float(value)
