// Learning-rate schedules and the AdamW driver (norm, clipping, update) on the CPU against a float64 reference;
// 8-bit AdamW: its dynamic code tables, the quantise / dequantise round trip (nearest code, error bounds per
// magnitude), the blockwise state of ops::adamw8_update, and its trajectory against fp32 AdamW on a quadratic.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "adamw8_common.h"
#include "rlcu/ops.h"
#include "rlcu/optimizer.h"

using namespace rlcu;

TEST(LrSchedule, WarmupThenShapes) {
  OptimizerSection c;
  c.lr = 1.0;
  c.warmup_steps = 4;
  EXPECT_DOUBLE_EQ(lr_at(c, 0, 20), 0.25);
  EXPECT_DOUBLE_EQ(lr_at(c, 3, 20), 1.0);
  EXPECT_DOUBLE_EQ(lr_at(c, 19, 20), 1.0);  // constant
  c.lr_schedule = "linear";
  c.min_lr_ratio = 0.1;
  EXPECT_DOUBLE_EQ(lr_at(c, 4, 20), 1.0);
  EXPECT_NEAR(lr_at(c, 19, 20), 0.1, 1e-12);
  EXPECT_NEAR(lr_at(c, 4 + 15 / 2.0, 20), 0.1 + 0.9 * 0.5, 0.05);
  c.lr_schedule = "cosine";
  EXPECT_DOUBLE_EQ(lr_at(c, 4, 20), 1.0);
  EXPECT_NEAR(lr_at(c, 19, 20), 0.1, 1e-12);
  EXPECT_LT(lr_at(c, 12, 20), lr_at(c, 8, 20));
  EXPECT_NEAR(lr_at(c, 100, 20), 0.1, 1e-12);  // past the end stays at the floor
}

TEST(AdamW, MatchesFloat64ReferenceWithClipping) {
  const int n = 37;
  std::mt19937 g(1234);
  std::normal_distribution<float> d;
  std::vector<float> w(n), grad(n);
  for (auto& x : w) x = d(g);
  std::vector<double> rw(w.begin(), w.end()), rm(n, 0), rv(n, 0);
  OptimizerSection c;
  c.lr = 0.01;
  c.weight_decay = 0.1;
  c.max_grad_norm = 0.5;
  Context& ctx = Context::cpu();
  Tensor tw(w.data(), DType::F32, Device::CPU, {n}), tg(grad.data(), DType::F32, Device::CPU, {n});
  AdamW opt(c, tw, tg, Tensor(), ctx);
  for (int step = 1; step <= 3; ++step) {
    double ss = 0;
    for (auto& x : grad) {
      x = d(g);
      ss += double(x) * x;
    }
    const double norm = std::sqrt(ss), scale = norm > c.max_grad_norm ? c.max_grad_norm / norm : 1.0;
    OptimizerStepStats st = opt.step(c.lr, ctx);
    EXPECT_NEAR(st.grad_norm, norm, 1e-5 * norm);
    EXPECT_NEAR(st.clip_scale, scale, 1e-6);
    for (int i = 0; i < n; ++i) {
      const double gi = grad[i] * scale;
      rm[i] = c.beta1 * rm[i] + (1 - c.beta1) * gi;
      rv[i] = c.beta2 * rv[i] + (1 - c.beta2) * gi * gi;
      const double mh = rm[i] / (1 - std::pow(c.beta1, step)), vh = rv[i] / (1 - std::pow(c.beta2, step));
      rw[i] -= c.lr * (mh / (std::sqrt(vh) + c.eps) + c.weight_decay * rw[i]);
    }
    for (int i = 0; i < n; ++i) ASSERT_NEAR(w[i], rw[i], 1e-5 * (1 + std::fabs(rw[i]))) << "step " << step << " i " << i;
  }
  EXPECT_EQ(opt.steps_done(), 3);
}

TEST(AdamW, NonFiniteGradientIsAnError) {
  std::vector<float> w(4, 1.0f), grad(4, 0.0f);
  grad[2] = std::nanf("");
  OptimizerSection c;
  Tensor tw(w.data(), DType::F32, Device::CPU, {4}), tg(grad.data(), DType::F32, Device::CPU, {4});
  AdamW opt(c, tw, tg, Tensor(), Context::cpu());
  EXPECT_THROW(opt.step(1e-3, Context::cpu()), Error);
  EXPECT_EQ(w[0], 1.0f);  // nothing updated
}

// ---- 8-bit AdamW ---------------------------------------------------------------------------------------------------

