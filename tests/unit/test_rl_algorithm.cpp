// The rl module's algorithm layer on the CPU: the traits table and the parsing of the `algorithm` section
// (include/rlcu/algorithm.h), the rollout batch and its micro-batch packing (include/rlcu/rollout_batch.h), and the
// advantage driver (include/rlcu/advantage.h) on hand-made rollout batches, against values computed here in float64:
// GRPO and RLOO advantages broadcast to the tokens, the KL penalty in the sequence reward, REINFORCE++ returns with
// the token KL, PPO's GAE with value targets, the DAPO and truncation masks, loss weights and the loss mask.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "rlcu/advantage.h"
#include "rlcu/algorithm.h"
#include "rlcu/config.h"
#include "rlcu/error.h"
#include "rlcu/rollout_batch.h"

using namespace rlcu;
using namespace rlcu::rl;

namespace {

// ---- the traits table -----------------------------------------------------------------------------------------------

TEST(Algorithm, TraitsTable) {
  struct Row {
    const char* name;
    Algorithm a;
    bool token_level, kl_in_reward, critic;
  };
  const Row rows[] = {{"grpo", Algorithm::Grpo, false, false, false},
                      {"ppo", Algorithm::Ppo, true, true, true},
                      {"rloo", Algorithm::Rloo, false, false, false},
                      {"reinforce_pp", Algorithm::ReinforcePp, true, true, false}};
  for (const Row& r : rows) {
    SCOPED_TRACE(r.name);
    EXPECT_EQ(parse_algorithm(r.name, "algorithm.name"), r.a);
    EXPECT_STREQ(name_of(r.a), r.name);
    const AlgorithmTraits& t = traits_of(r.a);
    EXPECT_EQ(t.token_level_advantages, r.token_level);
    EXPECT_EQ(t.kl_in_reward, r.kl_in_reward);
    EXPECT_EQ(t.needs_critic, r.critic);
    EXPECT_FALSE(t.needs_reference(0.0));
    EXPECT_TRUE(t.needs_reference(0.05));
  }
}

TEST(Algorithm, UnknownNamesNameTheKey) {
  try {
    parse_algorithm("ppo2", "algorithm.name");
    FAIL() << "no error";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("algorithm.name"), std::string::npos) << m;
    EXPECT_NE(m.find("ppo2"), std::string::npos) << m;
    EXPECT_NE(m.find("\"reinforce_pp\""), std::string::npos) << m;
  }
  AlgorithmSection s;
  s.scale_rewards = "groups";
  try {
    parse_algorithm_spec(s);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("algorithm.scale_rewards"), std::string::npos) << e.what();
  }
}

TEST(Algorithm, SpecResolvesTheKlPlacement) {
  AlgorithmSection s;
  s.kl_coef = 0.1;
  s.kl_estimator = "k1";
  s.loss_agg = "seq-mean-token-sum";
  s.scale_rewards = "none";
  s.name = "grpo";
  AlgorithmSpec g = parse_algorithm_spec(s);
  EXPECT_EQ(g.kl_estimator, KlEstimator::K1);
  EXPECT_EQ(g.loss_agg, LossAgg::SeqMeanTokenSum);
  EXPECT_EQ(g.scale_rewards, AdvantageNorm::None);
  EXPECT_TRUE(g.use_reference);
  EXPECT_FALSE(g.kl_in_reward);
  EXPECT_EQ(g.loss_kl_coef(), 0.1f);
  EXPECT_EQ(g.reward_kl_coef(), 0.0);
  s.kl_in_reward = true;
  g = parse_algorithm_spec(s);
  EXPECT_EQ(g.loss_kl_coef(), 0.0f);
  EXPECT_EQ(g.reward_kl_coef(), 0.1);
  // REINFORCE++ and PPO always put the KL into the reward.
  s.kl_in_reward = false;
  for (const char* n : {"reinforce_pp", "ppo"}) {
    s.name = n;
    const AlgorithmSpec t = parse_algorithm_spec(s);
    EXPECT_TRUE(t.kl_in_reward) << n;
    EXPECT_EQ(t.loss_kl_coef(), 0.0f) << n;
    EXPECT_EQ(t.reward_kl_coef(), 0.1) << n;
  }
  // Without a KL coefficient there is no reference and no KL anywhere.
  s.kl_coef = 0.0;
  s.name = "rloo";
  const AlgorithmSpec r = parse_algorithm_spec(s);
  EXPECT_FALSE(r.use_reference);
  EXPECT_EQ(r.loss_kl_coef(), 0.0f);
  EXPECT_EQ(r.reward_kl_coef(), 0.0);
}

