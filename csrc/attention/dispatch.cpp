// The one dispatch of the CPU attention: the feature probes, the rule of which
// key grids and head_dims each fast path takes, and the public functions of
// attention.h, which choose a path by that rule.
#include "attention/attention_internal.h"

#include <initializer_list>

#ifdef __linux__
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace sam_edge {

using namespace attention;

bool rel_pos_attention_has_avx512() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
         __builtin_cpu_supports("fma");
}

bool rel_pos_attention_has_avx512_fp16() {
  __builtin_cpu_init();
  return rel_pos_attention_has_avx512() && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512fp16");
}

bool rel_pos_attention_has_amx_bf16() {
  // Asked once: the permission is the process's, and a refusal does not change.
  static const bool usable = [] {
    __builtin_cpu_init();
    if (!(rel_pos_attention_has_avx512() && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
          __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("amx-tile") &&
          __builtin_cpu_supports("amx-bf16")))
      return false;
#if defined(__linux__) && defined(SYS_arch_prctl)
    constexpr long kRequestPermission = 0x1023;  // ARCH_REQ_XCOMP_PERM
    constexpr long kTileData = 18;               // XFEATURE_XTILEDATA
    return syscall(SYS_arch_prctl, kRequestPermission, kTileData) == 0;
#else
    return false;
#endif
  }();
  return usable;
}

bool rel_pos_attention_has_avx512_bf16() {
  // cpuid leaf 7 subleaf 1, EAX bit 5; libgcc reports it only where the OS saves the AVX-512 state.
  __builtin_cpu_init();
  return rel_pos_attention_has_avx512() && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bf16");
}

namespace {

// The key grids of the fp16 and bf16 paths: rows of whole 16-key groups in
// whole 64-key panels (global blocks, 64 x 64), or at most 16 x 16 keys
// (windowed blocks, 14 x 14).
bool aligned_grid(int64_t k_h, int64_t k_w) { return k_w % 16 == 0 && (k_h * k_w) % 64 == 0; }
bool small_grid(int64_t k_h, int64_t k_w) { return k_h <= 16 && k_w <= 16; }

// Whether the fast path of `compute` takes this head_dim and key grid. With
// has_feature, the one rule: fast_compute reports it and the entry points
// enforce it, so the two cannot disagree.
bool takes_shape(Compute compute, int64_t head_dim, int64_t k_h, int64_t k_w) {
  if (head_dim < 1 || k_h < 1 || k_w < 1) return false;
  const bool reduced_grid = aligned_grid(k_h, k_w) || small_grid(k_h, k_w);
  switch (compute) {
    case Compute::fp32: return (head_dim == 64 || head_dim == 80) && k_w % 16 == 0;
    case Compute::fp16: return head_dim == 64 && reduced_grid;
    case Compute::bf16: return (head_dim == 64 || head_dim == 80) && reduced_grid;
  }
  return false;
}

// Whether a CPU has what the fast path of `compute` needs.
bool has_feature(Compute compute, const CpuFeatures& cpu) {
  switch (compute) {
    case Compute::fp32: return cpu.avx512;
    case Compute::fp16: return cpu.avx512 && cpu.avx512_fp16;
    case Compute::bf16: return cpu.avx512 && (cpu.amx_bf16 || cpu.avx512_bf16);  // the same shapes on either
  }
  return false;
}

// takes_shape and has_feature on this CPU, probing only the features that
// path needs: the AMX probe asks the OS for the tile state.
bool runs_here(Compute compute, int64_t head_dim, int64_t k_h, int64_t k_w) {
  if (!takes_shape(compute, head_dim, k_h, k_w)) return false;
  CpuFeatures cpu;
  cpu.avx512 = rel_pos_attention_has_avx512();
  if (compute == Compute::fp16) cpu.avx512_fp16 = rel_pos_attention_has_avx512_fp16();
  if (compute == Compute::bf16) {
    cpu.amx_bf16 = rel_pos_attention_has_amx_bf16();
    cpu.avx512_bf16 = !cpu.amx_bf16 && rel_pos_attention_has_avx512_bf16();
  }
  return has_feature(compute, cpu);
}

}  // namespace