TEST(Adamw8, DynamicTablesAreSortedWithZeroAndOne) {
  const adamw8::Tables& t = adamw8::tables();
  for (int i = 1; i < adamw8::kCodes; ++i) {
    EXPECT_LT(t.sgn[i - 1], t.sgn[i]) << i;
    EXPECT_LT(t.uns[i - 1], t.uns[i]) << i;
  }
  EXPECT_EQ(t.sgn[adamw8::kSignedZero], 0.0f);
  EXPECT_EQ(t.uns[adamw8::kUnsignedZero], 0.0f);
  EXPECT_EQ(t.sgn[255], 1.0f);
  EXPECT_EQ(t.uns[255], 1.0f);
  EXPECT_NEAR(t.sgn[0], -(1.0 - 0.9 / 128), 1e-6);  // the largest negative magnitude
  EXPECT_NEAR(t.sgn[128], 0.55e-6, 1e-12);           // the smallest positive code
  EXPECT_NEAR(t.uns[1], 0.325e-6, 1e-12);
  for (int i = 0; i < 127; ++i) EXPECT_EQ(t.sgn[i], -t.sgn[254 - i]) << i;  // symmetric but for 1
}

// Every value in [-1, 1] (signed) or [0, 1] (unsigned) maps to its nearest code, and the error is within the code
// spacing of its decade: |x| in [10^(e-6) * 0.1, 10^(e-6)] -> error <= 0.45 * 10^(e-6) / 2^e (signed), half that
// (unsigned); below the smallest code the error is at most that code's half.
TEST(Adamw8, QuantiseRoundTripIsNearestWithinTheDecadeBound) {
  const adamw8::Tables& t = adamw8::tables();
  std::mt19937_64 g(7);
  std::uniform_real_distribution<double> expo(-7.5, 0.0), sign(-1.0, 1.0);
  for (int pass = 0; pass < 2; ++pass) {
    const bool sgn = pass == 0;
    const float* tb = sgn ? t.sgn : t.uns;
    for (int k = 0; k < 20000; ++k) {
      float x = static_cast<float>(std::pow(10.0, expo(g)));
      if (sgn && sign(g) < 0) x = -x;
      const uint8_t c = adamw8::quantise(tb, x);
      const float back = adamw8::dequantise(tb, c, 1.0f);
      const double err = std::fabs(static_cast<double>(back) - x);
      double best = 1e30;
      for (int j = 0; j < adamw8::kCodes; ++j) best = std::min(best, std::fabs(static_cast<double>(tb[j]) - x));
      ASSERT_EQ(err, best) << "x " << x << " code " << int(c);
      const double ax = std::fabs(x);
      double bound = sgn ? 0.275e-6 : 0.1625e-6;  // half the smallest code
      for (int e = 0; e < 7; ++e) {
        const double hi = std::pow(10.0, e - 6);
        if (ax >= 0.1 * hi && ax <= hi) bound = std::max(bound, (sgn ? 0.45 : 0.225) * hi / (1 << e));
      }
      ASSERT_LE(err, bound * (1 + 1e-6)) << "x " << x;
    }
    // Scaled: the block's absmax element is exact (code 1.0), zero absmax gives the zero code.
    EXPECT_EQ(adamw8::dequantise(tb, adamw8::quantise_scaled(tb, 3.5f, 3.5f, 0), 3.5f), 3.5f);
    const int zero = sgn ? adamw8::kSignedZero : adamw8::kUnsignedZero;
    EXPECT_EQ(adamw8::quantise_scaled(tb, 0.0f, 0.0f, zero), zero);
  }
}

// ops::adamw8_update's first step from zero state: the moments it stores dequantise to the fresh ones within the
// round-trip bound of their block's absmax, and the master moves as fp32 AdamW's first step (lr g / (|g| + eps) for
// wd = 0) since the update uses the fresh moments.
TEST(Adamw8, FirstStepStoresBlockwiseMomentsWithinTheBound) {
  const int64_t n = 700, nb = 3;  // a partial last block
  std::mt19937 g(3);
  std::normal_distribution<float> d;
  std::vector<float> w(n), grad(n);
  for (auto& x : w) x = d(g);
  for (int64_t i = 0; i < n; ++i) grad[i] = d(g) * (i < 256 ? 1.0f : 1e-3f);
  const std::vector<float> w0 = w;
  std::vector<uint8_t> mc(n, 0), vc(n, 0);
  std::vector<float> ma(nb, 0.0f), va(nb, 0.0f);
  ops::AdamWParams p;
  p.lr = 1e-2f;
  p.step = 1;
  Context& ctx = Context::cpu();
  ops::adamw8_update(Tensor(w.data(), DType::F32, Device::CPU, {n}), Tensor(mc.data(), DType::U8, Device::CPU, {n}),
                     Tensor(ma.data(), DType::F32, Device::CPU, {nb}), Tensor(vc.data(), DType::U8, Device::CPU, {n}),
                     Tensor(va.data(), DType::F32, Device::CPU, {nb}), Tensor(),
                     Tensor(grad.data(), DType::F32, Device::CPU, {n}), p, ctx);
  const adamw8::Tables& t = adamw8::tables();
  for (int64_t b = 0; b < nb; ++b) {
    float mmax = 0, vmax = 0;
    for (int64_t i = b * 256; i < std::min<int64_t>(n, (b + 1) * 256); ++i) {
      mmax = std::max(mmax, std::fabs(0.1f * grad[i]));
      vmax = std::max(vmax, 0.001f * grad[i] * grad[i]);
    }
    EXPECT_NEAR(ma[b], mmax, 1e-6 * mmax) << b;
    EXPECT_NEAR(va[b], vmax, 1e-4 * vmax) << b;  // 1 - 0.999f is 0.001 to 5e-5
  }
  for (int64_t i = 0; i < n; ++i) {
    const int64_t b = i / 256;
    // Within half the code spacing of [0.1, 1] (the coarsest decade) times the absmax.
    EXPECT_NEAR(adamw8::dequantise(t.sgn, mc[i], ma[b]), 0.1f * grad[i], 0.0071 * ma[b]) << i;
    EXPECT_NEAR(adamw8::dequantise(t.uns, vc[i], va[b]), 0.001f * grad[i] * grad[i], 0.0036 * va[b]) << i;
    const double gi = grad[i];
    EXPECT_NEAR(w[i], w0[i] - 1e-2 * gi / (std::fabs(gi) + 1e-8), 1e-6) << i;
  }
}

