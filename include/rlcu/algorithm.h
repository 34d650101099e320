// The RL algorithms and what sets them apart, as a table of traits, parsed once from the `algorithm` config section.
//
//   algorithm     advantages                                   KL penalty            critic
//   grpo          per sequence, group-normalised (Dr.GRPO with  loss (or reward with   no
//                 scale_rewards = none)                          kl_in_reward)
//   rloo          per sequence, leave-one-out baseline          loss (or reward)       no
//   reinforce_pp  per token: discounted returns, batch-whitened reward (token KL)      no
//   ppo           per token: GAE over the critic's values       reward (token KL)      yes
//
// Every algorithm uses the reference model exactly when algorithm.kl_coef > 0. The config keeps the strings (it
// validates them against its schema); the trainer parses them here once, at start-up, and decides by enum after.
#pragma once

#include <string>

#include "rlcu/rl_ops.h"

namespace rlcu {
struct AlgorithmSection;
}

namespace rlcu::rl {

enum class Algorithm { Grpo, Ppo, Rloo, ReinforcePp };  // "grpo" | "ppo" | "rloo" | "reinforce_pp"

struct AlgorithmTraits {
  bool token_level_advantages = false;  // one advantage per token (returns over token rewards), else per sequence
  bool kl_in_reward = false;            // the KL penalty always goes into the reward (algorithm.kl_in_reward forced)
  bool needs_critic = false;            // a value model is trained alongside the policy
  bool needs_reference(double kl_coef) const { return kl_coef > 0; }
};

// Throws rlcu::Error naming `field` (e.g. "algorithm.name") and the accepted names.
Algorithm parse_algorithm(const std::string& s, const std::string& field);
const char* name_of(Algorithm a);
const AlgorithmTraits& traits_of(Algorithm a);

// The `algorithm` section with its choices parsed and the KL placement resolved.
struct AlgorithmSpec {
  Algorithm algorithm = Algorithm::Grpo;
  AlgorithmTraits traits;
  AdvantageNorm scale_rewards = AdvantageNorm::Group;
  KlEstimator kl_estimator = KlEstimator::K3;
  LossAgg loss_agg = LossAgg::TokenMean;
  double kl_coef = 0.0;
  bool use_reference = false;  // traits.needs_reference(kl_coef)
  bool kl_in_reward = false;   // traits.kl_in_reward or algorithm.kl_in_reward
  PolicyLossKind policy_loss = PolicyLossKind::Clip;
  float loss_clip_low = 0.2f, loss_clip_high = 0.2f;  // the clip range of policy_loss (clip_*, gspo_clip_*, cispo_clip_*)
  bool recompute_old_logprobs = false;                // algorithm.old_logprobs = recompute
  RolloutCorrectionParams correction;                 // mode None unless algorithm.rollout_correction is set

  // The coefficient of the KL term in the policy loss: kl_coef when there is a reference and the KL is not in the
  // reward, else 0.
  float loss_kl_coef() const { return use_reference && !kl_in_reward ? static_cast<float>(kl_coef) : 0.0f; }
  // The coefficient of the KL penalty subtracted from the reward: kl_coef when there is a reference and the KL is
  // in the reward, else 0.
  double reward_kl_coef() const { return use_reference && kl_in_reward ? kl_coef : 0.0; }
};

// Parses algorithm.name, scale_rewards, kl_estimator, loss_agg, policy_loss (with its clip range), old_logprobs and
// rollout_correction*; errors name the `algorithm.*` key.
AlgorithmSpec parse_algorithm_spec(const AlgorithmSection& s);

}  // namespace rlcu::rl
