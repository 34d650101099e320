// Evaluation: the metric helpers of include/rlcu/eval.h on hand-made lists (pass@k against exact integer
// binomials, accuracy and pass@1/pass@k by hand), and `rlcu eval` end to end on a tiny random model (CPU): the JSON
// report's fields and counts agree with the samples file it writes, greedy samples of one prompt are identical, a
// deterministic external reward (by completion index) gives known accuracy / pass@1 / pass@k, and bad input exits
// with the right code and message.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <memory>
#include <sstream>

#include "parity/model_test_util.h"
#include "rlcu/error.h"
#include "rlcu/eval.h"

using namespace rlcu;
using namespace rlcu::test;
using nlohmann::json;

namespace {

uint64_t binom(int64_t n, int64_t k) {
  if (k < 0 || k > n) return 0;
  uint64_t r = 1;
  for (int64_t i = 1; i <= k; ++i) r = r * static_cast<uint64_t>(n - k + i) / static_cast<uint64_t>(i);
  return r;
}

std::vector<json> read_jsonl(const std::string& path) {
  std::vector<json> out;
  std::istringstream in(read_text(path));
  std::string line;
  while (std::getline(in, line))
    if (!line.empty()) out.push_back(json::parse(line));
  return out;
}

}  // namespace

TEST(EvalMetrics, PassAtKMatchesBinomials) {
  EXPECT_DOUBLE_EQ(pass_at_k(5, 2, 3), 0.9);  // 1 - C(3,3)/C(5,3) = 1 - 1/10
  EXPECT_DOUBLE_EQ(pass_at_k(4, 1, 2), 0.5);  // 1 - C(3,2)/C(4,2) = 1 - 3/6
  EXPECT_DOUBLE_EQ(pass_at_k(4, 2, 3), 1.0);  // fewer than k wrong samples
  EXPECT_DOUBLE_EQ(pass_at_k(7, 0, 7), 0.0);
  for (int64_t n = 1; n <= 16; ++n)
    for (int64_t c = 0; c <= n; ++c)
      for (int64_t k = 1; k <= n; ++k) {
        const double want = 1.0 - static_cast<double>(binom(n - c, k)) / static_cast<double>(binom(n, k));
        ASSERT_NEAR(pass_at_k(n, c, k), want, 1e-12) << n << " " << c << " " << k;
      }
  for (int64_t n = 1; n <= 16; ++n)
    for (int64_t c = 0; c <= n; ++c) EXPECT_NEAR(pass_at_k(n, c, 1), static_cast<double>(c) / n, 1e-12);
}

TEST(EvalMetrics, SummaryByHand) {
  // 3 prompts x 2 samples: correct (T, F), (F, F), (T, T).
  std::vector<EvalCompletion> v = {
      {0, 1.0, true, 4, {{"math_answer", 1.0}}}, {0, 0.2, false, 6, {{"math_answer", 0.0}}},
      {1, 0.0, false, 8, {{"math_answer", 0.0}}}, {1, -0.5, false, 2, {{"math_answer", 0.0}}},
      {2, 1.0, true, 5, {{"math_answer", 1.0}}}, {2, 1.5, true, 5, {{"math_answer", 1.0}}}};
  const EvalSummary s = summarize_eval(v, 3, 2);
  EXPECT_EQ(s.prompts, 3);
  EXPECT_EQ(s.completions, 6);
  EXPECT_EQ(s.k, 2);
  EXPECT_DOUBLE_EQ(s.accuracy, 0.5);
  EXPECT_DOUBLE_EQ(s.pass_at_1, 0.5);              // (1/2 + 0 + 1) / 3
  EXPECT_DOUBLE_EQ(s.pass_at_k, 2.0 / 3.0);        // (1 + 0 + 1) / 3
  EXPECT_DOUBLE_EQ(s.mean_reward, 3.2 / 6.0);      // (1 + .2 + 0 - .5 + 1 + 1.5) / 6
  EXPECT_DOUBLE_EQ(s.mean_length, 30.0 / 6.0);
  EXPECT_DOUBLE_EQ(s.component_means.at("math_answer"), 0.5);
  EXPECT_THROW(summarize_eval(v, 2, 2), Error);  // 6 completions for 4 slots
  v[5].prompt = 1;                               // prompt 1 with 3 samples, prompt 2 with 1
  EXPECT_THROW(summarize_eval(v, 3, 2), Error);
}

