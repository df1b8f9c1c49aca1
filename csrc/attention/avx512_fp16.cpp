// The AVX512-FP16 path (head_dim 64): products and partial sums in fp16.
//
// Sapphire Rapids and later issue two 32-lane fp16 FMAs a cycle, twice the
// fp32 rate. Scores accumulate over the 64 channels in fp16, are converted to
// fp32 for the scale, bias and softmax, and the probabilities go back to fp16
// for the product with v, whose partial sums are flushed to fp32 every
// kValueChunk keys. For int8 bundles, whose q, k, v come from int8 layers.

#include "attention_internal.h"

namespace sam_edge {
namespace attention {
namespace {


// acc += b * broadcast(*p), the broadcast folded into the FMA's memory operand
// (a separate vpbroadcastw would take the second FMA port's shuffle slot).
SAM_AVX512_FP16 inline __m512h fma_broadcast(__m512h acc, __m512h b, const _Float16* p) {
  asm("vfmadd231ph %2%{1to32%}, %1, %0" : "+v"(acc) : "v"(b), "m"(*p));
  return acc;
}

SAM_AVX512_FP16 inline __m512 low_to_fp32(__m512h x) { return _mm512_cvtxph_ps(_mm512_castph512_ph256(x)); }
SAM_AVX512_FP16 inline __m512 high_to_fp32(__m512h x) {
  return _mm512_cvtxph_ps(_mm256_castsi256_ph(_mm512_extracti64x4_epi64(_mm512_castph_si512(x), 1)));
}

// Scores of R rows against the 64 keys of the panel at j0, plus the bias.
// noinline, like value_rows_fp16: inlined into the block loop, GCC spills the
// 24 accumulators around the inline-asm FMAs.
template <int R, bool SMALL>
SAM_AVX512_FP16 __attribute__((noinline)) void score_tile_fp16(const HeadFp16& h, const _Float16* q,
                                                               const float* __restrict rh, const float* __restrict rw,
                                                               int64_t j0, float* __restrict s,
                                                               __m512* __restrict rmax) {
  __m512h acc[R][2];
#pragma GCC unroll 12
  for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ph();
  const _Float16* kt = h.kt + (j0 / 64) * 64 * 64;
  for (int64_t c = 0; c < 64; ++c) {
    const __m512h b0 = _mm512_load_ph(kt + c * 64), b1 = _mm512_load_ph(kt + c * 64 + 32);
#pragma GCC unroll 12
    for (int r = 0; r < R; ++r) {
      acc[r][0] = fma_broadcast(acc[r][0], b0, q + r * 64 + c);
      acc[r][1] = fma_broadcast(acc[r][1], b1, q + r * 64 + c);
    }
  }
  // Everything the epilogue reads, in locals: s could alias h, rh, rw or rmax
  // as far as the compiler knows, and it reloaded them around every store.
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
#pragma GCC unroll 12
    for (int r = 0; r < R; ++r) {
      const __m512 rhv = _mm512_maskz_loadu_ps(h_lanes, rh + r * k_h);
      const __m512 rwv = _mm512_maskz_loadu_ps(w_lanes, rw + r * k_w);
      const __m512 dot[4] = {low_to_fp32(acc[r][0]), high_to_fp32(acc[r][0]), low_to_fp32(acc[r][1]),
                             high_to_fp32(acc[r][1])};
      __m512 mx = rmax[r];
#pragma GCC unroll 4
      for (int g = 0; g < 4; ++g) {
        const __m512 bias = _mm512_add_ps(_mm512_permutexvar_ps(_mm512_loadu_si512(kr + 16 * g), rhv),
                                          _mm512_permutexvar_ps(_mm512_loadu_si512(kc + 16 * g), rwv));
        const __m512 x = _mm512_mask_mov_ps(minus_inf, valid[g], _mm512_fmadd_ps(dot[g], scale, bias));
        _mm512_storeu_ps(out + r * ls + 16 * g, x);
        mx = _mm512_max_ps(mx, x);
      }
      rmax[r] = mx;
    }
    return;
  }
  // Aligned grids: m % 64 == 0 and each group of 16 keys lies in one key row.
  const int64_t row0 = h.group_row[j0 / 16], row1 = h.group_row[j0 / 16 + 1], row2 = h.group_row[j0 / 16 + 2],
                row3 = h.group_row[j0 / 16 + 3];
  const int64_t col0 = h.group_col[j0 / 16], col1 = h.group_col[j0 / 16 + 1], col2 = h.group_col[j0 / 16 + 2],
                col3 = h.group_col[j0 / 16 + 3];
#pragma GCC unroll 12
  for (int r = 0; r < R; ++r) {
    const float* __restrict rhr = rh + r * k_h;
    const float* __restrict rwr = rw + r * k_w;
    const __m512 x0 = _mm512_fmadd_ps(low_to_fp32(acc[r][0]), scale,
                                      _mm512_add_ps(_mm512_set1_ps(rhr[row0]), _mm512_loadu_ps(rwr + col0)));
    const __m512 x1 = _mm512_fmadd_ps(high_to_fp32(acc[r][0]), scale,
                                      _mm512_add_ps(_mm512_set1_ps(rhr[row1]), _mm512_loadu_ps(rwr + col1)));
    const __m512 x2 = _mm512_fmadd_ps(low_to_fp32(acc[r][1]), scale,
                                      _mm512_add_ps(_mm512_set1_ps(rhr[row2]), _mm512_loadu_ps(rwr + col2)));
    const __m512 x3 = _mm512_fmadd_ps(high_to_fp32(acc[r][1]), scale,
                                      _mm512_add_ps(_mm512_set1_ps(rhr[row3]), _mm512_loadu_ps(rwr + col3)));
    _mm512_storeu_ps(out + r * ls, x0);
    _mm512_storeu_ps(out + r * ls + 16, x1);
    _mm512_storeu_ps(out + r * ls + 32, x2);
    _mm512_storeu_ps(out + r * ls + 48, x3);
    rmax[r] = _mm512_max_ps(rmax[r], _mm512_max_ps(_mm512_max_ps(x0, x1), _mm512_max_ps(x2, x3)));
  }
}

// acc32[r] += sum_{j in [j0, j1)} p[r, j] v[j] for R rows of 64 channels.
template <int R>
SAM_AVX512_FP16 __attribute__((noinline)) void value_rows_fp16(const HeadFp16& h, const _Float16* p, int64_t j0, int64_t j1,
                                            float* out) {
  __m512h acc[R][2];
#pragma GCC unroll 12
  for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ph();
  for (int64_t j = j0; j < j1; ++j) {
    const __m512h b0 = _mm512_load_ph(h.v + j * 64), b1 = _mm512_load_ph(h.v + j * 64 + 32);
#pragma GCC unroll 12
    for (int r = 0; r < R; ++r) {
      acc[r][0] = fma_broadcast(acc[r][0], b0, p + r * h.ls + j);
      acc[r][1] = fma_broadcast(acc[r][1], b1, p + r * h.ls + j);
    }
  }
#pragma GCC unroll 12
  for (int r = 0; r < R; ++r) {
    float* o = out + r * 64;
    _mm512_storeu_ps(o, _mm512_add_ps(_mm512_loadu_ps(o), low_to_fp32(acc[r][0])));
    _mm512_storeu_ps(o + 16, _mm512_add_ps(_mm512_loadu_ps(o + 16), high_to_fp32(acc[r][0])));
    _mm512_storeu_ps(o + 32, _mm512_add_ps(_mm512_loadu_ps(o + 32), low_to_fp32(acc[r][1])));
    _mm512_storeu_ps(o + 48, _mm512_add_ps(_mm512_loadu_ps(o + 48), high_to_fp32(acc[r][1])));
  }
}

template <bool SMALL>
SAM_AVX512_FP16 void attention_block_fp16(const HeadFp16& h, const _Float16* q, const float* rh,
                                          const float* rw, int64_t rows, float* s, _Float16* p, float* out) {
  constexpr int R = 12;  // 12 rows x 2 vectors of 32 lanes: 24 accumulators
  __m512 rmax[kRowBlock];
  for (int64_t r = 0; r < rows; ++r) rmax[r] = _mm512_set1_ps(-INFINITY);
  for (int64_t j0 = 0; j0 < h.m_pad; j0 += 64) {
    int64_t r0 = 0;
    for (; r0 + R <= rows; r0 += R)
      score_tile_fp16<R, SMALL>(h, q + r0 * 64, rh + r0 * h.k_h, rw + r0 * h.k_w, j0, s + r0 * h.ls, rmax + r0);
    // Remainders (196 = 8 * 24 + 4 rows in a window): one row alone is bound by FMA latency.
    for (; r0 + 4 <= rows; r0 += 4)
      score_tile_fp16<4, SMALL>(h, q + r0 * 64, rh + r0 * h.k_h, rw + r0 * h.k_w, j0, s + r0 * h.ls, rmax + r0);
    for (; r0 < rows; ++r0)
      score_tile_fp16<1, SMALL>(h, q + r0 * 64, rh + r0 * h.k_h, rw + r0 * h.k_w, j0, s + r0 * h.ls, rmax + r0);
  }
  float inv[kRowBlock];
  for (int64_t r = 0; r < rows; ++r) {
    const float* sr = s + r * h.ls;
    _Float16* pr = p + r * h.ls;
    const __m512 mx = _mm512_set1_ps(_mm512_reduce_max_ps(rmax[r]));
    __m512 sum = _mm512_setzero_ps();
    for (int64_t j = 0; j < h.m_pad; j += 16) {
      // Keys past m have score -inf: exp_avx512 clamps it to e^-87, zero in fp16.
      const __m256h e = _mm512_cvtxps_ph(exp_avx512(_mm512_sub_ps(_mm512_loadu_ps(sr + j), mx)));
      _mm256_storeu_ph(pr + j, e);
      sum = _mm512_add_ps(sum, _mm512_cvtxph_ps(e));  // the sum of what is multiplied
    }
    inv[r] = 1.f / _mm512_reduce_add_ps(sum);
  }
  for (int64_t r = 0; r < rows * 64; ++r) out[r] = 0.f;
  for (int64_t j0 = 0; j0 < h.m_pad; j0 += kValueChunk) {
    const int64_t j1 = std::min(h.m_pad, j0 + kValueChunk);
    int64_t r0 = 0;
    for (; r0 + R <= rows; r0 += R) value_rows_fp16<R>(h, p + r0 * h.ls, j0, j1, out + r0 * 64);
    for (; r0 + 4 <= rows; r0 += 4) value_rows_fp16<4>(h, p + r0 * h.ls, j0, j1, out + r0 * 64);
    for (; r0 < rows; ++r0) value_rows_fp16<1>(h, p + r0 * h.ls, j0, j1, out + r0 * 64);
  }
  for (int64_t r = 0; r < rows; ++r) {
    const __m512 w = _mm512_set1_ps(inv[r]);
    for (int64_t c = 0; c < 64; c += 16)
      _mm512_storeu_ps(out + r * 64 + c, _mm512_mul_ps(_mm512_loadu_ps(out + r * 64 + c), w));
  }
}

}  // namespace

template <bool SMALL>
SAM_AVX512_FP16 void attention_avx512_fp16(const float* q, const float* k, const float* v, const float* rel_h,
                                           const float* rel_w, float* out, int64_t bh, int64_t n_q,
                                           int64_t k_h, int64_t k_w, float scale, int threads) {
  constexpr int64_t d = 64;
  const int64_t m = k_h * k_w, panels = (m + 63) / 64, m_pad = panels * 64, head_k = m_pad * d;
  _Float16* kt = scratch<_Float16>(0, bh * head_k);
  _Float16* vh = scratch<_Float16>(1, bh * m_pad * d);
  _Float16* qh = scratch<_Float16>(2, bh * n_q * d);
  const int64_t blocks = (n_q + kRowBlock - 1) / kRowBlock;
  const KeyTables tables(m, m_pad, k_w);
#pragma omp parallel num_threads(threads)
  {
#pragma omp for schedule(static)
    for (int64_t t = 0; t < bh * panels; ++t) {
      const int64_t hh = t / panels, j0 = (t % panels) * 64;
      const float* src = k + hh * m * d;
      _Float16* dst = kt + hh * head_k + (j0 / 64) * 64 * d;
      // Converted a row at a time (vector), then transposed as 16-bit moves.
      alignas(64) _Float16 tile[64 * 64];
      for (int64_t j = 0; j < 64; ++j)
        for (int64_t c = 0; c < d; c += 16)
          _mm256_store_ph(tile + j * 64 + c, j0 + j < m ? _mm512_cvtxps_ph(_mm512_loadu_ps(src + (j0 + j) * d + c))
                                                        : _mm256_castsi256_ph(_mm256_setzero_si256()));
      for (int64_t c = 0; c < d; ++c)
        for (int64_t j = 0; j < 64; ++j) dst[c * 64 + j] = tile[j * 64 + c];
    }
#pragma omp for schedule(static)
    for (int64_t t = 0; t < bh * m_pad; ++t) {
      const int64_t hh = t / m_pad, j = t % m_pad;
      _Float16* dst = vh + t * d;
      for (int64_t c = 0; c < d; c += 16)
        _mm256_storeu_ph(dst + c, j < m ? _mm512_cvtxps_ph(_mm512_loadu_ps(v + (hh * m + j) * d + c))
                                        : _mm256_castsi256_ph(_mm256_setzero_si256()));
    }
#pragma omp for schedule(static)
    for (int64_t i = 0; i < bh * n_q * d; i += 16)
      _mm256_storeu_ph(qh + i, _mm512_cvtxps_ph(_mm512_loadu_ps(q + i)));
    float* s = scratch<float>(3, kRowBlock * (m_pad + kPad));
    _Float16* p = scratch<_Float16>(4, kRowBlock * (m_pad + kPad));
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < bh * blocks; ++t) {
      const int64_t hh = t / blocks, i0 = (t % blocks) * kRowBlock;
      const int64_t rows = std::min(kRowBlock, n_q - i0);
      const HeadFp16 h = tables.head(kt + hh * head_k, vh + hh * m_pad * d, m_pad + kPad, scale);
      const int64_t row = hh * n_q + i0;
      attention_block_fp16<SMALL>(h, qh + row * d, rel_h + row * k_h, rel_w + row * k_w, rows, s, p,
                                  out + row * d);
    }
  }
}


