// RL ops on the CPU (include/rlcu/rl_ops.h) against hand-computed values and independent float64 references written
// here: GRPO / Dr.GRPO / batch-std advantages, RLOO, REINFORCE++ returns, GAE (vs the direct sum over future TD
// errors), broadcast, every loss aggregation mode, the policy loss (each KL estimator; gradient vs central
// differences of a float64 loss; clip-low / clip-high / dual-clip branches hit on purpose; statistics), the value
// loss, and the host helpers (option parsing, DAPO filter, truncation mask).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <iterator>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "rlcu/error.h"
#include "rlcu/rl_ops.h"

using namespace rlcu;
using namespace rlcu::rl;

namespace {

Context& host() { return Context::cpu(); }
Tensor tf(std::vector<float>& v) { return Tensor(v.data(), DType::F32, Device::CPU, {static_cast<int64_t>(v.size())}); }
Tensor ti(std::vector<int32_t>& v) {
  return Tensor(v.data(), DType::I32, Device::CPU, {static_cast<int64_t>(v.size())});
}

std::vector<float> randv(size_t n, std::mt19937_64& g, float lo = -1.0f, float hi = 1.0f) {
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = d(g);
  return v;
}

void expect_near_vec(const std::vector<float>& got, const std::vector<double>& want, double tol, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i)
    EXPECT_NEAR(got[i], want[i], tol * (1.0 + std::fabs(want[i]))) << what << " at " << i;
}

// ---- independent float64 references ------------------------------------------------------------------------------
double ref_mean(const std::vector<double>& x) {
  double s = 0;
  for (double v : x) s += v;
  return x.empty() ? 0.0 : s / x.size();
}
double ref_std(const std::vector<double>& x) {  // unbiased, 0 for one value
  if (x.size() < 2) return 0.0;
  const double m = ref_mean(x);
  double q = 0;
  for (double v : x) q += (v - m) * (v - m);
  return std::sqrt(q / (x.size() - 1));
}
std::vector<double> ref_group(const std::vector<float>& r, int G, AdvantageNorm norm, double eps) {
  std::vector<double> all(r.begin(), r.end()), out(r.size());
  const double sb = ref_std(all);
  for (size_t g = 0; g < r.size() / G; ++g) {
    std::vector<double> grp(all.begin() + g * G, all.begin() + (g + 1) * G);
    const double m = ref_mean(grp), s = ref_std(grp);
    for (int j = 0; j < G; ++j) {
      const double d = grp[j] - m;
      out[g * G + j] = norm == AdvantageNorm::Group ? d / (s + eps) : norm == AdvantageNorm::Batch ? d / (sb + eps) : d;
    }
  }
  return out;
}
double ref_kl(KlEstimator k, double lp, double ref) {
  if (k == KlEstimator::K1) return lp - ref;
  if (k == KlEstimator::K2) return 0.5 * (lp - ref) * (lp - ref);
  return std::exp(ref - lp) - (ref - lp) - 1.0;
}
// Token rewards (kl penalty on every token, final reward on the last one).
std::vector<double> ref_token_rewards(const std::vector<int32_t>& cu, const std::vector<float>& R,
                                      const std::vector<float>& old_lp, const std::vector<float>& ref_lp,
                                      double kl_coef, KlEstimator k) {
  std::vector<double> r(cu.back(), 0.0);
  for (size_t s = 0; s + 1 < cu.size(); ++s)
    for (int t = cu[s]; t < cu[s + 1]; ++t) {
      if (kl_coef != 0) r[t] = -kl_coef * ref_kl(k, old_lp[t], ref_lp[t]);
      if (t == cu[s + 1] - 1) r[t] += R[s];
    }
  return r;
}
std::vector<double> ref_whiten(const std::vector<double>& x, double eps) {
  const double m = ref_mean(x), s = ref_std(x);
  std::vector<double> o(x.size());
  for (size_t i = 0; i < x.size(); ++i) o[i] = (x[i] - m) / (s + eps);
  return o;
}

std::vector<int32_t> random_cu(int n_seqs, int max_len, std::mt19937_64& g, bool allow_empty) {
  std::uniform_int_distribution<int> d(allow_empty ? 0 : 1, max_len);
  std::vector<int32_t> cu{0};
  for (int s = 0; s < n_seqs; ++s) cu.push_back(cu.back() + d(g));
  return cu;
}

}  // namespace

// ---- group advantages -------------------------------------------------------------------------------------------

TEST(RlAdvantage, GrpoHandValues) {
  std::vector<float> r{1, 0, 0, 1}, a(4);
  group_advantages(tf(a), tf(r), {4, AdvantageNorm::Group, 0.0f}, host());
  // mean 0.5, unbiased std sqrt(1/3): +-0.5 * sqrt(3)
  const double h = 0.5 * std::sqrt(3.0);
  expect_near_vec(a, {h, -h, -h, h}, 1e-6, "grpo G=4");
  group_advantages(tf(a), tf(r), {2, AdvantageNorm::Group, 0.0f}, host());
  const double q = 0.5 / std::sqrt(0.5);  // groups {1,0}, {0,1}: std sqrt(1/2)
  expect_near_vec(a, {q, -q, -q, q}, 1e-6, "grpo G=2");
  group_advantages(tf(a), tf(r), {2, AdvantageNorm::None, 0.0f}, host());
  expect_near_vec(a, {0.5, -0.5, -0.5, 0.5}, 1e-7, "dr.grpo");
  group_advantages(tf(a), tf(r), {2, AdvantageNorm::Batch, 0.0f}, host());
  expect_near_vec(a, {h, -h, -h, h}, 1e-6, "batch std");
  // eps enters as std + eps
  group_advantages(tf(a), tf(r), {4, AdvantageNorm::Group, 0.5f}, host());
  const double e = 0.5 / (std::sqrt(1.0 / 3) + 0.5);
  expect_near_vec(a, {e, -e, -e, e}, 1e-6, "eps");
}

TEST(RlAdvantage, GrpoSingleSampleGroupsAreZero) {
  std::vector<float> r{3, -1, 2}, a(3, 7.0f);
  for (AdvantageNorm m : {AdvantageNorm::Group, AdvantageNorm::Batch, AdvantageNorm::None}) {
    group_advantages(tf(a), tf(r), {1, m, 1e-6f}, host());
    expect_near_vec(a, {0, 0, 0}, 0, name_of(m));
  }
  // All-equal group: std 0 -> advantage 0, not NaN.
  std::vector<float> e{2, 2, 2, 2};
  group_advantages(tf(a = std::vector<float>(4)), tf(e), {4, AdvantageNorm::Group, 1e-6f}, host());
  expect_near_vec(a, {0, 0, 0, 0}, 0, "equal rewards");
}

TEST(RlAdvantage, GrpoRandomMatchesFloat64AndAliases) {
  std::mt19937_64 g(11);
  for (int G : {1, 2, 5, 16})
    for (AdvantageNorm m : {AdvantageNorm::Group, AdvantageNorm::Batch, AdvantageNorm::None}) {
      std::vector<float> r = randv(G * 7, g, -2, 3), a(r.size());
      group_advantages(tf(a), tf(r), {G, m, 1e-4f}, host());
      const auto want = ref_group(r, G, m, 1e-4);
      expect_near_vec(a, want, 1e-6, std::string("G=") + std::to_string(G) + " " + name_of(m));
      group_advantages(tf(r), tf(r), {G, m, 1e-4f}, host());  // in place
      expect_near_vec(r, want, 1e-6, "aliased");
    }
}

