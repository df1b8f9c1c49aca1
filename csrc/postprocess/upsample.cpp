// The fused upsample: torch's bilinear resize, the threshold, the stability
// score and the box of each mask in one pass over the output.
#include "postprocess_internal.h"

namespace sam_edge {

using namespace postprocess;

namespace {

// One axis of torch's bilinear resize (align_corners=False, no scale factor):
// output i reads inputs i0, i1 with weights l0, l1, as ATen's
// compute_indices_weights_linear computes them in float32. The source
// coordinate uses a fused multiply-add, as torch's AVX2/AVX-512 (and aarch64)
// builds do; rounding it separately moves coordinates by an ulp (~6e-5 near
// 1024), which shows as ~1e-4 logit differences on steep masks.
struct LinearAxis {
  std::vector<int32_t> i0, i1;
  std::vector<float> l0, l1;
  LinearAxis(int64_t in, int64_t out) : i0(out), i1(out), l0(out), l1(out) {
    const float scale = static_cast<float>(in) / static_cast<float>(out);
    for (int64_t i = 0; i < out; ++i) {
      float src = std::fma(scale, static_cast<float>(i) + 0.5f, -0.5f);
      if (src < 0.0f) src = 0.0f;
      const int64_t idx = std::min<int64_t>(static_cast<int64_t>(std::floor(src)), in - 1);
      const float lambda = std::min(std::max(src - static_cast<float>(idx), 0.0f), 1.0f);
      i0[i] = static_cast<int32_t>(idx);
      i1[i] = static_cast<int32_t>(idx + (idx < in - 1 ? 1 : 0));
      l0[i] = 1.0f - lambda;
      l1[i] = lambda;
    }
  }
};

// Two cached rows keyed by an index; `get` fills a missing row with `fill`
// into the slot that does not hold `keep`.
struct TwoRows {
  int64_t key[2] = {-1, -1};
  std::vector<float> row[2];
  explicit TwoRows(int64_t len) : row{std::vector<float>(len), std::vector<float>(len)} {}
  template <typename Fill>
  const float* get(int64_t k, int64_t keep, Fill&& fill) {
    for (int s = 0; s < 2; ++s)
      if (key[s] == k) return row[s].data();
    const int s = key[0] == keep ? 1 : 0;
    fill(k, row[s].data());
    key[s] = k;
    return row[s].data();
  }
};

}  // namespace

void upsample_threshold_stability(const float* low_res, int64_t n, const UpsampleGeometry& g,
                                  float threshold, float hi, float lo, uint8_t* masks,
                                  float* logits, float* stability, int64_t* boxes) {
  const LinearAxis fy(g.in_h, g.frame_h), fx(g.in_w, g.frame_w);  // low-res -> frame
  const LinearAxis oy(g.crop_h, g.out_h), ox(g.crop_w, g.out_w);  // crop -> output
  const int64_t H = g.out_h, W = g.out_w, cw = g.crop_w;
  // Bands of rows, so that one large map still uses every thread; each band
  // keeps its own counts and box, reduced afterwards.
  // Each output pixel costs a few loads and flops: parallel from ~1M pixels.
  const bool parallel = worth_parallel(4 * n * H * W);
  const int64_t bands = parallel ? std::max<int64_t>(1, std::min<int64_t>(H, 4 * max_threads())) : 1;
  const int64_t band_rows = (H + bands - 1) / bands;
  const int64_t tasks = n * bands;
  std::vector<int64_t> part_hi(tasks, 0), part_lo(tasks, 0), part_box(4 * tasks);

#pragma omp parallel if (parallel)
  {
    // The per-pixel formula is
    //   out[y, x] = (P[Y0][X0] * u0 + P[Y0][X1] * u1) * v0 + (P[Y1][X0] * u0 + P[Y1][X1] * u1) * v1
    //   P[Y][X]   = (L[a0][b0] * w0 + L[a0][b1] * w1) * t0 + (L[a1][b0] * w0 + L[a1][b1] * w1) * t1
    // evaluated in this order. Its bracketed horizontal terms depend on one
    // row only, so they are cached per row: G (low-res row a), S (frame row Y).
    TwoRows g_rows(cw), s_rows(W);
    std::vector<float> frame_row(cw), value_row(W);
    std::vector<uint8_t> mask_row(W);
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < tasks; ++t) {
      const int64_t i = t / bands, band = t % bands;
      const float* L = low_res + i * g.in_h * g.in_w;
      g_rows.key[0] = g_rows.key[1] = s_rows.key[0] = s_rows.key[1] = -1;
      auto fill_g = [&](int64_t a, float* dst) {
        const float* r = L + a * g.in_w;
        for (int64_t X = 0; X < cw; ++X) dst[X] = r[fx.i0[X]] * fx.l0[X] + r[fx.i1[X]] * fx.l1[X];
      };
      auto fill_s = [&](int64_t Y, float* dst) {
        const float* g0 = g_rows.get(fy.i0[Y], fy.i1[Y], fill_g);
        const float* g1 = g_rows.get(fy.i1[Y], fy.i0[Y], fill_g);
        const float t0 = fy.l0[Y], t1 = fy.l1[Y];
        float* p = frame_row.data();
#pragma omp simd
        for (int64_t X = 0; X < cw; ++X) p[X] = g0[X] * t0 + g1[X] * t1;
        for (int64_t x = 0; x < W; ++x) dst[x] = p[ox.i0[x]] * ox.l0[x] + p[ox.i1[x]] * ox.l1[x];
      };
      int64_t n_hi = 0, n_lo = 0;
      int64_t top = H, bottom = -1, left = W, right = -1;
      const int64_t y_begin = band * band_rows, y_end = std::min(H, y_begin + band_rows);
      for (int64_t y = y_begin; y < y_end; ++y) {
        const float* s0 = s_rows.get(oy.i0[y], oy.i1[y], fill_s);
        const float* s1 = s_rows.get(oy.i1[y], oy.i0[y], fill_s);
        const float v0 = oy.l0[y], v1 = oy.l1[y];
        float* value = logits ? logits + (i * H + y) * W : value_row.data();
        uint8_t* m = masks ? masks + (i * H + y) * W : mask_row.data();
        int32_t row_hi = 0, row_lo = 0;
#pragma omp simd reduction(+ : row_hi, row_lo)
        for (int64_t x = 0; x < W; ++x) {
          const float v = s0[x] * v0 + s1[x] * v1;
          value[x] = v;
          m[x] = v > threshold;
          row_hi += v > hi;
          row_lo += v > lo;
        }
        n_hi += row_hi;
        n_lo += row_lo;
        const int64_t first = find_byte(m, 0, W, 1);
        if (first < W) {
          top = std::min(top, y);
          bottom = y;
          left = std::min(left, first);
          right = std::max(right, rfind_nonzero(m, first, W));
        }
      }
      part_hi[t] = n_hi;
      part_lo[t] = n_lo;
      part_box[4 * t + 0] = left;
      part_box[4 * t + 1] = top;
      part_box[4 * t + 2] = right;
      part_box[4 * t + 3] = bottom;
    }
  }

  for (int64_t i = 0; i < n; ++i) {
    int64_t a = 0, b = 0, left = W, top = H, right = -1, bottom = -1;
    for (int64_t band = 0; band < bands; ++band) {
      const int64_t t = i * bands + band;
      a += part_hi[t];
      b += part_lo[t];
      left = std::min(left, part_box[4 * t + 0]);
      top = std::min(top, part_box[4 * t + 1]);
      right = std::max(right, part_box[4 * t + 2]);
      bottom = std::max(bottom, part_box[4 * t + 3]);
    }
    stability[i] = static_cast<float>(a) / static_cast<float>(b);
    int64_t* box = boxes + 4 * i;
    if (right < 0) {
      box[0] = box[1] = box[2] = box[3] = 0;
    } else {
      box[0] = left;
      box[1] = top;
      box[2] = right;
      box[3] = bottom;
    }
  }
}

}  // namespace sam_edge
