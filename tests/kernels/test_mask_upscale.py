"""The mask upscaling op (sam_edge.kernels.mask_upscale, csrc/mask_upscale_cpu.cpp,
and its ONNX Runtime op MaskUpscale in csrc/ort/).

- The reference: the official segment_anything modules (ConvTranspose2d,
  LayerNorm2d, GELU, the hypernetwork product as its MaskDecoder writes it) in
  float64. mask_upscale_reference in float64 equals it to float64 rounding.
- The kernel, both paths (the portable loop; AVX-512 where the CPU has it), on
  fresh seeded inputs: its error against float64 is at most 2x that of the
  same official modules run in float32 by torch (flash-attention's
  convention). Both round the same five steps in float32 and sum the same
  terms in different orders; the kernel's Phi is within 2^-23 of the true one
  (below float32's rounding of the result), so a correct kernel lands near
  torch's error. A wrong index, layout or sub-pixel shuffle is off by O(1).
- Its GELU within |x| * 2^-22 of float64 x * Phi(x) everywhere: the table's
  2^-23 plus float32's roundings of the polynomial and the product.
- The ORT op equals the _C kernel bit for bit (the same code; each output is
  computed by one thread, whatever the thread count, on ORT's intra-op pool or
  OpenMP), and refuses bad shapes and attributes with onnxruntime errors
  carrying its message; the session survives them.
"""

import math

import numpy as np
import pytest
import torch
from torch import nn

from sam_edge.kernels.mask_upscale import (
    UpscaleWeights, mask_upscale_cpu, mask_upscale_gelu_cpu, mask_upscale_reference, mask_upscale_status)

STATUS = mask_upscale_status()
needs_native = pytest.mark.skipif(not STATUS["available"], reason="sam_edge._C is not built (pip install . builds it)")
PATHS = [
    pytest.param(True, id="portable"),
    pytest.param(False, id="avx512", marks=pytest.mark.skipif(
        not STATUS["avx512"], reason="this CPU has no AVX-512 (or _C is not built): only the portable path runs")),
]
# The multiple of torch float32's own error the kernel may have (see the module docstring).
FP32_FACTOR = 2.0