CpuFeatures rel_pos_attention_this_cpu() {
  CpuFeatures cpu;
  cpu.avx512 = rel_pos_attention_has_avx512();
  cpu.avx512_fp16 = rel_pos_attention_has_avx512_fp16();
  cpu.amx_bf16 = rel_pos_attention_has_amx_bf16();
  cpu.avx512_bf16 = rel_pos_attention_has_avx512_bf16();
  return cpu;
}

std::optional<Compute> rel_pos_attention_fast_compute(int64_t head_dim, int64_t k_h, int64_t k_w, Compute preferred,
                                                      const CpuFeatures& cpu) {
  // Compute lists fp32, fp16, bf16 in that order: preferred and those before it are acceptable.
  for (const Compute compute : {Compute::bf16, Compute::fp16, Compute::fp32})
    if (static_cast<int>(compute) <= static_cast<int>(preferred) && takes_shape(compute, head_dim, k_h, k_w) &&
        has_feature(compute, cpu))
      return compute;
  return std::nullopt;
}

void rel_pos_attention_cpu(const float* q, const float* k, const float* v, const float* rel_h,
                           const float* rel_w, float* out, int64_t batch_heads, int64_t n_q,
                           int64_t k_h, int64_t k_w, int64_t head_dim, float scale, int threads,
                           bool force_portable, Compute compute, const TaskRunner* runner) {
  if (batch_heads < 1 || n_q < 1 || k_h < 1 || k_w < 1 || head_dim < 1)
    throw std::invalid_argument("rel_pos_attention: every size must be >= 1");
  if (compute == Compute::bf16)
    throw std::invalid_argument("rel_pos_attention: bf16 compute runs from the qkv projection only "
                                "(rel_pos_attention_qkv)");
  const Workers workers = make_workers(threads, runner);
  const int nt = workers.threads;
  if (compute == Compute::fp16) {
    if (force_portable || !runs_here(Compute::fp16, head_dim, k_h, k_w))
      throw std::invalid_argument(
          "rel_pos_attention: fp16 compute needs a CPU with AVX512-FP16, head_dim 64, and a key grid with "
          "k_w % 16 == 0 and k_h * k_w % 64 == 0, or k_h, k_w <= 16");
    if (aligned_grid(k_h, k_w))
      attention_avx512_fp16<false>(q, k, v, rel_h, rel_w, out, batch_heads, n_q, k_h, k_w, scale, nt);
    else
      attention_avx512_fp16<true>(q, k, v, rel_h, rel_w, out, batch_heads, n_q, k_h, k_w, scale, nt);
  } else if (force_portable || !runs_here(Compute::fp32, head_dim, k_h, k_w)) {
    attention_portable(q, k, v, rel_h, rel_w, out, batch_heads, n_q, k_h, k_w, head_dim, scale, workers);
  } else if (head_dim == 64) {  // ViT-B and ViT-L
    attention_avx512<4, 6>(q, k, v, rel_h, rel_w, out, batch_heads, n_q, k_h, k_w, scale, workers);
  } else {  // 80: ViT-H
    attention_avx512<5, 4>(q, k, v, rel_h, rel_w, out, batch_heads, n_q, k_h, k_w, scale, workers);
  }
}

