// From the qkv projection (rel_pos_attention_qkv_cpu): the rel-pos tables and
// terms, the generic path that gathers the units for rel_pos_attention_cpu and
// scatters its rows back, and the tasks the fp16 and bf16 paths share.

#include "attention_internal.h"

namespace sam_edge {
namespace attention {
namespace {

// out[k] = sum_c q[c] table[c][k] for k < s (table rows kp wide).
void rel_terms_portable(const float* q, const float* table, int64_t d, int64_t kp, int64_t s, float* out) {
  for (int64_t k = 0; k < s; ++k) out[k] = 0.f;
  for (int64_t c = 0; c < d; ++c)
    for (int64_t k = 0; k < s; ++k) out[k] += q[c] * table[c * kp + k];
}

template <int NV>
SAM_AVX512 void rel_terms_avx512_n(const float* q, const float* table, int64_t d, int64_t s, float* out) {
  __m512 acc[NV];
#pragma GCC unroll 8
  for (int n = 0; n < NV; ++n) acc[n] = _mm512_setzero_ps();
  for (int64_t c = 0; c < d; ++c) {
    const __m512 a = _mm512_set1_ps(q[c]);
#pragma GCC unroll 8
    for (int n = 0; n < NV; ++n) acc[n] = _mm512_fmadd_ps(a, _mm512_loadu_ps(table + c * NV * 16 + 16 * n), acc[n]);
  }
#pragma GCC unroll 8
  for (int n = 0; n < NV; ++n) {
    const int64_t lanes = std::min<int64_t>(16, s - 16 * n);
    if (lanes > 0) _mm512_mask_storeu_ps(out + 16 * n, static_cast<__mmask16>((1u << lanes) - 1), acc[n]);
  }
}

SAM_AVX512 void rel_terms_avx512(const float* q, const float* table, int64_t d, int64_t kp, int64_t s, float* out) {
  switch (kp / 16) {
    case 1: rel_terms_avx512_n<1>(q, table, d, s, out); break;
    case 2: rel_terms_avx512_n<2>(q, table, d, s, out); break;
    case 3: rel_terms_avx512_n<3>(q, table, d, s, out); break;
    case 4: rel_terms_avx512_n<4>(q, table, d, s, out); break;
    default: rel_terms_portable(q, table, d, kp, s, out); break;
  }
}

// acc[r][n] = sum_c q[r][c] table[c][16n : 16n + 16] for R rows, the table's
// rows NV * 16 floats wide: its NV vectors are loaded once for all R rows.
template <int R, int NV>
SAM_AVX512 inline void rel_dots(const float* const* q, const float* table, int64_t d, __m512 (&acc)[R][NV]) {
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int n = 0; n < NV; ++n) acc[r][n] = _mm512_setzero_ps();
  for (int64_t c = 0; c < d; ++c) {
    __m512 b[NV];
#pragma GCC unroll 8
    for (int n = 0; n < NV; ++n) b[n] = _mm512_loadu_ps(table + c * NV * 16 + 16 * n);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512 a = _mm512_set1_ps(q[r][c]);
#pragma GCC unroll 8
      for (int n = 0; n < NV; ++n) acc[r][n] = _mm512_fmadd_ps(a, b[n], acc[r][n]);
    }
  }
}

// The row terms of R rows that share one table row (the same window row ty):
// out[r][k] = q[r] . table[c][k].
template <int R, int NV>
SAM_AVX512 void rel_terms_shared(const float* const* q, const float* table, int64_t d, int64_t s, float* out,
                                 int64_t out_stride) {
  __m512 acc[R][NV];
  rel_dots<R, NV>(q, table, d, acc);
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int n = 0; n < NV; ++n) {
      const int64_t lanes = std::min<int64_t>(16, s - 16 * n);
      if (lanes > 0) _mm512_mask_storeu_ps(out + r * out_stride + 16 * n, static_cast<__mmask16>((1u << lanes) - 1), acc[r][n]);
    }
}

