// LayerNorm over float32 rows; see layer_norm.h. One row body, compiled twice:
// for AVX-512 (chosen at run time) and for the baseline ISA; the quantizing
// variant shares its statistics and its arithmetic, in AVX-512 only.
#include "layer_norm.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "quantize_linear_avx512.h"

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

struct RowStats {
  float mean, inv_std;
};

__attribute__((always_inline)) inline RowStats row_stats(const float* x, int64_t n, float epsilon) {
  const float mean = lane_sum(n, [&](int64_t i) { return x[i]; }) / static_cast<float>(n);
  const float var = lane_sum(n, [&](int64_t i) {
                      const float centred = x[i] - mean;
                      return centred * centred;
                    }) / static_cast<float>(n);
  return {mean, 1.0f / std::sqrt(var + epsilon)};
}

__attribute__((always_inline)) inline void normalize_row(const float* x, const float* weight, const float* bias,
                                                         float* out, int64_t n, float epsilon) {
  const RowStats stats = row_stats(x, n, epsilon);
  for (int64_t i = 0; i < n; ++i) out[i] = (x[i] - stats.mean) * stats.inv_std * weight[i] + bias[i];
}

// normalize_row's arithmetic in the same order (no fused multiply-add), 16 lanes
// at a time, into the quantize.
SAM_EDGE_AVX512 __attribute__((always_inline)) inline void normalize_quantize_row(
    const float* x, const float* weight, const float* bias, const QuantizeParams& params, uint8_t* out, int64_t n,
    float epsilon) {
  const RowStats stats = row_stats(x, n, epsilon);
  const __m512 mean = _mm512_set1_ps(stats.mean), inv_std = _mm512_set1_ps(stats.inv_std);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 lanes = n - i >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << (n - i)) - 1);
    const __m512 centred = _mm512_sub_ps(_mm512_maskz_loadu_ps(lanes, x + i), mean);
    const __m512 y = _mm512_add_ps(_mm512_mul_ps(_mm512_mul_ps(centred, inv_std), _mm512_maskz_loadu_ps(lanes, weight + i)),
                                   _mm512_maskz_loadu_ps(lanes, bias + i));
    quantize_store(params, y, out + i, lanes);
  }
}

__attribute__((target("avx512f,avx512dq"))) void rows_avx512(const float* x, const float* weight, const float* bias,
                                                            float* out, int64_t begin, int64_t end, int64_t n,
                                                            float epsilon) {
  for (int64_t r = begin; r < end; ++r) normalize_row(x + r * n, weight, bias, out + r * n, n, epsilon);
}

void rows_portable(const float* x, const float* weight, const float* bias, float* out, int64_t begin, int64_t end,
                   int64_t n, float epsilon) {
  for (int64_t r = begin; r < end; ++r) normalize_row(x + r * n, weight, bias, out + r * n, n, epsilon);
}

SAM_EDGE_AVX512 void quantize_rows_avx512(const float* x, const float* skip, const float* weight, const float* bias,
                                          const QuantizeParams& params, uint8_t* out, float* sum, int64_t begin,
                                          int64_t end, int64_t n, float epsilon) {
  for (int64_t r = begin; r < end; ++r) {
    const float* row = x + r * n;
    if (skip) {
      float* sum_row = sum + r * n;
      for (int64_t i = 0; i < n; ++i) sum_row[i] = row[i] + skip[r * n + i];
      row = sum_row;  // still in cache for the statistics
    }
    normalize_quantize_row(row, weight, bias, params, out + r * n, n, epsilon);
  }
}

// Rows per task: about 32 KB of each input, enough to amortise a pool's hand-out of the task.
int64_t row_grain(int64_t channels) { return std::max<int64_t>(1, 8192 / channels); }

}  // namespace

void layer_norm_quantize_cpu(const float* x, const float* skip, const float* weight, const float* bias,
                             float y_scale, uint8_t y_zero_point, uint8_t* out, float* sum, int64_t rows,
                             int64_t channels, float epsilon, int threads, const TaskRunner* runner) {
  if (rows < 1 || channels < 1) throw std::invalid_argument("layer_norm_quantize: rows and channels must be >= 1");
  if (!(epsilon >= 0.0f) || !std::isfinite(epsilon))
    throw std::invalid_argument("layer_norm_quantize: epsilon must be finite and >= 0");
  if (!(y_scale > 0.0f) || !std::isfinite(y_scale))
    throw std::invalid_argument("layer_norm_quantize: y_scale must be finite and > 0");
  if ((skip == nullptr) != (sum == nullptr))
    throw std::invalid_argument("layer_norm_quantize: skip and sum go together");
  __builtin_cpu_init();
  if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512bw"))
    throw std::runtime_error("layer_norm_quantize: this CPU has no AVX-512");
  const QuantizeParams params = quantize_params(y_scale, y_zero_point);
  parallel_for(make_workers(threads, runner), rows, row_grain(channels), [&](int64_t begin, int64_t end) {
    quantize_rows_avx512(x, skip, weight, bias, params, out, sum, begin, end, channels, epsilon);
  });
}

void layer_norm_cpu(const float* x, const float* weight, const float* bias, float* out, int64_t rows,
                    int64_t channels, float epsilon, int threads, const TaskRunner* runner) {
  if (rows < 1 || channels < 1) throw std::invalid_argument("layer_norm: rows and channels must be >= 1");
  if (!(epsilon >= 0.0f) || !std::isfinite(epsilon))
    throw std::invalid_argument("layer_norm: epsilon must be finite and >= 0");
  __builtin_cpu_init();
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq");
  parallel_for(make_workers(threads, runner), rows, row_grain(channels), [&](int64_t begin, int64_t end) {
    if (avx512)
      rows_avx512(x, weight, bias, out, begin, end, channels, epsilon);
    else
      rows_portable(x, weight, bias, out, begin, end, channels, epsilon);
  });
}

}  // namespace sam_edge
