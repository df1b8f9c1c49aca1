// Mask upscaling; see mask_upscale.h. The AVX-512 path holds a tile's 32 pixels
// in the lanes of two registers (two strips of up to 16 pixels, each within one
// grid row): every channel is a row of 32 floats, so both ConvTransposes are
// register-blocked products against packed weights, LayerNorm and the
// hypernetwork product are sums down the rows, and only the source tile is
// transposed on the way in. The portable path is the same math per pixel.
#include "mask_upscale.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <functional>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

#include "gelu_avx512.h"

namespace sam_edge {
namespace {

struct Geometry {
  int64_t src_batch, batch, tokens, height, width, channels, c1, c2;
};

// Phi through erfc, accurate in both tails, where 1 + erf(x) cancels.
float gelu_scalar(float x) { return x * (0.5f * std::erfc(-x * 0.70710678118654752f)); }

// ConvTranspose2d(kernel 2, stride 2) weight (in, out, 2, 2) at [k, o, sub], sub = 2a + b.
inline float conv_weight(const float* w, int64_t out_channels, int64_t k, int64_t o, int64_t sub) {
  return w[(k * out_channels + o) * 4 + sub];
}

// Per-thread scratch, kept between calls: the host's pool threads live as long
// as the session, and a fresh allocation of this size per task would be mapped
// and faulted in every time. 64-byte aligned.
float* thread_scratch(int64_t floats) {
  struct Buffer {
    float* data = nullptr;
    int64_t size = 0;
    ~Buffer() { std::free(data); }
  };
  thread_local Buffer buffer;
  if (buffer.size < floats) {
    std::free(buffer.data);
    buffer.data = static_cast<float*>(std::aligned_alloc(64, ((floats * 4 + 63) / 64) * 64));
    buffer.size = buffer.data ? floats : 0;
    if (!buffer.data) throw std::bad_alloc();
  }
  return buffer.data;
}

// ---- portable ----

// One pixel of src batch s: all five steps, then every prompt's logits.
void pixel_portable(const float* src, const float* hyper, const MaskUpscaleWeights& wt, float* out,
                    const Geometry& g, float epsilon, int64_t item) {
  const int64_t C = g.channels, c1 = g.c1, c2 = g.c2, pixels = g.height * g.width, out_w = 4 * g.width;
  float* x1 = thread_scratch(4 * c1 + 16 * c2);
  float* x2 = x1 + 4 * c1;
  const int64_t s = item / pixels, p = item % pixels, i = p / g.width, j = p % g.width;
  const float* x = src + item * C;
  for (int64_t sub = 0; sub < 4; ++sub)
    for (int64_t o = 0; o < c1; ++o) {
      float acc = wt.conv1_bias[o];
      for (int64_t c = 0; c < C; ++c) acc += x[c] * conv_weight(wt.conv1_weight, c1, c, o, sub);
      x1[sub * c1 + o] = acc;
    }
  for (int64_t sub = 0; sub < 4; ++sub) {
    float* y = x1 + sub * c1;
    float mean = 0.0f, var = 0.0f;
    for (int64_t o = 0; o < c1; ++o) mean += y[o];
    mean /= static_cast<float>(c1);
    for (int64_t o = 0; o < c1; ++o) var += (y[o] - mean) * (y[o] - mean);
    const float inv_std = 1.0f / std::sqrt(var / static_cast<float>(c1) + epsilon);
    for (int64_t o = 0; o < c1; ++o) y[o] = gelu_scalar((y[o] - mean) * inv_std * wt.norm_weight[o] + wt.norm_bias[o]);
  }
  for (int64_t sub = 0; sub < 4; ++sub)
    for (int64_t q = 0; q < 4; ++q)
      for (int64_t o = 0; o < c2; ++o) {
        float acc = wt.conv2_bias[o];
        for (int64_t k = 0; k < c1; ++k) acc += x1[sub * c1 + k] * conv_weight(wt.conv2_weight, c2, k, o, q);
        x2[(sub * 4 + q) * c2 + o] = gelu_scalar(acc);
      }
  const int64_t first = g.src_batch == 1 ? 0 : s, last = g.src_batch == 1 ? g.batch : s + 1;
  for (int64_t b = first; b < last; ++b)
    for (int64_t t = 0; t < g.tokens; ++t) {
      const float* h = hyper + (b * g.tokens + t) * c2;
      float* plane = out + (b * g.tokens + t) * 16 * pixels;
      for (int64_t sub = 0; sub < 4; ++sub)
        for (int64_t q = 0; q < 4; ++q) {
          float acc = 0.0f;
          for (int64_t o = 0; o < c2; ++o) acc += x2[(sub * 4 + q) * c2 + o] * h[o];
          const int64_t row = 4 * i + 2 * (sub >> 1) + (q >> 1), col = 4 * j + 2 * (sub & 1) + (q & 1);
          plane[row * out_w + col] = acc;
        }
    }
}

// ---- AVX-512 ----

constexpr int kStrip = 16;  // pixels of one grid row, one register
constexpr int kLanes = 32;  // two strips per tile
constexpr int kBlock = 8;   // output channels per register block: 16 accumulators

// The weights as kBlock-column panels, (columns / kBlock, K, kBlock), and the
// biases per column: the products' broadcasts then read consecutive floats.
struct PackedWeights {
  std::vector<float> w1, bias1, w2, bias2;
};

PackedWeights pack(const MaskUpscaleWeights& wt, const Geometry& g) {
  const int64_t C = g.channels, c1 = g.c1, c2 = g.c2, n1 = 4 * c1, n2 = 4 * c2;
  PackedWeights p{std::vector<float>(C * n1), std::vector<float>(n1), std::vector<float>(c1 * n2),
                  std::vector<float>(n2)};
  // Column n = sub * c_out + o: the sub-pixel's channels are consecutive rows of the tile.
  for (int64_t n = 0; n < n1; ++n) {
    const int64_t sub = n / c1, o = n % c1;
    p.bias1[n] = wt.conv1_bias[o];
    for (int64_t c = 0; c < C; ++c) p.w1[((n / kBlock) * C + c) * kBlock + n % kBlock] = conv_weight(wt.conv1_weight, c1, c, o, sub);
  }
  for (int64_t n = 0; n < n2; ++n) {
    const int64_t q = n / c2, o = n % c2;
    p.bias2[n] = wt.conv2_bias[o];
    for (int64_t k = 0; k < c1; ++k) p.w2[((n / kBlock) * c1 + k) * kBlock + n % kBlock] = conv_weight(wt.conv2_weight, c2, k, o, q);
  }
  return p;
}

// The strip `index` of the grid: its row, first column and pixel count (0 past the end).
struct Strip {
  int64_t row, col, count;
};

Strip strip_at(int64_t index, int64_t strips, int64_t width) {
  if (index >= strips) return {0, 0, 0};
  const int64_t per_row = (width + kStrip - 1) / kStrip;
  const int64_t row = index / per_row, col = (index % per_row) * kStrip;
  return {row, col, std::min<int64_t>(kStrip, width - col)};
}

// In-register 16 x 16 transpose: stage d swaps bit d of the row and column indexes.
SAM_EDGE_AVX512 inline void transpose16(__m512 r[16]) {
  for (int d = 1; d < 16; d <<= 1) {
    alignas(64) int32_t low[16], high[16];
    for (int k = 0; k < 16; ++k) {
      low[k] = (k & d) ? 16 + k - d : k;
      high[k] = (k & d) ? 16 + k : k + d;
    }
    const __m512i index_low = _mm512_load_si512(low), index_high = _mm512_load_si512(high);
    for (int a = 0; a < 16; ++a) {
      if (a & d) continue;
      const __m512 x = r[a], y = r[a + d];
      r[a] = _mm512_permutex2var_ps(x, index_low, y);
      r[a + d] = _mm512_permutex2var_ps(x, index_high, y);
    }
  }
}

// tile[c][h * 16 + l] = pixel l of strip h, channel c; lanes past a strip's pixels are 0.
SAM_EDGE_AVX512 void load_tile(const float* src, const Strip strips[2], int64_t width, int64_t C, float* tile) {
  for (int h = 0; h < 2; ++h) {
    const float* base = src + (strips[h].row * width + strips[h].col) * C;
    for (int64_t c0 = 0; c0 < C; c0 += 16) {
      __m512 r[16];
      for (int l = 0; l < 16; ++l) r[l] = l < strips[h].count ? _mm512_loadu_ps(base + l * C + c0) : _mm512_setzero_ps();
      transpose16(r);
      for (int m = 0; m < 16; ++m) _mm512_store_ps(tile + (c0 + m) * kLanes + h * kStrip, r[m]);
    }
  }
}

// out[m][:] = bias[m] + sum_k w[k][m] * in[k][:] for kBlock rows m, gelu'd when asked.
template <bool kGelu>
SAM_EDGE_AVX512 inline void block_product(const float* w, const float* bias, const float* in, float* out, int64_t K) {
  __m512 acc[kBlock][2];
#pragma GCC unroll 8
  for (int m = 0; m < kBlock; ++m) acc[m][0] = acc[m][1] = _mm512_set1_ps(bias[m]);
  for (int64_t k = 0; k < K; ++k) {
    const __m512 x0 = _mm512_load_ps(in + k * kLanes), x1 = _mm512_load_ps(in + k * kLanes + 16);
#pragma GCC unroll 8
    for (int m = 0; m < kBlock; ++m) {
      const __m512 wm = _mm512_set1_ps(w[k * kBlock + m]);
      acc[m][0] = _mm512_fmadd_ps(wm, x0, acc[m][0]);
      acc[m][1] = _mm512_fmadd_ps(wm, x1, acc[m][1]);
    }
  }
#pragma GCC unroll 8
  for (int m = 0; m < kBlock; ++m) {
    _mm512_store_ps(out + m * kLanes, kGelu ? gelu_avx512(acc[m][0]) : acc[m][0]);
    _mm512_store_ps(out + m * kLanes + 16, kGelu ? gelu_avx512(acc[m][1]) : acc[m][1]);
  }
}

// LayerNorm over each sub-pixel's c1 rows, then gelu, in place.
SAM_EDGE_AVX512 void norm_gelu(float* x1, const MaskUpscaleWeights& wt, int64_t c1, float epsilon) {
  const __m512 count = _mm512_set1_ps(static_cast<float>(c1)), eps = _mm512_set1_ps(epsilon);
  for (int64_t sub = 0; sub < 4; ++sub) {
    float* x = x1 + sub * c1 * kLanes;
    for (int h = 0; h < 2; ++h) {
      __m512 sum = _mm512_setzero_ps();
      for (int64_t o = 0; o < c1; ++o) sum = _mm512_add_ps(sum, _mm512_load_ps(x + o * kLanes + h * kStrip));
      const __m512 mean = _mm512_div_ps(sum, count);
      __m512 squares = _mm512_setzero_ps();
      for (int64_t o = 0; o < c1; ++o) {
        const __m512 centred = _mm512_sub_ps(_mm512_load_ps(x + o * kLanes + h * kStrip), mean);
        squares = _mm512_fmadd_ps(centred, centred, squares);
      }
      const __m512 inv_std =
          _mm512_div_ps(_mm512_set1_ps(1.0f), _mm512_sqrt_ps(_mm512_add_ps(_mm512_div_ps(squares, count), eps)));
      for (int64_t o = 0; o < c1; ++o) {
        float* row = x + o * kLanes + h * kStrip;
        const __m512 normed = _mm512_mul_ps(_mm512_sub_ps(_mm512_load_ps(row), mean), inv_std);
        _mm512_store_ps(row, gelu_avx512(_mm512_fmadd_ps(normed, _mm512_set1_ps(wt.norm_weight[o]),
                                                         _mm512_set1_ps(wt.norm_bias[o]))));
      }
    }
  }
}

// out[4 l + c] = v[c][l] for 16 lanes l of 4 registers: 64 consecutive floats.
SAM_EDGE_AVX512 inline void interleave4(const __m512 v[4], __m512 out[4]) {
  alignas(64) int32_t pair_low[16], pair_high[16], quad[4][16];
  for (int k = 0; k < 16; ++k) {
    pair_low[k] = (k & 1) ? 16 + k / 2 : k / 2;
    pair_high[k] = (k & 1) ? 24 + k / 2 : 8 + k / 2;
    for (int part = 0; part < 2; ++part) {
      const int p = 4 * part + k / 4, c = k % 4;
      quad[part][k] = c < 2 ? 2 * p + c : 16 + 2 * p + c - 2;
    }
  }
  const __m512i low = _mm512_load_si512(pair_low), high = _mm512_load_si512(pair_high);
  const __m512 v01_low = _mm512_permutex2var_ps(v[0], low, v[1]), v01_high = _mm512_permutex2var_ps(v[0], high, v[1]);
  const __m512 v23_low = _mm512_permutex2var_ps(v[2], low, v[3]), v23_high = _mm512_permutex2var_ps(v[2], high, v[3]);
  const __m512i first = _mm512_load_si512(quad[0]), second = _mm512_load_si512(quad[1]);
  out[0] = _mm512_permutex2var_ps(v01_low, first, v23_low);
  out[1] = _mm512_permutex2var_ps(v01_low, second, v23_low);
  out[2] = _mm512_permutex2var_ps(v01_high, first, v23_high);
  out[3] = _mm512_permutex2var_ps(v01_high, second, v23_high);
}

// One prompt token's logits for the tile, written to its (4h, 4w) plane.
SAM_EDGE_AVX512 void token_logits(const float* x2, const float* h, const Strip strips[2], int64_t c2, int64_t width,
                                  float* plane) {
  const int64_t n2 = 4 * c2, out_w = 4 * width;
  alignas(64) float logits[4][4][kLanes];  // [sub = 2 a1 + b1][q = 2 a2 + b2][lane]
  for (int sub = 0; sub < 4; ++sub) {
    __m512 acc[4][2];
    for (int q = 0; q < 4; ++q) acc[q][0] = acc[q][1] = _mm512_setzero_ps();
    const float* x = x2 + sub * n2 * kLanes;
    for (int64_t o = 0; o < c2; ++o) {
      const __m512 ho = _mm512_set1_ps(h[o]);
#pragma GCC unroll 4
      for (int q = 0; q < 4; ++q) {
        const float* row = x + (q * c2 + o) * kLanes;
        acc[q][0] = _mm512_fmadd_ps(ho, _mm512_load_ps(row), acc[q][0]);
        acc[q][1] = _mm512_fmadd_ps(ho, _mm512_load_ps(row + 16), acc[q][1]);
      }
    }
    for (int q = 0; q < 4; ++q) {
      _mm512_store_ps(logits[sub][q], acc[q][0]);
      _mm512_store_ps(logits[sub][q] + 16, acc[q][1]);
    }
  }
  for (int s = 0; s < 2; ++s) {
    if (strips[s].count == 0) continue;
    for (int a1 = 0; a1 < 2; ++a1)
      for (int a2 = 0; a2 < 2; ++a2) {
        __m512 v[4], row[4];
        for (int b1 = 0; b1 < 2; ++b1)
          for (int b2 = 0; b2 < 2; ++b2) v[2 * b1 + b2] = _mm512_load_ps(logits[2 * a1 + b1][2 * a2 + b2] + s * kStrip);
        interleave4(v, row);
        float* dst = plane + (4 * strips[s].row + 2 * a1 + a2) * out_w + 4 * strips[s].col;
        for (int r = 0; r < 4; ++r) {
          const int64_t valid = std::clamp<int64_t>(4 * strips[s].count - 16 * r, 0, 16);
          if (valid > 0) _mm512_mask_storeu_ps(dst + 16 * r, static_cast<__mmask16>((1u << valid) - 1), row[r]);
        }
      }
  }
}

// Tile `item` (src batch, pair of strips) through every step, then every prompt's logits.
SAM_EDGE_AVX512 void tile_avx512(const float* src, const float* hyper, const MaskUpscaleWeights& wt,
                                 const PackedWeights& packed, float* out, const Geometry& g, float epsilon,
                                 int64_t item) {
  const int64_t C = g.channels, c1 = g.c1, c2 = g.c2, n1 = 4 * c1, n2 = 4 * c2, pixels = g.height * g.width;
  const int64_t strips = g.height * ((g.width + kStrip - 1) / kStrip), tiles = (strips + 1) / 2;
  float* tile = thread_scratch((C + n1 + 4 * n2) * kLanes);
  float* x1 = tile + C * kLanes;
  float* x2 = x1 + n1 * kLanes;
  const int64_t s = item / tiles, index = item % tiles;
  const Strip pair[2] = {strip_at(2 * index, strips, g.width), strip_at(2 * index + 1, strips, g.width)};
  load_tile(src + s * pixels * C, pair, g.width, C, tile);
  for (int64_t nb = 0; nb < n1 / kBlock; ++nb)
    block_product<false>(packed.w1.data() + nb * C * kBlock, packed.bias1.data() + nb * kBlock, tile,
                         x1 + nb * kBlock * kLanes, C);
  norm_gelu(x1, wt, c1, epsilon);
  for (int64_t sub = 0; sub < 4; ++sub)
    for (int64_t nb = 0; nb < n2 / kBlock; ++nb)
      block_product<true>(packed.w2.data() + nb * c1 * kBlock, packed.bias2.data() + nb * kBlock, x1 + sub * c1 * kLanes,
                          x2 + (sub * n2 + nb * kBlock) * kLanes, c1);
  const int64_t first = g.src_batch == 1 ? 0 : s, last = g.src_batch == 1 ? g.batch : s + 1;
  for (int64_t b = first; b < last; ++b)
    for (int64_t t = 0; t < g.tokens; ++t)
      token_logits(x2, hyper + (b * g.tokens + t) * c2, pair, c2, g.width, out + (b * g.tokens + t) * 16 * pixels);
}

SAM_EDGE_AVX512 void gelu_avx512_n(const float* x, float* out, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 lanes = n - i >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << (n - i)) - 1);
    _mm512_mask_storeu_ps(out + i, lanes, gelu_avx512(_mm512_maskz_loadu_ps(lanes, x + i)));
  }
}

}  // namespace