void rel_pos_attention_qkv_cpu(const float* qkv, const float* rel_pos_h, const float* rel_pos_w,
                               const float* kv_bias, float* out, int64_t batch, int64_t height, int64_t width,
                               int64_t heads, int64_t head_dim, int64_t window, float scale, int threads,
                               bool force_portable, Compute compute, const TaskRunner* runner) {
  if (batch < 1 || height < 1 || width < 1 || heads < 1 || head_dim < 1 || window < 0)
    throw std::invalid_argument("rel_pos_attention_qkv: every size must be >= 1 (window >= 0)");
  QkvGeometry g{};
  g.B = batch, g.H = height, g.W = width, g.heads = heads, g.d = head_dim;
  g.s_h = window > 0 ? window : height, g.s_w = window > 0 ? window : width;
  g.nwy = (height + g.s_h - 1) / g.s_h, g.nwx = (width + g.s_w - 1) / g.s_w;
  g.kp_h = (g.s_h + 15) / 16 * 16, g.kp_w = (g.s_w + 15) / 16 * 16;
  if (!kv_bias && (height % g.s_h != 0 || width % g.s_w != 0))
    throw std::invalid_argument("rel_pos_attention_qkv: the windows pad the grid, so kv_bias is needed");
  const std::vector<float> table_h = rel_pos_table(rel_pos_h, g.s_h, g.kp_h, head_dim);
  const std::vector<float> table_w = rel_pos_table(rel_pos_w, g.s_w, g.kp_w, head_dim);
  const int64_t kl_w = (2 * g.s_w - 1 + 15) / 16 * 16;
  const std::vector<float> rev_w = reversed_table(rel_pos_w, g.s_w, kl_w, head_dim);
  const Workers workers = make_workers(threads, runner);
  const int nt = workers.threads;
  if (compute == Compute::fp32) {
    qkv_generic(qkv, table_h.data(), table_w.data(), rev_w.data(), kl_w, kv_bias, out, g, scale, workers,
                force_portable);
    return;
  }
  const bool bf16 = compute == Compute::bf16;
  if (force_portable || !runs_here(compute, head_dim, g.s_h, g.s_w))
    throw std::invalid_argument(std::string("rel_pos_attention_qkv: ") +
                                (bf16 ? "bf16 compute needs a CPU with AVX512-BF16 (or AMX-BF16 that the OS lets us "
                                        "use), head_dim 64 or 80"
                                      : "fp16 compute needs a CPU with AVX512-FP16, head_dim 64") +
                                ", and a key grid with k_w % 16 == 0 and k_h * k_w % 64 == 0, or k_h, k_w <= 16");
  const bool aligned = aligned_grid(g.s_h, g.s_w);
  const float *th = table_h.data(), *tw = table_w.data(), *rw = rev_w.data();
  // bf16 on AMX where the tiles are granted (asked once, so asking again is free), else AVX512-BF16.
  if (bf16 && !rel_pos_attention_has_amx_bf16()) {
    if (head_dim == 80)
      aligned ? qkv_avx512_bf16<80, false>(qkv, th, tw, rw, kl_w, kv_bias, out, g, scale, workers)
              : qkv_avx512_bf16<80, true>(qkv, th, tw, rw, kl_w, kv_bias, out, g, scale, workers);
    else
      aligned ? qkv_avx512_bf16<64, false>(qkv, th, tw, rw, kl_w, kv_bias, out, g, scale, workers)
              : qkv_avx512_bf16<64, true>(qkv, th, tw, rw, kl_w, kv_bias, out, g, scale, workers);
  } else if (bf16 && head_dim == 80)
    aligned ? qkv_amx_bf16<80, false>(qkv, th, tw, rw, kl_w, kv_bias, out, g, scale, nt)
            : qkv_amx_bf16<80, true>(qkv, th, tw, rw, kl_w, kv_bias, out, g, scale, nt);
  else if (bf16)
    aligned ? qkv_amx_bf16<64, false>(qkv, th, tw, rw, kl_w, kv_bias, out, g, scale, nt)
            : qkv_amx_bf16<64, true>(qkv, th, tw, rw, kl_w, kv_bias, out, g, scale, nt);
  else if (aligned)
    qkv_fp16<false>(qkv, th, tw, rw, kl_w, kv_bias, out, g, scale, nt);
  else
    qkv_fp16<true>(qkv, th, tw, rw, kl_w, kv_bias, out, g, scale, nt);
}

}  // namespace sam_edge
