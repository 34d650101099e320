// The rollout engine's scheduler (see scheduler.h for admission, fork, preemption, the stop rules and the seam for
// multi-turn continuation; block_manager.h for the blocks).
//
// Bookkeeping per sequence: while it runs, its KV cache holds prompt + ids except the last id (the last sampled
// token), which the next decode step feeds; a recompute prefill feeds prompt + ids and samples the next token.
#include "scheduler.h"

#include <algorithm>
#include <optional>

#include <fmt/format.h>

#include "rlcu/error.h"
#include "rlcu/token_bytes.h"

namespace rlcu::engine {

Scheduler::Scheduler(const SchedulerConfig& config) : config_(config), bm_(config.blocks) {
  RLCU_CHECK(config.max_batch >= 1 && config.prefill_tokens >= 1 && config.max_model_len >= 1 &&
                 config.vocab_size >= 1,
             "scheduler: max_batch {}, prefill_tokens {}, max_model_len {}, vocab_size {}", config.max_batch,
             config.prefill_tokens, config.max_model_len, config.vocab_size);
  max_blocks_per_seq_ = bm_.blocks_for_tokens(config.max_model_len);
}

void Scheduler::start(const std::vector<Request>& requests, const SamplingOptions& sampling) {
  bm_.clear();
  requests_ = &requests;
  stop_ = StopRules{};
  stop_.max_new_tokens = sampling.max_new_tokens;
  stop_.eos_ids = sampling.eos_ids;
  stop_.ignore_eos = sampling.ignore_eos;
  stop_.stop_strings = sampling.stop_strings;
  for (const std::string& st : stop_.stop_strings) stop_.max_stop = std::max(stop_.max_stop, st.size());
  stop_.token_bytes = sampling.token_bytes;
  RLCU_CHECK(stop_.max_stop == 0 || stop_.token_bytes != nullptr, "stop strings without token bytes");

  seqs_.clear();
  first_seq_.assign(requests.size(), 0);
  for (size_t r = 0; r < requests.size(); ++r) {
    first_seq_[r] = static_cast<int32_t>(seqs_.size());
    for (int j = 0; j < requests[r].n; ++j) {
      SeqState q;
      q.request = static_cast<int>(r);
      q.sample = j;
      q.id = static_cast<int32_t>(seqs_.size());
      seqs_.push_back(std::move(q));
    }
  }
  waiting_.clear();
  for (size_t r = 0; r < requests.size(); ++r) waiting_.push_back({static_cast<int>(r), -1});
  running_.clear();
  finished_ = 0;
  admissions_ = 0;
  stats_ = SchedulerStats{};
}

const std::vector<int32_t>& Scheduler::prompt_of(const SeqState& q) const {
  return (*requests_)[static_cast<size_t>(q.request)].prompt;
}

std::vector<int32_t> Scheduler::prefill_tokens(const WaitEntry& w) const {
  if (w.request >= 0) return (*requests_)[static_cast<size_t>(w.request)].prompt;
  const SeqState& q = sequence(w.seq);
  std::vector<int32_t> t(prompt_of(q));
  t.insert(t.end(), q.ids.begin(), q.ids.end());
  return t;
}

Step Scheduler::schedule() {
  RLCU_CHECK(!done(), "schedule() with every sequence finished");
  Step step;
  step.kind = StepKind::Prefill;
  int64_t new_running = 0;
  while (!waiting_.empty() && admit(step, waiting_.front(), new_running)) waiting_.pop_front();
  if (!step.admitted.empty()) return step;  // admit more before decoding while prompts wait and room remains
  if (running_.empty()) {
    RLCU_CHECK(!waiting_.empty(), "engine: nothing running and nothing waiting with {} of {} finished", finished_,
               seqs_.size());
    throw Error(fmt::format("the KV pool ({} blocks of {} tokens) cannot hold the next prompt; raise "
                            "rollout.kv_fraction or lower rollout.max_batch",
                            bm_.num_blocks(), bm_.block_size()));
  }
  build_decode(step);
  return step;
}

// Adds waiting entry `w` to the prefill pass in `step` if the running slots, logit rows, token budget and blocks
// allow (false: nothing changed).
bool Scheduler::admit(Step& step, const WaitEntry& w, int64_t& new_running) {
  PrefillInput& pin = step.prefill;
  const int n_rows = w.request >= 0 ? (*requests_)[static_cast<size_t>(w.request)].n : 1;
  const std::vector<int32_t> toks = prefill_tokens(w);
  const int64_t T = static_cast<int64_t>(toks.size());
  if (static_cast<int64_t>(running_.size()) + new_running + n_rows > config_.max_batch) return false;
  if (static_cast<int64_t>(pin.ids.size()) + T > config_.prefill_tokens) return false;
  if (static_cast<int64_t>(pin.logit_rows.size()) + n_rows > config_.max_batch) return false;
  const SeqId owner = w.request >= 0 ? group_id(w.request) : static_cast<SeqId>(w.seq);
  if (!bm_.allocate(owner, T)) return false;
  const int32_t base = static_cast<int32_t>(pin.ids.size());
  for (int64_t p = 0; p < T; ++p) {
    pin.ids.push_back(toks[static_cast<size_t>(p)]);
    pin.positions.push_back(static_cast<int32_t>(p));
    pin.slots.push_back(static_cast<int32_t>(bm_.slot(owner, p)));
  }
  pin.cu_seqlens.push_back(static_cast<int32_t>(pin.ids.size()));
  pin.max_seqlen = std::max(pin.max_seqlen, static_cast<int32_t>(T));
  for (int j = 0; j < n_rows; ++j) {
    pin.logit_rows.push_back(base + static_cast<int32_t>(T) - 1);
    step.sample_ids.push_back(w.request >= 0 ? first_seq_[static_cast<size_t>(w.request)] + j : w.seq);
    step.sample_positions.push_back(static_cast<int32_t>(T));
  }
  new_running += n_rows;
  step.admitted.push_back(w);
  return true;
}

// One row per running sequence, in id order, preempting the most recently admitted running sequence while the pool
// cannot give the appending sequence its slot.
void Scheduler::build_decode(Step& step) {
  step.kind = StepKind::Decode;
  DecodeInput& din = step.decode;
  std::vector<int32_t> copy_owners;  // the sequence of each of step.copies
  for (size_t i = 0; i < running_.size(); ++i) {
    const int32_t id = running_[i];
    const SeqState& q = seqs_[static_cast<size_t>(id)];
    if (q.phase != SeqPhase::Running) continue;  // preempted earlier in this loop
    std::optional<AppendResult> ar;
    while (!(ar = bm_.append_slot(id))) {
      int32_t victim = -1;
      for (int32_t j : running_)
        if (seqs_[static_cast<size_t>(j)].phase == SeqPhase::Running &&
            (victim < 0 || seqs_[static_cast<size_t>(j)].admitted > seqs_[static_cast<size_t>(victim)].admitted))
          victim = j;
      RLCU_CHECK(victim >= 0, "engine: no sequence to preempt");
      preempt(victim, step, copy_owners);
      if (victim == id) break;
    }
    if (q.phase != SeqPhase::Running) continue;
    if (ar->copy) {
      step.copies.push_back(*ar->copy);
      copy_owners.push_back(id);
    }
    const int64_t n = bm_.num_tokens(id);
    step.rows.push_back(id);
    din.ids.push_back(q.ids.back());
    din.positions.push_back(static_cast<int32_t>(n - 1));
    din.slots.push_back(static_cast<int32_t>(ar->slot));
    din.context_lens.push_back(static_cast<int32_t>(n));
  }
  din.block_tables.assign(step.rows.size() * static_cast<size_t>(max_blocks_per_seq_), 0);
  for (size_t k = 0; k < step.rows.size(); ++k) {
    const std::vector<BlockId>& table = bm_.block_table(step.rows[k]);
    std::copy(table.begin(), table.end(),
              din.block_tables.begin() + static_cast<std::ptrdiff_t>(k * static_cast<size_t>(max_blocks_per_seq_)));
    step.sample_ids.push_back(step.rows[k]);
    step.sample_positions.push_back(din.context_lens[k]);
  }
}

// Gives the victim's blocks back and queues it first for a recompute prefill; a victim already in this step's batch
// leaves it, with its copy-on-write copy (which targets a block it no longer owns).
void Scheduler::preempt(int32_t victim, Step& step, std::vector<int32_t>& copy_owners) {
  SeqState& v = seqs_[static_cast<size_t>(victim)];
  bm_.preempt(v.id);
  v.phase = SeqPhase::Waiting;
  waiting_.push_front({-1, victim});
  stats_.preemptions++;
  DecodeInput& din = step.decode;
  for (size_t k = 0; k < step.rows.size(); ++k)
    if (step.rows[k] == victim) {
      const auto at = static_cast<std::ptrdiff_t>(k);
      step.rows.erase(step.rows.begin() + at);
      din.ids.erase(din.ids.begin() + at);
      din.positions.erase(din.positions.begin() + at);
      din.slots.erase(din.slots.begin() + at);
      din.context_lens.erase(din.context_lens.begin() + at);
      break;
    }
  for (size_t k = copy_owners.size(); k-- > 0;)
    if (copy_owners[k] == victim) {
      copy_owners.erase(copy_owners.begin() + static_cast<std::ptrdiff_t>(k));
      step.copies.erase(step.copies.begin() + static_cast<std::ptrdiff_t>(k));
    }
}

void Scheduler::postprocess(const Step& step, const std::vector<int32_t>& tokens,
                            const std::vector<float>& logprobs) {
  RLCU_CHECK(static_cast<int64_t>(tokens.size()) == step.num_samples() && logprobs.size() == tokens.size(),
             "postprocess: {} tokens and {} log-probs for {} logit rows", tokens.size(), logprobs.size(),
             step.num_samples());
  if (step.kind == StepKind::Prefill) {
    apply_prefill(step, tokens, logprobs);
    running_.clear();
    for (const SeqState& q : seqs_)
      if (q.phase == SeqPhase::Running) running_.push_back(q.id);
  } else {
    for (size_t k = 0; k < step.rows.size(); ++k) {
      SeqState& q = seqs_[static_cast<size_t>(step.rows[k])];
      accept(q, tokens[k], logprobs[k]);
      if (q.phase == SeqPhase::Finished) retire(q);
    }
    running_.erase(std::remove_if(running_.begin(), running_.end(),
                                  [&](int32_t j) { return seqs_[static_cast<size_t>(j)].phase != SeqPhase::Running; }),
                   running_.end());
  }
  stats_.peak_blocks_used = std::max(stats_.peak_blocks_used, bm_.num_blocks() - bm_.num_free());
}

// A group's samples fork its blocks (the group's own reference is freed after them); every admitted sequence runs,
// in admission order, with its first token.
void Scheduler::apply_prefill(const Step& step, const std::vector<int32_t>& tokens,
                              const std::vector<float>& logprobs) {
  size_t row = 0;
  for (const WaitEntry& w : step.admitted) {
    const bool group = w.request >= 0;
    const int n = group ? (*requests_)[static_cast<size_t>(w.request)].n : 1;
    for (int j = 0; j < n; ++j) {
      SeqState& q = seqs_[static_cast<size_t>(group ? first_seq_[static_cast<size_t>(w.request)] + j : w.seq)];
      if (group) bm_.fork(group_id(w.request), q.id);
      q.phase = SeqPhase::Running;
      q.admitted = admissions_++;
      accept(q, tokens[row], logprobs[row]);
      ++row;
      if (q.phase == SeqPhase::Finished) retire(q);
    }
    if (group) bm_.free(group_id(w.request));
  }
}

// Records a token sampled for q and applies the stop rules.
void Scheduler::accept(SeqState& q, int32_t tok, float lp) {
  RLCU_CHECK(tok >= 0 && tok < config_.vocab_size, "sampler returned token {} (no finite logit?)", tok);
  q.ids.push_back(tok);
  q.logprobs.push_back(lp);
  stats_.generated_tokens++;
  if (!stop_.ignore_eos && std::find(stop_.eos_ids.begin(), stop_.eos_ids.end(), tok) != stop_.eos_ids.end())
    return finish(q, FinishReason::Eos);
  if (stop_.max_stop > 0) {
    // Only a match that ends in the new token's bytes is new: search from max_stop - 1 bytes before them.
    const size_t before = q.tail.size();
    q.tail += stop_.token_bytes->token(tok);
    const size_t from = before >= stop_.max_stop ? before - stop_.max_stop + 1 : 0;
    for (const std::string& st : stop_.stop_strings)
      if (q.tail.find(st, from) != std::string::npos) return finish(q, FinishReason::Stop);
    if (q.tail.size() > stop_.max_stop) q.tail.erase(0, q.tail.size() - stop_.max_stop);
  }
  if (static_cast<int64_t>(q.ids.size()) >= stop_.max_new_tokens) return finish(q, FinishReason::Length);
  if (static_cast<int64_t>(prompt_of(q).size() + q.ids.size()) >= config_.max_model_len)
    return finish(q, FinishReason::Length);
}

void Scheduler::finish(SeqState& q, FinishReason why) {
  q.phase = SeqPhase::Finished;
  q.finish = why;
  ++finished_;
}

void Scheduler::retire(SeqState& q) {
  if (bm_.has(q.id)) bm_.free(q.id);
}

std::vector<Completion> Scheduler::take_completions() {
  RLCU_CHECK(done(), "completions taken with {} of {} sequences finished", finished_, seqs_.size());
  bm_.clear();
  std::vector<Completion> out;
  out.reserve(seqs_.size());
  for (SeqState& q : seqs_) {
    Completion c;
    c.request = q.request;
    c.sample = q.sample;
    c.ids = std::move(q.ids);
    c.logprobs = std::move(q.logprobs);
    c.finish = q.finish;
    out.push_back(std::move(c));
  }
  seqs_.clear();
  waiting_.clear();
  running_.clear();
  finished_ = 0;
  requests_ = nullptr;
  return out;
}

}  // namespace rlcu::engine
