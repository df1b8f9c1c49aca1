// Run boundaries of binary masks in column-major order, for RLE.
#include <cub/cub.cuh>
#include <thrust/iterator/counting_iterator.h>

#include "common.cuh"

namespace sam_edge {
namespace cuda {
namespace {

using namespace detail;

// Whether the column-major position (first_item + g) of the masks differs
// from the one before it in its mask.
struct IsRunBoundary {
  const uint8_t* masks;
  int64_t first_item, h, w;
  __device__ bool operator()(int64_t g) const {
    const int64_t hw = h * w;
    const int64_t i = (first_item + g) / hw, p = (first_item + g) % hw;
    const uint8_t* m = masks + i * hw;
    const uint8_t value = m[(p % h) * w + p / h];
    const uint8_t previous = p == 0 ? 0 : m[((p - 1) % h) * w + (p - 1) / h];
    return (value != 0) != (previous != 0);
  }
};

__global__ void offset_positions_kernel(int64_t* positions, const int64_t* count, int64_t offset) {
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < *count;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x)
    positions[k] += offset;
}

}  // namespace

using detail::failed_call;
using detail::invalid;

cudaError_t rle_change_positions(const uint8_t* masks, int64_t n, int64_t h, int64_t w,
                                 std::vector<int64_t>& positions, int64_t scratch_bytes, cudaStream_t stream) {
  positions.clear();
  if (n == 0 || h * w == 0) return cudaSuccess;
  RleChunkPlan plan(n, h * w, scratch_bytes, kRleReservedBytes);
  if (plan.items_per_chunk == 0) return invalid("rle_change_positions: scratch_bytes leaves no room for one item");
  // CUB's temporary storage grows with the range: widen the reserve if the
  // first plan's chunk needs more, which only shrinks the chunks.
  size_t temp_bytes = 0;
  SAM_EDGE_TRY(cub::DeviceSelect::If(nullptr, temp_bytes, thrust::counting_iterator<int64_t>(0),
                                     static_cast<int64_t*>(nullptr), static_cast<int64_t*>(nullptr),
                                     static_cast<int>(plan.items_per_chunk), IsRunBoundary{masks, 0, h, w}, stream));
  const int64_t needed = static_cast<int64_t>(temp_bytes + sizeof(int64_t));
  if (needed > plan.reserved_bytes) {
    plan = RleChunkPlan(n, h * w, scratch_bytes, needed);
    if (plan.items_per_chunk == 0) return invalid("rle_change_positions: scratch_bytes leaves no room for one item");
  }
  Scratch scratch(stream);
  int64_t *selected, *count;
  SAM_EDGE_TRY(scratch.alloc(&selected, plan.items_per_chunk));
  SAM_EDGE_TRY(scratch.alloc(&count, 1));
  void* temp;
  SAM_EDGE_TRY(scratch.alloc(reinterpret_cast<uint8_t**>(&temp), temp_bytes));
  for (int64_t k = 0; k < plan.chunks(); ++k) {
    const int64_t first = plan.first(k), items = plan.items(k);
    SAM_EDGE_TRY(cub::DeviceSelect::If(temp, temp_bytes, thrust::counting_iterator<int64_t>(0), selected, count,
                                       static_cast<int>(items), IsRunBoundary{masks, first, h, w}, stream));
    offset_positions_kernel<<<blocks_for(items, 1024), kThreads, 0, stream>>>(selected, count, first);
    SAM_EDGE_TRY_LAUNCH(offset_positions_kernel);
    int64_t found = 0;
    SAM_EDGE_TRY(cudaMemcpyAsync(&found, count, sizeof(int64_t), cudaMemcpyDeviceToHost, stream));
    SAM_EDGE_TRY(cudaStreamSynchronize(stream));
    const size_t old = positions.size();
    positions.resize(old + static_cast<size_t>(found));
    if (found > 0) {
      SAM_EDGE_TRY(cudaMemcpyAsync(positions.data() + old, selected, found * sizeof(int64_t), cudaMemcpyDeviceToHost,
                                   stream));
      SAM_EDGE_TRY(cudaStreamSynchronize(stream));
    }
  }
  return cudaSuccess;
}

}  // namespace cuda
}  // namespace sam_edge
