// The launch probe and the failed-call query.
#include "common.cuh"

namespace sam_edge {
namespace cuda {
namespace {

using namespace detail;

__global__ void probe_kernel(int* value) { *value = __reduce_min_sync(1u, 7); }

}  // namespace

using detail::failed_call;
using detail::invalid;

const char* last_failed_call() { return failed_call; }

cudaError_t probe(int* value) {
  *value = 0;
  failed_call = "";
  int* device_value = nullptr;
  SAM_EDGE_TRY(cudaMalloc(&device_value, sizeof(int)));
  probe_kernel<<<1, 1>>>(device_value);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) {
    failed_call = "launch of probe_kernel";
  } else if ((err = cudaDeviceSynchronize()) != cudaSuccess) {
    failed_call = "cudaDeviceSynchronize after probe_kernel";
  } else if ((err = cudaMemcpy(value, device_value, sizeof(int), cudaMemcpyDeviceToHost)) != cudaSuccess) {
    failed_call = "cudaMemcpy of the probe's result";
  }
  const cudaError_t freed = cudaFree(device_value);
  if (err == cudaSuccess && freed != cudaSuccess) {
    failed_call = "cudaFree(device_value)";
    err = freed;
  }
  return err;
}

}  // namespace cuda
}  // namespace sam_edge
