// Reward model: a sequence-classification directory built from the qwen3-tiny fixture plus a random `score.weight`;
// its scores must equal final_hidden[last token] . score.weight computed here from the fixture's causal LM with the
// CPU transformer (one sequence at a time) and a dot product in fp64.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "parity/model_test_util.h"
#include "rlcu/config.h"
#include "rlcu/error.h"
#include "rlcu/model.h"
#include "rlcu/reward.h"
#include "rlcu/safetensors.h"
#include "rlcu/tokenizer.h"

using namespace rlcu;
using rlcu::test::TempDir;

namespace {

// Writes DIR as a *ForSequenceClassification save of `src`: config.json (tie_word_embeddings as given, the
// architecture renamed) and model.safetensors with every tensor of src except lm_head.weight, plus score.weight.
std::vector<float> make_reward_dir(const std::string& src, const std::string& dir, bool tied, uint64_t seed) {
  nlohmann::json cfg;
  std::ifstream(src + "/config.json") >> cfg;
  cfg["architectures"] = {"Qwen3ForSequenceClassification"};
  cfg["num_labels"] = 1;
  cfg["tie_word_embeddings"] = tied;
  std::ofstream(dir + "/config.json") << cfg.dump(2);
  const int64_t H = cfg["hidden_size"].get<int64_t>();

  const SafetensorsSet set = SafetensorsSet::open_dir(src);
  std::vector<SafetensorsWriteItem> items;
  std::vector<std::vector<float>> store;
  store.reserve(set.names().size() + 1);
  for (const std::string& name : set.names()) {
    if (name == "lm_head.weight") continue;
    const auto loc = set.find(name);
    store.emplace_back(static_cast<size_t>(loc.entry->numel()));
    loc.file->read_converted(*loc.entry, store.back().data(), DType::F32);
    items.push_back({name, Tensor(store.back().data(), DType::F32, Device::CPU, {loc.entry->numel()}), DType::F32,
                     loc.entry->shape});
  }
  std::mt19937_64 g(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> w(static_cast<size_t>(H));
  for (float& x : w) x = nd(g);
  items.push_back({"score.weight", Tensor(w.data(), DType::F32, Device::CPU, {1, H}), DType::F32, {}});
  write_safetensors(dir + "/model.safetensors", items, {{"format", "pt"}});
  return w;
}

// final_hidden[last] . w for each sequence, one sequence per forward, fp64 dot product.
std::vector<double> reference_scores(const std::string& causal_dir, const std::vector<std::vector<int32_t>>& seqs,
                                     const std::vector<float>& w) {
  auto model = Model::load(causal_dir, ModelOptions{}, Context::cpu());
  TransformerOptions opt;
  opt.max_tokens = 64;
  Transformer tf(*model, opt, Context::cpu());
  std::vector<double> out;
  std::vector<float> lp(64);
  for (const auto& s : seqs) {
    PackedBatch b;
    b.add_sequence(s);
    const DeviceBatch db = tf.upload(b, Context::cpu());
    tf.forward(Tensor(lp.data(), DType::F32, Device::CPU, {b.num_tokens()}), Tensor(), db, Context::cpu());
    const std::vector<float> h = to_host_f32(tf.final_hidden());
    const size_t H = w.size(), last = s.size() - 1;
    double acc = 0;
    for (size_t k = 0; k < H; ++k) acc += static_cast<double>(h[last * H + k]) * w[k];
    out.push_back(acc);
  }
  return out;
}

}  // namespace

TEST(RewardModel, CausalLoaderRejectsScoreWeight) {
  // Documents why RewardModel stages a copy: Model::load refuses the extra `score.weight` tensor.
  TempDir d("rm-reject");
  make_reward_dir(rlcu::test::fixture_model("qwen3-tiny"), d.str(), true, 1);
  try {
    Model::load(d.str(), ModelOptions{}, Context::cpu());
    FAIL() << "Model::load accepted a sequence-classification directory";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("unexpected tensor `score.weight`"), std::string::npos) << e.what();
  }
}

