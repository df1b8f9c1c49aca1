"""The CPU's instruction-set flags, as Linux reports them in /proc/cpuinfo: what decides
which kernels ONNX Runtime and sam-edge's own run. Torch-free."""

import functools
from typing import FrozenSet

#: Either gives ONNX Runtime's u8 x s8 GEMM a VNNI dot product, which does not saturate.
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni"})


@functools.lru_cache(maxsize=None)
def cpu_flags() -> FrozenSet[str]:
    """The flags of the first CPU in /proc/cpuinfo; empty where there is none (not Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()
