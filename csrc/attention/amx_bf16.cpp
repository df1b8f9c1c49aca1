// The AMX-BF16 path (head_dim 64 or 80), from the qkv projection.
//
// The tile unit of Sapphire Rapids multiplies (16 x 32) by (32 x 16) bf16
// blocks into (16 x 16) fp32 sums, faster than the AVX512-FP16 FMAs
// (benchmarks/bench_cpu_attention.py measures it). q, k, v and the probabilities
// are rounded to bf16 (8 significant bits to fp16's 11); every sum is fp32,
// and the bias and softmax are the fp32 ones of the other paths. A task is 16
// query rows, one tile's height. Linux hands out the tile state only on
// request (arch_prctl), which rel_pos_attention_has_amx_bf16 makes once.

#include "attention_internal.h"

namespace sam_edge {
namespace attention {
namespace {

constexpr int64_t kTileRows = 16;

struct alignas(64) TileConfig {
  uint8_t palette, start_row, reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

// Every tile 16 rows of 64 bytes: (16 x 16) fp32 sums and (16 x 32) bf16 operands.
SAM_AMX void configure_tiles() {
  TileConfig config{};
  config.palette = 1;
  for (int t = 0; t < 8; ++t) config.colsb[t] = 64, config.rows[t] = 16;
  _tile_loadconfig(&config);
}

// 32 floats (lo: 0-15, hi: 16-31) -> 32 bf16, rounded to nearest even.
SAM_AMX inline __m512i bf16x32(__m512 lo, __m512 hi) { return (__m512i)_mm512_cvtne2ps_pbh(hi, lo); }
// The 32 channels of a D-channel row from channel c, as bf16; zeros past D.
template <int D>
SAM_AMX inline __m512i channels32(const float* src, int64_t c) {
  const __m512 lo = c < D ? _mm512_loadu_ps(src + c) : _mm512_setzero_ps();
  const __m512 hi = c + 16 < D ? _mm512_loadu_ps(src + c + 16) : _mm512_setzero_ps();
  return bf16x32(lo, hi);
}
// 16 floats -> bf16 in the low halves of 16 dwords.
SAM_AMX inline __m512i bf16_dwords(__m512 x) { return _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(x)); }

// The score row's bias and scale, in place: x = scale * dot + rel_h[key row] +
// rel_w[key column], -inf past the m keys (small grids); returns its maximum.
template <bool SMALL>
SAM_AMX float bias_row(const HeadFp16& h, float* __restrict s, const float* __restrict rh,
                       const float* __restrict rw) {
  const __m512 scale = _mm512_set1_ps(h.scale);
  __m512 mx = _mm512_set1_ps(-INFINITY);
  if constexpr (SMALL) {
    const __m512 rhv = _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << h.k_h) - 1), rh);
    const __m512 rwv = _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << h.k_w) - 1), rw);
    const __m512 minus_inf = _mm512_set1_ps(-INFINITY);
    for (int64_t j = 0; j < h.m_pad; j += 16) {
      const __m512 bias = _mm512_add_ps(_mm512_permutexvar_ps(_mm512_loadu_si512(h.key_row + j), rhv),
                                        _mm512_permutexvar_ps(_mm512_loadu_si512(h.key_col + j), rwv));
      const __m512 x = _mm512_mask_mov_ps(minus_inf, h.group_valid[j / 16],
                                          _mm512_fmadd_ps(_mm512_loadu_ps(s + j), scale, bias));
      _mm512_storeu_ps(s + j, x);
      mx = _mm512_max_ps(mx, x);
    }
  } else {
    for (int64_t j = 0; j < h.m_pad; j += 16) {
      const __m512 bias = _mm512_add_ps(_mm512_set1_ps(rh[h.group_row[j / 16]]), _mm512_loadu_ps(rw + h.group_col[j / 16]));
      const __m512 x = _mm512_fmadd_ps(_mm512_loadu_ps(s + j), scale, bias);
      _mm512_storeu_ps(s + j, x);
      mx = _mm512_max_ps(mx, x);
    }
  }
  return _mm512_reduce_max_ps(mx);
}

