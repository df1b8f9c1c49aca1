// pybind11 module sam_edge._C_cuda: the CUDA kernels over raw device pointers.
//
// sam_edge.postprocess.cuda turns torch / CuPy / DLPack / __cuda_array_interface__
// arrays into (pointer, shape), checks them and allocates the outputs; this
// layer only launches, on the device it is given, and turns every CUDA error
// into a RuntimeError naming the binding and the CUDA call that failed.
#include <cuda_runtime_api.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "postprocess_cuda.h"

// setup.py defines the targets it compiled the kernels for.
#ifndef SAM_EDGE_CUDA_ARCHS
#define SAM_EDGE_CUDA_ARCHS "unknown targets"
#endif

namespace py = pybind11;
namespace sc = sam_edge::cuda;

namespace {

std::string describe(cudaError_t err) { return std::string(cudaGetErrorName(err)) + ": " + cudaGetErrorString(err); }

void check(cudaError_t err, const char* what, const char* call = nullptr) {
  if (err == cudaSuccess) return;
  if (!call) call = sc::last_failed_call();
  throw std::runtime_error(std::string("sam_edge._C_cuda.") + what + ": " + (*call ? call : "a CUDA call") +
                           " failed: " + describe(err));
}

// Makes `device` current for a scope (device < 0: leave the current one).
class DeviceGuard {
 public:
  DeviceGuard(int device, const char* what) {
    if (device < 0) return;
    check(cudaGetDevice(&previous_), what, "cudaGetDevice");
    if (previous_ != device) check(cudaSetDevice(device), what, "cudaSetDevice");
    else previous_ = -1;
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;
  ~DeviceGuard() {
    if (previous_ >= 0) cudaSetDevice(previous_);  // back to a device that was current: cannot fail usefully
  }

 private:
  int previous_ = -1;
};

template <typename T>
T* ptr(uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

cudaStream_t as_stream(uintptr_t s) { return reinterpret_cast<cudaStream_t>(s); }

}  // namespace

PYBIND11_MODULE(_C_cuda, m) {
  m.doc() = "sam-edge CUDA post-processing kernels. Use sam_edge.postprocess.cuda, not this module.";
  m.attr("CUDA_ARCHS") = SAM_EDGE_CUDA_ARCHS;

  m.def("device_count", []() {
    int count = 0;
    check(cudaGetDeviceCount(&count), "device_count", "cudaGetDeviceCount");
    return count;
  });
  m.def("runtime_version", []() {
    int version = 0;
    check(cudaRuntimeGetVersion(&version), "runtime_version", "cudaRuntimeGetVersion");
    return version;
  });

  m.def("current_device", []() {
    int device = 0;
    check(cudaGetDevice(&device), "current_device", "cudaGetDevice");
    return device;
  });

  m.def(
      "probe",
      [](int device) -> std::string {
        int value = 0;
        cudaError_t err;
        {
          py::gil_scoped_release release;
          DeviceGuard guard(device, "probe");
          err = sc::probe(&value);
        }
        if (err == cudaSuccess && value == 7) return "";
        int which = device, major = 0, minor = 0;
        std::string where;
        if ((which >= 0 || cudaGetDevice(&which) == cudaSuccess) &&
            cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, which) == cudaSuccess &&
            cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, which) == cudaSuccess)
          where = " (device " + std::to_string(which) + ", compute capability " + std::to_string(major) + "." +
                  std::to_string(minor) + ")";
        if (err != cudaSuccess) return std::string(sc::last_failed_call()) + ": " + describe(err) + where;
        return "probe_kernel ran but wrote " + std::to_string(value) + " instead of 7" + where;
      },
      py::arg("device") = -1,
      "Launches a one-thread kernel on `device` (-1: the current one) and waits: '' when it ran, else why not.");

  m.def(
      "pointer_device",
      [](uintptr_t p) {
        cudaPointerAttributes attributes{};
        check(cudaPointerGetAttributes(&attributes, reinterpret_cast<const void*>(p)), "pointer_device",
              "cudaPointerGetAttributes");
        const bool on_device = attributes.type == cudaMemoryTypeDevice || attributes.type == cudaMemoryTypeManaged;
        return on_device ? attributes.device : -1;
      },
      py::arg("pointer"), "The device ordinal owning a device or managed pointer; -1 for host memory.");