TEST(RewardModel, ScoreIsLastHiddenDotScoreWeight) {
  const std::string src = rlcu::test::fixture_model("qwen3-tiny");
  const std::vector<std::vector<int32_t>> seqs{{1, 2, 3, 4, 5}, {7}, {100, 200, 300, 400, 5, 6, 7, 8, 9, 10, 11},
                                               {511, 0, 42}};
  for (bool tied : {true, false}) {
    TempDir d(tied ? "rm-tied" : "rm-untied");
    const std::vector<float> w = make_reward_dir(src, d.str(), tied, tied ? 11 : 12);
    const std::vector<double> want = reference_scores(src, seqs, w);
    // A small budget forces several micro-batches.
    RewardModel rm(d.str(), 16, Context::cpu());
    EXPECT_EQ(rm.score_weight(), w);
    const std::vector<float> got = rm.score(seqs);
    ASSERT_EQ(got.size(), seqs.size());
    for (size_t i = 0; i < seqs.size(); ++i) {
      EXPECT_NEAR(got[i], want[i], 1e-5 * (1.0 + std::fabs(want[i]))) << "tied " << tied << " sequence " << i;
    }
    // Scores differ between sequences (the check above is not satisfied by a constant).
    EXPECT_NE(got[0], got[1]);
    try {
      rm.score({{1, 2}, std::vector<int32_t>(17, 1)});
      FAIL() << "no error for a sequence over the budget";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("sequence 1 has 17 tokens"), std::string::npos) << e.what();
    }
  }
}

TEST(RewardModel, MissingOrMisshapenScoreWeight) {
  try {
    RewardModel rm(rlcu::test::fixture_model("qwen3-tiny"), 16, Context::cpu());
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("`score.weight` is missing"), std::string::npos) << e.what();
  }
  TempDir d("rm-shape");
  const std::string src = rlcu::test::fixture_model("qwen3-tiny");
  make_reward_dir(src, d.str(), true, 3);
  // Rewrite score.weight as [2, H] (two labels).
  const SafetensorsSet set = SafetensorsSet::open_dir(d.str());
  std::vector<SafetensorsWriteItem> items;
  std::vector<std::vector<float>> store;
  store.reserve(set.names().size());
  for (const std::string& name : set.names()) {
    const auto loc = set.find(name);
    store.emplace_back(static_cast<size_t>(loc.entry->numel()));
    loc.file->read_converted(*loc.entry, store.back().data(), DType::F32);
    std::vector<int64_t> shape = loc.entry->shape;
    if (name == "score.weight") {
      store.back().resize(store.back().size() * 2, 0.5f);
      shape = {2, shape[1]};
    }
    items.push_back({name, Tensor(store.back().data(), DType::F32, Device::CPU,
                                  {static_cast<int64_t>(store.back().size())}),
                     DType::F32, shape});
  }
  TempDir d2("rm-shape2");
  std::filesystem::copy_file(d.file("config.json"), d2.file("config.json"));
  write_safetensors(d2.file("model.safetensors"), items, {});
  try {
    RewardModel rm(d2.str(), 16, Context::cpu());
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("needs [1, 64]"), std::string::npos) << e.what();
  }
}

TEST(RewardModel, ThroughRewardSetWithPromptIds) {
  const std::string src = rlcu::test::fixture_model("qwen3-tiny");
  TempDir d("rm-set");
  const std::vector<float> w = make_reward_dir(src, d.str(), true, 5);
  // The qwen3 tokenizer's ids exceed the tiny model's 512-token vocabulary, so the items carry ids directly.
  const Tokenizer tok = Tokenizer::load(std::string(RLCU_TEST_FIXTURES) + "/tokenizers/qwen3");
  RewardSection cfg;
  cfg.math_answer = 0;
  cfg.model = 0.5;
  cfg.model_path = d.str();
  RewardSet set(cfg, &tok, Context::cpu());
  RewardBatch b;
  b.items.push_back(RewardItem{"p", {1, 2, 3}, {4, 5}, "", ""});
  b.items.push_back(RewardItem{"p", {9}, {10, 11, 12}, "", ""});
  const RewardResult r = set.score(b);
  const std::vector<double> want = reference_scores(src, {{1, 2, 3, 4, 5}, {9, 10, 11, 12}}, w);
  ASSERT_EQ(r.components.at("model").size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_NEAR(r.components.at("model")[i], want[i], 1e-5 * (1.0 + std::fabs(want[i])));
    EXPECT_FLOAT_EQ(r.total[i], static_cast<float>(0.5 * r.components.at("model")[i]));
  }
}