TEST(EvalMetrics, CorrectnessRule) {
  EXPECT_EQ(correctness_component({"format", "exact_match", "math_answer"}), "math_answer");
  EXPECT_EQ(correctness_component({"contains", "exact_match"}), "exact_match");
  EXPECT_EQ(correctness_component({"length", "contains"}), "contains");
  EXPECT_EQ(correctness_component({"format", "command"}), "");
  EXPECT_EQ(correctness_component({"math_answer", "countdown"}), "countdown");
  EXPECT_TRUE(is_correct("math_answer", 1.0, 0.3));
  EXPECT_FALSE(is_correct("math_answer", 0.0, 5.0));
  EXPECT_TRUE(is_correct("", 0.0, 1.0 - 1e-7));
  EXPECT_FALSE(is_correct("", 0.0, 0.99));
}

class CliEval : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = std::make_unique<TempDir>("eval-e2e");
    const CmdResult m = run_rlcu("init-model --arch qwen3 --hidden 32 --layers 1 --heads 2 --kv-heads 1 "
                                 "--byte-tokenizer --seed 5 --out " + quote(model()));
    ASSERT_EQ(m.code, 0) << m.err;
    const CmdResult d = run_rlcu("data synth --task arithmetic --n 6 --split test --out " + quote(data()));
    ASSERT_EQ(d.code, 0) << d.err;
  }
  static void TearDownTestSuite() { dir_.reset(); }
  static std::string model() { return dir_->file("model"); }
  static std::string data() { return dir_->file("test.jsonl"); }
  static std::string file(const std::string& n) { return dir_->file(n); }
  static std::unique_ptr<TempDir> dir_;
};
std::unique_ptr<TempDir> CliEval::dir_;

TEST_F(CliEval, ReportAgreesWithSamples) {
  const CmdResult r = run_rlcu("eval --model " + quote(model()) + " --data " + quote(data()) +
                               " --greedy --n 2 --max-new-tokens 12 --output " + quote(file("a.json")) +
                               " --samples-out " + quote(file("a.jsonl")));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("pass@2"), std::string::npos) << r.out;
  const json j = read_json(file("a.json"));
  EXPECT_EQ(j["prompts"], 6);
  EXPECT_EQ(j["n"], 2);
  EXPECT_EQ(j["k"], 2);
  EXPECT_EQ(j["completions"], 12);
  EXPECT_EQ(j["correct_by"], "math_answer");
  const std::vector<json> s = read_jsonl(file("a.jsonl"));
  ASSERT_EQ(s.size(), 12u);
  double correct = 0, reward = 0, length = 0, pk = 0;
  std::map<int, int> per_prompt;
  for (size_t i = 0; i < s.size(); ++i) {
    EXPECT_EQ(s[i]["index"], static_cast<int>(i / 2));
    EXPECT_EQ(s[i]["sample"], static_cast<int>(i % 2));
    EXPECT_EQ(s[i]["correct"].get<bool>(), s[i]["rewards/math_answer"].get<double>() == 1.0);
    EXPECT_DOUBLE_EQ(s[i]["reward"].get<double>(), s[i]["rewards/math_answer"].get<double>());
    EXPECT_LE(s[i]["length"].get<int>(), 12);
    correct += s[i]["correct"].get<bool>() ? 1 : 0;
    reward += s[i]["reward"].get<double>();
    length += s[i]["length"].get<double>();
    per_prompt[s[i]["index"].get<int>()] += s[i]["correct"].get<bool>() ? 1 : 0;
  }
  for (size_t i = 0; i < s.size(); i += 2) EXPECT_EQ(s[i]["completion"], s[i + 1]["completion"]);  // greedy
  for (const auto& [p, c] : per_prompt) pk += c > 0 ? 1 : 0;
  EXPECT_DOUBLE_EQ(j["accuracy"].get<double>(), correct / 12);
  EXPECT_DOUBLE_EQ(j["pass@1"].get<double>(), correct / 12);
  EXPECT_DOUBLE_EQ(j["pass@k"].get<double>(), pk / 6);
  EXPECT_NEAR(j["mean_reward"].get<double>(), reward / 12, 1e-12);
  EXPECT_NEAR(j["mean_length"].get<double>(), length / 12, 1e-12);
  EXPECT_NEAR(j["rewards"]["math_answer"].get<double>(), reward / 12, 1e-12);
}

