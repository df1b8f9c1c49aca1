"""The Triton rel-pos attention kernels against a float64 statement of SAM's math.

Tolerances (relative L2 error of the output against float64):
  * fp32: <= 1e-4. The kernel accumulates in fp32 with IEEE matmuls, so its error
    is a few ulps times a modest growth factor; 1e-4 leaves ~1000x fp32 epsilon.
  * fp16 / bf16 (flash-attention convention): at most 2x PyTorch's own error in
    the same precision (the torch reference run in that dtype) plus 1e-5 for
    ties near zero, and in absolute terms <= 5e-3 (fp16) / 4e-2 (bf16).

On CPU these run in the Triton interpreter (tests/conftest.py sets
TRITON_INTERPRET=1), so shapes are small: "global" attention uses grids up to
16x16 tokens instead of SAM's 64x64.
"""

import pytest
import torch

from sam_edge.kernels import (
    available_backends,
    rel_pos_attention,
    rel_pos_attention_reference,
    resolve_backend,
    windowed_rel_pos_attention,
    windowed_rel_pos_attention_reference,
)
from sam_edge.kernels import triton_support
from sam_edge.kernels.attention import auto_backend_order

pytest.importorskip("triton", reason="Triton is not installed")
from sam_edge.kernels.triton_attention import (  # noqa: E402
    rel_pos_attention_triton,
    windowed_rel_pos_attention_triton,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
FP32_TOL = 1e-4
ABS_TOL = {torch.float16: 5e-3, torch.bfloat16: 4e-2}


def attention_f64(q, k, v, rel_pos_h, rel_pos_w, q_size, k_size, scale=None):
    """softmax(scale * q k^T + bias) v in float64, for equal query/key grids.

    bias[(i, j), (ki, kj)] = q[(i, j)] . rel_pos_h[i - ki + k_h - 1] + q[(i, j)] . rel_pos_w[j - kj + k_w - 1]
    """
    assert tuple(q_size) == tuple(k_size), "the test statement covers equal grids only"
    q, k, v, rel_pos_h, rel_pos_w = (t.double() for t in (q, k, v, rel_pos_h, rel_pos_w))
    h, w = q_size
    D = q.shape[-1]
    scale = D**-0.5 if scale is None else scale
    rows = torch.arange(h)
    cols = torch.arange(w)
    table_h = rel_pos_h[rows[:, None] - rows[None, :] + h - 1]  # (i, ki, D)
    table_w = rel_pos_w[cols[:, None] - cols[None, :] + w - 1]  # (j, kj, D)
    qi = rows.repeat_interleave(w)  # row of each flattened token
    qj = cols.repeat(h)  # column of each flattened token
    # bias[b, n, query, key] from the per-token row and column of query and key.
    bias_h = torch.einsum("bnqd,qkd->bnqk", q, table_h[qi][:, qi])
    bias_w = torch.einsum("bnqd,qkd->bnqk", q, table_w[qj][:, qj])
    logits = scale * q @ k.transpose(-1, -2) + bias_h + bias_w
    return logits.softmax(-1) @ v


def windowed_attention_f64(q, k, v, rel_pos_h, rel_pos_w, grid_size, ws, pad_k, pad_v, scale=None):
    """Window-by-window float64 attention on the unpadded grid; padded keys are pad_k/pad_v."""
    q, k, v, pad_k, pad_v = (t.double() for t in (q, k, v, pad_k, pad_v))
    B, heads, _, D = q.shape
    H, W = grid_size
    out = torch.full_like(q, float("nan"))
    for r0 in range(0, H, ws):
        for c0 in range(0, W, ws):
            # Window tokens in row-major window order; None marks padding.
            tokens = [
                (r * W + c) if (r < H and c < W) else None
                for r in range(r0, r0 + ws)
                for c in range(c0, c0 + ws)
            ]
            real = [t for t in tokens if t is not None]
            kw = torch.stack(
                [k[:, :, t] if t is not None else pad_k.expand(B, heads, D) for t in tokens], dim=2
            )
            vw = torch.stack(
                [v[:, :, t] if t is not None else pad_v.expand(B, heads, D) for t in tokens], dim=2
            )
            # Padded queries only produce discarded rows; give them zeros.
            qw = torch.stack([q[:, :, t] if t is not None else q.new_zeros(B, heads, D) for t in tokens], dim=2)
            ow = attention_f64(qw, kw, vw, rel_pos_h, rel_pos_w, (ws, ws), (ws, ws), scale)
            keep = [n for n, t in enumerate(tokens) if t is not None]
            out[:, :, real] = ow[:, :, keep]
    return out


def rel_l2(x, ref):
    return ((x.double() - ref).norm() / ref.norm()).item()


def make_inputs(B, heads, N, D, table_len_h, table_len_w, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, heads, N, D, generator=gen) for _ in range(3))
    # Tables scaled so the bias is comparable to q.k / sqrt(D) and matters.
    rel_pos_h = torch.randn(table_len_h, D, generator=gen) * 0.5
    rel_pos_w = torch.randn(table_len_w, D, generator=gen) * 0.5
    return [t.to(DEVICE, dtype) for t in (q, k, v, rel_pos_h, rel_pos_w)]


