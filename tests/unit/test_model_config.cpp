// HF config.json parsing (transformers 4.x and 5.x forms, rope types, eos/bos), rotary frequencies, and the
// weight-file checks of Model::load (missing / unexpected tensors, shapes, dtypes), each error naming the file and
// the tensor or field.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>

#include "parity/model_test_util.h"
#include "rlcu/model.h"
#include "rlcu/safetensors.h"

using namespace rlcu;
using namespace rlcu::test;
using nlohmann::json;

namespace {

json base_config() {
  return json::parse(R"({
    "model_type": "llama", "vocab_size": 100, "hidden_size": 32, "intermediate_size": 48,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0, "torch_dtype": "bfloat16", "tie_word_embeddings": true,
    "bos_token_id": 1, "eos_token_id": [2, 3]
  })");
}

void expect_config_error(const json& j, const std::vector<std::string>& parts) {
  try {
    ModelConfig::from_json(j, "x/config.json");
    FAIL() << "no error for " << j.dump();
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("x/config.json"), std::string::npos) << msg;
    for (const auto& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "'" << p << "' not in: " << msg;
  }
}

void expect_load_error(const std::string& dir, const std::vector<std::string>& parts) {
  try {
    Model::load(dir, ModelOptions{}, Context::cpu());
    FAIL() << "no error loading " << dir;
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const auto& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "'" << p << "' not in: " << msg;
  }
}

// Rewrites DIR/model.safetensors from the loaded model's HF table with `edit` applied to the item list.
void rewrite_weights(const std::string& dir, const std::function<void(std::vector<SafetensorsWriteItem>&)>& edit) {
  const auto m = Model::load(dir, ModelOptions{}, Context::cpu());
  std::vector<SafetensorsWriteItem> items;
  for (const HfTensor& h : m->hf_tensors()) items.push_back({h.name, h.weight, DType::F32, h.shape});
  edit(items);
  write_safetensors((fs::path(dir) / "model.safetensors").string(), items, {{"format", "pt"}});
}

}  // namespace

TEST(ModelConfig, Transformers4Form) {
  const ModelConfig c = ModelConfig::from_json(base_config(), "x/config.json");
  EXPECT_EQ(c.model_type, "llama");
  EXPECT_EQ(c.head_dim, 8);
  EXPECT_EQ(c.num_kv_heads, 2);
  EXPECT_EQ(c.q_dim(), 32);
  EXPECT_EQ(c.kv_dim(), 16);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-5);
  EXPECT_DOUBLE_EQ(c.rope.theta, 500000.0);
  EXPECT_EQ(c.rope.type, RopeType::Default);
  EXPECT_EQ(c.checkpoint_dtype, DType::BF16);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_FALSE(c.qkv_bias);
  EXPECT_FALSE(c.o_bias);
  EXPECT_FALSE(c.qk_norm);
  EXPECT_EQ(c.eos_token_ids, (std::vector<int32_t>{2, 3}));
  EXPECT_EQ(c.bos_token_id, 1);

  json j = base_config();
  j["rope_scaling"] = {{"type", "llama3"},
                       {"factor", 8.0},
                       {"low_freq_factor", 1.0},
                       {"high_freq_factor", 4.0},
                       {"original_max_position_embeddings", 8192}};
  const ModelConfig l3 = ModelConfig::from_json(j, "x/config.json");
  EXPECT_EQ(l3.rope.type, RopeType::Llama3);
  EXPECT_DOUBLE_EQ(l3.rope.theta, 500000.0);
  EXPECT_EQ(l3.rope.original_max_position_embeddings, 8192);
  j["rope_scaling"] = {{"rope_type", "linear"}, {"factor", 2.0}};
  EXPECT_EQ(ModelConfig::from_json(j, "x/config.json").rope.type, RopeType::Linear);
  j["rope_scaling"] = nullptr;
  EXPECT_EQ(ModelConfig::from_json(j, "x/config.json").rope.type, RopeType::Default);
}

