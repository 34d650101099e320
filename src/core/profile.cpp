// Event-pair op profiler (see include/rlcu/profile.h).
#include "rlcu/profile.h"

#include <algorithm>
#include <map>

#include "cuda_rt.h"

namespace rlcu {

namespace {

struct Record {
  std::string name;
  void* start = nullptr;  // events (cuda_rt)
  void* end = nullptr;
};

struct State {
  bool on = false;
  std::vector<Record> records;  // events are reused across collections
  size_t used = 0;
};

State& state() {
  static State s;
  return s;
}

}  // namespace

void profiler_enable(bool on) { state().on = on; }
bool profiler_enabled() { return state().on; }

ProfileScope::ProfileScope(const char* name, Context& ctx) {
  if (state().on) begin(name, ctx);
}

ProfileScope::ProfileScope(std::string name, Context& ctx) {
  if (state().on) begin(std::move(name), ctx);
}

void ProfileScope::begin(std::string name, Context& ctx) {
  State& s = state();
  if (!s.on || ctx.device() != Device::CUDA) return;
  if (s.used == s.records.size()) {
    Record r;
    r.start = cuda_rt::event_create();
    r.end = cuda_rt::event_create();
    s.records.push_back(r);
  }
  slot_ = static_cast<int>(s.used++);
  ctx_ = &ctx;
  s.records[slot_].name = std::move(name);
  cuda_rt::event_record(s.records[slot_].start, ctx.stream());
}

ProfileScope::~ProfileScope() {
  if (slot_ < 0) return;
  try {
    cuda_rt::event_record(state().records[slot_].end, ctx_->stream());
  } catch (const Error&) {
    // A failed record leaves this op out of the profile; the op's own error is reported by its launch check.
  }
}

std::vector<ProfileRow> profiler_collect(Context& ctx) {
  State& s = state();
  ctx.synchronize("profiler collect");
  std::map<std::string, ProfileRow> agg;
  for (size_t i = 0; i < s.used; ++i) {
    const float ms = cuda_rt::event_elapsed_ms(s.records[i].start, s.records[i].end);
    ProfileRow& r = agg[s.records[i].name];
    r.name = s.records[i].name;
    r.calls++;
    r.ms += ms;
  }
  s.used = 0;
  std::vector<ProfileRow> rows;
  for (auto& kv : agg) rows.push_back(kv.second);
  std::sort(rows.begin(), rows.end(), [](const ProfileRow& a, const ProfileRow& b) { return a.ms > b.ms; });
  return rows;
}

}  // namespace rlcu