def check_error(out, ref_f64, torch_out, dtype):
    assert torch.isfinite(out).all(), "kernel left NaN/inf in the output (unwritten or overflowed)"
    err = rel_l2(out, ref_f64)
    if dtype == torch.float32:
        assert err <= FP32_TOL, f"fp32 rel-L2 error {err:.2e} > {FP32_TOL:.0e}"
    else:
        torch_err = rel_l2(torch_out, ref_f64)
        bound = min(2 * torch_err + 1e-5, ABS_TOL[dtype])
        assert err <= bound, f"{dtype} rel-L2 error {err:.2e} > bound {bound:.2e} (torch's own error {torch_err:.2e})"


def cases(shapes, bf16_shapes):
    """fp32 and fp16 on every shape and head dim; bf16 on a few, to keep the interpreter run short."""
    out = []
    for shape in shapes:
        for head_dim in (64, 80):
            for dtype in (torch.float32, torch.float16) + ((torch.bfloat16,) if shape in bf16_shapes else ()):
                out.append(pytest.param(shape, head_dim, dtype, id=f"{shape}-d{head_dim}-{str(dtype)[6:]}"))
    return out


@pytest.mark.parametrize(
    "grid, head_dim, dtype", cases([(12, 12), (8, 10), (16, 16), (5, 5), (7, 7), (14, 14)], [(8, 10), (14, 14)])
)
def test_rel_pos_attention_matches_float64(grid, head_dim, dtype):
    """Global blocks (a whole grid) and pre-partitioned windows (5x5, 7x7, 14x14 as a batch)."""
    h, w = grid
    # batch x heads > 1 everywhere; fewer programs on the largest grids keep the interpreter quick.
    B, heads = (3, 2) if h * w <= 49 else (2, 2) if h * w <= 150 else (1, 2)
    q, k, v, rph, rpw = make_inputs(B, heads, h * w, head_dim, 2 * h - 1, 2 * w - 1, dtype, seed=h * 100 + w)
    ref = attention_f64(q, k, v, rph, rpw, grid, grid)
    torch_out = rel_pos_attention_reference(q, k, v, rph, rpw, grid, grid)

    out = torch.full_like(q, float("nan"))  # poisoned: every entry must be written
    rel_pos_attention_triton(q, k, v, rph, rpw, grid, grid, out=out)
    check_error(out, ref, torch_out, dtype)


WINDOWED_SHAPES = [
    ((9, 11), 4),  # padded on both axes
    ((10, 15), 5),  # unpadded, several windows
    ((16, 13), 7),  # padded, odd window
    ((14, 14), 14),  # one SAM-size window, unpadded
    ((20, 17), 14),  # SAM-size windows, mostly padding at the edges
]


@pytest.mark.parametrize("grid_window, head_dim, dtype", cases(WINDOWED_SHAPES, [((9, 11), 4)]))
def test_windowed_attention_matches_float64(grid_window, head_dim, dtype):
    grid, window = grid_window
    H, W = grid
    B, heads = 2, 2
    q, k, v, rph, rpw = make_inputs(B, heads, H * W, head_dim, 2 * window - 1, 2 * window - 1, dtype, seed=H * W)
    gen = torch.Generator().manual_seed(7)
    pad_k, pad_v = (torch.randn(heads, head_dim, generator=gen).to(DEVICE, dtype) for _ in range(2))
    ref = windowed_attention_f64(q, k, v, rph, rpw, grid, window, pad_k, pad_v)
    torch_out = windowed_rel_pos_attention_reference(q, k, v, rph, rpw, grid, window, pad_k, pad_v)

    out = torch.full_like(q, float("nan"))
    windowed_rel_pos_attention_triton(q, k, v, rph, rpw, grid, window, pad_k, pad_v, out=out)
    check_error(out, ref, torch_out, dtype)


class PinnedConfig:
    """The autotuned attention kernel launched with one given config instead of tuning."""

    __slots__ = ("kernel", "config")

    def __init__(self, kernel, config):
        self.kernel = kernel
        self.config = config

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.kernel.fn[grid](*args, **kwargs, **self.config.all_kwargs())


