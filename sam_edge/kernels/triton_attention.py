"""Triton backend for rel-pos attention: one flash-attention-style kernel.

The kernel serves both ops:

* :func:`rel_pos_attention` (``backend="triton"``): one "window" that is the
  whole query grid (global blocks, or windows the caller already partitioned).
* :func:`windowed_rel_pos_attention` (fused): reads the *unpadded* (H, W)
  token grid, does the window partition in its indexing, packs only the valid
  queries of each window into query blocks (no padded query is computed), and
  substitutes ``pad_k`` / ``pad_v`` for keys of padded positions, which SAM
  still attends to.

Neither the (N, M) bias nor the attention matrix is materialised. Before its
key loop, each query block computes the two bias factors from q and the tables
in registers: rel_h[m, ki] = q[m] . Rh[i, ki] (BLOCK_M x key rows) and
rel_w[m, kj] = q[m] . Rw[j, kj] (BLOCK_M x key columns). The key loop then
walks one key *row* of the window per step (BLOCK_N = next power of two >= key
columns), so the bias of a step is rel_h[:, ki] broadcast plus rel_w, the same
tile for every row. Softmax is online, in fp32 and base 2.

Head dims that are not a power of two (ViT-H: 80) are split into a power-of-two
part and a small tail (64 + 16), so no matmul is padded to 128.

bf16 inputs are upcast to fp32 right after loading when running in the Triton
CPU interpreter, whose bf16 arithmetic is wrong; on a GPU the matmuls run in
bf16 with fp32 accumulation.

Importing this module needs Triton; the package registers these functions
lazily (see ``sam_edge/kernels/__init__.py``). ``TRITON_INTERPRET=1`` must be
set before this module is imported to run the kernels on CPU tensors.
"""

from __future__ import annotations

import os
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from .rel_pos import Size2, get_rel_pos
from .triton_support import autotune_configs, folded_grid, triton_unavailable_reason

#: Kernels are built for the CPU interpreter when this is set at import time.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
unavailable_reason = triton_unavailable_reason


# Each config with the largest head dim it holds in registers without spilling,
# on sm_80, sm_87 and sm_90, fp16/bf16, SAM's windowed and global shapes
# (tests/kernels/test_triton_compile.py compiles every pairing autotune can pick).
# 128-query blocks are absent: they spill at head dim 80, and at 64 on sm_80.
# The first config is the interpreter's. Few configs: each costs a compile on
# first use of a shape.
_CONFIGS_WITH_HEAD_DIM_LIMIT = (
    (triton.Config({"BLOCK_M": 64}, num_warps=8, num_stages=2), 64),
    (triton.Config({"BLOCK_M": 32}, num_warps=8, num_stages=2), 80),
    # An explicit register cap (.maxnreg) steers ptxas's allocation; without it this config spills on sm_90.
    (triton.Config({"BLOCK_M": 16}, num_warps=4, num_stages=2, maxnreg=255), 80),
)
ATTENTION_CONFIGS = [config for config, _ in _CONFIGS_WITH_HEAD_DIM_LIMIT]
_ATTENTION_CONFIGS = autotune_configs(ATTENTION_CONFIGS)


def _head_dim_limit(config: triton.Config) -> int:
    return next(limit for known, limit in _CONFIGS_WITH_HEAD_DIM_LIMIT if known is config)


def _prune_attention_configs(configs: list, named_args: dict, **kwargs) -> list:
    """Autotune's early_config_prune: the configs that hold HEAD_DIM without spilling.

    A head dim no config was checked for gets the config with the most room, and
    so do fp32 inputs (reached only by forcing backend="triton"): their fp32
    operands need about twice the registers, and one config skips tuning.
    """
    head_dim = kwargs["HEAD_DIM"]
    fits = [c for c in configs if _head_dim_limit(c) >= head_dim]
    if not fits or named_args["Q"].dtype == torch.float32:
        return [max(configs, key=_head_dim_limit)]
    return fits


@triton.jit
def _row_dot(q0f, q1f, row_ptr, offs_d0, offs_d1, m_mask, d1_mask, HAS_TAIL: tl.constexpr):
    """(BLOCK_M,) fp32 dot products of each query with its own table row (row_ptr: (BLOCK_M,) pointers)."""
    r0 = tl.load(row_ptr[:, None] + offs_d0[None, :], mask=m_mask[:, None], other=0.0).to(tl.float32)
    t = tl.sum(q0f * r0, axis=1)
    if HAS_TAIL:
        r1 = tl.load(row_ptr[:, None] + offs_d1[None, :], mask=m_mask[:, None] & d1_mask[None, :], other=0.0)
        t += tl.sum(q1f * r1.to(tl.float32), axis=1)
    return t


