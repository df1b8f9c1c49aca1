// sam-edge CPU LayerNorm over raw float32 rows: the normalisation before each
// encoder block's attention and MLP. No Python, no ONNX Runtime.
//
// For each of `rows` C-contiguous rows of `channels` floats:
//   out[r] = (x[r] - mean(x[r])) / sqrt(var(x[r]) + epsilon) * weight + bias
// with var the biased variance, as torch.nn.LayerNorm computes it. The mean and
// the squared deviations are summed in two passes over the row, so a large
// mean costs no precision, and in a fixed order, so the result does not depend
// on the thread count.
#pragma once

#include <cstdint>

namespace sam_edge {

// threads < 1 means every OpenMP thread. Throws std::invalid_argument for sizes
// below 1 or an epsilon that is negative or not finite.
void layer_norm_cpu(const float* x, const float* weight, const float* bias, float* out, int64_t rows,
                    int64_t channels, float epsilon, int threads);

}  // namespace sam_edge
