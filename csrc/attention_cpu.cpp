// Fused global attention with SAM's decomposed rel-pos bias (see attention.h).
//
// The AVX-512 path is compiled with function-level target attributes and
// chosen at run time, so the module still loads on CPUs without AVX-512; the
// portable loop is the fallback there and the tests' second opinion.
#include "attention.h"

#include <immintrin.h>

// GCC 12 warns that its own _mm512_*_ps(h) intrinsics read an uninitialised
// "__Y" (the undefined-vector idiom of avx512fintrin.h), once per use.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#ifdef __linux__
#include <sys/syscall.h>
#include <unistd.h>
#endif

#ifdef _OPENMP
#include <omp.h>
#endif

#define SAM_AVX512 __attribute__((target("avx512f,avx512dq,fma")))

namespace sam_edge {
namespace {

// Query rows per task: the scores of one block (rows x M floats, 384 KB for
// M = 4096) stay in L2 between the three passes over them.
constexpr int64_t kRowBlock = 24;
constexpr int64_t kValueChunk = 64;
// Rows of the score buffers are padded by 32 elements: at a stride of m = 4096
// floats (16 KB) every row of a tile falls on the same L1 sets.
constexpr int64_t kPad = 32;

int resolve_threads(int threads) {
#ifdef _OPENMP
  return threads < 1 ? omp_get_max_threads() : threads;
#else
  (void)threads;
  return 1;
#endif
}

// Per-thread scratch that outlives a call. An encoder run calls the kernel once
// per cut with tens of megabytes of packed k, v, q; fresh allocations would be
// mmap'd, page-faulted and zeroed on every call. Slots: 0-2 packed inputs (the
// calling thread), 3-4 score and probability rows (each OpenMP thread), 5-7
// a task's rel-pos terms and output rows (each OpenMP thread), 8-13 the
// gathered inputs and output of rel_pos_attention_qkv_cpu's generic path.
constexpr int kScratchSlots = 14;

struct Scratch {
  void* data = nullptr;
  size_t bytes = 0;
  ~Scratch() { std::free(data); }
};

template <typename T>
T* scratch(int slot, int64_t n) {
  thread_local Scratch slots[kScratchSlots];
  Scratch& s = slots[slot];
  const size_t bytes = ((static_cast<size_t>(n) * sizeof(T) + 63) / 64) * 64;
  if (s.bytes < bytes) {
    std::free(s.data);
    s.data = std::aligned_alloc(64, bytes);
    s.bytes = s.data ? bytes : 0;
    if (!s.data) throw std::bad_alloc();
  }
  return static_cast<T*>(s.data);
}

// ---- portable path: one query row at a time, written for clarity ----

void attention_portable(const float* q, const float* k, const float* v, const float* rel_h,
                        const float* rel_w, float* out, int64_t bh, int64_t n_q, int64_t k_h,
                        int64_t k_w, int64_t d, float scale, int threads) {
  const int64_t m = k_h * k_w;
#pragma omp parallel num_threads(threads)
  {
    std::vector<float> s(m);
    std::vector<float> acc(d);
#pragma omp for schedule(dynamic, 16)
    for (int64_t row = 0; row < bh * n_q; ++row) {
      const int64_t h = row / n_q;
      const float* qi = q + row * d;
      const float* kh = k + h * m * d;
      const float* vh = v + h * m * d;
      const float* rh = rel_h + row * k_h;
      const float* rw = rel_w + row * k_w;
      float mx = -INFINITY;
      for (int64_t j = 0; j < m; ++j) {
        float dot = 0.f;
        for (int64_t c = 0; c < d; ++c) dot += qi[c] * kh[j * d + c];
        s[j] = scale * dot + rh[j / k_w] + rw[j % k_w];
        mx = std::max(mx, s[j]);
      }
      float sum = 0.f;
      for (int64_t j = 0; j < m; ++j) {
        s[j] = std::exp(s[j] - mx);
        sum += s[j];
      }
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t j = 0; j < m; ++j)
        for (int64_t c = 0; c < d; ++c) acc[c] += s[j] * vh[j * d + c];
      for (int64_t c = 0; c < d; ++c) out[row * d + c] = acc[c] / sum;
    }
  }
}

// ---- AVX-512 path ----

// exp(x) = 2^n exp(r), r = x - n ln2 in [-ln2/2, ln2/2] (Cody-Waite split of
// ln2), exp(r) by its degree-DEGREE Taylor polynomial (Horner, 1/k! constants).
template <int DEGREE>
SAM_AVX512 inline __m512 exp_taylor(__m512 x) {
  constexpr float inverse_factorial[] = {1.f, 1.f, 0.5f, 1.f / 6.f, 1.f / 24.f, 1.f / 120.f, 1.f / 720.f};
  static_assert(DEGREE >= 1 && DEGREE <= 6, "degree 1 to 6");
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(inverse_factorial[DEGREE]);
#pragma GCC unroll 6
  for (int k = DEGREE - 1; k >= 0; --k) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(inverse_factorial[k]));
  return _mm512_scalef_ps(p, n);
}

