// sam-edge CPU GELU then QuantizeLinear over raw float32 values: the activation
// between each encoder block's MLP Linears in an int8 graph, where the second
// Linear reads uint8. One pass instead of a float GELU and a quantize pass over
// the MLP's widest tensor. No Python, no ONNX Runtime.
//
// For each of n values:
//   out[i] = saturate(round_half_to_even(gelu(x[i]) / y_scale) + y_zero_point)
// in [0, 255], with gelu(x) = x * Phi(x), Phi the standard normal CDF (the exact,
// erf GELU). Phi comes from a piecewise polynomial within 2^-23 of it
// (gelu_quantize_table.py), so before rounding the float32 value differs from the
// float64 one by at most 4 * 2^-24 * (|x| / y_scale + |gelu(x)| / y_scale):
// values that close to a rounding boundary may land one step either side.
#pragma once

#include <cstdint>

#include "task_runner.h"

namespace sam_edge {

// rows x channels C-contiguous values; rows run on `runner` when given, else on
// OpenMP, threads < 1 meaning every OpenMP thread. Throws std::invalid_argument
// for sizes below 1 or a y_scale that is not finite and positive,
// std::runtime_error on a CPU without AVX-512.
void gelu_quantize_cpu(const float* x, uint8_t* out, int64_t rows, int64_t channels, float y_scale,
                       uint8_t y_zero_point, int threads, const TaskRunner* runner = nullptr);

}  // namespace sam_edge
