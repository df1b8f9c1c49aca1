// sam-edge post-processing core: plain C++ over raw buffers, no Python, no torch.
//
// Masks are C-ordered bytes holding 0 or 1, shape (n, h, w). Logits are float32.
// Every function here is deterministic and thread-safe; the parallel ones use
// OpenMP when the build has it. Semantics are documented in
// sam_edge/postprocess/__init__.py, which is the public interface.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace sam_edge {

// ---- COCO run-length encoding (column-major, first run counts zeros) ----

// Encodes n masks of (h, w). counts[i] receives mask i's runs.
void rle_encode(const uint8_t* masks, int64_t n, int64_t h, int64_t w,
                std::vector<std::vector<uint32_t>>& counts);

// Decodes runs into one (h, w) mask. Returns false when the runs do not sum
// to h * w (the mask is then left partly written).
bool rle_decode(const uint32_t* counts, int64_t m, int64_t h, int64_t w, uint8_t* mask);

// pycocotools' compressed string (LEB128-like, 6 bits per char, offset 48).
std::string rle_to_string(const uint32_t* counts, int64_t m);
// Returns false on a malformed string (bad character, truncated or overflowing value).
bool rle_from_string(const char* s, int64_t len, std::vector<uint32_t>& counts);

// ---- boxes and scores ----

// XYXY boxes of n masks (h, w); an empty mask gives [0, 0, 0, 0].
void masks_to_boxes(const uint8_t* masks, int64_t n, int64_t h, int64_t w, int64_t* boxes);

// Per mask: count(logit > hi) / count(logit > lo), as float32 (0/0 gives NaN).
void stability_scores(const float* logits, int64_t n, int64_t hw, float hi, float lo,
                      float* scores);

// ---- connected components (8-connectivity), numbered like OpenCV ----

// Labels the pixels equal to `value` (0 or 1); others get 0. Labels are
// 1..count in the order of each component's first 2x2 block in block-raster
// order, which is the order cv2.connectedComponents gives. areas[k - 1] is the
// pixel count of label k. Returns the number of components.
int64_t connected_components(const uint8_t* mask, int64_t h, int64_t w, uint8_t value,
                             int32_t* labels, std::vector<int64_t>& areas);

// segment_anything.utils.amg.remove_small_regions on one mask. Writes the
// result into `out` and returns whether the mask changed (by the official rule).
bool remove_small_regions(const uint8_t* mask, int64_t h, int64_t w, double area_thresh,
                          bool holes, uint8_t* out);

// ---- non-maximum suppression ----

// torchvision.ops.batched_nms on CPU. boxes (n, 4) XYXY float32, scores (n,),
// categories (n,). Writes kept indices, highest score first, and returns how
// many. `offset_trick` selects torchvision's coordinate-offset path (which it
// uses for n <= 1000 on CPU) rather than its per-category path.
int64_t batched_nms(const float* boxes, const float* scores, const int64_t* categories,
                    int64_t n, double iou_threshold, bool offset_trick, int64_t* keep);

// ---- fused Sam.postprocess_masks + threshold + stability + box ----

struct UpsampleGeometry {
  int64_t in_h, in_w;        // low-res logits, e.g. 256 x 256
  int64_t frame_h, frame_w;  // first resize target, e.g. 1024 x 1024
  int64_t crop_h, crop_w;    // input_size: the valid part of the frame
  int64_t out_h, out_w;      // original_size
};

// For each of n maps: bilinear (align_corners=False) resize to the frame, crop,
// bilinear resize to the output, computed per output pixel without the frame.
// Writes masks (logit > threshold) and/or the logits when the pointers are not
// null; always writes stability scores and XYXY boxes of the masks.
void upsample_threshold_stability(const float* low_res, int64_t n, const UpsampleGeometry& g,
                                  float threshold, float hi, float lo, uint8_t* masks,
                                  float* logits, float* stability, int64_t* boxes);

// Threads OpenMP will use (1 without OpenMP).
int max_threads();

}  // namespace sam_edge
