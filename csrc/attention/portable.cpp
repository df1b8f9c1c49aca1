// The portable path: one query row at a time, written for clarity. It runs
// where no ISA path takes the shape or the CPU, and is the tests' second opinion.

#include "attention_internal.h"

namespace sam_edge {
namespace attention {

void attention_portable(const float* q, const float* k, const float* v, const float* rel_h,
                        const float* rel_w, float* out, int64_t bh, int64_t n_q, int64_t k_h,
                        int64_t k_w, int64_t d, float scale, const Workers& workers) {
  const int64_t m = k_h * k_w;
  parallel_for(workers, bh * n_q, 16, [&](int64_t begin, int64_t end) {
    std::vector<float> s(m);
    std::vector<float> acc(d);
    for (int64_t row = begin; row < end; ++row) {
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
  }, /*balanced=*/true);
}

}  // namespace attention
}  // namespace sam_edge
