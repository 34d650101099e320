// Trainer-internal: the data-parallel side of `rlcu train` and `rlcu sft` — the job's shape from the launcher's
// environment, the communicator and host collectives of a job of several processes, and the rules both trainers
// follow: rank 0 alone writes the run directory (writer()), the other ranks log only warnings and errors, the
// resume decision is rank 0's, a stop signal on any rank stops every rank after the same step, and work of n items
// is shared in contiguous ranges [r*n/W, (r+1)*n/W). For a job of one none of it runs (on() is false).
#pragma once

#include <cstdint>
#include <memory>

#include "rlcu/dist.h"

namespace rlcu {

struct DataParallel {
  dist::DistEnv env;
  std::unique_ptr<dist::Communicator> comm;     // null for a job of one
  std::unique_ptr<dist::HostCollectives> coll;  // with comm

  bool on() const { return comm != nullptr; }
  bool writer() const { return env.rank == 0; }
  int rank() const { return env.rank; }
  int world_size() const { return env.world_size; }

  // The launcher's environment (a note about it logged); `distributed` is whether the job has several processes
  // and this is not a dry run. Non-zero ranks' log level drops to warnings.
  static DataParallel from_environment(bool dry_run, bool* distributed);
  // Sets up the communicator for ctx's device (the rendezvous) and host collectives of `capacity_bytes`.
  void start(Context& ctx, size_t capacity_bytes);
  // Rank 0's `resuming`, on every rank.
  bool agree_resuming(bool resuming);
  // The stop signal any rank received (SIGINT / SIGTERM), or 0. Every rank calls it after every step.
  int agreed_stop_signal();
  // Items [*first, *end) of n for `rank`.
  void share(int64_t n, int rank, int64_t* first, int64_t* end) const;
};

}  // namespace rlcu
