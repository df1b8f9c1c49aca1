// pybind11 module sam_edge._C: the module-wide settings (OpenMP threads), then
// each library's functions (bindings_attention.cpp, bindings_postprocess.cpp,
// bindings_mask_upscale.cpp).
#include <pybind11/pybind11.h>

#include <stdexcept>

#include "bindings.h"
#include "postprocess.h"

#ifdef _OPENMP
#include <omp.h>
#endif

PYBIND11_MODULE(_C, m) {
  using namespace sam_edge;
  m.doc() =
      "sam-edge compiled CPU kernels: post-processing, attention and mask upscaling. Use sam_edge.postprocess, "
      "sam_edge.kernels.cpu_attention and sam_edge.kernels.mask_upscale, not this module.";

  m.def("num_threads", &max_threads, "Threads the kernels use (1 when built without OpenMP).");
  m.def(
      "set_num_threads",
      [](int threads) {
        if (threads < 1) throw std::invalid_argument("threads must be >= 1");
        checked_threads(threads);
#ifdef _OPENMP
        omp_set_num_threads(threads);
#endif
      },
      py::arg("threads"));
  m.attr("openmp") =
#ifdef _OPENMP
      true;
#else
      false;
#endif

  bind_attention(m);
  bind_postprocess(m);
  bind_mask_upscale(m);
}
