// Learning-rate schedules and the AdamW driver (norm, clipping, update) on the CPU against a float64 reference.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

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
