// LoRA adapters (include/rlcu/lora.h) on the CPU:
//   - the adapter gradients of the Transformer backward against central differences of the forward (loss as in
//     test_model_grad.cpp), over every PEFT tensor, for all targets and for subsets (q/k/v partly adapted: the
//     separate projection path; gate without up), with and without activation checkpointing;
//   - B = 0 leaves the effective weights (and so the log-probs) bit-identical to the base; the base view stays the
//     base after updates (the reference model's forward);
//   - merge: the effective weights are W0 + (alpha/r) B A; `merge_lora_to_dir` writes them as a model directory;
//   - PEFT files: save / load round trip (bit-exact masters), and adapters that do not fit the base are errors that
//     name the file and the tensor (shapes of another base, a rank other than adapter_config.json's, a tensor of a
//     module that is not a target, an unknown target module).
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "parity/model_test_util.h"
#include "rlcu/lora.h"
#include "rlcu/model.h"
#include "rlcu/ops.h"
#include "rlcu/safetensors.h"

using namespace rlcu;
using namespace rlcu::test;

namespace {

Context& cpu() { return Context::cpu(); }

LoraSpec spec_of(int64_t rank, double alpha, const std::string& targets) {
  LoraSpec s;
  s.rank = rank;
  s.alpha = alpha;
  s.targets = parse_lora_targets(targets, "test");
  return s;
}

// Random B (A is already random): every adapter then has nonzero gradients in A and B.
void randomize_b(LoraAdapters& lo, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> n(0.0f, 0.2f);
  for (const HfTensor& h : lo.peft_tensors()) {
    if (h.name.find("lora_B") == std::string::npos) continue;
    float* p = h.master.ptr<float>();
    for (int64_t i = 0; i < h.master.numel(); ++i) p[i] = n(rng);
  }
  lo.merge(cpu());
}

struct Problem {
  std::unique_ptr<Model> model;
  std::unique_ptr<LoraAdapters> lora;
  PackedBatch batch;
  std::vector<float> w, u;
};

Problem make_problem(const std::string& name, const LoraSpec& spec, uint32_t seed) {
  Problem p;
  p.model = Model::load(fixture_model(name), ModelOptions{}, cpu());
  p.lora = std::make_unique<LoraAdapters>(*p.model, spec, seed, true, cpu());
  randomize_b(*p.lora, seed + 1);
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

std::vector<float> logprobs(Transformer& tf, const PackedBatch& batch) {
  auto lp = OwnedTensor::make(DType::F32, Device::CPU, {batch.num_tokens()});
  tf.forward(lp.t, Tensor(), tf.upload(batch, cpu()), cpu(), Transformer::ForwardUse::ScoreOnly);
  return to_host_f32(lp.t);
}

double loss(Transformer& tf, const Problem& p) {
  const int64_t T = p.batch.num_tokens();
  auto lp = OwnedTensor::make(DType::F32, Device::CPU, {T});
  auto ent = OwnedTensor::make(DType::F32, Device::CPU, {T});
  tf.forward(lp.t, ent.t, tf.upload(p.batch, cpu()), cpu());
  double s = 0.0;
  for (int64_t t = 0; t < T; ++t) s += double(p.w[t]) * lp.t.ptr<float>()[t] + double(p.u[t]) * ent.t.ptr<float>()[t];
  return s;
}

TransformerOptions train_options(const LoraAdapters& lo, bool checkpointing) {
  TransformerOptions o;
  o.max_tokens = 32;
  o.training = true;
  o.checkpointing = checkpointing;
  o.lora = const_cast<LoraAdapters*>(&lo);
  o.lora_rank = lo.spec().rank;
  return o;
}

void check_gradients(const std::string& name, const std::string& targets, bool checkpointing) {
  Problem p = make_problem(name, spec_of(4, 8.0, targets), 321);
  Transformer tf(*p.model, train_options(*p.lora, checkpointing), cpu());
  const int64_t T = p.batch.num_tokens();
  p.lora->zero_grads(cpu());
  loss(tf, p);
  tf.backward(Tensor(p.w.data(), DType::F32, Device::CPU, {T}), Tensor(p.u.data(), DType::F32, Device::CPU, {T}),
              cpu());
  const std::vector<float> grad = to_host_f32(p.lora->flat_grads());
  float* w = p.lora->flat_master().ptr<float>();
  std::mt19937 rng(7);
  std::normal_distribution<double> n01(0.0, 1.0);
  const double eps = 3e-2;
  double worst = 0.0;
  for (const HfTensor& h : p.lora->peft_tensors()) {
    const int64_t b = h.offset, e = h.offset + h.master.numel();
    std::vector<double> d(static_cast<size_t>(e - b));
    double norm = 0.0;
    for (auto& x : d) {
      x = n01(rng);
      norm += x * x;
    }
    for (auto& x : d) x /= std::sqrt(norm);
    const std::vector<float> saved(w + b, w + e);
    std::vector<double> applied(d.size(), 0.0);
    auto at = [&](double s) {
      for (size_t i = 0; i < d.size(); ++i) {
        w[b + i] = static_cast<float>(saved[i] + s * d[i]);
        applied[i] += (s > 0 ? 1.0 : -1.0) * (double(w[b + i]) - double(saved[i]));
      }
      p.lora->merge(cpu());
      return loss(tf, p);
    };
    const double lp = at(eps), lm = at(-eps);
    std::copy(saved.begin(), saved.end(), w + b);
    p.lora->merge(cpu());
    double analytic = 0.0;
    for (size_t i = 0; i < d.size(); ++i) analytic += double(grad[b + i]) * applied[i] / (2 * eps);
    const double fd = (lp - lm) / (2 * eps);
    const double err = std::abs(fd - analytic) / std::max({std::abs(fd), std::abs(analytic), 1e-2});
    worst = std::max(worst, err);
    EXPECT_LT(err, 1e-2) << name << " " << h.name << ": finite difference " << fd << ", backward " << analytic;
  }
  std::printf("%s [%s]%s: worst relative error %.2e over %zu adapter tensors\n", name.c_str(), targets.c_str(),
              checkpointing ? " (checkpointing)" : "", worst, p.lora->peft_tensors().size());
}

// W0 + s B A of target t in layer l, in double.
std::vector<double> merged(const Model& m, const LoraAdapters& lo, int64_t l, LoraTarget t) {
  const Tensor w0 = lora_target_view(m.base_weights().layers[static_cast<size_t>(l)], m.config(), t);
  const LoraViews& v = lo.master(l, t);
  const int64_t out = v.b.size(0), in = v.a.size(1), r = v.a.size(0);
  std::vector<double> r64(static_cast<size_t>(out * in));
  for (int64_t i = 0; i < out; ++i)
    for (int64_t j = 0; j < in; ++j) {
      double s = 0;
      for (int64_t k = 0; k < r; ++k) s += double(v.b.ptr<float>()[i * r + k]) * v.a.ptr<float>()[k * in + j];
      r64[static_cast<size_t>(i * in + j)] = w0.ptr<float>()[i * in + j] + lo.spec().scaling() * s;
    }
  return r64;
}

// Expects `f` to throw an rlcu::Error whose message holds every one of `parts`.
template <class F>
void expect_error(F&& f, const std::vector<std::string>& parts) {
  try {
    f();
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const std::string& s : parts) EXPECT_NE(msg.find(s), std::string::npos) << "`" << s << "` not in: " << msg;
  }
}

}  // namespace

