// CUDA kernels of sam-edge post-processing; contract in postprocess_cuda.h.
//
// Float arithmetic that must reproduce the CPU kernels (and torch) uses the
// explicitly rounded intrinsics (__fmul_rn, __fadd_rn), so no compiler flag
// can fuse it into multiply-adds; the one intended fused multiply-add (the
// source coordinate, as torch computes it) is an explicit fmaf.
#include <cub/cub.cuh>
#include <thrust/iterator/counting_iterator.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "postprocess_cuda.h"

namespace sam_edge {
namespace cuda {

namespace {

constexpr int kThreads = 256;

thread_local const char* failed_call = "";

// Returns a failed CUDA call's error, recording the call's source text.
#define SAM_EDGE_TRY(expr)                 \
  do {                                     \
    const cudaError_t err_ = (expr);       \
    if (err_ != cudaSuccess) {             \
      failed_call = #expr;                 \
      return err_;                         \
    }                                      \
  } while (0)

// Kernel launches report configuration errors through cudaGetLastError.
#define SAM_EDGE_TRY_LAUNCH(kernel)                  \
  do {                                               \
    const cudaError_t err_ = cudaGetLastError();     \
    if (err_ != cudaSuccess) {                       \
      failed_call = "launch of " #kernel;            \
      return err_;                                   \
    }                                                \
  } while (0)

// Device scratch memory from the stream-ordered allocator, freed on scope exit.
class Scratch {
 public:
  explicit Scratch(cudaStream_t stream) : stream_(stream) {}
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  // A failed free cannot be reported from a destructor; the error stays
  // pending and the next call's cudaGetLastError reports it.
  ~Scratch() {
    for (void* p : blocks_) cudaFreeAsync(p, stream_);
  }
  template <typename T>
  cudaError_t alloc(T** out, size_t count) {
    void* p = nullptr;
    const cudaError_t err = cudaMallocAsync(&p, std::max<size_t>(1, count * sizeof(T)), stream_);
    if (err != cudaSuccess) return err;
    blocks_.push_back(p);
    *out = static_cast<T*>(p);
    return cudaSuccess;
  }

 private:
  cudaStream_t stream_;
  std::vector<void*> blocks_;
};

unsigned blocks_for(int64_t work, int64_t cap = 4096) {
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(cap, (work + kThreads - 1) / kThreads)));
}

// Grid y and z are limited to 65535 on every architecture (x to 2^31 - 1, which
// blocks_for stays under): kernels loop over the masks (or row blocks) of a
// y grid this size.
constexpr int64_t kMaxGridY = 65535;

unsigned grid_y(int64_t n) { return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(n, kMaxGridY))); }

__device__ __forceinline__ unsigned long long warp_sum(unsigned long long v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

// ---------------------------------------------------------------- stability

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

__global__ void ratio_kernel(const unsigned long long* __restrict__ counts, int64_t n, float* __restrict__ scores) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < n) scores[i] = __fdiv_rn(static_cast<float>(counts[2 * i]), static_cast<float>(counts[2 * i + 1]));
}

// ---------------------------------------------------------------- boxes

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

__global__ void extents_to_boxes_kernel(const int* __restrict__ extents, int64_t n, int64_t* __restrict__ boxes) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  const bool empty = extents[4 * i + 2] < 0;
  for (int k = 0; k < 4; ++k) boxes[4 * i + k] = empty ? 0 : extents[4 * i + k];
}

// ---------------------------------------------------------------- fused upsample

struct Axis {
  int* i0;
  int* i1;
  float* l0;
  float* l1;
};

// torch's bilinear taps (align_corners=False), as the CPU LinearAxis.
__global__ void linear_axis_kernel(int in, int out, Axis axis) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= out) return;
  const float scale = __fdiv_rn(static_cast<float>(in), static_cast<float>(out));
  float src = fmaf(scale, __fadd_rn(static_cast<float>(i), 0.5f), -0.5f);
  if (src < 0.0f) src = 0.0f;
  const int idx = min(static_cast<int>(floorf(src)), in - 1);
  const float lambda = fminf(fmaxf(__fsub_rn(src, static_cast<float>(idx)), 0.0f), 1.0f);
  axis.i0[i] = idx;
  axis.i1[i] = idx + (idx < in - 1 ? 1 : 0);
  axis.l0[i] = __fsub_rn(1.0f, lambda);
  axis.l1[i] = lambda;
}