TEST(RlAdvantage, RlooHandAndRandom) {
  std::vector<float> r{1, 0, 0, 1}, a(4);
  rloo_advantages(tf(a), tf(r), 4, host());
  expect_near_vec(a, {2.0 / 3, -2.0 / 3, -2.0 / 3, 2.0 / 3}, 1e-7, "rloo G=4");
  rloo_advantages(tf(a), tf(r), 2, host());
  expect_near_vec(a, {1, -1, -1, 1}, 1e-7, "rloo G=2");
  std::mt19937_64 g(5);
  for (int G : {2, 3, 8}) {
    std::vector<float> x = randv(G * 5, g), y(x.size());
    std::vector<double> want(x.size());
    for (size_t i = 0; i < x.size(); ++i) {
      const size_t b = i / G * G;
      double others = 0;
      for (size_t j = b; j < b + G; ++j)
        if (j != i) others += x[j];
      want[i] = x[i] - others / (G - 1);
    }
    rloo_advantages(tf(y), tf(x), G, host());
    expect_near_vec(y, want, 1e-6, "rloo random");
  }
  EXPECT_THROW(rloo_advantages(tf(a), tf(r), 1, host()), Error);
  EXPECT_THROW(group_advantages(tf(a), tf(r), {3, AdvantageNorm::Group, 0.0f}, host()), Error);
}

// ---- REINFORCE++ and GAE --------------------------------------------------------------------------------------

TEST(RlReturns, ReinforcePPHandValues) {
  // One sequence of 3 tokens, reward 1, gamma 0.5, no KL: G = {0.25, 0.5, 1}.
  std::vector<int32_t> cu{0, 3};
  std::vector<float> R{1}, adv(3), ret(3);
  ReturnsParams p;
  p.gamma = 0.5f;
  p.whiten = false;
  reinforce_pp_advantages(tf(adv), tf(ret), tf(R), Tensor(), Tensor(), ti(cu), p, host());
  expect_near_vec(adv, {0.25, 0.5, 1.0}, 1e-7, "returns");
  expect_near_vec(ret, {0.25, 0.5, 1.0}, 1e-7, "returns out");
  // With k1 penalty 0.1 on kl = {1, 2, 3}: r = {-0.1, -0.2, -0.3 + 1}; gamma 1: G = {0.4, 0.5, 0.7}.
  std::vector<float> old_lp{1, 2, 3}, ref_lp{0, 0, 0};
  p.gamma = 1.0f;
  p.reward.kl_coef = 0.1f;
  p.reward.kl = KlEstimator::K1;
  reinforce_pp_advantages(tf(adv), Tensor(), tf(R), tf(old_lp), tf(ref_lp), ti(cu), p, host());
  expect_near_vec(adv, {0.4, 0.5, 0.7}, 1e-6, "kl returns");
  // Whitened: mean 8/15, unbiased std of {0.4, 0.5, 0.7}.
  p.whiten = true;
  p.eps = 0.0f;
  reinforce_pp_advantages(tf(adv), Tensor(), tf(R), tf(old_lp), tf(ref_lp), ti(cu), p, host());
  expect_near_vec(adv, ref_whiten({0.4, 0.5, 0.7}, 0.0), 1e-5, "whitened");
}

TEST(RlReturns, ReinforcePPRandomMatchesFloat64) {
  std::mt19937_64 g(21);
  for (KlEstimator k : {KlEstimator::K1, KlEstimator::K2, KlEstimator::K3})
    for (float gamma : {1.0f, 0.9f}) {
      std::vector<int32_t> cu = random_cu(9, 12, g, true);
      const int T = cu.back();
      std::vector<float> R = randv(9, g), lp = randv(T, g, -3, 0), rp = randv(T, g, -3, 0), adv(T), ret(T);
      ReturnsParams p;
      p.gamma = gamma;
      p.reward.kl_coef = 0.05f;
      p.reward.kl = k;
      p.eps = 1e-8f;
      reinforce_pp_advantages(tf(adv), tf(ret), tf(R), tf(lp), tf(rp), ti(cu), p, host());
      const auto r = ref_token_rewards(cu, R, lp, rp, 0.05, k);
      std::vector<double> G(T);
      for (size_t s = 0; s + 1 < cu.size(); ++s)  // direct sum, not a recurrence
        for (int t = cu[s]; t < cu[s + 1]; ++t) {
          double acc = 0;
          for (int u = t; u < cu[s + 1]; ++u) acc += std::pow(gamma, u - t) * r[u];
          G[t] = acc;
        }
      expect_near_vec(ret, G, 1e-5, "returns");
      expect_near_vec(adv, ref_whiten(G, 1e-8), 1e-5, "whitened returns");
    }
}

TEST(RlReturns, GaeMatchesDirectSum) {
  std::mt19937_64 g(31);
  for (bool whiten : {false, true})
    for (float lam : {0.0f, 0.95f, 1.0f}) {
      std::vector<int32_t> cu = random_cu(6, 15, g, true);
      const int T = cu.back();
      std::vector<float> R = randv(6, g), lp = randv(T, g, -3, 0), rp = randv(T, g, -3, 0), V = randv(T, g);
      std::vector<float> adv(T), ret(T);
      GaeParams p;
      p.gamma = 0.97f;
      p.lambda = lam;
      p.whiten = whiten;
      p.eps = 1e-8f;
      p.reward.kl_coef = 0.02f;
      p.reward.kl = KlEstimator::K3;
      gae_advantages(tf(adv), tf(ret), tf(V), tf(R), tf(lp), tf(rp), ti(cu), p, host());
      const auto r = ref_token_rewards(cu, R, lp, rp, 0.02, KlEstimator::K3);
      std::vector<double> A(T), RET(T);
      const double gamma = p.gamma, gl = static_cast<double>(p.gamma) * static_cast<double>(lam);
      for (size_t s = 0; s + 1 < cu.size(); ++s) {
        const int b = cu[s], e = cu[s + 1];
        auto delta = [&](int t) { return r[t] + gamma * (t + 1 < e ? V[t + 1] : 0.0) - V[t]; };
        for (int t = b; t < e; ++t) {
          double acc = 0;
          for (int u = t; u < e; ++u) acc += std::pow(gl, u - t) * delta(u);
          A[t] = acc;
          RET[t] = acc + V[t];
        }
      }
      expect_near_vec(ret, RET, 1e-5, "gae returns");
      expect_near_vec(adv, whiten ? ref_whiten(A, 1e-8) : A, 1e-5, "gae advantages");
    }
}

