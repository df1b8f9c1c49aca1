// Internal to csrc/cuda: per-mask reductions shared by several entry points:
// the stability ratio (stability.cu, upsample.cu) and box extents (boxes.cu,
// upsample.cu). Internal linkage, so each file that includes it has its own copy.
#pragma once

#include "common.cuh"

namespace sam_edge {
namespace cuda {
namespace {

using namespace detail;

__global__ void ratio_kernel(const unsigned long long* __restrict__ counts, int64_t n, float* __restrict__ scores) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < n) scores[i] = __fdiv_rn(static_cast<float>(counts[2 * i]), static_cast<float>(counts[2 * i + 1]));
}

// extents[4 i ..]: left, top, right, bottom; starts at (w, h, -1, -1).
__global__ void init_extents_kernel(int* extents, int64_t n, int w, int h) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < n) {
    extents[4 * i + 0] = w;
    extents[4 * i + 1] = h;
    extents[4 * i + 2] = -1;
    extents[4 * i + 3] = -1;
  }
}

__device__ __forceinline__ void merge_extents(int* extents, int left, int top, int right, int bottom) {
  left = __reduce_min_sync(0xffffffffu, left);
  top = __reduce_min_sync(0xffffffffu, top);
  right = __reduce_max_sync(0xffffffffu, right);
  bottom = __reduce_max_sync(0xffffffffu, bottom);
  if ((threadIdx.x & 31) == 0 && right >= 0) {
    atomicMin(extents + 0, left);
    atomicMin(extents + 1, top);
    atomicMax(extents + 2, right);
    atomicMax(extents + 3, bottom);
  }
}

__global__ void extents_to_boxes_kernel(const int* __restrict__ extents, int64_t n, int64_t* __restrict__ boxes) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  const bool empty = extents[4 * i + 2] < 0;
  for (int k = 0; k < 4; ++k) boxes[4 * i + k] = empty ? 0 : extents[4 * i + k];
}

}  // namespace

}  // namespace cuda
}  // namespace sam_edge
