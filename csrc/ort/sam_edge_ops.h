// sam_edge_ops: sam-edge's CPU kernels as ONNX Runtime custom ops, for any ORT
// host (Python, C, C++, C#, Triton's onnxruntime backend). A host loads the
// library with SessionOptions.register_custom_ops_library(path), which calls
// RegisterCustomOps; the library never links onnxruntime (see ort_abi.h).
//
// Domain "ai.sam_edge", version 1:
//   RelPosAttention(qkv, rel_pos_h, rel_pos_w[, kv_bias]) -> out, all float32:
//     SAM's block attention from its qkv Linear's output to its proj Linear's
//     input, with the contract of rel_pos_attention_qkv_cpu (csrc/attention.h):
//     qkv (B, H, W, 3 * heads * D); rel_pos_h (2 * s_h - 1, D); rel_pos_w
//     (2 * s_w - 1, D); kv_bias (2, heads, D), needed when windows pad the grid;
//     out (B, H, W, heads * D).
//     Attributes: heads (int), window (int, 0 for a global block), scale
//     (float), compute (string "fp32", "fp16" or "bf16"; "fp32" when absent):
//     the most reduced arithmetic allowed; the op runs the first of bf16,
//     fp16, fp32 at or above it that this CPU has a fast path for at this
//     shape (rel_pos_attention_fast_compute), else fp32, so a graph runs
//     unchanged on any AVX-512 CPU.
//   LayerNorm(X, scale, B) -> Y, all float32: torch.nn.LayerNorm over X's last
//     axis (csrc/layer_norm.h): X (..., C), scale and B (C,), Y like X.
//     Attribute: epsilon (float).
//   GeluQuantizeLinear(X float32, y_scale float32, y_zero_point uint8) -> Y uint8:
//     exact (erf) GELU then ONNX QuantizeLinear, in one pass (csrc/gelu_quantize.h:
//     float32 within a stated bound of float64, so only values that close to a
//     rounding boundary can differ from QuantizeLinear(Gelu(X)) by a step).
//     X any shape, Y like it; y_scale (finite, > 0) and y_zero_point per tensor,
//     each a scalar or (1,). Y = saturate(round_half_even(gelu(X) / y_scale) +
//     y_zero_point) in [0, 255].
//   LayerNormQuantizeLinear(X, scale, B float32, y_scale float32, y_zero_point
//     uint8) -> Y uint8: LayerNorm then QuantizeLinear (csrc/layer_norm.h's
//     layer_norm_quantize_cpu), Y exactly QuantizeLinear(LayerNorm(X)) with this
//     library's LayerNorm: X (..., C), scale and B (C,), quantization as
//     GeluQuantizeLinear's. Attribute: epsilon (float).
//   SkipLayerNormQuantizeLinear(X, skip, scale, B float32, y_scale float32,
//     y_zero_point uint8) -> (Y uint8, sum float32): the same on sum = X + skip
//     (float32, as ONNX's Add), which it also writes: an int8 block's residual
//     Add, the norm after it and its quantize. skip shaped like X (no
//     broadcasting), sum like X. Attribute: epsilon (float).
//   MaskUpscale(src, hyper_in, conv1_weight, conv1_bias, norm_weight, norm_bias,
//     conv2_weight, conv2_bias) -> masks, all float32: the mask decoder's
//     output_upscaling and hypernetwork product in one pass (csrc/mask_upscale.h):
//     src (S, h * w, C) image tokens, S = 1 (shared by every prompt) or B;
//     hyper_in (B, T, C / 8); the official ConvTranspose2d, LayerNorm2d and
//     ConvTranspose2d parameters, (C, C / 4, 2, 2), (C / 4,), (C / 4,), (C / 4,),
//     (C / 4, C / 8, 2, 2), (C / 8,); masks (B, T, 4h, 4w) logits.
//     Attributes: height, width (int, the grid h, w), epsilon (float, LayerNorm2d's).
//
// Every op runs on the session's intra-op threads (onnxruntime >= 1.17; an
// OpenMP team on older runtimes), except RelPosAttention's AMX and AVX512-FP16
// paths, which keep their OpenMP team.
//
// Exported C functions: RegisterCustomOps, and sam_edge_ops_check_api, a
// self-check of ort_abi.h's table against the runtime that hands it over.
#pragma once

#include "ort_abi.h"

namespace sam_edge::ort {

// The domain, and an op description valid for the library's lifetime.
constexpr const char* kDomain = "ai.sam_edge";
const OrtCustomOp* rel_pos_attention_op();

}  // namespace sam_edge::ort

extern "C" {
// ORT's entry point: refuses (an error status) on a CPU without AVX-512, or a
// runtime older than kOrtApiVersion.
__attribute__((visibility("default"))) sam_edge::ort::OrtStatus* RegisterCustomOps(
    sam_edge::ort::OrtSessionOptions* options, const sam_edge::ort::OrtApiBase* api_base) noexcept;

// Calls every OrtApi slot that ort_abi.h declares, harmlessly, and checks what
// comes back. 0 when all hold; otherwise 1, with the first failure written to
// message (size bytes, terminated). A wrong slot may crash: call it in a
// process you can lose.
__attribute__((visibility("default"))) int sam_edge_ops_check_api(const sam_edge::ort::OrtApiBase* api_base,
                                                                   char* message, size_t size) noexcept;
}
