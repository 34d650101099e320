// The advantage driver: from a rollout batch's rewards (and reference log-probs, critic values) to the advantages,
// value targets, sequence masks and per-token loss weights the update needs, with the estimators of
// include/rlcu/rl_ops.h running on the context's device. Steps, in order:
//   1. KL to the reference (when there is one): seq_kl[i] = sum over the tokens of sequence i of
//      KL_est(old_logp_t, ref_logp_t) (fp64, token order); rollout_kl = sum_i seq_kl[i] / max(T, 1).
//   2. sequence rewards: r_i = reward_i, minus float(kl_coef * seq_kl[i]) for a sequence-level algorithm with the
//      KL in the reward (token-level algorithms put kl_coef * kl_t into the token rewards instead, step 3).
//   3. advantages: GRPO group_advantages / RLOO rloo_advantages per sequence, broadcast to its tokens; REINFORCE++
//      reinforce_pp_advantages (whitened); PPO gae_advantages over the critic's values (returns = value targets).
//   4. masks: a group whose rewards are all equal counts in zero_std_groups and, with dynamic sampling, is dropped;
//      with mask_truncated, a completion cut at max_new_tokens is dropped (seq_keep = 0).
//   5. loss weights: rl::loss_weights over the kept sequences (token and sequence counts of the whole batch, on the
//      host CPU context so that the weights do not depend on the device), times the loss mask.
// Capacity: the device buffers are allocated once, in the constructor, for max_seqs sequences and max_tokens
// completion tokens; compute() allocates no device memory and checks that a batch fits.
// Data parallelism will reduce the batch statistics of steps 3 to 5 (the batch std, the whitening moments, the
// kept token and sequence counts) over the ranks; each is computed in one place here for that reason.
#pragma once

#include <cstdint>

#include "rlcu/algorithm.h"
#include "rlcu/context.h"
#include "rlcu/rollout_batch.h"
#include "rlcu/tensor.h"

namespace rlcu {
struct RunConfig;
}

namespace rlcu::rl {

struct AdvantageOptions {
  AlgorithmSpec spec;
  int group_size = 1;
  float gamma = 1.0f;             // REINFORCE++ and GAE discount
  float lambda = 0.95f;           // GAE lambda
  bool whiten = true;             // PPO: whiten the GAE advantages over the batch (REINFORCE++ always whitens)
  bool dynamic_sampling = false;  // drop groups whose rewards are all equal
  bool mask_truncated = false;    // drop completions cut at max_new_tokens
  int64_t max_new_tokens = 0;     // the truncation limit and seq-mean-token-sum-norm's length
  int64_t max_seqs = 0;           // capacity: sequences per batch
  int64_t max_tokens = 0;         // capacity: completion tokens per batch
};

// The options a run's config implies: max_seqs = train.prompts_per_step * rollout.group_size, max_tokens =
// max_seqs * rollout.max_new_tokens.
AdvantageOptions advantage_options(const RunConfig& cfg, const AlgorithmSpec& spec);

struct AdvantageStats {
  double rollout_kl = 0;        // mean per-token KL of the rollout policy to the reference (0 without one)
  int64_t zero_std_groups = 0;  // groups whose rewards are all equal
  int64_t kept_seqs = 0;        // sequences with seq_keep = 1
  int64_t kept_tokens = 0;      // their loss-mask tokens
};

class AdvantageDriver {
 public:
  AdvantageDriver(const AdvantageOptions& opt, Device device);
  AdvantageDriver(const AdvantageDriver&) = delete;
  AdvantageDriver& operator=(const AdvantageDriver&) = delete;

  // Reads rewards, old_logprobs(), ref_logprobs (with a reference), values (PPO), lengths, stopped, loss_mask;
  // writes seq_kl (with a reference), advantages, returns (PPO), seq_keep and loss_weights.
  AdvantageStats compute(RolloutBatch& batch, Context& ctx);

  const AdvantageOptions& options() const { return opt_; }

 private:
  // Step 3 for each kind; `seq_rewards` [N].
  void sequence_advantages(RolloutBatch& b, const std::vector<float>& seq_rewards, Context& ctx);
  void token_advantages(RolloutBatch& b, const std::vector<float>& seq_rewards, Context& ctx);
  // Steps 4 and 5.
  void masks_and_weights(RolloutBatch& b, AdvantageStats& st) const;

  AdvantageOptions opt_;
  OwnedTensor rewards_, seq_adv_, cu_, old_, ref_, values_, adv_, returns_;
};

}  // namespace rlcu::rl