TEST(ModelConfig, Transformers5FormAndArchitectures) {
  const ModelConfig q3 = ModelConfig::load(fixture_model("qwen3-tiny"));
  EXPECT_EQ(q3.model_type, "qwen3");
  EXPECT_TRUE(q3.qk_norm);
  EXPECT_TRUE(q3.tie_word_embeddings);
  EXPECT_FALSE(q3.qkv_bias);
  EXPECT_EQ(q3.head_dim, 16);
  EXPECT_DOUBLE_EQ(q3.rope.theta, 1e6);
  EXPECT_EQ(q3.checkpoint_dtype, DType::F32);
  EXPECT_TRUE(q3.eos_token_ids.empty());
  EXPECT_EQ(q3.bos_token_id, -1);

  const ModelConfig q2 = ModelConfig::load(fixture_model("qwen2-tiny"));
  EXPECT_TRUE(q2.qkv_bias);
  EXPECT_FALSE(q2.o_bias);
  EXPECT_FALSE(q2.qk_norm);
  EXPECT_FALSE(q2.tie_word_embeddings);
  EXPECT_EQ(q2.num_kv_heads, 2);

  const ModelConfig l3 = ModelConfig::load(fixture_model("llama3-tiny"));
  EXPECT_EQ(l3.rope.type, RopeType::Llama3);
  EXPECT_DOUBLE_EQ(l3.rope.factor, 8.0);
  EXPECT_EQ(l3.rope.original_max_position_embeddings, 64);
  EXPECT_EQ(l3.eos_token_ids, (std::vector<int32_t>{2}));
  EXPECT_EQ(l3.bos_token_id, 1);
  EXPECT_EQ(ModelConfig::load(fixture_model("llama3-tiny-bf16")).checkpoint_dtype, DType::BF16);

  // Decoupled head_dim, attention bias on Llama/Qwen3 (o_proj included), rope_parameters keyed by layer type.
  json j = base_config();
  j["model_type"] = "qwen3";
  j["head_dim"] = 16;
  j["attention_bias"] = true;
  j.erase("rope_theta");
  j["rope_parameters"] = {{"full_attention", {{"rope_type", "default"}, {"rope_theta", 1234.0}}}};
  const ModelConfig c = ModelConfig::from_json(j, "x/config.json");
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_EQ(c.q_dim(), 64);
  EXPECT_TRUE(c.qkv_bias && c.o_bias && c.qk_norm);
  EXPECT_DOUBLE_EQ(c.rope.theta, 1234.0);
}

TEST(ModelConfig, GenerationConfigEosAndBos) {
  TempDir d("cfg");
  json j = base_config();
  write_json(d.file("config.json"), j);
  write_json(d.file("generation_config.json"), json{{"eos_token_id", {5, 2}}, {"bos_token_id", 7}});
  const ModelConfig c = ModelConfig::load(d.str());
  EXPECT_EQ(c.eos_token_ids, (std::vector<int32_t>{5, 2, 3}));
  EXPECT_EQ(c.bos_token_id, 7);
  write_json(d.file("generation_config.json"), json{{"eos_token_id", "two"}});
  try {
    ModelConfig::load(d.str());
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("generation_config.json"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("eos_token_id"), std::string::npos) << e.what();
  }
  write_json(d.file("generation_config.json"), json{{"eos_token_id", 100}});
  EXPECT_THROW(ModelConfig::load(d.str()), Error);  // outside the vocabulary
}

