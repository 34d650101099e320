// Checkpoints on the CPU with the qwen3-tiny fixture: bit-exact round trip of master weights, Adam moments and
// trainer state; byte-identical files for the same state; the saved model reloads with Model::load as the master
// rounded to bf16; tied embeddings stored once; atomicity (leftover .tmp directories, incomplete checkpoints, a
// stale `latest`); keep_checkpoints pruning; errors naming the file and tensor; the stop-signal handlers. On a GPU:
// the same round trip with CUDA tensors (F32 master, BF16 working weights recomputed from it).
#include <gtest/gtest.h>

#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include "rlcu/checkpoint.h"
#include "rlcu/config.h"
#include "rlcu/data.h"
#include "rlcu/model.h"
#include "rlcu/ops.h"
#include "rlcu/optimizer.h"
#include "rlcu/safetensors.h"
#include "rlcu/signals.h"
#include "ops/gpu_test_util.h"

using namespace rlcu;
namespace fs = std::filesystem;

namespace {

std::string fixture_model(const std::string& name) { return std::string(RLCU_TEST_FIXTURES) + "/models/" + name; }

std::string fresh_dir() {
  char tmpl[] = "/tmp/rlcu_ckpt_XXXXXX";
  const char* d = mkdtemp(tmpl);
  if (!d) throw std::runtime_error("mkdtemp failed");
  return d;
}

std::string read_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

bool same_bits(const Tensor& a, const Tensor& b) {
  return a.nbytes() == b.nbytes() && std::memcmp(a.data, b.data, a.nbytes()) == 0;
}

// A policy with an optimizer that has taken `steps` AdamW steps on random gradients.
struct Trained {
  std::unique_ptr<Model> model;
  std::unique_ptr<AdamW> opt;
  OptimizerSection cfg;
};

void fill_random_grads(const Model& m, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.f, 1.f);
  // Only the parameters (the padding between them stays zero, as the transformer's backward leaves it).
  for (const HfTensor& h : m.hf_tensors()) {
    float* g = h.grad.ptr<float>();
    for (int64_t i = 0; i < h.grad.numel(); ++i) g[i] = nd(rng) * 0.01f;
  }
}

Trained make_trained(const std::string& name, int steps) {
  Trained t;
  t.model = Model::load(fixture_model(name), ModelOptions{true}, Context::cpu());
  t.cfg.lr = 1e-3;
  t.cfg.weight_decay = 0.01;
  t.opt = std::make_unique<AdamW>(t.cfg, t.model->flat_master(), t.model->flat_grads(), Tensor(), Context::cpu());
  for (int s = 0; s < steps; ++s) {
    fill_random_grads(*t.model, 100u + static_cast<uint32_t>(s));
    t.opt->step(t.cfg.lr, Context::cpu());
  }
  return t;
}

CheckpointWrite write_of(const Trained& t, const std::string& run, int64_t step) {
  CheckpointWrite w;
  w.run_dir = run;
  w.step = step;
  w.model = t.model.get();
  w.optimizer = t.opt.get();
  w.seed = 1234;
  DataCursor cur;
  cur.epoch = 1;
  cur.position = 5;
  cur.dataset_size = 17;
  cur.seed = 1234;
  w.data_cursor = cur.to_json();
  w.config = config_to_json(parse_config(R"({"run": {"seed": 1234}, "train": {"steps": 9}})", "cfg.json"));
  w.extra = {{"reward_ema", 0.25}};
  return w;
}

}  // namespace

TEST(Checkpoint, DirectoryNames) {
  EXPECT_EQ(checkpoint_dir_name(0), "step-000000");
  EXPECT_EQ(checkpoint_dir_name(123), "step-000123");
  EXPECT_EQ(checkpoint_dir_name(12345678), "step-12345678");
}

