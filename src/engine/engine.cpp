// The rollout engine (see include/rlcu/engine.h for the flow and the sampling contract): sizes the KV pool, checks
// the requests, and runs generate() as a loop of scheduler step -> runner forward and sampling -> scheduler
// postprocess (scheduler.h: admission, fork, preemption, stop rules; runner.h: the forward passes), keeping the
// statistics and calling the progress callback after every step.
#include "rlcu/engine.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>

#include "rlcu/error.h"
#include "rlcu/token_bytes.h"
#include "rlcu/tokenizer.h"
#include "runner.h"
#include "scheduler.h"

namespace rlcu::engine {

std::vector<int32_t> stop_token_ids(const ModelConfig& model, const Tokenizer* tok) {
  std::vector<int32_t> ids = model.eos_token_ids;
  if (tok)
    for (int32_t id : tok->eos_ids())
      if (std::find(ids.begin(), ids.end(), id) == ids.end()) ids.push_back(id);
  return ids;
}

const char* finish_reason_name(FinishReason r) {
  switch (r) {
    case FinishReason::Eos: return "eos";
    case FinishReason::Stop: return "stop";
    case FinishReason::Length: return "length";
  }
  return "?";
}

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// rlcu::Error for requests or sampling options the engine cannot serve (see Engine::generate).
void validate(const std::vector<Request>& requests, const SamplingOptions& sp, int64_t V, const EngineOptions& opt,
              int64_t max_len, const BlockManager& bm) {
  if (sp.max_new_tokens < 1) throw Error(fmt::format("max_new_tokens must be >= 1, got {}", sp.max_new_tokens));
  if (!sp.stop_strings.empty()) {
    if (sp.token_bytes == nullptr) throw Error("stop strings need a tokenizer (token bytes)");
    if (sp.token_bytes->vocab_size() < V)
      throw Error(fmt::format("the tokenizer has {} tokens but the model's vocabulary is {}",
                              sp.token_bytes->vocab_size(), V));
    for (const std::string& st : sp.stop_strings)
      if (st.empty()) throw Error("a stop string must not be empty");
  }
  int64_t total = 0;
  for (size_t r = 0; r < requests.size(); ++r) {
    const Request& q = requests[r];
    const int64_t P = static_cast<int64_t>(q.prompt.size());
    if (P < 1) throw Error(fmt::format("request {}: empty prompt", r));
    if (q.n < 1) throw Error(fmt::format("request {}: n must be >= 1, got {}", r, q.n));
    if (q.n > opt.max_batch)
      throw Error(fmt::format("request {}: n = {} exceeds the engine's batch of {} sequences", r, q.n,
                              opt.max_batch));
    if (P >= max_len)
      throw Error(fmt::format("request {}: prompt of {} tokens leaves no room in the context length {}", r, P,
                              max_len));
    if (P > opt.prefill_tokens)
      throw Error(fmt::format("request {}: prompt of {} tokens exceeds the prefill budget of {} tokens", r, P,
                              opt.prefill_tokens));
    if (bm.blocks_for_tokens(P + 1) + bm.watermark_blocks() > bm.num_blocks())
      throw Error(fmt::format("request {}: prompt of {} tokens does not fit the KV pool of {} blocks", r, P,
                              bm.num_blocks()));
    for (int32_t id : q.prompt)
      if (id < 0 || id >= V) throw Error(fmt::format("request {}: token id {} outside [0, {})", r, id, V));
    total += q.n;
  }
  if (total > (int64_t(1) << 31) - 1) throw Error("too many sequences in one generate call");
}

}  // namespace

struct Engine::Impl {
  const Model& model;
  EngineOptions opt;
  Context& ctx;
  int64_t max_len = 0, max_blocks_per_seq = 0;
  std::unique_ptr<Scheduler> sched;
  std::unique_ptr<Runner> runner;
  EngineStats stats;

  Impl(const Model& m, const EngineOptions& o, Context& c) : model(m), opt(o), ctx(c) {}
};

