// The NCCL communicator: collectives on CUDA tensors (built only when CMake finds NCCL).
//
// Ordering without synchronisation: a collective records `ready` on the caller's context stream, the
// communicator's own stream waits on it, NCCL runs there, a `done` event is recorded after it and the context
// stream waits on that. Buffers therefore follow the context stream's order on both sides of a collective.
//
// Failure handling: the NCCL communicator is non-blocking (ncclConfig_t::blocking = 0), so no NCCL call can block
// the host; calls that answer ncclInProgress are polled with a deadline. A watchdog thread polls, every 100 ms,
//   * ncclCommGetAsyncError (NCCL's own network and internal errors),
//   * the `done` events of queued collectives, each against the collective timeout counted from when it was queued,
//   * the rendezvous links (PeerMonitor): another rank's process that ends without closing its communicator,
// and on any of them aborts the communicator (ncclCommAbort, which also ends kernels waiting for dead peers),
// records the reason for check() and every later call, and closes its rendezvous links so that the other ranks
// learn of it within one poll. Every NCCL call is made under one mutex, so the abort never races an enqueue.
// NCCL_NVLS_ENABLE=0 is put in the environment before NCCL first reads it, unless it is set already.
#include <nccl.h>

#include <cuda_runtime_api.h>

#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <mutex>
#include <optional>
#include <thread>

#include <spdlog/spdlog.h>

#include "backends.h"
#include "rendezvous.h"
#include "rlcu/cuda_check.h"
#include "rlcu/error.h"

namespace rlcu::dist {

namespace {

constexpr int kWatchMs = 100;

ncclDataType_t nccl_type(DType t) {
  switch (t) {
    case DType::F32: return ncclFloat32;
    case DType::F64: return ncclFloat64;
    case DType::BF16: return ncclBfloat16;
    case DType::F16: return ncclFloat16;
    case DType::I32: return ncclInt32;
    case DType::I64: return ncclInt64;
    case DType::U8: return ncclUint8;
  }
  return ncclFloat32;
}

ncclRedOp_t nccl_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::Sum: return ncclSum;
    case ReduceOp::Max: return ncclMax;
    case ReduceOp::Min: return ncclMin;
  }
  return ncclSum;
}

std::string what_of(const char* name, const Tensor& t) {
  return fmt::format("{} of {} x {}", name, t.numel(), dtype_name(t.dtype));
}

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(const DistEnv& env, Context& ctx, const DistOptions& opt);
  ~NcclCommunicator() override;
  Backend backend() const override { return Backend::Nccl; }

  void all_reduce(const Tensor& x, ReduceOp op, Context& ctx) override {
    check_all_reduce(*this, x, true);
    run(what_of("all_reduce", x), ctx, x.numel() == 0, [&](ncclComm_t c, cudaStream_t s) {
      return ncclAllReduce(x.data, x.data, static_cast<size_t>(x.numel()), nccl_type(x.dtype), nccl_op(op), c, s);
    });
  }
  void reduce_scatter(const Tensor& out, const Tensor& in, ReduceOp op, Context& ctx) override {
    check_reduce_scatter(*this, out, in, true);
    run(what_of("reduce_scatter", in), ctx, out.numel() == 0, [&](ncclComm_t c, cudaStream_t s) {
      return ncclReduceScatter(in.data, out.data, static_cast<size_t>(out.numel()), nccl_type(in.dtype), nccl_op(op),
                               c, s);
    });
  }
  void all_gather(const Tensor& out, const Tensor& in, Context& ctx) override {
    check_all_gather(*this, out, in);
    run(what_of("all_gather", out), ctx, in.numel() == 0, [&](ncclComm_t c, cudaStream_t s) {
      return ncclAllGather(in.data, out.data, static_cast<size_t>(in.numel()), nccl_type(in.dtype), c, s);
    });
  }
  void broadcast(const Tensor& x, int root, Context& ctx) override {
    check_broadcast(*this, x, root);
    run(what_of("broadcast", x), ctx, x.numel() == 0, [&](ncclComm_t c, cudaStream_t s) {
      return ncclBroadcast(x.data, x.data, static_cast<size_t>(x.numel()), nccl_type(x.dtype), root, c, s);
    });
  }
  // A one-element all-reduce, waited for on the host: returns once every rank's barrier has run.
  void barrier(Context& ctx) override {
    cudaEvent_t done = run("barrier", ctx, false, [&](ncclComm_t c, cudaStream_t s) {
      return ncclAllReduce(token_, token_, 1, ncclInt32, ncclSum, c, s);
    });
    wait_event(done, "barrier");
  }
  void check() const override {
    std::lock_guard<std::mutex> lk(mu_);
    if (!failure_.empty()) throw Error(failure_);
  }

 private:
  struct Pending {
    cudaEvent_t done;
    Clock::time_point queued;
    std::string what;
  };

  template <class F>
  cudaEvent_t run(const std::string& what, Context& ctx, bool skip, F&& enqueue);
  ncclResult_t settle(ncclResult_t r, Deadline d);
  void wait_event(cudaEvent_t e, const char* what);
  void watch();
  void abort_locked(const std::string& msg);
  cudaEvent_t take_event_locked();
  void shut_down();

  DistOptions opt_;
  int device_ = 0;
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
  cudaEvent_t ready_ = nullptr;
  int* token_ = nullptr;  // device int for barrier()
  uint64_t seq_ = 0;

  mutable std::mutex mu_;  // guards everything below and every NCCL call
  std::string failure_;
  std::deque<Pending> pending_;
  std::vector<cudaEvent_t> free_events_;
  bool stop_ = false;
  std::condition_variable cv_;

  PeerMonitor monitor_;  // used by the watchdog thread only (once it runs)
  std::thread watchdog_;
};

