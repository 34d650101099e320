// Transformer backward on the CPU against finite differences of the forward: the loss is
// L = sum_t w_t logprob_t + sum_t u_t entropy_t over a packed batch of several sequences (one of a single token),
// and for every parameter tensor (and for all parameters at once) the central difference of L along a random
// unit direction d, (L(theta + eps d) - L(theta - eps d)) / (2 eps), must match <grad, d>.
// Also: activation checkpointing gives the same gradients, gradients accumulate across backward calls, packing
// does not change log-probabilities, and batch errors are reported.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>

#include "parity/model_test_util.h"
#include "rlcu/model.h"

using namespace rlcu;
using namespace rlcu::test;

namespace {

struct Problem {
  std::unique_ptr<Model> model;
  PackedBatch batch;
  std::vector<float> w, u;  // loss weights of logprob and entropy per token
};

Problem make_problem(const std::string& name, uint32_t seed) {
  Problem p;
  p.model = Model::load(fixture_model(name), ModelOptions{true}, Context::cpu());
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> tok(0, static_cast<int32_t>(p.model->config().vocab_size) - 1);
  for (int len : {7, 1, 12, 5}) {
    std::vector<int32_t> s(static_cast<size_t>(len));
    for (auto& t : s) t = tok(rng);
    p.batch.add_sequence(s);
  }
  std::normal_distribution<float> n01(0.0f, 1.0f);
  for (int64_t t = 0; t < p.batch.num_tokens(); ++t) {
    p.w.push_back(n01(rng));
    p.u.push_back(0.5f * n01(rng));
  }
  return p;
}

double loss(Transformer& tf, const Problem& p) {
  const int64_t T = p.batch.num_tokens();
  auto lp = OwnedTensor::make(DType::F32, Device::CPU, {T});
  auto ent = OwnedTensor::make(DType::F32, Device::CPU, {T});
  const DeviceBatch b = tf.upload(p.batch, Context::cpu());
  tf.forward(lp.t, ent.t, b, Context::cpu());
  double s = 0.0;
  for (int64_t t = 0; t < T; ++t) s += double(p.w[t]) * lp.t.ptr<float>()[t] + double(p.u[t]) * ent.t.ptr<float>()[t];
  return s;
}

// Zeroes the gradients, runs forward + backward, returns the flat gradient.
std::vector<float> gradients(Transformer& tf, Problem& p) {
  const int64_t T = p.batch.num_tokens();
  p.model->zero_grads(Context::cpu());
  loss(tf, p);
  tf.backward(Tensor(p.w.data(), DType::F32, Device::CPU, {T}), Tensor(p.u.data(), DType::F32, Device::CPU, {T}),
              Context::cpu());
  return to_host_f32(p.model->flat_grads());
}

struct FdResult {
  double fd, analytic;
};

// Central difference along a random unit direction over flat elements [begin, end) of the weights.
FdResult directional(Transformer& tf, const Problem& p, const std::vector<float>& grad, int64_t begin, int64_t end,
                     std::mt19937& rng, double eps) {
  float* w = p.model->flat_weights().ptr<float>();
  std::normal_distribution<double> n01(0.0, 1.0);
  std::vector<double> d(static_cast<size_t>(end - begin));
  double norm = 0.0;
  for (auto& x : d) {
    x = n01(rng);
    norm += x * x;
  }
  norm = std::sqrt(norm);
  for (auto& x : d) x /= norm;
  const std::vector<float> saved(w + begin, w + end);
  // The analytic side uses the perturbation actually applied after float rounding: <grad, (d+ - d-)> / (2 eps).
  std::vector<double> applied(d.size());
  auto set = [&](double s) {
    for (size_t i = 0; i < d.size(); ++i) {
      w[begin + i] = static_cast<float>(saved[i] + s * d[i]);
      applied[i] += (s > 0 ? 1.0 : -1.0) * (double(w[begin + i]) - double(saved[i]));
    }
  };
  set(eps);
  const double lp = loss(tf, p);
  set(-eps);
  const double lm = loss(tf, p);
  std::copy(saved.begin(), saved.end(), w + begin);
  double analytic = 0.0;
  for (size_t i = 0; i < d.size(); ++i) analytic += double(grad[begin + i]) * applied[i] / (2 * eps);
  return {(lp - lm) / (2 * eps), analytic};
}

void check_gradients(const std::string& name, bool checkpointing) {
  Problem p = make_problem(name, 1234);
  TransformerOptions opt;
  opt.max_tokens = 32;
  opt.training = true;
  opt.checkpointing = checkpointing;
  Transformer tf(*p.model, opt, Context::cpu());
  const std::vector<float> grad = gradients(tf, p);
  std::mt19937 rng(99);
  // A unit direction and eps = 3e-2 balance truncation (O(eps^2)) against the float32 rounding of L (~1e-6 |L| / eps);
  // measured errors are below 2e-3 for every tensor of the three fixtures.
  const double eps = 3e-2;
  double worst = 0.0;
  for (const HfTensor& h : p.model->hf_tensors()) {
    const FdResult r = directional(tf, p, grad, h.offset, h.offset + h.weight.numel(), rng, eps);
    const double err = std::abs(r.fd - r.analytic) / std::max({std::abs(r.fd), std::abs(r.analytic), 1e-2});
    worst = std::max(worst, err);
    EXPECT_LT(err, 1e-2) << name << " " << h.name << ": finite difference " << r.fd << ", backward " << r.analytic;
  }
  const FdResult all = directional(tf, p, grad, 0, p.model->flat_weights().numel(), rng, eps);
  const double err = std::abs(all.fd - all.analytic) / std::max(std::abs(all.fd), std::abs(all.analytic));
  EXPECT_LT(err, 1e-2) << name << " all parameters: finite difference " << all.fd << ", backward " << all.analytic;
  std::printf("%s%s: worst per-tensor relative error %.2e, whole model %.2e (directional derivative %.4f)\n",
              name.c_str(), checkpointing ? " (checkpointing)" : "", worst, err, all.analytic);
}

}  // namespace