TEST(LoraGrad, FiniteDifferencesQwen3AllTargets) { check_gradients("qwen3-tiny", "all", false); }
TEST(LoraGrad, FiniteDifferencesQwen2SomeTargets) { check_gradients("qwen2-tiny", "q_proj,v_proj,gate_proj,down_proj", false); }
TEST(LoraGrad, FiniteDifferencesLlama3Checkpointed) { check_gradients("llama3-tiny", "all", true); }
TEST(LoraGrad, FiniteDifferencesQwen3AttentionOnlyCheckpointed) {
  check_gradients("qwen3-tiny", "k_proj,o_proj,up_proj", true);
}

// Fresh adapters (B = 0) leave the log-probs bit for bit those of the base; after B changes, a Transformer over the
// base weights (the reference model) still gives them, and the policy's differ.
TEST(Lora, ZeroBIsTheBaseAndTheBaseViewStays) {
  auto base = Model::load(fixture_model("qwen3-tiny"), ModelOptions{}, cpu());
  auto model = Model::load(fixture_model("qwen3-tiny"), ModelOptions{}, cpu());
  LoraAdapters lo(*model, spec_of(4, 8.0, "all"), 3, true, cpu());
  PackedBatch batch;
  batch.add_sequence({1, 5, 9, 2, 7, 3});
  batch.add_sequence({4, 4, 8});
  TransformerOptions o;
  o.max_tokens = 16;
  Transformer tb(*base, o, cpu());
  Transformer tp(*model, o, cpu());
  const std::vector<float> want = logprobs(tb, batch);
  EXPECT_EQ(logprobs(tp, batch), want);
  randomize_b(lo, 11);
  TransformerOptions ro = o;
  ro.base_weights = true;
  Transformer tr(*model, ro, cpu());
  EXPECT_EQ(logprobs(tr, batch), want);
  EXPECT_NE(logprobs(tp, batch), want);
}