// ---- hand-made rollout batches ----------------------------------------------------------------------------------------

engine::Completion completion(int request, int sample, std::vector<int32_t> ids, std::vector<float> logprobs,
                              engine::FinishReason finish) {
  engine::Completion c;
  c.request = request;
  c.sample = sample;
  c.ids = std::move(ids);
  c.logprobs = std::move(logprobs);
  c.finish = finish;
  return c;
}

// Two prompts x two samples; completion lengths 2, 3, 1, 2 (T = 8); sequence 1 was cut at the length limit (3).
RolloutBatch small_batch() {
  std::vector<RolloutPrompt> prompts(2);
  prompts[0].ids = {5, 6};
  prompts[1].ids = {7, 8, 9};
  using F = engine::FinishReason;
  std::vector<engine::Completion> c;
  c.push_back(completion(0, 0, {1, 2}, {-0.5f, -1.0f}, F::Eos));
  c.push_back(completion(0, 1, {3, 4, 5}, {-0.25f, -2.0f, -0.75f}, F::Length));
  c.push_back(completion(1, 0, {6}, {-1.5f}, F::Stop));
  c.push_back(completion(1, 1, {7, 8}, {-0.125f, -0.5f}, F::Eos));
  return make_rollout_batch(std::move(prompts), std::move(c), 2);
}

TEST(RolloutBatch, LayoutFromCompletions) {
  const RolloutBatch b = small_batch();
  EXPECT_EQ(b.num_seqs(), 4);
  EXPECT_EQ(b.num_tokens(), 8);
  EXPECT_EQ(b.num_groups(), 2);
  EXPECT_EQ(b.offsets, (std::vector<int32_t>{0, 2, 5, 6, 8}));
  EXPECT_EQ(b.lengths, (std::vector<int32_t>{2, 3, 1, 2}));
  EXPECT_EQ(b.stopped, (std::vector<uint8_t>{1, 0, 1, 1}));
  EXPECT_EQ(b.prompt_of, (std::vector<int32_t>{0, 0, 1, 1}));
  EXPECT_EQ(b.sample_of, (std::vector<int32_t>{0, 1, 0, 1}));
  EXPECT_EQ(b.rollout_logprobs, (std::vector<float>{-0.5f, -1.0f, -0.25f, -2.0f, -0.75f, -1.5f, -0.125f, -0.5f}));
  EXPECT_EQ(b.loss_mask, std::vector<float>(8, 1.0f));
  EXPECT_EQ(&b.old_logprobs(), &b.rollout_logprobs);
  RolloutBatch r = small_batch();
  r.recomputed_logprobs.assign(8, -1.0f);
  EXPECT_EQ(&r.old_logprobs(), &r.recomputed_logprobs);
  // Completions that do not form P x G groups in order are an internal error.
  std::vector<engine::Completion> c;
  c.push_back(completion(0, 0, {1}, {-1.0f}, engine::FinishReason::Eos));
  EXPECT_THROW(make_rollout_batch(std::vector<RolloutPrompt>(1), std::move(c), 2), InternalError);
}

