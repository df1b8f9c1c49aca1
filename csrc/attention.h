// sam-edge CPU attention core: SAM's global attention with the decomposed
// relative-position bias, fused, over raw float32 buffers. No Python, no torch.
//
// For each of batch_heads independent heads, with M = k_h * k_w keys:
//   out[i] = sum_j softmax_j(scale * q[i] . k[j] + rel_h[i, j / k_w] + rel_w[i, j % k_w]) v[j]
// q: (batch_heads, n_q, head_dim)     k, v: (batch_heads, M, head_dim)
// rel_h: (batch_heads, n_q, k_h)      rel_w: (batch_heads, n_q, k_w)
// out: (batch_heads, n_q, head_dim). All C-contiguous float32.
//
// The scores of a block of query rows are computed into a per-thread buffer
// that stays in L2, normalised exactly (max, exp, sum) and multiplied by v:
// the (n_q, M) attention matrix never reaches memory. The semantics are
// documented in sam_edge/runtime/global_attention.py, the public interface.
#pragma once

#include <cstdint>

namespace sam_edge {

// Whether this CPU runs the AVX-512 path (otherwise a portable loop runs).
bool rel_pos_attention_has_avx512();
// Whether it has AVX512-FP16 (Sapphire Rapids and later), which fp16 compute needs.
bool rel_pos_attention_has_avx512_fp16();

// threads < 1 means every OpenMP thread. force_portable selects the portable
// loop even on an AVX-512 CPU (tests compare the two). fp16 computes both
// products in fp16 (head_dim 64 on an AVX512-FP16 CPU only; otherwise it throws
// std::invalid_argument): inputs, output and softmax stay float32.
void rel_pos_attention_cpu(const float* q, const float* k, const float* v, const float* rel_h,
                           const float* rel_w, float* out, int64_t batch_heads, int64_t n_q,
                           int64_t k_h, int64_t k_w, int64_t head_dim, float scale, int threads,
                           bool force_portable, bool fp16);

}  // namespace sam_edge