// Degree 6: truncation <= 1.2e-7, for float32 results.
SAM_AVX512 inline __m512 exp_avx512(__m512 x) { return exp_taylor<6>(x); }

// Degree 4, for results rounded to bf16 (8 significant bits): truncation
// <= 4.2e-5 (bf16's half ulp is 2e-3). The softmax is a large share of the AMX
// path's time; the fp16 path, bound by its products, gains nothing from it.
SAM_AVX512 inline __m512 exp_reduced(__m512 x) { return exp_taylor<4>(x); }

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

template <int NV, int R_VALUE>
SAM_AVX512 void attention_avx512(const float* q, const float* k, const float* v, const float* rel_h,
                                 const float* rel_w, float* out, int64_t bh, int64_t n_q, int64_t k_h,
                                 int64_t k_w, float scale, int threads) {
  const int64_t d = NV * 16, m = k_h * k_w;
  const int64_t panels = (m + kPanel - 1) / kPanel, head_floats = panels * d * kPanel;
  float* kt = scratch<float>(0, bh * head_floats);
  const int64_t blocks = (n_q + kRowBlock - 1) / kRowBlock;
#pragma omp parallel num_threads(threads)
  {
#pragma omp for schedule(static)
    for (int64_t t = 0; t < bh * panels; ++t) {
      const int64_t hh = t / panels, j0 = (t % panels) * kPanel;
      const float* src = k + hh * m * d;
      float* dst = kt + hh * head_floats + (j0 / kPanel) * d * kPanel;
      for (int64_t j = 0; j < kPanel; ++j)
        for (int64_t c = 0; c < d; ++c) dst[c * kPanel + j] = j0 + j < m ? src[(j0 + j) * d + c] : 0.f;
    }
    float* s = scratch<float>(3, kRowBlock * (m + kPad));
    // Blocks in head order: both threads work on one head's k and v at a time.
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < bh * blocks; ++t) {
      const int64_t hh = t / blocks, i0 = (t % blocks) * kRowBlock;
      const int64_t rows = std::min(kRowBlock, n_q - i0);
      const Head h{kt + hh * head_floats, v + hh * m * d, m, d, k_h, k_w, m + kPad, scale};
      const int64_t row = hh * n_q + i0;
      attention_block<NV, R_VALUE>(h, q + row * d, rel_h + row * k_h, rel_w + row * k_w, rows, s,
                                   out + row * d);
    }
  }
}


// ---- AVX-512 FP16 path (head_dim 64): products and partial sums in fp16 ----
//
// Sapphire Rapids and later issue two 32-lane fp16 FMAs a cycle, twice the
// fp32 rate. Scores accumulate over the 64 channels in fp16, are converted to
// fp32 for the scale, bias and softmax, and the probabilities go back to fp16
// for the product with v, whose partial sums are flushed to fp32 every
// kValueChunk keys. For int8 bundles, whose q, k, v come from int8 layers.

#define SAM_AVX512_FP16 __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,avx512fp16,fma")))

struct HeadFp16 {
  const _Float16* kt;  // (m_pad / 64, 64, 64) panels: channel-major, 64 keys each, zero past m
  const _Float16* v;   // (m_pad, 64), zero past m
  int64_t m, m_pad, k_h, k_w;  // m_pad: m rounded up to whole panels of 64 keys
  int64_t ls;          // row stride of the score and probability buffers: m_pad + kPad
  float scale;
  const int32_t* group_row;  // aligned grids: key row and column of key 16g, per group g of 16 keys
  const int32_t* group_col;
  const int32_t* key_row;    // small grids: key row and column of every key (m_pad of each)
  const int32_t* key_col;
  const uint16_t* group_valid;  // small grids: lanes of group g that are keys (< m)
};

// The index tables of HeadFp16 for m keys (m_pad of them, a multiple of 64) on
// a grid k_w wide, so that the score loops divide nothing.
struct KeyTables {
  int64_t m, m_pad, k_w;
  std::vector<int32_t> group_row, group_col, key_row, key_col;
  std::vector<uint16_t> group_valid;
  KeyTables(int64_t m, int64_t m_pad, int64_t k_w)
      : m(m), m_pad(m_pad), k_w(k_w), group_row(m_pad / 16), group_col(m_pad / 16), key_row(m_pad, 0),
        key_col(m_pad, 0), group_valid(m_pad / 16) {
    for (int64_t g = 0; g < m_pad / 16; ++g) {
      group_row[g] = static_cast<int32_t>((16 * g) / k_w), group_col[g] = static_cast<int32_t>((16 * g) % k_w);
      const int64_t lanes = std::max<int64_t>(0, std::min<int64_t>(16, m - 16 * g));
      group_valid[g] = static_cast<uint16_t>((1u << lanes) - 1);
    }
    for (int64_t j = 0; j < m; ++j) key_row[j] = static_cast<int32_t>(j / k_w), key_col[j] = static_cast<int32_t>(j % k_w);
  }
  // A head over this grid (m = k_h * k_w keys); ls: the score rows' stride.
  HeadFp16 head(const _Float16* kt, const _Float16* v, int64_t ls, float scale) const {
    return HeadFp16{kt, v, m, m_pad, m / k_w, k_w, ls, scale, group_row.data(), group_col.data(), key_row.data(),
                    key_col.data(), group_valid.data()};
  }
};

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
// noinline, like value_rows_fp16: inlined into the block loop, GCC 12 spilled
// the 24 accumulators around the inline-asm FMAs (slower by about half in an ad-hoc probe).
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


