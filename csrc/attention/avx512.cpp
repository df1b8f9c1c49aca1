// The AVX-512 fp32 path: register tiles of scores over k repacked into
// 64-key panels, an exact softmax, then the product with v.

#include "attention_internal.h"

namespace sam_edge {
namespace attention {
namespace {

// k is repacked into panels of 64 keys: panel p holds k[64p : 64p + 64] transposed,
// (d, 64) contiguous, so the 16 KB a score tile reads stays in L1 (a plain
// transpose puts its rows 4 * m bytes apart, on the same few cache sets).
constexpr int64_t kPanel = 64;

struct Head {
  const float* kt;     // (m / 64, d, 64) panels, the last one zero-padded
  const float* v;      // (m, d)
  int64_t m, d, k_h, k_w;
  int64_t ls;          // row stride of the score buffer: m + kPad
  float scale;
};

// Scores of R query rows against NC*16 keys starting at j0, plus the bias,
// written to s (row stride m); rmax keeps each row's running maximum.
template <int R, int NC>
SAM_AVX512 inline void score_tile(const Head& h, const float* q, const float* __restrict rh,
                                  const float* __restrict rw, int64_t j0, float* __restrict s,
                                  __m512* __restrict rmax) {
  __m512 acc[R][NC];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int n = 0; n < NC; ++n) acc[r][n] = _mm512_setzero_ps();
  const float* kt = h.kt + (j0 / kPanel) * h.d * kPanel;
  for (int64_t c = 0; c < h.d; ++c) {
    __m512 b[NC];
#pragma GCC unroll 4
    for (int n = 0; n < NC; ++n) b[n] = _mm512_load_ps(kt + c * kPanel + 16 * n);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512 a = _mm512_set1_ps(q[r * h.d + c]);
#pragma GCC unroll 4
      for (int n = 0; n < NC; ++n) acc[r][n] = _mm512_fmadd_ps(a, b[n], acc[r][n]);
    }
  }
  // In locals: the stores to s would otherwise make the compiler reload h's fields.
  const __m512 scale = _mm512_set1_ps(h.scale);
  const int64_t k_h = h.k_h, k_w = h.k_w, ls = h.ls;
  int64_t rows[NC], cols[NC];
  int64_t row = j0 / k_w, col = j0 % k_w;  // k_w % 16 == 0: 16 keys share a key row
  for (int n = 0; n < NC; ++n, col += 16) {
    if (col == k_w) ++row, col = 0;
    rows[n] = row, cols[n] = col;
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    __m512 mx = rmax[r];
#pragma GCC unroll 4
    for (int n = 0; n < NC; ++n) {
      const __m512 bias = _mm512_add_ps(_mm512_set1_ps(rh[r * k_h + rows[n]]), _mm512_loadu_ps(rw + r * k_w + cols[n]));
      const __m512 x = _mm512_fmadd_ps(acc[r][n], scale, bias);
      _mm512_storeu_ps(s + r * ls + j0 + 16 * n, x);
      mx = _mm512_max_ps(mx, x);
    }
    rmax[r] = mx;
  }
}

// Scores of `rows` query rows against NC*16 keys from j0: the k panel stays
// in L1 across the row groups.
template <int NC>
SAM_AVX512 inline void score_columns(const Head& h, const float* q, const float* rh, const float* rw,
                                     int64_t rows, int64_t j0, float* s, __m512* rmax) {
  constexpr int R = 6;  // 6 rows x 4 vectors: 24 accumulators of the 32 registers
  int64_t r0 = 0;
  for (; r0 + R <= rows; r0 += R)
    score_tile<R, NC>(h, q + r0 * h.d, rh + r0 * h.k_h, rw + r0 * h.k_w, j0, s + r0 * h.ls, rmax + r0);
  for (; r0 < rows; ++r0)
    score_tile<1, NC>(h, q + r0 * h.d, rh + r0 * h.k_h, rw + r0 * h.k_w, j0, s + r0 * h.ls, rmax + r0);
}

// out[r] += sum_{j in [j0, j1)} p[r, j] v[j] for R rows, NV*16 = d.
template <int R, int NV>
SAM_AVX512 inline void value_rows(const Head& h, const float* p, int64_t j0, int64_t j1, float* out) {
  __m512 acc[R][NV];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int n = 0; n < NV; ++n) acc[r][n] = _mm512_loadu_ps(out + r * NV * 16 + 16 * n);
  const float* v = h.v;
  for (int64_t j = j0; j < j1; ++j) {
    __m512 b[NV];
#pragma GCC unroll 8
    for (int n = 0; n < NV; ++n) b[n] = _mm512_loadu_ps(v + j * NV * 16 + 16 * n);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512 a = _mm512_set1_ps(p[r * h.ls + j]);
#pragma GCC unroll 8
      for (int n = 0; n < NV; ++n) acc[r][n] = _mm512_fmadd_ps(a, b[n], acc[r][n]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int n = 0; n < NV; ++n) _mm512_storeu_ps(out + r * NV * 16 + 16 * n, acc[r][n]);
}

// One block of `rows` query rows of one head, scores in s (rows x m).
template <int NV, int R_VALUE>
SAM_AVX512 void attention_block(const Head& h, const float* q, const float* rh, const float* rw,
                                int64_t rows, float* s, float* out) {
  __m512 rmax[kRowBlock];
  for (int64_t r = 0; r < rows; ++r) rmax[r] = _mm512_set1_ps(-INFINITY);
  int64_t j0 = 0;
  for (; j0 + 64 <= h.m; j0 += 64) score_columns<4>(h, q, rh, rw, rows, j0, s, rmax);
  switch ((h.m - j0) / 16) {
    case 3: score_columns<3>(h, q, rh, rw, rows, j0, s, rmax); break;
    case 2: score_columns<2>(h, q, rh, rw, rows, j0, s, rmax); break;
    case 1: score_columns<1>(h, q, rh, rw, rows, j0, s, rmax); break;
    default: break;
  }

  float inv[kRowBlock];
  for (int64_t r = 0; r < rows; ++r) {
    float* sr = s + r * h.ls;
    const __m512 mx = _mm512_set1_ps(_mm512_reduce_max_ps(rmax[r]));
    __m512 sum = _mm512_setzero_ps();
    for (int64_t j = 0; j < h.m; j += 16) {
      const __m512 e = exp_avx512(_mm512_sub_ps(_mm512_loadu_ps(sr + j), mx));
      _mm512_storeu_ps(sr + j, e);
      sum = _mm512_add_ps(sum, e);
    }
    inv[r] = 1.f / _mm512_reduce_add_ps(sum);
  }

  // Values in chunks of kValueChunk keys (16 KB for d = 64), each chunk used
  // by every row of the block while it is in L1.
  for (int64_t r = 0; r < rows * h.d; ++r) out[r] = 0.f;
  for (int64_t j0 = 0; j0 < h.m; j0 += kValueChunk) {
    const int64_t j1 = std::min(h.m, j0 + kValueChunk);
    int64_t r0 = 0;
    for (; r0 + R_VALUE <= rows; r0 += R_VALUE) value_rows<R_VALUE, NV>(h, s + r0 * h.ls, j0, j1, out + r0 * h.d);
    for (; r0 < rows; ++r0) value_rows<1, NV>(h, s + r0 * h.ls, j0, j1, out + r0 * h.d);
  }
  for (int64_t r = 0; r < rows; ++r) {
    const __m512 w = _mm512_set1_ps(inv[r]);
    for (int64_t c = 0; c < h.d; c += 16)
      _mm512_storeu_ps(out + r * h.d + c, _mm512_mul_ps(_mm512_loadu_ps(out + r * h.d + c), w));
  }
}


}  // namespace