@triton.autotune(
    configs=_ATTENTION_CONFIGS,
    key=["WIN_QH", "WIN_QW", "WIN_KH", "WIN_KW", "HEAD_DIM", "N_WIN", "PADDED"],
    prune_configs_by={"early_config_prune": _prune_attention_configs},
)
@triton.jit
def _rel_pos_attention_kernel(
    Q, K, V, OUT, RH, RW, PAD_K, PAD_V,
    rh_offset, rh_stride_q, rh_stride_k, rw_offset, rw_stride_q, rw_stride_k,
    stride_qb, stride_qh, stride_qn,
    stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_on,
    scale,
    Q_GH, Q_GW, K_GH, K_GW,
    WIN_QH: tl.constexpr, WIN_QW: tl.constexpr, WIN_KH: tl.constexpr, WIN_KW: tl.constexpr,
    N_WIN_W, N_WIN: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_D0: tl.constexpr, BLOCK_D1: tl.constexpr,
    PADDED: tl.constexpr, UPCAST: tl.constexpr, IEEE_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_KH: tl.constexpr,
):
    # Program ids: (batch, window) and the query block within it share axis 0 (see folded_grid), head on axis 1.
    N_M_BLOCKS: tl.constexpr = (WIN_QH * WIN_QW + BLOCK_M - 1) // BLOCK_M
    pid_m = tl.program_id(0) % N_M_BLOCKS
    pid_bw = tl.program_id(0) // N_M_BLOCKS
    head = tl.program_id(1)
    batch = pid_bw // N_WIN
    win = pid_bw % N_WIN
    win_r = win // N_WIN_W
    win_c = win % N_WIN_W

    # Valid extent of this window (edge windows are cut by the grid border).
    q_row0 = win_r * WIN_QH
    q_col0 = win_c * WIN_QW
    q_vh = tl.minimum(WIN_QH, Q_GH - q_row0)
    q_vw = tl.minimum(WIN_QW, Q_GW - q_col0)
    k_row0 = win_r * WIN_KH
    k_col0 = win_c * WIN_KW
    k_vh = tl.minimum(WIN_KH, K_GH - k_row0)
    k_vw = tl.minimum(WIN_KW, K_GW - k_col0)

    # Valid queries are packed densely: padded queries are never computed.
    n_valid_q = q_vh * q_vw
    if pid_m * BLOCK_M >= n_valid_q:
        return
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_mask = offs_m < n_valid_q
    qi = offs_m // q_vw  # query row inside the window
    qj = offs_m % q_vw  # query column inside the window
    q_tok = (q_row0 + qi) * Q_GW + (q_col0 + qj)

    offs_d0 = tl.arange(0, BLOCK_D0)
    offs_d1 = BLOCK_D0 + tl.arange(0, BLOCK_D1)
    d1_mask = offs_d1 < HEAD_DIM
    HAS_TAIL: tl.constexpr = BLOCK_D0 < HEAD_DIM

    q_base = Q + batch.to(tl.int64) * stride_qb + head * stride_qh
    q0 = tl.load(q_base + q_tok[:, None] * stride_qn + offs_d0[None, :], mask=m_mask[:, None], other=0.0)
    if UPCAST:
        q0 = q0.to(tl.float32)
    q0f = q0.to(tl.float32)
    if HAS_TAIL:
        q1 = tl.load(
            q_base + q_tok[:, None] * stride_qn + offs_d1[None, :], mask=m_mask[:, None] & d1_mask[None, :], other=0.0
        )
        if UPCAST:
            q1 = q1.to(tl.float32)
        q1f = q1.to(tl.float32)
    else:
        q1f = q0f  # unused without a tail

    # Both bias factors for this query block, before the key loop, so q's fp32 copy dies early:
    # rel_h[m, ki] = q[m] . Rh[qi[m], ki] and rel_w[m, kj] = q[m] . Rw[qj[m], kj], in base-2 logits.
    # Table row of (query i, key k) is at offset + i * stride_q + k * stride_k.
    LOG2E: tl.constexpr = 1.4426950408889634
    offs_kh = tl.arange(0, BLOCK_KH)
    rel_h_all = tl.zeros([BLOCK_M, BLOCK_KH], dtype=tl.float32)
    rh_row = RH + rh_offset + qi * rh_stride_q
    for ki in range(0, WIN_KH):
        t = _row_dot(q0f, q1f, rh_row + ki * rh_stride_k, offs_d0, offs_d1, m_mask, d1_mask, HAS_TAIL)
        rel_h_all = tl.where(offs_kh[None, :] == ki, t[:, None] * LOG2E, rel_h_all)
    offs_n = tl.arange(0, BLOCK_N)
    # Columns past the window get -inf here, once, instead of a mask per key row.
    rel_w = tl.where(offs_n[None, :] < WIN_KW, tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32), float("-inf"))
    rw_row = RW + rw_offset + qj * rw_stride_q
    for kj in range(0, WIN_KW):
        t = _row_dot(q0f, q1f, rw_row + kj * rw_stride_k, offs_d0, offs_d1, m_mask, d1_mask, HAS_TAIL)
        rel_w = tl.where(offs_n[None, :] == kj, t[:, None] * LOG2E, rel_w)
    qk_scale = scale * LOG2E

    if PADDED:
        pk0 = tl.load(PAD_K + head * HEAD_DIM + offs_d0)
        pv0 = tl.load(PAD_V + head * HEAD_DIM + offs_d0)
        if HAS_TAIL:
            pk1 = tl.load(PAD_K + head * HEAD_DIM + offs_d1, mask=d1_mask, other=0.0)
            pv1 = tl.load(PAD_V + head * HEAD_DIM + offs_d1, mask=d1_mask, other=0.0)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc0 = tl.zeros([BLOCK_M, BLOCK_D0], dtype=tl.float32)
    if HAS_TAIL:
        acc1 = tl.zeros([BLOCK_M, BLOCK_D1], dtype=tl.float32)

    k_base = K + batch.to(tl.int64) * stride_kb + head * stride_kh
    v_base = V + batch.to(tl.int64) * stride_vb + head * stride_vh
    for ki in range(0, WIN_KH):
        # Keys of window row ki; positions past the grid border are padding.
        real = (offs_n < k_vw) & (ki < k_vh)
        k_tok = (k_row0 + ki) * K_GW + (k_col0 + offs_n)
        k0 = tl.load(k_base + k_tok[:, None] * stride_kn + offs_d0[None, :], mask=real[:, None], other=0.0)
        v0 = tl.load(v_base + k_tok[:, None] * stride_vn + offs_d0[None, :], mask=real[:, None], other=0.0)
        if UPCAST:
            k0 = k0.to(tl.float32)
            v0 = v0.to(tl.float32)
        if PADDED:
            k0 = tl.where(real[:, None], k0, pk0[None, :].to(k0.dtype))
            v0 = tl.where(real[:, None], v0, pv0[None, :].to(v0.dtype))
        if IEEE_FP32:
            s = tl.dot(q0, tl.trans(k0), input_precision="ieee")
        else:
            s = tl.dot(q0, tl.trans(k0))
        if HAS_TAIL:
            k1 = tl.load(
                k_base + k_tok[:, None] * stride_kn + offs_d1[None, :], mask=real[:, None] & d1_mask[None, :], other=0.0
            )
            v1 = tl.load(
                v_base + k_tok[:, None] * stride_vn + offs_d1[None, :], mask=real[:, None] & d1_mask[None, :], other=0.0
            )
            if UPCAST:
                k1 = k1.to(tl.float32)
                v1 = v1.to(tl.float32)
            if PADDED:
                k1 = tl.where(real[:, None], k1, pk1[None, :].to(k1.dtype))
                v1 = tl.where(real[:, None], v1, pv1[None, :].to(v1.dtype))
            if IEEE_FP32:
                s += tl.dot(q1, tl.trans(k1), input_precision="ieee")
            else:
                s += tl.dot(q1, tl.trans(k1))

        rel_h = tl.sum(tl.where(offs_kh[None, :] == ki, rel_h_all, 0.0), axis=1)
        s = s * qk_scale + rel_h[:, None] + rel_w

        # Online softmax in base 2 (all terms above are already multiplied by log2(e)).
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc0 = acc0 * alpha[:, None]
        if IEEE_FP32:
            acc0 += tl.dot(p, v0, input_precision="ieee")
        else:
            acc0 += tl.dot(p.to(v0.dtype), v0)
        if HAS_TAIL:
            acc1 = acc1 * alpha[:, None]
            if IEEE_FP32:
                acc1 += tl.dot(p, v1, input_precision="ieee")
            else:
                acc1 += tl.dot(p.to(v1.dtype), v1)
        m_i = m_new

    o_base = OUT + batch.to(tl.int64) * stride_ob + head * stride_oh
    inv_l = 1.0 / l_i
    tl.store(
        o_base + q_tok[:, None] * stride_on + offs_d0[None, :],
        (acc0 * inv_l[:, None]).to(OUT.dtype.element_ty),
        mask=m_mask[:, None],
    )
    if HAS_TAIL:
        tl.store(
            o_base + q_tok[:, None] * stride_on + offs_d1[None, :],
            (acc1 * inv_l[:, None]).to(OUT.dtype.element_ty),
            mask=m_mask[:, None] & d1_mask[None, :],
        )


