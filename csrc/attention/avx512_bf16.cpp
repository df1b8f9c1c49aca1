// The AVX512-BF16 path (head_dim 64 or 80), from the qkv projection: bf16
// compute on CPUs that have vdpbf16ps but no AMX tiles (AMD Zen 4 and later).
//
// vdpbf16ps multiplies 32 pairs of bf16 and adds each pair's two products to
// one of 16 fp32 sums, twice the products of an fp32 FMA. The numerics are the
// AMX path's (amx_bf16.cpp): q, k, v and the probabilities rounded to bf16,
// every sum in fp32, the bias and softmax the fp32 ones. A pair runs along
// each product's sum: two channels for q k^T, two keys for p v. So a dword of
// q holds two channels, and k and v are packed so that a vector holds the
// pairs of 16 keys (k) or of 16 channels (v).

#include "attention_internal.h"

namespace sam_edge {
namespace attention {
namespace {

// 32 floats (lo: 0-15, hi: 16-31) -> 32 bf16 (16 dwords of pairs), rounded to nearest even.
SAM_AVX512_BF16 inline __m512i bf16_pairs(__m512 lo, __m512 hi) { return (__m512i)_mm512_cvtne2ps_pbh(hi, lo); }
// Channels c .. c + 31 of a D-channel row as 16 dwords of pairs; zeros past D.
template <int D>
SAM_AVX512_BF16 inline __m512i channel_pairs(const float* src, int64_t c) {
  const __m512 lo = c < D ? _mm512_loadu_ps(src + c) : _mm512_setzero_ps();
  const __m512 hi = c + 16 < D ? _mm512_loadu_ps(src + c + 16) : _mm512_setzero_ps();
  return bf16_pairs(lo, hi);
}
// 16 floats -> bf16 in the low halves of 16 dwords.
SAM_AVX512_BF16 inline __m512i bf16_low_halves(__m512 x) { return _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(x)); }
// acc += a . b pairwise, a one dword (a pair) broadcast to every lane.
SAM_AVX512_BF16 inline __m512 dot_pairs(__m512 acc, uint32_t a, __m512i b) {
  return _mm512_dpbf16_ps(acc, (__m512bh)_mm512_set1_epi32(static_cast<int>(a)), (__m512bh)b);
}

// Where a task's packed operands are: k in panels of 64 keys, (m_pad / 64, D / 2, 64)
// dwords, each the channel pair (2c, 2c + 1) of one key; v as (m_pad / 2, D) dwords,
// each channel c of the key pair (2j, 2j + 1). Both zero past the m keys.
struct PackedBf16 {
  const uint32_t* k;
  const uint32_t* v;
};

// The scaled, biased scores of R rows (q: R rows of D / 2 pairs) against the
// first NC * 16 keys of the panel at j0, into s (row stride h.ls); rmax keeps
// each row's maximum.
template <int D, int R, int NC, bool SMALL>
SAM_AVX512_BF16 __attribute__((noinline)) void score_tile_bf16(const HeadFp16& h, const uint32_t* __restrict kpanel,
                                                               const uint32_t* __restrict q, const float* __restrict rh,
                                                               const float* __restrict rw, int64_t j0,
                                                               float* __restrict s, __m512* __restrict rmax) {
  constexpr int64_t pairs = D / 2;
  __m512 acc[R][NC];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int n = 0; n < NC; ++n) acc[r][n] = _mm512_setzero_ps();
  for (int64_t c = 0; c < pairs; ++c) {
    __m512i b[NC];
#pragma GCC unroll 4
    for (int n = 0; n < NC; ++n) b[n] = _mm512_loadu_si512(kpanel + c * 64 + 16 * n);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
      for (int n = 0; n < NC; ++n) acc[r][n] = dot_pairs(acc[r][n], q[r * pairs + c], b[n]);
  }
  // In locals: the stores to s would otherwise make the compiler reload h's fields.
  const __m512 scale = _mm512_set1_ps(h.scale);
  const int64_t k_h = h.k_h, k_w = h.k_w, ls = h.ls;
  float* __restrict out = s + j0;
  if constexpr (SMALL) {
    // k_h, k_w <= 16 (windowed blocks): a row's bias terms fit one register
    // each, and a permute spreads them over the keys; keys past m get -inf.
    const int32_t* kr = h.key_row + j0;
    const int32_t* kc = h.key_col + j0;
    const uint16_t* valid = h.group_valid + j0 / 16;
    const __mmask16 h_lanes = static_cast<__mmask16>((1u << k_h) - 1), w_lanes = static_cast<__mmask16>((1u << k_w) - 1);
    const __m512 minus_inf = _mm512_set1_ps(-INFINITY);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512 rhv = _mm512_maskz_loadu_ps(h_lanes, rh + r * k_h);
      const __m512 rwv = _mm512_maskz_loadu_ps(w_lanes, rw + r * k_w);
      __m512 mx = rmax[r];
#pragma GCC unroll 4
      for (int n = 0; n < NC; ++n) {
        const __m512 bias = _mm512_add_ps(_mm512_permutexvar_ps(_mm512_loadu_si512(kr + 16 * n), rhv),
                                          _mm512_permutexvar_ps(_mm512_loadu_si512(kc + 16 * n), rwv));
        const __m512 x = _mm512_mask_mov_ps(minus_inf, valid[n], _mm512_fmadd_ps(acc[r][n], scale, bias));
        _mm512_storeu_ps(out + r * ls + 16 * n, x);
        mx = _mm512_max_ps(mx, x);
      }
      rmax[r] = mx;
    }
    return;
  }
  // Aligned grids: m % 64 == 0 (NC is 4) and each group of 16 keys lies in one key row.
  static_assert(SMALL || NC == 4, "aligned grids have whole panels");
  int64_t rows[4], cols[4];
  for (int n = 0; n < 4; ++n) rows[n] = h.group_row[j0 / 16 + n], cols[n] = h.group_col[j0 / 16 + n];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    __m512 mx = rmax[r];
#pragma GCC unroll 4
    for (int n = 0; n < 4; ++n) {
      const __m512 bias = _mm512_add_ps(_mm512_set1_ps(rh[r * k_h + rows[n]]), _mm512_loadu_ps(rw + r * k_w + cols[n]));
      const __m512 x = _mm512_fmadd_ps(acc[r][n], scale, bias);
      _mm512_storeu_ps(out + r * ls + 16 * n, x);
      mx = _mm512_max_ps(mx, x);
    }
    rmax[r] = mx;
  }
}