// ---- from the qkv projection (rel_pos_attention_qkv_cpu) ----
//
// The encoder graph hands over its qkv Linear's output, (B, H, W, 3, heads, D),
// and takes back (B, H, W, heads, D), the proj Linear's input: the split of q,
// k and v, the per-head transposes, the window partition and its padding, the
// rel-pos terms and the un-partition all happen here instead of in ~20 graph
// nodes per block. A unit is one (image, window, head); a global block has one
// window, the whole grid.

struct QkvGeometry {
  int64_t B, H, W, heads, d;
  int64_t s_h, s_w;    // window (key grid) size: (H, W) for a global block
  int64_t nwy, nwx;    // windows per image, down and across
  int64_t kp_h, kp_w;  // s_h, s_w rounded up to 16 (lanes of the rel-pos tables)
  int64_t m() const { return s_h * s_w; }
  int64_t units() const { return B * nwy * nwx * heads; }
  int64_t token_stride() const { return 3 * heads * d; }
  // Key j of unit u: its token index in (B, H, W), or -1 for a padded position.
  int64_t token(int64_t u, int64_t j) const {
    const int64_t win = u / heads, b = win / (nwy * nwx), wy = (win / nwx) % nwy, wx = win % nwx;
    const int64_t y = wy * s_h + j / s_w, x = wx * s_w + j % s_w;
    return (y < H && x < W) ? (b * H + y) * W + x : -1;
  }
  // The window's valid (unpadded) rows and columns: its queries are that rectangle.
  // Key (which 1) or value (which 2) j of unit u in qkv; kv_bias's for a padded
  // position, null past the m keys.
  const float* key(const float* qkv, const float* kv_bias, int64_t u, int64_t j, int which) const {
    if (j >= m()) return nullptr;
    const int64_t t = token(u, j), head = u % heads;
    return t >= 0 ? qkv + t * token_stride() + (which * heads + head) * d : kv_bias + ((which - 1) * heads + head) * d;
  }
  int64_t valid_h(int64_t u) const { return std::min(s_h, H - ((u / heads / nwx) % nwy) * s_h); }
  int64_t valid_w(int64_t u) const { return std::min(s_w, W - ((u / heads) % nwx) * s_w); }
  // Query r of unit u, r counting the window's valid rectangle row-major: its token, and its q in qkv.
  int64_t query_token(int64_t u, int64_t r) const { return token(u, (r / valid_w(u)) * s_w + r % valid_w(u)); }
  const float* query(const float* qkv, int64_t u, int64_t r) const {
    return qkv + query_token(u, r) * token_stride() + (u % heads) * d;
  }
};

// table[t][c][k] = rel_pos[t - k + s - 1][c] for k < s, zero for s <= k < kp:
// the rel-pos term of a query at window row (or column) t is then q . table[t].
std::vector<float> rel_pos_table(const float* rel_pos, int64_t s, int64_t kp, int64_t d) {
  std::vector<float> table(static_cast<size_t>(s * d * kp), 0.f);
  for (int64_t t = 0; t < s; ++t)
    for (int64_t k = 0; k < s; ++k)
      for (int64_t c = 0; c < d; ++c) table[(t * d + c) * kp + k] = rel_pos[(t - k + s - 1) * d + c];
  return table;
}

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

// rev[c][j] = rel_pos[2s - 2 - j][c], j < 2s - 1, zero up to kl.
std::vector<float> reversed_table(const float* rel_pos, int64_t s, int64_t kl, int64_t d) {
  std::vector<float> rev(static_cast<size_t>(d * kl), 0.f);
  for (int64_t c = 0; c < d; ++c)
    for (int64_t j = 0; j < 2 * s - 1; ++j) rev[c * kl + j] = rel_pos[(2 * s - 2 - j) * d + c];
  return rev;
}

void rel_terms(bool avx512, const float* q, const float* table, int64_t d, int64_t kp, int64_t s, float* out) {
  if (avx512)
    rel_terms_avx512(q, table, d, kp, s, out);
  else
    rel_terms_portable(q, table, d, kp, s, out);
}

