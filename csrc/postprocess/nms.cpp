// Greedy NMS within categories, repeating the reference's float32 operations.
#include "postprocess_internal.h"

namespace sam_edge {

using namespace postprocess;

int64_t batched_nms(const float* boxes, const float* scores, const int64_t* categories,
                    int64_t n, double iou_threshold, bool offset_trick, int64_t* keep) {
  if (n == 0) return 0;
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return scores[a] > scores[b]; });
  float offset_unit = 0.0f;
  if (offset_trick) {
    float max_coordinate = boxes[0];
    for (int64_t k = 1; k < 4 * n; ++k) max_coordinate = std::max(max_coordinate, boxes[k]);
    offset_unit = max_coordinate + 1.0f;
  }
  // Dense 32-bit category codes, so every lane of the inner loop is 32 bits wide.
  std::vector<int64_t> distinct(categories, categories + n);
  std::sort(distinct.begin(), distinct.end());
  distinct.erase(std::unique(distinct.begin(), distinct.end()), distinct.end());
  // Structure-of-arrays in score order so the inner loop vectorises.
  std::vector<float> x1(n), y1(n), x2(n), y2(n), area(n);
  std::vector<int32_t> cat(n);
  for (int64_t s = 0; s < n; ++s) {
    const int64_t i = order[s];
    const float offset = offset_trick ? static_cast<float>(categories[i]) * offset_unit : 0.0f;
    x1[s] = boxes[4 * i + 0] + offset;
    y1[s] = boxes[4 * i + 1] + offset;
    x2[s] = boxes[4 * i + 2] + offset;
    y2[s] = boxes[4 * i + 3] + offset;
    area[s] = (x2[s] - x1[s]) * (y2[s] - y1[s]);
    cat[s] = offset_trick ? 0
                          : static_cast<int32_t>(std::lower_bound(distinct.begin(), distinct.end(), categories[i]) -
                                                 distinct.begin());
  }
  // torchvision compares the float IoU with the double threshold; for a float
  // o, o > t holds exactly when o > the largest float not above t.
  float threshold = static_cast<float>(iou_threshold);
  if (static_cast<double>(threshold) > iou_threshold)
    threshold = std::nextafter(threshold, -std::numeric_limits<float>::infinity());
  std::vector<int32_t> suppressed(n, 0);
  int64_t kept = 0;
  for (int64_t s = 0; s < n; ++s) {
    if (suppressed[s]) continue;
    keep[kept++] = order[s];
    const float ix1 = x1[s], iy1 = y1[s], ix2 = x2[s], iy2 = y2[s], iarea = area[s];
    const int32_t icat = cat[s];
    const float *px1 = x1.data(), *py1 = y1.data(), *px2 = x2.data(), *py2 = y2.data(), *parea = area.data();
    const int32_t* pcat = cat.data();
    int32_t* sup = suppressed.data();
#pragma omp simd
    for (int64_t t = s + 1; t < n; ++t) {
      const float xx1 = std::max(ix1, px1[t]);
      const float yy1 = std::max(iy1, py1[t]);
      const float xx2 = std::min(ix2, px2[t]);
      const float yy2 = std::min(iy2, py2[t]);
      const float iw = std::max(0.0f, xx2 - xx1);
      const float ih = std::max(0.0f, yy2 - yy1);
      const float inter = iw * ih;
      const float iou = inter / (iarea + parea[t] - inter);
      sup[t] |= static_cast<int32_t>(iou > threshold) & static_cast<int32_t>(pcat[t] == icat);
    }
  }
  // torchvision's per-category path re-sorts the kept set by score; ties come
  // out in index order, which is already the order of `order`.
  return kept;
}

}  // namespace sam_edge