// (a * wa + b * wb), rounded after each operation.
__device__ __forceinline__ float blend(float a, float wa, float b, float wb) {
  return __fadd_rn(__fmul_rn(a, wa), __fmul_rn(b, wb));
}

__device__ __forceinline__ float frame_value(const float* __restrict__ L, int in_w, const Axis& fy,
                                             const Axis& fx, int Y, int X) {
  const float* r0 = L + static_cast<int64_t>(fy.i0[Y]) * in_w;
  const float* r1 = L + static_cast<int64_t>(fy.i1[Y]) * in_w;
  const int b0 = fx.i0[X], b1 = fx.i1[X];
  const float w0 = fx.l0[X], w1 = fx.l1[X];
  return blend(blend(r0[b0], w0, r0[b1], w1), fy.l0[Y], blend(r1[b0], w0, r1[b1], w1), fy.l1[Y]);
}

__global__ void upsample_kernel(const float* __restrict__ low_res, int64_t n, int in_h, int in_w, int H, int W,
                                Axis fy, Axis fx, Axis oy, Axis ox, float threshold, float hi, float lo,
                                uint8_t* __restrict__ masks, float* __restrict__ logits,
                                unsigned long long* __restrict__ counts, int* __restrict__ extents) {
  const int64_t hw = static_cast<int64_t>(H) * W;
  for (int64_t i = blockIdx.y; i < n; i += gridDim.y) {
    const float* L = low_res + i * in_h * in_w;
    unsigned long long a = 0, b = 0;
    int left = W, top = H, right = -1, bottom = -1;
    for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < hw;
         k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      const int y = static_cast<int>(k / W), x = static_cast<int>(k % W);
      const int Y0 = oy.i0[y], Y1 = oy.i1[y], X0 = ox.i0[x], X1 = ox.i1[x];
      const float u0 = ox.l0[x], u1 = ox.l1[x];
      const float top_row = blend(frame_value(L, in_w, fy, fx, Y0, X0), u0, frame_value(L, in_w, fy, fx, Y0, X1), u1);
      const float bottom_row =
          blend(frame_value(L, in_w, fy, fx, Y1, X0), u0, frame_value(L, in_w, fy, fx, Y1, X1), u1);
      const float v = blend(top_row, oy.l0[y], bottom_row, oy.l1[y]);
      const bool on = v > threshold;
      if (logits) logits[i * hw + k] = v;
      if (masks) masks[i * hw + k] = on;
      a += v > hi;
      b += v > lo;
      if (on) {
        left = min(left, x);
        top = min(top, y);
        right = max(right, x);
        bottom = max(bottom, y);
      }
    }
    a = warp_sum(a);
    b = warp_sum(b);
    if ((threadIdx.x & 31) == 0) {
      if (a) atomicAdd(counts + 2 * i, a);
      if (b) atomicAdd(counts + 2 * i + 1, b);
    }
    merge_extents(extents + 4 * i, left, top, right, bottom);
  }
}

// ---------------------------------------------------------------- RLE

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

// ---------------------------------------------------------------- NMS

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

// ---------------------------------------------------------------- probe

__global__ void probe_kernel(int* value) { *value = __reduce_min_sync(1u, 7); }

cudaError_t invalid(const char* why) {
  failed_call = why;
  return cudaErrorInvalidValue;
}

}  // namespace

// ---------------------------------------------------------------- host entry points

const char* last_failed_call() { return failed_call; }