// fp16, head_dim 64: packs straight from qkv into the fp16 panels of
// attention_block_fp16, computes each task's rel-pos terms from its fp32
// queries, and writes its rows to their tokens. Padded queries are skipped.
template <bool SMALL>
SAM_AVX512_FP16 void qkv_fp16(const float* qkv, const float* table_h, const float* table_w, const float* rev_w,
                              int64_t kl_w, const float* kv_bias,
                              float* out, const QkvGeometry& g, float scale, int threads) {
  constexpr int64_t d = 64;
  const int64_t U = g.units(), m = g.m(), heads = g.heads;
  const int64_t k_h = g.s_h, k_w = g.s_w;
  const int64_t panels = (m + 63) / 64, m_pad = panels * 64, head_k = m_pad * d;
  _Float16* kt = scratch<_Float16>(0, U * head_k);
  _Float16* vh = scratch<_Float16>(1, U * m_pad * d);
  _Float16* qh = scratch<_Float16>(2, U * m * d);
  const KeyTables tables(m, m_pad, k_w);
  const std::vector<std::pair<int64_t, int64_t>> tasks = qkv_tasks(g, kRowBlock);
  const int64_t n_tasks = static_cast<int64_t>(tasks.size());
#pragma omp parallel num_threads(threads)
  {
#pragma omp for schedule(static)
    for (int64_t t = 0; t < U * panels; ++t) {
      const int64_t u = t / panels, j0 = (t % panels) * 64;
      _Float16* dst = kt + u * head_k + (j0 / 64) * 64 * d;
      const float* src[64];
      for (int64_t j = 0; j < 64; ++j) src[j] = g.key(qkv, kv_bias, u, j0 + j, 1);
      // 16 keys x 16 channels at a time, transposed in registers: a 16-bit
      // scalar transpose of the panel is a large share of a windowed call.
      for (int64_t jb = 0; jb < 64; jb += 16)
        for (int64_t cb = 0; cb < d; cb += 16) {
          __m512 r[16];
          for (int i = 0; i < 16; ++i) r[i] = src[jb + i] ? _mm512_loadu_ps(src[jb + i] + cb) : _mm512_setzero_ps();
          transpose16(r);
          for (int i = 0; i < 16; ++i) _mm256_storeu_ph(dst + (cb + i) * 64 + jb, _mm512_cvtxps_ph(r[i]));
        }
    }
#pragma omp for schedule(static)
    for (int64_t t = 0; t < U * m_pad; ++t) {
      const int64_t u = t / m_pad, j = t % m_pad;
      const float* src = g.key(qkv, kv_bias, u, j, 2);
      for (int64_t c = 0; c < d; c += 16)
        _mm256_storeu_ph(vh + t * d + c, src ? _mm512_cvtxps_ph(_mm512_loadu_ps(src + c))
                                             : _mm256_castsi256_ph(_mm256_setzero_si256()));
    }
    // Queries, compacted: row r of unit u is the window's valid position r.
#pragma omp for schedule(static)
    for (int64_t t = 0; t < U * m; ++t) {
      const int64_t u = t / m, r = t % m;
      if (r >= g.valid_h(u) * g.valid_w(u)) continue;
      const float* src = g.query(qkv, u, r);
      for (int64_t c = 0; c < d; c += 16) _mm256_storeu_ph(qh + t * d + c, _mm512_cvtxps_ph(_mm512_loadu_ps(src + c)));
    }
    float* s = scratch<float>(3, kRowBlock * (m_pad + kPad));
    _Float16* p = scratch<_Float16>(4, kRowBlock * (m_pad + kPad));
    float* rh = scratch<float>(5, kRowBlock * k_h);
    float* rw = scratch<float>(6, kRowBlock * k_w);
    float* o = scratch<float>(7, kRowBlock * d);
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < n_tasks; ++t) {
      const auto [u, i0] = tasks[t];
      const int64_t head = u % heads;
      int64_t tokens[kRowBlock], cols[kRowBlock];
      const float* q32[kRowBlock];
      const int64_t rows = task_queries(g, qkv, u, i0, kRowBlock, tokens, cols, q32);
      task_rel_terms(g, q32, cols, i0, rows, g.valid_w(u), table_h, table_w, rev_w, kl_w, rh, rw);
      const HeadFp16 h = tables.head(kt + u * head_k, vh + u * m_pad * d, m_pad + kPad, scale);
      attention_block_fp16<SMALL>(h, qh + (u * m + i0) * d, rh, rw, rows, s, p, o);
      for (int64_t r = 0; r < rows; ++r) {
        float* dst = out + (tokens[r] * heads + head) * d;
        for (int64_t c = 0; c < d; c += 16) _mm512_storeu_ps(dst + c, _mm512_loadu_ps(o + r * d + c));
      }
    }
  }
}


template void attention_avx512_fp16<false>(const float*, const float*, const float*, const float*, const float*,
                                          float*, int64_t, int64_t, int64_t, int64_t, float, int);
template void attention_avx512_fp16<true>(const float*, const float*, const float*, const float*, const float*,
                                         float*, int64_t, int64_t, int64_t, int64_t, float, int);
template void qkv_fp16<false>(const float*, const float*, const float*, const float*, int64_t, const float*, float*,
                              const QkvGeometry&, float, int);
template void qkv_fp16<true>(const float*, const float*, const float*, const float*, int64_t, const float*, float*,
                             const QkvGeometry&, float, int);

}  // namespace attention
}  // namespace sam_edge