template <int NV, int R_VALUE>
SAM_AVX512 void attention_avx512(const float* q, const float* k, const float* v, const float* rel_h,
                                 const float* rel_w, float* out, int64_t bh, int64_t n_q, int64_t k_h,
                                 int64_t k_w, float scale, const Workers& workers) {
  const int64_t d = NV * 16, m = k_h * k_w;
  const int64_t panels = (m + kPanel - 1) / kPanel, head_floats = panels * d * kPanel;
  float* kt = scratch<float>(0, bh * head_floats);
  const int64_t blocks = (n_q + kRowBlock - 1) / kRowBlock;
  parallel_for(workers, bh * panels, 1, [&](int64_t begin, int64_t end) SAM_AVX512 {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t hh = t / panels, j0 = (t % panels) * kPanel;
      const float* src = k + hh * m * d;
      float* dst = kt + hh * head_floats + (j0 / kPanel) * d * kPanel;
      for (int64_t j = 0; j < kPanel; ++j)
        for (int64_t c = 0; c < d; ++c) dst[c * kPanel + j] = j0 + j < m ? src[(j0 + j) * d + c] : 0.f;
    }
  });
  // Blocks in head order: both threads work on one head's k and v at a time.
  parallel_for(workers, bh * blocks, 1, [&](int64_t t, int64_t) SAM_AVX512 {
    float* s = scratch<float>(3, kRowBlock * (m + kPad));
    const int64_t hh = t / blocks, i0 = (t % blocks) * kRowBlock;
    const int64_t rows = std::min(kRowBlock, n_q - i0);
    const Head h{kt + hh * head_floats, v + hh * m * d, m, d, k_h, k_w, m + kPad, scale};
    const int64_t row = hh * n_q + i0;
    attention_block<NV, R_VALUE>(h, q + row * d, rel_h + row * k_h, rel_w + row * k_w, rows, s, out + row * d);
  }, /*balanced=*/true);
}

template void attention_avx512<4, 6>(const float*, const float*, const float*, const float*, const float*, float*,
                                     int64_t, int64_t, int64_t, int64_t, float, const Workers&);
template void attention_avx512<5, 4>(const float*, const float*, const float*, const float*, const float*, float*,
                                     int64_t, int64_t, int64_t, int64_t, float, const Workers&);

}  // namespace attention
}  // namespace sam_edge
