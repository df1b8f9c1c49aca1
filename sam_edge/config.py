"""Model sizes as data. Torch-free, so the runtime can read it."""

from dataclasses import dataclass, replace
from typing import Dict, Tuple

import numpy as np


def _read_only(values) -> np.ndarray:
    array = np.array(values, dtype=np.float32)
    array.setflags(write=False)  # shared by every backend: nothing may change it in place
    return array


#: The official normalisation of RGB pixel values in [0, 255], (3,) float32, as every backend holds it.
PIXEL_MEAN = _read_only((123.675, 116.28, 103.53))
PIXEL_STD = _read_only((58.395, 57.12, 57.375))


@dataclass(frozen=True)
class SamConfig:
    """Hyper-parameters of one SAM variant (defaults: the official values)."""

    name: str
    encoder_embed_dim: int
    encoder_depth: int
    encoder_num_heads: int
    encoder_global_attn_indexes: Tuple[int, ...]
    image_size: int = 1024
    patch_size: int = 16
    window_size: int = 14
    mlp_ratio: float = 4.0
    prompt_embed_dim: int = 256
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256

    @property
    def image_embedding_size(self) -> int:
        """Side of the image embedding grid (64 for the official models)."""
        return self.image_size // self.patch_size

    @property
    def mask_input_size(self) -> int:
        """Side of the low-res mask logits (256 for the official models)."""
        return 4 * self.image_embedding_size

    def reduced(self, depth: int, image_size: int = None) -> "SamConfig":
        """A smaller variant for tests: `depth` blocks with global attention in
        every max(depth // 2, 2)-th block, optionally a smaller input."""
        step = max(depth // 2, 2)
        glob = tuple(i for i in range(step - 1, depth, step))
        return replace(
            self,
            name=f"{self.name}-d{depth}" + (f"-{image_size}" if image_size else ""),
            encoder_depth=depth,
            encoder_global_attn_indexes=glob,
            image_size=image_size or self.image_size,
        )


SAM_CONFIGS: Dict[str, SamConfig] = {
    "vit_h": SamConfig("vit_h", 1280, 32, 16, (7, 15, 23, 31)),
    "vit_l": SamConfig("vit_l", 1024, 24, 16, (5, 11, 17, 23)),
    "vit_b": SamConfig("vit_b", 768, 12, 12, (2, 5, 8, 11)),
}
#: The official package's "default" is ViT-H.
MODEL_ALIASES = {"default": "vit_h"}


def get_config(model_type: str) -> SamConfig:
    """The config for "vit_b", "vit_l", "vit_h" or "default"."""
    name = MODEL_ALIASES.get(model_type, model_type)
    if name not in SAM_CONFIGS:
        known = sorted(SAM_CONFIGS) + sorted(MODEL_ALIASES)
        raise ValueError(f"unknown model type {model_type!r}; expected one of {known}")
    return SAM_CONFIGS[name]
