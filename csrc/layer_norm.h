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

#include "task_runner.h"

namespace sam_edge {

// Rows run on `runner` when given, else on OpenMP, threads < 1 meaning every
// OpenMP thread. Throws std::invalid_argument for sizes below 1 or an epsilon
// that is negative or not finite.
void layer_norm_cpu(const float* x, const float* weight, const float* bias, float* out, int64_t rows,
                    int64_t channels, float epsilon, int threads, const TaskRunner* runner = nullptr);

// LayerNorm then ONNX QuantizeLinear to uint8, per row, in one pass over the
// normalised values: the norms before an int8 graph's qkv and lin1 Linears.
//   out[r] = saturate(round_half_to_even(layer_norm(s[r]) / y_scale) + y_zero_point)
// in [0, 255], with layer_norm's float32 value bit for bit layer_norm_cpu's on
// s[r], so only the quantize's division and rounding are new: out is
// QuantizeLinear(layer_norm_cpu(s)) exactly. s is x, or with skip (the residual
// Add before the norm) x + skip in float32, which is also written to sum.
// skip and sum are both null or both not. AVX-512 only: throws
// std::runtime_error on other CPUs, std::invalid_argument as layer_norm_cpu does
// and for a y_scale that is not finite and positive. Threads as layer_norm_cpu.
void layer_norm_quantize_cpu(const float* x, const float* skip, const float* weight, const float* bias,
                             float y_scale, uint8_t y_zero_point, uint8_t* out, float* sum, int64_t rows,
                             int64_t channels, float epsilon, int threads, const TaskRunner* runner = nullptr);

}  // namespace sam_edge
