"""SAM's mask upscaling as one op: the end of the mask decoder, from the two-way
transformer's image tokens and the hypernetwork outputs to the low-res mask
logits (MaskDecoder.masks_from_image_tokens):

    ConvTranspose2d(C, C/4, 2, 2) -> LayerNorm2d -> GELU -> ConvTranspose2d(C/4, C/8, 2, 2) -> GELU,
    then each mask token's product with the C/8 upscaled channels.

- mask_upscale_reference: the official modules' math in torch, channels first,
  in any float dtype (float64 for the tests).
- mask_upscale_cpu: the fused kernel (sam_edge._C.mask_upscale,
  csrc/mask_upscale_cpu.cpp) on numpy float32 arrays. It runs tiles of 32
  pixels through all five steps and the product while they stay in cache,
  instead of streaming the (C/4, 2h, 2w) and (C/8, 4h, 4w) grids through memory.
- export_as_op: while active, MaskDecoder exports the op as one sam_edge_ops
  MaskUpscale node (csrc/ort/), which the bundle's decoder_prompt_ops.onnx runs.
"""

import contextlib
import threading
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ._arrays import float32_array


@dataclass(frozen=True)
class UpscaleWeights:
    """output_upscaling's parameters (torch tensors or numpy arrays): conv1_weight
    (C, C/4, 2, 2), conv1_bias, norm_weight, norm_bias (C/4,), conv2_weight
    (C/4, C/8, 2, 2), conv2_bias (C/8,); epsilon, LayerNorm2d's."""

    conv1_weight: Any
    conv1_bias: Any
    norm_weight: Any
    norm_bias: Any
    conv2_weight: Any
    conv2_bias: Any
    epsilon: float

    @classmethod
    def from_module(cls, output_upscaling) -> "UpscaleWeights":
        """The parameters of MaskDecoder.output_upscaling (or the official one), as its tensors."""
        deconv1, norm, _, deconv2, _ = output_upscaling
        return cls(deconv1.weight, deconv1.bias, norm.weight, norm.bias, deconv2.weight, deconv2.bias,
                   float(norm.eps))

    def tensors(self) -> tuple:
        return (self.conv1_weight, self.conv1_bias, self.norm_weight, self.norm_bias, self.conv2_weight,
                self.conv2_bias)

    def numpy(self) -> "UpscaleWeights":
        """float32 C-contiguous numpy copies, for mask_upscale_cpu."""
        arrays = [np.ascontiguousarray(t.detach().cpu().numpy() if torch.is_tensor(t) else t, dtype=np.float32)
                  for t in self.tensors()]
        return UpscaleWeights(*arrays, self.epsilon)


def mask_upscale_reference(src: torch.Tensor, hyper_in: torch.Tensor, weights: UpscaleWeights,
                           grid: Tuple[int, int]) -> torch.Tensor:
    """The official decoder's upscaling and product, in src's dtype.

    Arguments:
        src: (S, h*w, C) image tokens in row-major grid order, S = 1 (shared by
            every prompt) or B.
        hyper_in: (B, T, C/8) hypernetwork outputs, one row per mask token.
        weights: output_upscaling's parameters.
        grid: (h, w).
    Returns:
        (B, T, 4h, 4w) mask logits.
    """
    h, w = grid
    w1, b1, nw, nb, w2, b2 = (torch.as_tensor(t).to(src.dtype) for t in weights.tensors())
    x = src.transpose(1, 2).reshape(src.shape[0], -1, h, w)
    x = F.conv_transpose2d(x, w1, b1, stride=2)
    mean = x.mean(1, keepdim=True)
    var = (x - mean).pow(2).mean(1, keepdim=True)
    x = (x - mean) / torch.sqrt(var + weights.epsilon)
    x = F.gelu(nw[:, None, None] * x + nb[:, None, None])
    x = F.gelu(F.conv_transpose2d(x, w2, b2, stride=2))
    b, c2 = hyper_in.shape[0], x.shape[1]
    x = x.expand(b, -1, -1, -1)
    return (hyper_in.to(src.dtype) @ x.reshape(b, c2, -1)).reshape(b, -1, 4 * h, 4 * w)


def _native():
    try:
        from .. import _C
    except ImportError:
        return None
    return _C if hasattr(_C, "mask_upscale") else None


def mask_upscale_status() -> dict:
    """{"available": the compiled kernel is built, "avx512": it runs its AVX-512 path here}."""
    native = _native()
    return {"available": native is not None, "avx512": bool(native is not None and native.mask_upscale_has_avx512())}


_PARAMETERS = ("conv1_weight", "conv1_bias", "norm_weight", "norm_bias", "conv2_weight", "conv2_bias")


