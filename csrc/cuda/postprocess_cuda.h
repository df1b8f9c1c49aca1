// CUDA versions of the sam-edge post-processing ops (see ../postprocess.h for
// the CPU contract). Every pointer is a device pointer to C-contiguous data;
// every function enqueues work on `stream` and returns the first CUDA error it
// met (cudaSuccess otherwise) without synchronising, except where noted.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <vector>

namespace sam_edge {
namespace cuda {

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

// Positions (mask * h * w + column-major offset) where a mask's column-major
// bit stream differs from the previous bit (the stream starting at 0), in
// increasing order: the run boundaries of the COCO RLE. Synchronises `stream`
// and copies the positions to the host.
cudaError_t rle_change_positions(const uint8_t* masks, int64_t n, int64_t h, int64_t w,
                                 std::vector<int64_t>& positions, cudaStream_t stream);

// torchvision.ops.batched_nms: boxes (n, 4) float32 XYXY, scores (n,),
// categories (n,) int64 on the device. Synchronises `stream`; the kept
// indices, highest score first (ties by index), come back on the host.
cudaError_t batched_nms(const float* boxes, const float* scores, const int64_t* categories, int64_t n,
                        double iou_threshold, bool offset_trick, std::vector<int64_t>& keep,
                        cudaStream_t stream);

}  // namespace cuda
}  // namespace sam_edge
