// parallel_for on a host's pool or on OpenMP; see task_runner.h.
#include "task_runner.h"

#include <algorithm>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace sam_edge {

Workers make_workers(int threads, const TaskRunner* runner) {
#ifdef _OPENMP
  return Workers{threads < 1 ? omp_get_max_threads() : threads, runner};
#else
  (void)threads;
  return Workers{1, runner};
#endif
}

void parallel_for(const Workers& workers, int64_t n, int64_t grain,
                  const std::function<void(int64_t begin, int64_t end)>& body, bool balanced) {
  if (n <= 0) return;
  grain = std::max<int64_t>(1, grain);
  const int64_t tasks = (n + grain - 1) / grain;
  const auto task = [&](int64_t t) { body(t * grain, std::min(n, (t + 1) * grain)); };
  if (workers.runner) {
    (*workers.runner)(tasks, task);
    return;
  }
  if (balanced) {
#pragma omp parallel for num_threads(workers.threads) schedule(dynamic, 1)
    for (int64_t t = 0; t < tasks; ++t) task(t);
  } else {
#pragma omp parallel for num_threads(workers.threads) schedule(static)
    for (int64_t t = 0; t < tasks; ++t) task(t);
  }
}

}  // namespace sam_edge
