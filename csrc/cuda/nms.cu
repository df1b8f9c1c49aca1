// Batched non-maximum suppression, as torchvision's.
#include <cub/cub.cuh>

#include <cmath>
#include <limits>

#include "common.cuh"

namespace sam_edge {
namespace cuda {
namespace {

using namespace detail;

__global__ void iota_kernel(int64_t* out, int64_t n) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < n) out[i] = i;
}

// Sorted, offset boxes and their areas, as torchvision computes them.
__global__ void gather_boxes_kernel(const float* __restrict__ boxes, const int64_t* __restrict__ categories,
                                    const int64_t* __restrict__ order, int64_t n, bool offset_trick,
                                    const float* __restrict__ max_coordinate, float4* __restrict__ sorted,
                                    float* __restrict__ areas, int64_t* __restrict__ sorted_categories) {
  const int64_t s = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (s >= n) return;
  const int64_t i = order[s];
  const float offset =
      offset_trick ? __fmul_rn(static_cast<float>(categories[i]), __fadd_rn(*max_coordinate, 1.0f)) : 0.0f;
  const float4 b = make_float4(__fadd_rn(boxes[4 * i + 0], offset), __fadd_rn(boxes[4 * i + 1], offset),
                               __fadd_rn(boxes[4 * i + 2], offset), __fadd_rn(boxes[4 * i + 3], offset));
  sorted[s] = b;
  areas[s] = __fmul_rn(__fsub_rn(b.z, b.x), __fsub_rn(b.w, b.y));
  sorted_categories[s] = offset_trick ? 0 : categories[i];
}

// Bit t of word (s, t / 64): box t (after s in score order) has IoU > threshold with box s.
__global__ void iou_mask_kernel(const float4* __restrict__ boxes, const float* __restrict__ areas,
                                const int64_t* __restrict__ categories, int64_t n, float threshold,
                                unsigned long long* __restrict__ mask, int64_t words) {
  const int64_t col_block = blockIdx.x;
  __shared__ float4 col_boxes[64];
  __shared__ float col_areas[64];
  __shared__ int64_t col_cats[64];
  const int64_t col0 = col_block * 64;
  const int cols = static_cast<int>(n - col0 < 64 ? n - col0 : 64);
  if (threadIdx.x < cols) {
    col_boxes[threadIdx.x] = boxes[col0 + threadIdx.x];
    col_areas[threadIdx.x] = areas[col0 + threadIdx.x];
    col_cats[threadIdx.x] = categories[col0 + threadIdx.x];
  }
  __syncthreads();
  // Row blocks after this column block are never read: the greedy pass only looks forward.
  for (int64_t row_block = blockIdx.y; row_block <= col_block; row_block += gridDim.y) {
    const int64_t s = row_block * 64 + threadIdx.x;
    if (s >= n) continue;
    const float4 a = boxes[s];
    const float area_a = areas[s];
    const int64_t cat_a = categories[s];
    unsigned long long bits = 0;
    for (int c = 0; c < cols; ++c) {
      const int64_t t = col0 + c;
      if (t <= s || col_cats[c] != cat_a) continue;
      const float4 b = col_boxes[c];
      const float iw = fmaxf(0.0f, __fsub_rn(fminf(a.z, b.z), fmaxf(a.x, b.x)));
      const float ih = fmaxf(0.0f, __fsub_rn(fminf(a.w, b.w), fmaxf(a.y, b.y)));
      const float inter = __fmul_rn(iw, ih);
      const float iou = __fdiv_rn(inter, __fsub_rn(__fadd_rn(area_a, col_areas[c]), inter));
      if (iou > threshold) bits |= 1ULL << c;
    }
    mask[s * words + col_block] = bits;
  }
}

}  // namespace

using detail::failed_call;
using detail::invalid;

