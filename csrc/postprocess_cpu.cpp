// CPU kernels of sam-edge post-processing. See postprocess.h for the contract.
//
// Built with -ffp-contract=off: several ops must reproduce another library's
// float32 arithmetic operation by operation, and a fused multiply-add would
// round differently.
#include "postprocess.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace sam_edge {

int max_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

namespace {

constexpr uint64_t kOnes = 0x0101010101010101ULL;  // eight bytes holding 1

inline uint64_t load8(const uint8_t* p) {
  uint64_t x;
  std::memcpy(&x, p, 8);
  return x;
}

inline int ctz64(uint64_t x) { return __builtin_ctzll(x); }
inline int clz64(uint64_t x) { return __builtin_clzll(x); }

// Packs up to 64 bytes (each 0 or 1) into a word, byte i -> bit i.
inline uint64_t pack_bits(const uint8_t* p, int64_t count) {
  uint64_t word = 0;
  int64_t i = 0;
  for (; i + 8 <= count; i += 8) {
    // For bytes that are 0 or 1 the product gathers byte k into bit 56 + k.
    word |= ((load8(p + i) * 0x0102040810204080ULL) >> 56) << i;
  }
  for (; i < count; ++i) word |= static_cast<uint64_t>(p[i] & 1) << i;
  return word;
}

// In-place transpose of a 64x64 bit matrix: bit c of a[r] <-> bit r of a[c].
inline void transpose64(uint64_t a[64]) {
  uint64_t m = 0x00000000FFFFFFFFULL;
  for (int j = 32; j != 0; j >>= 1, m ^= (m << j)) {
    for (int k = 0; k < 64; k = ((k | j) + 1) & ~j) {
      const uint64_t t = ((a[k] >> j) ^ a[k | j]) & m;
      a[k] ^= (t << j);
      a[k | j] ^= t;
    }
  }
}

// 8 bits -> 8 bytes of 0/1.
struct SpreadTable {
  uint64_t v[256];
  SpreadTable() {
    for (int b = 0; b < 256; ++b) {
      uint64_t x = 0;
      for (int i = 0; i < 8; ++i) x |= static_cast<uint64_t>((b >> i) & 1) << (8 * i);
      v[b] = x;
    }
  }
};
const SpreadTable kSpread;

// Column bit-planes of one mask: word (x, j) holds rows 64j..64j+63 of column x.
void mask_to_column_bits(const uint8_t* mask, int64_t h, int64_t w, uint64_t* cols) {
  const int64_t h64 = (h + 63) / 64, w64 = (w + 63) / 64;
  uint64_t tile[64];
  for (int64_t j = 0; j < h64; ++j) {
    const int64_t rows = std::min<int64_t>(64, h - 64 * j);
    for (int64_t k = 0; k < w64; ++k) {
      const int64_t width = std::min<int64_t>(64, w - 64 * k);
      for (int64_t r = 0; r < 64; ++r)
        tile[r] = r < rows ? pack_bits(mask + (64 * j + r) * w + 64 * k, width) : 0;
      transpose64(tile);
      for (int64_t c = 0; c < width; ++c) cols[(64 * k + c) * h64 + j] = tile[c];
    }
  }
}

void column_bits_to_mask(const uint64_t* cols, int64_t h, int64_t w, uint8_t* mask) {
  const int64_t h64 = (h + 63) / 64, w64 = (w + 63) / 64;
  uint64_t tile[64];
  for (int64_t j = 0; j < h64; ++j) {
    const int64_t rows = std::min<int64_t>(64, h - 64 * j);
    for (int64_t k = 0; k < w64; ++k) {
      const int64_t width = std::min<int64_t>(64, w - 64 * k);
      for (int64_t c = 0; c < 64; ++c) tile[c] = c < width ? cols[(64 * k + c) * h64 + j] : 0;
      transpose64(tile);
      for (int64_t r = 0; r < rows; ++r) {
        uint8_t* out = mask + (64 * j + r) * w + 64 * k;
        const uint64_t word = tile[r];
        int64_t c = 0;
        for (; c + 8 <= width; c += 8) {
          const uint64_t bytes = kSpread.v[(word >> c) & 0xFF];
          std::memcpy(out + c, &bytes, 8);
        }
        for (; c < width; ++c) out[c] = (word >> c) & 1;
      }
    }
  }
}

void encode_one(const uint8_t* mask, int64_t h, int64_t w, std::vector<uint32_t>& counts) {
  counts.clear();
  const int64_t h64 = (h + 63) / 64;
  std::vector<uint64_t> cols(static_cast<size_t>(std::max<int64_t>(1, w * h64)));
  mask_to_column_bits(mask, h, w, cols.data());
  // Walk the column-major bit stream; a run ends at every bit that differs
  // from the one before it. The stream starts in state 0, so a mask whose
  // first pixel is set begins with a zero-length run, as pycocotools does.
  int64_t pos = 0, run_start = 0;
  uint64_t current = 0;
  for (int64_t x = 0; x < w; ++x) {
    for (int64_t j = 0; j < h64; ++j) {
      const int64_t nbits = std::min<int64_t>(64, h - 64 * j);
      const uint64_t valid = nbits == 64 ? ~0ULL : ((1ULL << nbits) - 1);
      const uint64_t word = cols[x * h64 + j] & valid;
      uint64_t changes = (word ^ ((word << 1) | current)) & valid;
      while (changes) {
        const int64_t at = pos + ctz64(changes);
        counts.push_back(static_cast<uint32_t>(at - run_start));
        run_start = at;
        changes &= changes - 1;
      }
      current = (word >> (nbits - 1)) & 1;
      pos += nbits;
    }
  }
  counts.push_back(static_cast<uint32_t>(pos - run_start));
}

// Sets bits [y0, y1) of column x.
inline void set_column_range(uint64_t* cols, int64_t h64, int64_t x, int64_t y0, int64_t y1) {
  uint64_t* col = cols + x * h64;
  while (y0 < y1) {
    const int64_t j = y0 >> 6, b = y0 & 63;
    const int64_t n = std::min<int64_t>(64 - b, y1 - y0);
    const uint64_t bits = n == 64 ? ~0ULL : (((1ULL << n) - 1) << b);
    col[j] |= bits;
    y0 += n;
  }
}

// ---- byte scanning for runs ----

// First index in [i, end) whose byte equals v (0 or 1), or end.
inline int64_t find_byte(const uint8_t* row, int64_t i, int64_t end, uint8_t v) {
  const uint64_t other = v ? 0 : kOnes;  // eight bytes that all differ from v
  while (i + 8 <= end) {
    const uint64_t x = load8(row + i) ^ other;
    if (x) return i + (ctz64(x) >> 3);
    i += 8;
  }
  while (i < end && row[i] != v) ++i;
  return i;
}

// Last index in [begin, end) holding a nonzero byte, or begin - 1.
inline int64_t rfind_nonzero(const uint8_t* row, int64_t begin, int64_t end) {
  int64_t i = end;
  while (i - 8 >= begin) {
    const uint64_t x = load8(row + i - 8);
    if (x) return i - 8 + ((63 - clz64(x)) >> 3);
    i -= 8;
  }
  while (i > begin && row[i - 1] == 0) --i;
  return i - 1;
}

struct Run {
  int32_t row, start, end;  // [start, end)
};

struct Components {
  std::vector<Run> runs;
  std::vector<int32_t> label_of_run;  // 1-based, OpenCV order
  std::vector<int64_t> areas;         // areas[label - 1]
};

inline int32_t find_root(std::vector<int32_t>& parent, int32_t a) {
  while (parent[a] != a) {
    parent[a] = parent[parent[a]];
    a = parent[a];
  }
  return a;
}

// Run-based two-pass labelling of the pixels equal to v, 8-connectivity.
void label_runs(const uint8_t* mask, int64_t h, int64_t w, uint8_t v, Components& cc) {
  auto& runs = cc.runs;
  runs.clear();
  std::vector<int32_t> parent;
  int64_t prev_begin = 0, prev_end = 0;
  for (int64_t y = 0; y < h; ++y) {
    const uint8_t* row = mask + y * w;
    const int64_t cur_begin = static_cast<int64_t>(runs.size());
    int64_t i = 0;
    while (true) {
      const int64_t s = find_byte(row, i, w, v);
      if (s >= w) break;
      const int64_t e = find_byte(row, s, w, static_cast<uint8_t>(1 - v));
      runs.push_back({static_cast<int32_t>(y), static_cast<int32_t>(s), static_cast<int32_t>(e)});
      parent.push_back(static_cast<int32_t>(runs.size() - 1));
      i = e;
    }
    const int64_t cur_end = static_cast<int64_t>(runs.size());
    // Runs of adjacent rows touch (8-connectivity) when their column
    // intervals overlap after widening by one pixel.
    int64_t p = prev_begin;
    for (int64_t c = cur_begin; c < cur_end; ++c) {
      while (p < prev_end && runs[p].end < runs[c].start) ++p;
      for (int64_t q = p; q < prev_end && runs[q].start <= runs[c].end; ++q) {
        const int32_t a = find_root(parent, static_cast<int32_t>(q));
        const int32_t b = find_root(parent, static_cast<int32_t>(c));
        if (a < b) parent[b] = a;
        else if (b < a) parent[a] = b;
      }
    }
    prev_begin = cur_begin;
    prev_end = cur_end;
  }
  // OpenCV's block-based labelling numbers a component by the first 2x2 block
  // (in block-raster order) that holds one of its pixels.
  const int64_t nruns = static_cast<int64_t>(runs.size());
  const int64_t blocks_per_row = (w + 1) / 2;
  std::vector<int64_t> first_block(nruns, std::numeric_limits<int64_t>::max());
  std::vector<int32_t> roots, root_of_run(nruns);
  for (int64_t r = 0; r < nruns; ++r) {
    const int32_t root = find_root(parent, static_cast<int32_t>(r));
    root_of_run[r] = root;
    if (root == r) roots.push_back(root);
    const int64_t key = (runs[r].row >> 1) * blocks_per_row + (runs[r].start >> 1);
    first_block[root] = std::min(first_block[root], key);
  }
  std::sort(roots.begin(), roots.end(),
            [&](int32_t a, int32_t b) { return first_block[a] < first_block[b]; });
  std::vector<int32_t> label_of_root(nruns, 0);
  for (size_t k = 0; k < roots.size(); ++k) label_of_root[roots[k]] = static_cast<int32_t>(k + 1);
  cc.areas.assign(roots.size(), 0);
  cc.label_of_run.resize(nruns);
  for (int64_t r = 0; r < nruns; ++r) {
    const int32_t label = label_of_root[root_of_run[r]];
    cc.label_of_run[r] = label;
    cc.areas[label - 1] += runs[r].end - runs[r].start;
  }
}

}  // namespace

