// The rollout engine on the CPU (and on CUDA where there is a GPU): greedy generation against the Hugging Face
// goldens, rollout log-probs against a dense training-path forward, independence of the samples from batching,
// preemption and graphs, global sequence ids (SamplingOptions::first_seq_id), stop rules, and input errors.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <random>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "ops/gpu_test_util.h"
#include "rlcu/engine.h"
#include "rlcu/error.h"
#include "rlcu/model.h"
#include "rlcu/token_bytes.h"

namespace rlcu {
namespace {

using engine::Completion;
using engine::Engine;
using engine::EngineOptions;
using engine::Request;
using engine::SamplingOptions;

const std::string kModels = std::string(RLCU_TEST_FIXTURES) + "/models/";

struct GreedyCase {
  std::vector<int32_t> prompt, greedy;
};

std::vector<GreedyCase> greedy_cases(const std::string& model) {
  std::ifstream in(kModels + model + "/golden.jsonl");
  std::vector<GreedyCase> out;
  std::string line;
  while (std::getline(in, line)) {
    const auto j = nlohmann::json::parse(line);
    if (j.contains("greedy")) out.push_back({j["prompt"].get<std::vector<int32_t>>(), j["greedy"].get<std::vector<int32_t>>()});
  }
  return out;
}

// log p(seq[t+1] | seq[..t]) from the training-path forward.
std::vector<float> dense_logprobs(Model& m, const std::vector<int32_t>& seq, Context& ctx) {
  TransformerOptions to;
  to.max_tokens = static_cast<int64_t>(seq.size());
  to.act_dtype = default_act_dtype(ctx.device());
  Transformer tf(m, to, ctx);
  PackedBatch pb;
  pb.add_sequence(seq);
  const DeviceBatch db = tf.upload(pb, ctx);
  OwnedTensor lp = OwnedTensor::make(DType::F32, ctx.device(), {to.max_tokens});
  tf.forward(lp.t, Tensor(), db, ctx);
  ctx.synchronize("test");
  return to_host_f32(lp.t);
}

std::vector<Request> random_requests(int prompts, int n, int vocab, uint64_t seed, int min_len = 1, int max_len = 40) {
  std::mt19937_64 g(seed);
  std::vector<Request> reqs(static_cast<size_t>(prompts));
  for (auto& r : reqs) {
    r.prompt.resize(static_cast<size_t>(std::uniform_int_distribution<int>(min_len, max_len)(g)));
    for (auto& x : r.prompt) x = std::uniform_int_distribution<int>(0, vocab - 1)(g);
    r.n = n;
  }
  return reqs;
}

void expect_same(const std::vector<Completion>& a, const std::vector<Completion>& b, float lp_tol) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].request, b[i].request);
    EXPECT_EQ(a[i].sample, b[i].sample);
    ASSERT_EQ(a[i].ids, b[i].ids) << "completion " << i;
    for (size_t k = 0; k < a[i].logprobs.size(); ++k) EXPECT_NEAR(a[i].logprobs[k], b[i].logprobs[k], lp_tol);
  }
}

class EngineGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(EngineGolden, GreedyMatchesHuggingFaceOnCpu) {
  Context& ctx = Context::cpu();
  auto model = Model::load(kModels + GetParam(), ModelOptions{}, ctx);
  const auto cases = greedy_cases(GetParam());
  ASSERT_FALSE(cases.empty());
  EngineOptions eo;
  eo.max_model_len = 128;
  Engine eng(*model, eo, ctx);
  std::vector<Request> reqs;
  for (const auto& c : cases) reqs.push_back({c.prompt, 1});
  SamplingOptions so;
  so.sample.greedy = true;
  so.max_new_tokens = 8;
  so.ignore_eos = true;
  const auto out = eng.generate(reqs, so);
  ASSERT_EQ(out.size(), cases.size());
  for (size_t i = 0; i < cases.size(); ++i) {
    EXPECT_EQ(out[i].ids, cases[i].greedy) << "prompt " << i;
    EXPECT_EQ(out[i].finish, engine::FinishReason::Length);
  }
}