TEST(RlReturns, GaeWithLambdaOneAndZeroValuesIsReinforceReturns) {
  std::vector<int32_t> cu{0, 4, 4, 9};
  std::vector<float> R{1.5f, -2.0f, 0.25f}, V(9, 0.0f), a(9), ret(9), a2(9);
  GaeParams gp;
  gp.gamma = 0.8f;
  gp.lambda = 1.0f;
  gp.whiten = false;
  gae_advantages(tf(a), tf(ret), tf(V), tf(R), Tensor(), Tensor(), ti(cu), gp, host());
  ReturnsParams rp;
  rp.gamma = 0.8f;
  rp.whiten = false;
  reinforce_pp_advantages(tf(a2), Tensor(), tf(R), Tensor(), Tensor(), ti(cu), rp, host());
  for (int t = 0; t < 9; ++t) EXPECT_FLOAT_EQ(a[t], a2[t]) << t;
  EXPECT_FLOAT_EQ(a[3], 1.5f);
  EXPECT_FLOAT_EQ(a[8], 0.25f);
  EXPECT_NEAR(a[4], 0.25 * std::pow(0.8, 4), 1e-7);
}

TEST(RlReturns, BroadcastToTokens) {
  std::vector<int32_t> cu{0, 2, 2, 5};
  std::vector<float> sv{1.5f, 9.0f, -2.0f}, out(5, 0.0f);
  broadcast_to_tokens(tf(out), tf(sv), ti(cu), host());
  expect_near_vec(out, {1.5, 1.5, -2, -2, -2}, 0, "broadcast");
  std::vector<int32_t> bad{0, 3, 2};
  EXPECT_THROW(broadcast_to_tokens(tf(out), tf(sv = {1, 2}), ti(bad), host()), Error);
}

// ---- loss weights ------------------------------------------------------------------------------------------------

TEST(RlLossWeights, EachModeHandValuesAndWholeBatchSums) {
  // A rollout batch of 3 completions with 2, 3 and 5 tokens, split in two micro-batches: {0, 1} and {2}.
  std::vector<int32_t> mb1{0, 2, 5}, mb2{0, 5};
  const int64_t total = 10, nseq = 3, norm_len = 8;
  struct Case {
    LossAgg mode;
    std::vector<double> w1, w2;  // per token
    double sum;                  // sum over the whole batch
  };
  const Case cases[] = {
      {LossAgg::TokenMean, std::vector<double>(5, 0.1), std::vector<double>(5, 0.1), 1.0},
      {LossAgg::SeqMeanTokenMean, {1.0 / 6, 1.0 / 6, 1.0 / 9, 1.0 / 9, 1.0 / 9}, std::vector<double>(5, 1.0 / 15), 1.0},
      {LossAgg::SeqMeanTokenSum, std::vector<double>(5, 1.0 / 3), std::vector<double>(5, 1.0 / 3), 10.0 / 3},
      {LossAgg::SeqMeanTokenSumNorm, std::vector<double>(5, 1.0 / 24), std::vector<double>(5, 1.0 / 24), 10.0 / 24},
  };
  for (const Case& c : cases) {
    LossWeightParams p{c.mode, total, nseq, norm_len};
    std::vector<float> w1(5), w2(5);
    loss_weights(tf(w1), ti(mb1), Tensor(), p, host());
    loss_weights(tf(w2), ti(mb2), Tensor(), p, host());
    expect_near_vec(w1, c.w1, 1e-7, name_of(c.mode));
    expect_near_vec(w2, c.w2, 1e-7, name_of(c.mode));
    double s = 0;
    for (float x : w1) s += x;
    for (float x : w2) s += x;
    EXPECT_NEAR(s, c.sum, 1e-6) << name_of(c.mode);
  }
  // seq_scale masks a completion.
  std::vector<float> scale{1.0f, 0.0f}, w(5);
  loss_weights(tf(w), ti(mb1), tf(scale), {LossAgg::SeqMeanTokenMean, total, 2, 0}, host());
  expect_near_vec(w, {0.25, 0.25, 0, 0, 0}, 1e-7, "seq_scale");
  EXPECT_THROW(loss_weights(tf(w), ti(mb1), Tensor(), {LossAgg::TokenMean, 0, 3, 0}, host()), Error);
  EXPECT_THROW(loss_weights(tf(w), ti(mb1), Tensor(), {LossAgg::SeqMeanTokenSumNorm, 10, 3, 0}, host()), Error);
}

// ---- policy loss -------------------------------------------------------------------------------------------------

namespace {

struct PolicyInputs {
  std::vector<float> logp, old_logp, ref_logp, adv, w, entropy;
};

// Per-token loss in float64, written from the definition (max of the two surrogates, then min with -c A).
double ref_token_loss(double lp, double old, double ref, double A, double ent, const PolicyLossParams& p) {
  const double r = std::exp(lp - old);
  const double clipped = std::min(std::max(r, 1.0 - p.clip_low), 1.0 + static_cast<double>(p.clip_high));
  double pg = std::max(-A * r, -A * clipped);
  if (p.dual_clip > 0 && A < 0) pg = std::min(pg, -static_cast<double>(p.dual_clip) * A);
  const double kl = p.kl_coef != 0 ? ref_kl(p.kl, lp, ref) : 0.0;
  return pg + p.kl_coef * kl - p.ent_coef * ent;
}
double ref_loss(const PolicyInputs& in, const std::vector<double>& lp, const PolicyLossParams& p) {
  double L = 0;
  for (size_t t = 0; t < lp.size(); ++t)
    L += in.w[t] * ref_token_loss(lp[t], in.old_logp[t], in.ref_logp.empty() ? 0.0 : in.ref_logp[t], in.adv[t],
                                  in.entropy.empty() ? 0.0 : in.entropy[t], p);
  return L;
}

struct PolicyOut {
  std::vector<float> dlogp, dentropy, stats;
};
PolicyOut run_policy(PolicyInputs& in, const PolicyLossParams& p) {
  const size_t T = in.logp.size();
  PolicyOut o{std::vector<float>(T, 123.0f), std::vector<float>(T, 123.0f), std::vector<float>(kPolicyStats, 0.0f)};
  policy_loss(tf(o.dlogp), tf(o.dentropy), tf(o.stats), tf(in.logp), tf(in.old_logp),
              in.ref_logp.empty() ? Tensor() : tf(in.ref_logp), tf(in.adv), tf(in.w),
              in.entropy.empty() ? Tensor() : tf(in.entropy), Tensor(), Tensor(), p, host());
  return o;
}

}  // namespace

