// Synthetic tasks: determinism, answers recomputed here from the prompt text by an independent evaluator, the
// worked SFT steps, how difficulty changes the ranges, disjoint train/test splits, the countdown checker, and
// `rlcu data synth` end to end (same bytes twice, usage errors exit 2).
#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <map>
#include <set>
#include <sstream>

#include "parity/model_test_util.h"
#include "rlcu/error.h"
#include "rlcu/synth.h"

using namespace rlcu;
using namespace rlcu::test;
using nlohmann::json;

namespace {

std::vector<SynthExample> gen(const std::string& task, int64_t n, uint64_t seed, int difficulty,
                              SynthSplit split = SynthSplit::Train, bool sft = false) {
  SynthOptions o;
  o.task = task;
  o.n = n;
  o.seed = seed;
  o.difficulty = difficulty;
  o.split = split;
  o.sft = sft;
  return synth_generate(o);
}

// Independent evaluator: shunting-yard over integers with + - * / and parentheses (double arithmetic is exact for
// the magnitudes used here), returning the operands it saw.
double shunting_yard(const std::string& s, std::vector<int64_t>* operands = nullptr) {
  std::vector<double> vals;
  std::vector<char> ops;
  auto prec = [](char op) { return op == '*' || op == '/' ? 2 : op == '+' || op == '-' ? 1 : 0; };
  auto apply = [&] {
    const char op = ops.back();
    ops.pop_back();
    const double b = vals.back();
    vals.pop_back();
    const double a = vals.back();
    vals.pop_back();
    vals.push_back(op == '+' ? a + b : op == '-' ? a - b : op == '*' ? a * b : a / b);
  };
  for (size_t i = 0; i < s.size();) {
    const char c = s[i];
    if (std::isdigit(static_cast<unsigned char>(c))) {
      int64_t v = 0;
      while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i]))) v = v * 10 + (s[i++] - '0');
      vals.push_back(static_cast<double>(v));
      if (operands) operands->push_back(v);
      continue;
    }
    if (c == '(') {
      ops.push_back(c);
    } else if (c == ')') {
      while (ops.back() != '(') apply();
      ops.pop_back();
    } else {
      while (!ops.empty() && prec(ops.back()) >= prec(c)) apply();
      ops.push_back(c);
    }
    ++i;
  }
  while (!ops.empty()) apply();
  return vals.at(0);
}

std::vector<std::string> split_str(const std::string& s, const std::string& sep) {
  std::vector<std::string> out;
  size_t b = 0;
  for (size_t p = s.find(sep); p != std::string::npos; p = s.find(sep, b)) {
    out.push_back(s.substr(b, p - b));
    b = p + sep.size();
  }
  out.push_back(s.substr(b));
  return out;
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// A binary step string "a<op>b=c" (a may be negative): checks c == a op b.
void check_step(const std::string& step) {
  const size_t eq = step.find('=');
  ASSERT_NE(eq, std::string::npos) << step;
  const std::string lhs = step.substr(0, eq);
  const size_t op = lhs.find_first_of("+-*", 1);  // skip a leading minus
  ASSERT_NE(op, std::string::npos) << step;
  const int64_t a = std::stoll(lhs.substr(0, op)), b = std::stoll(lhs.substr(op + 1)),
                c = std::stoll(step.substr(eq + 1));
  const int64_t want = lhs[op] == '+' ? a + b : lhs[op] == '-' ? a - b : a * b;
  EXPECT_EQ(c, want) << step;
}

}  // namespace

TEST(Synth, Deterministic) {
  for (const std::string& task : synth_task_names()) {
    for (int d : {1, 3, 5}) {
      const auto a = gen(task, 50, 7, d, SynthSplit::Train, true);
      const auto b = gen(task, 50, 7, d, SynthSplit::Train, true);
      const auto c = gen(task, 50, 8, d, SynthSplit::Train, true);
      ASSERT_EQ(a.size(), 50u);
      std::string sa, sb, sc;
      for (size_t i = 0; i < a.size(); ++i) sa += a[i].to_jsonl() + "\n", sb += b[i].to_jsonl() + "\n";
      for (const auto& e : c) sc += e.to_jsonl() + "\n";
      EXPECT_EQ(sa, sb) << task << " d" << d;
      EXPECT_NE(sa, sc) << task << " d" << d;
    }
  }
}

