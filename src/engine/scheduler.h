// The rollout engine's scheduler: which sequences run in the next forward pass, and what their sampled tokens do.
// Host bookkeeping only; the runner (the model) is not a dependency, so it is tested without a model.
//
// It owns the BlockManager and, for one generate() call, the sequence states. Sequence ids number the samples in
// request order (with n samples per request, request r's sample j is r * n + j); the id is the sampler's sequence id
// and the block manager's. A prompt group is prefilled under group_id(request) (negative) and forked to its samples.
//
// One call of schedule() returns the next engine step as plain data (Step): either
//   * a prefill pass: entries of the waiting queue are admitted from its front while running slots (max_batch),
//     logit rows (max_batch), the token budget (prefill_tokens) and the blocks (BlockManager::allocate, which keeps
//     the watermark) allow. An entry is a prompt group (its prompt, n logit rows on its last token) or a preempted
//     sequence (prompt + its tokens so far, one logit row). Every prefill starts at position 0. As long as prompts
//     wait and room remains, prefill passes come before the next decode step.
//   * or a decode step over every running sequence (in id order): each appends one slot for its last sampled
//     token (BlockManager::append_slot, reporting a copy-on-write of a shared, partially filled last block). When
//     the pool is empty the most recently admitted running sequence (possibly the one appending) is preempted: its
//     blocks go back, it leaves the step's batch and its copy-on-write copy is dropped, and it waits at the front of
//     the queue for a recompute prefill. The step may end up with no rows (every sequence preempted).
// The token sampled from a forward over c cached tokens has position c, in a group prefill (c = prompt length), a
// decode step (c = after appending the last sampled token) and a recompute prefill alike, so a sequence's tokens do
// not depend on how it was scheduled.
//
// postprocess(step, tokens, logprobs) takes one sampled token per logit row. A prefill pass forks each admitted
// group's blocks to its samples (then frees the group's own reference), marks the entries running in admission
// order and records their first token; a decode step records one token per row. Then the stop rules: an EOS id
// (unless ignore_eos), a stop string in the completion's bytes (the token that completes it is kept),
// max_new_tokens, or the context length (max_model_len). A finished sequence frees its blocks and running slot at
// once. The order of every BlockManager call is fixed by the requests alone, so block ids (and slots) are too.
//
// Multi-turn continuation (a later change) plugs in at the sequence state: a sequence whose turn ends would move to
// a Parked phase instead of Finished, leaving the running set and either keeping its blocks or giving them back
// with BlockManager::preempt (then it is recomputed like a preempted sequence). Appending an observation pushes its
// tokens onto the sequence's ids (with a mask so they carry no sampled log-prob) and puts the sequence back on the
// waiting queue as a sequence entry. Its prefill entry then starts at the cached length c = BlockManager::
// num_tokens(id) instead of 0: the tokens fed are the context from position c on (the last sampled token, never
// fed, then the observation), their slots come from append_slot (copy-on-write included) instead of allocate, and
// the logit row is on the last one as now; the sample position stays the context length. The runner's prefill then
// needs attention over the cached blocks for such an entry (a paged prefill), where today's dense prefill reads
// only the packed tokens because every entry starts at position 0.
#pragma once

#include <cstdint>
#include <deque>
#include <string>
#include <vector>

#include "batch.h"
#include "block_manager.h"
#include "rlcu/engine.h"

