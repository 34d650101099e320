// The algorithm traits table and the parsing of the `algorithm` section (include/rlcu/algorithm.h).
#include "rlcu/algorithm.h"

#include "rlcu/config.h"
#include "enum_names.h"

namespace rlcu::rl {

namespace {

constexpr std::pair<const char*, Algorithm> kAlgorithms[] = {{"grpo", Algorithm::Grpo},
                                                             {"ppo", Algorithm::Ppo},
                                                             {"rloo", Algorithm::Rloo},
                                                             {"reinforce_pp", Algorithm::ReinforcePp}};

AlgorithmTraits make_traits(bool token_level, bool kl_in_reward, bool critic) {
  AlgorithmTraits t;
  t.token_level_advantages = token_level;
  t.kl_in_reward = kl_in_reward;
  t.needs_critic = critic;
  return t;
}

}  // namespace

Algorithm parse_algorithm(const std::string& s, const std::string& field) { return parse_enum(s, field, kAlgorithms); }
const char* name_of(Algorithm a) { return enum_name(a, kAlgorithms); }

const AlgorithmTraits& traits_of(Algorithm a) {
  static const AlgorithmTraits grpo = make_traits(/*token_level=*/false, /*kl_in_reward=*/false, /*critic=*/false);
  static const AlgorithmTraits rloo = make_traits(/*token_level=*/false, /*kl_in_reward=*/false, /*critic=*/false);
  static const AlgorithmTraits reinforce_pp =
      make_traits(/*token_level=*/true, /*kl_in_reward=*/true, /*critic=*/false);
  static const AlgorithmTraits ppo = make_traits(/*token_level=*/true, /*kl_in_reward=*/true, /*critic=*/true);
  switch (a) {
    case Algorithm::Grpo: return grpo;
    case Algorithm::Rloo: return rloo;
    case Algorithm::ReinforcePp: return reinforce_pp;
    case Algorithm::Ppo: return ppo;
  }
  RLCU_CHECK(false, "unknown algorithm {}", static_cast<int>(a));
  return grpo;
}

AlgorithmSpec parse_algorithm_spec(const AlgorithmSection& s) {
  AlgorithmSpec spec;
  spec.algorithm = parse_algorithm(s.name, "algorithm.name");
  spec.traits = traits_of(spec.algorithm);
  spec.scale_rewards = parse_advantage_norm(s.scale_rewards, "algorithm.scale_rewards");
  spec.kl_estimator = parse_kl_estimator(s.kl_estimator, "algorithm.kl_estimator");
  spec.loss_agg = parse_loss_agg(s.loss_agg, "algorithm.loss_agg");
  spec.kl_coef = s.kl_coef;
  spec.use_reference = spec.traits.needs_reference(s.kl_coef);
  spec.kl_in_reward = spec.traits.kl_in_reward || s.kl_in_reward;
  spec.policy_loss = parse_policy_loss_kind(s.policy_loss, "algorithm.policy_loss");
  const auto range = [&](double lo, double hi) {
    spec.loss_clip_low = static_cast<float>(lo);
    spec.loss_clip_high = static_cast<float>(hi);
  };
  switch (spec.policy_loss) {
    case PolicyLossKind::Clip: range(s.clip_low, s.clip_high); break;
    case PolicyLossKind::Gspo: range(s.gspo_clip_low, s.gspo_clip_high); break;
    case PolicyLossKind::Cispo: range(s.cispo_clip_low, s.cispo_clip_high); break;
  }
  if (s.old_logprobs != "rollout" && s.old_logprobs != "recompute")
    throw Error(fmt::format("algorithm.old_logprobs: unknown value \"{}\", expected one of \"rollout\", \"recompute\"",
                            s.old_logprobs));
  spec.recompute_old_logprobs = s.old_logprobs == "recompute";
  spec.correction.mode = parse_rollout_correction(s.rollout_correction, "algorithm.rollout_correction");
  spec.correction.level = parse_correction_level(s.rollout_correction_level, "algorithm.rollout_correction_level");
  spec.correction.cap = static_cast<float>(s.rollout_correction_cap);
  if (spec.correction.mode != RolloutCorrection::None && !spec.recompute_old_logprobs)
    throw Error(fmt::format("algorithm.rollout_correction = {} needs algorithm.old_logprobs = recompute",
                            s.rollout_correction));
  return spec;
}

}  // namespace rlcu::rl
