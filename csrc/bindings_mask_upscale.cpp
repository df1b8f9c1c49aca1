// sam_edge._C's mask upscaling: a thin layer over mask_upscale.h.
// sam_edge/kernels/mask_upscale.py is its interface.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "bindings.h"
#include "mask_upscale.h"

namespace sam_edge {

namespace {

void check_shape(const py::array& a, const std::vector<int64_t>& shape, const char* name) {
  for (size_t i = 0; i < shape.size(); ++i)
    if (a.shape(i) != shape[i])
      throw std::invalid_argument(std::string("mask_upscale: ") + name + " does not match src's channels");
}

}  // namespace

void bind_mask_upscale(py::module_& m) {
  m.def("mask_upscale_has_avx512", &mask_upscale_has_avx512, "Whether mask_upscale runs its AVX-512 path on this CPU.");
  m.def(
      "mask_upscale",
      [](const py::array& src, const py::array& hyper_in, const py::array& conv1_weight, const py::array& conv1_bias,
         const py::array& norm_weight, const py::array& norm_bias, const py::array& conv2_weight,
         const py::array& conv2_bias, int64_t height, int64_t width, double epsilon, int threads,
         bool force_portable) {
        checked_threads(threads);
        const float* sp = typed_data<float>(src, 3, "src");
        const float* hp = typed_data<float>(hyper_in, 3, "hyper_in");
        const int64_t c = src.shape(2), c1 = c / 4, c2 = c / 8;
        if (c < 8 || c % 8 != 0 || height < 1 || width < 1 || src.shape(1) != height * width)
          throw std::invalid_argument("mask_upscale: expected src (S, height * width, C), C a multiple of 8");
        if (hyper_in.shape(2) != c2 || (src.shape(0) != 1 && src.shape(0) != hyper_in.shape(0)))
          throw std::invalid_argument("mask_upscale: expected hyper_in (B, T, C / 8) with src's batch 1 or B");
        MaskUpscaleWeights weights{typed_data<float>(conv1_weight, 4, "conv1_weight"),
                                   typed_data<float>(conv1_bias, 1, "conv1_bias"),
                                   typed_data<float>(norm_weight, 1, "norm_weight"),
                                   typed_data<float>(norm_bias, 1, "norm_bias"),
                                   typed_data<float>(conv2_weight, 4, "conv2_weight"),
                                   typed_data<float>(conv2_bias, 1, "conv2_bias")};
        check_shape(conv1_weight, {c, c1, 2, 2}, "conv1_weight");
        check_shape(conv1_bias, {c1}, "conv1_bias");
        check_shape(norm_weight, {c1}, "norm_weight");
        check_shape(norm_bias, {c1}, "norm_bias");
        check_shape(conv2_weight, {c1, c2, 2, 2}, "conv2_weight");
        check_shape(conv2_bias, {c2}, "conv2_bias");
        const int64_t b = hyper_in.shape(0), t = hyper_in.shape(1);
        py::array_t<float> out({b, t, 4 * height, 4 * width});
        if (b == 0 || t == 0) return out;
        float* op = out.mutable_data();
        {
          py::gil_scoped_release release;
          mask_upscale_cpu(sp, hp, weights, op, src.shape(0), b, t, height, width, c, static_cast<float>(epsilon),
                           threads, force_portable);
        }
        return out;
      },
      py::arg("src"), py::arg("hyper_in"), py::arg("conv1_weight"), py::arg("conv1_bias"), py::arg("norm_weight"),
      py::arg("norm_bias"), py::arg("conv2_weight"), py::arg("conv2_bias"), py::arg("height"), py::arg("width"),
      py::arg("epsilon"), py::arg("threads") = 0, py::arg("force_portable") = false,
      "SAM's mask upscaling and hypernetwork product over float32 arrays -> (B, T, 4h, 4w); see mask_upscale.h.");
  m.def(
      "mask_upscale_gelu",
      [](const py::array& x, bool force_portable) {
        const float* xp = typed_data<float>(x, 1, "x");
        py::array_t<float> out(x.shape(0));
        mask_upscale_gelu_cpu(xp, out.mutable_data(), x.shape(0), force_portable);
        return out;
      },
      py::arg("x"), py::arg("force_portable") = false, "The GELU mask_upscale applies, on a float32 vector.");
}

}  // namespace sam_edge
