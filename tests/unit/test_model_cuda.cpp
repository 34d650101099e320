// The model on CUDA (skipped with a visible GTEST_SKIP where there is no GPU): BF16 working weights and F32 master
// loaded from the files, log-probabilities of the bf16 fixtures (whose weights are exactly representable, so the
// float64 golden is the exact target) at bf16-activation precision, and the training backward against the CPU
// backward of the same weights (cosine similarity per HF tensor), with and without activation checkpointing; LoRA
// adapters' log-probs and gradients against the CPU's.
// Measured on an H200: max |logprob - golden| 1.2e-2 to 1.6e-2, gradient cosine >= 0.9997.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "ops/gpu_test_util.h"
#include "parity/model_test_util.h"
#include "rlcu/lora.h"
#include "rlcu/model.h"
#include "rlcu/ops.h"
#include "rlcu/safetensors.h"

using namespace rlcu;
using namespace rlcu::test;

namespace {

PackedBatch golden_batch(const std::vector<GoldenSeq>& golden) {
  PackedBatch b;
  for (const auto& g : golden) b.add_sequence(g.ids);
  return b;
}

struct ModelRun {
  std::vector<float> logprob, entropy;
  std::vector<std::vector<float>> grads;  // per HF tensor
};

// Forward (+ backward with dlogprob = w, dentropy = u when training) of `batch` on `ctx`'s device.
ModelRun run_model(const std::string& dir, Context& ctx, const PackedBatch& batch, const std::vector<float>& w,
              const std::vector<float>& u, bool training, bool checkpointing, bool fp32_residual = false,
              bool save_head_probs = false) {
  const Device dev = ctx.device();
  ModelOptions mo;
  mo.training = training;
  auto m = Model::load(dir, mo, ctx);
  TransformerOptions opt;
  opt.max_tokens = batch.num_tokens();
  opt.act_dtype = default_act_dtype(dev);
  opt.training = training;
  opt.checkpointing = checkpointing;
  opt.fp32_residual = fp32_residual;
  opt.save_head_probs = save_head_probs;
  Transformer tf(*m, opt, ctx);
  const int64_t T = batch.num_tokens();
  auto lp = OwnedTensor::make(DType::F32, dev, {T});
  auto ent = OwnedTensor::make(DType::F32, dev, {T});
  tf.forward(lp.t, ent.t, tf.upload(batch, ctx), ctx);
  ModelRun r;
  if (training) {
    auto dw = OwnedTensor::make(DType::F32, dev, {T});
    auto du = OwnedTensor::make(DType::F32, dev, {T});
    ctx.synchronize("test: forward done");
    from_host_f32(dw.t, w);
    from_host_f32(du.t, u);
    tf.backward(dw.t, du.t, ctx);
  }
  ctx.synchronize("test: results ready");
  r.logprob = to_host_f32(lp.t);
  r.entropy = to_host_f32(ent.t);
  if (training)
    for (const HfTensor& h : m->hf_tensors()) r.grads.push_back(to_host_f32(h.grad));
  return r;
}

double cosine(const std::vector<float>& a, const std::vector<float>& b) {
  double ab = 0, aa = 0, bb = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    ab += double(a[i]) * b[i];
    aa += double(a[i]) * a[i];
    bb += double(b[i]) * b[i];
  }
  return ab / std::sqrt(aa * bb + 1e-300);
}

}  // namespace

TEST(ModelCuda, LoadsBf16WeightsAndF32Master) {
  RLCU_REQUIRE_CUDA();
  auto ctx = Context::cuda(0);
  ModelOptions mo;
  mo.training = true;
  const std::string dir = fixture_model("qwen2-tiny");
  auto m = Model::load(dir, mo, *ctx);
  EXPECT_EQ(m->weight_dtype(), DType::BF16);
  EXPECT_NE(m->flat_master().data, m->flat_weights().data);
  const SafetensorsFile st = SafetensorsFile::open(dir + "/model.safetensors");
  for (const HfTensor& h : m->hf_tensors()) {
    const SafetensorsEntry* e = st.find(h.name);
    ASSERT_NE(e, nullptr);
    std::vector<float> want(static_cast<size_t>(e->numel()));
    st.read_converted(*e, want.data(), DType::F32);
    EXPECT_EQ(to_host_f32(h.master), want) << h.name;
    const auto w = to_host_f32(h.weight);
    for (size_t i = 0; i < want.size(); ++i) ASSERT_EQ(w[i], round_to_bf16(want[i])) << h.name << " " << i;
  }
  for (float g : to_host_f32(m->flat_grads())) ASSERT_EQ(g, 0.0f);
}