// ---------------------------------------------------------------- RLE

void rle_encode(const uint8_t* masks, int64_t n, int64_t h, int64_t w,
                std::vector<std::vector<uint32_t>>& counts) {
  counts.assign(n, {});
#pragma omp parallel for schedule(dynamic, 1) if (n > 1)
  for (int64_t i = 0; i < n; ++i) encode_one(masks + i * h * w, h, w, counts[i]);
}

bool rle_decode(const uint32_t* counts, int64_t m, int64_t h, int64_t w, uint8_t* mask) {
  int64_t total = 0;
  for (int64_t i = 0; i < m; ++i) total += counts[i];
  if (total != h * w) return false;
  const int64_t h64 = (h + 63) / 64;
  std::vector<uint64_t> cols(static_cast<size_t>(std::max<int64_t>(1, w * h64)), 0);
  int64_t pos = 0;
  for (int64_t i = 0; i < m; ++i) {
    const int64_t end = pos + counts[i];
    if (i & 1) {  // odd runs are ones
      int64_t p = pos;
      while (p < end) {
        const int64_t x = p / h, y = p % h;
        const int64_t y1 = std::min<int64_t>(h, y + (end - p));
        set_column_range(cols.data(), h64, x, y, y1);
        p += y1 - y;
      }
    }
    pos = end;
  }
  column_bits_to_mask(cols.data(), h, w, mask);
  return true;
}

