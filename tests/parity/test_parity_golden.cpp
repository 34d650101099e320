// CPU forward against the Hugging Face golden log-probabilities of the fixture models (float64 goldens, max abs
// error 1e-4): the three HF float32 saves and their bf16 re-saves (goldens recomputed by scripts/reference_model.py
// from the rounded weights). Also: the transformers 4.x config form and a sharded checkpoint give the same result,
// and the safetensors writer reproduces the bf16 fixture byte for byte from the loaded float32 model.
#include <gtest/gtest.h>

#include <cmath>

#include "parity/model_test_util.h"
#include "rlcu/model.h"
#include "rlcu/safetensors.h"

using namespace rlcu;
using namespace rlcu::test;

namespace {

// Log-probabilities of every golden sequence, packed into one micro-batch; logprobs[s] has n_s - 1 values.
std::vector<std::vector<float>> score_all(const std::string& dir, const std::vector<GoldenSeq>& golden) {
  const auto m = Model::load(dir, ModelOptions{}, Context::cpu());
  PackedBatch b;
  for (const auto& g : golden) b.add_sequence(g.ids);
  TransformerOptions opt;
  opt.max_tokens = b.num_tokens();
  Transformer tf(*m, opt, Context::cpu());
  auto lp = OwnedTensor::make(DType::F32, Device::CPU, {b.num_tokens()});
  tf.forward(lp.t, Tensor(), tf.upload(b, Context::cpu()), Context::cpu());
  const auto host = to_host_f32(lp.t);
  std::vector<std::vector<float>> out;
  for (int s = 0; s < b.num_seqs(); ++s)
    out.emplace_back(host.begin() + b.cu_seqlens[s], host.begin() + b.cu_seqlens[s + 1] - 1);
  return out;
}

double max_error(const std::vector<std::vector<float>>& got, const std::vector<GoldenSeq>& golden) {
  double worst = 0.0;
  EXPECT_EQ(got.size(), golden.size());
  for (size_t s = 0; s < golden.size() && s < got.size(); ++s) {
    EXPECT_EQ(got[s].size(), golden[s].logprobs.size()) << "sequence " << s;
    for (size_t t = 0; t < golden[s].logprobs.size() && t < got[s].size(); ++t) {
      EXPECT_TRUE(std::isfinite(got[s][t]));
      worst = std::max(worst, std::abs(double(got[s][t]) - golden[s].logprobs[t]));
    }
  }
  return worst;
}

class GoldenParity : public ::testing::TestWithParam<std::string> {};

}  // namespace

TEST_P(GoldenParity, CpuLogprobsMatchGolden) {
  const std::string dir = fixture_model(GetParam());
  const auto golden = read_golden(dir);
  ASSERT_GE(golden.size(), 4u);
  const double err = max_error(score_all(dir, golden), golden);
  std::printf("%s: max |logprob - golden| = %.3e\n", GetParam().c_str(), err);
  EXPECT_LT(err, 1e-4);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, GoldenParity, ::testing::ValuesIn(fixture_model_names()),
                         [](const ::testing::TestParamInfo<std::string>& i) {
                           std::string n = i.param;
                           for (char& c : n)
                             if (c == '-') c = '_';
                           return n;
                         });

TEST(GoldenParityForms, Transformers4ConfigForm) {
  // The same checkpoints described in the 4.x form: rope_theta + rope_scaling (with `type`), torch_dtype.
  for (const std::string name : {"llama3-tiny", "qwen2-tiny", "qwen3-tiny-bf16"}) {
    SCOPED_TRACE(name);
    TempDir d("form4");
    const std::string dir = d.file(name);
    copy_model(fixture_model(name), dir);
    nlohmann::json cfg = read_json(dir + "/config.json");
    nlohmann::json rp = cfg["rope_parameters"];
    cfg.erase("rope_parameters");
    cfg["rope_theta"] = rp["rope_theta"];
    rp.erase("rope_theta");
    const std::string type = rp["rope_type"];
    rp.erase("rope_type");
    if (type == "default") {
      cfg["rope_scaling"] = nullptr;
    } else {
      rp["type"] = type;
      cfg["rope_scaling"] = rp;
    }
    cfg["torch_dtype"] = cfg["dtype"];
    cfg.erase("dtype");
    write_json(dir + "/config.json", cfg);
    const auto golden = read_golden(fixture_model(name));
    const auto a = score_all(dir, golden);
    const auto b = score_all(fixture_model(name), golden);
    EXPECT_EQ(a, b);
    EXPECT_LT(max_error(a, golden), 1e-4);
  }
}

TEST(GoldenParityForms, ShardedCheckpointAndWriter) {
  const std::string src = fixture_model("qwen2-tiny");
  const auto golden = read_golden(src);
  const auto m = Model::load(src, ModelOptions{}, Context::cpu());
  TempDir d("shard");
  const std::string dir = d.file("m");
  fs::create_directories(dir);
  for (const char* f : {"config.json", "generation_config.json"}) fs::copy_file(fs::path(src) / f, fs::path(dir) / f);
  // Two shards split at layer 1, from the model's HF name table (gate/up come out of the fused gate_up).
  std::vector<SafetensorsWriteItem> first, second;
  nlohmann::json weight_map = nlohmann::json::object();
  for (const HfTensor& h : m->hf_tensors()) {
    const bool late = h.name.find("layers.1.") != std::string::npos || h.name == "lm_head.weight";
    (late ? second : first).push_back({h.name, h.weight, DType::F32, h.shape});
    weight_map[h.name] = late ? "model-00002-of-00002.safetensors" : "model-00001-of-00002.safetensors";
  }
  write_safetensors(dir + "/model-00001-of-00002.safetensors", first, {{"format", "pt"}});
  write_safetensors(dir + "/model-00002-of-00002.safetensors", second, {{"format", "pt"}});
  write_json(dir + "/model.safetensors.index.json",
             {{"metadata", nlohmann::json::object()}, {"weight_map", weight_map}});
  EXPECT_EQ(score_all(dir, golden), score_all(src, golden));

  // BF16 save of the float32 model == the bf16 fixture written by scripts/reference_model.py, byte for byte.
  std::vector<SafetensorsWriteItem> all;
  for (const HfTensor& h : m->hf_tensors()) all.push_back({h.name, h.weight, DType::BF16, h.shape});
  write_safetensors(d.file("bf16.safetensors"), all, {{"format", "pt"}});
  EXPECT_TRUE(read_text(d.file("bf16.safetensors")) ==
              read_text(fixture_model("qwen2-tiny-bf16") + "/model.safetensors"));
}
