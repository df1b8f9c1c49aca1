"""sam-edge: Segment Anything from official checkpoints to fast, validated inference.

The torch model path is imported lazily, so the ONNX Runtime path works
without torch installed.

Threads: an engine from `load` (and a torch Sam model) may be shared by any
number of threads; a SamPredictor or SamAutomaticMaskGenerator holds one
image and is used by one thread at a time (misuse raises PredictorThreadError).
"""

__version__ = "0.1.0"

from .config import SAM_CONFIGS, SamConfig, get_config  # noqa: E402  (torch-free)
from .runtime import (  # noqa: E402  (torch-free)
    ImageNotSetError,
    ResizeLongestSide,
    SamAutomaticMaskGenerator,
    SamPredictor,
)

_LAZY = {
    "sam_model_registry": "builder",
    "build_sam": "builder",
    "build_sam_vit_h": "builder",
    "build_sam_vit_l": "builder",
    "build_sam_vit_b": "builder",
    "build_sam_from_config": "builder",
    "CheckpointError": "builder",
    "Sam": "modeling",
    "info": "info",
    "PredictorThreadError": "runtime.predictor",
    "load": "runtime.bundle",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module 'sam_edge' has no attribute {name!r}")


__all__ = ["SAM_CONFIGS", "SamConfig", "get_config", "ImageNotSetError", "ResizeLongestSide", "SamAutomaticMaskGenerator",
           "SamPredictor"] + list(
    _LAZY
)
