// Stability scores of float logits.
#include "reductions.cuh"

namespace sam_edge {
namespace cuda {
namespace {

using namespace detail;

__global__ void count_above_kernel(const float* __restrict__ logits, int64_t n, int64_t hw, float hi, float lo,
                                   unsigned long long* __restrict__ counts) {
  for (int64_t i = blockIdx.y; i < n; i += gridDim.y) {
    const float* x = logits + i * hw;
    unsigned long long a = 0, b = 0;
    for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < hw;
         k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      const float v = x[k];
      a += v > hi;
      b += v > lo;
    }
    a = warp_sum(a);
    b = warp_sum(b);
    if ((threadIdx.x & 31) == 0) {
      if (a) atomicAdd(counts + 2 * i, a);
      if (b) atomicAdd(counts + 2 * i + 1, b);
    }
  }
}

}  // namespace

using detail::failed_call;
using detail::invalid;

cudaError_t stability_scores(const float* logits, int64_t n, int64_t hw, float hi, float lo, float* scores,
                             cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  Scratch scratch(stream);
  unsigned long long* counts;
  SAM_EDGE_TRY(scratch.alloc(&counts, 2 * n));
  SAM_EDGE_TRY(cudaMemsetAsync(counts, 0, 2 * n * sizeof(unsigned long long), stream));
  if (hw > 0) {
    count_above_kernel<<<dim3(blocks_for(hw, 1024), grid_y(n)), kThreads, 0, stream>>>(logits, n, hw, hi, lo,
                                                                                           counts);
    SAM_EDGE_TRY_LAUNCH(count_above_kernel);
  }
  ratio_kernel<<<blocks_for(n, 1 << 30), kThreads, 0, stream>>>(counts, n, scores);
  SAM_EDGE_TRY_LAUNCH(ratio_kernel);
  return cudaSuccess;
}

}  // namespace cuda
}  // namespace sam_edge
