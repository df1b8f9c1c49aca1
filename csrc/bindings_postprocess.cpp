// sam_edge._C's post-processing functions: a thin layer over postprocess.h.
// sam_edge/postprocess is their interface.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "bindings.h"
#include "postprocess.h"

namespace sam_edge {
namespace {

// A C-contiguous array of one-byte bools or uint8 holding 0/1.
const uint8_t* byte_data(const py::array& a, int ndim, const char* name) {
  const char kind = a.dtype().kind();
  if (!((kind == 'b' || kind == 'u') && a.itemsize() == 1))
    throw std::invalid_argument(std::string(name) + " must be bool or uint8, got dtype " +
                                std::string(py::str(a.dtype())));
  if (a.ndim() != ndim)
    throw std::invalid_argument(std::string(name) + " must have " + std::to_string(ndim) +
                                " dimensions, got " + std::to_string(a.ndim()));
  if (!(a.flags() & py::array::c_style))
    throw std::invalid_argument(std::string(name) + " must be C-contiguous");
  return static_cast<const uint8_t*>(a.data());
}

py::array_t<bool> new_bool(std::vector<py::ssize_t> shape) { return py::array_t<bool>(shape); }

}  // namespace

void bind_postprocess(py::module_& m) {
  m.def(
      "rle_encode",
      [](const py::array& masks) {
        const uint8_t* data = byte_data(masks, 3, "masks");
        const int64_t n = masks.shape(0), h = masks.shape(1), w = masks.shape(2);
        std::vector<std::vector<uint32_t>> counts;
        {
          py::gil_scoped_release release;
          rle_encode(data, n, h, w, counts);
        }
        py::list out;
        for (auto& c : counts) out.append(py::array_t<uint32_t>(c.size(), c.data()));
        return out;
      },
      py::arg("masks"), "(N, H, W) masks -> N uint32 arrays of column-major run lengths.");

  m.def(
      "rle_encode_strings",
      [](const py::array& masks) {
        const uint8_t* data = byte_data(masks, 3, "masks");
        const int64_t n = masks.shape(0), h = masks.shape(1), w = masks.shape(2);
        std::vector<std::vector<uint32_t>> counts;
        std::vector<std::string> strings(n);
        {
          py::gil_scoped_release release;
          rle_encode(data, n, h, w, counts);
          for (int64_t i = 0; i < n; ++i)
            strings[i] = rle_to_string(counts[i].data(), static_cast<int64_t>(counts[i].size()));
        }
        py::list out;
        for (auto& s : strings) out.append(py::bytes(s));
        return out;
      },
      py::arg("masks"), "(N, H, W) masks -> N pycocotools compressed RLE strings (bytes).");

  m.def(
      "rle_decode",
      [](const py::list& counts_list, int64_t h, int64_t w) {
        const int64_t n = static_cast<int64_t>(counts_list.size());
        std::vector<py::array_t<uint32_t>> counts;
        for (auto item : counts_list) {
          counts.push_back(py::array_t<uint32_t, py::array::c_style | py::array::forcecast>::ensure(item));
          if (!counts.back()) throw std::invalid_argument("counts must be arrays of uint32");
          if (counts.back().ndim() != 1) throw std::invalid_argument("counts must be 1-D");
        }
        auto out = new_bool({n, h, w});
        uint8_t* dst = reinterpret_cast<uint8_t*>(out.mutable_data());
        std::vector<const uint32_t*> ptrs;
        std::vector<int64_t> lens;
        for (auto& c : counts) {
          ptrs.push_back(c.data());
          lens.push_back(c.shape(0));
        }
        int64_t bad = -1;
        {
          py::gil_scoped_release release;
#pragma omp parallel for schedule(dynamic, 1) if (n > 1 && worth_parallel(n * h * w))
          for (int64_t i = 0; i < n; ++i)
            if (!rle_decode(ptrs[i], lens[i], h, w, dst + i * h * w)) {
#pragma omp critical
              bad = (bad < 0 || i < bad) ? i : bad;
            }
        }
        if (bad >= 0)
          throw std::invalid_argument("RLE " + std::to_string(bad) + ": run lengths do not sum to h * w = " +
                                      std::to_string(h * w));
        return out;
      },
      py::arg("counts"), py::arg("h"), py::arg("w"),
      "N uint32 run-length arrays -> (N, H, W) bool masks.");

  m.def(
      "counts_to_string",
      [](const py::array& counts) {
        const uint32_t* c = typed_data<uint32_t>(counts, 1, "counts");
        return py::bytes(rle_to_string(c, counts.shape(0)));
      },
      py::arg("counts"), "uint32 run lengths -> pycocotools compressed string (bytes).");

  m.def(
      "string_to_counts",
      [](const py::bytes& s) {
        std::string str = s;
        std::vector<uint32_t> counts;
        if (!rle_from_string(str.data(), static_cast<int64_t>(str.size()), counts))
          throw std::invalid_argument(
              "malformed compressed RLE string: expected characters '0'..'o' encoding "
              "non-negative 32-bit run lengths");
        return py::array_t<uint32_t>(counts.size(), counts.data());
      },
      py::arg("string"), "pycocotools compressed string -> uint32 run lengths.");

  m.def(
      "masks_to_boxes",
      [](const py::array& masks) {
        const uint8_t* data = byte_data(masks, 3, "masks");
        const int64_t n = masks.shape(0), h = masks.shape(1), w = masks.shape(2);
        py::array_t<int64_t> boxes({n, static_cast<int64_t>(4)});
        int64_t* out = boxes.mutable_data();
        {
          py::gil_scoped_release release;
          masks_to_boxes(data, n, h, w, out);
        }
        return boxes;
      },
      py::arg("masks"), "(N, H, W) masks -> (N, 4) int64 XYXY boxes; empty -> 0s.");

  m.def(
      "stability_scores",
      [](const py::array& logits, double hi, double lo) {
        const float* data = typed_data<float>(logits, 2, "logits");
        const int64_t n = logits.shape(0), hw = logits.shape(1);
        py::array_t<float> scores(n);
        float* out = scores.mutable_data();
        const float hi32 = static_cast<float>(hi), lo32 = static_cast<float>(lo);
        {
          py::gil_scoped_release release;
          stability_scores(data, n, hw, hi32, lo32, out);
        }
        return scores;
      },
      py::arg("logits"), py::arg("hi"), py::arg("lo"),
      "(N, H*W) float32 logits -> (N,) float32 count(> hi) / count(> lo).");

  m.def(
      "connected_components",
      [](const py::array& mask, int value) {
        const uint8_t* data = byte_data(mask, 2, "mask");
        const int64_t h = mask.shape(0), w = mask.shape(1);
        py::array_t<int32_t> labels({h, w});
        int32_t* out = labels.mutable_data();
        std::vector<int64_t> areas;
        {
          py::gil_scoped_release release;
          connected_components(data, h, w, static_cast<uint8_t>(value != 0), out, areas);
        }
        return py::make_tuple(labels, py::array_t<int64_t>(areas.size(), areas.data()));
      },
      py::arg("mask"), py::arg("value") = 1,
      "8-connected components of the pixels equal to value -> (labels int32 (H, W), areas int64).");

  m.def(
      "remove_small_regions",
      [](const py::array& masks, double area_thresh, bool holes) {
        const uint8_t* data = byte_data(masks, 3, "masks");
        const int64_t n = masks.shape(0), h = masks.shape(1), w = masks.shape(2);
        auto out = new_bool({n, h, w});
        auto changed = py::array_t<bool>(n);
        uint8_t* dst = reinterpret_cast<uint8_t*>(out.mutable_data());
        bool* flags = changed.mutable_data();
        {
          py::gil_scoped_release release;
#pragma omp parallel for schedule(dynamic, 1) if (n > 1 && worth_parallel(2 * n * h * w))
          for (int64_t i = 0; i < n; ++i)
            flags[i] = remove_small_regions(data + i * h * w, h, w, area_thresh, holes, dst + i * h * w);
        }
        return py::make_tuple(out, changed);
      },
      py::arg("masks"), py::arg("area_thresh"), py::arg("holes"),
      "(N, H, W) masks -> ((N, H, W) bool, (N,) bool changed), as amg.remove_small_regions.");

  m.def(
      "batched_nms",
      [](const py::array& boxes, const py::array& scores, const py::array& categories,
         double iou_threshold, bool offset_trick) {
        const float* b = typed_data<float>(boxes, 2, "boxes");
        const float* s = typed_data<float>(scores, 1, "scores");
        const int64_t* c = typed_data<int64_t>(categories, 1, "categories");
        const int64_t n = boxes.shape(0);
        if (boxes.shape(1) != 4 || scores.shape(0) != n || categories.shape(0) != n)
          throw std::invalid_argument("boxes (N, 4), scores (N,) and categories (N,) must agree");
        std::vector<int64_t> keep(n);
        int64_t kept;
        {
          py::gil_scoped_release release;
          kept = batched_nms(b, s, c, n, iou_threshold, offset_trick, keep.data());
        }
        return py::array_t<int64_t>(kept, keep.data());
      },
      py::arg("boxes"), py::arg("scores"), py::arg("categories"), py::arg("iou_threshold"),
      py::arg("offset_trick"), "Greedy NMS within categories -> kept indices, best first.");

  m.def(
      "upsample_threshold_stability",
      [](const py::array& low_res, std::pair<int64_t, int64_t> frame, std::pair<int64_t, int64_t> crop,
         std::pair<int64_t, int64_t> out_size, double threshold, double hi, double lo, bool want_masks,
         bool want_logits) {
        const float* src = typed_data<float>(low_res, 3, "low_res");
        UpsampleGeometry g{low_res.shape(1), low_res.shape(2), frame.first, frame.second,
                           crop.first,       crop.second,       out_size.first, out_size.second};
        if (g.in_h < 1 || g.in_w < 1 || g.crop_h < 1 || g.crop_w < 1 || g.crop_h > g.frame_h ||
            g.crop_w > g.frame_w || g.out_h < 1 || g.out_w < 1)
          throw std::invalid_argument("invalid geometry");
        const int64_t n = low_res.shape(0);
        py::object masks = py::none(), logits = py::none();
        uint8_t* mask_ptr = nullptr;
        float* logit_ptr = nullptr;
        if (want_masks) {
          auto a = new_bool({n, g.out_h, g.out_w});
          mask_ptr = reinterpret_cast<uint8_t*>(a.mutable_data());
          masks = a;
        }
        if (want_logits) {
          auto a = py::array_t<float>({n, g.out_h, g.out_w});
          logit_ptr = a.mutable_data();
          logits = a;
        }
        py::array_t<float> stability(n);
        py::array_t<int64_t> boxes({n, static_cast<int64_t>(4)});
        float* st = stability.mutable_data();
        int64_t* bx = boxes.mutable_data();
        {
          py::gil_scoped_release release;
          upsample_threshold_stability(src, n, g, static_cast<float>(threshold), static_cast<float>(hi),
                                       static_cast<float>(lo), mask_ptr, logit_ptr, st, bx);
        }
        return py::make_tuple(masks, logits, stability, boxes);
      },
      py::arg("low_res"), py::arg("frame"), py::arg("crop"), py::arg("out_size"), py::arg("threshold"),
      py::arg("hi"), py::arg("lo"), py::arg("want_masks") = true, py::arg("want_logits") = false,
      "(N, h, w) float32 low-res logits -> (masks, logits, stability, boxes); see "
      "sam_edge.postprocess.upsample_threshold_stability.");
}

}  // namespace sam_edge