TEST(ModelGrad, FiniteDifferencesQwen3) { check_gradients("qwen3-tiny", false); }
TEST(ModelGrad, FiniteDifferencesQwen2) { check_gradients("qwen2-tiny", false); }
TEST(ModelGrad, FiniteDifferencesLlama3) { check_gradients("llama3-tiny", false); }
TEST(ModelGrad, FiniteDifferencesCheckpointedQwen3) { check_gradients("qwen3-tiny", true); }

TEST(ModelGrad, CheckpointingAndAccumulation) {
  for (const std::string name : {"qwen3-tiny", "qwen2-tiny"}) {
    SCOPED_TRACE(name);
    Problem p = make_problem(name, 7);
    TransformerOptions opt;
    opt.max_tokens = 25;
    opt.training = true;
    Transformer full(*p.model, opt, Context::cpu());
    opt.checkpointing = true;
    Transformer ckpt(*p.model, opt, Context::cpu());
    EXPECT_LT(ckpt.activation_bytes(), full.activation_bytes());
    const auto g_full = gradients(full, p);
    const auto g_ckpt = gradients(ckpt, p);
    ASSERT_EQ(g_full.size(), g_ckpt.size());
    double scale = 0.0, diff = 0.0;
    for (size_t i = 0; i < g_full.size(); ++i) {
      scale = std::max(scale, double(std::abs(g_full[i])));
      diff = std::max(diff, double(std::abs(g_full[i] - g_ckpt[i])));
    }
    EXPECT_GT(scale, 0.0);
    EXPECT_LE(diff, 1e-6 * scale);

    // A second backward without zeroing adds the same gradient again.
    const int64_t T = p.batch.num_tokens();
    loss(full, p);
    full.backward(Tensor(p.w.data(), DType::F32, Device::CPU, {T}), Tensor(p.u.data(), DType::F32, Device::CPU, {T}),
                  Context::cpu());
    const auto g2 = to_host_f32(p.model->flat_grads());
    for (size_t i = 0; i < g2.size(); ++i) ASSERT_NEAR(g2[i], 2.0f * g_full[i], 1e-5 * scale) << i;

    // Without dentropy only the logprob term flows back.
    p.model->zero_grads(Context::cpu());
    loss(full, p);
    full.backward(Tensor(p.w.data(), DType::F32, Device::CPU, {T}), Tensor(), Context::cpu());
    const auto g_lp = to_host_f32(p.model->flat_grads());
    std::fill(p.u.begin(), p.u.end(), 0.0f);
    const auto g_u0 = gradients(full, p);
    for (size_t i = 0; i < g_lp.size(); ++i) ASSERT_NEAR(g_lp[i], g_u0[i], 1e-6 * scale) << i;
  }
}