TEST(RlPolicyLoss, ClipBranchesHitOnPurpose) {
  PolicyLossParams p;
  p.clip_low = 0.2f;
  p.clip_high = 0.28f;
  p.dual_clip = 3.0f;
  // ratio r = exp(logp - old) with old = 0: choose logp = log(r).
  struct Tok {
    double r, A;
    double pg, grad;  // expected pg and d pg / d logp (= d pg / d r * r)
    int low, high, dual;
  };
  const Tok toks[] = {
      {1.5, 2.0, -2.0 * 1.28, 0.0, 0, 1, 0},   // A > 0, r > 1 + clip_high: clipped high
      {0.5, 2.0, -1.0, -1.0, 0, 0, 0},         // A > 0, r < 1 - clip_low: unclipped (pessimistic)
      {0.5, -2.0, 2.0 * 0.8, 0.0, 1, 0, 0},    // A < 0, r < 1 - clip_low: clipped low
      {1.5, -2.0, 3.0, 3.0, 0, 0, 0},          // A < 0, r > 1 + clip_high: unclipped, grad -A r
      {4.0, -2.0, 6.0, 0.0, 0, 0, 1},          // A < 0, r > c = 3: dual-clipped at -c A
      {1.1, 1.0, -1.1, -1.1, 0, 0, 0},         // inside the trust region
      {1.1, 0.0, 0.0, 0.0, 0, 0, 0},           // zero advantage
  };
  PolicyInputs in;
  for (const Tok& k : toks) {
    in.logp.push_back(static_cast<float>(std::log(k.r)));
    in.old_logp.push_back(0.0f);
    in.adv.push_back(static_cast<float>(k.A));
    in.w.push_back(0.5f);
  }
  PolicyOut o = run_policy(in, p);
  double loss = 0, low = 0, high = 0, dual = 0, dev = 0;
  for (size_t t = 0; t < std::size(toks); ++t) {
    const double r = std::exp(static_cast<double>(in.logp[t]));  // the ratio the op sees after float rounding
    const double scale = r / toks[t].r;
    EXPECT_NEAR(o.dlogp[t], 0.5 * toks[t].grad * scale, 1e-6) << "token " << t;
    EXPECT_EQ(o.dentropy[t], -0.0f) << "token " << t;  // ent_coef 0
    loss += 0.5 * toks[t].pg * (toks[t].grad != 0.0 ? scale : 1.0);
    low += toks[t].low;
    high += toks[t].high;
    dual += toks[t].dual;
    dev += std::fabs(r - 1.0);
  }
  EXPECT_NEAR(o.stats[kPsLoss], loss, 1e-5);
  EXPECT_NEAR(o.stats[kPsPg], loss, 1e-5);
  EXPECT_EQ(o.stats[kPsClipLow], low);
  EXPECT_EQ(o.stats[kPsClipHigh], high);
  EXPECT_EQ(o.stats[kPsDualClip], dual);
  EXPECT_NEAR(o.stats[kPsAbsRatioDev], dev, 1e-5);
  EXPECT_EQ(o.stats[kPsTokens], 7.0f);
  EXPECT_EQ(o.stats[kPsKl], 0.0f);
  // Without dual clip the r = 4, A < 0 token is unclipped: pg = 8, gradient -A r = 8.
  p.dual_clip = 0.0f;
  o = run_policy(in, p);
  EXPECT_NEAR(o.dlogp[4], 0.5 * 8.0, 1e-5);
  EXPECT_EQ(o.stats[kPsDualClip], 0.0f);
}

TEST(RlPolicyLoss, GradientMatchesFiniteDifferencesForEachKlEstimator) {
  std::mt19937_64 g(41);
  for (KlEstimator k : {KlEstimator::K1, KlEstimator::K2, KlEstimator::K3})
    for (float dual : {0.0f, 2.0f}) {
      const int T = 200;
      PolicyInputs in;
      in.old_logp = randv(T, g, -4, -0.1f);
      in.logp.resize(T);
      std::vector<float> d = randv(T, g, -0.6f, 0.6f);
      for (int t = 0; t < T; ++t) in.logp[t] = in.old_logp[t] + d[t];
      in.ref_logp = randv(T, g, -4, -0.1f);
      in.adv = randv(T, g, -2, 2);
      in.w = randv(T, g, 0, 0.01f);
      in.entropy = randv(T, g, 0, 3);
      PolicyLossParams p;
      p.clip_low = 0.2f;
      p.clip_high = 0.28f;
      p.dual_clip = dual;
      p.kl_coef = 0.3f;
      p.kl = k;
      p.ent_coef = 0.01f;
      PolicyOut o = run_policy(in, p);
      std::vector<double> lp(in.logp.begin(), in.logp.end());
      EXPECT_NEAR(o.stats[kPsLoss], ref_loss(in, lp, p), 1e-6) << name_of(k);
      double kl_sum = 0, wkl = 0, ent_sum = 0;
      for (int t = 0; t < T; ++t) {
        const double kl = ref_kl(k, in.logp[t], in.ref_logp[t]);
        kl_sum += kl;
        wkl += in.w[t] * kl;
        ent_sum += in.entropy[t];
      }
      EXPECT_NEAR(o.stats[kPsKlSum], kl_sum, 1e-4 * (1 + std::fabs(kl_sum)));
      EXPECT_NEAR(o.stats[kPsKl], wkl, 1e-6);
      EXPECT_NEAR(o.stats[kPsEntropySum], ent_sum, 1e-3);
      const double h = 1e-6;
      int checked = 0;
      for (int t = 0; t < T; ++t) {
        // Skip tokens within h of a kink (clip bounds, dual bound): central differences are meaningless there.
        const double r = std::exp(lp[t] - in.old_logp[t]);
        if (std::fabs(r - 0.8) < 1e-4 || std::fabs(r - 1.28) < 1e-4 || (dual > 0 && std::fabs(r - dual) < 1e-4))
          continue;
        std::vector<double> up = lp, dn = lp;
        up[t] += h;
        dn[t] -= h;
        const double fd = (ref_loss(in, up, p) - ref_loss(in, dn, p)) / (2 * h);
        EXPECT_NEAR(o.dlogp[t], fd, 1e-6 + 1e-4 * std::fabs(fd)) << name_of(k) << " token " << t;
        EXPECT_FLOAT_EQ(o.dentropy[t], static_cast<float>(-in.w[t] * 0.01)) << t;
        ++checked;
      }
      EXPECT_GT(checked, T / 2);
    }
}

TEST(RlPolicyLoss, KlEstimatorValuesAndMaskedTokens) {
  // One token, A = 0 so only the KL term remains: logp = -1, ref = -2, x = ref - logp = -1.
  PolicyInputs in{{-1.0f, -1.0f}, {-1.0f, -1.0f}, {-2.0f, -2.0f}, {0.0f, 0.0f}, {1.0f, 0.0f}, {}};
  const double x = -1.0;
  struct K {
    KlEstimator k;
    double kl, dkl;
  };
  for (const K& c : {K{KlEstimator::K1, 1.0, 1.0}, K{KlEstimator::K2, 0.5, 1.0},
                     K{KlEstimator::K3, std::exp(x) - x - 1, 1 - std::exp(x)}}) {
    PolicyLossParams p;
    p.kl_coef = 2.0f;
    p.kl = c.k;
    PolicyOut o = run_policy(in, p);
    EXPECT_NEAR(o.dlogp[0], 2.0 * c.dkl, 1e-6) << name_of(c.k);
    EXPECT_EQ(o.dlogp[1], 0.0f) << "w = 0 gets no gradient";
    EXPECT_NEAR(o.stats[kPsLoss], 2.0 * c.kl, 1e-6);
    EXPECT_NEAR(o.stats[kPsKl], c.kl, 1e-6);
    EXPECT_NEAR(o.stats[kPsKlSum], c.kl, 1e-6);  // the w = 0 token is not counted
    EXPECT_EQ(o.stats[kPsTokens], 1.0f);
  }
}

