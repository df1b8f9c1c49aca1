// Shared by sam_edge._C's bindings (bindings_*.cpp, module.cpp): the array
// checks at the edge of the C++ core, and each library's binder.
//
// The Python package validates user input and hands these functions
// C-contiguous arrays of the right dtype; the checks here only guard memory
// safety, and raise ValueError (std::invalid_argument).
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>

namespace sam_edge {

namespace py = pybind11;

// Adds the attention functions (attention.h) to the module.
void bind_attention(py::module_& m);
// Adds the post-processing functions (postprocess.h) to the module.
void bind_postprocess(py::module_& m);
// Adds the mask upscaling (mask_upscale.h) to the module.
void bind_mask_upscale(py::module_& m);

template <typename T>
inline const T* typed_data(const py::array& a, int ndim, const char* name) {
  if (!py::isinstance<py::array_t<T>>(a))
    throw std::invalid_argument(std::string(name) + " has dtype " + std::string(py::str(a.dtype())) +
                                ", expected " + std::string(py::str(py::dtype::of<T>())));
  if (a.ndim() != ndim)
    throw std::invalid_argument(std::string(name) + " must have " + std::to_string(ndim) +
                                " dimensions, got " + std::to_string(a.ndim()));
  if (!(a.flags() & py::array::c_style))
    throw std::invalid_argument(std::string(name) + " must be C-contiguous");
  return static_cast<const T*>(a.data());
}

// OpenMP aborts the process when it cannot start a team, so an absurd thread
// count is refused here; below 1 means all cores.
constexpr int kMaxThreads = 1024;

inline int checked_threads(int threads) {
  if (threads > kMaxThreads)
    throw std::invalid_argument("threads must be at most " + std::to_string(kMaxThreads) + " (0 for all cores), got " +
                                std::to_string(threads));
  return threads;
}

}  // namespace sam_edge