TEST(Checkpoint, RoundTripIsBitExactAndResumeContinuesIdentically) {
  Trained a = make_trained("qwen3-tiny", 2);
  const std::string run = fresh_dir();
  CheckpointWrite w = write_of(a, run, 2);
  // Extra tensors (e.g. a value head) in F32 and BF16.
  std::vector<float> head = {1.5f, -2.25f, 3.0f, 0.1f, -0.0f};
  std::vector<uint16_t> head_bf16 = {0x3f80, 0xbf80, 0x4000, 0x0001, 0x7f80, 0xff80};
  w.extra_tensors.push_back({"value_head.weight", Tensor(head.data(), DType::F32, Device::CPU, {5}), DType::F32, {}});
  w.extra_tensors.push_back(
      {"value_head.bf16", Tensor(head_bf16.data(), DType::BF16, Device::CPU, {2, 3}), DType::BF16, {}});
  const std::string dir = save_checkpoint(w);
  EXPECT_EQ(dir, (fs::path(run) / "checkpoints" / "step-000002").string());
  EXPECT_EQ(read_bytes(fs::path(run) / "checkpoints" / "latest"), "step-000002\n");
  EXPECT_FALSE(fs::exists(fs::path(run) / "checkpoints" / ".tmp-step-000002"));

  Trained b = make_trained("qwen3-tiny", 0);
  // The fresh model differs before the restore (the perturbation is real).
  EXPECT_FALSE(same_bits(a.model->flat_master(), b.model->flat_master()));
  const CheckpointRead ck = load_checkpoint(run);
  EXPECT_EQ(ck.dir, dir);
  EXPECT_EQ(ck.step, 2);
  EXPECT_EQ(ck.optimizer_steps, 2);
  EXPECT_EQ(ck.seed, 1234u);
  const DataCursor cur = DataCursor::from_json(ck.data_cursor);
  EXPECT_EQ(cur.epoch, 1);
  EXPECT_EQ(cur.position, 5);
  EXPECT_EQ(cur.dataset_size, 17);
  EXPECT_EQ(ck.extra["reward_ema"].get<double>(), 0.25);
  EXPECT_EQ(ck.config["train"]["steps"].get<int64_t>(), 9);
  // The saved config parses back into the same resolved config.
  EXPECT_EQ(config_to_json(parse_config(ck.config.dump(), "state")).dump(), w.config.dump());

  restore_training_state(ck, *b.model, b.opt.get(), Context::cpu());
  EXPECT_TRUE(same_bits(a.model->flat_master(), b.model->flat_master()));
  EXPECT_TRUE(same_bits(a.model->flat_weights(), b.model->flat_weights()));
  EXPECT_TRUE(same_bits(a.opt->exp_avg(), b.opt->exp_avg()));
  EXPECT_TRUE(same_bits(a.opt->exp_avg_sq(), b.opt->exp_avg_sq()));
  EXPECT_EQ(b.opt->steps_done(), 2);

  std::vector<float> head_back(5);
  std::vector<uint16_t> bf16_back(6);
  ck.restore_tensor("value_head.weight", Tensor(head_back.data(), DType::F32, Device::CPU, {5}));
  ck.restore_tensor("value_head.bf16", Tensor(bf16_back.data(), DType::BF16, Device::CPU, {2, 3}));
  EXPECT_EQ(std::memcmp(head.data(), head_back.data(), head.size() * 4), 0);
  EXPECT_EQ(bf16_back, head_bf16);
  EXPECT_TRUE(ck.has_tensor("value_head.weight"));
  EXPECT_FALSE(ck.has_tensor("value_head.bias"));

  // One more identical step on both: the resumed run stays bit-identical (bias correction uses the step count).
  fill_random_grads(*a.model, 777);
  fill_random_grads(*b.model, 777);
  a.opt->step(a.cfg.lr, Context::cpu());
  b.opt->step(b.cfg.lr, Context::cpu());
  EXPECT_TRUE(same_bits(a.model->flat_master(), b.model->flat_master()));
  EXPECT_TRUE(same_bits(a.opt->exp_avg_sq(), b.opt->exp_avg_sq()));
}

