// CUDA versions of the sam-edge post-processing ops (see ../postprocess.h for
// the CPU contract). Every pointer is a device pointer to C-contiguous data;
// every function enqueues work on `stream` and returns the first CUDA error it
// met (cudaSuccess otherwise) without synchronising, except where noted. On an
// error, last_failed_call() names the call that returned it.
#pragma once

#include <cuda_runtime_api.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <vector>

namespace sam_edge {
namespace cuda {

// The source text of the CUDA call (or kernel launch) behind the last error
// returned on this thread; "" when none.
const char* last_failed_call();

// Launches a one-thread kernel (using the sm_80 warp reductions the ops use)
// on the current device and waits for it: cudaErrorNoKernelImageForDevice when
// this build has no code for the device. Writes the kernel's result to *value
// (7 when it ran).
cudaError_t probe(int* value);

// Per mask: count(logit > hi) / count(logit > lo) as float32 (0/0 -> NaN).
cudaError_t stability_scores(const float* logits, int64_t n, int64_t hw, float hi, float lo,
                             float* scores, cudaStream_t stream);

// XYXY int64 boxes of n (h, w) masks of bytes 0/1; empty -> [0, 0, 0, 0].
cudaError_t masks_to_boxes(const uint8_t* masks, int64_t n, int64_t h, int64_t w, int64_t* boxes,
                           cudaStream_t stream);

// Fused Sam.postprocess_masks + threshold + stability + box, one thread per
// output pixel, same float32 formula as the CPU kernel. masks and/or logits
// may be null.
cudaError_t upsample_threshold_stability(const float* low_res, int64_t n, int64_t in_h, int64_t in_w,
                                         int64_t frame_h, int64_t frame_w, int64_t crop_h, int64_t crop_w,
                                         int64_t out_h, int64_t out_w, float threshold, float hi, float lo,
                                         uint8_t* masks, float* logits, float* stability, int64_t* boxes,
                                         cudaStream_t stream);

// ---------------------------------------------------------------- RLE chunking

// Device scratch of the RLE pass, by default: small enough for the smallest
// Jetson Orin next to the masks themselves.
constexpr int64_t kRleDefaultScratchBytes = int64_t{256} << 20;
// Room kept beside the positions buffer for CUB's temporary storage and the
// selected count; the pass widens it when CUB asks for more.
constexpr int64_t kRleReservedBytes = int64_t{1} << 20;

// How the n * hw column-major positions of an RLE pass are cut into
// consecutive item ranges. A chunk's scratch is a positions buffer of 8 bytes
// an item (every item may be a run boundary) plus the reserved bytes; a range
// may start or end inside a mask. CUB selects over int-sized ranges, hence the
// INT_MAX bound.
struct RleChunkPlan {
  int64_t total_items = 0;      // n * hw
  int64_t items_per_chunk = 0;  // 0: the cap leaves no room for one item
  int64_t reserved_bytes = 0;

  RleChunkPlan(int64_t n, int64_t hw, int64_t scratch_bytes, int64_t reserved)
      : total_items(n * hw), reserved_bytes(reserved) {
    const int64_t by_memory = (scratch_bytes - reserved) / static_cast<int64_t>(sizeof(int64_t));
    items_per_chunk = std::max<int64_t>(0, std::min<int64_t>({total_items, by_memory, int64_t{INT_MAX}}));
  }
  int64_t chunks() const {
    return items_per_chunk > 0 ? (total_items + items_per_chunk - 1) / items_per_chunk : 0;
  }
  int64_t first(int64_t k) const { return k * items_per_chunk; }
  int64_t items(int64_t k) const { return std::min(items_per_chunk, total_items - first(k)); }
  // Device bytes of the pass: one positions buffer for the largest chunk, plus the reserve.
  int64_t scratch_bytes() const {
    return items_per_chunk * static_cast<int64_t>(sizeof(int64_t)) + reserved_bytes;
  }
};

// Positions (mask * h * w + column-major offset) where a mask's column-major
// bit stream differs from the previous bit (the stream starting at 0), in
// increasing order: the run boundaries of the COCO RLE. Device scratch stays
// within scratch_bytes (cudaErrorInvalidValue when it cannot hold one item).
// Synchronises `stream` and copies the positions to the host.
cudaError_t rle_change_positions(const uint8_t* masks, int64_t n, int64_t h, int64_t w,
                                 std::vector<int64_t>& positions, int64_t scratch_bytes, cudaStream_t stream);

// torchvision.ops.batched_nms: boxes (n, 4) float32 XYXY, scores (n,),
// categories (n,) int64 on the device. Synchronises `stream`; the kept
// indices, highest score first (ties by index), come back on the host.
cudaError_t batched_nms(const float* boxes, const float* scores, const int64_t* categories, int64_t n,
                        double iou_threshold, bool offset_trick, std::vector<int64_t>& keep,
                        cudaStream_t stream);

}  // namespace cuda
}  // namespace sam_edge
