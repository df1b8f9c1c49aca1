// pybind11 module sam_edge._C_cuda: the CUDA kernels over raw device pointers.
//
// sam_edge.postprocess.cuda turns torch / CuPy / DLPack / __cuda_array_interface__
// arrays into (pointer, shape) and allocates the outputs; this layer only
// launches and turns every CUDA error into a RuntimeError naming the call.
#include <cuda_runtime_api.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "postprocess_cuda.h"

namespace py = pybind11;
namespace sc = sam_edge::cuda;

namespace {

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("sam_edge._C_cuda.") + what + ": " + cudaGetErrorName(err) + ": " +
                             cudaGetErrorString(err));
}

template <typename T>
T* ptr(uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

cudaStream_t as_stream(uintptr_t s) { return reinterpret_cast<cudaStream_t>(s); }

}  // namespace

PYBIND11_MODULE(_C_cuda, m) {
  m.doc() = "sam-edge CUDA post-processing kernels. Use sam_edge.postprocess.cuda, not this module.";

  m.def("device_count", []() {
    int count = 0;
    check(cudaGetDeviceCount(&count), "device_count");
    return count;
  });
  m.def("runtime_version", []() {
    int version = 0;
    check(cudaRuntimeGetVersion(&version), "runtime_version");
    return version;
  });

  m.def(
      "stability_scores",
      [](uintptr_t logits, int64_t n, int64_t hw, double hi, double lo, uintptr_t scores, uintptr_t stream) {
        py::gil_scoped_release release;
        check(sc::stability_scores(ptr<const float>(logits), n, hw, static_cast<float>(hi), static_cast<float>(lo),
                                   ptr<float>(scores), as_stream(stream)),
              "stability_scores");
      },
      py::arg("logits"), py::arg("n"), py::arg("hw"), py::arg("hi"), py::arg("lo"), py::arg("scores"),
      py::arg("stream") = 0);

  m.def(
      "masks_to_boxes",
      [](uintptr_t masks, int64_t n, int64_t h, int64_t w, uintptr_t boxes, uintptr_t stream) {
        py::gil_scoped_release release;
        check(sc::masks_to_boxes(ptr<const uint8_t>(masks), n, h, w, ptr<int64_t>(boxes), as_stream(stream)),
              "masks_to_boxes");
      },
      py::arg("masks"), py::arg("n"), py::arg("h"), py::arg("w"), py::arg("boxes"), py::arg("stream") = 0);

  m.def(
      "upsample_threshold_stability",
      [](uintptr_t low_res, int64_t n, int64_t in_h, int64_t in_w, int64_t frame_h, int64_t frame_w,
         int64_t crop_h, int64_t crop_w, int64_t out_h, int64_t out_w, double threshold, double hi, double lo,
         uintptr_t masks, uintptr_t logits, uintptr_t stability, uintptr_t boxes, uintptr_t stream) {
        py::gil_scoped_release release;
        check(sc::upsample_threshold_stability(ptr<const float>(low_res), n, in_h, in_w, frame_h, frame_w, crop_h,
                                               crop_w, out_h, out_w, static_cast<float>(threshold),
                                               static_cast<float>(hi), static_cast<float>(lo), ptr<uint8_t>(masks),
                                               ptr<float>(logits), ptr<float>(stability), ptr<int64_t>(boxes),
                                               as_stream(stream)),
              "upsample_threshold_stability");
      },
      py::arg("low_res"), py::arg("n"), py::arg("in_h"), py::arg("in_w"), py::arg("frame_h"), py::arg("frame_w"),
      py::arg("crop_h"), py::arg("crop_w"), py::arg("out_h"), py::arg("out_w"), py::arg("threshold"),
      py::arg("hi"), py::arg("lo"), py::arg("masks"), py::arg("logits"), py::arg("stability"), py::arg("boxes"),
      py::arg("stream") = 0);

  m.def(
      "rle_change_positions",
      [](uintptr_t masks, int64_t n, int64_t h, int64_t w, uintptr_t stream) {
        std::vector<int64_t> positions;
        {
          py::gil_scoped_release release;
          check(sc::rle_change_positions(ptr<const uint8_t>(masks), n, h, w, positions, as_stream(stream)),
                "rle_change_positions");
        }
        return py::array_t<int64_t>(positions.size(), positions.data());
      },
      py::arg("masks"), py::arg("n"), py::arg("h"), py::arg("w"), py::arg("stream") = 0,
      "Run boundaries of n masks (global column-major positions), on the host.");

  m.def(
      "batched_nms",
      [](uintptr_t boxes, uintptr_t scores, uintptr_t categories, int64_t n, double iou_threshold, bool offset_trick,
         uintptr_t stream) {
        std::vector<int64_t> keep;
        {
          py::gil_scoped_release release;
          check(sc::batched_nms(ptr<const float>(boxes), ptr<const float>(scores), ptr<const int64_t>(categories), n,
                                iou_threshold, offset_trick, keep, as_stream(stream)),
                "batched_nms");
        }
        return py::array_t<int64_t>(keep.size(), keep.data());
      },
      py::arg("boxes"), py::arg("scores"), py::arg("categories"), py::arg("n"), py::arg("iou_threshold"),
      py::arg("offset_trick"), py::arg("stream") = 0, "Kept indices (on the host), best first.");
}