TEST(RlPolicyLoss, MaskedTokensContributeNothingEvenWhenNonFinite) {
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  // Tokens 1 and 3 are masked (w = 0) and hold non-finite inputs.
  PolicyInputs in{{-1.0f, nan, -0.5f, inf}, {-1.1f, 0.0f, -0.4f, 0.0f}, {-1.2f, inf, -0.3f, nan},
                  {1.0f, nan, -0.7f, 2.0f}, {0.3f, 0.0f, 0.2f, 0.0f}, {1.0f, nan, 2.0f, inf}};
  PolicyLossParams p;
  p.kl_coef = 0.1f;
  p.ent_coef = 0.01f;
  p.dual_clip = 3.0f;
  PolicyOut o = run_policy(in, p);
  PolicyInputs kept{{-1.0f, -0.5f}, {-1.1f, -0.4f}, {-1.2f, -0.3f}, {1.0f, -0.7f}, {0.3f, 0.2f}, {1.0f, 2.0f}};
  PolicyOut ok = run_policy(kept, p);
  EXPECT_EQ(o.dlogp[1], 0.0f);
  EXPECT_EQ(o.dlogp[3], 0.0f);
  EXPECT_EQ(o.dentropy[1], 0.0f);
  EXPECT_EQ(o.dlogp[0], ok.dlogp[0]);
  EXPECT_EQ(o.dlogp[2], ok.dlogp[1]);
  for (int k = 0; k < kPolicyStats; ++k) EXPECT_EQ(o.stats[k], ok.stats[k]) << k;
  EXPECT_EQ(o.stats[kPsTokens], 2.0f);
  std::vector<float> v{0.5f, nan}, ov{0.4f, inf}, R{1.0f, nan}, w{1.0f, 0.0f}, dv(2), st(kValueStats, 0.0f);
  value_loss(tf(dv), tf(st), tf(v), tf(ov), tf(R), tf(w), {0.2f}, host());
  EXPECT_NEAR(dv[0], -0.5, 1e-6);
  EXPECT_EQ(dv[1], 0.0f);
  EXPECT_NEAR(st[kVsLoss], 0.125, 1e-6);
  EXPECT_EQ(st[kVsTokens], 1.0f);
}

TEST(RlPolicyLoss, StatsAccumulateAndArgumentsAreChecked) {
  PolicyInputs in{{-1.0f}, {-1.1f}, {}, {1.0f}, {0.25f}, {}};
  PolicyLossParams p;
  std::vector<float> dl(1), st(kPolicyStats, 0.0f);
  policy_loss(tf(dl), Tensor(), tf(st), tf(in.logp), tf(in.old_logp), Tensor(), tf(in.adv), tf(in.w), Tensor(), Tensor(),
              Tensor(), p, host());
  const std::vector<float> once = st;
  policy_loss(tf(dl), Tensor(), tf(st), tf(in.logp), tf(in.old_logp), Tensor(), tf(in.adv), tf(in.w), Tensor(), Tensor(),
              Tensor(), p, host());
  for (int k = 0; k < kPolicyStats; ++k) EXPECT_FLOAT_EQ(st[k], 2 * once[k]) << k;
  const double r = std::exp(-1.0 - static_cast<double>(-1.1f));  // about e^0.1 < 1.2: unclipped
  EXPECT_NEAR(once[kPsLoss], -0.25 * r, 1e-6);
  EXPECT_NEAR(dl[0], -0.25 * r, 1e-6);
  // old_logp -1.3: r = e^0.3 > 1.2 with A > 0 is clipped high: pg = -0.25 * 1.2, no gradient.
  std::vector<float> old2{-1.3f}, st2(kPolicyStats, 0.0f);
  policy_loss(tf(dl), Tensor(), tf(st2), tf(in.logp), tf(old2), Tensor(), tf(in.adv), tf(in.w), Tensor(), Tensor(), Tensor(), p,
              host());
  EXPECT_NEAR(st2[kPsLoss], -0.25 * 1.2, 1e-6);
  EXPECT_EQ(dl[0], 0.0f);
  EXPECT_EQ(st2[kPsClipHigh], 1.0f);
  p.kl_coef = 0.1f;  // KL without ref_logp
  EXPECT_THROW(policy_loss(tf(dl), Tensor(), tf(st), tf(in.logp), tf(in.old_logp), Tensor(), tf(in.adv), tf(in.w),
                           Tensor(), Tensor(), Tensor(), p, host()),
               Error);
  p.kl_coef = 0.0f;
  p.dual_clip = 0.5f;
  EXPECT_THROW(policy_loss(tf(dl), Tensor(), tf(st), tf(in.logp), tf(in.old_logp), Tensor(), tf(in.adv), tf(in.w),
                           Tensor(), Tensor(), Tensor(), p, host()),
               Error);
}

// ---- GSPO, CISPO, importance-sampling weights ---------------------------------------------------------------------

namespace {

// GSPO's sequence objective in float64, straight from the paper: s_i = exp(mean over i's active tokens of
// (logp - old)), loss = sum_i sum_{t of i} w_t max(-A_t s_i, -A_t clip(s_i, lo, hi)) (+ KL per token).
double ref_gspo_loss(const std::vector<double>& lp, const std::vector<float>& old, const std::vector<float>& adv,
                     const std::vector<float>& w, const std::vector<int32_t>& cu, const PolicyLossParams& p) {
  double L = 0;
  for (size_t i = 0; i + 1 < cu.size(); ++i) {
    double sum = 0, n = 0;
    for (int32_t t = cu[i]; t < cu[i + 1]; ++t)
      if (w[t] != 0) sum += lp[t] - old[t], n += 1;
    const double si = n > 0 ? std::exp(sum / n) : 1.0;
    const double sc = std::min(std::max(si, 1.0 - p.clip_low), 1.0 + static_cast<double>(p.clip_high));
    for (int32_t t = cu[i]; t < cu[i + 1]; ++t)
      if (w[t] != 0) L += w[t] * std::max(-adv[t] * si, -adv[t] * sc);
  }
  return L;
}

}  // namespace

