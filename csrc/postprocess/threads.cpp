// How many OpenMP threads the kernels use, and when a loop is worth them.
#include "postprocess_internal.h"

namespace sam_edge {

using namespace postprocess;

int max_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

bool worth_parallel(int64_t work) { return work >= (int64_t{1} << 22) && max_threads() > 1; }

}  // namespace sam_edge