template <int NV>
SAM_AVX512 void rel_terms_shared_rows(const float* const* q, const float* table, int64_t d, int64_t s,
                                      int64_t rows, float* out, int64_t out_stride) {
  constexpr int R = 24 / NV > 6 ? 6 : 24 / NV;
  int64_t r = 0;
  for (; r + R <= rows; r += R) rel_terms_shared<R, NV>(q + r, table, d, s, out + r * out_stride, out_stride);
  for (; r < rows; ++r) rel_terms_shared<1, NV>(q + r, table, d, s, out + r * out_stride, out_stride);
}

// rel_terms for `rows` rows sharing table (kp lanes); false when kp > 64.
SAM_AVX512 bool rel_terms_shared_any(const float* const* q, const float* table, int64_t d, int64_t kp, int64_t s,
                                     int64_t rows, float* out, int64_t out_stride) {
  switch (kp / 16) {
    case 1: rel_terms_shared_rows<1>(q, table, d, s, rows, out, out_stride); return true;
    case 2: rel_terms_shared_rows<2>(q, table, d, s, rows, out, out_stride); return true;
    case 3: rel_terms_shared_rows<3>(q, table, d, s, rows, out, out_stride); return true;
    case 4: rel_terms_shared_rows<4>(q, table, d, s, rows, out, out_stride); return true;
    default: return false;
  }
}

// The column terms of R rows at different columns t[r]: a per-column table
// (rel_pos_table) would stream 16 KB per row through L1. Instead every row takes
// its dot products with all 2s - 1 entries of the reversed tables, rev[c][j] =
// rel_pos[2s - 2 - j][c] (kl lanes, one shared table), and its s terms are the
// contiguous run from s - 1 - t[r]: rel[k] = q . rel_pos[t - k + s - 1].
template <int R, int NV>
SAM_AVX512 void rel_terms_shifted(const float* const* q, const float* rev, int64_t d, int64_t s, const int64_t* t,
                                  float* out, int64_t out_stride) {
  __m512 acc[R][NV];
  rel_dots<R, NV>(q, rev, d, acc);
  alignas(64) float all[NV * 16];
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 8
    for (int n = 0; n < NV; ++n) _mm512_store_ps(all + 16 * n, acc[r][n]);
    const float* src = all + (s - 1 - t[r]);
    float* dst = out + r * out_stride;
    for (int64_t k = 0; k < s; k += 16) {
      const __mmask16 lanes = static_cast<__mmask16>((1u << std::min<int64_t>(16, s - k)) - 1);
      _mm512_mask_storeu_ps(dst + k, lanes, _mm512_maskz_loadu_ps(lanes, src + k));
    }
  }
}

template <int NV>
SAM_AVX512 void rel_terms_shifted_rows(const float* const* q, const float* rev, int64_t d, int64_t s,
                                       const int64_t* t, int64_t rows, float* out, int64_t out_stride) {
  constexpr int R = NV <= 4 ? 6 : 2;  // R x NV accumulators and NV table vectors within the 32 registers
  int64_t r = 0;
  for (; r + R <= rows; r += R) rel_terms_shifted<R, NV>(q + r, rev, d, s, t + r, out + r * out_stride, out_stride);
  for (; r < rows; ++r) rel_terms_shifted<1, NV>(q + r, rev, d, s, t + r, out + r * out_stride, out_stride);
}

// kl = 16 * NV lanes of rev, >= 2s - 1; at most 8 vectors (s <= 64).
SAM_AVX512 bool rel_terms_shifted_any(const float* const* q, const float* rev, int64_t d, int64_t kl, int64_t s,
                                      const int64_t* t, int64_t rows, float* out, int64_t out_stride) {
  switch (kl / 16) {
    case 1: rel_terms_shifted_rows<1>(q, rev, d, s, t, rows, out, out_stride); return true;
    case 2: rel_terms_shifted_rows<2>(q, rev, d, s, t, rows, out, out_stride); return true;
    case 3: rel_terms_shifted_rows<3>(q, rev, d, s, t, rows, out, out_stride); return true;
    case 4: rel_terms_shifted_rows<4>(q, rev, d, s, t, rows, out, out_stride); return true;
    case 5: rel_terms_shifted_rows<5>(q, rev, d, s, t, rows, out, out_stride); return true;
    case 6: rel_terms_shifted_rows<6>(q, rev, d, s, t, rows, out, out_stride); return true;
    case 7: rel_terms_shifted_rows<7>(q, rev, d, s, t, rows, out, out_stride); return true;
    case 8: rel_terms_shifted_rows<8>(q, rev, d, s, t, rows, out, out_stride); return true;
    default: return false;
  }
}