TEST(RlPolicyLoss, GspoMatchesTheSequenceObjectiveAndItsGradient) {
  // Four completions in one packed micro-batch; each has prompt rows (w = 0) and completion rows. Advantages and
  // weights are constant per sequence (as GRPO's and every loss aggregation's are), so the GSPO-token gradient is
  // exactly the gradient of the sequence objective.
  std::mt19937_64 g(7);
  std::vector<int32_t> cu{0, 9, 15, 27, 40};
  const size_t T = 40;
  PolicyInputs in;
  in.old_logp = randv(T, g, -4, -0.1f);
  in.logp.resize(T);
  in.adv.resize(T);
  in.w.resize(T);
  const float shift[] = {2e-4f, -1e-3f, 5e-3f, 1e-4f};   // mean log-ratio per sequence: inside, low, high, inside
  const float A[] = {1.0f, -1.5f, 2.0f, -0.5f};
  const int prompt_rows[] = {3, 2, 4, 5};
  std::vector<float> noise = randv(T, g, -1e-4f, 1e-4f);
  for (size_t i = 0; i < 4; ++i)
    for (int32_t t = cu[i]; t < cu[i + 1]; ++t) {
      const bool active = t - cu[i] >= prompt_rows[i];
      in.logp[t] = in.old_logp[t] + shift[i] + noise[t];
      in.adv[t] = A[i];
      in.w[t] = active ? 0.01f * static_cast<float>(i + 1) : 0.0f;
      if (!active) in.logp[t] = std::numeric_limits<float>::quiet_NaN();  // prompt rows may hold anything
    }
  PolicyLossParams p;
  p.kind = PolicyLossKind::Gspo;
  p.clip_low = 3e-4f;
  p.clip_high = 4e-4f;
  std::vector<float> slr(T, 99.0f), dl(T), st(kPolicyStats, 0.0f);
  sequence_log_ratio(tf(slr), tf(in.logp), tf(in.old_logp), tf(in.w), ti(cu), host());
  for (size_t i = 0; i < 4; ++i) {
    double sum = 0, n = 0;
    for (int32_t t = cu[i]; t < cu[i + 1]; ++t)
      if (in.w[t] != 0) sum += static_cast<double>(in.logp[t]) - in.old_logp[t], n += 1;
    for (int32_t t = cu[i]; t < cu[i + 1]; ++t) EXPECT_NEAR(slr[t], sum / n, 1e-9) << "row " << t;
  }
  policy_loss(tf(dl), Tensor(), tf(st), tf(in.logp), tf(in.old_logp), Tensor(), tf(in.adv), tf(in.w), Tensor(),
              Tensor(), tf(slr), p, host());
  std::vector<double> lp(in.logp.begin(), in.logp.end());
  EXPECT_NEAR(st[kPsLoss], ref_gspo_loss(lp, in.old_logp, in.adv, in.w, cu, p), 1e-7);
  // Sequence 1 (A < 0, ratio below 1 - 3e-4) is clipped low, sequence 2 (A > 0, above 1 + 4e-4) clipped high.
  EXPECT_EQ(st[kPsClipLow], static_cast<float>(15 - 9 - 2));
  EXPECT_EQ(st[kPsClipHigh], static_cast<float>(27 - 15 - 4));
  EXPECT_EQ(st[kPsTokens], static_cast<float>(40 - 14));
  const double h = 1e-7;
  for (size_t t = 0; t < T; ++t) {
    if (in.w[t] == 0) {
      EXPECT_EQ(dl[t], 0.0f) << "prompt row " << t;
      continue;
    }
    std::vector<double> up = lp, dn = lp;
    up[t] += h;
    dn[t] -= h;
    const double fd = (ref_gspo_loss(up, in.old_logp, in.adv, in.w, cu, p) -
                       ref_gspo_loss(dn, in.old_logp, in.adv, in.w, cu, p)) / (2 * h);
    EXPECT_NEAR(dl[t], fd, 1e-6 + 1e-4 * std::fabs(fd)) << "row " << t;
  }
  EXPECT_EQ(dl[12], 0.0f);  // a clipped sequence's tokens get no gradient
  // GSPO needs the sequence log-ratio.
  EXPECT_THROW(policy_loss(tf(dl), Tensor(), tf(st), tf(in.logp), tf(in.old_logp), Tensor(), tf(in.adv), tf(in.w),
                           Tensor(), Tensor(), Tensor(), p, host()),
               Error);
  std::vector<int32_t> short_cu{0, 9, 15};
  EXPECT_THROW(sequence_log_ratio(tf(slr), tf(in.logp), tf(in.old_logp), tf(in.w), ti(short_cu), host()), Error);
}

TEST(RlPolicyLoss, CispoClipsTheDetachedWeightAndKeepsTheGradient) {
  // ratio r = exp(logp - old) with old = log(r) offsets; lo = 1 - 1 = 0 (no lower bound), hi = 1 + 0.28.
  PolicyLossParams p;
  p.kind = PolicyLossKind::Cispo;
  p.clip_low = 1.0f;
  p.clip_high = 0.28f;
  p.kl_coef = 0.2f;
  p.kl = KlEstimator::K3;
  struct Tok {
    double r, A, lp;
    bool high;
  };
  const Tok toks[] = {{1.5, 2.0, -0.7, true},   {1.5, -2.0, -1.2, true},  {0.3, 1.0, -2.0, false},
                      {0.3, -1.0, -0.2, false}, {1.1, 0.5, -3.0, false}};
  PolicyInputs in;
  for (const Tok& k : toks) {
    in.logp.push_back(static_cast<float>(k.lp));
    in.old_logp.push_back(static_cast<float>(k.lp - std::log(k.r)));
    in.adv.push_back(static_cast<float>(k.A));
    in.w.push_back(0.25f);
    in.ref_logp.push_back(static_cast<float>(k.lp - 0.1));
  }
  in.w.push_back(0.0f);  // a masked token
  in.logp.push_back(std::numeric_limits<float>::infinity());
  in.old_logp.push_back(0.0f);
  in.adv.push_back(1.0f);
  in.ref_logp.push_back(0.0f);
  const PolicyOut o = run_policy(in, p);
  // float64 reference: l = -sg[clip(r)] A logp + kl_coef k3, gradient with the clipped weight held constant.
  const auto loss = [&](const std::vector<double>& lp, const std::vector<double>& wgt) {
    double L = 0;
    for (size_t t = 0; t < std::size(toks); ++t)
      L += in.w[t] * (-wgt[t] * in.adv[t] * lp[t] + p.kl_coef * ref_kl(p.kl, lp[t], in.ref_logp[t]));
    return L;
  };
  std::vector<double> lp(in.logp.begin(), in.logp.end() - 1), wgt;
  double high = 0;
  for (size_t t = 0; t < std::size(toks); ++t) {
    const double r = std::exp(lp[t] - static_cast<double>(in.old_logp[t]));
    wgt.push_back(std::min(r, 1.28));
    high += toks[t].high ? 1 : 0;
  }
  EXPECT_NEAR(o.stats[kPsLoss], loss(lp, wgt), 1e-6);
  EXPECT_EQ(o.stats[kPsClipHigh], high);
  EXPECT_EQ(o.stats[kPsClipLow], 0.0f);
  EXPECT_EQ(o.stats[kPsTokens], 5.0f);
  const double h = 1e-6;
  for (size_t t = 0; t < std::size(toks); ++t) {
    std::vector<double> up = lp, dn = lp;
    up[t] += h;
    dn[t] -= h;
    EXPECT_NEAR(o.dlogp[t], (loss(up, wgt) - loss(dn, wgt)) / (2 * h), 1e-6) << "token " << t;
  }
  // Unlike the clipped ratio, a clipped-high token with A > 0 keeps its gradient: -w (1 + clip_high) A + KL part.
  EXPECT_LT(o.dlogp[0], -0.25 * 1.28 * 2.0 + 0.25 * 0.2 * (1 - std::exp(-0.1)) + 1e-6);
  EXPECT_EQ(o.dlogp[5], 0.0f);
  p.dual_clip = 2.0f;  // dual clip does not apply to CISPO
  EXPECT_THROW(run_policy(in, p), Error);
}