// The head's backward without a weight gradient (the frozen head) gives the same dhidden (CPU twin).
TEST(Lora, LogprobBackwardWithoutHeadGradient) {
  const int64_t T = 5, H = 8, V = 11;
  std::mt19937 rng(3);
  std::normal_distribution<float> n(0.0f, 1.0f);
  std::vector<float> hidden(T * H), weight(V * H), dlp(T), ent(T), lp(T), lse(T), dh1(T * H), dh0(T * H), dw(V * H);
  for (auto* v : {&hidden, &weight, &dlp})
    for (float& x : *v) x = n(rng);
  std::vector<int32_t> tg = {1, 4, -1, 10, 0};
  auto f = [](std::vector<float>& v, std::initializer_list<int64_t> d) { return Tensor(v.data(), DType::F32, Device::CPU, d); };
  const Tensor targets(tg.data(), DType::I32, Device::CPU, {T});
  ops::logprob_fwd(f(lp, {T}), f(ent, {T}), f(lse, {T}), f(hidden, {T, H}), f(weight, {V, H}), targets, {}, cpu());
  ops::logprob_bwd(f(dh1, {T, H}), f(dw, {V, H}), f(dlp, {T}), Tensor(), f(hidden, {T, H}), f(weight, {V, H}), targets,
                   f(lse, {T}), {}, cpu());
  ops::logprob_bwd(f(dh0, {T, H}), Tensor(), f(dlp, {T}), Tensor(), f(hidden, {T, H}), f(weight, {V, H}), targets,
                   f(lse, {T}), {}, cpu());
  EXPECT_EQ(dh0, dh1);
  EXPECT_NE(dw, std::vector<float>(V * H, 0.0f));
}

TEST(Lora, MergeIsW0PlusScaledBA) {
  auto model = Model::load(fixture_model("qwen2-tiny"), ModelOptions{}, cpu());
  LoraAdapters lo(*model, spec_of(3, 5.0, "all"), 5, false, cpu());
  randomize_b(lo, 6);
  const ModelConfig& c = model->config();
  for (int64_t l = 0; l < c.num_layers; ++l)
    for (int t = 0; t < kLoraTargets; ++t) {
      const LoraTarget tt = static_cast<LoraTarget>(t);
      const std::vector<double> want = merged(*model, lo, l, tt);
      const Tensor got = lora_target_view(model->weights().layers[static_cast<size_t>(l)], c, tt);
      ASSERT_EQ(got.numel(), static_cast<int64_t>(want.size()));
      for (size_t i = 0; i < want.size(); ++i)
        ASSERT_NEAR(got.ptr<float>()[i], want[i], 1e-5 * (1 + std::abs(want[i]))) << lora_target_name(tt) << " " << i;
    }
  // The fused q/k/v view covers the effective q, k, v when all three are targets.
  const LayerWeights& L0 = model->weights().layers[0];
  ASSERT_FALSE(L0.qkv.empty());
  EXPECT_EQ(L0.qkv.data, L0.q.data);
  EXPECT_NE(L0.q.data, model->base_weights().layers[0].q.data);
}

