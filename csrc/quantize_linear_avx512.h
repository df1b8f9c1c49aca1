// ONNX QuantizeLinear to uint8 on 16 floats at a time, for the fused kernels
// that end in it (gelu_quantize_cpu.cpp, layer_norm_cpu.cpp):
//   q = saturate(round_half_to_even(v / y_scale) + y_zero_point), in [0, 255].
// A true division, as ONNX states it and ONNX Runtime computes it, so a fused op
// quantizes a float exactly as QuantizeLinear would. NaN becomes 0.
#pragma once

// GCC 12 warns that its own _mm512_* intrinsics read an uninitialised "__Y" (the
// undefined-vector idiom of avx512fintrin.h), as attention_internal.h notes.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

#include <immintrin.h>

#include <cstdint>

namespace sam_edge {

#define SAM_EDGE_AVX512 __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl")))

struct QuantizeParams {
  __m512 scale, zero_point;
};

SAM_EDGE_AVX512 inline QuantizeParams quantize_params(float y_scale, uint8_t y_zero_point) {
  return {_mm512_set1_ps(y_scale), _mm512_set1_ps(static_cast<float>(y_zero_point))};
}

// Writes lanes `mask` of q(v) to out.
SAM_EDGE_AVX512 __attribute__((always_inline)) inline void quantize_store(const QuantizeParams& p, __m512 v,
                                                                            uint8_t* out, __mmask16 mask) {
  const __m512 rounded = _mm512_roundscale_ps(_mm512_div_ps(v, p.scale), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  // max before min, NaN last in max: a NaN lane takes the 0.
  const __m512 clamped =
      _mm512_min_ps(_mm512_max_ps(_mm512_add_ps(rounded, p.zero_point), _mm512_setzero_ps()), _mm512_set1_ps(255.0f));
  _mm512_mask_cvtepi32_storeu_epi8(out, mask, _mm512_cvtps_epi32(clamped));
}

}  // namespace sam_edge