TEST(Checkpoint, FilesAreDeterministicAndTheModelReloads) {
  Trained a = make_trained("qwen3-tiny", 1);
  const std::string run1 = fresh_dir(), run2 = fresh_dir();
  CheckpointWrite w = write_of(a, run1, 1);
  w.tokenizer_dir = std::string(RLCU_TEST_FIXTURES) + "/tokenizers/qwen3";
  const fs::path d1 = save_checkpoint(w);
  w.run_dir = run2;
  const fs::path d2 = save_checkpoint(w);
  for (const char* f : {"model.safetensors", "trainer_state.safetensors", "trainer_state.json", "config.json",
                        "generation_config.json", "tokenizer.json", "tokenizer_config.json"}) {
    ASSERT_TRUE(fs::is_regular_file(d1 / f)) << f;
    EXPECT_EQ(read_bytes(d1 / f), read_bytes(d2 / f)) << f;
  }
  EXPECT_FALSE(fs::exists(d1 / "special_tokens_map.json"));  // absent from both source directories
  EXPECT_EQ(read_bytes(d1 / "config.json"), read_bytes(fixture_model("qwen3-tiny") + "/config.json"));
  EXPECT_EQ(read_bytes(d1 / "tokenizer.json"),
            read_bytes(std::string(RLCU_TEST_FIXTURES) + "/tokenizers/qwen3/tokenizer.json"));

  // HF form: BF16, tied embeddings once, format metadata.
  const SafetensorsFile f = SafetensorsFile::open((d1 / "model.safetensors").string());
  EXPECT_EQ(f.tensors().size(), a.model->hf_tensors().size());
  EXPECT_EQ(f.find("lm_head.weight"), nullptr);
  ASSERT_NE(f.find("model.embed_tokens.weight"), nullptr);
  for (const auto& [name, e] : f.tensors()) EXPECT_EQ(e.dtype, "BF16") << name;
  EXPECT_EQ(f.metadata().at("format"), "pt");

  // Reloads as the master rounded to bf16, tensor by tensor (gate/up split included).
  const auto re = Model::load(d1.string(), ModelOptions{}, Context::cpu());
  ASSERT_EQ(re->hf_tensors().size(), a.model->hf_tensors().size());
  int64_t changed_by_rounding = 0;
  for (size_t i = 0; i < re->hf_tensors().size(); ++i) {
    const HfTensor& h = a.model->hf_tensors()[i];
    const HfTensor& r = re->hf_tensors()[i];
    ASSERT_EQ(h.name, r.name);
    const float* m = h.master.ptr<float>();
    const float* x = r.weight.ptr<float>();
    for (int64_t j = 0; j < h.master.numel(); ++j) {
      ASSERT_EQ(x[j], round_to_bf16(m[j])) << h.name << "[" << j << "]";
      changed_by_rounding += x[j] != m[j];
    }
  }
  EXPECT_GT(changed_by_rounding, 0);  // the master after AdamW is not bf16-representable: rounding happened
}

TEST(Checkpoint, UntiedModelStoresLmHead) {
  Trained a = make_trained("llama3-tiny", 1);
  const std::string run = fresh_dir();
  const fs::path d = save_checkpoint(write_of(a, run, 1));
  const SafetensorsFile f = SafetensorsFile::open((d / "model.safetensors").string());
  EXPECT_NE(f.find("lm_head.weight"), nullptr);
  EXPECT_NE(f.find("model.layers.1.mlp.up_proj.weight"), nullptr);
  const auto re = Model::load(d.string(), ModelOptions{}, Context::cpu());
  EXPECT_EQ(re->num_parameters(), a.model->num_parameters());
}

TEST(Checkpoint, LeftoversAndIncompleteCheckpointsAreIgnoredThenCleaned) {
  Trained a = make_trained("qwen3-tiny", 1);
  const std::string run = fresh_dir();
  save_checkpoint(write_of(a, run, 3));
  const fs::path root = fs::path(run) / "checkpoints";
  // A crashed save of step 5 and a step directory without trainer_state.json.
  fs::create_directories(root / ".tmp-step-000005");
  std::ofstream(root / ".tmp-step-000005" / "model.safetensors") << "partial";
  fs::create_directories(root / "step-000007");
  std::ofstream(root / "step-000007" / "model.safetensors") << "partial";
  EXPECT_EQ(list_checkpoints(run), (std::vector<int64_t>{3}));
  EXPECT_EQ(latest_checkpoint(run), (root / "step-000003").string());
  EXPECT_EQ(load_checkpoint(run).step, 3);
  // A stale `latest` falls back to the newest complete directory.
  std::ofstream(root / "latest") << "step-000009\n";
  EXPECT_EQ(latest_checkpoint(run), (root / "step-000003").string());
  // The next save removes the leftover .tmp directory.
  save_checkpoint(write_of(a, run, 4));
  EXPECT_FALSE(fs::exists(root / ".tmp-step-000005"));
  EXPECT_EQ(list_checkpoints(run), (std::vector<int64_t>{3, 4}));
  EXPECT_EQ(load_checkpoint(run).step, 4);
}

TEST(Checkpoint, KeepPrunesOldestAndSameStepIsReplaced) {
  Trained a = make_trained("qwen3-tiny", 1);
  const std::string run = fresh_dir();
  for (int64_t s = 1; s <= 4; ++s) {
    CheckpointWrite w = write_of(a, run, s);
    w.keep = 2;
    save_checkpoint(w);
  }
  EXPECT_EQ(list_checkpoints(run), (std::vector<int64_t>{3, 4}));
  EXPECT_EQ(load_checkpoint(run).step, 4);
  for (int64_t s = 5; s <= 6; ++s) save_checkpoint(write_of(a, run, s));  // keep = 0: all kept
  EXPECT_EQ(list_checkpoints(run), (std::vector<int64_t>{3, 4, 5, 6}));
  // keep = 1 keeps only the one just written, even when it is not the highest step.
  CheckpointWrite w = write_of(a, run, 5);
  w.extra = {{"second", true}};
  w.keep = 1;
  save_checkpoint(w);
  EXPECT_EQ(list_checkpoints(run), (std::vector<int64_t>{5}));
  EXPECT_TRUE(load_checkpoint(run).extra["second"].get<bool>());  // replaced, not the first step-5 save
  for (const auto& e : fs::directory_iterator(fs::path(run) / "checkpoints"))
    EXPECT_EQ(e.path().filename().string().rfind(".old-", 0), std::string::npos) << e.path();
}