// out[r] += sum_{key pairs [jp0, jp1)} p[r] v for R rows of D channels; p: bf16
// probability pairs, rows lp dwords apart.
template <int D, int R>
SAM_AVX512_BF16 __attribute__((noinline)) void value_rows_bf16(const uint32_t* __restrict v, const uint32_t* __restrict p,
                                                               int64_t lp, int64_t jp0, int64_t jp1,
                                                               float* __restrict out) {
  constexpr int NV = D / 16;
  __m512 acc[R][NV];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int n = 0; n < NV; ++n) acc[r][n] = _mm512_loadu_ps(out + r * D + 16 * n);
  for (int64_t jp = jp0; jp < jp1; ++jp) {
    __m512i b[NV];
#pragma GCC unroll 8
    for (int n = 0; n < NV; ++n) b[n] = _mm512_loadu_si512(v + jp * D + 16 * n);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
      for (int n = 0; n < NV; ++n) acc[r][n] = dot_pairs(acc[r][n], p[r * lp + jp], b[n]);
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int n = 0; n < NV; ++n) _mm512_storeu_ps(out + r * D + 16 * n, acc[r][n]);
}

// The score tiles of `rows` rows against NC groups of the panel at j0: RS rows
// at a time, the remainder (196 = 8 * 24 + 4 rows in a window) in one smaller tile.
template <int D, int NC, bool SMALL>
SAM_AVX512_BF16 void score_rows_bf16(const HeadFp16& h, const uint32_t* kpanel, const uint32_t* q, const float* rh,
                                     const float* rw, int64_t rows, int64_t j0, float* s, __m512* rmax) {
  constexpr int RS = 6;  // 6 rows x 4 vectors: 24 accumulators of the 32 registers
  constexpr int64_t pairs = D / 2;
  int64_t r0 = 0;
  for (; r0 + RS <= rows; r0 += RS)
    score_tile_bf16<D, RS, NC, SMALL>(h, kpanel, q + r0 * pairs, rh + r0 * h.k_h, rw + r0 * h.k_w, j0, s + r0 * h.ls,
                                  rmax + r0);
  const float *rhr = rh + r0 * h.k_h, *rwr = rw + r0 * h.k_w;
  switch (rows - r0) {
    case 5: score_tile_bf16<D, 5, NC, SMALL>(h, kpanel, q + r0 * pairs, rhr, rwr, j0, s + r0 * h.ls, rmax + r0); break;
    case 4: score_tile_bf16<D, 4, NC, SMALL>(h, kpanel, q + r0 * pairs, rhr, rwr, j0, s + r0 * h.ls, rmax + r0); break;
    case 3: score_tile_bf16<D, 3, NC, SMALL>(h, kpanel, q + r0 * pairs, rhr, rwr, j0, s + r0 * h.ls, rmax + r0); break;
    case 2: score_tile_bf16<D, 2, NC, SMALL>(h, kpanel, q + r0 * pairs, rhr, rwr, j0, s + r0 * h.ls, rmax + r0); break;
    case 1: score_tile_bf16<D, 1, NC, SMALL>(h, kpanel, q + r0 * pairs, rhr, rwr, j0, s + r0 * h.ls, rmax + r0); break;
    default: break;
  }
}

