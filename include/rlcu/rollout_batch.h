// A rollout batch: the completions of one training step and everything the later phases attach to them, on the
// host, plus their packing into micro-batches of prompt + completion sequences.
//
// Layout
//   P prompts, G samples each: N = P * G sequences; sequence i answers prompt prompt_of[i] and group g is sequences
//   [g*G, (g+1)*G) (the rollout engine returns them in that order).
//   Per-sequence vectors have N entries. Per-token vectors are in COMPLETION LAYOUT: the completion tokens of all
//   sequences back to back, sequence i owning [offsets[i], offsets[i+1]), T = offsets[N] (the cu_seqlens of
//   include/rlcu/rl_ops.h). Prompt tokens have no entry.
//
// Who fills what (one step): the rollout builds the batch (make_rollout_batch); the reward phase sets
// completion_texts, rewards and reward_components; the reference model sets ref_logprobs, the critic values; the
// advantage driver (include/rlcu/advantage.h) seq_kl, advantages, returns, seq_keep and loss_weights; the update
// reads them through micro-batch rows (gather_rows).
//
// recomputed_logprobs holds old log-probs recomputed by the trainer's forward (algorithm.old_logprobs = recompute,
// include/rlcu/rollout_correction.h); when it is set, old_logprobs() returns it instead of the sampler's, and
// is_weights holds the rollout correction's per-token weights (TIS / MIS) when a correction is on. loss_mask marks the tokens the
// policy produced (1) against tokens it did not (0, e.g. a multi-turn environment's observation tokens).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "rlcu/engine.h"
#include "rlcu/model.h"

namespace rlcu::rl {

struct RolloutPrompt {
  std::string text;          // the prompt as shown to the model
  std::vector<int32_t> ids;  // its token ids
  std::string answer;        // the reference answer ("" when the data has none)
};

struct RolloutBatch {
  int group_size = 1;
  std::vector<RolloutPrompt> prompts;  // [P]

  // ---- per sequence [N] -------------------------------------------------------------------------------------------
  std::vector<int32_t> prompt_of;                 // index into prompts
  std::vector<int32_t> sample_of;                 // 0 .. G-1 within its group
  std::vector<std::vector<int32_t>> completions;  // generated token ids (EOS / stop token included)
  std::vector<engine::FinishReason> finish;
  std::vector<int32_t> lengths;                   // completion tokens
  std::vector<uint8_t> stopped;                   // 1: ended by EOS or a stop string, 0: cut at the length limit
  std::vector<std::string> completion_texts;      // decoded completions (reward phase)
  std::vector<float> rewards;                     // total reward
  std::map<std::string, std::vector<float>> reward_components;  // name -> [N], unweighted
  std::vector<double> seq_kl;                     // sum of the per-token KL estimates to the reference, or empty
  std::vector<float> seq_keep;                    // 1 = trained on, 0 = dropped (dynamic sampling, truncation)

  // ---- per token [T], completion layout -------------------------------------------------------------------------------
  std::vector<int32_t> offsets{0};         // [N+1]
  std::vector<float> rollout_logprobs;     // the sampler's log-probs (the rollout policy)
  std::vector<float> recomputed_logprobs;  // empty, or old log-probs recomputed by the trainer
  std::vector<float> loss_mask;            // 1 = a policy token, 0 = not trained on; all ones for single-turn rollouts
  std::vector<float> ref_logprobs;         // the reference model's, or empty
  std::vector<float> values;               // the critic's, or empty
  std::vector<float> advantages;
  std::vector<float> returns;              // value targets (PPO), or empty
  std::vector<float> loss_weights;         // w_t of the loss aggregation (rl::loss_weights), 0 for dropped tokens
  std::vector<float> is_weights;           // rollout-correction weights rho_t (rl::rollout_correction), or empty

  int64_t num_seqs() const { return static_cast<int64_t>(completions.size()); }
  int64_t num_tokens() const { return offsets.back(); }
  int64_t num_groups() const { return group_size > 0 ? num_seqs() / group_size : 0; }
  // The log-probs the policy ratio is taken against.
  const std::vector<float>& old_logprobs() const {
    return recomputed_logprobs.empty() ? rollout_logprobs : recomputed_logprobs;
  }
};

// The batch of the engine's completions (in request order, samples in order) for `prompts`, each requested with
// n = group_size samples: per-sequence fields, offsets, rollout log-probs, a loss mask of ones.
RolloutBatch make_rollout_batch(std::vector<RolloutPrompt> prompts, std::vector<engine::Completion> completions,
                                int group_size);

// ---- micro-batches ------------------------------------------------------------------------------------------------
// A packed micro-batch of prompt + completion sequences. Row r of the batch predicts token r+1 of its sequence; the
// rows that predict a completion token carry (sequence index, completion token index), the others have target -1
// and seq_of_row = tok_of_row = -1.
struct Micro {
  PackedBatch batch;
  std::vector<int32_t> seq_of_row, tok_of_row;
  std::vector<int32_t> seqs;  // the sequences it holds
};

// Sequences in order, each whole, into micro-batches of at most `budget` tokens (a new micro-batch starts when the
// next sequence does not fit).
std::vector<Micro> pack_micro_batches(const RolloutBatch& batch, int64_t budget);
// The same over the sequences [first, end) only (a data-parallel rank's share); sequence indices stay the batch's.
std::vector<Micro> pack_micro_batches(const RolloutBatch& batch, int64_t budget, int64_t first, int64_t end);

// Completion-layout values -> the micro-batch's rows: out[r] = per_token[offsets[s] + t] for a row that predicts
// token t of sequence s, 0 for the other rows and for every row when per_token is empty. [mb.batch.num_tokens()].
std::vector<float> gather_rows(const Micro& mb, const std::vector<int32_t>& offsets,
                               const std::vector<float>& per_token);
// The inverse for the rows that predict a completion token: per_token[offsets[s] + t] = rows[r].
void scatter_rows(std::vector<float>& per_token, const Micro& mb, const std::vector<int32_t>& offsets,
                  const std::vector<float>& rows);

}  // namespace rlcu::rl
