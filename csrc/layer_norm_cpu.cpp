// LayerNorm over float32 rows; see layer_norm.h. One row body, compiled twice:
// for AVX-512 (chosen at run time) and for the baseline ISA.
#include "layer_norm.h"

#include <cmath>
#include <stdexcept>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace sam_edge {
namespace {

// Independent partial sums, one per lane of an AVX-512 register: the compiler
// vectorises them without reassociating any one sum.
constexpr int kLanes = 16;

template <class Term>
__attribute__((always_inline)) inline float lane_sum(int64_t n, Term term) {
  float acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int l = 0; l < kLanes; ++l) acc[l] += term(i + l);
  for (int l = 0; i + l < n; ++l) acc[l] += term(i + l);
  float total = 0.0f;
  for (int l = 0; l < kLanes; ++l) total += acc[l];
  return total;
}

__attribute__((always_inline)) inline void normalize_row(const float* x, const float* weight, const float* bias,
                                                         float* out, int64_t n, float epsilon) {
  const float mean = lane_sum(n, [&](int64_t i) { return x[i]; }) / static_cast<float>(n);
  const float var = lane_sum(n, [&](int64_t i) {
                      const float centred = x[i] - mean;
                      return centred * centred;
                    }) / static_cast<float>(n);
  const float inv_std = 1.0f / std::sqrt(var + epsilon);
  for (int64_t i = 0; i < n; ++i) out[i] = (x[i] - mean) * inv_std * weight[i] + bias[i];
}

__attribute__((target("avx512f,avx512dq"))) void rows_avx512(const float* x, const float* weight, const float* bias,
                                                            float* out, int64_t rows, int64_t n, float epsilon,
                                                            int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t r = 0; r < rows; ++r) normalize_row(x + r * n, weight, bias, out + r * n, n, epsilon);
}

void rows_portable(const float* x, const float* weight, const float* bias, float* out, int64_t rows, int64_t n,
                   float epsilon, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t r = 0; r < rows; ++r) normalize_row(x + r * n, weight, bias, out + r * n, n, epsilon);
}

}  // namespace

void layer_norm_cpu(const float* x, const float* weight, const float* bias, float* out, int64_t rows,
                    int64_t channels, float epsilon, int threads) {
  if (rows < 1 || channels < 1) throw std::invalid_argument("layer_norm: rows and channels must be >= 1");
  if (!(epsilon >= 0.0f) || !std::isfinite(epsilon))
    throw std::invalid_argument("layer_norm: epsilon must be finite and >= 0");
#ifdef _OPENMP
  const int nt = threads < 1 ? omp_get_max_threads() : threads;
#else
  const int nt = 1;
  (void)threads;
#endif
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq"))
    rows_avx512(x, weight, bias, out, rows, channels, epsilon, nt);
  else
    rows_portable(x, weight, bias, out, rows, channels, epsilon, nt);
}

}  // namespace sam_edge
