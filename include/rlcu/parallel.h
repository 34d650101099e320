// CPU threads for the CPU kernels: a small process-wide pool and parallel_for over a fixed partition.
//
// parallel_for(n, grain, fn) cuts [0, n) into the chunks [c*grain, min(n, (c+1)*grain)) and calls fn(begin, end)
// once per chunk, on the pool's threads and the caller. The chunks depend only on n and grain - never on the number
// of threads - and a kernel gives each chunk its own outputs (rows, columns, sequences) and keeps every reduction
// inside one chunk in its serial order, so a result is bitwise the same with 1 thread or many. Which thread runs a
// chunk and in which order chunks finish are not defined. A call from inside a chunk (nesting) runs inline. The
// first exception thrown by a chunk is rethrown to the caller after all chunks have finished or been skipped.
//
// The pool has cpu_threads() - 1 workers (the caller is the last); set_cpu_threads(0) means all cores
// (std::thread::hardware_concurrency). It is resized only between parallel_for calls.
#pragma once

#include <cstdint>
#include <functional>

namespace rlcu {

// Number of threads the CPU kernels use (>= 1); the default is all cores.
int cpu_threads();
// n >= 1 threads, or 0 for all cores. Not thread-safe against a concurrent parallel_for.
void set_cpu_threads(int n);
// Cores of this machine (>= 1).
int cpu_cores();

// fn(begin, end) over the chunks of [0, n) of `grain` items (grain >= 1); n <= 0 does nothing.
void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

// The grain that gives each chunk at least `min_work` units when one item costs `item_work` units (>= 1 item).
// Kernels use it to keep small ops on one thread; the partition still depends only on the problem size.
inline int64_t grain_for(int64_t item_work, int64_t min_work = int64_t{1} << 15) {
  if (item_work <= 0) return min_work;
  const int64_t g = (min_work + item_work - 1) / item_work;
  return g < 1 ? 1 : g;
}

}  // namespace rlcu