std::string rle_to_string(const uint32_t* counts, int64_t m) {
  std::string s;
  s.reserve(static_cast<size_t>(m) * 2);
  for (int64_t i = 0; i < m; ++i) {
    // pycocotools stores count i as a difference from count i - 2, from i = 3 on.
    int64_t x = counts[i];
    if (i > 2) x -= counts[i - 2];
    bool more = true;
    while (more) {
      char c = static_cast<char>(x & 0x1f);
      x >>= 5;  // arithmetic: negative differences keep their sign
      more = (c & 0x10) ? x != -1 : x != 0;
      if (more) c |= 0x20;
      s.push_back(static_cast<char>(c + 48));
    }
  }
  return s;
}

bool rle_from_string(const char* s, int64_t len, std::vector<uint32_t>& counts) {
  counts.clear();
  int64_t p = 0;
  while (p < len) {
    int64_t x = 0;
    int k = 0;
    bool more = true;
    while (more) {
      if (p >= len || k >= 12) return false;
      const int c = static_cast<unsigned char>(s[p]) - 48;
      if (c < 0 || c > 63) return false;
      x |= static_cast<int64_t>(c & 0x1f) << (5 * k);
      more = (c & 0x20) != 0;
      ++p;
      ++k;
      if (!more && (c & 0x10)) x |= -(static_cast<int64_t>(1) << (5 * k));
    }
    const size_t m = counts.size();
    if (m > 2) x += counts[m - 2];
    if (x < 0 || x > static_cast<int64_t>(std::numeric_limits<uint32_t>::max())) return false;
    counts.push_back(static_cast<uint32_t>(x));
  }
  return true;
}

