// CPU sampler (ops::sample): Philox known answers, chi-square goodness of fit of the sampled tokens against the
// analytic distribution for temperature, top-k, top-p, min-p and a combination (with a power check that the test
// rejects a wrong distribution), batch invariance, seed/sequence/position sensitivity, greedy = argmax,
// log-probs under the temperature-scaled full distribution, rows without a finite maximum, parameter errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "philox.h"
#include "rlcu/context.h"
#include "rlcu/error.h"
#include "rlcu/ops.h"
#include "rlcu/tensor.h"

namespace rlcu {
namespace {

struct Draws {
  std::vector<int32_t> tokens;
  std::vector<float> logprobs;
};

// Samples rows of logits[B, V] (F32) on the CPU with the given sequence ids and positions.
Draws run_sample(const std::vector<float>& logits, int64_t B, int64_t V, const std::vector<int32_t>& seq_ids,
                 const std::vector<int32_t>& positions, const ops::SampleParams& p) {
  Draws d;
  d.tokens.assign(B, -7);
  d.logprobs.assign(B, 0.0f);
  std::vector<float> lg = logits;
  std::vector<int32_t> sid = seq_ids, pos = positions;
  ops::sample(Tensor(d.tokens.data(), DType::I32, Device::CPU, {B}),
              Tensor(d.logprobs.data(), DType::F32, Device::CPU, {B}),
              Tensor(lg.data(), DType::F32, Device::CPU, {B, V}), Tensor(sid.data(), DType::I32, Device::CPU, {B}),
              Tensor(pos.data(), DType::I32, Device::CPU, {B}), p, Context::cpu());
  return d;
}

std::vector<int32_t> iota_ids(int64_t n, int32_t start = 0, int32_t stride = 1) {
  std::vector<int32_t> v(n);
  for (int64_t i = 0; i < n; ++i) v[i] = start + static_cast<int32_t>(i) * stride;
  return v;
}

// N rows holding the same logits, distinct (seq_id, position) per row.
Draws draw_many(const std::vector<float>& row, int64_t N, const ops::SampleParams& p) {
  std::vector<float> logits;
  logits.reserve(row.size() * N);
  for (int64_t i = 0; i < N; ++i) logits.insert(logits.end(), row.begin(), row.end());
  return run_sample(logits, N, static_cast<int64_t>(row.size()), iota_ids(N), iota_ids(N, 3, 7), p);
}

// Upper 1e-4 quantile of chi-square with df degrees of freedom (Wilson-Hilferty).
double chi2_critical(int df) {
  const double z = 3.719, k = df;
  const double t = 1.0 - 2.0 / (9.0 * k) + z * std::sqrt(2.0 / (9.0 * k));
  return k * t * t * t;
}

// Pearson statistic of the token counts against `probs` (zero-probability tokens must never be drawn).
double chi2_stat(const std::vector<int32_t>& tokens, const std::vector<double>& probs, int* df) {
  std::vector<double> count(probs.size(), 0.0);
  for (int32_t t : tokens) {
    EXPECT_TRUE(t >= 0 && t < static_cast<int32_t>(probs.size())) << "token " << t;
    if (t >= 0 && t < static_cast<int32_t>(probs.size())) count[t] += 1.0;
  }
  double stat = 0.0;
  int cells = 0;
  for (size_t j = 0; j < probs.size(); ++j) {
    if (probs[j] == 0.0) {
      EXPECT_EQ(count[j], 0.0) << "token " << j << " is outside the kept set but was drawn";
      continue;
    }
    const double e = probs[j] * static_cast<double>(tokens.size());
    stat += (count[j] - e) * (count[j] - e) / e;
    ++cells;
  }
  *df = cells - 1;
  return stat;
}

// A known distribution over 10 tokens, placed at shuffled vocabulary positions.
struct Known {
  std::vector<double> p;     // probabilities by vocabulary index
  std::vector<float> logit;  // log p (+ an offset, which must not matter)
  std::vector<int> rank;     // rank[j] = 0 for the most likely token
};
Known known_distribution() {
  const std::vector<double> sorted = {0.3, 0.2, 0.15, 0.1, 0.08, 0.07, 0.05, 0.03, 0.015, 0.005};
  std::vector<int> perm = {7, 2, 9, 0, 5, 3, 8, 1, 6, 4};  // vocabulary index of the r-th most likely token
  Known k;
  k.p.assign(10, 0.0);
  k.logit.assign(10, 0.0f);
  k.rank.assign(10, 0);
  for (int r = 0; r < 10; ++r) {
    k.p[perm[r]] = sorted[r];
    k.logit[perm[r]] = static_cast<float>(std::log(sorted[r]) + 2.5);
    k.rank[perm[r]] = r;
  }
  return k;
}

// p^(1/T) restricted to tokens with rank < keep, renormalised.
std::vector<double> expected(const Known& k, double temperature, int keep) {
  std::vector<double> q(10, 0.0);
  double s = 0.0;
  for (int j = 0; j < 10; ++j)
    if (k.rank[j] < keep) s += q[j] = std::pow(k.p[j], 1.0 / temperature);
  for (double& v : q) v /= s;
  return q;
}

constexpr int64_t kDraws = 40000;

void expect_fits(const Known& k, const ops::SampleParams& p, const std::vector<double>& want, const char* what) {
  const Draws d = draw_many(k.logit, kDraws, p);
  int df = 0;
  const double stat = chi2_stat(d.tokens, want, &df);
  if (df == 0) {  // one kept token: every draw must be it (checked by chi2_stat)
    EXPECT_EQ(stat, 0.0) << what;
    return;
  }
  EXPECT_LT(stat, chi2_critical(df)) << what << ": chi-square " << stat << " with " << df << " degrees of freedom";
}

TEST(SamplerCpu, PhiloxKnownAnswers) {
  // Known-answer vectors of the Random123 reference implementation (philox4x32_10).
  auto r = rng::philox4x32_10(0, 0, 0, 0, 0, 0);
  EXPECT_EQ(r.v[0], 0x6627e8d5u);
  EXPECT_EQ(r.v[1], 0xe169c58du);
  EXPECT_EQ(r.v[2], 0xbc57ac4cu);
  EXPECT_EQ(r.v[3], 0x9b00dbd8u);
  r = rng::philox4x32_10(~0u, ~0u, ~0u, ~0u, ~0u, ~0u);
  EXPECT_EQ(r.v[0], 0x408f276du);
  EXPECT_EQ(r.v[3], 0x6d5451fdu);
  r = rng::philox4x32_10(0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u, 0xa4093822u, 0x299f31d0u);
  EXPECT_EQ(r.v[0], 0xd16cfe09u);
  EXPECT_EQ(r.v[1], 0x94fdccebu);
  EXPECT_EQ(r.v[2], 0x5001e420u);
  EXPECT_EQ(r.v[3], 0x24126ea1u);
  EXPECT_GT(rng::uniform_open01(0u), 0.0f);
  EXPECT_LT(rng::uniform_open01(~0u), 1.0f);
}

TEST(SamplerCpu, ChiSquareTemperature) {
  const Known k = known_distribution();
  ops::SampleParams p;
  p.seed = 11;
  expect_fits(k, p, expected(k, 1.0, 10), "temperature 1");
  p.temperature = 0.7f;
  expect_fits(k, p, expected(k, 0.7, 10), "temperature 0.7");
  p.temperature = 1.8f;
  expect_fits(k, p, expected(k, 1.8, 10), "temperature 1.8");
}

TEST(SamplerCpu, ChiSquareRejectsAWrongDistribution) {
  // Power check: draws at temperature 1 do not fit the temperature-0.7 distribution.
  const Known k = known_distribution();
  ops::SampleParams p;
  p.seed = 12;
  const Draws d = draw_many(k.logit, kDraws, p);
  int df = 0;
  const double stat = chi2_stat(d.tokens, expected(k, 0.7, 10), &df);
  EXPECT_GT(stat, chi2_critical(df));
}

TEST(SamplerCpu, ChiSquareTopK) {
  const Known k = known_distribution();
  ops::SampleParams p;
  p.seed = 13;
  p.top_k = 4;
  expect_fits(k, p, expected(k, 1.0, 4), "top_k 4");
  p.top_k = 1;
  expect_fits(k, p, expected(k, 1.0, 1), "top_k 1");
  p.top_k = 10;
  expect_fits(k, p, expected(k, 1.0, 10), "top_k = V");
}

TEST(SamplerCpu, ChiSquareTopP) {
  const Known k = known_distribution();
  ops::SampleParams p;
  p.seed = 14;
  p.top_p = 0.62f;  // 0.3 + 0.2 + 0.15 = 0.65 is the first prefix reaching 0.62
  expect_fits(k, p, expected(k, 1.0, 3), "top_p 0.62");
  p.top_p = 0.49f;  // 0.3 + 0.2 = 0.5 is the first prefix reaching 0.49 (0.5 itself would sit on rounding)
  expect_fits(k, p, expected(k, 1.0, 2), "top_p 0.49");
  p.top_p = 0.1f;
  expect_fits(k, p, expected(k, 1.0, 1), "top_p 0.1");
}

TEST(SamplerCpu, ChiSquareMinP) {
  const Known k = known_distribution();
  ops::SampleParams p;
  p.seed = 15;
  p.min_p = 0.3f;  // keeps p >= 0.09: 0.3, 0.2, 0.15, 0.1
  expect_fits(k, p, expected(k, 1.0, 4), "min_p 0.3");
  p.min_p = 0.2f;  // keeps p >= 0.06: adds 0.08 and 0.07
  expect_fits(k, p, expected(k, 1.0, 6), "min_p 0.2");
}

TEST(SamplerCpu, ChiSquareCombined) {
  // Temperature 0.5 first: q ∝ p^2 = .09 .04 .0225 .01 .0064 ...; top-k 5 keeps five; top-p 0.9 of those five
  // (sum .1689): .09 + .04 + .0225 = .1525 = 0.903 of it, so three remain; min-p 0.05 keeps q >= .0045 (all).
  const Known k = known_distribution();
  ops::SampleParams p;
  p.seed = 16;
  p.temperature = 0.5f;
  p.top_k = 5;
  p.top_p = 0.9f;
  p.min_p = 0.05f;
  expect_fits(k, p, expected(k, 0.5, 3), "temperature 0.5, top_k 5, top_p 0.9, min_p 0.05");
}

TEST(SamplerCpu, TopKKeepsTies) {
  const std::vector<float> row = {3.0f, 2.0f, 2.0f, 1.0f, -1.0f};
  ops::SampleParams p;
  p.seed = 17;
  p.top_k = 2;
  const Draws d = draw_many(row, 4000, p);
  std::vector<int> count(5, 0);
  for (int32_t t : d.tokens) ++count.at(t);
  EXPECT_GT(count[0], 0);
  EXPECT_GT(count[1], 0);
  EXPECT_GT(count[2], 0);
  EXPECT_EQ(count[3], 0);
  EXPECT_EQ(count[4], 0);
}

TEST(SamplerCpu, SignedZeroLogitsAreTies) {
  // -0 and +0 are the same logit: top-k 2 of {1, +0, -0, -1} keeps both zeros.
  const std::vector<float> row = {1.0f, 0.0f, -0.0f, -1.0f};
  ops::SampleParams p;
  p.seed = 18;
  p.top_k = 2;
  const Draws d = draw_many(row, 3000, p);
  std::vector<int> count(4, 0);
  for (int32_t t : d.tokens) ++count.at(t);
  EXPECT_GT(count[1], 0);
  EXPECT_GT(count[2], 0);
  EXPECT_EQ(count[3], 0);
}

TEST(SamplerCpu, BatchInvariance) {
  const int64_t B = 24, V = 1000;
  std::mt19937 g(5);
  std::normal_distribution<float> n(0.0f, 2.0f);
  std::vector<float> logits(B * V);
  for (float& x : logits) x = n(g);
  const std::vector<int32_t> sid = iota_ids(B, 100, 3), pos = iota_ids(B, 9, 5);
  for (const auto& [k, tp, mp] : {std::tuple<int, float, float>{0, 1.0f, 0.0f}, {50, 1.0f, 0.0f},
                                 {0, 0.9f, 0.0f}, {0, 1.0f, 0.05f}, {40, 0.8f, 0.02f}}) {
    ops::SampleParams p;
    p.seed = 0x1234567890abcdefull;
    p.temperature = 0.9f;
    p.top_k = k;
    p.top_p = tp;
    p.min_p = mp;
    const Draws all = run_sample(logits, B, V, sid, pos, p);
    // Each row alone, and the batch reversed.
    std::vector<float> rev(B * V);
    std::vector<int32_t> rsid(B), rpos(B);
    for (int64_t b = 0; b < B; ++b) {
      std::copy(logits.begin() + b * V, logits.begin() + (b + 1) * V, rev.begin() + (B - 1 - b) * V);
      rsid[B - 1 - b] = sid[b];
      rpos[B - 1 - b] = pos[b];
      const Draws one = run_sample(std::vector<float>(logits.begin() + b * V, logits.begin() + (b + 1) * V), 1, V,
                                   {sid[b]}, {pos[b]}, p);
      EXPECT_EQ(one.tokens[0], all.tokens[b]) << "row " << b << " top_k " << k;
      EXPECT_EQ(one.logprobs[0], all.logprobs[b]) << "row " << b;
    }
    const Draws r = run_sample(rev, B, V, rsid, rpos, p);
    for (int64_t b = 0; b < B; ++b) EXPECT_EQ(r.tokens[B - 1 - b], all.tokens[b]) << "row " << b;
  }
}

TEST(SamplerCpu, SeedSequenceAndPositionChangeTheDraw) {
  const int64_t B = 256, V = 64;
  const std::vector<float> row(V, 0.0f);  // uniform: two independent draws agree with probability 1/64
  std::vector<float> logits;
  for (int64_t b = 0; b < B; ++b) logits.insert(logits.end(), row.begin(), row.end());
  ops::SampleParams p;
  p.seed = 1;
  const std::vector<int32_t> sid = iota_ids(B), pos(B, 17);
  const Draws a = run_sample(logits, B, V, sid, pos, p);
  const Draws again = run_sample(logits, B, V, sid, pos, p);
  EXPECT_EQ(a.tokens, again.tokens) << "same seed, same draws";
  auto same = [&](const Draws& o) {
    int n = 0;
    for (int64_t b = 0; b < B; ++b) n += a.tokens[b] == o.tokens[b];
    return n;
  };
  p.seed = 2;
  EXPECT_LT(same(run_sample(logits, B, V, sid, pos, p)), 20) << "another seed";
  p.seed = 1ull << 40;  // high word of the seed
  EXPECT_LT(same(run_sample(logits, B, V, sid, pos, p)), 20) << "seed high word";
  p.seed = 1;
  EXPECT_LT(same(run_sample(logits, B, V, iota_ids(B, 1000), pos, p)), 20) << "other sequence ids";
  EXPECT_LT(same(run_sample(logits, B, V, sid, std::vector<int32_t>(B, 18), p)), 20) << "next position";
  // Rows of one batch with distinct keys are not copies of each other.
  std::vector<int> count(V, 0);
  for (int32_t t : a.tokens) ++count.at(t);
  EXPECT_LT(*std::max_element(count.begin(), count.end()), 20);
}

TEST(SamplerCpu, GreedyIsArgmaxAndLogprobIsUnderTheTemperatureScaledDistribution) {
  const int64_t B = 5, V = 300;
  std::mt19937 g(9);
  std::uniform_real_distribution<float> u(-4.0f, 4.0f);
  std::vector<float> logits(B * V);
  for (float& x : logits) x = u(g);
  logits[1 * V + 7] = 9.0f;  // a tie: the lower index wins
  logits[1 * V + 200] = 9.0f;
  for (float temperature : {1.0f, 0.6f}) {
    ops::SampleParams p;
    p.greedy = true;
    p.temperature = temperature;
    const Draws d = run_sample(logits, B, V, iota_ids(B), iota_ids(B), p);
    for (int64_t b = 0; b < B; ++b) {
      const float* r = logits.data() + b * V;
      const int64_t arg = std::max_element(r, r + V) - r;
      EXPECT_EQ(d.tokens[b], arg) << "row " << b;
      double mx = -1e300, s = 0.0;
      for (int64_t j = 0; j < V; ++j) mx = std::max(mx, static_cast<double>(r[j] * (1.0f / temperature)));
      for (int64_t j = 0; j < V; ++j) s += std::exp(static_cast<double>(r[j] * (1.0f / temperature)) - mx);
      const double want = static_cast<double>(r[arg] * (1.0f / temperature)) - mx - std::log(s);
      EXPECT_NEAR(d.logprobs[b], want, 1e-5) << "row " << b;
    }
    EXPECT_EQ(d.tokens[1], 7);
  }
  // Sampled tokens: the log-prob is that of the full temperature-scaled distribution, not the truncated one.
  ops::SampleParams p;
  p.seed = 3;
  p.temperature = 0.8f;
  p.top_k = 3;
  const Draws d = run_sample(logits, B, V, iota_ids(B), iota_ids(B), p);
  for (int64_t b = 0; b < B; ++b) {
    const float* r = logits.data() + b * V;
    double mx = -1e300, s = 0.0;
    for (int64_t j = 0; j < V; ++j) mx = std::max(mx, static_cast<double>(r[j] * (1.0f / 0.8f)));
    for (int64_t j = 0; j < V; ++j) s += std::exp(static_cast<double>(r[j] * (1.0f / 0.8f)) - mx);
    ASSERT_GE(d.tokens[b], 0);
    const double want = static_cast<double>(r[d.tokens[b]] * (1.0f / 0.8f)) - mx - std::log(s);
    EXPECT_NEAR(d.logprobs[b], want, 1e-5) << "row " << b;
    std::vector<float> sorted(r, r + V);
    std::sort(sorted.begin(), sorted.end(), std::greater<float>());
    EXPECT_GE(r[d.tokens[b]], sorted[2]) << "row " << b << ": outside the top 3";
  }
}

TEST(SamplerCpu, Bf16LogitsMatchTheirF32Values) {
  const int64_t B = 8, V = 500;
  std::mt19937 g(21);
  std::normal_distribution<float> n(0.0f, 3.0f);
  std::vector<uint16_t> h(B * V);
  std::vector<float> f(B * V);
  for (int64_t i = 0; i < B * V; ++i) {
    h[i] = f32_to_bf16(n(g));
    f[i] = bf16_to_f32(h[i]);
  }
  ops::SampleParams p;
  p.seed = 77;
  p.top_p = 0.95f;
  const Draws want = run_sample(f, B, V, iota_ids(B), iota_ids(B), p);
  std::vector<int32_t> tok(B), sid = iota_ids(B), pos = iota_ids(B);
  std::vector<float> lp(B);
  ops::sample(Tensor(tok.data(), DType::I32, Device::CPU, {B}), Tensor(lp.data(), DType::F32, Device::CPU, {B}),
              Tensor(h.data(), DType::BF16, Device::CPU, {B, V}), Tensor(sid.data(), DType::I32, Device::CPU, {B}),
              Tensor(pos.data(), DType::I32, Device::CPU, {B}), p, Context::cpu());
  EXPECT_EQ(tok, want.tokens);
  EXPECT_EQ(lp, want.logprobs);
}

TEST(SamplerCpu, NonFiniteLogits) {
  const int64_t V = 6;
  const float nan = std::nanf(""), inf = INFINITY;
  // Row 0: NaNs are never drawn; row 1: all NaN; row 2: all -inf; row 3: a +inf; row 4: one finite token.
  const std::vector<float> logits = {nan, 1.0f, nan, 1.0f, nan, 1.0f,  //
                                     nan, nan,  nan, nan,  nan, nan,   //
                                     -inf, -inf, -inf, -inf, -inf, -inf,  //
                                     0.0f, inf, 0.0f, 0.0f, 0.0f, 0.0f,   //
                                     -inf, -inf, -inf, 2.0f, -inf, nan};
  for (bool greedy : {false, true}) {
    ops::SampleParams p;
    p.seed = 4;
    p.greedy = greedy;
    p.top_p = 0.7f;
    const Draws d = run_sample(logits, 5, V, iota_ids(5), iota_ids(5), p);
    EXPECT_TRUE(d.tokens[0] == 1 || d.tokens[0] == 3 || d.tokens[0] == 5) << d.tokens[0];
    EXPECT_NEAR(d.logprobs[0], -std::log(3.0), 1e-6);
    for (int r : {1, 2, 3}) {
      EXPECT_EQ(d.tokens[r], -1) << "row " << r;
      EXPECT_EQ(d.logprobs[r], -inf) << "row " << r;
    }
    EXPECT_EQ(d.tokens[4], 3);
    EXPECT_EQ(d.logprobs[4], 0.0f);
  }
}

TEST(SamplerCpu, MinPOneKeepsTheMaximumOnly) {
  std::vector<float> row = {0.5f, 2.0f, 1.9999f, -3.0f};
  ops::SampleParams p;
  p.seed = 8;
  p.min_p = 1.0f;
  const Draws d = draw_many(row, 500, p);
  for (int32_t t : d.tokens) EXPECT_EQ(t, 1);
}

TEST(SamplerCpu, RejectsBadParameters) {
  const std::vector<float> row = {0.0f, 1.0f};
  auto bad = [&](ops::SampleParams p, const char* what) {
    EXPECT_THROW(run_sample(row, 1, 2, {0}, {0}, p), Error) << what;
  };
  ops::SampleParams p;
  p.temperature = 0.0f;
  bad(p, "temperature 0");
  p.temperature = NAN;
  bad(p, "temperature NaN");
  p = {};
  p.top_k = -1;
  bad(p, "top_k -1");
  p = {};
  p.top_p = 0.0f;
  bad(p, "top_p 0");
  p.top_p = 1.5f;
  bad(p, "top_p 1.5");
  p = {};
  p.min_p = -0.1f;
  bad(p, "min_p -0.1");
  p.min_p = 1.1f;
  bad(p, "min_p 1.1");
  try {
    p = {};
    p.top_p = 2.0f;
    run_sample(row, 1, 2, {0}, {0}, p);
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("top_p"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace rlcu