NcclCommunicator::NcclCommunicator(const DistEnv& env, Context& ctx, const DistOptions& opt)
    : Communicator(env.rank, env.world_size, Device::CUDA), opt_(opt), device_(ctx.device_index()) {
  setenv("NCCL_NVLS_ENABLE", "0", 0);  // before NCCL reads its environment; a value set by the user stays
  RLCU_CUDA_CHECK(cudaSetDevice(device_));
  ncclUniqueId id;
  std::memset(&id, 0, sizeof id);
  if (env.rank == 0) {
    const ncclResult_t r = ncclGetUniqueId(&id);
    if (r != ncclSuccess) throw Error(fmt::format("rank 0: ncclGetUniqueId: {}", ncclGetErrorString(r)));
  }
  const Deadline deadline = deadline_after(opt.rendezvous_timeout_s);
  if (env.distributed()) {
    RendezvousResult rv = rendezvous(env, "nccl", env.rank == 0 ? std::string(id.internal, sizeof id.internal) : "",
                                     opt.rendezvous_timeout_s);
    const std::string& root = rv.ranks[0].blob;
    RLCU_CHECK(root.size() == sizeof id.internal, "NCCL unique id of {} bytes", root.size());
    std::memcpy(id.internal, root.data(), sizeof id.internal);
    std::vector<std::string> hosts;
    for (const RendezvousEntry& e : rv.ranks) hosts.push_back(e.host);
    monitor_ = PeerMonitor(env.rank, std::move(rv.links), std::move(hosts));
  }
  ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
  cfg.blocking = 0;
  cfg.commName = "rlcu";
  ncclResult_t r = ncclCommInitRankConfig(&comm_, env.world_size, id, env.rank, &cfg);
  // Set-up waits on the other ranks: poll, and give up when one of them ends or the deadline passes.
  while (r == ncclSuccess || r == ncclInProgress) {
    ncclResult_t state = ncclInProgress;
    r = ncclCommGetAsyncError(comm_, &state);
    if (r != ncclSuccess || state != ncclInProgress) {
      if (r == ncclSuccess) r = state;
      break;
    }
    if (!monitor_.watching()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    if (auto dead = monitor_.poll(10)) {
      (void)ncclCommAbort(comm_);
      monitor_.close_all();
      throw Error(fmt::format("rank {}: NCCL communicator set-up: {}", env.rank, *dead));
    }
    if (Clock::now() >= deadline) {
      (void)ncclCommAbort(comm_);
      monitor_.close_all();
      throw Error(fmt::format("rank {}: the NCCL communicator of {} ranks was not set up within {} "
                              "(RLCU_DIST_RENDEZVOUS_TIMEOUT_S)",
                              env.rank, env.world_size, seconds_text(opt.rendezvous_timeout_s)));
    }
  }
  if (r != ncclSuccess) {
    const std::string detail = comm_ ? ncclGetLastError(comm_) : "";
    if (comm_) (void)ncclCommAbort(comm_);
    monitor_.close_all();
    throw Error(fmt::format("rank {}: NCCL communicator set-up failed: {} {}", env.rank, ncclGetErrorString(r), detail));
  }
  int lo = 0, hi = 0;
  RLCU_CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&lo, &hi));
  // The highest priority lets gradient collectives overtake the backward kernels they overlap with.
  RLCU_CUDA_CHECK(cudaStreamCreateWithPriority(&stream_, cudaStreamNonBlocking, hi));
  RLCU_CUDA_CHECK(cudaEventCreateWithFlags(&ready_, cudaEventDisableTiming));
  RLCU_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&token_), sizeof(int)));
  RLCU_CUDA_CHECK(cudaMemset(token_, 0, sizeof(int)));
  watchdog_ = std::thread([this] { watch(); });
}

