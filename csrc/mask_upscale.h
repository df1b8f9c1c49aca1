// sam-edge CPU mask upscaling: the end of SAM's mask decoder, from the two-way
// transformer's image tokens and the hypernetwork outputs to the low-res mask
// logits, one tile of pixels at a time. No Python, no ONNX Runtime.
//
// src (S, h * w, C) row-major image tokens, S = 1 (shared by every prompt) or B;
// hyper_in (B, T, C / 8); out (B, T, 4h, 4w). With c1 = C / 4, c2 = C / 8 and the
// official output_upscaling's weights (ConvTranspose2d's (in, out, 2, 2) layout):
//   x1[a1, b1, o] = conv1_bias[o] + sum_c src[p, c] * conv1_weight[c, o, a1, b1]
//   y1[a1, b1, :] = gelu(layer_norm(x1[a1, b1, :]) * norm_weight + norm_bias)
//   x2[.., a2, b2, o] = conv2_bias[o] + sum_k y1[a1, b1, k] * conv2_weight[k, o, a2, b2]
//   out[b, t, 4i + 2a1 + a2, 4j + 2b1 + b2] = sum_o gelu(x2[a1, b1, a2, b2, o]) * hyper_in[b, t, o]
// for pixel p = (i, j): LayerNorm2d over each sub-pixel's c1 channels (biased
// variance, epsilon inside the square root), gelu the exact x * Phi(x). Nothing
// wider than a tile of 32 pixels is materialised. Each output depends only on
// its pixel's inputs, computed by one thread, so the result does not depend on
// the thread count.
//
// Paths: AVX-512 (C a multiple of 16; Phi from gelu_avx512.h, within 2^-23) and
// a portable loop (Phi from std::erf), chosen at run time.
#pragma once

#include <cstdint>

#include "task_runner.h"

namespace sam_edge {

// The official output_upscaling's parameters, float32, C-contiguous:
// conv1_weight (C, c1, 2, 2), conv1_bias (c1), norm_weight and norm_bias (c1),
// conv2_weight (c1, c2, 2, 2), conv2_bias (c2).
struct MaskUpscaleWeights {
  const float* conv1_weight;
  const float* conv1_bias;
  const float* norm_weight;
  const float* norm_bias;
  const float* conv2_weight;
  const float* conv2_bias;
};

// Whether mask_upscale_cpu runs its AVX-512 path on this CPU (for C % 16 == 0).
bool mask_upscale_has_avx512();

// The tasks run on `runner` when given, else on OpenMP, threads < 1 meaning every
// OpenMP thread. Throws std::invalid_argument for sizes below 1, C not a multiple
// of 8, src_batch neither 1 nor batch, or an epsilon that is negative or not finite.
void mask_upscale_cpu(const float* src, const float* hyper_in, const MaskUpscaleWeights& weights, float* out,
                      int64_t src_batch, int64_t batch, int64_t tokens, int64_t height, int64_t width,
                      int64_t channels, float epsilon, int threads, bool force_portable,
                      const TaskRunner* runner = nullptr);

// The GELU mask_upscale_cpu applies, on n floats (the tests' check of its bound).
void mask_upscale_gelu_cpu(const float* x, float* out, int64_t n, bool force_portable);

}  // namespace sam_edge