INSTANTIATE_TEST_SUITE_P(Models, EngineGolden, ::testing::Values("qwen3-tiny", "qwen2-tiny", "llama3-tiny"));

// Rollout log-probs (paged decode, forked prompt blocks, copy-on-write) equal the dense forward of the same
// sequences, for every model family, with block sizes that leave partially filled shared blocks.
TEST(Engine, RolloutLogprobsEqualDenseForwardCpu) {
  Context& ctx = Context::cpu();
  for (const char* name : {"qwen3-tiny", "qwen2-tiny", "llama3-tiny"}) {
    auto model = Model::load(kModels + name, ModelOptions{}, ctx);
    for (int64_t bs : {1, 5, 16}) {
      EngineOptions eo;
      eo.block_size = bs;
      eo.max_model_len = 80;
      Engine eng(*model, eo, ctx);
      const auto reqs = random_requests(4, 3, static_cast<int>(model->config().vocab_size), 11 + bs);
      SamplingOptions so;
      so.sample.seed = 5;
      so.max_new_tokens = 12;
      so.ignore_eos = true;
      const auto out = eng.generate(reqs, so);
      ASSERT_EQ(out.size(), 12u);
      for (const auto& c : out) {
        std::vector<int32_t> seq = reqs[static_cast<size_t>(c.request)].prompt;
        const size_t P = seq.size();
        seq.insert(seq.end(), c.ids.begin(), c.ids.end());
        const auto lp = dense_logprobs(*model, seq, ctx);
        ASSERT_EQ(c.ids.size(), 12u);
        for (size_t k = 0; k < c.ids.size(); ++k)
          EXPECT_NEAR(c.logprobs[k], lp[P + k - 1], 2e-5) << name << " bs " << bs << " token " << k;
      }
    }
  }
}

// The same seed gives the same completions whatever the batch size, the block size, and preemption.
TEST(Engine, SamplesIndependentOfBatchingAndPreemption) {
  Context& ctx = Context::cpu();
  auto model = Model::load(kModels + "qwen3-tiny", ModelOptions{}, ctx);
  const auto reqs = random_requests(6, 4, static_cast<int>(model->config().vocab_size), 3, 1, 30);
  SamplingOptions so;
  so.sample.seed = 42;
  so.sample.top_k = 50;
  so.sample.top_p = 0.9f;
  so.max_new_tokens = 20;
  so.ignore_eos = true;
  EngineOptions base;
  base.max_model_len = 64;
  Engine ref_eng(*model, base, ctx);
  const auto ref = ref_eng.generate(reqs, so);
  EXPECT_EQ(ref_eng.stats().preemptions, 0);

  EngineOptions small = base;
  small.max_batch = 5;  // groups of 4: at most one group decodes at a time, with another admitted later
  small.block_size = 3;
  Engine e2(*model, small, ctx);
  expect_same(ref, e2.generate(reqs, so), 1e-5f);

  EngineOptions tight = base;
  tight.block_size = 4;
  tight.max_kv_tokens = 4 * 40;  // 40 blocks: far less than 24 sequences need, so decode preempts
  Engine e3(*model, tight, ctx);
  expect_same(ref, e3.generate(reqs, so), 1e-5f);
  EXPECT_GT(e3.stats().preemptions, 0);

  // A different seed gives different samples.
  SamplingOptions other = so;
  other.sample.seed = 43;
  const auto diff = ref_eng.generate(reqs, other);
  int same = 0;
  for (size_t i = 0; i < ref.size(); ++i) same += ref[i].ids == diff[i].ids;
  EXPECT_LT(same, static_cast<int>(ref.size()) / 2);
}

