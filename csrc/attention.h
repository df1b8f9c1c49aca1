// sam-edge CPU attention core: SAM's global attention with the decomposed
// relative-position bias, fused, over raw float32 buffers. No Python, no torch.
//
// For each of batch_heads independent heads, with M = k_h * k_w keys:
//   out[i] = sum_j softmax_j(scale * q[i] . k[j] + rel_h[i, j / k_w] + rel_w[i, j % k_w]) v[j]
// q: (batch_heads, n_q, head_dim)     k, v: (batch_heads, M, head_dim)
// rel_h: (batch_heads, n_q, k_h)      rel_w: (batch_heads, n_q, k_w)
// out: (batch_heads, n_q, head_dim). All C-contiguous float32.
//
// The qkv entry point takes what SAM's encoder blocks feed the attention, with
// the rel-pos terms and windows handled inside:
//   qkv: (batch, height, width, 3, heads, head_dim); out: (batch, height, width, heads, head_dim)
//   rel_pos_h: (2 * s_h - 1, head_dim), rel_pos_w: (2 * s_w - 1, head_dim), the model's tables
//   window 0: one global attention over the grid, s = (height, width);
//   window w > 0: attention within w x w windows of the grid padded at the bottom and right
//   to whole windows, s = (w, w). A padded key and value are kv_bias, (2, heads, head_dim):
//   the qkv bias, since a padded token is zero after the block's norm. kv_bias may be null
//   when nothing is padded.
//
// The scores of a block of query rows are computed into a per-thread buffer
// that stays in L2, normalised exactly (max, exp, sum) and multiplied by v:
// the (n_q, M) attention matrix never reaches memory. The loops run on `runner`
// when given (the fp32, AVX512-BF16 and portable paths; AMX and AVX512-FP16
// keep OpenMP), else on OpenMP, threads < 1 meaning every OpenMP thread.
// force_portable selects the portable loop on any CPU (tests compare the two). Shapes or a compute the CPU cannot run throw
// std::invalid_argument. The semantics are documented in
// sam_edge/kernels/cpu_attention.py, the public interface.
#pragma once

#include <cstdint>
#include <optional>

#include "task_runner.h"

namespace sam_edge {

// The precision of both products (q k^T and p v); inputs, output and softmax stay float32.
// fp16: fp16 products and partial sums (AVX512-FP16). bf16: bf16 q, k, v and probabilities,
// fp32 sums, on AMX tiles where the CPU has them, else with AVX512-BF16's vdpbf16ps.
// Listed from the most precise down.
enum class Compute { fp32, fp16, bf16 };

// Whether this CPU runs the AVX-512 path (otherwise a portable loop runs).
bool rel_pos_attention_has_avx512();
// Whether it has AVX512-FP16, which fp16 compute needs.
bool rel_pos_attention_has_avx512_fp16();
// Whether it has AMX-BF16 and the OS lets this process use the tiles (asked once), for bf16 compute.
bool rel_pos_attention_has_amx_bf16();
// Whether it has AVX512-BF16, bf16 compute's path where AMX is not.
bool rel_pos_attention_has_avx512_bf16();

// What a CPU offers the fast paths (the four probes above, or a machine described).
struct CpuFeatures {
  bool avx512 = false, avx512_fp16 = false, amx_bf16 = false, avx512_bf16 = false;
};

// This CPU's features, every probe asked (the AMX probe asks the OS for the tile state).
CpuFeatures rel_pos_attention_this_cpu();

// The compute a fast path runs for head_dim and a k_h x k_w key grid on cpu: preferred, else
// the next down bf16 -> fp16 -> fp32, else none. The entry points enforce the same rule.
std::optional<Compute> rel_pos_attention_fast_compute(int64_t head_dim, int64_t k_h, int64_t k_w, Compute preferred,
                                                      const CpuFeatures& cpu);

// Attention on q, k, v and the bias terms; fp32 or fp16 compute (bf16 runs from the qkv projection only).
void rel_pos_attention_cpu(const float* q, const float* k, const float* v, const float* rel_h,
                           const float* rel_w, float* out, int64_t batch_heads, int64_t n_q,
                           int64_t k_h, int64_t k_w, int64_t head_dim, float scale, int threads,
                           bool force_portable, Compute compute, const TaskRunner* runner = nullptr);

// Attention from a block's qkv projection, windows and rel-pos terms included; any compute.
void rel_pos_attention_qkv_cpu(const float* qkv, const float* rel_pos_h, const float* rel_pos_w,
                               const float* kv_bias, float* out, int64_t batch, int64_t height, int64_t width,
                               int64_t heads, int64_t head_dim, int64_t window, float scale, int threads,
                               bool force_portable, Compute compute, const TaskRunner* runner = nullptr);

}  // namespace sam_edge
