"""The embedding cache: image id -> embedding, bounded by bytes, least recently used out first.

Pure Python and numpy; one per decoder replica (and one in the Triton
Python-backend model). Thread-safe, so a replica may touch it from a thread pool.
"""

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import numpy as np


@dataclass(frozen=True)
class CachedEmbedding:
    """What a predictor needs to answer prompts for one image.

    embedding: (1, C, g, g) float32 from the encoder.
    original_size: (H, W) of the image as the client sent it.
    input_size: (h, w) after ResizeLongestSide, before padding.
    """

    embedding: np.ndarray
    original_size: Tuple[int, int]
    input_size: Tuple[int, int]

    @property
    def nbytes(self) -> int:
        """Bytes the cache charges for this entry (the embedding's buffer; the sizes are noise)."""
        return int(self.embedding.nbytes)


class EmbeddingCache:
    """An LRU map from image id to CachedEmbedding whose entries' bytes never exceed `max_bytes`.

    Arguments:
        max_bytes: the bound on the sum of entries' `nbytes`. An entry larger
            than the whole bound is not stored (put returns False); the caller
            still answers from it, it just is not kept.
    Counters: hits, misses, evictions (entries pushed out to make room), rejected
    (entries larger than the bound).
    """

    def __init__(self, max_bytes: int) -> None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, (int, np.integer)) or max_bytes < 0:
            raise ValueError(f"max_bytes must be an integer >= 0; got {max_bytes!r}")
        self.max_bytes = int(max_bytes)
        self._entries: "OrderedDict[str, CachedEmbedding]" = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = self.evictions = self.rejected = 0

    def get(self, image_id: str) -> Optional[CachedEmbedding]:
        """The entry for image_id, now the most recently used, or None (a miss)."""
        with self._lock:
            entry = self._entries.get(image_id)
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end(image_id)
            self.hits += 1
            return entry

    def peek(self, image_id: str) -> bool:
        """Whether image_id is held, without counting a hit or miss or changing the order."""
        with self._lock:
            return image_id in self._entries

    def put(self, image_id: str, entry: CachedEmbedding) -> bool:
        """Store entry as the most recently used, evicting the least recently used until
        it fits; returns whether it was stored."""
        size = entry.nbytes
        with self._lock:
            old = self._entries.pop(image_id, None)
            if old is not None:
                self._bytes -= old.nbytes
            if size > self.max_bytes:
                self.rejected += 1
                return False
            while self._entries and self._bytes + size > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= evicted.nbytes
                self.evictions += 1
            self._entries[image_id] = entry
            self._bytes += size
            return True

    def ids(self) -> list:
        """Held ids, least recently used first."""
        with self._lock:
            return list(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes(self) -> int:
        return self._bytes

    def stats(self) -> Dict[str, Any]:
        with self._lock:
            return {
                "hits": self.hits,
                "misses": self.misses,
                "evictions": self.evictions,
                "rejected": self.rejected,
                "entries": len(self._entries),
                "bytes": self._bytes,
                "max_bytes": self.max_bytes,
            }
