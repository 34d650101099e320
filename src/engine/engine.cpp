// The rollout engine's scheduler (see include/rlcu/engine.h for the flow and the sampling contract; runner.h for
// the forward passes).
//
// Bookkeeping per sequence: `cached` tokens are in the KV cache; `pending` is the last sampled token, not yet in
// the cache (the next decode step feeds it). The token sampled from a forward over n cached tokens has position n,
// in a group prefill (n = prompt length), a decode step (n = after appending the pending token) and a recompute
// prefill alike, so a sequence's tokens do not depend on how it was scheduled.
// Group prefill: the prompt is prefilled under a parent id (negative: -(request + 1)), its n children fork the
// parent's blocks and the parent is freed; the children's first tokens are sampled from the same logits row.
// Preemption (decode step, pool empty): the most recently admitted running sequence gives its blocks back and
// waits, at the front of the queue, for a recompute prefill of prompt + completion.
#include "rlcu/engine.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <deque>
#include <optional>

#include "block_manager.h"
#include "rlcu/error.h"
#include "rlcu/token_bytes.h"
#include "rlcu/tokenizer.h"
#include "runner.h"

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

struct Seq {
  int request = 0, sample = 0;
  int32_t id = 0;          // sampler sequence id and block-manager id: request * n + sample (global index)
  int64_t admitted = -1;   // admission counter (preemption picks the largest)
  std::vector<int32_t> ids;
  std::vector<float> logprobs;
  int32_t pending = -1;
  bool running = false, done = false;
  FinishReason finish = FinishReason::Length;
  std::string tail;        // last bytes of the completion, for stop strings
};

struct WaitItem {
  int request = -1;  // >= 0: a prompt group to prefill
  int seq = -1;      // >= 0: a preempted sequence to recompute
};

}  // namespace

struct Engine::Impl {
  const Model& model;
  EngineOptions opt;
  Context& ctx;
  int64_t max_len = 0, max_blocks_per_seq = 0;
  std::unique_ptr<BlockManager> bm;
  std::unique_ptr<Runner> runner;
  EngineStats stats;

  Impl(const Model& m, const EngineOptions& o, Context& c) : model(m), opt(o), ctx(c) {}
};

Engine::Engine(const Model& model, const EngineOptions& opt, Context& ctx)
    : impl_(std::make_unique<Impl>(model, opt, ctx)) {
  Impl& s = *impl_;
  const ModelConfig& c = model.config();
  if (opt.block_size < 1) throw Error(fmt::format("rollout.block_size must be >= 1, got {}", opt.block_size));
  if (opt.max_batch < 1) throw Error(fmt::format("rollout.max_batch must be >= 1, got {}", opt.max_batch));
  if (opt.prefill_tokens < 1)
    throw Error(fmt::format("rollout.prefill_tokens must be >= 1, got {}", opt.prefill_tokens));
  if (!(opt.kv_fraction > 0 && opt.kv_fraction <= 1))
    throw Error(fmt::format("rollout.kv_fraction must be in (0, 1], got {}", opt.kv_fraction));
  s.max_len = opt.max_model_len > 0 ? opt.max_model_len
                                    : (c.max_position_embeddings > 0 ? c.max_position_embeddings : 32768);
  if (c.max_position_embeddings > 0 && s.max_len > c.max_position_embeddings)
    throw Error(fmt::format("max model length {} exceeds the model's max_position_embeddings {}", s.max_len,
                            c.max_position_embeddings));
  s.max_blocks_per_seq = (s.max_len + opt.block_size - 1) / opt.block_size;

  RunnerOptions ro;
  ro.max_tokens = opt.prefill_tokens;
  ro.max_batch = opt.max_batch;
  ro.block_size = opt.block_size;
  ro.max_blocks_per_seq = s.max_blocks_per_seq;
  ro.num_splits = static_cast<int>(std::clamp<int64_t>((s.max_len + 63) / 64, 1, 32));
  ro.cuda_graphs = opt.cuda_graphs;
  ro.fp32_residual = opt.fp32_residual;

  // Pool: what the sequences can ever use (max_batch full-length sequences plus one prefill pass), capped by the
  // configured token cap and, on CUDA, by kv_fraction of the free memory left after the runner's buffers.
  const size_t block_bytes =
      kv_block_bytes(c.num_layers, c.num_kv_heads, c.head_dim, opt.block_size, dtype_size(model.weight_dtype()));
  int64_t want = (opt.max_batch + 1) * s.max_blocks_per_seq +
                 (opt.prefill_tokens + opt.block_size - 1) / opt.block_size;
  int64_t cap_tokens = opt.max_kv_tokens > 0 ? opt.max_kv_tokens : (model.device() == Device::CPU ? 65536 : 0);
  if (cap_tokens > 0) want = std::min(want, std::max<int64_t>(1, cap_tokens / opt.block_size));
  if (model.device() == Device::CUDA) {
    const size_t free_b = ctx.memory_info().free_bytes;
    const size_t act = Runner::activation_bytes(c, ro, model.weight_dtype()) + (size_t(256) << 20);
    const size_t avail = free_b > act ? free_b - act : 0;
    const int64_t fit = num_kv_blocks(avail, opt.kv_fraction, block_bytes);
    want = std::min(want, fit);
  }
  ro.num_blocks = want;
  BlockManagerConfig bc;
  bc.num_blocks = want;
  bc.block_size = opt.block_size;
  bc.watermark_blocks = std::min<int64_t>(want / 20, opt.max_batch);
  s.bm = std::make_unique<BlockManager>(bc);
  s.runner = std::make_unique<Runner>(model, ro, ctx);
  spdlog::debug("engine: {} KV blocks of {} tokens ({:.2f} GiB), max length {}, {} split(s), batch {}", want,
                opt.block_size, static_cast<double>(s.runner->kv_bytes()) / (1 << 30), s.max_len, ro.num_splits,
                opt.max_batch);
}