// r[i][l] <- r[l][i]: a 16 x 16 float transpose in registers.
SAM_AVX512 inline void transpose16(__m512 r[16]) {
  __m512 t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {
    const __m512d a = _mm512_castps_pd(t[4 * i]), b = _mm512_castps_pd(t[4 * i + 1]);
    const __m512d c = _mm512_castps_pd(t[4 * i + 2]), e = _mm512_castps_pd(t[4 * i + 3]);
    r[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
    r[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
    r[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, e));
    r[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, e));
  }
  for (int i = 0; i < 2; ++i)
    for (int k = 0; k < 4; ++k) {
      t[8 * i + k] = _mm512_shuffle_f32x4(r[8 * i + k], r[8 * i + 4 + k], 0x88);
      t[8 * i + 4 + k] = _mm512_shuffle_f32x4(r[8 * i + k], r[8 * i + 4 + k], 0xdd);
    }
  for (int k = 0; k < 8; ++k) {
    r[k] = _mm512_shuffle_f32x4(t[k], t[8 + k], 0x88);
    r[k + 8] = _mm512_shuffle_f32x4(t[k], t[8 + k], 0xdd);
  }
}

// Any precision and shape: gather the units into the (units, m, D) layout of
// rel_pos_attention_cpu, run it, scatter the valid rows back. Padded keys and
// values are kv_bias (the qkv bias: a padded token is zero after the norm);
// padded queries are zero, and their rows are dropped.
void qkv_generic(const float* qkv, const float* table_h, const float* table_w, const float* rev_w, int64_t kl_w,
                 const float* kv_bias, float* out, const QkvGeometry& g, float scale, int threads,
                 bool force_portable, bool fp16) {
  const int64_t U = g.units(), m = g.m(), d = g.d, ts = g.token_stride();
  float* q = scratch<float>(8, U * m * d);
  float* k = scratch<float>(9, U * m * d);
  float* v = scratch<float>(10, U * m * d);
  float* rh = scratch<float>(11, U * m * g.s_h);
  float* rw = scratch<float>(12, U * m * g.s_w);
  float* o = scratch<float>(13, U * m * d);
  const bool avx512 = !force_portable && rel_pos_attention_has_avx512();
#pragma omp parallel num_threads(threads)
  {
#pragma omp for schedule(static)
    for (int64_t t = 0; t < U * m; ++t) {
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
    // The rel-pos terms a window row at a time: its queries share table_h's row.
#pragma omp for schedule(static)
    for (int64_t t = 0; t < U * g.s_h; ++t) {
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
    }
  }
  rel_pos_attention_cpu(q, k, v, rh, rw, o, U, m, g.s_h, g.s_w, d, scale, threads, force_portable, fp16);
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t t = 0; t < U * m; ++t) {
    const int64_t u = t / m, token = g.token(u, t % m);
    if (token >= 0) std::copy(o + t * d, o + t * d + d, out + (token * g.heads + u % g.heads) * d);
  }
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
      // 16 keys x 16 channels at a time, transposed in registers (a 16-bit
      // scalar transpose of the panel took a fifth of a windowed call).
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


// ---- AMX-BF16 path (head_dim 64), from the qkv projection ----
//
// The tile unit of Sapphire Rapids multiplies (16 x 32) by (32 x 16) bf16
// blocks into (16 x 16) fp32 sums, about twice the AVX512-FP16 FMA rate in an
// ad-hoc probe here (~0.7-0.8 TFLOP/s a core). q, k, v and the probabilities
// are rounded to bf16 (8 significant bits to fp16's 11); every sum is fp32,
// and the bias and softmax are the fp32 ones of the other paths. A task is 16
// query rows, one tile's height. Linux hands out the tile state only on
// request (arch_prctl), which rel_pos_attention_has_amx_bf16 makes once.

#define SAM_AMX __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,avx512bf16,fma,amx-tile,amx-bf16")))

constexpr int64_t kTileRows = 16;

struct alignas(64) TileConfig {
  uint8_t palette, start_row, reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

// Every tile 16 rows of 64 bytes: (16 x 16) fp32 sums and (16 x 32) bf16 operands.
SAM_AMX void configure_tiles() {
  TileConfig config{};
  config.palette = 1;
  for (int t = 0; t < 8; ++t) config.colsb[t] = 64, config.rows[t] = 16;
  _tile_loadconfig(&config);
}

// 32 floats (lo: 0-15, hi: 16-31) -> 32 bf16, rounded to nearest even.
SAM_AMX inline __m512i bf16x32(__m512 lo, __m512 hi) { return (__m512i)_mm512_cvtne2ps_pbh(hi, lo); }
// The 32 channels of a D-channel row from channel c, as bf16; zeros past D.
template <int D>
SAM_AMX inline __m512i channels32(const float* src, int64_t c) {
  const __m512 lo = c < D ? _mm512_loadu_ps(src + c) : _mm512_setzero_ps();
  const __m512 hi = c + 16 < D ? _mm512_loadu_ps(src + c + 16) : _mm512_setzero_ps();
  return bf16x32(lo, hi);
}
// 16 floats -> bf16 in the low halves of 16 dwords.
SAM_AMX inline __m512i bf16_dwords(__m512 x) { return _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(x)); }

// The score row's bias and scale, in place: x = scale * dot + rel_h[key row] +
// rel_w[key column], -inf past the m keys (small grids); returns its maximum.
template <bool SMALL>
SAM_AMX float bias_row(const HeadFp16& h, float* __restrict s, const float* __restrict rh,
                       const float* __restrict rw) {
  const __m512 scale = _mm512_set1_ps(h.scale);
  __m512 mx = _mm512_set1_ps(-INFINITY);
  if constexpr (SMALL) {
    const __m512 rhv = _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << h.k_h) - 1), rh);
    const __m512 rwv = _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << h.k_w) - 1), rw);
    const __m512 minus_inf = _mm512_set1_ps(-INFINITY);
    for (int64_t j = 0; j < h.m_pad; j += 16) {
      const __m512 bias = _mm512_add_ps(_mm512_permutexvar_ps(_mm512_loadu_si512(h.key_row + j), rhv),
                                        _mm512_permutexvar_ps(_mm512_loadu_si512(h.key_col + j), rwv));
      const __m512 x = _mm512_mask_mov_ps(minus_inf, h.group_valid[j / 16],
                                          _mm512_fmadd_ps(_mm512_loadu_ps(s + j), scale, bias));
      _mm512_storeu_ps(s + j, x);
      mx = _mm512_max_ps(mx, x);
    }
  } else {
    for (int64_t j = 0; j < h.m_pad; j += 16) {
      const __m512 bias = _mm512_add_ps(_mm512_set1_ps(rh[h.group_row[j / 16]]), _mm512_loadu_ps(rw + h.group_col[j / 16]));
      const __m512 x = _mm512_fmadd_ps(_mm512_loadu_ps(s + j), scale, bias);
      _mm512_storeu_ps(s + j, x);
      mx = _mm512_max_ps(mx, x);
    }
  }
  return _mm512_reduce_max_ps(mx);
}