@pytest.mark.parametrize("config_index", range(3))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_every_autotune_config_matches_float64(monkeypatch, config_index, dtype):
    """Each config autotune can pick on a GPU (the interpreter runs only the first): the query blocks of a
    window, partial last blocks and folded (batch, window) program ids must cover every output exactly once."""
    from sam_edge.kernels import triton_attention

    assert len(triton_attention.ATTENTION_CONFIGS) == 3
    config = triton_attention.ATTENTION_CONFIGS[config_index]
    monkeypatch.setattr(
        triton_attention, "_rel_pos_attention_kernel", PinnedConfig(triton_attention._rel_pos_attention_kernel, config)
    )
    (H, W), window, head_dim = (16, 13), 7, 80
    q, k, v, rph, rpw = make_inputs(2, 2, H * W, head_dim, 2 * window - 1, 2 * window - 1, dtype, seed=config_index)
    pad_k, pad_v = (t[0, :, 0] for t in make_inputs(1, 2, 1, head_dim, 1, 1, dtype, seed=99)[:2])
    out = torch.full_like(q, float("nan"))
    windowed_rel_pos_attention_triton(q, k, v, rph, rpw, (H, W), window, pad_k, pad_v, out=out)
    ref = windowed_attention_f64(q, k, v, rph, rpw, (H, W), window, pad_k, pad_v)
    torch_out = windowed_rel_pos_attention_reference(q, k, v, rph, rpw, (H, W), window, pad_k, pad_v)
    check_error(out, ref, torch_out, dtype)


@pytest.mark.parametrize(
    "q_size, k_size, table_h, table_w",
    [
        ((6, 6), (6, 6), 21, 9),  # tables for another resolution: resampled, as the official model does
        ((4, 6), (8, 3), 15, 11),  # different query and key grids
    ],
    ids=str,
)
def test_resampled_tables_and_unequal_grids(q_size, k_size, table_h, table_w):
    """Checked against the torch reference run in float64 (the f64 statement above covers equal grids only)."""
    D = 64
    gen = torch.Generator().manual_seed(13)
    q = torch.randn(2, 2, q_size[0] * q_size[1], D, generator=gen).to(DEVICE)
    k, v = (torch.randn(2, 2, k_size[0] * k_size[1], D, generator=gen).to(DEVICE) for _ in range(2))
    rph = (torch.randn(table_h, D, generator=gen) * 0.5).to(DEVICE)
    rpw = (torch.randn(table_w, D, generator=gen) * 0.5).to(DEVICE)
    ref = rel_pos_attention_reference(*(t.double() for t in (q, k, v, rph, rpw)), q_size, k_size)
    out = torch.full_like(q, float("nan"))
    rel_pos_attention_triton(q, k, v, rph, rpw, q_size, k_size, out=out)
    assert torch.isfinite(out).all()
    assert rel_l2(out, ref) <= FP32_TOL


def test_padded_keys_are_attended():
    """pad_k/pad_v must change the output of edge windows (SAM attends to padding)."""
    grid, window, D = (6, 6), 4, 64
    q, k, v, rph, rpw = make_inputs(1, 2, 36, D, 7, 7, torch.float32, seed=3)
    zeros = torch.zeros(2, D, device=DEVICE)
    big = torch.full((2, D), 3.0, device=DEVICE)
    a = windowed_rel_pos_attention_triton(q, k, v, rph, rpw, grid, window, zeros, zeros)
    b = windowed_rel_pos_attention_triton(q, k, v, rph, rpw, grid, window, big, big)
    ref_b = windowed_attention_f64(q, k, v, rph, rpw, grid, window, big, big)
    assert rel_l2(b, ref_b) <= FP32_TOL
    assert rel_l2(a, ref_b) > 1e-2, "pad_k/pad_v had no effect on the output"


def test_sam_qkv_layout_and_custom_scale():
    """q, k, v as strided views of one qkv projection, as SAM produces them."""
    B, heads, h, w, D = 2, 3, 6, 7, 64
    gen = torch.Generator().manual_seed(11)
    qkv = torch.randn(B, h * w, 3, heads, D, generator=gen).to(DEVICE).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    assert not q.is_contiguous()
    rph = (torch.randn(2 * h - 1, D, generator=gen) * 0.5).to(DEVICE)
    rpw = (torch.randn(2 * w - 1, D, generator=gen) * 0.5).to(DEVICE)
    out = rel_pos_attention_triton(q, k, v, rph, rpw, (h, w), (h, w), scale=0.3)
    assert rel_l2(out, attention_f64(q, k, v, rph, rpw, (h, w), (h, w), scale=0.3)) <= FP32_TOL