TEST(Synth, ArithmeticAnswersAndSteps) {
  for (int d = 1; d <= 7; ++d) {
    for (const auto& e : gen("arithmetic", 300, 11, d, SynthSplit::Train, true)) {
      ASSERT_TRUE(ends_with(e.prompt, "=")) << e.prompt;
      const std::string expr = e.prompt.substr(0, e.prompt.size() - 1);
      const double want = shunting_yard(expr);
      EXPECT_EQ(std::to_string(static_cast<int64_t>(want)), e.answer) << e.prompt;
      ASSERT_TRUE(ends_with(e.completion, " \\boxed{" + e.answer + "}")) << e.completion;
      const std::string steps = e.completion.substr(0, e.completion.size() - e.answer.size() - 9);
      const auto parts = split_str(steps, ", ");
      const size_t n_ops = static_cast<size_t>(std::count_if(expr.begin(), expr.end(),
                                                             [](char c) { return c == '+' || c == '-' || c == '*'; }));
      EXPECT_EQ(parts.size(), n_ops) << e.completion;
      for (const auto& p : parts) check_step(p);
      // The last step's result is the answer.
      EXPECT_EQ(parts.back().substr(parts.back().find('=') + 1), e.answer) << e.completion;
    }
  }
}

TEST(Synth, ArithmeticDifficultyChangesRanges) {
  auto stats = [](int d) {
    struct S {
      size_t min_ops = 99, max_ops = 0;
      int64_t max_first = 0, max_other = 0, min_answer = INT64_MAX;
      bool has_mul = false;
    } s;
    for (const auto& e : gen("arithmetic", 400, 3, d)) {
      std::vector<int64_t> v;
      shunting_yard(e.prompt.substr(0, e.prompt.size() - 1), &v);
      s.min_ops = std::min(s.min_ops, v.size());
      s.max_ops = std::max(s.max_ops, v.size());
      s.max_first = std::max(s.max_first, v[0]);
      for (size_t i = 1; i < v.size(); ++i) s.max_other = std::max(s.max_other, v[i]);
      s.min_answer = std::min<int64_t>(s.min_answer, std::stoll(e.answer));
      s.has_mul = s.has_mul || e.prompt.find('*') != std::string::npos;
    }
    return s;
  };
  const auto d1 = stats(1), d2 = stats(2), d3 = stats(3), d4 = stats(4), d6 = stats(6);
  EXPECT_EQ(d1.max_ops, 2u);
  EXPECT_EQ(d1.min_ops, 2u);
  EXPECT_LE(d1.max_first, 99);
  EXPECT_GT(d1.max_first, 9);
  EXPECT_LE(d1.max_other, 9);
  EXPECT_GE(d1.min_answer, 0);
  EXPECT_FALSE(d1.has_mul);
  EXPECT_EQ(d2.max_ops, 2u);
  EXPECT_GT(d2.max_other, 9);
  EXPECT_LE(d2.max_other, 99);
  EXPECT_LT(d2.min_answer, 0);
  EXPECT_FALSE(d2.has_mul);
  EXPECT_EQ(d3.min_ops, 3u);
  EXPECT_LE(std::max(d3.max_first, d3.max_other), 99);
  EXPECT_TRUE(d3.has_mul);
  EXPECT_EQ(d4.min_ops, 3u);
  EXPECT_GT(std::max(d4.max_first, d4.max_other), 99);
  EXPECT_LE(std::max(d4.max_first, d4.max_other), 999);
  EXPECT_EQ(d6.min_ops, 5u);
}

TEST(Synth, CountdownSolutionsCheckOut) {
  for (int d = 1; d <= 6; ++d) {
    size_t max_count = 0, min_count = 99;
    int64_t max_number = 0;
    bool has_div = false;
    for (const auto& e : gen("countdown", 200, 5, d, SynthSplit::Train, true)) {
      const auto numbers = e.extra.at("numbers").get<std::vector<int64_t>>();
      const int64_t target = e.extra.at("target").get<int64_t>();
      const std::string sol = e.extra.at("solution").get<std::string>();
      std::string want_prompt = "Use", want_answer;
      for (int64_t x : numbers) {
        want_prompt += " " + std::to_string(x);
        want_answer += std::to_string(x) + " ";
      }
      EXPECT_EQ(e.answer, want_answer + "-> " + std::to_string(target));
      EXPECT_EQ(e.prompt, want_prompt + " to make " + std::to_string(target));
      EXPECT_TRUE(std::is_sorted(numbers.begin(), numbers.end()));
      std::vector<int64_t> used;
      EXPECT_EQ(shunting_yard(sol, &used), static_cast<double>(target)) << sol;
      std::sort(used.begin(), used.end());
      EXPECT_EQ(used, numbers) << sol;
      EXPECT_GE(target, 1);
      EXPECT_LE(target, 1000);
      EXPECT_EQ(e.completion, sol + "=" + std::to_string(target) + " \\boxed{" + std::to_string(target) + "}");
      EXPECT_EQ(countdown_expression(e.completion), sol);
      std::string why;
      EXPECT_TRUE(check_countdown(sol, numbers, target, &why)) << sol << ": " << why;
      max_count = std::max(max_count, numbers.size());
      min_count = std::min(min_count, numbers.size());
      max_number = std::max(max_number, numbers.back());
      has_div = has_div || sol.find('/') != std::string::npos;
    }
    const size_t want_count = d == 1 ? 3 : d <= 3 ? 4 : d == 4 ? 5 : 6;
    EXPECT_EQ(min_count, want_count) << "d" << d;
    EXPECT_EQ(max_count, want_count) << "d" << d;
    EXPECT_LE(max_number, d <= 2 ? 9 : d <= 4 ? 25 : 50) << "d" << d;
    if (d >= 3) {
      EXPECT_GT(max_number, 9) << "d" << d;
    }
    if (d < 4) {
      EXPECT_FALSE(has_div) << "d" << d;
    } else {
      EXPECT_TRUE(has_div) << "d" << d;
    }
  }
}