// Tile numbers are immediates: one macro per product, A in tile a, B read from
// memory into tile b, summed into tile c.
#define SAM_TILE_PRODUCT(c, a, b, ptr, stride) \
  do {                                         \
    _tile_loadd(b, ptr, stride);               \
    _tile_dpbf16ps(c, a, b);                   \
  } while (0)

// D: head_dim, 64 (ViT-B, ViT-L) or 80 (ViT-H). The score products run over
// D rounded up to whole 32-channel tiles (DP, zeros past D); the products with
// v over D / 16 output tiles.
template <int D, bool SMALL>
SAM_AMX void qkv_amx_bf16(const float* qkv, const float* table_h, const float* table_w, const float* rev_w,
                          int64_t kl_w, const float* kv_bias, float* out, const QkvGeometry& g, float scale,
                          int threads) {
  static_assert(D == 64 || D == 80, "head_dim 64 or 80");
  constexpr int64_t d = D, DP = (D + 31) / 32 * 32, chunks = DP / 32, group_size = chunks * 512;
  const int64_t U = g.units(), m = g.m(), heads = g.heads;
  const int64_t k_h = g.s_h, k_w = g.s_w;
  const int64_t m_pad = (m + 63) / 64 * 64, groups = m_pad / 16;
  // k: per unit and group of 16 keys, per 32 channels, 16 channel pairs x 16
  // keys x 2 (a score product's B operand, 1 KB). v: per unit and pair of keys,
  // D channels x 2 (rows of the B operand of the product with v, 4 D bytes
  // apart). q: rows of DP channels, 16 spare rows at the end for the last tile.
  uint16_t* kb = scratch<uint16_t>(0, U * groups * group_size);
  uint16_t* vb = scratch<uint16_t>(1, U * m_pad * d);
  uint16_t* qb = scratch<uint16_t>(2, (U * m + kTileRows) * DP);
  const KeyTables tables(m, m_pad, k_w);
  const std::vector<std::pair<int64_t, int64_t>> tasks = qkv_tasks(g, kTileRows);
  const int64_t n_tasks = static_cast<int64_t>(tasks.size());
  std::fill(qb + U * m * DP, qb + (U * m + kTileRows) * DP, uint16_t{0});
#pragma omp parallel num_threads(threads)
  {
#pragma omp for schedule(static)
    for (int64_t t = 0; t < U * groups; ++t) {
      const int64_t u = t / groups, gi = t % groups;
      const float* src[16];
      for (int i = 0; i < 16; ++i) src[i] = g.key(qkv, kv_bias, u, 16 * gi + i, 1);
      uint16_t* dst = kb + (u * groups + gi) * group_size;
      // Each key's 16 channel pairs of a chunk as dwords, transposed: row p holds pair p of the 16 keys.
      for (int64_t c = 0; c < chunks; ++c) {
        __m512 r[16];
        for (int i = 0; i < 16; ++i) r[i] = src[i] ? _mm512_castsi512_ps(channels32<D>(src[i], 32 * c)) : _mm512_setzero_ps();
        transpose16(r);
        for (int q = 0; q < 16; ++q) _mm512_storeu_ps(reinterpret_cast<float*>(dst + c * 512 + q * 32), r[q]);
      }
    }
#pragma omp for schedule(static)
    for (int64_t t = 0; t < U * m_pad / 2; ++t) {
      const int64_t u = t / (m_pad / 2), jp = t % (m_pad / 2);
      const float* v0 = g.key(qkv, kv_bias, u, 2 * jp, 2);
      const float* v1 = g.key(qkv, kv_bias, u, 2 * jp + 1, 2);
      for (int64_t c = 0; c < d; c += 16) {
        const __m512i a = v0 ? bf16_dwords(_mm512_loadu_ps(v0 + c)) : _mm512_setzero_si512();
        const __m512i b = v1 ? bf16_dwords(_mm512_loadu_ps(v1 + c)) : _mm512_setzero_si512();
        _mm512_storeu_si512(vb + t * 2 * d + 2 * c, _mm512_or_si512(a, _mm512_slli_epi32(b, 16)));
      }
    }
#pragma omp for schedule(static)
    for (int64_t t = 0; t < U * m; ++t) {
      const int64_t u = t / m, r = t % m;
      if (r >= g.valid_h(u) * g.valid_w(u)) continue;
      const float* src = g.query(qkv, u, r);
      for (int64_t c = 0; c < chunks; ++c) _mm512_storeu_si512(qb + t * DP + 32 * c, channels32<D>(src, 32 * c));
    }
    const int64_t ls = m_pad + kPad;
    float* s = scratch<float>(3, kTileRows * ls);
    uint16_t* p = scratch<uint16_t>(4, kTileRows * ls);
    float* rh = scratch<float>(5, kTileRows * k_h);
    float* rw = scratch<float>(6, kTileRows * k_w);
    float* o = scratch<float>(7, kTileRows * d);
    configure_tiles();
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < n_tasks; ++t) {
      const auto [u, i0] = tasks[t];
      const int64_t head = u % heads;
      int64_t tokens[kTileRows], cols[kTileRows];
      const float* q32[kTileRows];
      const int64_t rows = task_queries(g, qkv, u, i0, kTileRows, tokens, cols, q32);
      task_rel_terms(g, q32, cols, i0, rows, g.valid_w(u), table_h, table_w, rev_w, kl_w, rh, rw);
      const HeadFp16 h = tables.head(nullptr, nullptr, ls, scale);
      // Scores: the tile's 16 query rows (A, one tile per 32 channels) against 64 keys at a time.
      const uint16_t* qa = qb + (u * m + i0) * DP;
      const uint16_t* ku = kb + u * groups * group_size;
      _tile_loadd(4, qa, DP * 2);
      _tile_loadd(5, qa + 32, DP * 2);
      if constexpr (chunks == 3) _tile_loadd(6, qa + 64, DP * 2);
      for (int64_t j0 = 0; j0 < m_pad; j0 += 64) {
        const uint16_t* kg = ku + (j0 / 16) * group_size;
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
        if constexpr (chunks == 2) {
          SAM_TILE_PRODUCT(0, 4, 6, kg, 64);
          SAM_TILE_PRODUCT(0, 5, 7, kg + 512, 64);
          SAM_TILE_PRODUCT(1, 4, 6, kg + 1024, 64);
          SAM_TILE_PRODUCT(1, 5, 7, kg + 1536, 64);
          SAM_TILE_PRODUCT(2, 4, 6, kg + 2048, 64);
          SAM_TILE_PRODUCT(2, 5, 7, kg + 2560, 64);
          SAM_TILE_PRODUCT(3, 4, 6, kg + 3072, 64);
          SAM_TILE_PRODUCT(3, 5, 7, kg + 3584, 64);
        } else {  // three A tiles leave one for B
          SAM_TILE_PRODUCT(0, 4, 7, kg, 64);
          SAM_TILE_PRODUCT(0, 5, 7, kg + 512, 64);
          SAM_TILE_PRODUCT(0, 6, 7, kg + 1024, 64);
          SAM_TILE_PRODUCT(1, 4, 7, kg + 1536, 64);
          SAM_TILE_PRODUCT(1, 5, 7, kg + 2048, 64);
          SAM_TILE_PRODUCT(1, 6, 7, kg + 2560, 64);
          SAM_TILE_PRODUCT(2, 4, 7, kg + 3072, 64);
          SAM_TILE_PRODUCT(2, 5, 7, kg + 3584, 64);
          SAM_TILE_PRODUCT(2, 6, 7, kg + 4096, 64);
          SAM_TILE_PRODUCT(3, 4, 7, kg + 4608, 64);
          SAM_TILE_PRODUCT(3, 5, 7, kg + 5120, 64);
          SAM_TILE_PRODUCT(3, 6, 7, kg + 5632, 64);
        }
        _tile_stored(0, s + j0, ls * 4);
        _tile_stored(1, s + j0 + 16, ls * 4);
        _tile_stored(2, s + j0 + 32, ls * 4);
        _tile_stored(3, s + j0 + 48, ls * 4);
      }
      float inv[kTileRows];
      for (int64_t r = 0; r < rows; ++r) {
        float* sr = s + r * ls;
        uint16_t* pr = p + r * ls;
        const __m512 mx = _mm512_set1_ps(bias_row<SMALL>(h, sr, rh + r * k_h, rw + r * k_w));
        __m512 sum = _mm512_setzero_ps();
        for (int64_t j = 0; j < m_pad; j += 16) {
          const __m512 e = exp_reduced(_mm512_sub_ps(_mm512_loadu_ps(sr + j), mx));
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(pr + j), (__m256i)_mm512_cvtneps_pbh(e));
          // The unrounded sum: the rounded one is within 2^-9 of it, and typically ~2^-9 / sqrt(m).
          sum = _mm512_add_ps(sum, e);
        }
        inv[r] = 1.f / _mm512_reduce_add_ps(sum);
      }
      for (int64_t r = rows; r < kTileRows; ++r) std::fill(p + r * ls, p + r * ls + m_pad, uint16_t{0});
      // Probabilities (A, 16 rows x 32 keys) times v (B, 32 keys x 16 channels), D / 16 sums.
      const uint16_t* vu = vb + u * m_pad * d;
      _tile_zero(0);
      _tile_zero(1);
      _tile_zero(2);
      _tile_zero(3);
      if constexpr (D == 80) _tile_zero(4);
      for (int64_t j0 = 0; j0 < m_pad; j0 += 32) {
        const uint16_t* vt = vu + j0 * d;  // key pair j0 / 2, 2 * d bf16 each
        if constexpr (D == 64) {
          _tile_loadd(4, p + j0, ls * 2);
          SAM_TILE_PRODUCT(0, 4, 6, vt, 4 * d);
          SAM_TILE_PRODUCT(1, 4, 7, vt + 32, 4 * d);
          SAM_TILE_PRODUCT(2, 4, 6, vt + 64, 4 * d);
          SAM_TILE_PRODUCT(3, 4, 7, vt + 96, 4 * d);
        } else {
          _tile_loadd(5, p + j0, ls * 2);
          SAM_TILE_PRODUCT(0, 5, 6, vt, 4 * d);
          SAM_TILE_PRODUCT(1, 5, 7, vt + 32, 4 * d);
          SAM_TILE_PRODUCT(2, 5, 6, vt + 64, 4 * d);
          SAM_TILE_PRODUCT(3, 5, 7, vt + 96, 4 * d);
          SAM_TILE_PRODUCT(4, 5, 6, vt + 128, 4 * d);
        }
      }
      _tile_stored(0, o, d * 4);
      _tile_stored(1, o + 16, d * 4);
      _tile_stored(2, o + 32, d * 4);
      _tile_stored(3, o + 48, d * 4);
      if constexpr (D == 80) _tile_stored(4, o + 64, d * 4);
      for (int64_t r = 0; r < rows; ++r) {
        const __m512 w = _mm512_set1_ps(inv[r]);
        float* dst = out + (tokens[r] * heads + head) * d;
        for (int64_t c = 0; c < d; c += 16) _mm512_storeu_ps(dst + c, _mm512_mul_ps(_mm512_loadu_ps(o + r * d + c), w));
      }
    }
    _tile_release();
  }
}
#undef SAM_TILE_PRODUCT

}  // namespace