// The products with v of `rows` rows over the key pairs [jp0, jp1), RV rows at a time.
template <int D>
SAM_AVX512_BF16 void value_block_bf16(const uint32_t* v, const uint32_t* p, int64_t lp, int64_t rows, int64_t jp0,
                                      int64_t jp1, float* out) {
  constexpr int RV = D == 64 ? 6 : 4;  // RV x D / 16 accumulators and D / 16 vectors of v within 32 registers
  int64_t r0 = 0;
  for (; r0 + RV <= rows; r0 += RV) value_rows_bf16<D, RV>(v, p + r0 * lp, lp, jp0, jp1, out + r0 * D);
  switch (rows - r0) {
    case 5: value_rows_bf16<D, 5>(v, p + r0 * lp, lp, jp0, jp1, out + r0 * D); break;
    case 4: value_rows_bf16<D, 4>(v, p + r0 * lp, lp, jp0, jp1, out + r0 * D); break;
    case 3: value_rows_bf16<D, 3>(v, p + r0 * lp, lp, jp0, jp1, out + r0 * D); break;
    case 2: value_rows_bf16<D, 2>(v, p + r0 * lp, lp, jp0, jp1, out + r0 * D); break;
    case 1: value_rows_bf16<D, 1>(v, p + r0 * lp, lp, jp0, jp1, out + r0 * D); break;
    default: break;
  }
}

