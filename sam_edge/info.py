"""Which optional parts are present and which paths are active."""

import importlib
import platform
from typing import Dict


def _version(module: str) -> str:
    try:
        return getattr(importlib.import_module(module), "__version__", "present")
    except Exception as exc:  # absent or broken: say why
        return f"absent ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"


def info() -> Dict[str, str]:
    """A flat report: library versions, devices, and the active kernel paths."""
    from . import __version__

    report = {"sam_edge": __version__, "python": platform.python_version(), "machine": platform.machine()}
    for name in ("numpy", "onnxruntime", "torch", "triton", "onnx", "tensorrt"):
        report[name] = _version(name)
    try:
        import torch

        report["cuda_device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
        from .kernels import available_backends

        probe = torch.empty(0, device="cuda") if torch.cuda.is_available() else None
        report["attention_backends"] = ", ".join(
            f"{k}: {'ok' if v is None else v}" for k, v in available_backends(probe).items()
        )
    except ImportError:
        report["attention_backends"] = "torch absent: encoder runs only from bundles"
    try:
        from . import postprocess

        report["postprocess"] = postprocess.active_path()
        from .postprocess import cuda as postprocess_cuda

        report["postprocess_cuda"] = postprocess_cuda.status()["summary"]
    except Exception as exc:
        report["postprocess"] = report.get("postprocess", f"unavailable ({exc})")
    from .kernels.cpu_attention import cpu_kernel_status

    kernel = cpu_kernel_status()
    if not kernel["available"]:
        report["cpu_attention_kernel"] = "unavailable (sam_edge._C is not built): ORT bundles run their single graph"
    else:
        paths = ("AVX-512 fp32" + (" + AVX512-FP16" if kernel["avx512_fp16"] else "")
                 + (" + AMX-BF16" if kernel["amx_bf16"] else " + AVX512-BF16" if kernel["avx512_bf16"] else "")
                 ) if kernel["avx512"] else (
            "portable loop only: ORT bundles run their single graph")
        report["cpu_attention_kernel"] = f"sam_edge._C ({paths}, {kernel['threads']} threads)"
    from .runtime import ort_ops

    library = ort_ops.library_path()
    report["ort_ops_library"] = (
        "not built (pip install . builds sam_edge/libsam_edge_ops.so)" if library is None
        else f"{library} (ONNX domain {ort_ops.DOMAIN})" if kernel["avx512"]
        else f"{library}: refuses this CPU (no AVX-512)")
    try:
        from .kernels.mask_upscale import mask_upscale_status

        upscale = mask_upscale_status()
        report["mask_upscale_kernel"] = (
            "unavailable (sam_edge._C is not built)" if not upscale["available"]
            else f"sam_edge._C ({'AVX-512 fp32' if upscale['avx512'] else 'portable loop'})")
    except ImportError:
        report["mask_upscale_kernel"] = "torch absent: runs only as bundles' decoder_prompt_ops graph"
    from .runtime.onnxruntime_backend import int8_gemm_saturates

    report["ort_int8_gemm"] = (
        "u8u8 kernels (session.x64quantprecision): this CPU has no VNNI, and ORT's u8s8 kernel saturates in int16"
        if int8_gemm_saturates() else "u8s8 kernels (VNNI or AMX on x86): no int16 saturation on this CPU")
    from .runtime import tensorrt_compat

    report["tensorrt_runtime"] = tensorrt_compat.status()["summary"]
    return report