// save_peft / load_peft round trip, and merge-lora's model directory equals W0 + s B A.
TEST(Lora, PeftRoundTripAndMergedDirectory) {
  TempDir tmp("lora_peft");
  const std::string base_dir = fixture_model("llama3-tiny");
  auto model = Model::load(base_dir, ModelOptions{}, cpu());
  const LoraSpec spec = spec_of(4, 16.0, "q_proj,v_proj,o_proj,up_proj,down_proj");
  LoraAdapters lo(*model, spec, 1, false, cpu());
  randomize_b(lo, 2);
  const std::string ad = tmp.file("adapter");
  fs::create_directories(ad);
  lo.save_peft(ad, base_dir);
  const nlohmann::json cfg = read_json(ad + "/adapter_config.json");
  EXPECT_EQ(cfg["peft_type"], "LORA");
  EXPECT_EQ(cfg["r"], 4);
  EXPECT_EQ(cfg["lora_alpha"], 16.0);
  EXPECT_EQ(cfg["task_type"], "CAUSAL_LM");
  EXPECT_EQ(cfg["bias"], "none");
  EXPECT_EQ(cfg["base_model_name_or_path"], base_dir);
  EXPECT_EQ(cfg["target_modules"], nlohmann::json({"q_proj", "v_proj", "o_proj", "up_proj", "down_proj"}));
  const SafetensorsFile f = SafetensorsFile::open(ad + "/adapter_model.safetensors");
  const SafetensorsEntry* a = f.find("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight");
  const SafetensorsEntry* b = f.find("base_model.model.model.layers.1.mlp.down_proj.lora_B.weight");
  ASSERT_TRUE(a && b);
  EXPECT_EQ(a->shape, (std::vector<int64_t>{4, 64}));
  EXPECT_EQ(b->shape, (std::vector<int64_t>{64, 4}));
  EXPECT_EQ(a->dtype, "F32");
  EXPECT_EQ(f.tensors().size(), 2u * 5u * 2u);

  auto model2 = Model::load(base_dir, ModelOptions{}, cpu());
  LoraAdapters lo2(*model2, spec, 99, false, cpu());
  lo2.load_peft(ad, cpu());
  EXPECT_EQ(to_host_f32(lo2.flat_master()), to_host_f32(lo.flat_master()));

  const std::string out = tmp.file("merged");
  merge_lora_to_dir(ad, out, "");  // the base from base_model_name_or_path
  EXPECT_TRUE(fs::is_regular_file(out + "/config.json"));
  auto mm = Model::load(out, ModelOptions{}, cpu());
  const ModelConfig& c = mm->config();
  for (int64_t l = 0; l < c.num_layers; ++l)
    for (int t = 0; t < kLoraTargets; ++t) {
      const LoraTarget tt = static_cast<LoraTarget>(t);
      const Tensor got = lora_target_view(mm->weights().layers[static_cast<size_t>(l)], c, tt);
      const Tensor w0 = lora_target_view(model->base_weights().layers[static_cast<size_t>(l)], c, tt);
      if (!lo.has(tt)) {  // not a target: the base's exact values
        for (int64_t i = 0; i < got.numel(); ++i) ASSERT_EQ(got.ptr<float>()[i], w0.ptr<float>()[i]);
        continue;
      }
      const std::vector<double> want = merged(*model, lo, l, tt);
      double worst = 0;
      for (size_t i = 0; i < want.size(); ++i)
        worst = std::max(worst, std::abs(got.ptr<float>()[i] - want[i]) / (1 + std::abs(want[i])));
      EXPECT_LT(worst, 1e-6) << "layer " << l << " " << lora_target_name(tt);
    }
  EXPECT_EQ(to_host_f32(mm->weights().embed), to_host_f32(model->base_weights().embed));
}