def test_public_ops_dispatch_to_triton():
    """backend="triton" on the public ops runs these kernels (same bits as calling them directly)."""
    q, k, v, rph, rpw = make_inputs(1, 2, 9 * 11, 64, 7, 7, torch.float32, seed=5)
    pad = torch.randn(2, 64, device=DEVICE)
    direct = windowed_rel_pos_attention_triton(q, k, v, rph, rpw, (9, 11), 4, pad, pad)
    public = windowed_rel_pos_attention(q, k, v, rph, rpw, (9, 11), 4, pad, pad, backend="triton")
    assert torch.equal(direct, public)
    q, k, v, rph, rpw = make_inputs(2, 2, 25, 64, 9, 9, torch.float32, seed=6)
    direct = rel_pos_attention_triton(q, k, v, rph, rpw, (5, 5), (5, 5))
    public = rel_pos_attention(q, k, v, rph, rpw, (5, 5), (5, 5), backend="triton")
    assert torch.equal(direct, public)


# CUDA's limits on launch grids: axis 0 up to 2**31 - 1 programs, axes 1 and 2 up to 65535.
GRID_LIMITS = (2**31 - 1, 65535, 65535)


class LaunchRecorder:
    """Stands in for an autotuned Triton kernel: records the grid of each config autotune can launch.

    It checks the call against the kernel's own argument names, launches nothing,
    and has no other attributes (so a launcher using more of the kernel fails here).
    """

    __slots__ = ("arg_names", "configs", "grids")

    def __init__(self, kernel, configs):
        self.arg_names = kernel.arg_names
        self.configs = configs
        self.grids = []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            meta = dict(zip(self.arg_names, args), **kwargs)
            tuned = set(self.configs[0].kwargs)
            missing = set(self.arg_names) - set(meta) - tuned
            unknown = set(meta) - set(self.arg_names)
            if missing or unknown or tuned & set(meta):
                raise TypeError(f"launch does not match the kernel: missing {missing}, unknown {unknown}")
            for config in self.configs:
                self.grids.append(tuple(grid(dict(meta, **config.kwargs))))

        return launch


def test_large_batches_stay_within_grid_limits(monkeypatch):
    """70000 windows (more than a grid axis 1 holds) launch on axis 0 with every config autotune can pick."""
    from sam_edge.kernels import triton_attention

    recorder = LaunchRecorder(triton_attention._rel_pos_attention_kernel, triton_attention.ATTENTION_CONFIGS)
    monkeypatch.setattr(triton_attention, "_rel_pos_attention_kernel", recorder)
    q = torch.zeros(70000, 2, 4, 16, device=DEVICE)
    table = torch.zeros(3, 16, device=DEVICE)
    rel_pos_attention_triton(q, q, q, table, table, (2, 2), (2, 2))
    # The fused windowed launch: 4 images of 280 x 250 tokens in 2 x 2 windows.
    q = torch.zeros(4, 1, 280 * 250, 16, device=DEVICE)
    windowed_rel_pos_attention_triton(q, q, q, table, table, (280, 250), 2)
    assert len(recorder.grids) == 2 * len(triton_attention.ATTENTION_CONFIGS)
    for grid in recorder.grids:
        assert all(0 < n <= limit for n, limit in zip(grid, GRID_LIMITS)), grid


def test_grids_beyond_cuda_limits_are_refused():
    assert triton_support.folded_grid(4, 70000, 16) == (280000, 16)
    with pytest.raises(ValueError, match="split the batch"):
        triton_support.folded_grid(4, 2**30)
    with pytest.raises(ValueError, match="70000 on axis 1"):
        triton_support.folded_grid(1, 1, 70000)


def test_empty_batch():
    q = torch.zeros(0, 2, 25, 64, device=DEVICE)
    table = torch.zeros(9, 64, device=DEVICE)
    assert rel_pos_attention_triton(q, q, q, table, table, (5, 5), (5, 5)).shape == q.shape
    assert windowed_rel_pos_attention_triton(q, q, q, table, table, (5, 5), 5).shape == q.shape