def _head_dim_split(head_dim: int) -> Tuple[int, int]:
    """Largest power of two <= head_dim, and a power-of-two tail block (>= 16 for tl.dot).

    The tail block is unused (the kernel sees BLOCK_D0 == HEAD_DIM) when head_dim is a power of two.
    """
    d0 = 1 << (head_dim.bit_length() - 1)
    rest = head_dim - d0
    return d0, max(16, triton.next_power_of_2(max(rest, 1)))


def _table_rows(table: torch.Tensor, q_len: int, k_len: int) -> Tuple[torch.Tensor, Tuple[int, int, int]]:
    """A tensor and (offset, stride per query, stride per key) addressing row R[i, k] of the axis.

    In SAM the query and key windows match and the table has 2 * len - 1 rows,
    so R[i, k] = table[i - k + len - 1] is addressed in the table itself.
    Otherwise (other resolutions) the rows are resampled and gathered on the
    host into a (q_len, k_len, D) tensor, exactly as the reference does.
    """
    if q_len == k_len and table.shape[0] == 2 * k_len - 1:
        table = table.contiguous()
        row = table.stride(0)
        return table, ((k_len - 1) * row, row, -row)
    rows = get_rel_pos(q_len, k_len, table).contiguous()
    return rows, (0, rows.stride(0), rows.stride(1))