TEST(Lora, AdaptersThatDoNotFitTheBaseAreErrors) {
  TempDir tmp("lora_errors");
  // An adapter of qwen2-tiny (2 KV heads, intermediate 160) on llama3-tiny (4 KV heads, intermediate 128).
  const std::string ad = tmp.file("qwen2");
  fs::create_directories(ad);
  {
    auto q2 = Model::load(fixture_model("qwen2-tiny"), ModelOptions{}, cpu());
    LoraAdapters lo(*q2, spec_of(4, 8.0, "all"), 1, false, cpu());
    lo.save_peft(ad, fixture_model("qwen2-tiny"));
  }
  auto llama = Model::load(fixture_model("llama3-tiny"), ModelOptions{}, cpu());
  LoraAdapters lo(*llama, spec_of(4, 8.0, "all"), 1, false, cpu());
  expect_error([&] { lo.load_peft(ad, cpu()); },
               {ad + "/adapter_model.safetensors", "base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight",
                "[32, 4]", "[64, 4]"});

  // Rank 2 tensors under a config that says r = 4.
  const std::string r2 = tmp.file("rank2");
  fs::create_directories(r2);
  {
    auto m = Model::load(fixture_model("llama3-tiny"), ModelOptions{}, cpu());
    LoraAdapters l2(*m, spec_of(2, 8.0, "all"), 1, false, cpu());
    l2.save_peft(r2, fixture_model("llama3-tiny"));
    nlohmann::json cfg = read_json(r2 + "/adapter_config.json");
    cfg["r"] = 4;
    write_json(r2 + "/adapter_config.json", cfg);
  }
  expect_error([&] { lo.load_peft(r2, cpu()); },
               {r2 + "/adapter_model.safetensors", "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
                "rank 2", "r = 4"});

  // A tensor of a module that is not among the targets (here: not a linear layer at all).
  const std::string extra = tmp.file("extra");
  fs::create_directories(extra);
  {
    std::vector<SafetensorsWriteItem> items;
    for (const HfTensor& h : lo.peft_tensors()) items.push_back({h.name, h.master, DType::F32, h.shape});
    auto t = OwnedTensor::make(DType::F32, Device::CPU, {4, 64});
    cpu().zero(t.t);
    items.push_back({"base_model.model.model.layers.0.mlp.foo_proj.lora_A.weight", t.t, DType::F32, {4, 64}});
    write_safetensors(extra + "/adapter_model.safetensors", items, {{"format", "pt"}});
    fs::create_directories(tmp.file("cfg_only"));
    lo.save_peft(tmp.file("cfg_only"), "");
    fs::copy_file(tmp.file("cfg_only") + "/adapter_config.json", extra + "/adapter_config.json");
  }
  expect_error([&] { lo.load_peft(extra, cpu()); },
               {extra + "/adapter_model.safetensors", "base_model.model.model.layers.0.mlp.foo_proj.lora_A.weight",
                "unexpected tensor"});

  // An unknown target module in adapter_config.json, and rank/alpha/targets that differ from the run's.
  nlohmann::json cfg = read_json(ad + "/adapter_config.json");
  cfg["target_modules"] = {"q_proj", "lm_head"};
  write_json(ad + "/adapter_config.json", cfg);
  expect_error([&] { read_peft_config(ad); }, {ad + "/adapter_config.json", "target_modules", "lm_head"});
  cfg["target_modules"] = {"q_proj", "v_proj"};
  write_json(ad + "/adapter_config.json", cfg);
  expect_error([&] { lo.load_peft(ad, cpu()); }, {ad + "/adapter_config.json", "q_proj,v_proj", "lora.targets"});
  expect_error([&] { parse_lora_targets("q_proj,mlp", "lora.targets"); }, {"lora.targets", "`mlp`"});
}
