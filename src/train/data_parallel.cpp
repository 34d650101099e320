// The data-parallel side of the training commands (data_parallel.h).
#include "data_parallel.h"

#include <spdlog/spdlog.h>

#include <vector>

#include "rlcu/signals.h"

namespace rlcu {

DataParallel DataParallel::from_environment(bool dry_run, bool* distributed) {
  DataParallel dp;
  dp.env = dist::dist_env_from_environment();
  if (!dp.env.note.empty()) spdlog::warn("{}", dp.env.note);
  *distributed = dp.env.distributed() && !dry_run;
  if (*distributed && dp.env.rank != 0) spdlog::set_level(spdlog::level::warn);  // rank 0 speaks for the job
  return dp;
}

void DataParallel::start(Context& ctx, size_t capacity_bytes) {
  spdlog::info("data parallel: {}", env.describe());
  comm = dist::create_communicator(env, ctx, dist::dist_options_from_environment());
  coll = std::make_unique<dist::HostCollectives>(*comm, ctx, capacity_bytes);
}

bool DataParallel::agree_resuming(bool resuming) {
  std::vector<int64_t> r{resuming ? 1 : 0};
  coll->broadcast(r, 0);
  return r[0] != 0;
}

int DataParallel::agreed_stop_signal() {
  std::vector<int64_t> sig{stop_requested() ? stop_signal() : 0};
  coll->all_reduce(sig, dist::ReduceOp::Max);
  return static_cast<int>(sig[0]);
}

void DataParallel::share(int64_t n, int r, int64_t* first, int64_t* end) const {
  const int64_t W = env.world_size;
  *first = r * n / W;
  *end = (r + 1) * n / W;
}

}  // namespace rlcu