def _check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    if q.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"triton attention supports float32, float16 and bfloat16; got {q.dtype}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"q, k, v must share a dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
    if k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise ValueError(f"incompatible q, k, v shapes {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if q.shape[3] < 16:
        raise ValueError(f"triton attention needs head_dim >= 16; got {q.shape[3]}")


def _launch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rel_h_table: torch.Tensor,
    rel_w_table: torch.Tensor,
    q_grid: Size2,
    k_grid: Size2,
    q_window: Size2,
    k_window: Size2,
    pad_k: Optional[torch.Tensor],
    pad_v: Optional[torch.Tensor],
    scale: Optional[float],
    out: Optional[torch.Tensor],
) -> torch.Tensor:
    _check_inputs(q, k, v)
    B, heads, _, D = q.shape
    if q.shape[2] != q_grid[0] * q_grid[1] or k.shape[2] != k_grid[0] * k_grid[1]:
        raise ValueError(
            f"token counts {q.shape[2]} (q) and {k.shape[2]} (k, v) do not match grids "
            f"{tuple(q_grid)} and {tuple(k_grid)}"
        )
    for name, t in (("rel_pos_h", rel_h_table), ("rel_pos_w", rel_w_table), ("pad_k", pad_k), ("pad_v", pad_v)):
        if t is not None and t.device != q.device:
            raise ValueError(f"{name} is on {t.device} but q is on {q.device}")
    # The kernel indexes the head dim with unit stride.
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    if out is None:
        out = torch.empty_like(q, memory_format=torch.contiguous_format)
    elif out.shape != q.shape or out.dtype != q.dtype or out.stride(-1) != 1:
        raise ValueError(f"out must be a {q.dtype} tensor of shape {tuple(q.shape)} with a unit last stride")
    scale = D**-0.5 if scale is None else float(scale)
    if out.numel() == 0:
        return out

    if rel_h_table.dim() != 2 or rel_w_table.dim() != 2 or rel_h_table.shape[1] != D or rel_w_table.shape[1] != D:
        raise ValueError(
            f"rel-pos tables must be (L, head_dim={D}) with head_dim columns; "
            f"got {tuple(rel_h_table.shape)} and {tuple(rel_w_table.shape)}"
        )
    Rh, rh_strides = _table_rows(rel_h_table, q_window[0], k_window[0])
    Rw, rw_strides = _table_rows(rel_w_table, q_window[1], k_window[1])

    padded = pad_k is not None or pad_v is not None
    if padded:
        pad_k = (q.new_zeros(heads, D) if pad_k is None else pad_k).to(q.device, q.dtype).reshape(heads, D).contiguous()
        pad_v = (q.new_zeros(heads, D) if pad_v is None else pad_v).to(q.device, q.dtype).reshape(heads, D).contiguous()
    else:
        pad_k = pad_v = q  # never read

    n_win_h = -(-q_grid[0] // q_window[0])
    n_win_w = -(-q_grid[1] // q_window[1])
    d0, d1 = _head_dim_split(D)
    block_n = max(16, triton.next_power_of_2(k_window[1]))

    def grid(meta):
        return folded_grid(triton.cdiv(q_window[0] * q_window[1], meta["BLOCK_M"]), B * n_win_h * n_win_w, heads)

    _rel_pos_attention_kernel[grid](
        q, k, v, out, Rh, Rw, pad_k, pad_v,
        *rh_strides, *rw_strides,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        scale,
        q_grid[0], q_grid[1], k_grid[0], k_grid[1],
        WIN_QH=q_window[0], WIN_QW=q_window[1], WIN_KH=k_window[0], WIN_KW=k_window[1],
        N_WIN_W=n_win_w, N_WIN=n_win_h * n_win_w,
        HEAD_DIM=D, BLOCK_D0=d0, BLOCK_D1=d1,
        PADDED=padded,
        UPCAST=INTERPRET and q.dtype == torch.bfloat16,
        IEEE_FP32=q.dtype == torch.float32,
        BLOCK_N=block_n,
        BLOCK_KH=max(16, triton.next_power_of_2(k_window[0])),
    )
    return out


def rel_pos_attention_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rel_pos_h: torch.Tensor,
    rel_pos_w: torch.Tensor,
    q_size: Size2,
    k_size: Size2,
    scale: Optional[float] = None,
    *,
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Fused :func:`rel_pos_attention` (global blocks, or pre-partitioned windows).

    Args:
        q: (B, heads, q_h * q_w, head_dim), unscaled; k, v: (B, heads, k_h * k_w, head_dim).
        rel_pos_h, rel_pos_w: (L, head_dim) tables, as for the reference.
        out: optional preallocated (B, heads, q_h * q_w, head_dim) output.
    Returns:
        (B, heads, q_h * q_w, head_dim) in q's dtype.
    """
    q_size, k_size = tuple(q_size), tuple(k_size)
    return _launch(q, k, v, rel_pos_h, rel_pos_w, q_size, k_size, q_size, k_size, None, None, scale, out)


def windowed_rel_pos_attention_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rel_pos_h: torch.Tensor,
    rel_pos_w: torch.Tensor,
    grid_size: Size2,
    window_size: int,
    pad_k: Optional[torch.Tensor] = None,
    pad_v: Optional[torch.Tensor] = None,
    *,
    scale: Optional[float] = None,
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Fused :func:`windowed_rel_pos_attention` on the unpadded (H, W) grid.

    Args:
        q, k, v: (B, heads, H * W, head_dim); q unscaled.
        pad_k, pad_v: (heads, head_dim) key/value of padded tokens; zeros when None.
        out: optional preallocated (B, heads, H * W, head_dim) output.
    Returns:
        (B, heads, H * W, head_dim) in q's dtype.
    """
    H, W = grid_size
    ws = (window_size, window_size)
    needs_pad = H % window_size != 0 or W % window_size != 0
    if needs_pad and pad_k is None and pad_v is None:
        pad_k = pad_v = q.new_zeros(q.shape[1], q.shape[3])
    if not needs_pad:
        pad_k = pad_v = None
    return _launch(q, k, v, rel_pos_h, rel_pos_w, (H, W), (H, W), ws, ws, pad_k, pad_v, scale, out)