TEST(RolloutBatch, PacksWholeSequencesAndMapsRows) {
  const RolloutBatch b = small_batch();
  // Sequences have 4, 5, 4, 5 tokens: a budget of 9 holds two each.
  const std::vector<Micro> micros = pack_micro_batches(b, 9);
  ASSERT_EQ(micros.size(), 2u);
  EXPECT_EQ(micros[0].seqs, (std::vector<int32_t>{0, 1}));
  EXPECT_EQ(micros[1].seqs, (std::vector<int32_t>{2, 3}));
  const Micro& m = micros[0];
  EXPECT_EQ(m.batch.ids, (std::vector<int32_t>{5, 6, 1, 2, 5, 6, 3, 4, 5}));
  EXPECT_EQ(m.batch.targets, (std::vector<int32_t>{-1, 1, 2, -1, -1, 3, 4, 5, -1}));
  EXPECT_EQ(m.seq_of_row, (std::vector<int32_t>{-1, 0, 0, -1, -1, 1, 1, 1, -1}));
  EXPECT_EQ(m.tok_of_row, (std::vector<int32_t>{-1, 0, 1, -1, -1, 0, 1, 2, -1}));
  const std::vector<float> per_token = {10, 11, 20, 21, 22, 30, 40, 41};
  EXPECT_EQ(gather_rows(m, b.offsets, per_token), (std::vector<float>{0, 10, 11, 0, 0, 20, 21, 22, 0}));
  EXPECT_EQ(gather_rows(m, b.offsets, {}), std::vector<float>(9, 0.0f));
  std::vector<float> back(8, -1.0f);
  for (const Micro& mb : micros) scatter_rows(back, mb, b.offsets, gather_rows(mb, b.offsets, per_token));
  EXPECT_EQ(back, per_token);
  // A budget that holds everything gives one micro-batch.
  EXPECT_EQ(pack_micro_batches(b, 18).size(), 1u);
  // A data-parallel rank's share [1, 3): the batch's own sequence indices, rows mapped through its offsets.
  const std::vector<Micro> share = pack_micro_batches(b, 9, 1, 3);
  ASSERT_EQ(share.size(), 1u);
  EXPECT_EQ(share[0].seqs, (std::vector<int32_t>{1, 2}));
  EXPECT_EQ(share[0].seq_of_row, (std::vector<int32_t>{-1, 1, 1, 1, -1, -1, -1, 2, -1}));
  EXPECT_EQ(gather_rows(share[0], b.offsets, per_token), (std::vector<float>{0, 20, 21, 22, 0, 0, 0, 30, 0}));
  EXPECT_TRUE(pack_micro_batches(b, 9, 2, 2).empty());
  EXPECT_THROW(pack_micro_batches(b, 9, 3, 5), InternalError);
}

// ---- the advantage driver --------------------------------------------------------------------------------------------

AdvantageOptions options(const std::string& name, double kl_coef = 0.0) {
  AlgorithmSection s;
  s.name = name;
  s.kl_coef = kl_coef;
  s.kl_estimator = "k1";
  AdvantageOptions o;
  o.spec = parse_algorithm_spec(s);
  o.group_size = 2;
  o.max_new_tokens = 3;
  o.max_seqs = 4;
  o.max_tokens = 12;
  return o;
}

void expect_near(const std::vector<float>& got, const std::vector<double>& want, double tol, const char* what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], tol * (1 + std::fabs(want[i]))) << what << " " << i;
}

// Unbiased std of a few values.
double stdev(const std::vector<double>& x) {
  double m = 0;
  for (double v : x) m += v;
  m /= static_cast<double>(x.size());
  double q = 0;
  for (double v : x) q += (v - m) * (v - m);
  return std::sqrt(q / static_cast<double>(x.size() - 1));
}

std::vector<double> whiten(const std::vector<double>& x, double eps) {
  double m = 0;
  for (double v : x) m += v;
  m /= static_cast<double>(x.size());
  const double sd = stdev(x);
  std::vector<double> out;
  for (double v : x) out.push_back((v - m) / (sd + eps));
  return out;
}

TEST(AdvantageDriver, GrpoBroadcastsGroupAdvantagesAndWeightsTokens) {
  RolloutBatch b = small_batch();
  b.rewards = {1.0f, 0.0f, 0.5f, 0.5f};  // group 1 has equal rewards
  AdvantageDriver d(options("grpo"), Device::CPU);
  const AdvantageStats st = d.compute(b, Context::cpu());
  const double a0 = 0.5 / (stdev({1.0, 0.0}) + 1e-6);
  expect_near(b.advantages, {a0, a0, -a0, -a0, -a0, 0, 0, 0}, 1e-6, "advantages");
  EXPECT_TRUE(b.returns.empty());
  EXPECT_TRUE(b.seq_kl.empty());
  EXPECT_EQ(st.zero_std_groups, 1);
  EXPECT_EQ(st.kept_seqs, 4);
  EXPECT_EQ(st.kept_tokens, 8);
  EXPECT_EQ(st.rollout_kl, 0.0);
  EXPECT_EQ(b.seq_keep, std::vector<float>(4, 1.0f));
  expect_near(b.loss_weights, std::vector<double>(8, 1.0 / 8), 1e-7, "token-mean weights");
}