// Data parallel: requests [2, 5) generated alone with first_seq_id = 2 * n sample what they sample as part of the
// whole list (the sampler's sequence ids are global), and differently without the offset.
TEST(Engine, FirstSeqIdMakesASubsetSampleAsInTheWhole) {
  Context& ctx = Context::cpu();
  auto model = Model::load(kModels + "qwen3-tiny", ModelOptions{}, ctx);
  const auto reqs = random_requests(6, 3, static_cast<int>(model->config().vocab_size), 3, 1, 30);
  SamplingOptions so;
  so.sample.seed = 7;
  so.max_new_tokens = 12;
  so.ignore_eos = true;
  EngineOptions eo;
  eo.max_model_len = 64;
  Engine eng(*model, eo, ctx);
  const auto whole = eng.generate(reqs, so);
  const std::vector<Request> part(reqs.begin() + 2, reqs.begin() + 5);
  SamplingOptions shifted = so;
  shifted.first_seq_id = 2 * 3;
  const auto sub = eng.generate(part, shifted);
  ASSERT_EQ(sub.size(), 9u);
  int differ = 0;
  const auto plain = eng.generate(part, so);
  for (size_t i = 0; i < sub.size(); ++i) {
    EXPECT_EQ(sub[i].request, whole[6 + i].request - 2);
    EXPECT_EQ(sub[i].ids, whole[6 + i].ids) << i;
    for (size_t k = 0; k < sub[i].logprobs.size(); ++k)
      EXPECT_NEAR(sub[i].logprobs[k], whole[6 + i].logprobs[k], 1e-5f);
    differ += plain[i].ids != sub[i].ids;
  }
  EXPECT_GT(differ, 4);
}

TEST(Engine, StopsAtEosStopStringsAndLength) {
  Context& ctx = Context::cpu();
  auto model = Model::load(kModels + "qwen3-tiny", ModelOptions{}, ctx);
  const auto cases = greedy_cases("qwen3-tiny");
  const GreedyCase& gc = cases[0];  // greedy: 141 x7, 401
  EngineOptions eo;
  eo.max_model_len = 64;
  Engine eng(*model, eo, ctx);
  SamplingOptions so;
  so.sample.greedy = true;
  so.max_new_tokens = 8;
  so.eos_ids = {401};
  auto out = eng.generate({{gc.prompt, 1}}, so);
  EXPECT_EQ(out[0].ids, gc.greedy);
  EXPECT_EQ(out[0].finish, engine::FinishReason::Eos);
  so.ignore_eos = true;
  so.max_new_tokens = 3;
  out = eng.generate({{gc.prompt, 1}}, so);
  EXPECT_EQ(out[0].ids, std::vector<int32_t>(gc.greedy.begin(), gc.greedy.begin() + 3));
  EXPECT_EQ(out[0].finish, engine::FinishReason::Length);
  // Stop strings over token bytes: token i spells "<i>"; "1><14" spans the 1st and 2nd tokens.
  std::vector<std::string> spelled(static_cast<size_t>(model->config().vocab_size));
  for (size_t i = 0; i < spelled.size(); ++i) spelled[i] = "<" + std::to_string(i) + ">";
  const TokenBytesTable bytes = TokenBytesTable::from_strings(spelled);
  so.max_new_tokens = 8;
  so.token_bytes = &bytes;
  so.stop_strings = {"zzz", "1><14"};
  out = eng.generate({{gc.prompt, 1}}, so);
  EXPECT_EQ(out[0].ids, std::vector<int32_t>(gc.greedy.begin(), gc.greedy.begin() + 2));
  EXPECT_EQ(out[0].finish, engine::FinishReason::Stop);
  // The context length ends a completion too.
  EngineOptions shortctx;
  shortctx.max_model_len = static_cast<int64_t>(gc.prompt.size()) + 2;
  Engine e2(*model, shortctx, ctx);
  so.stop_strings.clear();
  out = e2.generate({{gc.prompt, 1}}, so);
  EXPECT_EQ(out[0].ids.size(), 2u);
  EXPECT_EQ(out[0].finish, engine::FinishReason::Length);
}

TEST(Engine, RejectsBadRequests) {
  Context& ctx = Context::cpu();
  auto model = Model::load(kModels + "qwen3-tiny", ModelOptions{}, ctx);
  EngineOptions eo;
  eo.max_model_len = 16;
  Engine eng(*model, eo, ctx);
  SamplingOptions so;
  so.max_new_tokens = 4;
  auto expect_error = [&](const std::vector<Request>& r, const std::string& what) {
    try {
      eng.generate(r, so);
      FAIL() << "no error for " << what;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    }
  };
  expect_error({{{1, 2}, 1}, {{}, 1}}, "request 1: empty prompt");
  expect_error({{{1, 100000}, 1}}, "token id 100000");
  expect_error({{std::vector<int32_t>(16, 1), 1}}, "no room in the context length 16");
  expect_error({{{1}, 0}}, "n must be >= 1");
  // The engine still works after an error.
  EXPECT_EQ(eng.generate({{{1, 2, 3}, 2}}, so).size(), 2u);
}

