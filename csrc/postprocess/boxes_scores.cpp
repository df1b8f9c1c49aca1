// Boxes of masks and their stability scores.
#include "postprocess_internal.h"

namespace sam_edge {

using namespace postprocess;

void masks_to_boxes(const uint8_t* masks, int64_t n, int64_t h, int64_t w, int64_t* boxes) {
  // The scan usually touches only the rows and the few columns outside the
  // box found so far, so the work is closer to n * h words than n * h * w bytes.
#pragma omp parallel for schedule(dynamic, 1) if (n > 1 && worth_parallel(n * h * 64))
  for (int64_t i = 0; i < n; ++i) {
    const uint8_t* m = masks + i * h * w;
    int64_t* box = boxes + 4 * i;
    auto row_any = [&](int64_t y) { return rfind_nonzero(m + y * w, 0, w) >= 0; };
    int64_t top = 0;
    while (top < h && !row_any(top)) ++top;
    if (top == h) {
      box[0] = box[1] = box[2] = box[3] = 0;
      continue;
    }
    int64_t bottom = h - 1;
    while (!row_any(bottom)) --bottom;
    int64_t left = w, right = -1;
    for (int64_t y = top; y <= bottom; ++y) {
      const uint8_t* row = m + y * w;
      // Only the columns outside the current box can move an edge.
      left = find_byte(row, 0, left, 1);
      right = std::max(right, rfind_nonzero(row, right + 1, w));
    }
    box[0] = left;
    box[1] = top;
    box[2] = right;
    box[3] = bottom;
  }
}

void stability_scores(const float* logits, int64_t n, int64_t hw, float hi, float lo,
                      float* scores) {
  constexpr int64_t kChunk = 1 << 16;
  const int64_t chunks = (hw + kChunk - 1) / kChunk;
  std::vector<int64_t> above_hi(n * chunks), above_lo(n * chunks);
#pragma omp parallel for schedule(static) if (worth_parallel(n * hw))
  for (int64_t t = 0; t < n * chunks; ++t) {
    const int64_t i = t / chunks, c = t % chunks;
    const float* x = logits + i * hw + c * kChunk;
    const int64_t len = std::min(kChunk, hw - c * kChunk);
    int32_t a = 0, b = 0;
#pragma omp simd reduction(+ : a, b)
    for (int64_t k = 0; k < len; ++k) {
      a += x[k] > hi;
      b += x[k] > lo;
    }
    above_hi[t] = a;
    above_lo[t] = b;
  }
  for (int64_t i = 0; i < n; ++i) {
    int64_t a = 0, b = 0;
    for (int64_t c = 0; c < chunks; ++c) {
      a += above_hi[i * chunks + c];
      b += above_lo[i * chunks + c];
    }
    scores[i] = static_cast<float>(a) / static_cast<float>(b);
  }
}

}  // namespace sam_edge