TEST(RlPolicyLoss, ImportanceWeightsScaleThePolicyTermOnly) {
  std::mt19937_64 g(11);
  const int T = 120;
  PolicyInputs in;
  in.old_logp = randv(T, g, -4, -0.1f);
  in.logp.resize(T);
  std::vector<float> d = randv(T, g, -0.5f, 0.5f), rho = randv(T, g, 0, 2);
  for (int t = 0; t < T; ++t) in.logp[t] = in.old_logp[t] + d[t];
  for (int t = 0; t < T; t += 7) rho[t] = 0.0f;  // masked by the correction
  in.ref_logp = randv(T, g, -4, -0.1f);
  in.adv = randv(T, g, -2, 2);
  in.w = randv(T, g, 0, 0.01f);
  for (PolicyLossKind kind : {PolicyLossKind::Clip, PolicyLossKind::Cispo}) {
    PolicyLossParams p;
    p.kind = kind;
    p.kl_coef = 0.3f;
    p.kl = KlEstimator::K2;
    std::vector<float> dl(T), dl1(T), st(kPolicyStats, 0.0f), st1(kPolicyStats, 0.0f);
    policy_loss(tf(dl), Tensor(), tf(st), tf(in.logp), tf(in.old_logp), tf(in.ref_logp), tf(in.adv), tf(in.w),
                Tensor(), tf(rho), Tensor(), p, host());
    policy_loss(tf(dl1), Tensor(), tf(st1), tf(in.logp), tf(in.old_logp), tf(in.ref_logp), tf(in.adv), tf(in.w),
                Tensor(), Tensor(), Tensor(), p, host());
    // Without weights minus the KL part, scaled by rho, plus the KL part again.
    PolicyLossParams nokl = p;
    nokl.kl_coef = 0.0f;
    std::vector<float> dpg(T), stpg(kPolicyStats, 0.0f);
    policy_loss(tf(dpg), Tensor(), tf(stpg), tf(in.logp), tf(in.old_logp), Tensor(), tf(in.adv), tf(in.w), Tensor(),
                Tensor(), Tensor(), nokl, host());
    double L = 0;
    for (int t = 0; t < T; ++t) {
      const double dkl = static_cast<double>(dl1[t]) - dpg[t];
      EXPECT_NEAR(dl[t], rho[t] * static_cast<double>(dpg[t]) + dkl, 1e-6) << name_of(kind) << " token " << t;
      const double r = std::exp(static_cast<double>(in.logp[t]) - in.old_logp[t]);
      const double rc = std::min(std::max(r, 0.8), 1.2);
      const double pg = kind == PolicyLossKind::Clip ? std::max(-in.adv[t] * r, -in.adv[t] * rc)
                                                     : -rc * in.adv[t] * static_cast<double>(in.logp[t]);
      L += in.w[t] * (rho[t] * pg + 0.3 * ref_kl(KlEstimator::K2, in.logp[t], in.ref_logp[t]));
    }
    EXPECT_NEAR(st[kPsLoss], L, 1e-6) << name_of(kind);
    EXPECT_EQ(st[kPsTokens], st1[kPsTokens]);
  }
}

TEST(RlRolloutCorrection, TokenAndSequenceWeightsAndStatistics) {
  // Two completions: 3 tokens (the middle one not a policy token) and 2 tokens. old - rollout log-ratios:
  std::vector<int32_t> cu{0, 3, 5};
  const double d[] = {std::log(3.0), 9.0, std::log(0.8), std::log(0.4), std::log(1.5)};
  std::vector<float> roll{-1.0f, -2.0f, -0.5f, -3.0f, -0.7f}, old(5), mask{1, 0, 1, 1, 1}, w(5, 7.0f),
      st(kRolloutCorrectionStats, 5.0f);
  for (int t = 0; t < 5; ++t) old[t] = static_cast<float>(roll[t] + d[t]);
  old[1] = std::numeric_limits<float>::quiet_NaN();  // not a policy token: ignored
  std::vector<double> rt(5), adiff(5);
  for (int t = 0; t < 5; ++t) {
    const double dd = static_cast<double>(old[t]) - roll[t];
    rt[t] = std::exp(dd);
    adiff[t] = std::fabs(dd);
  }
  const double seq0 = rt[0] * rt[2], seq1 = rt[3] * rt[4];  // 2.4 and 0.6
  const double diff_sum = adiff[0] + adiff[2] + adiff[3] + adiff[4];
  const double diff_max = std::max({adiff[0], adiff[2], adiff[3], adiff[4]});
  struct Case {
    RolloutCorrection mode;
    CorrectionLevel level;
    std::vector<double> w;
    double masked, units, sum, mn, mx;
  };
  const double C = 2.0;
  const Case cases[] = {
      {RolloutCorrection::Tis, CorrectionLevel::Token, {C, 0, rt[2], rt[3], rt[4]}, 0, 4,
       rt[0] + rt[2] + rt[3] + rt[4], rt[3], rt[0]},
      {RolloutCorrection::Mis, CorrectionLevel::Token, {0, 0, 1, 0, 1}, 2, 4, rt[0] + rt[2] + rt[3] + rt[4], rt[3],
       rt[0]},
      {RolloutCorrection::Tis, CorrectionLevel::Sequence, {C, 0, C, seq1, seq1}, 0, 2, seq0 + seq1, seq1, seq0},
      {RolloutCorrection::Mis, CorrectionLevel::Sequence, {0, 0, 0, 1, 1}, 1, 2, seq0 + seq1, seq1, seq0},
      {RolloutCorrection::None, CorrectionLevel::Token, {1, 0, 1, 1, 1}, 0, 4, rt[0] + rt[2] + rt[3] + rt[4], rt[3],
       rt[0]},
  };
  for (const Case& c : cases) {
    const std::string what = std::string(name_of(c.mode)) + " " + name_of(c.level);
    RolloutCorrectionParams p;
    p.mode = c.mode;
    p.level = c.level;
    p.cap = static_cast<float>(C);
    rollout_correction(tf(w), tf(st), tf(old), tf(roll), tf(mask), ti(cu), p, host());
    expect_near_vec(w, c.w, 1e-6, what);
    EXPECT_NEAR(st[kRcRatioSum], c.sum, 1e-5) << what;
    EXPECT_NEAR(st[kRcRatioMin], c.mn, 1e-6) << what;
    EXPECT_NEAR(st[kRcRatioMax], c.mx, 1e-6) << what;
    EXPECT_EQ(st[kRcMasked], c.masked) << what;
    EXPECT_EQ(st[kRcUnits], c.units) << what;
    EXPECT_NEAR(st[kRcAbsDiffSum], diff_sum, 1e-5) << what;
    EXPECT_NEAR(st[kRcAbsDiffMax], diff_max, 1e-6) << what;
    EXPECT_EQ(st[kRcTokens], 4.0f) << what;
  }
  // No policy token at all: statistics are zeros, weights zeros.
  std::vector<float> none(5, 0.0f);
  rollout_correction(tf(w), tf(st), tf(old), tf(roll), tf(none), ti(cu), {}, host());
  for (int k = 0; k < kRolloutCorrectionStats; ++k) EXPECT_EQ(st[k], 0.0f) << k;
  for (float x : w) EXPECT_EQ(x, 0.0f);
  RolloutCorrectionParams bad;
  bad.cap = 1.0f;
  EXPECT_THROW(rollout_correction(tf(w), tf(st), tf(old), tf(roll), tf(mask), ti(cu), bad, host()), Error);
  std::vector<int32_t> bad_cu{0, 3, 4};
  EXPECT_THROW(rollout_correction(tf(w), tf(st), tf(old), tf(roll), tf(mask), ti(bad_cu), {}, host()), Error);
  EXPECT_EQ(parse_rollout_correction("tis", "algorithm.rollout_correction"), RolloutCorrection::Tis);
  EXPECT_EQ(parse_correction_level("sequence", "algorithm.rollout_correction_level"), CorrectionLevel::Sequence);
  EXPECT_EQ(parse_policy_loss_kind("cispo", "algorithm.policy_loss"), PolicyLossKind::Cispo);
  EXPECT_THROW(parse_policy_loss_kind("ppo", "algorithm.policy_loss"), Error);
}

