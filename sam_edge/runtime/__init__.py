"""User-facing runtime: the predictor (and later the mask generator) over any backend."""

from .automatic_mask_generator import SamAutomaticMaskGenerator
from .predictor import ImageNotSetError, SamPredictor
from .transforms import ResizeLongestSide

__all__ = ["ImageNotSetError", "ResizeLongestSide", "SamAutomaticMaskGenerator", "SamPredictor"]
