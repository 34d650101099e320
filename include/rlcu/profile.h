// Op-level GPU profiler for development and `rlcu bench train --profile`: when enabled, every CUDA op dispatched
// through include/rlcu/ops.h records a pair of CUDA events on its context's stream; profiler_collect() waits for
// the stream, and returns the time per op name (GEMMs keyed by shape) since the last collection. Off by default;
// when off it costs one branch per op.
#pragma once

#include <string>
#include <vector>

#include "rlcu/context.h"

namespace rlcu {

struct ProfileRow {
  std::string name;
  int calls = 0;
  double ms = 0;
};

void profiler_enable(bool on);
bool profiler_enabled();
// Synchronises `ctx` and returns the rows sorted by time (largest first); clears what was recorded.
std::vector<ProfileRow> profiler_collect(Context& ctx);

// Records one op's start/end on ctx's stream while alive (no-op unless enabled and ctx is a CUDA context).
class ProfileScope {
 public:
  ProfileScope(const char* name, Context& ctx);
  ProfileScope(std::string name, Context& ctx);
  ~ProfileScope();
  ProfileScope(const ProfileScope&) = delete;
  ProfileScope& operator=(const ProfileScope&) = delete;

 private:
  void begin(std::string name, Context& ctx);
  int slot_ = -1;
  Context* ctx_ = nullptr;
};

}  // namespace rlcu