// ---- value loss ----------------------------------------------------------------------------------------------------

TEST(RlValueLoss, HandValuesAndFiniteDifferences) {
  // clip 0.2: (v, old, R) -> l, dv / w
  std::vector<float> v{1.0f, 0.0f, 1.0f, 0.55f}, old{0.5f, 0.5f, 0.5f, 0.5f}, R{0.0f, 1.0f, 2.0f, 2.0f};
  std::vector<float> w{1.0f, 1.0f, 0.5f, 1.0f}, dv(4), st(kValueStats, 0.0f);
  value_loss(tf(dv), tf(st), tf(v), tf(old), tf(R), tf(w), {0.2f}, host());
  // token 0: v_clip 0.7, (v-R)^2 = 1 > 0.49: unclipped, l = 0.5, dv = 1
  // token 1: v_clip 0.3, 1 > 0.49: unclipped, l = 0.5, dv = -1
  // token 2: v_clip 0.7, 1.69 > 1: clipped, l = 0.845, dv = 0
  // token 3: inside the clip range: v_clip = v, l = 0.5 * 1.45^2, dv = -1.45
  EXPECT_NEAR(dv[0], 1.0, 1e-6);
  EXPECT_NEAR(dv[1], -1.0, 1e-6);
  EXPECT_EQ(dv[2], 0.0f);
  EXPECT_NEAR(dv[3], -1.45, 1e-6);
  EXPECT_NEAR(st[kVsLoss], 0.5 + 0.5 + 0.5 * 0.845 + 0.5 * 1.45 * 1.45, 1e-5);
  EXPECT_EQ(st[kVsClipped], 1.0f);
  EXPECT_EQ(st[kVsTokens], 4.0f);
  // Unclipped (clip = 0): plain 0.5 (v - R)^2.
  std::fill(st.begin(), st.end(), 0.0f);
  value_loss(tf(dv), tf(st), tf(v), tf(old), tf(R), tf(w), {0.0f}, host());
  EXPECT_NEAR(dv[2], 0.5 * (1.0 - 2.0), 1e-6);
  EXPECT_EQ(st[kVsClipped], 0.0f);

  // Random: dv against central differences of a float64 loss.
  std::mt19937_64 g(51);
  const int T = 300;
  std::vector<float> vv = randv(T, g), ov = randv(T, g), RR = randv(T, g, -2, 2), ww = randv(T, g, 0, 1), d(T);
  std::fill(st.begin(), st.end(), 0.0f);
  const double eps = 0.2;
  auto L = [&](const std::vector<double>& x) {
    double s = 0;
    for (int t = 0; t < T; ++t) {
      const double vc = ov[t] + std::min(std::max(x[t] - ov[t], -eps), eps);
      s += ww[t] * 0.5 * std::max((x[t] - RR[t]) * (x[t] - RR[t]), (vc - RR[t]) * (vc - RR[t]));
    }
    return s;
  };
  value_loss(tf(d), tf(st), tf(vv), tf(ov), tf(RR), tf(ww), {0.2f}, host());
  std::vector<double> x(vv.begin(), vv.end());
  EXPECT_NEAR(st[kVsLoss], L(x), 1e-4);
  for (int t = 0; t < T; ++t) {
    if (std::fabs(std::fabs(vv[t] - ov[t]) - eps) < 1e-4) continue;
    std::vector<double> up = x, dn = x;
    up[t] += 1e-6;
    dn[t] -= 1e-6;
    EXPECT_NEAR(d[t], (L(up) - L(dn)) / 2e-6, 1e-5) << t;
  }
}

// ---- host helpers -------------------------------------------------------------------------------------------------

TEST(RlHost, ParseNamesAndErrors) {
  EXPECT_EQ(parse_advantage_norm("batch", "algorithm.scale_rewards"), AdvantageNorm::Batch);
  EXPECT_EQ(parse_kl_estimator("k2", "algorithm.kl_estimator"), KlEstimator::K2);
  EXPECT_EQ(parse_loss_agg("seq-mean-token-sum-norm", "algorithm.loss_agg"), LossAgg::SeqMeanTokenSumNorm);
  EXPECT_STREQ(name_of(LossAgg::SeqMeanTokenMean), "seq-mean-token-mean");
  try {
    parse_loss_agg("mean", "algorithm.loss_agg");
    FAIL() << "no error";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("algorithm.loss_agg"), std::string::npos) << m;
    EXPECT_NE(m.find("token-mean"), std::string::npos) << m;
  }
  EXPECT_THROW(parse_kl_estimator("k4", "algorithm.kl_estimator"), Error);
}

TEST(RlHost, DynamicSamplingFilter) {
  const std::vector<float> r{1, 1, 1, 0, 1, 0, 0, 0, 0, 0.5f, 0.5f, 0.5f};
  EXPECT_EQ(degenerate_groups(r, 3), (std::vector<uint8_t>{1, 0, 1, 1}));
  EXPECT_EQ(degenerate_groups(r, 1), std::vector<uint8_t>(12, 1));
  EXPECT_EQ(degenerate_groups({0.0f, 0.01f}, 2, 0.05f), std::vector<uint8_t>{1});
  EXPECT_THROW(degenerate_groups(r, 5), Error);
}

TEST(RlHost, TruncationMask) {
  const std::vector<int32_t> len{5, 8, 8, 3};
  const std::vector<uint8_t> stopped{1, 0, 1, 0};
  TruncationMask m = truncation_mask(len, stopped, 8, true);
  EXPECT_EQ(m.truncated, (std::vector<uint8_t>{0, 1, 0, 0}));
  EXPECT_EQ(m.keep, (std::vector<float>{1, 0, 1, 1}));
  EXPECT_EQ(m.kept_seqs, 3);
  EXPECT_EQ(m.kept_tokens, 16);
  m = truncation_mask(len, {}, 8, true);  // length alone
  EXPECT_EQ(m.keep, (std::vector<float>{1, 0, 0, 1}));
  m = truncation_mask(len, stopped, 8, false);
  EXPECT_EQ(m.keep, (std::vector<float>{1, 1, 1, 1}));
  EXPECT_EQ(m.kept_tokens, 24);
  EXPECT_THROW(truncation_mask(len, {1}, 8, true), Error);
}