@pytest.mark.parametrize(
    "dtype, first",
    [(torch.float16, "triton"), (torch.bfloat16, "triton"), (torch.float32, "sdpa"), (torch.float64, "sdpa")],
    ids=str,
)
def test_auto_order_by_device_and_dtype(dtype, first):
    """On CUDA, auto tries Triton first for fp16/bf16 only: its fp32 path runs IEEE matmuls off the
    tensor cores (and spilled registers in every config before configs were pruned by head dim),
    and it has no fp64 path. CPU tensors never go to the slow interpreter."""
    assert auto_backend_order("cuda", dtype)[0] == first
    assert auto_backend_order("cuda", dtype)[-1] == "sdpa"
    assert auto_backend_order("cpu", dtype) == ("sdpa",)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=str)
def test_auto_dispatch(monkeypatch, dtype):
    """auto runs Triton on fp16/bf16 CUDA tensors, sdpa on fp32 ones, never the interpreter on CPU ones."""
    monkeypatch.delenv("SAM_EDGE_ATTENTION_BACKEND", raising=False)
    q = torch.zeros(1, 1, 4, 64, device=DEVICE, dtype=dtype)
    if q.is_cuda:
        assert resolve_backend(q, "auto") == ("sdpa" if dtype == torch.float32 else "triton")
    else:
        assert resolve_backend(q, "auto") in set(available_backends(q)) - {"triton"}
    assert available_backends(q)["triton"] is None


# Tensors the Triton kernels can run on here: CUDA ones, or CPU ones under the interpreter.
needs_runnable_triton = pytest.mark.skipif(
    DEVICE == "cpu" and not triton_support.interpreting(),
    reason="no CUDA device and TRITON_INTERPRET is not 1: the Triton kernels cannot run here",
)


@needs_runnable_triton
def test_env_switch_forces_backend(monkeypatch):
    q = torch.zeros(1, 1, 4, 64, device=DEVICE)
    monkeypatch.setenv("SAM_EDGE_ATTENTION_BACKEND", "triton")
    assert resolve_backend(q, "auto") == "triton"
    monkeypatch.setenv("SAM_EDGE_ATTENTION_BACKEND", "reference")
    assert resolve_backend(q, "auto") == "reference"


def test_unavailable_reasons_are_explicit(monkeypatch):
    cpu = torch.zeros(1)
    monkeypatch.setattr(triton_support, "interpreting", lambda: False)
    reason = triton_support.triton_unavailable_reason(cpu)
    assert reason is not None and "CUDA" in reason and "TRITON_INTERPRET" in reason
    with pytest.raises(RuntimeError, match="cannot run here"):
        resolve_backend(cpu, "triton")
    monkeypatch.setattr(triton_support.importlib.util, "find_spec", lambda name: None)
    assert "not installed" in triton_support.triton_unavailable_reason(cpu)


def test_inputs_that_need_grad_fall_back(monkeypatch):
    """The kernels are forward-only: auto picks the reference, forcing Triton explains why not."""
    monkeypatch.delenv("SAM_EDGE_ATTENTION_BACKEND", raising=False)
    q = torch.zeros(1, 1, 4, 64, device=DEVICE, requires_grad=True)
    assert resolve_backend(q, "auto") != "triton"
    with pytest.raises(RuntimeError, match="forward-only"):
        resolve_backend(q, "triton")
    with torch.no_grad():
        assert resolve_backend(q, "triton") == "triton"


def test_triton_status_reports_the_active_path():
    status = triton_support.triton_status("cpu")
    assert status["device"] == "cpu"
    # On CPU tensors the kernels run only in the interpreter.
    assert (status["triton"] == "available") == triton_support.interpreting(), status
    assert status["interpreter"] == triton_support.interpreting()


def test_rejects_bad_inputs():
    q = torch.zeros(1, 1, 4, 64, dtype=torch.float64, device=DEVICE)
    with pytest.raises(TypeError, match="float64"):
        rel_pos_attention_triton(q, q, q, q[0, 0, :3], q[0, 0, :3], (2, 2), (2, 2))
    q = torch.zeros(1, 1, 4, 64, device=DEVICE)
    with pytest.raises(ValueError, match="columns"):
        rel_pos_attention_triton(q, q, q, torch.zeros(3, 32, device=DEVICE), torch.zeros(3, 32, device=DEVICE), (2, 2), (2, 2))
    table = torch.zeros(3, 64, device=DEVICE)
    with pytest.raises(ValueError, match="token counts"):
        rel_pos_attention_triton(q, q, q, table, table, (2, 3), (2, 3))
    with pytest.raises(ValueError, match="token counts"):
        windowed_rel_pos_attention_triton(q, q[:, :, :3], q[:, :, :3], table, table, (2, 2), 2)
    if DEVICE == "cuda":
        with pytest.raises(ValueError, match="rel_pos_h is on cpu"):
            rel_pos_attention_triton(q, q, q, table.cpu(), table, (2, 2), (2, 2))
