"""This process's resident set around a benchmark run: before, and at its peak
during, a `with` block (RssMonitor)."""

import os
import resource
import sys
import threading
from typing import Optional

#: Seconds between resident-set samples while a subject runs.
RSS_SAMPLE_PERIOD_S = 0.005


def rss_mib() -> Optional[float]:
    """The resident set now, in MiB; None where /proc/self/statm cannot be read."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return None


def _maxrss_mib() -> float:
    # ru_maxrss is KiB on Linux, bytes on macOS.
    scale = 1 / 2**20 if sys.platform == "darwin" else 1 / 2**10
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


class RssMonitor:
    """Resident set before, and at its peak during, a `with` block.

    The peak is the process's high-water mark (getrusage) when the block raised
    it, which is exact; otherwise (an earlier subject in this process peaked
    higher) the highest of samples taken every RSS_SAMPLE_PERIOD_S."""

    def __enter__(self) -> "RssMonitor":
        self.before = rss_mib()
        self.maxrss_before = _maxrss_mib()
        self.sampled = self.before or 0.0
        self._stop = threading.Event()
        self._thread = None
        if self.before is not None:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(RSS_SAMPLE_PERIOD_S):
            self.sampled = max(self.sampled, rss_mib() or 0.0)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        maxrss = _maxrss_mib()
        if maxrss > self.maxrss_before or self.before is None:
            self.peak, self.method = maxrss, "getrusage high-water mark (the process's peak, set during this run)"
        else:
            self.peak = max(self.sampled, rss_mib() or 0.0)
            self.method = f"/proc/self/statm sampled every {RSS_SAMPLE_PERIOD_S * 1e3:g} ms"