def mask_upscale_cpu(src: np.ndarray, hyper_in: np.ndarray, weights: UpscaleWeights, grid: Tuple[int, int],
                     threads: Optional[int] = None, force_portable: bool = False) -> np.ndarray:
    """The fused kernel: mask_upscale_reference's math in float32.

    Arguments:
        src: (S, h*w, C) float32, S = 1 or B; C a multiple of 8.
        hyper_in: (B, T, C/8) float32.
        weights: output_upscaling's parameters as float32 arrays (UpscaleWeights.numpy()).
        grid: (h, w).
        threads: OpenMP threads; all of them when None.
        force_portable: run the portable loop even where AVX-512 is available.
    Returns:
        (B, T, 4h, 4w) float32 logits.
    """
    native = _native()
    if native is None:
        raise RuntimeError("sam_edge._C is not built: mask_upscale_cpu needs it (pip install . builds it)")
    src, hyper_in = float32_array("src", src, 3), float32_array("hyper_in", hyper_in, 3)
    h, w = (int(v) for v in grid)
    c = src.shape[2]
    if h < 1 or w < 1 or src.shape[1] != h * w:
        raise ValueError(f"src must be (S, h*w, C) for grid {tuple(grid)}; got {src.shape}")
    if c < 8 or c % 8:
        raise ValueError(f"src's channels must be a positive multiple of 8; got {c}")
    if hyper_in.shape[2] != c // 8 or src.shape[0] not in (1, hyper_in.shape[0]):
        raise ValueError(f"expected hyper_in (B, T, {c // 8}) and src's batch 1 or B; got src {src.shape}, "
                         f"hyper_in {hyper_in.shape}")
    c1, c2 = c // 4, c // 8
    params = []
    for name, a, shape in zip(_PARAMETERS, weights.tensors(), [(c, c1, 2, 2), (c1,), (c1,), (c1,), (c1, c2, 2, 2), (c2,)]):
        a = float32_array(name, a, len(shape))
        if a.shape != shape:
            raise ValueError(f"{name} must be {shape} for {c} channels; got {a.shape}")
        params.append(a)
    epsilon = float(weights.epsilon)
    if not np.isfinite(epsilon) or epsilon < 0:
        raise ValueError(f"epsilon must be finite and >= 0; got {epsilon}")
    return native.mask_upscale(src, hyper_in, *params, h, w, epsilon, threads=int(threads or 0),
                               force_portable=bool(force_portable))


def mask_upscale_gelu_cpu(x: np.ndarray, force_portable: bool = False) -> np.ndarray:
    """The GELU mask_upscale_cpu applies, on a float32 vector (the tests check its bound)."""
    native = _native()
    if native is None:
        raise RuntimeError("sam_edge._C is not built: mask_upscale_gelu_cpu needs it (pip install . builds it)")
    return native.mask_upscale_gelu(float32_array("x", x, 1), force_portable=bool(force_portable))


# ---- export ----

_EXPORT = threading.local()


@contextlib.contextmanager
def export_as_op() -> Iterator[None]:
    """While active (in this thread), MaskDecoder.masks_from_image_tokens traces
    as one ai.sam_edge MaskUpscale node with output_upscaling's parameters as
    its initializers."""
    previous = getattr(_EXPORT, "active", False)
    _EXPORT.active = True
    try:
        yield
    finally:
        _EXPORT.active = previous


def exporting_as_op() -> bool:
    return getattr(_EXPORT, "active", False)


class _MaskUpscaleOp(torch.autograd.Function):
    """Forward: the reference math, for the tracer's shapes. Symbolic: the library's node."""

    @staticmethod
    def forward(ctx, src, hyper_in, conv1_weight, conv1_bias, norm_weight, norm_bias, conv2_weight, conv2_bias,
                height: int, width: int, epsilon: float):
        weights = UpscaleWeights(conv1_weight, conv1_bias, norm_weight, norm_bias, conv2_weight, conv2_bias, epsilon)
        return mask_upscale_reference(src, hyper_in, weights, (height, width))

    @staticmethod
    def symbolic(g, src, hyper_in, conv1_weight, conv1_bias, norm_weight, norm_bias, conv2_weight, conv2_bias,
                 height: int, width: int, epsilon: float):
        from ..runtime.ort_ops import DOMAIN

        out = g.op(f"{DOMAIN}::MaskUpscale", src, hyper_in, conv1_weight, conv1_bias, norm_weight, norm_bias,
                   conv2_weight, conv2_bias, height_i=int(height), width_i=int(width), epsilon_f=float(epsilon))
        out.setType(hyper_in.type().with_sizes([None, None, 4 * int(height), 4 * int(width)]))
        return out


def mask_upscale_export(src: torch.Tensor, hyper_in: torch.Tensor, output_upscaling,
                        grid: Tuple[int, int]) -> torch.Tensor:
    """mask_upscale_reference on output_upscaling's parameters, traced as one MaskUpscale node."""
    weights = UpscaleWeights.from_module(output_upscaling)
    return _MaskUpscaleOp.apply(src, hyper_in, *weights.tensors(), int(grid[0]), int(grid[1]), weights.epsilon)