cudaError_t probe(int* value) {
  *value = 0;
  failed_call = "";
  int* device_value = nullptr;
  SAM_EDGE_TRY(cudaMalloc(&device_value, sizeof(int)));
  probe_kernel<<<1, 1>>>(device_value);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) {
    failed_call = "launch of probe_kernel";
  } else if ((err = cudaDeviceSynchronize()) != cudaSuccess) {
    failed_call = "cudaDeviceSynchronize after probe_kernel";
  } else if ((err = cudaMemcpy(value, device_value, sizeof(int), cudaMemcpyDeviceToHost)) != cudaSuccess) {
    failed_call = "cudaMemcpy of the probe's result";
  }
  const cudaError_t freed = cudaFree(device_value);
  if (err == cudaSuccess && freed != cudaSuccess) {
    failed_call = "cudaFree(device_value)";
    err = freed;
  }
  return err;
}

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

cudaError_t upsample_threshold_stability(const float* low_res, int64_t n, int64_t in_h, int64_t in_w,
                                         int64_t frame_h, int64_t frame_w, int64_t crop_h, int64_t crop_w,
                                         int64_t out_h, int64_t out_w, float threshold, float hi, float lo,
                                         uint8_t* masks, float* logits, float* stability, int64_t* boxes,
                                         cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  const int64_t int_max = std::numeric_limits<int>::max();
  if (in_h < 1 || in_w < 1 || crop_h < 1 || crop_w < 1 || crop_h > frame_h || crop_w > frame_w || out_h < 1 ||
      out_w < 1 || frame_h > int_max || frame_w > int_max || out_h > int_max || out_w > int_max)
    return invalid("upsample_threshold_stability: sizes out of range");
  Scratch scratch(stream);
  // Four axes: low-res -> frame (rows, cols), crop -> output (rows, cols).
  const int64_t sizes[4] = {frame_h, frame_w, out_h, out_w};
  const int64_t inputs[4] = {in_h, in_w, crop_h, crop_w};
  Axis axes[4];
  for (int a = 0; a < 4; ++a) {
    SAM_EDGE_TRY(scratch.alloc(&axes[a].i0, sizes[a]));
    SAM_EDGE_TRY(scratch.alloc(&axes[a].i1, sizes[a]));
    SAM_EDGE_TRY(scratch.alloc(&axes[a].l0, sizes[a]));
    SAM_EDGE_TRY(scratch.alloc(&axes[a].l1, sizes[a]));
    linear_axis_kernel<<<blocks_for(sizes[a], 1 << 30), kThreads, 0, stream>>>(
        static_cast<int>(inputs[a]), static_cast<int>(sizes[a]), axes[a]);
    SAM_EDGE_TRY_LAUNCH(linear_axis_kernel);
  }
  unsigned long long* counts;
  int* extents;
  SAM_EDGE_TRY(scratch.alloc(&counts, 2 * n));
  SAM_EDGE_TRY(scratch.alloc(&extents, 4 * n));
  SAM_EDGE_TRY(cudaMemsetAsync(counts, 0, 2 * n * sizeof(unsigned long long), stream));
  init_extents_kernel<<<blocks_for(n, 1 << 30), kThreads, 0, stream>>>(extents, n, static_cast<int>(out_w),
                                                                       static_cast<int>(out_h));
  SAM_EDGE_TRY_LAUNCH(init_extents_kernel);
  upsample_kernel<<<dim3(blocks_for(out_h * out_w, 2048), grid_y(n)), kThreads, 0, stream>>>(
      low_res, n, static_cast<int>(in_h), static_cast<int>(in_w), static_cast<int>(out_h), static_cast<int>(out_w),
      axes[0], axes[1], axes[2], axes[3], threshold, hi, lo, masks, logits, counts, extents);
  SAM_EDGE_TRY_LAUNCH(upsample_kernel);
  ratio_kernel<<<blocks_for(n, 1 << 30), kThreads, 0, stream>>>(counts, n, stability);
  SAM_EDGE_TRY_LAUNCH(ratio_kernel);
  extents_to_boxes_kernel<<<blocks_for(n, 1 << 30), kThreads, 0, stream>>>(extents, n, boxes);
  SAM_EDGE_TRY_LAUNCH(extents_to_boxes_kernel);
  return cudaSuccess;
}

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
