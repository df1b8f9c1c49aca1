// The fused upsample + threshold + stability + box step.
#include <cmath>
#include <limits>

#include "reductions.cuh"

namespace sam_edge {
namespace cuda {
namespace {

using namespace detail;

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

}  // namespace

using detail::failed_call;
using detail::invalid;

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

}  // namespace cuda
}  // namespace sam_edge