// ---------------------------------------------------------------- boxes, stability

void masks_to_boxes(const uint8_t* masks, int64_t n, int64_t h, int64_t w, int64_t* boxes) {
#pragma omp parallel for schedule(dynamic, 1) if (n > 1)
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
#pragma omp parallel for schedule(static)
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

// ---------------------------------------------------------------- connected components

int64_t connected_components(const uint8_t* mask, int64_t h, int64_t w, uint8_t value,
                             int32_t* labels, std::vector<int64_t>& areas) {
  Components cc;
  label_runs(mask, h, w, value, cc);
  std::memset(labels, 0, sizeof(int32_t) * h * w);
  for (size_t r = 0; r < cc.runs.size(); ++r) {
    const Run& run = cc.runs[r];
    std::fill(labels + run.row * w + run.start, labels + run.row * w + run.end, cc.label_of_run[r]);
  }
  areas = cc.areas;
  return static_cast<int64_t>(areas.size());
}

bool remove_small_regions(const uint8_t* mask, int64_t h, int64_t w, double area_thresh,
                          bool holes, uint8_t* out) {
  std::memcpy(out, mask, h * w);
  Components cc;
  // "holes" works on the inverted mask: its small components are holes.
  label_runs(mask, h, w, holes ? 0 : 1, cc);
  const int64_t count = static_cast<int64_t>(cc.areas.size());
  std::vector<uint8_t> small(count + 1, 0);
  bool any_small = false;
  for (int64_t k = 0; k < count; ++k) {
    small[k + 1] = static_cast<double>(cc.areas[k]) < area_thresh;
    any_small |= small[k + 1] != 0;
  }
  if (!any_small) return false;
  std::vector<uint8_t> rewrite(count + 1, 0);  // components whose pixels flip
  if (holes) {
    rewrite = small;
  } else {
    bool any_kept = false;
    for (int64_t k = 1; k <= count; ++k) any_kept |= !small[k];
    if (any_kept) {
      rewrite = small;
    } else {
      // Every island is small: the official code keeps the largest, the
      // lowest label among equals (np.argmax).
      const int64_t largest =
          std::max_element(cc.areas.begin(), cc.areas.end()) - cc.areas.begin() + 1;
      std::fill(rewrite.begin(), rewrite.end(), 1);
      rewrite[largest] = 0;
    }
  }
  const uint8_t fill = holes ? 1 : 0;
  for (size_t r = 0; r < cc.runs.size(); ++r) {
    if (!rewrite[cc.label_of_run[r]]) continue;
    const Run& run = cc.runs[r];
    std::memset(out + run.row * w + run.start, fill, run.end - run.start);
  }
  return true;
}

// ---------------------------------------------------------------- NMS

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
  // Structure-of-arrays in score order so the inner loop vectorises.
  std::vector<float> x1(n), y1(n), x2(n), y2(n), area(n);
  std::vector<int64_t> cat(n);
  for (int64_t s = 0; s < n; ++s) {
    const int64_t i = order[s];
    const float offset = offset_trick ? static_cast<float>(categories[i]) * offset_unit : 0.0f;
    x1[s] = boxes[4 * i + 0] + offset;
    y1[s] = boxes[4 * i + 1] + offset;
    x2[s] = boxes[4 * i + 2] + offset;
    y2[s] = boxes[4 * i + 3] + offset;
    area[s] = (x2[s] - x1[s]) * (y2[s] - y1[s]);
    cat[s] = offset_trick ? 0 : categories[i];
  }
  // torchvision compares the float IoU with the double threshold; for a float
  // o, o > t holds exactly when o > the largest float not above t.
  float threshold = static_cast<float>(iou_threshold);
  if (static_cast<double>(threshold) > iou_threshold)
    threshold = std::nextafter(threshold, -std::numeric_limits<float>::infinity());
  std::vector<uint8_t> suppressed(n, 0);
  int64_t kept = 0;
  for (int64_t s = 0; s < n; ++s) {
    if (suppressed[s]) continue;
    keep[kept++] = order[s];
    const float ix1 = x1[s], iy1 = y1[s], ix2 = x2[s], iy2 = y2[s], iarea = area[s];
    const int64_t icat = cat[s];
    uint8_t* sup = suppressed.data();
#pragma omp simd
    for (int64_t t = s + 1; t < n; ++t) {
      const float xx1 = std::max(ix1, x1[t]);
      const float yy1 = std::max(iy1, y1[t]);
      const float xx2 = std::min(ix2, x2[t]);
      const float yy2 = std::min(iy2, y2[t]);
      const float iw = std::max(0.0f, xx2 - xx1);
      const float ih = std::max(0.0f, yy2 - yy1);
      const float inter = iw * ih;
      const float iou = inter / (iarea + area[t] - inter);
      sup[t] |= static_cast<uint8_t>((iou > threshold) & (cat[t] == icat));
    }
  }
  // torchvision's per-category path re-sorts the kept set by score; ties come
  // out in index order, which is already the order of `order`.
  return kept;
}

// ---------------------------------------------------------------- fused upsample

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
  const int64_t bands = std::max<int64_t>(1, std::min<int64_t>(H, 4 * max_threads()));
  const int64_t band_rows = (H + bands - 1) / bands;
  const int64_t tasks = n * bands;
  std::vector<int64_t> part_hi(tasks, 0), part_lo(tasks, 0), part_box(4 * tasks);

#pragma omp parallel
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