bool rel_pos_attention_has_avx512() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
         __builtin_cpu_supports("fma");
}

bool rel_pos_attention_has_avx512_fp16() {
  __builtin_cpu_init();
  return rel_pos_attention_has_avx512() && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512fp16");
}

bool rel_pos_attention_has_amx_bf16() {
  // Asked once: the permission is the process's, and a refusal does not change.
  static const bool usable = [] {
    __builtin_cpu_init();
    if (!(rel_pos_attention_has_avx512() && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
          __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("amx-tile") &&
          __builtin_cpu_supports("amx-bf16")))
      return false;
#if defined(__linux__) && defined(SYS_arch_prctl)
    constexpr long kRequestPermission = 0x1023;  // ARCH_REQ_XCOMP_PERM
    constexpr long kTileData = 18;               // XFEATURE_XTILEDATA
    return syscall(SYS_arch_prctl, kRequestPermission, kTileData) == 0;
#else
    return false;
#endif
  }();
  return usable;
}

void rel_pos_attention_cpu(const float* q, const float* k, const float* v, const float* rel_h,
                           const float* rel_w, float* out, int64_t batch_heads, int64_t n_q,
                           int64_t k_h, int64_t k_w, int64_t head_dim, float scale, int threads,
                           bool force_portable, bool fp16) {
  if (batch_heads < 1 || n_q < 1 || k_h < 1 || k_w < 1 || head_dim < 1)
    throw std::invalid_argument("rel_pos_attention: every size must be >= 1");
  const int nt = resolve_threads(threads);
  const bool fast = !force_portable && rel_pos_attention_has_avx512() && k_w % 16 == 0 &&
                    (head_dim == 64 || head_dim == 80);
  if (fp16) {
    // Two grid kinds: rows of whole 16-key groups (global blocks, 64 x 64) and
    // grids of at most 16 x 16 keys (windowed blocks, 14 x 14).
    const bool aligned = k_w % 16 == 0 && (k_h * k_w) % 64 == 0, small = k_h <= 16 && k_w <= 16;
    if (force_portable || head_dim != 64 || !(aligned || small) || !rel_pos_attention_has_avx512_fp16())
      throw std::invalid_argument(
          "rel_pos_attention: fp16 compute needs a CPU with AVX512-FP16, head_dim 64, and a key grid with "
          "k_w % 16 == 0 and k_h * k_w % 64 == 0, or k_h, k_w <= 16");
    if (aligned)
      attention_avx512_fp16<false>(q, k, v, rel_h, rel_w, out, batch_heads, n_q, k_h, k_w, scale, nt);
    else
      attention_avx512_fp16<true>(q, k, v, rel_h, rel_w, out, batch_heads, n_q, k_h, k_w, scale, nt);
  } else if (!fast) {
    attention_portable(q, k, v, rel_h, rel_w, out, batch_heads, n_q, k_h, k_w, head_dim, scale, nt);
  } else if (head_dim == 64) {  // ViT-B and ViT-L
    attention_avx512<4, 6>(q, k, v, rel_h, rel_w, out, batch_heads, n_q, k_h, k_w, scale, nt);
  } else {  // 80: ViT-H
    attention_avx512<5, 4>(q, k, v, rel_h, rel_w, out, batch_heads, n_q, k_h, k_w, scale, nt);
  }
}