TEST_F(CliEval, KnownRewardsGiveKnownMetrics) {
  // The reward command scores completion i (its index in the batch, prompt * n + sample) 1 when i % 4 == 0, else 0.
  // 6 prompts x 3 samples: indices 0..17, correct 0, 4, 8, 12, 16 -> prompts 0, 1, 2, 4, 5 have one correct each.
  write_text(file("r.sh"),
             "exec sed -u -e 's/^.*\"index\":\\([048]\\|[0-9]*[02468][048]\\|[0-9]*[13579][26]\\)[,}].*$/1/;t' "
             "-e 's/^.*$/0/'\n");
  const CmdResult r = run_rlcu("eval --model " + quote(model()) + " --data " + quote(data()) +
                               " --n 3 --temperature 0.7 --seed 3 --max-new-tokens 6 --reward command " +
                               quote("--set=reward.command_line=sh " + file("r.sh")) + " --output " +
                               quote(file("b.json")) + " --samples-out " + quote(file("b.jsonl")));
  ASSERT_EQ(r.code, 0) << r.err;
  const json j = read_json(file("b.json"));
  EXPECT_EQ(j["completions"], 18);
  EXPECT_EQ(j["correct_by"], "reward>=1");
  EXPECT_DOUBLE_EQ(j["accuracy"].get<double>(), 5.0 / 18.0);
  EXPECT_DOUBLE_EQ(j["mean_reward"].get<double>(), 5.0 / 18.0);
  EXPECT_NEAR(j["pass@1"].get<double>(), (5.0 / 3.0) / 6.0, 1e-12);
  EXPECT_NEAR(j["pass@k"].get<double>(), 5.0 / 6.0, 1e-12);
  const std::vector<json> s = read_jsonl(file("b.jsonl"));
  ASSERT_EQ(s.size(), 18u);
  for (size_t i = 0; i < s.size(); ++i) EXPECT_EQ(s[i]["correct"].get<bool>(), i % 4 == 0) << i;
}

// The data.* keys of `rlcu train` read eval's --data: other field names, a prompt template and a system prompt (seen
// in the rendered prompt of --samples-out), malformed records skipped; keys that make no sense for eval are refused.
TEST_F(CliEval, DataOptionsOfTrain) {
  write_text(file("fields.jsonl"),
             "{\"question\": \"2+2\", \"solution\": \"4\"}\nnot json\n{\"question\": \"3+3\", \"solution\": \"6\"}\n");
  write_text(file("plain.jinja"),
             "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}{% if add_generation_prompt %}A:{% endif %}");
  const CmdResult r = run_rlcu("eval --model " + quote(model()) + " --data " + quote(file("fields.jsonl")) +
                               " --greedy --max-new-tokens 4 --chat-template " + quote(file("plain.jinja")) +
                               " --set data.prompt_field=question --set data.answer_field=solution" +
                               " --set data.skip_malformed=true " + quote("--set=data.prompt_template={question}=") +
                               " " + quote("--set=data.system_prompt=Be brief.") + " --samples-out " +
                               quote(file("fields_out.jsonl")));
  ASSERT_EQ(r.code, 0) << r.err;
  const std::vector<json> s = read_jsonl(file("fields_out.jsonl"));
  ASSERT_EQ(s.size(), 2u);
  EXPECT_EQ(s[0]["prompt"], "[system] Be brief.\n[user] 2+2=\nA:");
  EXPECT_EQ(s[0]["answer"], "4");
  EXPECT_EQ(s[1]["answer"], "6");
  const CmdResult bad = run_rlcu("eval --model " + quote(model()) + " --data " + quote(file("fields.jsonl")) +
                                 " --set data.shuffle=true");
  EXPECT_EQ(bad.code, 2) << bad.err;
  EXPECT_NE(bad.err.find("data.shuffle does not apply to eval"), std::string::npos) << bad.err;
  const CmdResult strict = run_rlcu("eval --model " + quote(model()) + " --data " + quote(file("fields.jsonl")) +
                                    " --set data.prompt_field=question --set data.answer_field=solution");
  EXPECT_EQ(strict.code, 1);
  EXPECT_NE(strict.err.find("fields.jsonl:2"), std::string::npos) << strict.err;
}