namespace rlcu::engine {

struct SchedulerConfig {
  int64_t max_batch = 256;       // running sequences, and logit rows of one prefill pass, at most
  int64_t prefill_tokens = 8192;  // tokens per prefill pass
  int64_t max_model_len = 0;     // longest prompt + completion (> 0)
  int64_t vocab_size = 0;        // sampled tokens must lie in [0, vocab_size)
  BlockManagerConfig blocks;
};

enum class SeqPhase { Waiting, Running, Finished };

struct SeqState {
  int request = 0, sample = 0;
  int32_t id = 0;
  SeqPhase phase = SeqPhase::Waiting;
  int64_t admitted = -1;         // admission counter (preemption picks the largest running one)
  std::vector<int32_t> ids;      // completion so far; the last one is not in the KV cache yet
  std::vector<float> logprobs;   // one per id
  FinishReason finish = FinishReason::Length;
  std::string tail;              // last bytes of the completion, for stop strings
};

// An entry of the waiting queue: a prompt group to prefill (request >= 0) or a preempted sequence (seq >= 0).
struct WaitEntry {
  int request = -1;
  int32_t seq = -1;
};

enum class StepKind { Prefill, Decode };

struct Step {
  StepKind kind = StepKind::Decode;
  PrefillInput prefill;             // Prefill: the packed batch
  std::vector<WaitEntry> admitted;  // Prefill: the entries, in batch order
  DecodeInput decode;               // Decode: one row per sequence of `rows`
  std::vector<int32_t> rows;        // Decode: the sequence of each row
  std::vector<BlockCopy> copies;    // Decode: copy-on-write copies to perform before the step
  // One per logit row: the sampler's sequence id and position of the token sampled from it.
  std::vector<int32_t> sample_ids, sample_positions;
  int64_t num_samples() const { return static_cast<int64_t>(sample_ids.size()); }
};

struct SchedulerStats {
  int64_t generated_tokens = 0;
  int64_t preemptions = 0;
  int64_t peak_blocks_used = 0;  // measured after every postprocess
};

class Scheduler {
 public:
  explicit Scheduler(const SchedulerConfig& config);

  // Starts a generate() call: every request's group waits, in order; the block pool is emptied. The requests
  // (already validated) must outlive the call; the stop rules are copied from `sampling`.
  void start(const std::vector<Request>& requests, const SamplingOptions& sampling);
  bool done() const { return finished_ == static_cast<int64_t>(seqs_.size()); }
  // The next step (not done()). Throws rlcu::Error when nothing runs and the pool cannot hold the next entry.
  Step schedule();
  // Applies one sampled token (and its log-prob) per logit row of `step`, the stop rules, and frees what finished.
  void postprocess(const Step& step, const std::vector<int32_t>& tokens, const std::vector<float>& logprobs);
  // The completions in sequence order (done()); empties the pool.
  std::vector<Completion> take_completions();

  static SeqId group_id(int request) { return -(static_cast<SeqId>(request) + 1); }
  const BlockManager& block_manager() const { return bm_; }
  int64_t max_blocks_per_seq() const { return max_blocks_per_seq_; }
  int64_t max_model_len() const { return config_.max_model_len; }
  const SchedulerStats& stats() const { return stats_; }
  int64_t num_sequences() const { return static_cast<int64_t>(seqs_.size()); }
  int64_t num_finished() const { return finished_; }
  const SeqState& sequence(int32_t id) const { return seqs_[static_cast<size_t>(id)]; }
  const std::vector<int32_t>& running() const { return running_; }  // ascending ids
  const std::deque<WaitEntry>& waiting() const { return waiting_; }
  // The tokens a waiting entry prefills: the group's prompt, or a preempted sequence's prompt + ids.
  std::vector<int32_t> prefill_tokens(const WaitEntry& w) const;

 private:
  struct StopRules {
    int64_t max_new_tokens = 0;
    std::vector<int32_t> eos_ids;
    bool ignore_eos = false;
    std::vector<std::string> stop_strings;
    size_t max_stop = 0;  // longest stop string
    const TokenBytesTable* token_bytes = nullptr;
  };

  const std::vector<int32_t>& prompt_of(const SeqState& q) const;
  bool admit(Step& step, const WaitEntry& w, int64_t& new_running);
  void build_decode(Step& step);
  void preempt(int32_t victim, Step& step, std::vector<int32_t>& copy_owners);
  void apply_prefill(const Step& step, const std::vector<int32_t>& tokens, const std::vector<float>& logprobs);
  void accept(SeqState& q, int32_t token, float logprob);
  void finish(SeqState& q, FinishReason why);
  void retire(SeqState& q);

  SchedulerConfig config_;
  int64_t max_blocks_per_seq_ = 0;
  BlockManager bm_;
  const std::vector<Request>* requests_ = nullptr;
  StopRules stop_;
  std::vector<SeqState> seqs_;
  std::vector<int32_t> first_seq_;  // per request: the id of its sample 0
  std::deque<WaitEntry> waiting_;
  std::vector<int32_t> running_;   // kept in id order (groups stay adjacent)
  int64_t finished_ = 0, admissions_ = 0;
  SchedulerStats stats_;
};

}  // namespace rlcu::engine