TEST(ModelCuda, Bf16FixturesMatchGolden) {
  RLCU_REQUIRE_CUDA();
  auto ctx = Context::cuda(0);
  for (const std::string name : {"qwen3-tiny-bf16", "qwen2-tiny-bf16", "llama3-tiny-bf16"}) {
    const auto golden = read_golden(fixture_model(name));
    const PackedBatch b = golden_batch(golden);
    for (const bool r32 : {false, true}) {  // bf16 or F32 residual stream (rlcu score uses F32)
      const ModelRun r = run_model(fixture_model(name), *ctx, b, {}, {}, false, false, r32);
      double worst = 0.0, mean = 0.0;
      int64_t n = 0;
      for (size_t s = 0; s < golden.size(); ++s)
        for (size_t t = 0; t < golden[s].logprobs.size(); ++t) {
          const double e = std::abs(r.logprob[b.cu_seqlens[s] + t] - golden[s].logprobs[t]);
          ASSERT_TRUE(std::isfinite(e));
          worst = std::max(worst, e);
          mean += e;
          ++n;
        }
      mean /= double(n);
      std::printf("%s on CUDA (bf16 activations, %s residual): max |logprob - golden| = %.3e, mean %.3e\n",
                  name.c_str(), r32 ? "f32" : "bf16", worst, mean);
      EXPECT_LT(worst, 2e-2) << name;  // the acceptance bound for rlcu score --device cuda
      EXPECT_LT(mean, 1e-2) << name;
    }
  }
}