TEST(AdvantageDriver, MasksDropGroupsTruncationsAndMaskedTokens) {
  RolloutBatch b = small_batch();
  b.rewards = {1.0f, 0.0f, 0.5f, 0.5f};
  b.loss_mask[0] = 0.0f;  // the first token of sequence 0 is not the policy's
  AdvantageOptions o = options("grpo");
  o.dynamic_sampling = true;
  o.mask_truncated = true;
  AdvantageDriver d(o, Device::CPU);
  const AdvantageStats st = d.compute(b, Context::cpu());
  EXPECT_EQ(st.zero_std_groups, 1);
  // Group 1 is dropped (equal rewards), sequence 1 is truncated: only sequence 0 is left, with one trained token.
  EXPECT_EQ(b.seq_keep, (std::vector<float>{1, 0, 0, 0}));
  EXPECT_EQ(st.kept_seqs, 1);
  EXPECT_EQ(st.kept_tokens, 1);
  expect_near(b.loss_weights, {0, 1, 0, 0, 0, 0, 0, 0}, 1e-7, "weights");
}

TEST(AdvantageDriver, SeqMeanWeights) {
  RolloutBatch b = small_batch();
  b.rewards = {1.0f, 0.0f, 0.0f, 0.5f};
  AdvantageOptions o = options("grpo");
  AlgorithmSection s;
  s.loss_agg = "seq-mean-token-mean";
  o.spec = parse_algorithm_spec(s);
  AdvantageDriver d(o, Device::CPU);
  d.compute(b, Context::cpu());
  expect_near(b.loss_weights, {1.0 / 8, 1.0 / 8, 1.0 / 12, 1.0 / 12, 1.0 / 12, 1.0 / 4, 1.0 / 8, 1.0 / 8}, 1e-7,
              "seq-mean-token-mean weights");
}

TEST(AdvantageDriver, RlooWithTheKlInTheReward) {
  RolloutBatch b = small_batch();
  b.rewards = {1.0f, 0.0f, 0.25f, 0.75f};
  b.ref_logprobs = {-0.75f, -1.0f, -0.5f, -1.5f, -0.75f, -1.0f, -0.125f, -1.0f};
  AdvantageOptions o = options("rloo", 0.5);
  AlgorithmSection s;
  s.name = "rloo";
  s.kl_coef = 0.5;
  s.kl_estimator = "k1";
  s.kl_in_reward = true;
  o.spec = parse_algorithm_spec(s);
  AdvantageDriver d(o, Device::CPU);
  const AdvantageStats st = d.compute(b, Context::cpu());
  // k1 = logp - ref per token, summed per sequence.
  const std::vector<double> kl = {0.25 + 0.0, 0.25 - 0.5 + 0.0, -0.5, 0.0 + 0.5};
  ASSERT_EQ(b.seq_kl.size(), 4u);
  for (size_t i = 0; i < 4; ++i) EXPECT_NEAR(b.seq_kl[i], kl[i], 1e-12) << i;
  EXPECT_NEAR(st.rollout_kl, (kl[0] + kl[1] + kl[2] + kl[3]) / 8, 1e-12);
  std::vector<double> r(4);
  for (size_t i = 0; i < 4; ++i) r[i] = static_cast<float>(b.rewards[i] - static_cast<float>(0.5 * kl[i]));
  // RLOO: a_i = r_i - the other sample's reward (G = 2).
  const double a0 = r[0] - r[1], a1 = r[1] - r[0], a2 = r[2] - r[3], a3 = r[3] - r[2];
  expect_near(b.advantages, {a0, a0, a1, a1, a1, a2, a3, a3}, 1e-6, "advantages");
}

