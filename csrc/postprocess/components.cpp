// 8-connected components by run-based union-find, numbered as OpenCV numbers
// them, and remove_small_regions on top of them.
#include "postprocess_internal.h"

namespace sam_edge {

using namespace postprocess;

namespace {

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

}  // namespace sam_edge
