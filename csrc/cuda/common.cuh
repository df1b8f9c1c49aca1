// Internal to csrc/cuda: what every kernel file shares (launch sizes, the
// failed-call record, the stream-ordered scratch allocator). Contract of the
// entry points: postprocess_cuda.h.
//
// Float arithmetic that must reproduce the CPU kernels (and torch) uses the
// explicitly rounded intrinsics (__fmul_rn, __fadd_rn), so no compiler flag
// can fuse it into multiply-adds; the one intended fused multiply-add (the
// source coordinate, as torch computes it) is an explicit fmaf.
#pragma once

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "postprocess_cuda.h"

namespace sam_edge {
namespace cuda {
namespace detail {

constexpr int kThreads = 256;

// The source text of the call that failed last on this thread.
inline thread_local const char* failed_call = "";

// Returns a failed CUDA call's error, recording the call's source text.
#define SAM_EDGE_TRY(expr)                 \
  do {                                     \
    const cudaError_t err_ = (expr);       \
    if (err_ != cudaSuccess) {             \
      failed_call = #expr;                 \
      return err_;                         \
    }                                      \
  } while (0)

// Kernel launches report configuration errors through cudaGetLastError.
#define SAM_EDGE_TRY_LAUNCH(kernel)                  \
  do {                                               \
    const cudaError_t err_ = cudaGetLastError();     \
    if (err_ != cudaSuccess) {                       \
      failed_call = "launch of " #kernel;            \
      return err_;                                   \
    }                                                \
  } while (0)

// Device scratch memory from the stream-ordered allocator, freed on scope exit.
class Scratch {
 public:
  explicit Scratch(cudaStream_t stream) : stream_(stream) {}
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  // A failed free cannot be reported from a destructor; the error stays
  // pending and the next call's cudaGetLastError reports it.
  ~Scratch() {
    for (void* p : blocks_) cudaFreeAsync(p, stream_);
  }
  template <typename T>
  cudaError_t alloc(T** out, size_t count) {
    void* p = nullptr;
    const cudaError_t err = cudaMallocAsync(&p, std::max<size_t>(1, count * sizeof(T)), stream_);
    if (err != cudaSuccess) return err;
    blocks_.push_back(p);
    *out = static_cast<T*>(p);
    return cudaSuccess;
  }

 private:
  cudaStream_t stream_;
  std::vector<void*> blocks_;
};

inline unsigned blocks_for(int64_t work, int64_t cap = 4096) {
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(cap, (work + kThreads - 1) / kThreads)));
}

// Grid y and z are limited to 65535 on every architecture (x to 2^31 - 1, which
// blocks_for stays under): kernels loop over the masks (or row blocks) of a
// y grid this size.
constexpr int64_t kMaxGridY = 65535;

inline unsigned grid_y(int64_t n) { return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(n, kMaxGridY))); }

__device__ __forceinline__ unsigned long long warp_sum(unsigned long long v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

inline cudaError_t invalid(const char* why) {
  failed_call = why;
  return cudaErrorInvalidValue;
}

}  // namespace detail

}  // namespace cuda
}  // namespace sam_edge