cudaError_t batched_nms(const float* boxes, const float* scores, const int64_t* categories, int64_t n,
                        double iou_threshold, bool offset_trick, std::vector<int64_t>& keep, cudaStream_t stream) {
  keep.clear();
  if (n == 0) return cudaSuccess;
  if (4 * n > std::numeric_limits<int>::max()) return invalid("batched_nms: 4 * n above INT_MAX (CUB's range)");
  Scratch scratch(stream);
  // Stable descending radix sort of scores: equal scores stay in index order.
  int64_t *index, *order, *sorted_categories;
  float *sorted_scores, *areas, *max_coordinate;
  float4* sorted_boxes;
  SAM_EDGE_TRY(scratch.alloc(&index, n));
  SAM_EDGE_TRY(scratch.alloc(&order, n));
  SAM_EDGE_TRY(scratch.alloc(&sorted_scores, n));
  SAM_EDGE_TRY(scratch.alloc(&areas, n));
  SAM_EDGE_TRY(scratch.alloc(&sorted_categories, n));
  SAM_EDGE_TRY(scratch.alloc(&sorted_boxes, n));
  SAM_EDGE_TRY(scratch.alloc(&max_coordinate, 1));
  iota_kernel<<<blocks_for(n, 1 << 30), kThreads, 0, stream>>>(index, n);
  SAM_EDGE_TRY_LAUNCH(iota_kernel);
  size_t sort_bytes = 0, max_bytes = 0;
  SAM_EDGE_TRY(cub::DeviceRadixSort::SortPairsDescending(nullptr, sort_bytes, scores, sorted_scores, index, order,
                                                         static_cast<int>(n), 0, 32, stream));
  SAM_EDGE_TRY(cub::DeviceReduce::Max(nullptr, max_bytes, boxes, max_coordinate, static_cast<int>(4 * n), stream));
  uint8_t* temp;
  SAM_EDGE_TRY(scratch.alloc(&temp, std::max(sort_bytes, max_bytes)));
  SAM_EDGE_TRY(cub::DeviceRadixSort::SortPairsDescending(temp, sort_bytes, scores, sorted_scores, index, order,
                                                         static_cast<int>(n), 0, 32, stream));
  SAM_EDGE_TRY(cub::DeviceReduce::Max(temp, max_bytes, boxes, max_coordinate, static_cast<int>(4 * n), stream));
  gather_boxes_kernel<<<blocks_for(n, 1 << 30), kThreads, 0, stream>>>(
      boxes, categories, order, n, offset_trick, max_coordinate, sorted_boxes, areas, sorted_categories);
  SAM_EDGE_TRY_LAUNCH(gather_boxes_kernel);
  // torchvision compares the float IoU with the double threshold: o > t exactly
  // when o > the largest float not above t.
  float threshold = static_cast<float>(iou_threshold);
  if (static_cast<double>(threshold) > iou_threshold)
    threshold = std::nextafter(threshold, -std::numeric_limits<float>::infinity());
  const int64_t words = (n + 63) / 64;
  unsigned long long* mask;
  SAM_EDGE_TRY(scratch.alloc(&mask, n * words));
  iou_mask_kernel<<<dim3(static_cast<unsigned>(words), grid_y(words)), 64, 0, stream>>>(
      sorted_boxes, areas, sorted_categories, n, threshold, mask, words);
  SAM_EDGE_TRY_LAUNCH(iou_mask_kernel);
  std::vector<unsigned long long> host_mask(static_cast<size_t>(n * words));
  std::vector<int64_t> host_order(static_cast<size_t>(n));
  SAM_EDGE_TRY(cudaMemcpyAsync(host_mask.data(), mask, n * words * sizeof(unsigned long long),
                               cudaMemcpyDeviceToHost, stream));
  SAM_EDGE_TRY(cudaMemcpyAsync(host_order.data(), order, n * sizeof(int64_t), cudaMemcpyDeviceToHost, stream));
  SAM_EDGE_TRY(cudaStreamSynchronize(stream));
  // Greedy pass in score order, as torchvision's CPU loop.
  std::vector<unsigned long long> removed(static_cast<size_t>(words), 0);
  for (int64_t s = 0; s < n; ++s) {
    if (removed[s / 64] >> (s % 64) & 1) continue;
    keep.push_back(host_order[s]);
    const unsigned long long* row = host_mask.data() + s * words;
    for (int64_t k = s / 64; k < words; ++k) removed[k] |= row[k];
  }
  return cudaSuccess;
}

}  // namespace cuda
}  // namespace sam_edge
