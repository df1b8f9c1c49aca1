// Boxes of binary masks.
#include <limits>

#include "reductions.cuh"

namespace sam_edge {
namespace cuda {
namespace {

using namespace detail;

__global__ void mask_extents_kernel(const uint8_t* __restrict__ masks, int64_t n, int h, int w,
                                    int* __restrict__ extents) {
  const int64_t hw = static_cast<int64_t>(h) * w;
  for (int64_t i = blockIdx.y; i < n; i += gridDim.y) {
    const uint8_t* m = masks + i * hw;
    int left = w, top = h, right = -1, bottom = -1;
    for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < hw;
         k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      if (m[k]) {
        const int y = static_cast<int>(k / w), x = static_cast<int>(k % w);
        left = min(left, x);
        top = min(top, y);
        right = max(right, x);
        bottom = max(bottom, y);
      }
    }
    merge_extents(extents + 4 * i, left, top, right, bottom);
  }
}

}  // namespace

using detail::failed_call;
using detail::invalid;

cudaError_t masks_to_boxes(const uint8_t* masks, int64_t n, int64_t h, int64_t w, int64_t* boxes,
                           cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  if (h > std::numeric_limits<int>::max() || w > std::numeric_limits<int>::max())
    return invalid("masks_to_boxes: h or w above INT_MAX");
  Scratch scratch(stream);
  int* extents;
  SAM_EDGE_TRY(scratch.alloc(&extents, 4 * n));
  init_extents_kernel<<<blocks_for(n, 1 << 30), kThreads, 0, stream>>>(extents, n, static_cast<int>(w),
                                                                       static_cast<int>(h));
  SAM_EDGE_TRY_LAUNCH(init_extents_kernel);
  if (h * w > 0) {
    mask_extents_kernel<<<dim3(blocks_for(h * w, 1024), grid_y(n)), kThreads, 0, stream>>>(
        masks, n, static_cast<int>(h), static_cast<int>(w), extents);
    SAM_EDGE_TRY_LAUNCH(mask_extents_kernel);
  }
  extents_to_boxes_kernel<<<blocks_for(n, 1 << 30), kThreads, 0, stream>>>(extents, n, boxes);
  SAM_EDGE_TRY_LAUNCH(extents_to_boxes_kernel);
  return cudaSuccess;
}

}  // namespace cuda
}  // namespace sam_edge
