// GELU then QuantizeLinear over float32 rows; see gelu_quantize.h. AVX-512 only:
// the op library that calls it refuses other CPUs.
#include "gelu_quantize.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "gelu_avx512.h"
#include "quantize_linear_avx512.h"

namespace sam_edge {
namespace {

SAM_EDGE_AVX512 void rows_avx512(const float* x, uint8_t* out, int64_t begin, int64_t end, int64_t n,
                                 const QuantizeParams& params) {
  for (int64_t r = begin; r < end; ++r) {
    const float* xr = x + r * n;
    uint8_t* outr = out + r * n;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) quantize_store(params, gelu_avx512(_mm512_loadu_ps(xr + i)), outr + i, 0xFFFF);
    if (i < n) {
      const __mmask16 tail = static_cast<__mmask16>((1u << (n - i)) - 1);
      quantize_store(params, gelu_avx512(_mm512_maskz_loadu_ps(tail, xr + i)), outr + i, tail);
    }
  }
}

}  // namespace

void gelu_quantize_cpu(const float* x, uint8_t* out, int64_t rows, int64_t channels, float y_scale,
                       uint8_t y_zero_point, int threads, const TaskRunner* runner) {
  if (rows < 1 || channels < 1) throw std::invalid_argument("gelu_quantize: rows and channels must be >= 1");
  if (!(y_scale > 0.0f) || !std::isfinite(y_scale))
    throw std::invalid_argument("gelu_quantize: y_scale must be finite and > 0");
  __builtin_cpu_init();
  if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512bw"))
    throw std::runtime_error("gelu_quantize: this CPU has no AVX-512");
  const QuantizeParams params = quantize_params(y_scale, y_zero_point);
  // Rows per task: about 32 KB of input, enough to amortise a pool's hand-out of the task.
  const int64_t grain = std::max<int64_t>(1, 8192 / channels);
  parallel_for(make_workers(threads, runner), rows, grain, [&](int64_t begin, int64_t end) {
    rows_avx512(x, out, begin, end, channels, params);
  });
}

}  // namespace sam_edge