void rel_pos_attention_qkv_cpu(const float* qkv, const float* rel_pos_h, const float* rel_pos_w,
                               const float* kv_bias, float* out, int64_t batch, int64_t height, int64_t width,
                               int64_t heads, int64_t head_dim, int64_t window, float scale, int threads,
                               bool force_portable, bool fp16, bool bf16) {
  if (batch < 1 || height < 1 || width < 1 || heads < 1 || head_dim < 1 || window < 0)
    throw std::invalid_argument("rel_pos_attention_qkv: every size must be >= 1 (window >= 0)");
  QkvGeometry g{};
  g.B = batch, g.H = height, g.W = width, g.heads = heads, g.d = head_dim;
  g.s_h = window > 0 ? window : height, g.s_w = window > 0 ? window : width;
  g.nwy = (height + g.s_h - 1) / g.s_h, g.nwx = (width + g.s_w - 1) / g.s_w;
  g.kp_h = (g.s_h + 15) / 16 * 16, g.kp_w = (g.s_w + 15) / 16 * 16;
  if (!kv_bias && (height % g.s_h != 0 || width % g.s_w != 0))
    throw std::invalid_argument("rel_pos_attention_qkv: the windows pad the grid, so kv_bias is needed");
  const std::vector<float> table_h = rel_pos_table(rel_pos_h, g.s_h, g.kp_h, head_dim);
  const std::vector<float> table_w = rel_pos_table(rel_pos_w, g.s_w, g.kp_w, head_dim);
  const int64_t kl_w = (2 * g.s_w - 1 + 15) / 16 * 16;
  const std::vector<float> rev_w = reversed_table(rel_pos_w, g.s_w, kl_w, head_dim);
  const int nt = resolve_threads(threads);
  if (fp16 && bf16) throw std::invalid_argument("rel_pos_attention_qkv: fp16 or bf16 compute, not both");
  if (!fp16 && !bf16) {
    qkv_generic(qkv, table_h.data(), table_w.data(), rev_w.data(), kl_w, kv_bias, out, g, scale, nt, force_portable, false);
    return;
  }
  // The reduced-precision paths share their shapes: global grids of whole 16-key
  // groups and 64-key panels, or windows of at most 16 x 16.
  const bool aligned = g.s_w % 16 == 0 && g.m() % 64 == 0, small = g.s_h <= 16 && g.s_w <= 16;
  const bool cpu = bf16 ? rel_pos_attention_has_amx_bf16() : rel_pos_attention_has_avx512_fp16();
  const bool dim = head_dim == 64 || (bf16 && head_dim == 80);
  if (force_portable || !dim || !(aligned || small) || !cpu)
    throw std::invalid_argument(std::string("rel_pos_attention_qkv: ") +
                                (bf16 ? "bf16 compute needs a CPU with AMX-BF16 that the OS lets us use, head_dim 64 or 80"
                                      : "fp16 compute needs a CPU with AVX512-FP16, head_dim 64") +
                                ", and a key grid with k_w % 16 == 0 and k_h * k_w % 64 == 0, or k_h, k_w <= 16");
  const float *th = table_h.data(), *tw = table_w.data(), *rw = rev_w.data();
  if (bf16 && head_dim == 80)
    aligned ? qkv_amx_bf16<80, false>(qkv, th, tw, rw, kl_w, kv_bias, out, g, scale, nt)
            : qkv_amx_bf16<80, true>(qkv, th, tw, rw, kl_w, kv_bias, out, g, scale, nt);
  else if (bf16)
    aligned ? qkv_amx_bf16<64, false>(qkv, th, tw, rw, kl_w, kv_bias, out, g, scale, nt)
            : qkv_amx_bf16<64, true>(qkv, th, tw, rw, kl_w, kv_bias, out, g, scale, nt);
  else if (aligned)
    qkv_fp16<false>(qkv, th, tw, rw, kl_w, kv_bias, out, g, scale, nt);
  else
    qkv_fp16<true>(qkv, th, tw, rw, kl_w, kv_bias, out, g, scale, nt);
}

}  // namespace sam_edge