namespace {

// Minimises f(w) = 1/2 sum_i a_i (w_i - t_i)^2 from w = 0 with `name`; returns the weights after every step.
std::vector<std::vector<float>> quadratic_trajectory(const std::string& name, int steps) {
  const int64_t n = 1000;  // 4 blocks, the last one partial
  std::mt19937 g(11);
  std::uniform_real_distribution<float> ua(0.5f, 2.0f), ut(-1.0f, 1.0f);
  std::vector<float> a(n), tgt(n), w(n, 0.0f), grad(n);
  for (int64_t i = 0; i < n; ++i) {
    a[i] = ua(g);
    tgt[i] = ut(g) * (i % 3 == 0 ? 1e-2f : 1.0f);  // mixed scales within each block
  }
  OptimizerSection c;
  c.name = name;
  c.lr = 0.01;
  c.max_grad_norm = 0;
  Context& ctx = Context::cpu();
  Tensor tw(w.data(), DType::F32, Device::CPU, {n}), tg(grad.data(), DType::F32, Device::CPU, {n});
  AdamW opt(c, tw, tg, Tensor(), ctx);
  std::vector<std::vector<float>> out;
  for (int s = 0; s < steps; ++s) {
    for (int64_t i = 0; i < n; ++i) grad[i] = a[i] * (w[i] - tgt[i]);
    opt.step(c.lr, ctx);
    out.push_back(w);
  }
  return out;
}

}  // namespace

// 8-bit AdamW follows fp32 AdamW's trajectory on a quadratic: over 300 steps of lr 0.01 (the weights travel up to
// 1.0) no weight is ever more than 0.05 (5 lr) from fp32 AdamW's, the mean distance over all weights and steps is at
// most 0.005 (lr / 2), and both end within 0.05 of the optimum.
TEST(Adamw8, TracksFp32AdamWOnAQuadratic) {
  const int steps = 300;
  const auto ref = quadratic_trajectory("adamw", steps), q8 = quadratic_trajectory("adamw_8bit", steps);
  double worst = 0, sum = 0;
  for (int s = 0; s < steps; ++s)
    for (size_t i = 0; i < ref[s].size(); ++i) {
      const double d = std::fabs(double(ref[s][i]) - q8[s][i]);
      worst = std::max(worst, d);
      sum += d;
    }
  const double mean = sum / (steps * static_cast<double>(ref[0].size()));
  std::printf("|w_8bit - w_fp32| over the trajectory: max %.3g, mean %.3g\n", worst, mean);
  EXPECT_LE(worst, 0.05);
  EXPECT_LE(mean, 0.005);
  EXPECT_GT(worst, 0.0);  // the moments really are quantised
  std::mt19937 g(11);
  std::uniform_real_distribution<float> ua(0.5f, 2.0f), ut(-1.0f, 1.0f);
  for (size_t i = 0; i < ref.back().size(); ++i) {
    ua(g);
    const float t = ut(g) * (i % 3 == 0 ? 1e-2f : 1.0f);
    EXPECT_NEAR(ref.back()[i], t, 0.05) << i;
    EXPECT_NEAR(q8.back()[i], t, 0.05) << i;
  }
}

TEST(Adamw8, StateIsAboutTwoBytesPerParameter) {
  EXPECT_EQ(optimizer_state_bytes(OptimizerKind::AdamW, 1000), 8000);
  EXPECT_EQ(optimizer_state_bytes(OptimizerKind::AdamW8bit, 1000), 2 * (1000 + 4 * 4));
  EXPECT_EQ(optimizer_kind("adamw_8bit"), OptimizerKind::AdamW8bit);
  EXPECT_THROW(optimizer_kind("sgd"), Error);
}