namespace {

// The checks of the options and the runner's shape, shared by Engine::memory and the constructor.
RunnerOptions runner_options(const ModelConfig& c, const EngineOptions& opt, int64_t* max_len) {
  if (opt.block_size < 1) throw Error(fmt::format("rollout.block_size must be >= 1, got {}", opt.block_size));
  if (opt.max_batch < 1) throw Error(fmt::format("rollout.max_batch must be >= 1, got {}", opt.max_batch));
  if (opt.prefill_tokens < 1)
    throw Error(fmt::format("rollout.prefill_tokens must be >= 1, got {}", opt.prefill_tokens));
  if (!(opt.kv_fraction > 0 && opt.kv_fraction <= 1))
    throw Error(fmt::format("rollout.kv_fraction must be in (0, 1], got {}", opt.kv_fraction));
  *max_len = opt.max_model_len > 0 ? opt.max_model_len
                                   : (c.max_position_embeddings > 0 ? c.max_position_embeddings : 32768);
  if (c.max_position_embeddings > 0 && *max_len > c.max_position_embeddings)
    throw Error(fmt::format("max model length {} exceeds the model's max_position_embeddings {}", *max_len,
                            c.max_position_embeddings));
  RunnerOptions ro;
  ro.max_tokens = opt.prefill_tokens;
  ro.max_batch = opt.max_batch;
  ro.block_size = opt.block_size;
  ro.max_blocks_per_seq = (*max_len + opt.block_size - 1) / opt.block_size;
  ro.num_splits = static_cast<int>(std::clamp<int64_t>((*max_len + 63) / 64, 1, 32));
  ro.cuda_graphs = opt.cuda_graphs;
  ro.fp32_residual = opt.fp32_residual;
  return ro;
}

}  // namespace

EngineMemory Engine::memory(const ModelConfig& c, DType weight_dtype, Device device, const EngineOptions& opt,
                            size_t free_bytes) {
  int64_t max_len = 0;
  const RunnerOptions ro = runner_options(c, opt, &max_len);
  // Pool: what the sequences can ever use (max_batch full-length sequences plus one prefill pass), capped by the
  // configured token cap and, on CUDA, by kv_fraction of the free memory left after the runner's buffers.
  EngineMemory m;
  m.kv_block_bytes = kv_block_bytes(c.num_layers, c.num_kv_heads, c.head_dim, opt.block_size, dtype_size(weight_dtype));
  const int64_t prefill_blocks = (opt.prefill_tokens + opt.block_size - 1) / opt.block_size;
  int64_t want = (opt.max_batch + 1) * ro.max_blocks_per_seq + prefill_blocks;
  m.min_kv_blocks = ro.max_blocks_per_seq + prefill_blocks;
  int64_t cap_tokens = opt.max_kv_tokens > 0 ? opt.max_kv_tokens : (device == Device::CPU ? 65536 : 0);
  if (cap_tokens > 0) want = std::min(want, std::max<int64_t>(1, cap_tokens / opt.block_size));
  m.min_kv_blocks = std::min(m.min_kv_blocks, want);
  m.activation_bytes = Runner::activation_bytes(c, ro, weight_dtype);
  if (device == Device::CUDA) {
    const size_t act = m.activation_bytes + (size_t(256) << 20);
    const size_t avail = free_bytes > act ? free_bytes - act : 0;
    const int64_t fit = num_kv_blocks(avail, opt.kv_fraction, m.kv_block_bytes);
    want = std::min(want, fit);
  }
  m.kv_blocks = want;
  m.kv_bytes = static_cast<size_t>(want) * m.kv_block_bytes;
  return m;
}