// One task: `rows` (at most kRowBlock) query rows of one head. s: fp32 scores,
// p: bf16 probabilities (rows h.ls / 2 dwords apart), out: (rows, D).
template <int D, bool SMALL>
SAM_AVX512_BF16 void attention_block_bf16(const HeadFp16& h, PackedBf16 kv, const uint32_t* q, const float* rh,
                                          const float* rw, int64_t rows, float* s, uint32_t* p, float* out) {
  __m512 rmax[kRowBlock];
  for (int64_t r = 0; r < rows; ++r) rmax[r] = _mm512_set1_ps(-INFINITY);
  // Small grids end in a partial panel (196 keys: one group of 16 in the fourth): only its groups with keys.
  const int64_t m16 = (h.m + 15) / 16 * 16, lp = h.ls / 2;
  for (int64_t j0 = 0; j0 < m16; j0 += 64) {
    const uint32_t* kpanel = kv.k + j0 * (D / 2);
    if constexpr (SMALL) {
      switch (std::min<int64_t>(4, (m16 - j0) / 16)) {
        case 1: score_rows_bf16<D, 1, SMALL>(h, kpanel, q, rh, rw, rows, j0, s, rmax); continue;
        case 2: score_rows_bf16<D, 2, SMALL>(h, kpanel, q, rh, rw, rows, j0, s, rmax); continue;
        case 3: score_rows_bf16<D, 3, SMALL>(h, kpanel, q, rh, rw, rows, j0, s, rmax); continue;
        default: break;
      }
    }
    score_rows_bf16<D, 4, SMALL>(h, kpanel, q, rh, rw, rows, j0, s, rmax);
  }
  // The softmax and the products with v stop there too: past m16, k and v are zero.
  float inv[kRowBlock];
  for (int64_t r = 0; r < rows; ++r) {
    const float* sr = s + r * h.ls;
    uint32_t* pr = p + r * lp;
    const __m512 mx = _mm512_set1_ps(_mm512_reduce_max_ps(rmax[r]));
    __m512 sum = _mm512_setzero_ps();
    for (int64_t j = 0; j < m16; j += 16) {
      // Keys past m have score -inf: exp_reduced clamps it to e^-87, nothing beside the rest.
      const __m512 e = exp_reduced(_mm512_sub_ps(_mm512_loadu_ps(sr + j), mx));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(pr + j / 2), (__m256i)_mm512_cvtneps_pbh(e));
      // The unrounded sum, as the AMX path: the rounded one is within 2^-9 of it.
      sum = _mm512_add_ps(sum, e);
    }
    inv[r] = 1.f / _mm512_reduce_add_ps(sum);
  }
  std::fill(out, out + rows * D, 0.f);
  // Chunks of kValueChunk keys of v (8 KB for D = 64), each used by every row while in L1.
  for (int64_t j0 = 0; j0 < m16; j0 += kValueChunk)
    value_block_bf16<D>(kv.v, p, lp, rows, j0 / 2, std::min(m16, j0 + kValueChunk) / 2, out);
  for (int64_t r = 0; r < rows; ++r) {
    const __m512 w = _mm512_set1_ps(inv[r]);
    for (int64_t c = 0; c < D; c += 16) _mm512_storeu_ps(out + r * D + c, _mm512_mul_ps(_mm512_loadu_ps(out + r * D + c), w));
  }
}

}  // namespace

