// Internals shared by the CPU attention paths (csrc/attention/*.cpp): the
// target macros, scratch buffers, exp, the fp16 and bf16 key layouts, the
// geometry of the qkv entry point, and each path's entry declared for
// dispatch.cpp, the one file that chooses between them. Not a public header:
// csrc/attention.h is.
//
// The ISA paths are compiled with function-level target attributes and chosen
// at run time, so the module still loads on CPUs without AVX-512; the portable
// loop is the fallback there and the tests' second opinion. A declaration
// carries its definition's target macro: GCC reads a differing target
// attribute as another version of the function.
#pragma once

#include "attention.h"
#include "task_runner.h"

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

#ifdef _OPENMP
#include <omp.h>
#endif

#define SAM_AVX512 __attribute__((target("avx512f,avx512dq,fma")))
#define SAM_AVX512_FP16 __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,avx512fp16,fma")))
#define SAM_AVX512_BF16 __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,avx512bf16,fma")))
#define SAM_AMX __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,avx512bf16,fma,amx-tile,amx-bf16")))

// A named namespace rather than an anonymous one: these are shared between
// translation units; -fvisibility=hidden keeps them out of the module's exports.
namespace sam_edge {
namespace attention {

// Query rows per task: the scores of one block (rows x M floats, 384 KB for
// M = 4096) stay in L2 between the three passes over them.
constexpr int64_t kRowBlock = 24;
constexpr int64_t kValueChunk = 64;
// Rows of the score buffers are padded by 32 elements: at a stride of m = 4096
// floats (16 KB) every row of a tile falls on the same L1 sets.
constexpr int64_t kPad = 32;

// Per-thread scratch that outlives a call. An encoder run calls the kernel once
// per cut with tens of megabytes of packed k, v, q; fresh allocations would be
// mmap'd, page-faulted and zeroed on every call. Slots: 0-2 packed inputs (the
// calling thread), 3-4 score and probability rows (the thread running a task),
// 5-7 a task's rel-pos terms and output rows (likewise), 8-13 the gathered
// inputs and output of rel_pos_attention_qkv_cpu's generic path. A task takes
// its slots when it starts: a pool may run it on any of its threads.
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

// ---- exp, for the AVX-512, AVX512-FP16, AVX512-BF16 and AMX paths ----

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
// <= 4.2e-5 (bf16's half ulp is 2e-3). The softmax is a large share of the bf16
// paths' time; the fp16 path, bound by its products, gains nothing from it.
SAM_AVX512 inline __m512 exp_reduced(__m512 x) { return exp_taylor<4>(x); }

// ---- the fp16 and bf16 paths' key layout ----

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

// ---- the geometry of the qkv entry point (rel_pos_attention_qkv_cpu) ----
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

// ---- each path's entry, for dispatch.cpp ----

// portable.cpp: one query row at a time, any head_dim and key grid.
void attention_portable(const float* q, const float* k, const float* v, const float* rel_h, const float* rel_w,
                        float* out, int64_t bh, int64_t n_q, int64_t k_h, int64_t k_w, int64_t d, float scale,
                        const Workers& workers);

// avx512.cpp: head_dim NV * 16, k_w % 16 == 0; R_VALUE rows per product with v.
// Built for head_dim 64 (4, 6) and 80 (5, 4).
template <int NV, int R_VALUE>
SAM_AVX512 void attention_avx512(const float* q, const float* k, const float* v, const float* rel_h,
                                 const float* rel_w, float* out, int64_t bh, int64_t n_q, int64_t k_h,
                                 int64_t k_w, float scale, const Workers& workers);

// The AMX and AVX512-FP16 paths keep their OpenMP team even inside ONNX Runtime:
// no CPU here has them to test a rewrite on, and AMX configures its tiles per thread.

// avx512_fp16.cpp, head_dim 64. SMALL: key grids of at most 16 x 16 (windowed
// blocks); otherwise rows of whole 16-key groups in whole 64-key panels.
template <bool SMALL>
SAM_AVX512_FP16 void attention_avx512_fp16(const float* q, const float* k, const float* v, const float* rel_h,
                                           const float* rel_w, float* out, int64_t bh, int64_t n_q,
                                           int64_t k_h, int64_t k_w, float scale, int threads);
template <bool SMALL>
SAM_AVX512_FP16 void qkv_fp16(const float* qkv, const float* table_h, const float* table_w, const float* rev_w,
                              int64_t kl_w, const float* kv_bias, float* out, const QkvGeometry& g, float scale,
                              int threads);

// amx_bf16.cpp: head_dim D (64 or 80), SMALL as above.
template <int D, bool SMALL>
SAM_AMX void qkv_amx_bf16(const float* qkv, const float* table_h, const float* table_w, const float* rev_w,
                          int64_t kl_w, const float* kv_bias, float* out, const QkvGeometry& g, float scale,
                          int threads);

// avx512_bf16.cpp: head_dim D (64 or 80), SMALL as above; bf16 where AMX is not.
template <int D, bool SMALL>
SAM_AVX512_BF16 void qkv_avx512_bf16(const float* qkv, const float* table_h, const float* table_w, const float* rev_w,
                                     int64_t kl_w, const float* kv_bias, float* out, const QkvGeometry& g, float scale,
                                     const Workers& workers);

// qkv.cpp: the rel-pos tables and terms, the generic gather-run-scatter path,
// and the tasks the fp16 and bf16 paths share.
std::vector<float> rel_pos_table(const float* rel_pos, int64_t s, int64_t kp, int64_t d);
std::vector<float> reversed_table(const float* rel_pos, int64_t s, int64_t kl, int64_t d);
void qkv_generic(const float* qkv, const float* table_h, const float* table_w, const float* rev_w, int64_t kl_w,
                 const float* kv_bias, float* out, const QkvGeometry& g, float scale, const Workers& workers,
                 bool force_portable);
std::vector<std::pair<int64_t, int64_t>> qkv_tasks(const QkvGeometry& g, int64_t rows_per_task);
int64_t task_queries(const QkvGeometry& g, const float* qkv, int64_t u, int64_t i0, int64_t max_rows, int64_t* tokens,
                     int64_t* cols, const float** q32);
SAM_AVX512 void task_rel_terms(const QkvGeometry& g, const float* const* q32, const int64_t* cols, int64_t i0,
                               int64_t rows, int64_t vw, const float* table_h, const float* table_w,
                               const float* rev_w, int64_t kl_w, float* rh, float* rw);

}  // namespace attention
}  // namespace sam_edge