// ---- CUDA ----------------------------------------------------------------------------------------------------------

TEST(EngineCuda, GreedyMatchesGoldensOnBf16Models) {
  RLCU_REQUIRE_CUDA();
  auto ctx = Context::cuda(0);
  int match = 0, total = 0;
  for (const char* name : {"qwen3-tiny-bf16", "qwen2-tiny-bf16", "llama3-tiny-bf16"}) {
    auto model = Model::load(kModels + name, ModelOptions{}, *ctx);
    EngineOptions eo;
    eo.max_model_len = 128;
    Engine eng(*model, eo, *ctx);
    const auto cases = greedy_cases(name);
    std::vector<Request> reqs;
    for (const auto& c : cases) reqs.push_back({c.prompt, 1});
    SamplingOptions so;
    so.sample.greedy = true;
    so.max_new_tokens = 8;
    so.ignore_eos = true;
    const auto out = eng.generate(reqs, so);
    int model_match = 0;
    for (size_t i = 0; i < cases.size(); ++i) {
      EXPECT_EQ(out[i].ids[0], cases[i].greedy[0]) << name << " prompt " << i << ": first token";
      for (size_t k = 0; k < 8; ++k) model_match += out[i].ids[k] == cases[i].greedy[k];
      total += 8;
    }
    match += model_match;
    std::printf("%s: %d of %zu greedy tokens match the float64 goldens\n", name, model_match, 8 * cases.size());
  }
  EXPECT_GE(match, total * 9 / 10) << match << " of " << total << " greedy tokens match";
}

// CUDA rollout log-probs against the CPU dense forward (fp32) of the same sequences, graphs on and off giving
// the same tokens.
TEST(EngineCuda, RolloutMatchesCpuDenseForwardAndGraphs) {
  RLCU_REQUIRE_CUDA();
  auto ctx = Context::cuda(0);
  for (const char* name : {"qwen3-tiny", "qwen2-tiny", "llama3-tiny"}) {
    auto gpu_model = Model::load(kModels + name, ModelOptions{}, *ctx);
    auto cpu_model = Model::load(kModels + name, ModelOptions{}, Context::cpu());
    const auto reqs = random_requests(5, 4, static_cast<int>(gpu_model->config().vocab_size), 9, 1, 60);
    SamplingOptions so;
    so.sample.seed = 7;
    so.max_new_tokens = 24;
    so.ignore_eos = true;
    EngineOptions eo;
    eo.max_model_len = 96;
    eo.block_size = 16;
    Engine eng(*gpu_model, eo, *ctx);
    const auto out = eng.generate(reqs, so);
    EngineOptions eager = eo;
    eager.cuda_graphs = false;
    Engine eng2(*gpu_model, eager, *ctx);
    expect_same(out, eng2.generate(reqs, so), 1e-6f);
    double sum = 0, mx = 0;
    int64_t n = 0;
    for (const auto& c : out) {
      std::vector<int32_t> seq = reqs[static_cast<size_t>(c.request)].prompt;
      const size_t P = seq.size();
      seq.insert(seq.end(), c.ids.begin(), c.ids.end());
      const auto lp = dense_logprobs(*cpu_model, seq, Context::cpu());
      for (size_t k = 0; k < c.ids.size(); ++k) {
        const double d = std::fabs(c.logprobs[k] - lp[P + k - 1]);
        sum += d;
        mx = std::max(mx, d);
        ++n;
      }
    }
    EXPECT_LT(mx, 5e-2) << name;
    EXPECT_LT(sum / static_cast<double>(n), 1e-2) << name;
  }
}

}  // namespace
}  // namespace rlcu
