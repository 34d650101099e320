// The advantage driver (include/rlcu/advantage.h for the steps and their arithmetic).
#include "rlcu/advantage.h"

#include <algorithm>
#include <cmath>

#include "rlcu/config.h"
#include "rlcu/error.h"
#include "rlcu/rl_ops.h"

namespace rlcu::rl {

namespace {

void put(const Tensor& dst, const std::vector<float>& v, Context& ctx) {
  RLCU_CHECK(dst.numel() == static_cast<int64_t>(v.size()), "put: {} values into {}", v.size(), dst.shape_str());
  ctx.upload(dst, v.data());
}
std::vector<float> get(const Tensor& t, Context& ctx) {
  ctx.synchronize("advantages: read back");
  return to_host_f32(t);
}

double kl_estimate(double logp, double ref, KlEstimator k) {
  const double x = ref - logp;
  switch (k) {
    case KlEstimator::K1: return -x;
    case KlEstimator::K2: return 0.5 * x * x;
    case KlEstimator::K3: return std::exp(x) - x - 1.0;
  }
  return 0.0;
}

OwnedTensor vec(DType dt, Device dev, int64_t n) { return OwnedTensor::make(dt, dev, {std::max<int64_t>(n, 1)}); }

// Step 1: per-sequence KL sums and the per-token mean.
double reference_kl(RolloutBatch& b, KlEstimator k) {
  const int64_t N = b.num_seqs(), T = b.num_tokens();
  RLCU_CHECK(static_cast<int64_t>(b.ref_logprobs.size()) == T, "advantages: {} reference log-probs for {} tokens",
             b.ref_logprobs.size(), T);
  const std::vector<float>& old = b.old_logprobs();
  b.seq_kl.assign(static_cast<size_t>(N), 0.0);
  for (int64_t i = 0; i < N; ++i)
    for (int32_t t = b.offsets[static_cast<size_t>(i)]; t < b.offsets[static_cast<size_t>(i) + 1]; ++t)
      b.seq_kl[static_cast<size_t>(i)] += kl_estimate(old[static_cast<size_t>(t)], b.ref_logprobs[static_cast<size_t>(t)], k);
  double kl = 0;
  for (double v : b.seq_kl) kl += v;
  return kl / static_cast<double>(std::max<int64_t>(T, 1));
}

}  // namespace

AdvantageOptions advantage_options(const RunConfig& cfg, const AlgorithmSpec& spec) {
  const AlgorithmSection& al = cfg.algorithm;
  AdvantageOptions o;
  o.spec = spec;
  o.group_size = static_cast<int>(cfg.rollout.group_size);
  o.gamma = static_cast<float>(al.gamma);
  o.lambda = static_cast<float>(al.lam);
  o.whiten = al.whiten_advantages;
  o.dynamic_sampling = al.dynamic_sampling;
  o.mask_truncated = al.mask_truncated;
  o.max_new_tokens = cfg.rollout.max_new_tokens;
  o.max_seqs = cfg.train.prompts_per_step * cfg.rollout.group_size;
  o.max_tokens = o.max_seqs * cfg.rollout.max_new_tokens;
  return o;
}

AdvantageDriver::AdvantageDriver(const AdvantageOptions& opt, Device device) : opt_(opt) {
  RLCU_CHECK(opt.group_size >= 1 && opt.max_seqs >= 1 && opt.max_tokens >= 0, "advantages: group {}, capacity {} x {}",
             opt.group_size, opt.max_seqs, opt.max_tokens);
  const AlgorithmTraits& tr = opt.spec.traits;
  rewards_ = vec(DType::F32, device, opt.max_seqs);
  if (!tr.token_level_advantages) {
    seq_adv_ = vec(DType::F32, device, opt.max_seqs);
    return;
  }
  cu_ = vec(DType::I32, device, opt.max_seqs + 1);
  adv_ = vec(DType::F32, device, opt.max_tokens);
  if (opt.spec.use_reference) {
    old_ = vec(DType::F32, device, opt.max_tokens);
    ref_ = vec(DType::F32, device, opt.max_tokens);
  }
  if (tr.needs_critic) {
    values_ = vec(DType::F32, device, opt.max_tokens);
    returns_ = vec(DType::F32, device, opt.max_tokens);
  }
}

AdvantageStats AdvantageDriver::compute(RolloutBatch& b, Context& ctx) {
  const AlgorithmSpec& sp = opt_.spec;
  const int64_t N = b.num_seqs(), T = b.num_tokens();
  RLCU_CHECK(N <= opt_.max_seqs && T <= opt_.max_tokens, "advantages: {} sequences and {} tokens exceed the "
             "capacity of {} and {}", N, T, opt_.max_seqs, opt_.max_tokens);
  RLCU_CHECK(b.group_size == opt_.group_size && N % opt_.group_size == 0, "advantages: {} sequences in groups of {}, "
             "expected groups of {}", N, b.group_size, opt_.group_size);
  RLCU_CHECK(static_cast<int64_t>(b.rewards.size()) == N && static_cast<int64_t>(b.old_logprobs().size()) == T &&
                 static_cast<int64_t>(b.loss_mask.size()) == T,
             "advantages: {} rewards, {} old log-probs, {} mask entries for {} sequences of {} tokens",
             b.rewards.size(), b.old_logprobs().size(), b.loss_mask.size(), N, T);
  AdvantageStats st;
  b.seq_kl.clear();
  if (sp.use_reference) st.rollout_kl = reference_kl(b, sp.kl_estimator);

  std::vector<float> seq_rewards = b.rewards;
  if (!sp.traits.token_level_advantages && sp.reward_kl_coef() > 0)
    for (int64_t i = 0; i < N; ++i)
      seq_rewards[static_cast<size_t>(i)] -= static_cast<float>(sp.reward_kl_coef() * b.seq_kl[static_cast<size_t>(i)]);
  if (sp.traits.token_level_advantages)
    token_advantages(b, seq_rewards, ctx);
  else
    sequence_advantages(b, seq_rewards, ctx);
  masks_and_weights(b, st);
  return st;
}

void AdvantageDriver::sequence_advantages(RolloutBatch& b, const std::vector<float>& seq_rewards, Context& ctx) {
  const int64_t N = b.num_seqs(), T = b.num_tokens();
  const Tensor r = rewards_.t.slice_rows(0, N), a = seq_adv_.t.slice_rows(0, N);
  put(r, seq_rewards, ctx);
  switch (opt_.spec.algorithm) {
    case Algorithm::Rloo: rloo_advantages(a, r, opt_.group_size, ctx); break;
    case Algorithm::Grpo: {
      GroupAdvantageParams gp;
      gp.group_size = opt_.group_size;
      gp.norm = opt_.spec.scale_rewards;
      gp.eps = 1e-6f;
      group_advantages(a, r, gp, ctx);
      break;
    }
    default: RLCU_CHECK(false, "{} has no sequence-level advantages", name_of(opt_.spec.algorithm));
  }
  const std::vector<float> av = get(a, ctx);
  b.advantages.assign(static_cast<size_t>(T), 0.0f);
  for (int64_t i = 0; i < N; ++i)
    for (int32_t t = b.offsets[static_cast<size_t>(i)]; t < b.offsets[static_cast<size_t>(i) + 1]; ++t)
      b.advantages[static_cast<size_t>(t)] = av[static_cast<size_t>(i)];
  b.returns.clear();
}

void AdvantageDriver::token_advantages(RolloutBatch& b, const std::vector<float>& seq_rewards, Context& ctx) {
  const AlgorithmSpec& sp = opt_.spec;
  const int64_t N = b.num_seqs(), T = b.num_tokens();
  const Tensor r = rewards_.t.slice_rows(0, N);
  put(r, seq_rewards, ctx);
  b.advantages.clear();
  b.returns.clear();
  if (T == 0) return;
  const Tensor cu = cu_.t.slice_rows(0, N + 1), a = adv_.t.slice_rows(0, T);
  ctx.upload(cu, b.offsets.data());
  TokenRewardParams tr;
  tr.kl_coef = static_cast<float>(sp.reward_kl_coef());
  tr.kl = sp.kl_estimator;
  Tensor old, ref;
  if (tr.kl_coef > 0) {
    old = old_.t.slice_rows(0, T);
    ref = ref_.t.slice_rows(0, T);
    put(old, b.old_logprobs(), ctx);
    put(ref, b.ref_logprobs, ctx);
  }
  if (sp.algorithm == Algorithm::ReinforcePp) {
    ReturnsParams rp;
    rp.reward = tr;
    rp.gamma = opt_.gamma;
    rp.whiten = true;
    reinforce_pp_advantages(a, Tensor(), r, old, ref, cu, rp, ctx);
  } else {
    RLCU_CHECK(sp.algorithm == Algorithm::Ppo, "{} has no token-level advantages", name_of(sp.algorithm));
    const Tensor v = values_.t.slice_rows(0, T), ret = returns_.t.slice_rows(0, T);
    put(v, b.values, ctx);
    GaeParams gp;
    gp.reward = tr;
    gp.gamma = opt_.gamma;
    gp.lambda = opt_.lambda;
    gp.whiten = opt_.whiten;
    gae_advantages(a, ret, v, r, old, ref, cu, gp, ctx);
    b.returns = get(ret, ctx);
  }
  b.advantages = get(a, ctx);
}

void AdvantageDriver::masks_and_weights(RolloutBatch& b, AdvantageStats& st) const {
  const int64_t N = b.num_seqs(), T = b.num_tokens(), G = opt_.group_size;
  std::vector<float>& keep = b.seq_keep;
  keep.assign(static_cast<size_t>(N), 1.0f);
  const std::vector<uint8_t> degenerate = degenerate_groups(b.rewards, static_cast<int>(G));
  for (int64_t g = 0; g < N / G; ++g)
    if (degenerate[static_cast<size_t>(g)]) {
      ++st.zero_std_groups;
      if (opt_.dynamic_sampling)
        for (int64_t j = 0; j < G; ++j) keep[static_cast<size_t>(g * G + j)] = 0.0f;
    }
  const TruncationMask tm = truncation_mask(b.lengths, b.stopped, opt_.max_new_tokens, opt_.mask_truncated);
  for (int64_t i = 0; i < N; ++i) keep[static_cast<size_t>(i)] *= tm.keep[static_cast<size_t>(i)];
  for (int64_t i = 0; i < N; ++i) {
    if (keep[static_cast<size_t>(i)] == 0.0f) continue;
    ++st.kept_seqs;
    for (int32_t t = b.offsets[static_cast<size_t>(i)]; t < b.offsets[static_cast<size_t>(i) + 1]; ++t)
      st.kept_tokens += b.loss_mask[static_cast<size_t>(t)] != 0.0f ? 1 : 0;
  }
  b.loss_weights.assign(static_cast<size_t>(T), 0.0f);
  if (st.kept_tokens == 0) return;
  LossWeightParams lw;
  lw.mode = opt_.spec.loss_agg;
  lw.total_tokens = st.kept_tokens;
  lw.num_seqs = st.kept_seqs;
  lw.norm_len = opt_.max_new_tokens;
  const Tensor w(b.loss_weights.data(), DType::F32, Device::CPU, {T});
  const Tensor cu(b.offsets.data(), DType::I32, Device::CPU, {N + 1});
  const Tensor keep_t(keep.data(), DType::F32, Device::CPU, {N});
  loss_weights(w, cu, keep_t, lw, Context::cpu());
  for (int64_t t = 0; t < T; ++t) b.loss_weights[static_cast<size_t>(t)] *= b.loss_mask[static_cast<size_t>(t)];
}

}  // namespace rlcu::rl