TEST(ModelCuda, BackwardMatchesCpu) {
  RLCU_REQUIRE_CUDA();
  auto ctx = Context::cuda(0);
  for (const std::string name : {"qwen3-tiny-bf16", "qwen2-tiny-bf16", "llama3-tiny-bf16"}) {
    SCOPED_TRACE(name);
    const std::string dir = fixture_model(name);
    std::mt19937 rng(5);
    PackedBatch b;
    std::uniform_int_distribution<int32_t> tok(0, 511);
    for (int len : {40, 1, 77, 9}) {
      std::vector<int32_t> s(static_cast<size_t>(len));
      for (auto& t : s) t = tok(rng);
      b.add_sequence(s);
    }
    std::normal_distribution<float> n01(0.0f, 1.0f);
    std::vector<float> w, u;
    for (int64_t t = 0; t < b.num_tokens(); ++t) {
      w.push_back(n01(rng));
      u.push_back(0.3f * n01(rng));
    }
    const ModelRun cpu = run_model(dir, Context::cpu(), b, w, u, true, false);
    const ModelRun gpu = run_model(dir, *ctx, b, w, u, true, false);
    const ModelRun gpu_ckpt = run_model(dir, *ctx, b, w, u, true, true);
    // The F32 residual stream, with and without checkpointing: closer to the CPU (F32) than bf16 in the forward.
    const ModelRun gpu_r32 = run_model(dir, *ctx, b, w, u, true, false, true);
    const ModelRun gpu_r32_ckpt = run_model(dir, *ctx, b, w, u, true, true, true);
    // The trainer's defaults: F32 residual and the head's saved softmax (its backward reads p and z from it).
    const ModelRun gpu_saved = run_model(dir, *ctx, b, w, u, true, false, true, true);
    EXPECT_EQ(gpu_saved.logprob, gpu_r32.logprob) << "saving the head's softmax changed the forward";
    EXPECT_EQ(gpu_saved.entropy, gpu_r32.entropy) << "saving the head's softmax changed the forward";
    double lp_err = 0.0, lp_err32 = 0.0, mean_err = 0.0, mean_err32 = 0.0;
    for (size_t t = 0; t < cpu.logprob.size(); ++t) {
      const double e = std::abs(cpu.logprob[t] - gpu.logprob[t]), e32 = std::abs(cpu.logprob[t] - gpu_r32.logprob[t]);
      lp_err = std::max(lp_err, e);
      lp_err32 = std::max(lp_err32, e32);
      mean_err += e;
      mean_err32 += e32;
      EXPECT_EQ(gpu_r32.logprob[t], gpu_r32_ckpt.logprob[t]) << "checkpointing changed the forward at " << t;
    }
    EXPECT_LT(lp_err, 5e-2);
    EXPECT_LT(lp_err32, 5e-2);
    std::printf("%s mean |dlogprob| vs CPU: bf16 residual %.3e, f32 residual %.3e\n", name.c_str(),
                mean_err / double(cpu.logprob.size()), mean_err32 / double(cpu.logprob.size()));
    const auto m = Model::load(dir, ModelOptions{}, Context::cpu());
    double worst = 1.0;
    std::string worst_name;
    for (size_t i = 0; i < cpu.grads.size(); ++i) {
      const double c = cosine(cpu.grads[i], gpu.grads[i]);
      if (c < worst) {
        worst = c;
        worst_name = m->hf_tensors()[i].name;
      }
      EXPECT_GT(c, 0.999) << m->hf_tensors()[i].name;
      EXPECT_GT(cosine(gpu.grads[i], gpu_ckpt.grads[i]), 0.9999) << m->hf_tensors()[i].name;
      EXPECT_GT(cosine(cpu.grads[i], gpu_r32.grads[i]), 0.999) << m->hf_tensors()[i].name << " (f32 residual)";
      EXPECT_GT(cosine(gpu_r32.grads[i], gpu_r32_ckpt.grads[i]), 0.9999) << m->hf_tensors()[i].name
                                                                          << " (f32 residual, checkpointing)";
      EXPECT_GT(cosine(cpu.grads[i], gpu_saved.grads[i]), 0.999) << m->hf_tensors()[i].name << " (saved head)";
      EXPECT_GT(cosine(gpu_r32.grads[i], gpu_saved.grads[i]), 0.9999) << m->hf_tensors()[i].name << " (saved head)";
    }
    std::printf("%s CUDA vs CPU: max |dlogprob| %.3e, lowest gradient cosine %.5f (%s)\n", name.c_str(), lp_err, worst,
                worst_name.c_str());
  }
}

namespace {

struct LoraRun {
  std::vector<float> logprob, ref_logprob;
  std::vector<std::vector<float>> grads;  // per PEFT tensor
};

// LoRA (all targets, rank 4) on `ctx`'s device: A from the seed (bf16-representable so that both devices use the same
// values), B set from `b_values` (bf16-representable), forward + backward, and the base-weight forward.
LoraRun run_lora(const std::string& dir, Context& ctx, const PackedBatch& batch, const std::vector<float>& w,
                 const std::vector<float>& u, bool checkpointing) {
  const Device dev = ctx.device();
  auto m = Model::load(dir, ModelOptions{}, ctx);
  LoraSpec spec;
  spec.rank = 4;
  spec.alpha = 8.0;
  spec.targets.fill(true);
  LoraAdapters lo(*m, spec, 17, true, ctx);
  std::mt19937 rng(23);
  std::normal_distribution<float> n(0.0f, 0.1f);
  for (const HfTensor& h : lo.peft_tensors()) {
    std::vector<float> v = to_host_f32(h.master);
    for (float& x : v) x = round_to_bf16(h.name.find("lora_B") != std::string::npos ? n(rng) : x);
    from_host_f32(h.master, v);
  }
  if (lo.flat_weights().data != lo.flat_master().data) ops::cast(lo.flat_weights(), lo.flat_master(), ctx);
  lo.merge(ctx);
  TransformerOptions opt;
  opt.max_tokens = batch.num_tokens();
  opt.act_dtype = default_act_dtype(dev);
  opt.training = true;
  opt.checkpointing = checkpointing;
  opt.lora = &lo;
  opt.lora_rank = spec.rank;
  Transformer tf(*m, opt, ctx);
  TransformerOptions ro;
  ro.max_tokens = batch.num_tokens();
  ro.act_dtype = default_act_dtype(dev);
  ro.base_weights = true;
  Transformer ref(*m, ro, ctx);
  const int64_t T = batch.num_tokens();
  auto lp = OwnedTensor::make(DType::F32, dev, {T});
  auto rlp = OwnedTensor::make(DType::F32, dev, {T});
  auto ent = OwnedTensor::make(DType::F32, dev, {T});
  tf.forward(lp.t, ent.t, tf.upload(batch, ctx), ctx);
  auto dw = OwnedTensor::make(DType::F32, dev, {T});
  auto du = OwnedTensor::make(DType::F32, dev, {T});
  ctx.synchronize("test: forward done");
  from_host_f32(dw.t, w);
  from_host_f32(du.t, u);
  tf.backward(dw.t, du.t, ctx);
  ref.forward(rlp.t, Tensor(), ref.upload(batch, ctx), ctx);
  ctx.synchronize("test: results ready");
  LoraRun r;
  r.logprob = to_host_f32(lp.t);
  r.ref_logprob = to_host_f32(rlp.t);
  for (const HfTensor& h : lo.peft_tensors()) r.grads.push_back(to_host_f32(h.grad));
  return r;
}

}  // namespace