Engine::Engine(const Model& model, const EngineOptions& opt, Context& ctx)
    : impl_(std::make_unique<Impl>(model, opt, ctx)) {
  Impl& s = *impl_;
  const ModelConfig& c = model.config();
  RunnerOptions ro = runner_options(c, opt, &s.max_len);
  s.max_blocks_per_seq = ro.max_blocks_per_seq;
  const EngineMemory mem = memory(c, model.weight_dtype(), model.device(), opt,
                                  model.device() == Device::CUDA ? ctx.memory_info().free_bytes : 0);
  const int64_t want = mem.kv_blocks;
  ro.num_blocks = want;
  SchedulerConfig sc;
  sc.max_batch = opt.max_batch;
  sc.prefill_tokens = opt.prefill_tokens;
  sc.max_model_len = s.max_len;
  sc.vocab_size = c.vocab_size;
  sc.blocks.num_blocks = want;
  sc.blocks.block_size = opt.block_size;
  sc.blocks.watermark_blocks = std::min<int64_t>(want / 20, opt.max_batch);
  s.sched = std::make_unique<Scheduler>(sc);
  RLCU_CHECK(s.sched->max_blocks_per_seq() == ro.max_blocks_per_seq, "block-table width of scheduler and runner");
  s.runner = std::make_unique<Runner>(model, ro, ctx);
  spdlog::debug("engine: {} KV blocks of {} tokens ({:.2f} GiB), max length {}, {} split(s), batch {}", want,
                opt.block_size, static_cast<double>(s.runner->kv_bytes()) / (1 << 30), s.max_len, ro.num_splits,
                opt.max_batch);
}

Engine::~Engine() = default;

const EngineStats& Engine::stats() const { return impl_->stats; }
int64_t Engine::kv_blocks() const { return impl_->sched->block_manager().num_blocks(); }
int64_t Engine::block_size() const { return impl_->sched->block_manager().block_size(); }
size_t Engine::kv_bytes() const { return impl_->runner->kv_bytes(); }
size_t Engine::activation_bytes() const { return impl_->runner->activation_bytes(); }
int64_t Engine::max_model_len() const { return impl_->max_len; }
void Engine::set_cuda_graphs(bool on) { impl_->runner->set_cuda_graphs(on); }

std::vector<Completion> Engine::generate(const std::vector<Request>& requests, const SamplingOptions& sp,
                                         const ProgressFn& progress) {
  Impl& s = *impl_;
  Scheduler& sched = *s.sched;
  Runner& runner = *s.runner;
  const auto t_start = Clock::now();
  s.stats = EngineStats{};
  validate(requests, sp, s.model.config().vocab_size, s.opt, s.max_len, sched.block_manager());
  sched.start(requests, sp);
  s.stats.prompts = static_cast<int64_t>(requests.size());
  s.stats.sequences = sched.num_sequences();

  std::vector<int32_t> toks;
  std::vector<float> lps;
  // The scheduler numbers this call's sequences from 0; the sampler's ids start at sp.first_seq_id.
  std::vector<int32_t> shifted;
  auto sampler_ids = [&](const std::vector<int32_t>& ids) -> const std::vector<int32_t>& {
    if (sp.first_seq_id == 0) return ids;
    shifted.resize(ids.size());
    for (size_t i = 0; i < ids.size(); ++i) shifted[i] = ids[i] + sp.first_seq_id;
    return shifted;
  };
  while (!sched.done()) {
    const auto t_schedule = Clock::now();
    const Step step = sched.schedule();
    const auto t_run = Clock::now();
    toks.clear();
    lps.clear();
    if (step.kind == StepKind::Prefill) {
      runner.prefill(step.prefill);
      runner.sample(toks, lps, sampler_ids(step.sample_ids), step.sample_positions, sp.sample);
      sched.postprocess(step, toks, lps);
      s.stats.prefill_passes++;
      s.stats.prefill_tokens += static_cast<int64_t>(step.prefill.ids.size());
      s.stats.prefill_seconds += seconds_since(t_run);
    } else {
      if (!step.rows.empty()) {  // every running sequence may have been preempted
        runner.copy_blocks(step.copies);
        runner.decode(step.decode);
        runner.sample(toks, lps, sampler_ids(step.sample_ids), step.sample_positions, sp.sample);
      }
      sched.postprocess(step, toks, lps);
      if (!step.rows.empty()) s.stats.decode_steps++;
      s.stats.decode_seconds += seconds_since(t_schedule);
    }
    s.stats.generated_tokens = sched.stats().generated_tokens;
    s.stats.preemptions = sched.stats().preemptions;
    s.stats.peak_blocks_used = sched.stats().peak_blocks_used;
    if (progress) progress(sched.num_finished(), sched.num_sequences());
  }
  std::vector<Completion> out = sched.take_completions();
  s.stats.total_seconds = seconds_since(t_start);
  return out;
}

}  // namespace rlcu::engine