NcclCommunicator::~NcclCommunicator() {
  try {
    shut_down();
  } catch (const std::exception& e) {
    spdlog::error("rank {}: closing the NCCL communicator: {}", rank(), e.what());
  }
}

void NcclCommunicator::shut_down() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (watchdog_.joinable()) watchdog_.join();
  std::lock_guard<std::mutex> lk(mu_);
  if (comm_) {
    // Flush what is queued (bounded), then free; a communicator that cannot finish is aborted instead.
    ncclResult_t r = settle(ncclCommFinalize(comm_), deadline_after(opt_.collective_timeout_s));
    if (r == ncclSuccess) r = ncclCommDestroy(comm_);
    if (r != ncclSuccess) {
      spdlog::error("rank {}: NCCL communicator did not finish cleanly ({}): aborting it", rank(),
                    ncclGetErrorString(r));
      (void)ncclCommAbort(comm_);
      monitor_.close_all();
    } else {
      monitor_.goodbye();
    }
    comm_ = nullptr;
  }
  monitor_.close_all();
  for (Pending& p : pending_) (void)cudaEventDestroy(p.done);
  for (cudaEvent_t e : free_events_) (void)cudaEventDestroy(e);
  if (ready_) (void)cudaEventDestroy(ready_);
  if (token_) (void)cudaFree(token_);
  if (stream_) (void)cudaStreamDestroy(stream_);
}