// LoRA on CUDA against the CPU: log-probs of the effective weights, every adapter gradient (cosine), with and
// without checkpointing; the reference forward on the base weights gives the bits of a model without adapters.
TEST(ModelCuda, LoraMatchesCpu) {
  RLCU_REQUIRE_CUDA();
  auto ctx = Context::cuda(0);
  for (const std::string name : {"qwen3-tiny-bf16", "qwen2-tiny-bf16", "llama3-tiny-bf16"}) {
    SCOPED_TRACE(name);
    const std::string dir = fixture_model(name);
    std::mt19937 rng(8);
    PackedBatch b;
    std::uniform_int_distribution<int32_t> tok(0, 511);
    for (int len : {33, 1, 50}) {
      std::vector<int32_t> s(static_cast<size_t>(len));
      for (auto& t : s) t = tok(rng);
      b.add_sequence(s);
    }
    std::normal_distribution<float> n01(0.0f, 1.0f);
    std::vector<float> w, u;
    for (int64_t t = 0; t < b.num_tokens(); ++t) {
      w.push_back(n01(rng));
      u.push_back(0.3f * n01(rng));
    }
    const LoraRun cpu = run_lora(dir, Context::cpu(), b, w, u, false);
    const LoraRun gpu = run_lora(dir, *ctx, b, w, u, false);
    const LoraRun gpu_ckpt = run_lora(dir, *ctx, b, w, u, true);
    double lp_err = 0.0;
    for (size_t t = 0; t < cpu.logprob.size(); ++t) lp_err = std::max(lp_err, double(std::abs(cpu.logprob[t] - gpu.logprob[t])));
    EXPECT_LT(lp_err, 5e-2);
    EXPECT_EQ(gpu.logprob, gpu_ckpt.logprob) << "checkpointing changed the forward";
    const ModelRun base = run_model(dir, *ctx, b, w, u, false, false);
    EXPECT_EQ(gpu.ref_logprob, base.logprob) << "the base-weight forward differs from a model without adapters";
    EXPECT_NE(gpu.ref_logprob, gpu.logprob);
    double worst = 1.0;
    for (size_t i = 0; i < cpu.grads.size(); ++i) {
      worst = std::min(worst, cosine(cpu.grads[i], gpu.grads[i]));
      EXPECT_GT(cosine(cpu.grads[i], gpu.grads[i]), 0.999) << i;
      EXPECT_GT(cosine(gpu.grads[i], gpu_ckpt.grads[i]), 0.9999) << i << " (checkpointing)";
    }
    std::printf("%s LoRA CUDA vs CPU: max |dlogprob| %.3e, lowest adapter-gradient cosine %.5f\n", name.c_str(),
                lp_err, worst);
  }
}