TEST(ModelConfig, ErrorsNameTheField) {
  json j = base_config();
  j["model_type"] = "mistral";
  expect_config_error(j, {"model_type", "mistral", "qwen2, qwen3, llama"});
  j = base_config();
  j.erase("model_type");
  expect_config_error(j, {"model_type", "missing"});
  j = base_config();
  j["hidden_size"] = "32";
  expect_config_error(j, {"`hidden_size`", "integer"});
  j = base_config();
  j.erase("vocab_size");
  expect_config_error(j, {"`vocab_size`", "missing"});
  j = base_config();
  j["num_key_value_heads"] = 3;
  expect_config_error(j, {"`num_key_value_heads`"});
  j = base_config();
  j["num_attention_heads"] = 5;
  j["num_key_value_heads"] = 5;
  expect_config_error(j, {"`num_attention_heads`", "hidden_size 32"});
  j = base_config();
  j["head_dim"] = 7;
  expect_config_error(j, {"`head_dim`", "odd"});
  j = base_config();
  j["rms_norm_eps"] = -1;
  expect_config_error(j, {"`rms_norm_eps`"});
  j = base_config();
  j["tie_word_embeddings"] = "yes";
  expect_config_error(j, {"`tie_word_embeddings`", "true or false"});
  j = base_config();
  j["hidden_act"] = "gelu";
  expect_config_error(j, {"`hidden_act`", "gelu"});
  j = base_config();
  j["rope_scaling"] = {{"type", "yarn"}, {"factor", 4.0}};
  expect_config_error(j, {"`rope_scaling.type`", "yarn"});
  j = base_config();
  j["rope_parameters"] = {{"rope_type", "dynamic"}, {"rope_theta", 10000.0}};
  expect_config_error(j, {"`rope_parameters.rope_type`", "dynamic"});
  j = base_config();
  j["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}};
  expect_config_error(j, {"`rope_scaling.low_freq_factor`", "missing"});
  j = base_config();
  j["rope_scaling"] = 3;
  expect_config_error(j, {"`rope_scaling`"});
  j = base_config();
  j["torch_dtype"] = "int8";
  expect_config_error(j, {"`torch_dtype`", "int8"});
  j = base_config();
  j["model_type"] = "qwen2";
  j["use_sliding_window"] = true;
  expect_config_error(j, {"`use_sliding_window`"});
  j = base_config();
  j["layer_types"] = {"full_attention", "sliding_attention"};
  expect_config_error(j, {"`layer_types`", "sliding_attention"});
  j = base_config();
  j["mlp_bias"] = true;
  expect_config_error(j, {"`mlp_bias`"});
  j = base_config();
  j["eos_token_id"] = {1, "x"};
  expect_config_error(j, {"`eos_token_id`"});

  TempDir d("cfg");
  write_text(d.file("config.json"), "{\n  \"model_type\": \"llama\",\n  \"vocab_size\": 10\n");
  try {
    ModelConfig::load(d.str());
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(d.file("config.json")), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(d.file("config.json") + ":4:1: invalid JSON"), std::string::npos) << e.what();
  }
  fs::remove(d.file("config.json"));
  EXPECT_THROW(ModelConfig::load(d.str()), Error);
  EXPECT_THROW(ModelConfig::load(d.file("absent")), Error);
}

TEST(ModelConfig, RopeInverseFrequencies) {
  RopeConfig r;
  r.theta = 10000.0;
  const auto f = rope_inv_freq(r, 8);
  ASSERT_EQ(f.size(), 4u);
  for (int i = 0; i < 4; ++i) EXPECT_FLOAT_EQ(f[i], static_cast<float>(1.0 / std::pow(10000.0, 2.0 * i / 8.0)));
  r.type = RopeType::Linear;
  r.factor = 4.0;
  EXPECT_FLOAT_EQ(rope_inv_freq(r, 8)[1], f[1] / 4.0f);

  // llama3 scaling of the llama3-tiny fixture (theta 5e5, hd 16, factor 8, low 1, high 4, original 64), values
  // of HF's _compute_llama3_parameters evaluated in float64 (scripts/reference_model.py): the first frequency kept,
  // the second smoothed, the rest (wavelength > 64) divided by the factor.
  const ModelConfig l3 = ModelConfig::load(fixture_model("llama3-tiny"));
  const auto g = rope_inv_freq(l3.rope, l3.head_dim);
  const double expected[8] = {1.0,
                              0.0794030091792082,
                              0.004700753866357992,
                              0.0009115830921521386,
                              0.00017677669529663688,
                              3.428102195952591e-05,
                              6.647869871181236e-06,
                              1.2891731721515574e-06};
  ASSERT_EQ(g.size(), 8u);
  for (int i = 0; i < 8; ++i) EXPECT_NEAR(g[i], expected[i], 1e-6 * expected[i]) << i;
}

TEST(ModelLoad, FixturesLoadWithLayoutAndNameTable) {
  for (const std::string name : {"qwen3-tiny", "qwen2-tiny", "llama3-tiny"}) {
    SCOPED_TRACE(name);
    const auto m = Model::load(fixture_model(name), ModelOptions{true}, Context::cpu());
    const ModelConfig& c = m->config();
    EXPECT_EQ(m->weight_dtype(), DType::F32);
    EXPECT_TRUE(m->has_grads());
    EXPECT_EQ(m->flat_master().data, m->flat_weights().data);
    EXPECT_EQ(m->weights().layers[0].gate_up.size(0), 2 * c.intermediate_size);
    EXPECT_EQ(m->weights().lm_head.data == m->weights().embed.data, c.tie_word_embeddings);
    // Every HF tensor reads back bit-exactly from the file through its view (gate/up as slices of gate_up).
    const SafetensorsFile st = SafetensorsFile::open(fixture_model(name) + "/model.safetensors");
    int64_t n = 0;
    for (const HfTensor& h : m->hf_tensors()) {
      const SafetensorsEntry* e = st.find(h.name);
      ASSERT_NE(e, nullptr) << h.name;
      std::vector<float> want(static_cast<size_t>(e->numel()));
      st.read_converted(*e, want.data(), DType::F32);
      EXPECT_EQ(to_host_f32(h.weight), want) << h.name;
      if (h.name.find("up_proj") == std::string::npos) {
        EXPECT_EQ(h.offset % 128, 0) << h.name;
      }
      EXPECT_EQ(h.grad.numel(), h.weight.numel());
      n += e->numel();
    }
    EXPECT_EQ(static_cast<size_t>(m->hf_tensors().size()), st.tensors().size());
    EXPECT_EQ(m->num_parameters(), n);
    const auto grads = to_host_f32(m->flat_grads());
    for (float g : grads) ASSERT_EQ(g, 0.0f);
  }
}

