"""Encoder attention per block kind (global, windowed) and compute: the official
segment_anything Attention module against sam-edge's Attention module (per torch
attention backend) and sam-edge's CPU kernel (sam_edge._C, per compute), all
with the same weights on the same tokens, projections included.

Sizes: ViT-B's width (768, 12 heads of 64) on a 32 x 32 token grid (a 512 px
image), so each group runs in seconds; the windowed blocks use 14 x 14 windows.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

DIM, HEADS, GRID, WINDOW = 768, 12, 32, 14
KINDS = {"global": 0, "windowed": WINDOW}


def _hardware_bf16() -> bool:
    from sam_edge.bench.host import cpu_features

    return bool({"avx512_bf16", "amx_bf16"} & set(cpu_features()))


def _dtype(compute):
    if compute == "bf16" and not _hardware_bf16():
        pytest.skip("this CPU has no bf16 instructions (AVX512-BF16 or AMX): torch would emulate them")
    return {"fp32": torch.float32, "bf16": torch.bfloat16}[compute]


@pytest.fixture(scope="module", params=list(KINDS))
def block(request):
    """(kind, official Attention, tokens (1, GRID, GRID, DIM)) with seeded random weights."""
    from segment_anything.modeling.image_encoder import Attention

    torch.manual_seed(0)
    window = KINDS[request.param]
    side = window or GRID
    official = Attention(DIM, HEADS, qkv_bias=True, use_rel_pos=True, input_size=(side, side)).eval()
    with torch.no_grad():
        for p in official.parameters():
            p.copy_(torch.randn_like(p) * (0.5 if p.dim() == 2 and p.shape[0] == 2 * side - 1 else DIM ** -0.5))
    x = torch.randn(1, GRID, GRID, DIM)
    return request.param, official, x


def _official_forward(official, window):
    from segment_anything.modeling.image_encoder import window_partition, window_unpartition

    def run(x):
        if not window:
            return official(x)
        windows, pad_hw = window_partition(x, window)  # what the official Block does around its attention
        return window_unpartition(official(windows), window, pad_hw, (GRID, GRID))

    return run


@pytest.mark.parametrize("compute", ["fp32", "bf16"])
def test_official(benchmark, block, compute):
    pytest.importorskip("segment_anything")
    kind, official, x = block
    dtype = _dtype(compute)
    module = official.to(dtype)
    benchmark.group = f"attention-{kind}"
    benchmark.extra_info.update(implementation=f"official Attention module, torch {compute}", grid=GRID, dim=DIM)
    forward = _official_forward(module, KINDS[kind])
    with torch.inference_mode():
        benchmark(forward, x.to(dtype))
    official.float()


@pytest.mark.parametrize("compute", ["fp32", "bf16"])
@pytest.mark.parametrize("backend", ["reference", "sdpa"])
def test_ours_torch(benchmark, block, backend, compute):
    from sam_edge.kernels import available_backends
    from sam_edge.modeling.image_encoder import Attention

    kind, official, x = block
    dtype = _dtype(compute)
    reason = available_backends(x).get(backend, "unknown backend")
    if reason is not None:
        pytest.skip(f"attention backend {backend!r} cannot run here: {reason}")
    side = KINDS[kind] or GRID
    ours = Attention(DIM, HEADS, (side, side), KINDS[kind])
    ours.load_state_dict(official.state_dict())  # the same weights under the same names
    ours.backend = backend
    ours = ours.eval().to(dtype)
    benchmark.group = f"attention-{kind}"
    benchmark.extra_info.update(implementation=f"sam-edge Attention module, backend {backend}, torch {compute}",
                                grid=GRID, dim=DIM)
    with torch.inference_mode():
        benchmark(ours, x.to(dtype))


@pytest.mark.parametrize("compute", ["fp32", "fp16", "bf16"])
def test_ours_cpu_kernel(benchmark, block, compute):
    from sam_edge.kernels.cpu_attention import fast_compute, cpu_kernel_status, rel_pos_attention_qkv

    kind, official, x = block
    window = KINDS[kind]
    side = window or GRID
    if fast_compute(DIM // HEADS, (side, side), compute) != compute:
        pytest.skip(f"sam-edge's CPU kernel does not run {compute} {kind} attention here: {cpu_kernel_status()}")
    head_dim = DIM // HEADS
    weights = {k: v.detach().numpy() for k, v in official.state_dict().items()}
    bias = weights["qkv.bias"].reshape(3, HEADS, head_dim)
    kv_bias = np.ascontiguousarray(bias[1:]) if window and GRID % window else None
    tokens = x.numpy()

    def run():
        qkv = tokens @ weights["qkv.weight"].T + weights["qkv.bias"]
        out = rel_pos_attention_qkv(np.ascontiguousarray(qkv, np.float32), weights["rel_pos_h"],
                                    weights["rel_pos_w"], kv_bias, HEADS, window, head_dim ** -0.5, compute)
        return out @ weights["proj.weight"].T + weights["proj.bias"]

    benchmark.group = f"attention-{kind}"
    benchmark.extra_info.update(implementation=f"sam-edge CPU kernel (sam_edge._C), {compute} tiles, "
                                "projections in numpy fp32", grid=GRID, dim=DIM)
    benchmark(run)