// D: head_dim, 64 (ViT-B, ViT-L) or 80 (ViT-H). Packs k, v and the queries
// from qkv into bf16 pairs, computes each task's rel-pos terms from its fp32
// queries, and writes its rows to their tokens. Padded queries are skipped;
// padded keys and values are kv_bias's.
template <int D, bool SMALL>
SAM_AVX512_BF16 void qkv_avx512_bf16(const float* qkv, const float* table_h, const float* table_w, const float* rev_w,
                                     int64_t kl_w, const float* kv_bias, float* out, const QkvGeometry& g, float scale,
                                     const Workers& workers) {
  static_assert(D == 64 || D == 80, "head_dim 64 or 80");
  constexpr int64_t d = D, pairs = D / 2;
  const int64_t U = g.units(), m = g.m(), heads = g.heads;
  const int64_t k_h = g.s_h, k_w = g.s_w;
  const int64_t panels = (m + 63) / 64, m_pad = panels * 64;
  uint32_t* kp = scratch<uint32_t>(0, U * m_pad * pairs);
  uint32_t* vp = scratch<uint32_t>(1, U * m_pad * d / 2);
  uint32_t* qp = scratch<uint32_t>(2, U * m * pairs);
  const KeyTables tables(m, m_pad, k_w);
  const std::vector<std::pair<int64_t, int64_t>> tasks = qkv_tasks(g, kRowBlock);
  const int64_t n_tasks = static_cast<int64_t>(tasks.size());
  // k: per panel of 64 keys, 16 keys x 16 channel pairs at a time, transposed in registers.
  parallel_for(workers, U * panels, 1, [&](int64_t t, int64_t) SAM_AVX512_BF16 {
    const int64_t u = t / panels, j0 = (t % panels) * 64;
    uint32_t* dst = kp + (u * m_pad + j0) * pairs;
    for (int64_t jb = 0; jb < 64; jb += 16) {
      const float* src[16];
      for (int i = 0; i < 16; ++i) src[i] = g.key(qkv, kv_bias, u, j0 + jb + i, 1);
      for (int64_t cb = 0; cb < d; cb += 32) {
        __m512 r[16];
        for (int i = 0; i < 16; ++i)
          r[i] = src[i] ? _mm512_castsi512_ps(channel_pairs<D>(src[i], cb)) : _mm512_setzero_ps();
        transpose16(r);
        const int64_t valid_pairs = std::min<int64_t>(16, pairs - cb / 2);
        for (int64_t c = 0; c < valid_pairs; ++c) _mm512_storeu_ps(reinterpret_cast<float*>(dst + (cb / 2 + c) * 64 + jb), r[c]);
      }
    }
  });
  // v: per pair of keys, channel c of both in one dword; tasks of 32 pairs (16 KB of fp32 for D = 64).
  parallel_for(workers, U * m_pad / 2, 32, [&](int64_t begin, int64_t end) SAM_AVX512_BF16 {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t u = t / (m_pad / 2), jp = t % (m_pad / 2);
      const float* v0 = g.key(qkv, kv_bias, u, 2 * jp, 2);
      const float* v1 = g.key(qkv, kv_bias, u, 2 * jp + 1, 2);
      for (int64_t c = 0; c < d; c += 16) {
        const __m512i a = v0 ? bf16_low_halves(_mm512_loadu_ps(v0 + c)) : _mm512_setzero_si512();
        const __m512i b = v1 ? bf16_low_halves(_mm512_loadu_ps(v1 + c)) : _mm512_setzero_si512();
        _mm512_storeu_si512(vp + t * d + c, _mm512_or_si512(a, _mm512_slli_epi32(b, 16)));
      }
    }
  });
  // Queries, compacted: row r of unit u is the window's valid position r; tasks of 64 rows.
  parallel_for(workers, U * m, 64, [&](int64_t begin, int64_t end) SAM_AVX512_BF16 {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t u = t / m, r = t % m;
      if (r >= g.valid_h(u) * g.valid_w(u)) continue;
      const float* src = g.query(qkv, u, r);
      uint32_t* dst = qp + t * pairs;
      for (int64_t c = 0; c < d; c += 32) {
        if (c + 32 <= d)
          _mm512_storeu_si512(dst + c / 2, channel_pairs<D>(src, c));
        else  // the last 16 channels of head_dim 80
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + c / 2), (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(src + c)));
      }
    }
  });
  const int64_t ls = m_pad + kPad;
  parallel_for(workers, n_tasks, 1, [&](int64_t t, int64_t) SAM_AVX512_BF16 {
    // The running thread's buffers: a task runs on one thread from start to end.
    float* s = scratch<float>(3, kRowBlock * ls);
    uint32_t* p = scratch<uint32_t>(4, kRowBlock * ls / 2);
    float* rh = scratch<float>(5, kRowBlock * k_h);
    float* rw = scratch<float>(6, kRowBlock * k_w);
    float* o = scratch<float>(7, kRowBlock * d);
    const auto [u, i0] = tasks[t];
    const int64_t head = u % heads;
    int64_t tokens[kRowBlock], cols[kRowBlock];
    const float* q32[kRowBlock];
    const int64_t rows = task_queries(g, qkv, u, i0, kRowBlock, tokens, cols, q32);
    task_rel_terms(g, q32, cols, i0, rows, g.valid_w(u), table_h, table_w, rev_w, kl_w, rh, rw);
    const HeadFp16 h = tables.head(nullptr, nullptr, ls, scale);
    const PackedBf16 kv{kp + u * m_pad * pairs, vp + u * m_pad * d / 2};
    attention_block_bf16<D, SMALL>(h, kv, qp + (u * m + i0) * pairs, rh, rw, rows, s, p, o);
    for (int64_t r = 0; r < rows; ++r) {
      float* dst = out + (tokens[r] * heads + head) * d;
      for (int64_t c = 0; c < d; c += 16) _mm512_storeu_ps(dst + c, _mm512_loadu_ps(o + r * d + c));
    }
  }, /*balanced=*/true);
}

template void qkv_avx512_bf16<64, false>(const float*, const float*, const float*, const float*, int64_t, const float*,
                                         float*, const QkvGeometry&, float, const Workers&);
template void qkv_avx512_bf16<64, true>(const float*, const float*, const float*, const float*, int64_t, const float*,
                                        float*, const QkvGeometry&, float, const Workers&);
template void qkv_avx512_bf16<80, false>(const float*, const float*, const float*, const float*, int64_t, const float*,
                                         float*, const QkvGeometry&, float, const Workers&);
template void qkv_avx512_bf16<80, true>(const float*, const float*, const float*, const float*, int64_t, const float*,
                                        float*, const QkvGeometry&, float, const Workers&);

}  // namespace attention
}  // namespace sam_edge