void rel_terms(bool avx512, const float* q, const float* table, int64_t d, int64_t kp, int64_t s, float* out) {
  if (avx512)
    rel_terms_avx512(q, table, d, kp, s, out);
  else
    rel_terms_portable(q, table, d, kp, s, out);
}

}  // namespace

// table[t][c][k] = rel_pos[t - k + s - 1][c] for k < s, zero for s <= k < kp:
// the rel-pos term of a query at window row (or column) t is then q . table[t].
std::vector<float> rel_pos_table(const float* rel_pos, int64_t s, int64_t kp, int64_t d) {
  std::vector<float> table(static_cast<size_t>(s * d * kp), 0.f);
  for (int64_t t = 0; t < s; ++t)
    for (int64_t k = 0; k < s; ++k)
      for (int64_t c = 0; c < d; ++c) table[(t * d + c) * kp + k] = rel_pos[(t - k + s - 1) * d + c];
  return table;
}

// rev[c][j] = rel_pos[2s - 2 - j][c], j < 2s - 1, zero up to kl.
std::vector<float> reversed_table(const float* rel_pos, int64_t s, int64_t kl, int64_t d) {
  std::vector<float> rev(static_cast<size_t>(d * kl), 0.f);
  for (int64_t c = 0; c < d; ++c)
    for (int64_t j = 0; j < 2 * s - 1; ++j) rev[c * kl + j] = rel_pos[(2 * s - 2 - j) * d + c];
  return rev;
}

// fp32, any shape: gather the units into the (units, m, D) layout of
// rel_pos_attention_cpu, run it, scatter the valid rows back. Padded keys and
// values are kv_bias (the qkv bias: a padded token is zero after the norm);
// padded queries are zero, and their rows are dropped.
void qkv_generic(const float* qkv, const float* table_h, const float* table_w, const float* rev_w, int64_t kl_w,
                 const float* kv_bias, float* out, const QkvGeometry& g, float scale, const Workers& workers,
                 bool force_portable) {
  const int64_t U = g.units(), m = g.m(), d = g.d, ts = g.token_stride();
  float* q = scratch<float>(8, U * m * d);
  float* k = scratch<float>(9, U * m * d);
  float* v = scratch<float>(10, U * m * d);
  float* rh = scratch<float>(11, U * m * g.s_h);
  float* rw = scratch<float>(12, U * m * g.s_w);
  float* o = scratch<float>(13, U * m * d);
  const bool avx512 = !force_portable && rel_pos_attention_has_avx512();
  // Tasks of about 16 KB of copies: a pool hands each out on its own.
  const int64_t row_grain = std::max<int64_t>(1, 4096 / d);
  parallel_for(workers, U * m, row_grain, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t u = t / m, j = t % m, head = u % g.heads, token = g.token(u, j);
      float* qd = q + t * d;
      float* kd = k + t * d;
      float* vd = v + t * d;
      if (token >= 0) {
        const float* src = qkv + token * ts + head * d;
        std::copy(src, src + d, qd);
        std::copy(src + g.heads * d, src + g.heads * d + d, kd);
        std::copy(src + 2 * g.heads * d, src + 2 * g.heads * d + d, vd);
      } else {
        std::fill(qd, qd + d, 0.f);
        std::copy(kv_bias + head * d, kv_bias + head * d + d, kd);
        std::copy(kv_bias + (g.heads + head) * d, kv_bias + (g.heads + head) * d + d, vd);
      }
    }
  });
  // The rel-pos terms a window row at a time: its queries share table_h's row.
  parallel_for(workers, U * g.s_h, 1, [&](int64_t t, int64_t) {
    const int64_t row0 = t * g.s_w, ty = t % g.s_h;
    for (int64_t tx = 0; tx < g.s_w; ++tx)
      rel_terms(avx512, q + (row0 + tx) * d, table_h + ty * d * g.kp_h, d, g.kp_h, g.s_h, rh + (row0 + tx) * g.s_h);
    bool done = false;
    if (avx512) {
      std::vector<const float*> rows(g.s_w);
      std::vector<int64_t> cols(g.s_w);
      for (int64_t tx = 0; tx < g.s_w; ++tx) rows[tx] = q + (row0 + tx) * d, cols[tx] = tx;
      done = rel_terms_shifted_any(rows.data(), rev_w, d, kl_w, g.s_w, cols.data(), g.s_w, rw + row0 * g.s_w, g.s_w);
    }
    if (!done)
      for (int64_t tx = 0; tx < g.s_w; ++tx)
        rel_terms_portable(q + (row0 + tx) * d, table_w + tx * d * g.kp_w, d, g.kp_w, g.s_w, rw + (row0 + tx) * g.s_w);
  });
  rel_pos_attention_cpu(q, k, v, rh, rw, o, U, m, g.s_h, g.s_w, d, scale, workers.threads, force_portable,
                        Compute::fp32, workers.runner);
  parallel_for(workers, U * m, row_grain, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t u = t / m, token = g.token(u, t % m);
      if (token >= 0) std::copy(o + t * d, o + t * d + d, out + (token * g.heads + u % g.heads) * d);
    }
  });
}