TEST(Synth, CountdownChecker) {
  const std::vector<int64_t> nums = {3, 5, 7};
  std::string why;
  EXPECT_TRUE(check_countdown("3*5+7", nums, 22));
  EXPECT_TRUE(check_countdown(" (7 + 5) * 3 ", nums, 36));
  EXPECT_TRUE(check_countdown("7*3/ (3 - 0)", {0, 3, 3, 7}, 7));
  EXPECT_FALSE(check_countdown("3*5+7", nums, 23, &why));
  EXPECT_NE(why.find("equals 22, not 23"), std::string::npos) << why;
  EXPECT_FALSE(check_countdown("3*5", nums, 15, &why));
  EXPECT_NE(why.find("each given number exactly once"), std::string::npos) << why;
  EXPECT_FALSE(check_countdown("7+7+8", nums, 22));
  EXPECT_FALSE(check_countdown("3+5+7+7", nums, 22));
  EXPECT_FALSE(check_countdown("7/3*5", nums, 10, &why));
  EXPECT_NE(why.find("7/3 is not an integer"), std::string::npos) << why;
  EXPECT_FALSE(check_countdown("3*(5+7", nums, 36, &why));
  EXPECT_NE(why.find("missing ')'"), std::string::npos) << why;
  EXPECT_FALSE(check_countdown("-3+5+7", nums, 9));
  EXPECT_FALSE(check_countdown("3+5+7 x", nums, 15));
  EXPECT_FALSE(check_countdown("", nums, 0));
  EXPECT_FALSE(check_countdown("5/(3-3)+7", {3, 3, 5, 7}, 7, &why));
  EXPECT_NE(why.find("division by zero"), std::string::npos) << why;
  EXPECT_EQ(eval_countdown_expression("(3+5)*7", nums), 56);
  EXPECT_EQ(countdown_expression("let me think\n3*5+7 = 22\nso \\boxed{22}"), "3*5+7");
  EXPECT_EQ(countdown_expression("no equation here"), "");
  EXPECT_EQ(countdown_expression("a=1\n"), "a");
}

TEST(Synth, LinearAnswers) {
  for (int d = 1; d <= 4; ++d) {
    int64_t min_x = 100, max_x = -100, max_a = 0;
    for (const auto& e : gen("linear", 300, 2, d, SynthSplit::Train, true)) {
      // "AxSB=C, x="
      ASSERT_TRUE(ends_with(e.prompt, ", x=")) << e.prompt;
      const size_t xpos = e.prompt.find('x');
      const int64_t a = std::stoll(e.prompt.substr(0, xpos));
      const char sign = e.prompt[xpos + 1];
      const size_t eq = e.prompt.find('=');
      const int64_t b = std::stoll(e.prompt.substr(xpos + 2, eq - xpos - 2));
      const int64_t c = std::stoll(e.prompt.substr(eq + 1));
      const int64_t x = std::stoll(e.answer);
      EXPECT_EQ(sign == '+' ? a * x + b : a * x - b, c) << e.prompt;
      EXPECT_EQ(e.completion, std::to_string(a) + "x=" + std::to_string(a * x) + ", x=" + e.answer + " \\boxed{" +
                                  e.answer + "}");
      min_x = std::min(min_x, x);
      max_x = std::max(max_x, x);
      max_a = std::max(max_a, a);
    }
    EXPECT_GE(min_x, d >= 3 ? -20 : 0);
    EXPECT_LE(max_x, d == 1 ? 9 : 20);
    EXPECT_LE(max_a, d == 1 ? 5 : d == 2 ? 9 : 12);
    if (d >= 3) {
      EXPECT_LT(min_x, 0);
    }
    if (d >= 2) {
      EXPECT_GT(max_x, 9);
    }
  }
}