Engine::~Engine() = default;

const EngineStats& Engine::stats() const { return impl_->stats; }
int64_t Engine::kv_blocks() const { return impl_->bm->num_blocks(); }
int64_t Engine::block_size() const { return impl_->bm->block_size(); }
size_t Engine::kv_bytes() const { return impl_->runner->kv_bytes(); }
size_t Engine::activation_bytes() const { return impl_->runner->activation_bytes(); }
int64_t Engine::max_model_len() const { return impl_->max_len; }
void Engine::set_cuda_graphs(bool on) { impl_->runner->set_cuda_graphs(on); }

std::vector<Completion> Engine::generate(const std::vector<Request>& requests, const SamplingOptions& sp,
                                         const ProgressFn& progress) {
  Impl& s = *impl_;
  BlockManager& bm = *s.bm;
  Runner& runner = *s.runner;
  const int64_t V = s.model.config().vocab_size;
  const auto t_start = Clock::now();
  s.stats = EngineStats{};
  bm.clear();

  // ---- validation -----------------------------------------------------------------------------------------------
  if (sp.max_new_tokens < 1) throw Error(fmt::format("max_new_tokens must be >= 1, got {}", sp.max_new_tokens));
  if (!sp.stop_strings.empty()) {
    if (sp.token_bytes == nullptr) throw Error("stop strings need a tokenizer (token bytes)");
    if (sp.token_bytes->vocab_size() < V)
      throw Error(fmt::format("the tokenizer has {} tokens but the model's vocabulary is {}",
                              sp.token_bytes->vocab_size(), V));
    for (const std::string& st : sp.stop_strings)
      if (st.empty()) throw Error("a stop string must not be empty");
  }
  size_t max_stop = 0;
  for (const std::string& st : sp.stop_strings) max_stop = std::max(max_stop, st.size());
  int64_t total = 0;
  for (size_t r = 0; r < requests.size(); ++r) {
    const Request& q = requests[r];
    const int64_t P = static_cast<int64_t>(q.prompt.size());
    if (P < 1) throw Error(fmt::format("request {}: empty prompt", r));
    if (q.n < 1) throw Error(fmt::format("request {}: n must be >= 1, got {}", r, q.n));
    if (q.n > s.opt.max_batch)
      throw Error(fmt::format("request {}: n = {} exceeds the engine's batch of {} sequences", r, q.n,
                              s.opt.max_batch));
    if (P >= s.max_len)
      throw Error(fmt::format("request {}: prompt of {} tokens leaves no room in the context length {}", r, P,
                              s.max_len));
    if (P > s.opt.prefill_tokens)
      throw Error(fmt::format("request {}: prompt of {} tokens exceeds the prefill budget of {} tokens", r, P,
                              s.opt.prefill_tokens));
    if (bm.blocks_for_tokens(P + 1) + bm.watermark_blocks() > bm.num_blocks())
      throw Error(fmt::format("request {}: prompt of {} tokens does not fit the KV pool of {} blocks", r, P,
                              bm.num_blocks()));
    for (int32_t id : q.prompt)
      if (id < 0 || id >= V) throw Error(fmt::format("request {}: token id {} outside [0, {})", r, id, V));
    total += q.n;
  }
  if (total > (int64_t(1) << 31) - 1) throw Error("too many sequences in one generate call");

  std::vector<Seq> seqs;
  seqs.reserve(static_cast<size_t>(total));
  std::vector<int> first_seq(requests.size());
  for (size_t r = 0; r < requests.size(); ++r) {
    first_seq[r] = static_cast<int>(seqs.size());
    for (int j = 0; j < requests[r].n; ++j) {
      Seq q;
      q.request = static_cast<int>(r);
      q.sample = j;
      q.id = static_cast<int32_t>(seqs.size());
      seqs.push_back(std::move(q));
    }
  }
  s.stats.prompts = static_cast<int64_t>(requests.size());
  s.stats.sequences = total;
  std::deque<WaitItem> waiting;
  for (size_t r = 0; r < requests.size(); ++r) waiting.push_back({static_cast<int>(r), -1});
  std::vector<int> running;  // indices into seqs, kept in id order (groups stay adjacent)
  int64_t finished = 0, admissions = 0;

  auto prompt_of = [&](const Seq& q) -> const std::vector<int32_t>& { return requests[q.request].prompt; };
  auto cached_len = [&](const Seq& q) { return static_cast<int64_t>(prompt_of(q).size() + q.ids.size()); };
  auto finish = [&](Seq& q, FinishReason why) {
    q.done = true;
    q.finish = why;
    ++finished;
  };
  // Records a sampled token for q (sampled at position `position`) and applies the stop rules.
  auto accept = [&](Seq& q, int32_t tok, float lp) {
    RLCU_CHECK(tok >= 0 && tok < V, "sampler returned token {} (no finite logit?)", tok);
    q.ids.push_back(tok);
    q.logprobs.push_back(lp);
    q.pending = tok;
    s.stats.generated_tokens++;
    if (!sp.ignore_eos && std::find(sp.eos_ids.begin(), sp.eos_ids.end(), tok) != sp.eos_ids.end())
      return finish(q, FinishReason::Eos);
    if (max_stop > 0) {
      const size_t before = q.tail.size();
      q.tail += sp.token_bytes->token(tok);
      const size_t from = before >= max_stop ? before - max_stop + 1 : 0;
      for (const std::string& st : sp.stop_strings)
        if (q.tail.find(st, from) != std::string::npos) return finish(q, FinishReason::Stop);
      if (q.tail.size() > max_stop) q.tail.erase(0, q.tail.size() - max_stop);
    }
    if (static_cast<int64_t>(q.ids.size()) >= sp.max_new_tokens) return finish(q, FinishReason::Length);
    if (cached_len(q) >= s.max_len) return finish(q, FinishReason::Length);
  };
  auto retire = [&](Seq& q) {
    if (bm.has(q.id)) bm.free(q.id);
    q.running = false;
  };

  while (finished < total) {
    // ---- prefill: admit waiting groups / preempted sequences ---------------------------------------------------
    PrefillInput pin;
    std::vector<int32_t> sample_ids, sample_pos;
    std::vector<WaitItem> admitted;
    int64_t new_running = 0;
    while (!waiting.empty()) {
      const WaitItem w = waiting.front();
      const int n_rows = w.request >= 0 ? requests[w.request].n : 1;
      const std::vector<int32_t> toks = [&] {
        if (w.request >= 0) return requests[w.request].prompt;
        const Seq& q = seqs[w.seq];
        std::vector<int32_t> t(prompt_of(q));
        t.insert(t.end(), q.ids.begin(), q.ids.end());
        return t;
      }();
      const int64_t T = static_cast<int64_t>(toks.size());
      if (static_cast<int64_t>(running.size()) + new_running + n_rows > s.opt.max_batch) break;
      if (static_cast<int64_t>(pin.ids.size()) + T > s.opt.prefill_tokens) break;
      if (static_cast<int64_t>(pin.logit_rows.size()) + n_rows > s.opt.max_batch) break;
      const int64_t owner = w.request >= 0 ? -(static_cast<int64_t>(w.request) + 1) : seqs[w.seq].id;
      if (!bm.allocate(owner, T)) break;
      waiting.pop_front();
      const int32_t base = static_cast<int32_t>(pin.ids.size());
      for (int64_t p = 0; p < T; ++p) {
        pin.ids.push_back(toks[static_cast<size_t>(p)]);
        pin.positions.push_back(static_cast<int32_t>(p));
        pin.slots.push_back(static_cast<int32_t>(bm.slot(owner, p)));
      }
      pin.cu_seqlens.push_back(static_cast<int32_t>(pin.ids.size()));
      pin.max_seqlen = std::max(pin.max_seqlen, static_cast<int32_t>(T));
      for (int j = 0; j < n_rows; ++j) {
        pin.logit_rows.push_back(base + static_cast<int32_t>(T) - 1);
        sample_ids.push_back(w.request >= 0 ? seqs[first_seq[w.request] + j].id : seqs[w.seq].id);
        sample_pos.push_back(static_cast<int32_t>(T));
      }
      new_running += n_rows;
      admitted.push_back(w);
    }
    if (!admitted.empty()) {
      const auto t0 = Clock::now();
      runner.prefill(pin);
      std::vector<int32_t> toks;
      std::vector<float> lps;
      runner.sample(toks, lps, sample_ids, sample_pos, sp.sample);
      size_t row = 0;
      for (const WaitItem& w : admitted) {
        if (w.request >= 0) {
          const int64_t parent = -(static_cast<int64_t>(w.request) + 1);
          for (int j = 0; j < requests[w.request].n; ++j) {
            Seq& q = seqs[first_seq[w.request] + j];
            bm.fork(parent, q.id);
            q.running = true;
            q.admitted = admissions++;
            accept(q, toks[row], lps[row]);
            ++row;
            if (q.done) retire(q);
          }
          bm.free(parent);
        } else {
          Seq& q = seqs[w.seq];
          q.running = true;
          q.admitted = admissions++;
          accept(q, toks[row], lps[row]);
          ++row;
          if (q.done) retire(q);
        }
      }
      s.stats.prefill_passes++;
      s.stats.prefill_tokens += static_cast<int64_t>(pin.ids.size());
      s.stats.prefill_seconds += seconds_since(t0);
      running.clear();
      for (Seq& q : seqs)
        if (q.running) running.push_back(q.id);
      s.stats.peak_blocks_used = std::max(s.stats.peak_blocks_used, bm.num_blocks() - bm.num_free());
      if (progress) progress(finished, total);
      continue;  // admit more before decoding while prompts wait and room remains
    }
    if (running.empty()) {
      RLCU_CHECK(!waiting.empty(), "engine: nothing running and nothing waiting with {} of {} finished", finished,
                 total);
      throw Error(fmt::format("the KV pool ({} blocks of {} tokens) cannot hold the next prompt; raise "
                              "rollout.kv_fraction or lower rollout.max_batch",
                              bm.num_blocks(), bm.block_size()));
    }

    // ---- decode step over every running sequence -----------------------------------------------------------------
    const auto t0 = Clock::now();
    DecodeInput din;
    std::vector<std::pair<int, BlockCopy>> copies;  // (sequence, copy-on-write of its last block)
    std::vector<int> rows;
    for (size_t i = 0; i < running.size(); ++i) {
      Seq& q = seqs[running[i]];
      if (!q.running) continue;  // preempted earlier in this loop
      std::optional<AppendResult> ar;
      while (!(ar = bm.append_slot(q.id))) {
        // Pool empty: preempt the most recently admitted running sequence (possibly q itself).
        int victim = -1;
        for (int j : running)
          if (seqs[j].running && (victim < 0 || seqs[j].admitted > seqs[victim].admitted)) victim = j;
        RLCU_CHECK(victim >= 0, "engine: no sequence to preempt");
        Seq& v = seqs[victim];
        bm.preempt(v.id);
        v.running = false;
        waiting.push_front({-1, victim});
        s.stats.preemptions++;
        // A victim already in this step's batch is dropped from it.
        for (size_t k = 0; k < rows.size(); ++k)
          if (rows[k] == victim) {
            rows.erase(rows.begin() + static_cast<std::ptrdiff_t>(k));
            din.ids.erase(din.ids.begin() + static_cast<std::ptrdiff_t>(k));
            din.positions.erase(din.positions.begin() + static_cast<std::ptrdiff_t>(k));
            din.slots.erase(din.slots.begin() + static_cast<std::ptrdiff_t>(k));
            din.context_lens.erase(din.context_lens.begin() + static_cast<std::ptrdiff_t>(k));
            break;
          }
        // Its copy-on-write (if any) targets a block it no longer owns.
        copies.erase(std::remove_if(copies.begin(), copies.end(), [&](const auto& c) { return c.first == victim; }),
                     copies.end());
        if (victim == running[i]) break;
      }
      if (!q.running) continue;
      if (ar->copy) copies.emplace_back(running[i], *ar->copy);
      const int64_t n = bm.num_tokens(q.id);
      rows.push_back(running[i]);
      din.ids.push_back(q.pending);
      din.positions.push_back(static_cast<int32_t>(n - 1));
      din.slots.push_back(static_cast<int32_t>(ar->slot));
      din.context_lens.push_back(static_cast<int32_t>(n));
    }
    if (!rows.empty()) {
      din.block_tables.assign(rows.size() * static_cast<size_t>(s.max_blocks_per_seq), 0);
      std::vector<int32_t> sample_ids, sample_pos;
      for (size_t k = 0; k < rows.size(); ++k) {
        const Seq& q = seqs[rows[k]];
        const std::vector<BlockId>& table = bm.block_table(q.id);
        std::copy(table.begin(), table.end(),
                  din.block_tables.begin() + static_cast<std::ptrdiff_t>(k * s.max_blocks_per_seq));
        sample_ids.push_back(q.id);
        sample_pos.push_back(din.context_lens[k]);
      }
      std::vector<BlockCopy> block_copies;
      for (const auto& c : copies) block_copies.push_back(c.second);
      runner.copy_blocks(block_copies);
      runner.decode(din);
      std::vector<int32_t> toks;
      std::vector<float> lps;
      runner.sample(toks, lps, sample_ids, sample_pos, sp.sample);
      for (size_t k = 0; k < rows.size(); ++k) {
        Seq& q = seqs[rows[k]];
        accept(q, toks[k], lps[k]);
        if (q.done) retire(q);
      }
      s.stats.decode_steps++;
    }
    s.stats.peak_blocks_used = std::max(s.stats.peak_blocks_used, bm.num_blocks() - bm.num_free());
    running.erase(std::remove_if(running.begin(), running.end(), [&](int j) { return !seqs[j].running; }),
                  running.end());
    s.stats.decode_seconds += seconds_since(t0);
    if (progress) progress(finished, total);
  }
  bm.clear();

  std::vector<Completion> out;
  out.reserve(seqs.size());
  for (Seq& q : seqs) {
    Completion c;
    c.request = q.request;
    c.sample = q.sample;
    c.ids = std::move(q.ids);
    c.logprobs = std::move(q.logprobs);
    c.finish = q.finish;
    out.push_back(std::move(c));
  }
  s.stats.total_seconds = seconds_since(t_start);
  return out;
}

}  // namespace rlcu::engine
