// Where a CPU kernel's parallel loops run: a host's thread pool when it lends
// one (the op library hands ONNX Runtime's intra-op pool over, so a kernel
// shares the session's threads instead of starting an OpenMP team beside them),
// else OpenMP, as the sam_edge._C bindings run.
#pragma once

#include <cstdint>
#include <functional>

namespace sam_edge {

// Runs body(i) for every i in [0, tasks), in any order and on any threads, and
// returns when all have run. A body may run on any thread, so per-thread scratch
// it takes is the running thread's, never one indexed by a thread number.
using TaskRunner = std::function<void(int64_t tasks, const std::function<void(int64_t)>& body)>;

// A kernel's workers: `runner` when given, else an OpenMP team of `threads` (>= 1).
struct Workers {
  int threads;
  const TaskRunner* runner;
};

// threads < 1 means every OpenMP thread (1 without OpenMP).
Workers make_workers(int threads, const TaskRunner* runner);

// body(begin, end) over [0, n) in tasks of at most `grain` consecutive items,
// returning when all have run: consecutive calls are the phases of one OpenMP
// region, with its barrier between them. `balanced`: tasks of uneven cost, which
// OpenMP hands out one at a time (a pool hands out every task that way).
void parallel_for(const Workers& workers, int64_t n, int64_t grain,
                  const std::function<void(int64_t begin, int64_t end)>& body, bool balanced = false);

}  // namespace sam_edge