// --chat-template of eval and generate: the model's template by default, `none`, a Jinja file; a file that raises
// stops with its message and the input line.
TEST_F(CliEval, ChatTemplateChoices) {
  write_text(file("q.jsonl"), "{\"prompt\": \"1+1=\", \"answer\": \"2\"}\n");
  write_text(file("t.jinja"), "Q: {{ messages[-1].content }}{% if add_generation_prompt %} A:{% endif %}");
  const std::string base = "eval --model " + quote(model()) + " --data " + quote(file("q.jsonl")) +
                           " --greedy --max-new-tokens 2 --samples-out " + quote(file("s.jsonl")) + " --output " +
                           quote(file("s.json"));
  CmdResult r = run_rlcu(base);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(read_jsonl(file("s.jsonl"))[0]["prompt"], "<|im_start|>user\n1+1=<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(read_json(file("s.json"))["sampling"]["chat_template"], "auto");
  r = run_rlcu(base + " --chat-template none");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(read_jsonl(file("s.jsonl"))[0]["prompt"], "1+1=");
  r = run_rlcu(base + " --chat-template " + quote(file("t.jinja")));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(read_jsonl(file("s.jsonl"))[0]["prompt"], "Q: 1+1= A:");
  EXPECT_EQ(read_json(file("s.json"))["sampling"]["chat_template"], file("t.jinja"));
  r = run_rlcu(base + " --chat-template vicuna");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("'vicuna'"), std::string::npos) << r.err;

  write_text(file("g.jsonl"), "{\"prompt\": \"raw\"}\n{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}\n");
  const std::string gen = "generate --model " + quote(model()) + " --input " + quote(file("g.jsonl")) +
                          " --greedy --max-new-tokens 2 --output " + quote(file("g.out"));
  r = run_rlcu(gen + " --chat-template " + quote(file("t.jinja")));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(read_jsonl(file("g.out")).size(), 2u);
  write_text(file("raise.jinja"), "{{ raise_exception('this template takes no ' ~ messages[0].role) }}");
  r = run_rlcu(gen + " --chat-template " + quote(file("raise.jinja")));
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find(file("g.jsonl") + ":2: this template takes no user"), std::string::npos) << r.err;
}

TEST_F(CliEval, BadInput) {
  CmdResult r = run_rlcu("eval --data " + quote(data()));
  EXPECT_EQ(r.code, 2) << r.err;
  r = run_rlcu("eval --model " + quote(model()) + " --data " + quote(data()) + " --reward bogus");
  EXPECT_EQ(r.code, 2) << r.err;
  EXPECT_NE(r.err.find("unknown reward `bogus`"), std::string::npos) << r.err;
  r = run_rlcu("eval --model " + quote(model()) + " --data " + quote(data()) + " --set optimizer.lr=1");
  EXPECT_EQ(r.code, 2) << r.err;
  write_text(file("bad.jsonl"), "{\"prompt\": \"1+1=\", \"answer\": \"2\"}\n{\"prompt\": \"2+2=\"}\n");
  r = run_rlcu("eval --model " + quote(model()) + " --data " + quote(file("bad.jsonl")));
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find(file("bad.jsonl") + ":2"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("answer"), std::string::npos) << r.err;
  r = run_rlcu("eval --model " + quote(model()) + " --data " + quote(file("missing.jsonl")));
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("missing.jsonl"), std::string::npos) << r.err;
}