TEST(ModelForward, PackingDoesNotChangeLogprobs) {
  const auto m = Model::load(fixture_model("llama3-tiny"), ModelOptions{}, Context::cpu());
  const auto golden = read_golden(fixture_model("llama3-tiny"));
  TransformerOptions opt;
  opt.max_tokens = 256;
  Transformer tf(*m, opt, Context::cpu());
  auto lp = OwnedTensor::make(DType::F32, Device::CPU, {opt.max_tokens});
  PackedBatch all;
  for (const auto& g : golden) all.add_sequence(g.ids);
  tf.forward(lp.t.slice_rows(0, all.num_tokens()), Tensor(), tf.upload(all, Context::cpu()), Context::cpu());
  const std::vector<float> packed = to_host_f32(lp.t.slice_rows(0, all.num_tokens()));
  for (size_t s = 0; s < golden.size(); ++s) {
    PackedBatch one;
    one.add_sequence(golden[s].ids);
    const Tensor out = lp.t.slice_rows(0, one.num_tokens());
    tf.forward(out, Tensor(), tf.upload(one, Context::cpu()), Context::cpu());
    const std::vector<float> single = to_host_f32(out);
    for (int64_t t = 0; t < one.num_tokens(); ++t)
      EXPECT_NEAR(single[t], packed[all.cu_seqlens[s] + t], 1e-6) << "sequence " << s << " token " << t;
    EXPECT_EQ(single.back(), 0.0f);  // no target after the last token
  }
}

// A training driver's score-only forward (recomputed old log-probs) skips the head's saved softmax but gives the
// log-probs of a forward for backward bit for bit, and no backward may follow it.
TEST(ModelForward, ScoreOnlyGivesTheSameBitsAndNoBackward) {
  Problem p = make_problem("qwen3-tiny", 5);
  TransformerOptions opt;
  opt.max_tokens = 32;
  opt.training = true;
  opt.save_head_probs = true;
  Transformer tf(*p.model, opt, Context::cpu());
  const int64_t T = p.batch.num_tokens();
  auto lp = OwnedTensor::make(DType::F32, Device::CPU, {T});
  const DeviceBatch b = tf.upload(p.batch, Context::cpu());
  tf.forward(lp.t, Tensor(), b, Context::cpu(), Transformer::ForwardUse::ScoreOnly);
  const std::vector<float> scored = to_host_f32(lp.t);
  const Tensor d(p.w.data(), DType::F32, Device::CPU, {T});
  EXPECT_THROW(tf.backward(d, Tensor(), Context::cpu()), Error);
  tf.forward(lp.t, Tensor(), b, Context::cpu());
  const std::vector<float> trained = to_host_f32(lp.t);
  ASSERT_EQ(scored.size(), trained.size());
  EXPECT_EQ(0, std::memcmp(scored.data(), trained.data(), scored.size() * sizeof(float)));
  tf.backward(d, Tensor(), Context::cpu());  // a forward for backward allows one
}

TEST(ModelForward, BatchErrors) {
  const auto m = Model::load(fixture_model("qwen3-tiny"), ModelOptions{}, Context::cpu());
  TransformerOptions opt;
  opt.max_tokens = 8;
  Transformer tf(*m, opt, Context::cpu());
  PackedBatch b;
  b.add_sequence(std::vector<int32_t>(9, 1));
  EXPECT_THROW(tf.upload(b, Context::cpu()), Error);
  b.clear();
  b.add_sequence({1, 2, 512});
  try {
    tf.upload(b, Context::cpu());
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("512"), std::string::npos) << e.what();
  }
  EXPECT_THROW(b.add_sequence({}), Error);
  EXPECT_THROW(tf.upload(PackedBatch{}, Context::cpu()), Error);
  opt.training = true;
  EXPECT_THROW(Transformer(*m, opt, Context::cpu()), Error);  // loaded without gradients
}
