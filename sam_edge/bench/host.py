"""What machine a measurement ran on: CPU model and features, cores, threads, load.

Shared by `sam-edge bench` and the checkout's benchmarks/ scripts, so every
results file describes its host the same way. Torch-free (torch's thread count
is added when torch is installed).
"""

import os
import platform
from typing import Dict, List

from ..runtime.cpu import cpu_flags

#: The CPU features that decide which kernels run (ONNX Runtime's int8 GEMMs use
#: VNNI or AMX where present, and u8u8 kernels without VNNI; sam-edge's attention
#: kernel needs AVX-512, and AVX512-FP16 for its fp16 path): hosts that print the
#: same model name differ in these.
CPU_FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8",
                "amx_bf16")


def cpu_features() -> List[str]:
    """The CPU_FEATURES this CPU has, from /proc/cpuinfo (empty where it is absent)."""
    flags = cpu_flags()
    return [name for name in CPU_FEATURES if name in flags]


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), or what platform knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware() -> Dict[str, object]:
    """Machine, CPU model, cores, CPU features, torch threads (and GPU) where torch is
    installed, and the load average when this was called."""
    info: Dict[str, object] = {"machine": platform.machine(), "processor": platform.processor(),
                               "cpus": os.cpu_count(), "cpu_model": cpu_model()}
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    info["cpu_features"] = cpu_features()
    info["load_average_at_start"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return info


def device_tag() -> str:
    """A short name for result files: the GPU's name, else cpu-<cores>core."""
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0).replace(" ", "-").lower()
    except ImportError:
        pass
    return f"cpu-{os.cpu_count()}core"