def official_upscaling(channels: int, seed: int) -> nn.Sequential:
    """The official MaskDecoder.output_upscaling for transformer_dim `channels`, float64,
    its LayerNorm2d's weight and bias drawn (its init is ones and zeros)."""
    from segment_anything.modeling.common import LayerNorm2d

    torch.manual_seed(seed)
    module = nn.Sequential(
        nn.ConvTranspose2d(channels, channels // 4, kernel_size=2, stride=2),
        LayerNorm2d(channels // 4),
        nn.GELU(),
        nn.ConvTranspose2d(channels // 4, channels // 8, kernel_size=2, stride=2),
        nn.GELU(),
    )
    with torch.no_grad():
        module[1].weight.uniform_(0.5, 1.5)
        module[1].bias.normal_(0, 0.5)
    return module.double().eval()


@torch.no_grad()
def official_masks(module: nn.Sequential, src: torch.Tensor, hyper_in: torch.Tensor, grid) -> torch.Tensor:
    """The official MaskDecoder.predict_masks from its image tokens: (S, h*w, C) -> (B, T, 4h, 4w)."""
    h, w = grid
    b = hyper_in.shape[0]
    x = src.transpose(1, 2).reshape(src.shape[0], -1, h, w).expand(b, -1, -1, -1)
    upscaled = module(x)
    _, c, uh, uw = upscaled.shape
    return (hyper_in @ upscaled.reshape(b, c, uh * uw)).reshape(b, -1, uh, uw)


def _inputs(src_batch, batch, tokens, grid, channels, seed):
    rng = np.random.default_rng(seed)
    src = rng.standard_normal((src_batch, grid[0] * grid[1], channels)).astype(np.float32)
    hyper_in = rng.standard_normal((batch, tokens, channels // 8)).astype(np.float32)
    return src, hyper_in


def _max_abs(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


# (src batch, batch, tokens, (h, w), C)
SHAPES = [
    (1, 1, 4, (64, 64), 256),  # the official grid and width: one prompt, four mask tokens
    (1, 3, 4, (7, 9), 256),    # an odd grid; one image shared by three prompts
    (2, 2, 1, (5, 33), 256),   # a batch of images; rows of 16 + 16 + 1 pixels
    (1, 2, 4, (16, 16), 128),
    (1, 1, 1, (3, 5), 64),
    (1, 2, 4, (4, 6), 24),     # C not a multiple of 16: the portable loop on every CPU
]
_ids = [f"s{s}b{b}t{t}g{g[0]}x{g[1]}c{c}" for s, b, t, g, c in SHAPES]


@pytest.mark.parametrize("shape", SHAPES, ids=_ids)
def test_reference_is_the_official_modules(shape):
    src_batch, batch, tokens, grid, channels = shape
    module = official_upscaling(channels, seed=1)
    src, hyper_in = (torch.from_numpy(a).double() for a in _inputs(*shape, seed=2))
    ours = mask_upscale_reference(src, hyper_in, UpscaleWeights.from_module(module), grid)
    official = official_masks(module, src, hyper_in, grid)
    assert ours.shape == official.shape == (batch, tokens, 4 * grid[0], 4 * grid[1])
    assert ours.dtype == torch.float64
    torch.testing.assert_close(ours, official, rtol=1e-12, atol=1e-12)


@needs_native
@pytest.mark.parametrize("force_portable", PATHS)
@pytest.mark.parametrize("shape", SHAPES, ids=_ids)
def test_kernel_within_torch_fp32_error(shape, force_portable):
    src_batch, batch, tokens, grid, channels = shape
    module = official_upscaling(channels, seed=sum(grid) + channels)
    src, hyper_in = _inputs(*shape, seed=7 * batch + tokens)
    reference = official_masks(module, torch.from_numpy(src).double(), torch.from_numpy(hyper_in).double(), grid)
    torch_fp32 = official_masks(module.float(), torch.from_numpy(src), torch.from_numpy(hyper_in), grid)
    module.double()
    out = mask_upscale_cpu(src, hyper_in, UpscaleWeights.from_module(module).numpy(), grid,
                           force_portable=force_portable)
    assert out.shape == (batch, tokens, 4 * grid[0], 4 * grid[1]) and out.dtype == np.float32
    err, err_torch = _max_abs(out, reference), _max_abs(torch_fp32, reference)
    assert err <= FP32_FACTOR * err_torch, (err, err_torch)
    rel = float(np.linalg.norm(out - reference.numpy()) / np.linalg.norm(reference.numpy()))
    rel_torch = float(np.linalg.norm(torch_fp32.numpy() - reference.numpy()) / np.linalg.norm(reference.numpy()))
    assert rel <= FP32_FACTOR * rel_torch, (rel, rel_torch)


@needs_native
@pytest.mark.parametrize("force_portable", PATHS)
def test_shared_image_equals_the_image_repeated(force_portable):
    """src batch 1 with B prompts is the same computation as src repeated B times."""
    src, hyper_in = _inputs(1, 3, 4, (6, 20), 256, seed=11)
    weights = UpscaleWeights.from_module(official_upscaling(256, seed=3)).numpy()
    shared = mask_upscale_cpu(src, hyper_in, weights, (6, 20), force_portable=force_portable)
    repeated = mask_upscale_cpu(np.repeat(src, 3, axis=0), hyper_in, weights, (6, 20), force_portable=force_portable)
    np.testing.assert_array_equal(shared, repeated)


@needs_native
@pytest.mark.parametrize("force_portable", PATHS)
def test_the_thread_count_does_not_change_the_result(force_portable):
    src, hyper_in = _inputs(1, 2, 4, (9, 18), 256, seed=12)
    weights = UpscaleWeights.from_module(official_upscaling(256, seed=4)).numpy()
    one = mask_upscale_cpu(src, hyper_in, weights, (9, 18), threads=1, force_portable=force_portable)
    three = mask_upscale_cpu(src, hyper_in, weights, (9, 18), threads=3, force_portable=force_portable)
    np.testing.assert_array_equal(one, three)


@needs_native
@pytest.mark.parametrize("force_portable", PATHS)
def test_gelu_within_its_bound(force_portable):
    x = np.concatenate([np.linspace(-12, 12, 2_000_001, dtype=np.float32),
                        np.float32([0.0, -0.0, 1e-30, -1e-30, 6.0, -6.0, np.nextafter(np.float32(6), 0), 1e4, -1e4]),
                        np.random.default_rng(5).standard_normal(100_000).astype(np.float32) * 3])
    out = mask_upscale_gelu_cpu(x, force_portable=force_portable)
    x64 = x.astype(np.float64)
    exact = x64 * 0.5 * torch.special.erfc(torch.from_numpy(-x64 / math.sqrt(2))).numpy()
    err = np.abs(out.astype(np.float64) - exact)
    bound = np.abs(x64) * 2.0 ** -22
    worst = int(np.argmax(err - bound))
    assert (err <= bound).all(), (x[worst], out[worst], exact[worst])
    assert np.isnan(mask_upscale_gelu_cpu(np.float32([np.nan]), force_portable=force_portable)).all()


@needs_native
def test_bad_inputs_are_errors_for_people():
    src, hyper_in = _inputs(1, 2, 4, (4, 4), 256, seed=0)
    weights = UpscaleWeights.from_module(official_upscaling(256, seed=0)).numpy()
    with pytest.raises(TypeError, match="src must be float32; got float64"):
        mask_upscale_cpu(src.astype(np.float64), hyper_in, weights, (4, 4))
    with pytest.raises(TypeError, match="hyper_in must be a numpy array; got Tensor"):
        mask_upscale_cpu(src, torch.from_numpy(hyper_in), weights, (4, 4))
    with pytest.raises(ValueError, match=r"src must be \(S, h\*w, C\) for grid \(4, 5\); got \(1, 16, 256\)"):
        mask_upscale_cpu(src, hyper_in, weights, (4, 5))
    with pytest.raises(ValueError, match=r"expected hyper_in \(B, T, 32\)"):
        mask_upscale_cpu(src, hyper_in[..., :16], weights, (4, 4))
    with pytest.raises(ValueError, match="src's batch 1 or B"):
        mask_upscale_cpu(np.repeat(src, 3, axis=0), hyper_in, weights, (4, 4))
    with pytest.raises(ValueError, match="channels must be a positive multiple of 8; got 12"):
        mask_upscale_cpu(src[..., :12], hyper_in, weights, (4, 4))
    short = UpscaleWeights(*weights.tensors()[:5], weights.conv2_bias[:-1], weights.epsilon)
    with pytest.raises(ValueError, match=r"conv2_bias must be \(32,\) for 256 channels; got \(31,\)"):
        mask_upscale_cpu(src, hyper_in, short, (4, 4))
    with pytest.raises(ValueError, match="epsilon must be finite and >= 0"):
        mask_upscale_cpu(src, hyper_in, UpscaleWeights(*weights.tensors(), -1.0), (4, 4))
    # Not C-contiguous: copied, the same result.
    strided = np.asfortranarray(hyper_in)
    np.testing.assert_array_equal(mask_upscale_cpu(src, strided, weights, (4, 4)),
                                  mask_upscale_cpu(src, hyper_in, weights, (4, 4)))


# ---- the ONNX Runtime op ----

def _ort():
    ort = pytest.importorskip("onnxruntime")
    from sam_edge.runtime.ort_ops import library_refusal

    refusal = library_refusal()
    if refusal is not None:
        pytest.skip(refusal)
    return ort


_OP_INPUTS = ["src", "hyper_in", "conv1_weight", "conv1_bias", "norm_weight", "norm_bias", "conv2_weight",
              "conv2_bias"]


def _op_session(threads=1, **attributes):
    """A one-node model: MaskUpscale with every input fed, no shapes declared; `threads`
    intra-op threads, which the op's tasks run on."""
    ort = _ort()
    from onnx import TensorProto, helper

    from sam_edge.runtime.ort_ops import DOMAIN, DOMAIN_VERSION, register_ort_ops

    info = {n: helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in _OP_INPUTS + ["masks"]}
    node = helper.make_node("MaskUpscale", _OP_INPUTS, ["masks"], domain=DOMAIN, **attributes)
    graph = helper.make_graph([node], "mask_upscale", [info[n] for n in _OP_INPUTS], [info["masks"]])
    model = helper.make_model(graph, ir_version=8, opset_imports=[helper.make_opsetid("", 17),
                                                                    helper.make_opsetid(DOMAIN, DOMAIN_VERSION)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 4
    register_ort_ops(options)
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _op_feed(src, hyper_in, weights):
    return dict(zip(_OP_INPUTS, [src, hyper_in, *weights.tensors()]))


@needs_native
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape", [SHAPES[0], SHAPES[1], SHAPES[2]], ids=_ids[:3])
def test_ort_op_equals_the_kernel(shape, threads):
    src_batch, batch, tokens, grid, channels = shape
    src, hyper_in = _inputs(*shape, seed=21)
    weights = UpscaleWeights.from_module(official_upscaling(channels, seed=22)).numpy()
    session = _op_session(threads, height=grid[0], width=grid[1], epsilon=weights.epsilon)
    (masks,) = session.run(None, _op_feed(src, hyper_in, weights))
    np.testing.assert_array_equal(masks, mask_upscale_cpu(src, hyper_in, weights, grid))


@needs_native
def test_ort_op_refuses_bad_shapes_and_attributes():
    src, hyper_in = _inputs(1, 2, 4, (4, 6), 256, seed=23)
    weights = UpscaleWeights.from_module(official_upscaling(256, seed=24)).numpy()
    session = _op_session(height=4, width=6, epsilon=1e-6)
    good = _op_feed(src, hyper_in, weights)
    bad = [
        (dict(src=src[:, :-1]), r"expected src \(S, height \* width, C\) with height \* width = 24"),
        (dict(hyper_in=hyper_in[..., :-1]), r"expected hyper_in \(B, T, C / 8\) = \(B, T, 32\)"),
        (dict(src=np.repeat(src, 3, axis=0)), r"expected hyper_in .* with src's batch 1 or B; got src \(3, 24, 256\)"),
        (dict(conv1_weight=weights.conv1_weight[:, :-1]), r"expected conv1_weight \(256, 64, 2, 2\) for C 256"),
        (dict(norm_bias=weights.norm_bias[:-1]), r"expected norm_bias \(64,\) for C 256; got \(63,\)"),
    ]
    for change, message in bad:
        with pytest.raises(Exception, match="MaskUpscale: " + message):
            session.run(None, {**good, **change})
    (masks,) = session.run(None, good)  # the session survives its refusals
    np.testing.assert_array_equal(masks, mask_upscale_cpu(src, hyper_in, weights, (4, 6)))
    (empty,) = session.run(None, {**good, "hyper_in": hyper_in[:0]})
    assert empty.shape == (0, 4, 16, 24)
    with pytest.raises(Exception, match="MaskUpscale: height and width must be >= 1"):
        _op_session(height=0, width=6, epsilon=1e-6)
    with pytest.raises(Exception, match="MaskUpscale: needs the float attribute epsilon"):
        _op_session(height=4, width=6)