TEST(Synth, TrainAndTestSplitsDoNotOverlap) {
  for (const std::string& task : synth_task_names()) {
    for (int d : {1, 2, 4}) {
      std::set<std::string> train, test;
      for (uint64_t seed : {1u, 2u})
        for (const auto& e : gen(task, 1500, seed, d)) {
          train.insert(e.prompt);
          EXPECT_FALSE(synth_is_test_problem(e.prompt));
        }
      for (uint64_t seed : {1u, 3u})
        for (const auto& e : gen(task, 200, seed, d, SynthSplit::Test)) {
          test.insert(e.prompt);
          EXPECT_TRUE(synth_is_test_problem(e.prompt));
        }
      for (const auto& p : test) EXPECT_EQ(train.count(p), 0u) << task << " d" << d << ": " << p;
      EXPECT_GT(test.size(), 20u) << task << " d" << d;
    }
  }
  // Roughly one problem in eight is a test problem.
  int64_t n_test = 0;
  for (int i = 0; i < 8000; ++i)
    n_test += synth_is_test_problem(std::to_string(i) + "+" + std::to_string(i % 7) + "=") ? 1 : 0;
  EXPECT_GT(n_test, 800);
  EXPECT_LT(n_test, 1200);
}

TEST(Synth, NoRepeatsWhileUnseenProblemsRemain) {
  const auto ex = gen("arithmetic", 800, 4, 2);
  std::set<std::string> seen;
  for (const auto& e : ex) seen.insert(e.prompt);
  EXPECT_EQ(seen.size(), ex.size());
  // Difficulty-1 linear has 4 * 10 * 10 * 2 = 800 problems (fewer distinct prompts); asking for more repeats.
  const auto many = gen("linear", 2000, 4, 1);
  std::set<std::string> lin;
  for (const auto& e : many) lin.insert(e.prompt);
  EXPECT_LT(lin.size(), 800u);
  EXPECT_GT(lin.size(), 500u);
}

TEST(Synth, BadOptions) {
  EXPECT_THROW(gen("sorting", 1, 0, 1), UsageError);
  EXPECT_THROW(gen("arithmetic", 1, 0, 0), UsageError);
  EXPECT_THROW(gen("arithmetic", -1, 0, 1), UsageError);
  EXPECT_TRUE(gen("countdown", 0, 0, 1).empty());
}

TEST(Synth, JsonlRecords) {
  TempDir d("synth");
  const auto ex = gen("countdown", 5, 1, 2, SynthSplit::Test, true);
  write_synth_jsonl(d.file("c.jsonl"), ex);
  std::istringstream in(read_text(d.file("c.jsonl")));
  std::string line;
  size_t n = 0;
  while (std::getline(in, line)) {
    const json j = json::parse(line);
    EXPECT_EQ(j.at("prompt").get<std::string>(), ex[n].prompt);
    EXPECT_EQ(j.at("answer").get<std::string>(), ex[n].answer);
    EXPECT_EQ(j.at("completion").get<std::string>(), ex[n].completion);
    EXPECT_EQ(j.at("target").get<int64_t>(), std::stoll(ex[n].answer.substr(ex[n].answer.find("-> ") + 3)));
    EXPECT_EQ(line.rfind("{\"prompt\":", 0), 0u) << line;
    ++n;
  }
  EXPECT_EQ(n, 5u);
  const auto plain = gen("arithmetic", 1, 1, 1);
  EXPECT_EQ(json::parse(plain[0].to_jsonl()).size(), 2u);  // no completion without sft
}

TEST(Synth, Cli) {
  TempDir d("synth");
  const std::string a = d.file("a.jsonl"), b = d.file("b.jsonl");
  const std::string args = " --task arithmetic --n 40 --seed 5 --difficulty 2 --sft --split test";
  CmdResult r = run_rlcu("data synth" + args + " --out " + quote(a));
  ASSERT_EQ(r.code, 0) << r.err;
  r = run_rlcu("data synth" + args + " --out " + quote(b));
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(read_text(a), read_text(b));
  std::string want;
  for (const auto& e : gen("arithmetic", 40, 5, 2, SynthSplit::Test, true)) want += e.to_jsonl() + "\n";
  EXPECT_EQ(read_text(a), want);

  r = run_rlcu("data synth --task sorting --n 4 --out " + quote(a));
  EXPECT_EQ(r.code, 2) << r.err;
  EXPECT_NE(r.err.find("--task"), std::string::npos) << r.err;
  r = run_rlcu("data synth --task arithmetic --n 4 --split dev --out " + quote(a));
  EXPECT_EQ(r.code, 2) << r.err;
  r = run_rlcu("data synth --task arithmetic --n 4 --difficulty 0 --out " + quote(a));
  EXPECT_EQ(r.code, 2) << r.err;
  r = run_rlcu("data synth --task arithmetic --n 4");
  EXPECT_EQ(r.code, 2) << r.err;
  r = run_rlcu("data synth --task arithmetic --n 4 --out " + quote(d.file("missing/dir/x.jsonl")));
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_NE(r.err.find("missing/dir/x.jsonl"), std::string::npos) << r.err;
}
