// The CPU thread pool behind parallel_for (see include/rlcu/parallel.h): workers sleep on a condition variable;
// a call publishes one job (the chunk count and the function), every thread - the caller included - takes chunk
// indices from the job's atomic counter until none is left, and the caller waits until all its chunks have
// finished. A worker that wakes late holds the job it woke for, whose counter is spent: it never takes a chunk of
// a later job by mistake. One job runs at a time; a call from another thread meanwhile runs its chunks inline.
#include "rlcu/parallel.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace rlcu {

namespace {

thread_local bool in_chunk = false;  // set while a thread runs a chunk: nested calls run inline

// One parallel_for call: its chunks are handed out by `next`; `pending` counts the chunks not yet finished.
struct Job {
  const std::function<void(int64_t, int64_t)>* fn = nullptr;
  int64_t n = 0, grain = 1, chunks = 0;
  std::atomic<int64_t> next{0};
  std::atomic<bool> failed{false};
  int64_t pending = 0;  // guarded by Pool::mu_
  std::exception_ptr error;  // guarded by Pool::mu_
};

class Pool {
 public:
  ~Pool() { resize(1); }

  int threads() const { return threads_; }

  void resize(int n) {
    std::lock_guard<std::mutex> run_lock(run_mu_);
    if (n == threads_) return;
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    wake_.notify_all();
    for (std::thread& t : workers_) t.join();
    workers_.clear();
    stop_ = false;
    threads_ = n;
    for (int i = 1; i < n; ++i) workers_.emplace_back([this] { work(); });
  }

  // False when another thread's job is running (the caller then runs its chunks inline).
  bool run(int64_t chunks, int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
    std::unique_lock<std::mutex> run_lock(run_mu_, std::try_to_lock);
    if (!run_lock.owns_lock()) return false;
    auto job = std::make_shared<Job>();
    job->fn = &fn;
    job->n = n;
    job->grain = grain;
    job->chunks = chunks;
    job->pending = chunks;
    {
      std::lock_guard<std::mutex> lock(mu_);
      job_ = job;
      ++generation_;
    }
    wake_.notify_all();
    take_chunks(*job);
    std::unique_lock<std::mutex> lock(mu_);
    done_.wait(lock, [&] { return job->pending == 0; });
    job_.reset();
    if (job->error) std::rethrow_exception(job->error);
    return true;
  }

 private:
  void work() {
    uint64_t seen = 0;
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      wake_.wait(lock, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
      std::shared_ptr<Job> job = job_;
      lock.unlock();
      if (job) take_chunks(*job);
      lock.lock();
    }
  }

  // Runs chunks of `job` until none is left; the thread that finishes the last one wakes the caller.
  void take_chunks(Job& job) {
    int64_t finished = 0;
    for (;;) {
      const int64_t c = job.next.fetch_add(1);
      if (c >= job.chunks) break;
      const int64_t b = c * job.grain, e = std::min(job.n, b + job.grain);
      if (!job.failed.load()) {
        in_chunk = true;
        try {
          (*job.fn)(b, e);
        } catch (...) {
          std::lock_guard<std::mutex> lock(mu_);
          if (!job.error) job.error = std::current_exception();
          job.failed.store(true);
        }
        in_chunk = false;
      }
      ++finished;
    }
    if (finished == 0) return;
    std::lock_guard<std::mutex> lock(mu_);
    job.pending -= finished;
    if (job.pending == 0) done_.notify_all();
  }

  int threads_ = 1;
  std::vector<std::thread> workers_;
  std::mutex run_mu_;  // one job at a time
  std::mutex mu_;
  std::condition_variable wake_, done_;
  bool stop_ = false;
  uint64_t generation_ = 0;
  std::shared_ptr<Job> job_;
};

Pool& pool() {
  static Pool p;
  static const bool started = [] {
    p.resize(cpu_cores());
    return true;
  }();
  (void)started;
  return p;
}

}  // namespace

int cpu_cores() { return std::max(1u, std::thread::hardware_concurrency()); }

int cpu_threads() { return pool().threads(); }

void set_cpu_threads(int n) { pool().resize(n <= 0 ? cpu_cores() : n); }

void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(1, grain);
  const int64_t chunks = (n + grain - 1) / grain;
  Pool& p = pool();
  if (chunks == 1 || p.threads() == 1 || in_chunk) {
    for (int64_t b = 0; b < n; b += grain) fn(b, std::min(n, b + grain));
    return;
  }
  if (!p.run(chunks, n, grain, fn))
    for (int64_t b = 0; b < n; b += grain) fn(b, std::min(n, b + grain));
}

}  // namespace rlcu