// Polls a non-blocking communicator until the call `r` started has finished, or the deadline passes.
ncclResult_t NcclCommunicator::settle(ncclResult_t r, Deadline d) {
  while (r == ncclInProgress) {
    ncclResult_t state = ncclInProgress;
    const ncclResult_t q = ncclCommGetAsyncError(comm_, &state);
    if (q != ncclSuccess) return q;
    r = state;
    if (r == ncclInProgress) {
      if (Clock::now() >= d) return ncclInProgress;
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  }
  return r;
}

template <class F>
cudaEvent_t NcclCommunicator::run(const std::string& what, Context& ctx, bool skip, F&& enqueue) {
  RLCU_CHECK(ctx.device() == Device::CUDA && ctx.device_index() == device_,
             "{}: the context is on {} {} but the communicator on cuda:{}", what, device_name(ctx.device()),
             ctx.device_index(), device_);
  std::lock_guard<std::mutex> lk(mu_);
  if (!failure_.empty()) throw Error(failure_);
  ++seq_;
  if (skip) return nullptr;
  const auto cs = static_cast<cudaStream_t>(ctx.stream());
  RLCU_CUDA_CHECK(cudaEventRecord(ready_, cs));
  RLCU_CUDA_CHECK(cudaStreamWaitEvent(stream_, ready_, 0));
  const ncclResult_t r = settle(enqueue(comm_, stream_), deadline_after(opt_.collective_timeout_s));
  if (r != ncclSuccess) {
    const std::string msg = fmt::format("rank {}: {} #{}: NCCL {}: {}", rank(), what, seq_,
                                        r == ncclInProgress ? "did not accept it in time" : ncclGetErrorString(r),
                                        ncclGetLastError(comm_));
    abort_locked(msg);
    throw Error(msg);
  }
  cudaEvent_t done = take_event_locked();
  RLCU_CUDA_CHECK(cudaEventRecord(done, stream_));
  RLCU_CUDA_CHECK(cudaStreamWaitEvent(cs, done, 0));
  pending_.push_back(Pending{done, Clock::now(), fmt::format("{} #{}", what, seq_)});
  return done;
}

cudaEvent_t NcclCommunicator::take_event_locked() {
  if (!free_events_.empty()) {
    cudaEvent_t e = free_events_.back();
    free_events_.pop_back();
    return e;
  }
  cudaEvent_t e = nullptr;
  RLCU_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  return e;
}

// Host wait for one queued collective; the watchdog's timeout and abort bound it.
void NcclCommunicator::wait_event(cudaEvent_t e, const char* what) {
  if (!e) return;
  for (;;) {
    {
      std::lock_guard<std::mutex> lk(mu_);
      if (!failure_.empty()) throw Error(failure_);
      // A recycled event may have been re-recorded: once it left pending_, this collective is complete.
      bool queued = false;
      for (const Pending& p : pending_) queued = queued || p.done == e;
      if (!queued) return;
      const cudaError_t q = cudaEventQuery(e);
      if (q == cudaSuccess) return;
      if (q != cudaErrorNotReady) throw_cuda_failure(what, __FILE__, __LINE__, q);
    }
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
}

void NcclCommunicator::abort_locked(const std::string& msg) {
  if (!failure_.empty()) return;
  failure_ = msg + " (the NCCL communicator was aborted)";
  spdlog::error("{}", failure_);
  if (comm_) (void)ncclCommAbort(comm_);
  comm_ = nullptr;
}

void NcclCommunicator::watch() {
  (void)cudaSetDevice(device_);
  for (;;) {
    std::optional<std::string> dead;
    if (monitor_.watching()) {
      dead = monitor_.poll(kWatchMs);
    } else {
      std::unique_lock<std::mutex> lk(mu_);
      cv_.wait_for(lk, std::chrono::milliseconds(kWatchMs), [this] { return stop_; });
    }
    std::lock_guard<std::mutex> lk(mu_);
    if (stop_) return;
    if (failure_.empty() && dead) abort_locked(fmt::format("rank {}: {}", rank(), *dead));
    if (failure_.empty()) {
      ncclResult_t state = ncclSuccess;
      const ncclResult_t q = ncclCommGetAsyncError(comm_, &state);
      if (q != ncclSuccess || (state != ncclSuccess && state != ncclInProgress))
        abort_locked(fmt::format("rank {}: NCCL reported an error: {} {}", rank(),
                                 ncclGetErrorString(q != ncclSuccess ? q : state), ncclGetLastError(comm_)));
    }
    while (failure_.empty() && !pending_.empty()) {
      Pending& p = pending_.front();
      const cudaError_t q = cudaEventQuery(p.done);
      if (q == cudaSuccess) {
        free_events_.push_back(p.done);
        pending_.pop_front();
        continue;
      }
      if (q != cudaErrorNotReady) {
        abort_locked(fmt::format("rank {}: {}: CUDA error {}", rank(), p.what, cudaGetErrorString(q)));
      } else if (Clock::now() - p.queued > std::chrono::duration<double>(opt_.collective_timeout_s)) {
        abort_locked(fmt::format("rank {}: {} did not finish within {} of being queued (RLCU_DIST_TIMEOUT_S): a rank "
                                 "is hung, ended, or did not call the same collective",
                                 rank(), p.what, seconds_text(opt_.collective_timeout_s)));
      }
      break;
    }
    // Once failed, the other ranks must learn of it: closing the links ends their wait on this rank.
    if (!failure_.empty()) monitor_.close_all();
  }
}

}  // namespace

std::unique_ptr<Communicator> make_nccl_communicator(const DistEnv& env, Context& ctx, const DistOptions& opt) {
  return std::make_unique<NcclCommunicator>(env, ctx, opt);
}

}  // namespace rlcu::dist