// Tasks of rows_per_task query rows of one unit, (unit, first row): a unit's
// queries are its window's valid rectangle, row-major.
std::vector<std::pair<int64_t, int64_t>> qkv_tasks(const QkvGeometry& g, int64_t rows_per_task) {
  std::vector<std::pair<int64_t, int64_t>> tasks;
  for (int64_t u = 0; u < g.units(); ++u)
    for (int64_t i0 = 0; i0 < g.valid_h(u) * g.valid_w(u); i0 += rows_per_task) tasks.emplace_back(u, i0);
  return tasks;
}

// A task's query rows: their tokens, window columns and fp32 queries in qkv;
// returns how many there are (at most max_rows).
int64_t task_queries(const QkvGeometry& g, const float* qkv, int64_t u, int64_t i0, int64_t max_rows, int64_t* tokens,
                     int64_t* cols, const float** q32) {
  const int64_t vw = g.valid_w(u), rows = std::min(max_rows, g.valid_h(u) * vw - i0);
  for (int64_t r = 0; r < rows; ++r) {
    tokens[r] = g.query_token(u, i0 + r), cols[r] = (i0 + r) % vw;
    q32[r] = g.query(qkv, u, i0 + r);
  }
  return rows;
}

// A task's rel-pos terms: rh (rows, k_h) and rw (rows, k_w) for its query rows
// i0.. of a window vw wide, q32 their fp32 queries and cols their columns.
SAM_AVX512 void task_rel_terms(const QkvGeometry& g, const float* const* q32, const int64_t* cols, int64_t i0,
                               int64_t rows, int64_t vw, const float* table_h, const float* table_w,
                               const float* rev_w, int64_t kl_w, float* rh, float* rw) {
  const int64_t d = g.d, k_h = g.s_h, k_w = g.s_w;
  // Row terms: the rows in runs that share a window row ty.
  for (int64_t r0 = 0; r0 < rows;) {
    const int64_t ty = (i0 + r0) / vw, run = std::min(rows - r0, (ty + 1) * vw - (i0 + r0));
    if (!rel_terms_shared_any(q32 + r0, table_h + ty * d * g.kp_h, d, g.kp_h, k_h, run, rh + r0 * k_h, k_h))
      for (int64_t r = r0; r < r0 + run; ++r) rel_terms_avx512(q32[r], table_h + ty * d * g.kp_h, d, g.kp_h, k_h, rh + r * k_h);
    r0 += run;
  }
  if (!rel_terms_shifted_any(q32, rev_w, d, kl_w, k_w, cols, rows, rw, k_w))
    for (int64_t r = 0; r < rows; ++r) rel_terms_avx512(q32[r], table_w + cols[r] * d * g.kp_w, d, g.kp_w, k_w, rw + r * k_w);
}

}  // namespace attention
}  // namespace sam_edge