// Tile numbers are immediates: one macro per product, A in tile a, B read from
// memory into tile b, summed into tile c.
#define SAM_TILE_PRODUCT(c, a, b, ptr, stride) \
  do {                                         \
    _tile_loadd(b, ptr, stride);               \
    _tile_dpbf16ps(c, a, b);                   \
  } while (0)

}  // namespace

// D: head_dim, 64 (ViT-B, ViT-L) or 80 (ViT-H). The score products run over
// D rounded up to whole 32-channel tiles (DP, zeros past D); the products with
// v over D / 16 output tiles.
template <int D, bool SMALL>
SAM_AMX void qkv_amx_bf16(const float* qkv, const float* table_h, const float* table_w, const float* rev_w,
                          int64_t kl_w, const float* kv_bias, float* out, const QkvGeometry& g, float scale,
                          int threads) {
  static_assert(D == 64 || D == 80, "head_dim 64 or 80");
  constexpr int64_t d = D, DP = (D + 31) / 32 * 32, chunks = DP / 32, group_size = chunks * 512;
  const int64_t U = g.units(), m = g.m(), heads = g.heads;
  const int64_t k_h = g.s_h, k_w = g.s_w;
  const int64_t m_pad = (m + 63) / 64 * 64, groups = m_pad / 16;
  // k: per unit and group of 16 keys, per 32 channels, 16 channel pairs x 16
  // keys x 2 (a score product's B operand, 1 KB). v: per unit and pair of keys,
  // D channels x 2 (rows of the B operand of the product with v, 4 D bytes
  // apart). q: rows of DP channels, 16 spare rows at the end for the last tile.
  uint16_t* kb = scratch<uint16_t>(0, U * groups * group_size);
  uint16_t* vb = scratch<uint16_t>(1, U * m_pad * d);
  uint16_t* qb = scratch<uint16_t>(2, (U * m + kTileRows) * DP);
  const KeyTables tables(m, m_pad, k_w);
  const std::vector<std::pair<int64_t, int64_t>> tasks = qkv_tasks(g, kTileRows);
  const int64_t n_tasks = static_cast<int64_t>(tasks.size());
  std::fill(qb + U * m * DP, qb + (U * m + kTileRows) * DP, uint16_t{0});
#pragma omp parallel num_threads(threads)
  {
#pragma omp for schedule(static)
    for (int64_t t = 0; t < U * groups; ++t) {
      const int64_t u = t / groups, gi = t % groups;
      const float* src[16];
      for (int i = 0; i < 16; ++i) src[i] = g.key(qkv, kv_bias, u, 16 * gi + i, 1);
      uint16_t* dst = kb + (u * groups + gi) * group_size;
      // Each key's 16 channel pairs of a chunk as dwords, transposed: row p holds pair p of the 16 keys.
      for (int64_t c = 0; c < chunks; ++c) {
        __m512 r[16];
        for (int i = 0; i < 16; ++i) r[i] = src[i] ? _mm512_castsi512_ps(channels32<D>(src[i], 32 * c)) : _mm512_setzero_ps();
        transpose16(r);
        for (int q = 0; q < 16; ++q) _mm512_storeu_ps(reinterpret_cast<float*>(dst + c * 512 + q * 32), r[q]);
      }
    }
#pragma omp for schedule(static)
    for (int64_t t = 0; t < U * m_pad / 2; ++t) {
      const int64_t u = t / (m_pad / 2), jp = t % (m_pad / 2);
      const float* v0 = g.key(qkv, kv_bias, u, 2 * jp, 2);
      const float* v1 = g.key(qkv, kv_bias, u, 2 * jp + 1, 2);
      for (int64_t c = 0; c < d; c += 16) {
        const __m512i a = v0 ? bf16_dwords(_mm512_loadu_ps(v0 + c)) : _mm512_setzero_si512();
        const __m512i b = v1 ? bf16_dwords(_mm512_loadu_ps(v1 + c)) : _mm512_setzero_si512();
        _mm512_storeu_si512(vb + t * 2 * d + 2 * c, _mm512_or_si512(a, _mm512_slli_epi32(b, 16)));
      }
    }
#pragma omp for schedule(static)
    for (int64_t t = 0; t < U * m; ++t) {
      const int64_t u = t / m, r = t % m;
      if (r >= g.valid_h(u) * g.valid_w(u)) continue;
      const float* src = g.query(qkv, u, r);
      for (int64_t c = 0; c < chunks; ++c) _mm512_storeu_si512(qb + t * DP + 32 * c, channels32<D>(src, 32 * c));
    }
    const int64_t ls = m_pad + kPad;
    float* s = scratch<float>(3, kTileRows * ls);
    uint16_t* p = scratch<uint16_t>(4, kTileRows * ls);
    float* rh = scratch<float>(5, kTileRows * k_h);
    float* rw = scratch<float>(6, kTileRows * k_w);
    float* o = scratch<float>(7, kTileRows * d);
    configure_tiles();
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < n_tasks; ++t) {
      const auto [u, i0] = tasks[t];
      const int64_t head = u % heads;
      int64_t tokens[kTileRows], cols[kTileRows];
      const float* q32[kTileRows];
      const int64_t rows = task_queries(g, qkv, u, i0, kTileRows, tokens, cols, q32);
      task_rel_terms(g, q32, cols, i0, rows, g.valid_w(u), table_h, table_w, rev_w, kl_w, rh, rw);
      const HeadFp16 h = tables.head(nullptr, nullptr, ls, scale);
      // Scores: the tile's 16 query rows (A, one tile per 32 channels) against 64 keys at a time.
      const uint16_t* qa = qb + (u * m + i0) * DP;
      const uint16_t* ku = kb + u * groups * group_size;
      _tile_loadd(4, qa, DP * 2);
      _tile_loadd(5, qa + 32, DP * 2);
      if constexpr (chunks == 3) _tile_loadd(6, qa + 64, DP * 2);
      for (int64_t j0 = 0; j0 < m_pad; j0 += 64) {
        const uint16_t* kg = ku + (j0 / 16) * group_size;
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
        if constexpr (chunks == 2) {
          SAM_TILE_PRODUCT(0, 4, 6, kg, 64);
          SAM_TILE_PRODUCT(0, 5, 7, kg + 512, 64);
          SAM_TILE_PRODUCT(1, 4, 6, kg + 1024, 64);
          SAM_TILE_PRODUCT(1, 5, 7, kg + 1536, 64);
          SAM_TILE_PRODUCT(2, 4, 6, kg + 2048, 64);
          SAM_TILE_PRODUCT(2, 5, 7, kg + 2560, 64);
          SAM_TILE_PRODUCT(3, 4, 6, kg + 3072, 64);
          SAM_TILE_PRODUCT(3, 5, 7, kg + 3584, 64);
        } else {  // three A tiles leave one for B
          SAM_TILE_PRODUCT(0, 4, 7, kg, 64);
          SAM_TILE_PRODUCT(0, 5, 7, kg + 512, 64);
          SAM_TILE_PRODUCT(0, 6, 7, kg + 1024, 64);
          SAM_TILE_PRODUCT(1, 4, 7, kg + 1536, 64);
          SAM_TILE_PRODUCT(1, 5, 7, kg + 2048, 64);
          SAM_TILE_PRODUCT(1, 6, 7, kg + 2560, 64);
          SAM_TILE_PRODUCT(2, 4, 7, kg + 3072, 64);
          SAM_TILE_PRODUCT(2, 5, 7, kg + 3584, 64);
          SAM_TILE_PRODUCT(2, 6, 7, kg + 4096, 64);
          SAM_TILE_PRODUCT(3, 4, 7, kg + 4608, 64);
          SAM_TILE_PRODUCT(3, 5, 7, kg + 5120, 64);
          SAM_TILE_PRODUCT(3, 6, 7, kg + 5632, 64);
        }
        _tile_stored(0, s + j0, ls * 4);
        _tile_stored(1, s + j0 + 16, ls * 4);
        _tile_stored(2, s + j0 + 32, ls * 4);
        _tile_stored(3, s + j0 + 48, ls * 4);
      }
      float inv[kTileRows];
      for (int64_t r = 0; r < rows; ++r) {
        float* sr = s + r * ls;
        uint16_t* pr = p + r * ls;
        const __m512 mx = _mm512_set1_ps(bias_row<SMALL>(h, sr, rh + r * k_h, rw + r * k_w));
        __m512 sum = _mm512_setzero_ps();
        for (int64_t j = 0; j < m_pad; j += 16) {
          const __m512 e = exp_reduced(_mm512_sub_ps(_mm512_loadu_ps(sr + j), mx));
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(pr + j), (__m256i)_mm512_cvtneps_pbh(e));
          // The unrounded sum: the rounded one is within 2^-9 of it, and typically ~2^-9 / sqrt(m).
          sum = _mm512_add_ps(sum, e);
        }
        inv[r] = 1.f / _mm512_reduce_add_ps(sum);
      }
      for (int64_t r = rows; r < kTileRows; ++r) std::fill(p + r * ls, p + r * ls + m_pad, uint16_t{0});
      // Probabilities (A, 16 rows x 32 keys) times v (B, 32 keys x 16 channels), D / 16 sums.
      const uint16_t* vu = vb + u * m_pad * d;
      _tile_zero(0);
      _tile_zero(1);
      _tile_zero(2);
      _tile_zero(3);
      if constexpr (D == 80) _tile_zero(4);
      for (int64_t j0 = 0; j0 < m_pad; j0 += 32) {
        const uint16_t* vt = vu + j0 * d;  // key pair j0 / 2, 2 * d bf16 each
        if constexpr (D == 64) {
          _tile_loadd(4, p + j0, ls * 2);
          SAM_TILE_PRODUCT(0, 4, 6, vt, 4 * d);
          SAM_TILE_PRODUCT(1, 4, 7, vt + 32, 4 * d);
          SAM_TILE_PRODUCT(2, 4, 6, vt + 64, 4 * d);
          SAM_TILE_PRODUCT(3, 4, 7, vt + 96, 4 * d);
        } else {
          _tile_loadd(5, p + j0, ls * 2);
          SAM_TILE_PRODUCT(0, 5, 6, vt, 4 * d);
          SAM_TILE_PRODUCT(1, 5, 7, vt + 32, 4 * d);
          SAM_TILE_PRODUCT(2, 5, 6, vt + 64, 4 * d);
          SAM_TILE_PRODUCT(3, 5, 7, vt + 96, 4 * d);
          SAM_TILE_PRODUCT(4, 5, 6, vt + 128, 4 * d);
        }
      }
      _tile_stored(0, o, d * 4);
      _tile_stored(1, o + 16, d * 4);
      _tile_stored(2, o + 32, d * 4);
      _tile_stored(3, o + 48, d * 4);
      if constexpr (D == 80) _tile_stored(4, o + 64, d * 4);
      for (int64_t r = 0; r < rows; ++r) {
        const __m512 w = _mm512_set1_ps(inv[r]);
        float* dst = out + (tokens[r] * heads + head) * d;
        for (int64_t c = 0; c < d; c += 16) _mm512_storeu_ps(dst + c, _mm512_mul_ps(_mm512_loadu_ps(o + r * d + c), w));
      }
    }
    _tile_release();
  }
}
#undef SAM_TILE_PRODUCT

template void qkv_amx_bf16<64, false>(const float*, const float*, const float*, const float*, int64_t, const float*,
                                      float*, const QkvGeometry&, float, int);
template void qkv_amx_bf16<64, true>(const float*, const float*, const float*, const float*, int64_t, const float*,
                                     float*, const QkvGeometry&, float, int);
template void qkv_amx_bf16<80, false>(const float*, const float*, const float*, const float*, int64_t, const float*,
                                      float*, const QkvGeometry&, float, int);
template void qkv_amx_bf16<80, true>(const float*, const float*, const float*, const float*, int64_t, const float*,
                                     float*, const QkvGeometry&, float, int);

}  // namespace attention
}  // namespace sam_edge