TEST(AdvantageDriver, ReinforcePpReturnsWithTokenKl) {
  RolloutBatch b = small_batch();
  b.rewards = {1.0f, 0.0f, 0.25f, 0.75f};
  b.ref_logprobs = {-0.75f, -1.0f, -0.5f, -1.5f, -0.75f, -1.0f, -0.125f, -1.0f};
  AdvantageOptions o = options("reinforce_pp", 0.5);
  o.gamma = 0.9f;
  AdvantageDriver d(o, Device::CPU);
  d.compute(b, Context::cpu());
  // r_t = -0.5 k1_t + (last token ? reward : 0); G_t = r_t + gamma G_{t+1}; then whitened over all 8 tokens.
  std::vector<double> g(8);
  for (size_t s = 0; s < 4; ++s) {
    double acc = 0;
    for (int t = b.offsets[s + 1] - 1; t >= b.offsets[s]; --t) {
      double rt = -0.5 * (static_cast<double>(b.rollout_logprobs[t]) - b.ref_logprobs[t]);
      if (t == b.offsets[s + 1] - 1) rt += b.rewards[s];
      acc = rt + 0.9 * acc;
      g[static_cast<size_t>(t)] = acc;
    }
  }
  expect_near(b.advantages, whiten(g, 1e-8), 1e-5, "advantages");
  EXPECT_TRUE(b.returns.empty());
}

TEST(AdvantageDriver, PpoGaeGivesValueTargets) {
  RolloutBatch b = small_batch();
  b.rewards = {1.0f, 0.0f, 0.25f, 0.75f};
  b.values = {0.5f, 0.25f, -0.25f, 0.0f, 0.125f, 0.5f, 0.75f, 0.25f};
  AdvantageOptions o = options("ppo");
  o.gamma = 0.9f;
  o.lambda = 0.8f;
  AdvantageDriver d(o, Device::CPU);
  d.compute(b, Context::cpu());
  std::vector<double> A(8), R(8);
  for (size_t s = 0; s < 4; ++s) {
    double next_v = 0, next_a = 0;
    for (int t = b.offsets[s + 1] - 1; t >= b.offsets[s]; --t) {
      const double rt = t == b.offsets[s + 1] - 1 ? b.rewards[s] : 0.0;
      const double delta = rt + static_cast<double>(0.9f) * next_v - b.values[t];
      next_a = delta + static_cast<double>(0.9f) * static_cast<double>(0.8f) * next_a;
      next_v = b.values[t];
      A[static_cast<size_t>(t)] = next_a;
      R[static_cast<size_t>(t)] = next_a + b.values[t];
    }
  }
  expect_near(b.returns, R, 1e-5, "returns");
  expect_near(b.advantages, whiten(A, 1e-8), 1e-5, "advantages");
  o.whiten = false;
  AdvantageDriver raw(o, Device::CPU);
  raw.compute(b, Context::cpu());
  expect_near(b.advantages, A, 1e-5, "unwhitened advantages");
}

TEST(AdvantageDriver, CapacityIsChecked) {
  RolloutBatch b = small_batch();
  b.rewards = {1.0f, 0.0f, 0.25f, 0.75f};
  AdvantageOptions o = options("grpo");
  o.max_tokens = 7;  // the batch has 8 completion tokens
  AdvantageDriver d(o, Device::CPU);
  EXPECT_THROW(d.compute(b, Context::cpu()), InternalError);
}

TEST(AdvantageDriver, OptionsFromTheConfig) {
  RunConfig cfg;
  cfg.train.prompts_per_step = 3;
  cfg.rollout.group_size = 4;
  cfg.rollout.max_new_tokens = 16;
  cfg.algorithm.gamma = 0.5;
  cfg.algorithm.lam = 0.25;
  cfg.algorithm.whiten_advantages = false;
  cfg.algorithm.dynamic_sampling = true;
  const AdvantageOptions o = advantage_options(cfg, parse_algorithm_spec(cfg.algorithm));
  EXPECT_EQ(o.max_seqs, 12);
  EXPECT_EQ(o.max_tokens, 12 * 16);
  EXPECT_EQ(o.group_size, 4);
  EXPECT_EQ(o.max_new_tokens, 16);
  EXPECT_EQ(o.gamma, 0.5f);
  EXPECT_EQ(o.lambda, 0.25f);
  EXPECT_FALSE(o.whiten);
  EXPECT_TRUE(o.dynamic_sampling);
  EXPECT_FALSE(o.mask_truncated);
}

}  // namespace