TEST(Checkpoint, ErrorsNameTheFileAndTensor) {
  const std::string empty = fresh_dir();
  EXPECT_NE(error_of([&] { load_checkpoint(empty); }).find("no checkpoint to resume from"), std::string::npos);

  Trained a = make_trained("qwen3-tiny", 1);
  const std::string run = fresh_dir();
  const fs::path d = save_checkpoint(write_of(a, run, 1));
  const CheckpointRead ck = load_checkpoint(run);
  const std::string state = (d / "trainer_state.safetensors").string();

  // Wrong shape, wrong dtype, missing tensor.
  std::vector<float> buf(64 * 64);
  std::string e = error_of([&] {
    ck.restore_tensor("master.model.norm.weight", Tensor(buf.data(), DType::F32, Device::CPU, {63}));
  });
  EXPECT_EQ(e, state + ": tensor `master.model.norm.weight` has shape [64] but the destination is [63]");
  e = error_of([&] {
    ck.restore_tensor("master.model.norm.weight", Tensor(buf.data(), DType::BF16, Device::CPU, {64}));
  });
  EXPECT_NE(e.find("has dtype F32 but the destination is BF16"), std::string::npos) << e;
  e = error_of([&] { ck.restore_tensor("critic.master.x", Tensor(buf.data(), DType::F32, Device::CPU, {1})); });
  EXPECT_EQ(e, state + ": tensor `critic.master.x` is missing");

  // Restoring into a model of another shape names the first tensor that differs.
  Trained other = make_trained("llama3-tiny", 0);
  e = error_of([&] { restore_training_state(ck, *other.model, other.opt.get(), Context::cpu()); });
  EXPECT_NE(e.find(state + ": tensor `"), std::string::npos) << e;

  // Saved without an optimizer, restored with one.
  {
    const std::string run2 = fresh_dir();
    CheckpointWrite w = write_of(a, run2, 1);
    w.optimizer = nullptr;
    save_checkpoint(w);
    const CheckpointRead ck2 = load_checkpoint(run2);
    Trained b = make_trained("qwen3-tiny", 0);
    EXPECT_NE(error_of([&] { restore_training_state(ck2, *b.model, b.opt.get(), Context::cpu()); })
                  .find("holds no optimizer state"),
              std::string::npos);
    EXPECT_NO_THROW(restore_training_state(ck2, *b.model, nullptr, Context::cpu()));
    EXPECT_TRUE(same_bits(a.model->flat_master(), b.model->flat_master()));
  }

  // Missing and malformed files.
  fs::remove(d / "trainer_state.safetensors");
  e = error_of([&] { load_checkpoint(run); });
  EXPECT_EQ(e, state + ": missing (not a complete checkpoint)");
  std::ofstream(d / "trainer_state.json") << "{\"format\": \"rlcu-trainer-state\", \"version\": 1}";
  e = error_of([&] { load_checkpoint(run); });
  EXPECT_EQ(e, (d / "trainer_state.json").string() + ": key \"step\" is missing");
  std::ofstream(d / "trainer_state.json") << "{\"format\": \"other\"";
  e = error_of([&] { load_checkpoint(run); });
  EXPECT_NE(e.find((d / "trainer_state.json").string() + ":1:19: invalid JSON"), std::string::npos) << e;
  std::ofstream(d / "trainer_state.json") << "{\"format\": \"rlcu-trainer-state\", \"version\": 2}";
  e = error_of([&] { load_checkpoint(run); });
  EXPECT_NE(e.find("\"version\" is 2"), std::string::npos) << e;

  // An extra tensor that collides with the policy's state.
  CheckpointWrite w = write_of(a, fresh_dir(), 1);
  w.extra_tensors.push_back({"master.model.norm.weight", Tensor(buf.data(), DType::F32, Device::CPU, {64}),
                             DType::F32, {}});
  EXPECT_NE(error_of([&] { save_checkpoint(w); }).find("collides"), std::string::npos);
}