TEST(ModelLoad, WeightFileErrorsNameFileAndTensor) {
  TempDir d("load");
  const std::string dir = d.file("m");
  const std::string st = dir + "/model.safetensors";
  copy_model(fixture_model("qwen2-tiny"), dir);
  rewrite_weights(dir, [](std::vector<SafetensorsWriteItem>& items) {
    items.erase(
        std::remove_if(items.begin(), items.end(),
                       [](const SafetensorsWriteItem& i) { return i.name == "model.layers.1.self_attn.k_proj.bias"; }),
        items.end());
  });
  expect_load_error(dir, {st, "`model.layers.1.self_attn.k_proj.bias`", "missing"});

  copy_model(fixture_model("qwen2-tiny"), dir);
  rewrite_weights(dir, [](std::vector<SafetensorsWriteItem>& items) {
    for (auto& i : items)
      if (i.name == "model.layers.0.mlp.down_proj.weight") i.shape = {160, 64};
  });
  expect_load_error(dir, {st, "`model.layers.0.mlp.down_proj.weight`", "[160, 64]", "[64, 160]"});

  copy_model(fixture_model("qwen2-tiny"), dir);
  std::vector<float> extra = {1.0f, 2.0f};
  rewrite_weights(dir, [&](std::vector<SafetensorsWriteItem>& items) {
    items.push_back(
        {"model.layers.2.input_layernorm.weight", Tensor(extra.data(), DType::F32, Device::CPU, {2}), DType::F32, {}});
  });
  expect_load_error(dir, {st, "`model.layers.2.input_layernorm.weight`", "unexpected"});

  // Wrong dtype: rewrite one entry's dtype in place as I32 (same byte size), keeping the file otherwise valid.
  copy_model(fixture_model("qwen2-tiny"), dir);
  std::string bytes = read_text(st);
  const std::string key = R"("model.norm.weight":{"dtype":"F32")";
  const size_t pos = bytes.find(key);
  ASSERT_NE(pos, std::string::npos);
  bytes.replace(pos + key.size() - 4, 3, "I32");
  write_text(st, bytes);
  expect_load_error(dir, {st, "`model.norm.weight`", "I32"});

  // Truncated file, corrupt header JSON.
  copy_model(fixture_model("qwen2-tiny"), dir);
  bytes = read_text(st);
  write_text(st, bytes.substr(0, bytes.size() / 2));
  expect_load_error(dir, {st, "past the end"});
  bytes[9] = '#';
  write_text(st, bytes);
  expect_load_error(dir, {st, "not valid JSON"});

  // Unknown model_type.
  copy_model(fixture_model("qwen2-tiny"), dir);
  json cfg = read_json(dir + "/config.json");
  cfg["model_type"] = "gemma2";
  write_json(dir + "/config.json", cfg);
  expect_load_error(dir, {dir + "/config.json", "model_type", "gemma2"});

  // Untied config over a tied checkpoint: lm_head.weight is missing.
  copy_model(fixture_model("qwen3-tiny"), dir);
  cfg = read_json(dir + "/config.json");
  cfg["tie_word_embeddings"] = false;
  write_json(dir + "/config.json", cfg);
  expect_load_error(dir, {st, "`lm_head.weight`", "missing"});

  // A tied checkpoint that still carries lm_head.weight loads (HF ignores it too).
  copy_model(fixture_model("qwen2-tiny"), dir);
  cfg = read_json(dir + "/config.json");
  cfg["tie_word_embeddings"] = true;
  write_json(dir + "/config.json", cfg);
  EXPECT_NO_THROW(Model::load(dir, ModelOptions{}, Context::cpu()));
}