bool mask_upscale_has_avx512() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
         __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
}

void mask_upscale_cpu(const float* src, const float* hyper_in, const MaskUpscaleWeights& weights, float* out,
                      int64_t src_batch, int64_t batch, int64_t tokens, int64_t height, int64_t width,
                      int64_t channels, float epsilon, int threads, bool force_portable,
                      const TaskRunner* runner) {
  if (batch < 1 || tokens < 1 || height < 1 || width < 1)
    throw std::invalid_argument("mask_upscale: batch, tokens, height and width must be >= 1");
  if (channels < 8 || channels % 8 != 0)
    throw std::invalid_argument("mask_upscale: channels must be a positive multiple of 8 (C / 4 and C / 8 "
                                "channels after each ConvTranspose); got " + std::to_string(channels));
  if (src_batch != 1 && src_batch != batch)
    throw std::invalid_argument("mask_upscale: src's batch must be 1 or hyper_in's (" + std::to_string(batch) +
                                "); got " + std::to_string(src_batch));
  if (!(epsilon >= 0.0f) || !std::isfinite(epsilon))
    throw std::invalid_argument("mask_upscale: epsilon must be finite and >= 0");
  const Geometry g{src_batch, batch, tokens, height, width, channels, channels / 4, channels / 8};
  const Workers workers = make_workers(threads, runner);
  if (!force_portable && channels % 16 == 0 && mask_upscale_has_avx512()) {
    const PackedWeights packed = pack(weights, g);
    const int64_t tiles = (height * ((width + kStrip - 1) / kStrip) + 1) / 2;
    parallel_for(workers, src_batch * tiles, 1, [&](int64_t item, int64_t) {
      tile_avx512(src, hyper_in, weights, packed, out, g, epsilon, item);
    });
  } else {
    parallel_for(workers, src_batch * height * width, 1, [&](int64_t item, int64_t) {
      pixel_portable(src, hyper_in, weights, out, g, epsilon, item);
    });
  }
}

void mask_upscale_gelu_cpu(const float* x, float* out, int64_t n, bool force_portable) {
  if (n < 0) throw std::invalid_argument("mask_upscale_gelu: n must be >= 0");
  if (!force_portable && mask_upscale_has_avx512()) {
    gelu_avx512_n(x, out, n);
    return;
  }
  for (int64_t i = 0; i < n; ++i) out[i] = gelu_scalar(x[i]);
}

}  // namespace sam_edge
