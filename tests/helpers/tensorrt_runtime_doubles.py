"""Shared doubles for the TensorRT runtime tests: a bundle manifest and this machine's
TensorRT facts as check_engine_compatibility reads them, and a device allocation stand-in."""


def manifest(version="10.13.0.35", cc="8.6", gpu="NVIDIA A10", hardware="none", version_compatible=False, **build):
    return {
        "model_type": "vit_l",
        "precision": "int8",
        "weights": {"source": "checkpoint", "checkpoint": "sam_vit_l_0b3195.pth"},
        "tensorrt": {
            "version": version,
            "gpu": gpu,
            "compute_capability": cc,
            "hardware_compatibility": hardware,
            "version_compatible": version_compatible,
            "build": dict({"model_type": "vit_l", "precision": "int8"}, **build),
        },
    }


def here(version="10.13.0.35", cc="8.6", gpu="NVIDIA A10"):
    return {"tensorrt": version, "compute_capability": cc, "gpu": gpu}



class _FakeAllocation:
    ptr = 0x10000