TEST(Checkpoint, CudaRoundTripRestoresMasterMomentsAndBf16Weights) {
  RLCU_REQUIRE_CUDA();
  auto ctx = Context::cuda(0);
  const auto load = [&] { return Model::load(fixture_model("qwen3-tiny"), ModelOptions{true}, *ctx); };
  OptimizerSection cfg;
  cfg.lr = 1e-3;
  auto ma = load();
  AdamW oa(cfg, ma->flat_master(), ma->flat_grads(), ma->flat_weights(), *ctx);
  std::mt19937 rng(5);
  std::normal_distribution<float> nd(0.f, 0.01f);
  const auto random_grads = [&](const Model& m, uint32_t seed) {
    rng.seed(seed);
    for (const HfTensor& h : m.hf_tensors()) {
      std::vector<float> g(static_cast<size_t>(h.grad.numel()));
      for (float& x : g) x = nd(rng);
      from_host_f32(h.grad, g);
    }
  };
  for (uint32_t s = 0; s < 2; ++s) {
    random_grads(*ma, 10 + s);
    oa.step(cfg.lr, *ctx);
  }
  ctx->synchronize("test: trained");
  const std::string run = fresh_dir();
  CheckpointWrite w;
  w.run_dir = run;
  w.step = 2;
  w.model = ma.get();
  w.optimizer = &oa;
  const fs::path d = save_checkpoint(w);

  auto mb = load();
  AdamW ob(cfg, mb->flat_master(), mb->flat_grads(), mb->flat_weights(), *ctx);
  restore_training_state(load_checkpoint(run), *mb, &ob, *ctx);
  ctx->synchronize("test: restored");
  const auto host_bytes = [](const Tensor& t) {
    std::vector<uint8_t> b(t.nbytes());
    copy_bytes(Tensor(b.data(), DType::U8, Device::CPU, {static_cast<int64_t>(b.size())}),
               Tensor(t.data, DType::U8, t.device, {static_cast<int64_t>(t.nbytes())}));
    return b;
  };
  EXPECT_EQ(host_bytes(ma->flat_master()), host_bytes(mb->flat_master()));
  EXPECT_EQ(host_bytes(ma->flat_weights()), host_bytes(mb->flat_weights()));  // BF16 recomputed by cast
  EXPECT_EQ(host_bytes(oa.exp_avg()), host_bytes(ob.exp_avg()));
  EXPECT_EQ(host_bytes(oa.exp_avg_sq()), host_bytes(ob.exp_avg_sq()));
  EXPECT_EQ(ob.steps_done(), 2);

  // The saved model is the master rounded to bf16, which is also the live BF16 working copy.
  const auto re = Model::load(d.string(), ModelOptions{}, Context::cpu());
  for (size_t i = 0; i < re->hf_tensors().size(); ++i) {
    const std::vector<float> master = to_host_f32(ma->hf_tensors()[i].master);
    const std::vector<float> work = to_host_f32(ma->hf_tensors()[i].weight);
    const float* x = re->hf_tensors()[i].weight.ptr<float>();
    for (size_t j = 0; j < master.size(); ++j) {
      ASSERT_EQ(x[j], round_to_bf16(master[j])) << re->hf_tensors()[i].name << "[" << j << "]";
      ASSERT_EQ(x[j], work[j]) << re->hf_tensors()[i].name << "[" << j << "]";
    }
  }

  // One more identical step on both stays bit-identical.
  random_grads(*ma, 99);
  random_grads(*mb, 99);
  oa.step(cfg.lr, *ctx);
  ob.step(cfg.lr, *ctx);
  ctx->synchronize("test: stepped");
  EXPECT_EQ(host_bytes(ma->flat_master()), host_bytes(mb->flat_master()));
  EXPECT_EQ(host_bytes(ma->flat_weights()), host_bytes(mb->flat_weights()));
}

TEST(StopSignals, FirstSignalSetsTheFlag) {
  install_stop_handlers();
  EXPECT_FALSE(stop_requested());
  EXPECT_EQ(stop_signal(), 0);
  std::raise(SIGTERM);
  EXPECT_TRUE(stop_requested());
  EXPECT_EQ(stop_signal(), SIGTERM);
  clear_stop_request();
  EXPECT_FALSE(stop_requested());
  std::raise(SIGINT);
  EXPECT_TRUE(stop_requested());
  EXPECT_EQ(stop_signal(), SIGINT);
  clear_stop_request();
  uninstall_stop_handlers();
}

TEST(StopSignalsDeathTest, SecondSignalExitsWith130) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        install_stop_handlers();
        std::raise(SIGINT);
        if (!stop_requested()) std::exit(1);
        std::raise(SIGINT);
        std::exit(2);  // not reached
      },
      ::testing::ExitedWithCode(130), "second stop signal");
}