  m.attr("RLE_DEFAULT_SCRATCH_BYTES") = sc::kRleDefaultScratchBytes;
  m.attr("RLE_RESERVED_BYTES") = sc::kRleReservedBytes;
  m.def(
      "rle_chunk_plan",
      [](int64_t n, int64_t hw, int64_t scratch_bytes) {
        const sc::RleChunkPlan plan(n, hw, scratch_bytes, sc::kRleReservedBytes);
        py::list chunks;
        for (int64_t k = 0; k < plan.chunks(); ++k) chunks.append(py::make_tuple(plan.first(k), plan.items(k)));
        return py::make_tuple(chunks, plan.scratch_bytes());
      },
      py::arg("n"), py::arg("hw"), py::arg("scratch_bytes"),
      "The RLE pass's chunking before CUB is asked (host only): ([(first_item, items)], scratch bytes).");

  m.def(
      "stability_scores",
      [](uintptr_t logits, int64_t n, int64_t hw, double hi, double lo, uintptr_t scores, uintptr_t stream,
         int device) {
        py::gil_scoped_release release;
        DeviceGuard guard(device, "stability_scores");
        check(sc::stability_scores(ptr<const float>(logits), n, hw, static_cast<float>(hi), static_cast<float>(lo),
                                   ptr<float>(scores), as_stream(stream)),
              "stability_scores");
      },
      py::arg("logits"), py::arg("n"), py::arg("hw"), py::arg("hi"), py::arg("lo"), py::arg("scores"),
      py::arg("stream") = 0, py::arg("device") = -1);

  m.def(
      "masks_to_boxes",
      [](uintptr_t masks, int64_t n, int64_t h, int64_t w, uintptr_t boxes, uintptr_t stream, int device) {
        py::gil_scoped_release release;
        DeviceGuard guard(device, "masks_to_boxes");
        check(sc::masks_to_boxes(ptr<const uint8_t>(masks), n, h, w, ptr<int64_t>(boxes), as_stream(stream)),
              "masks_to_boxes");
      },
      py::arg("masks"), py::arg("n"), py::arg("h"), py::arg("w"), py::arg("boxes"), py::arg("stream") = 0,
      py::arg("device") = -1);

  m.def(
      "upsample_threshold_stability",
      [](uintptr_t low_res, int64_t n, int64_t in_h, int64_t in_w, int64_t frame_h, int64_t frame_w,
         int64_t crop_h, int64_t crop_w, int64_t out_h, int64_t out_w, double threshold, double hi, double lo,
         uintptr_t masks, uintptr_t logits, uintptr_t stability, uintptr_t boxes, uintptr_t stream, int device) {
        py::gil_scoped_release release;
        DeviceGuard guard(device, "upsample_threshold_stability");
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
      py::arg("stream") = 0, py::arg("device") = -1);

  m.def(
      "rle_change_positions",
      [](uintptr_t masks, int64_t n, int64_t h, int64_t w, uintptr_t stream, int device, int64_t scratch_bytes) {
        std::vector<int64_t> positions;
        {
          py::gil_scoped_release release;
          DeviceGuard guard(device, "rle_change_positions");
          check(sc::rle_change_positions(ptr<const uint8_t>(masks), n, h, w, positions, scratch_bytes,
                                         as_stream(stream)),
                "rle_change_positions");
        }
        return py::array_t<int64_t>(positions.size(), positions.data());
      },
      py::arg("masks"), py::arg("n"), py::arg("h"), py::arg("w"), py::arg("stream") = 0, py::arg("device") = -1,
      py::arg("scratch_bytes") = sc::kRleDefaultScratchBytes,
      "Run boundaries of n masks (global column-major positions), on the host.");

  m.def(
      "batched_nms",
      [](uintptr_t boxes, uintptr_t scores, uintptr_t categories, int64_t n, double iou_threshold, bool offset_trick,
         uintptr_t stream, int device) {
        std::vector<int64_t> keep;
        {
          py::gil_scoped_release release;
          DeviceGuard guard(device, "batched_nms");
          check(sc::batched_nms(ptr<const float>(boxes), ptr<const float>(scores), ptr<const int64_t>(categories), n,
                                iou_threshold, offset_trick, keep, as_stream(stream)),
                "batched_nms");
        }
        return py::array_t<int64_t>(keep.size(), keep.data());
      },
      py::arg("boxes"), py::arg("scores"), py::arg("categories"), py::arg("n"), py::arg("iou_threshold"),
      py::arg("offset_trick"), py::arg("stream") = 0, py::arg("device") = -1, "Kept indices (on the host), best first.");
}
