// Synthetic verifiable tasks (see include/rlcu/synth.h): arithmetic, countdown and linear equations with exact
// int64 answers, drawn from a splitmix64 stream keyed by (seed, task, difficulty, split); the train/test split is a
// function of the prompt text alone; the countdown checker is a small recursive-descent integer evaluator.
#include "rlcu/synth.h"

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <set>

#include "rlcu/error.h"
#include "rlcu/output_file.h"
#include "rlcu/rng.h"

namespace rlcu {

using nlohmann::ordered_json;

namespace {

std::string str(int64_t v) { return std::to_string(v); }

std::string boxed(const std::string& answer) { return "\\boxed{" + answer + "}"; }

// ---- arithmetic ---------------------------------------------------------------------------------------------
SynthExample make_arithmetic(KeyedRng& rng, int d, bool sft) {
  int k = 2;
  int64_t max_a = 99, max_b = 9;
  std::vector<char> op_set = {'+', '-'};
  if (d == 2) max_b = 99;
  if (d >= 3) {
    k = std::clamp(d - 1, 3, 5);
    max_a = max_b = d == 3 ? 99 : 999;
    op_set = {'+', '-', '*'};
  }
  std::vector<int64_t> v(static_cast<size_t>(k));
  std::vector<char> ops(static_cast<size_t>(k - 1));
  for (int i = 0; i < k; ++i) v[static_cast<size_t>(i)] = rng.uniform(0, i == 0 ? max_a : max_b);
  for (char& o : ops) o = op_set[static_cast<size_t>(rng.uniform(0, static_cast<int64_t>(op_set.size()) - 1))];
  // No negative results at difficulty 1 (a < b <= 9 here, so the swap keeps both operands in range).
  if (d == 1 && ops[0] == '-' && v[0] < v[1]) std::swap(v[0], v[1]);

  std::string prompt = str(v[0]);
  for (size_t i = 0; i < ops.size(); ++i) prompt += ops[i] + str(v[i + 1]);
  prompt += "=";

  // Products first, then left to right; each step is recorded for the SFT completion.
  std::vector<std::string> steps;
  std::vector<int64_t> terms = {v[0]};
  std::vector<char> term_ops;
  for (size_t i = 0; i < ops.size(); ++i) {
    if (ops[i] == '*') {
      const int64_t p = terms.back() * v[i + 1];
      steps.push_back(str(terms.back()) + "*" + str(v[i + 1]) + "=" + str(p));
      terms.back() = p;
    } else {
      terms.push_back(v[i + 1]);
      term_ops.push_back(ops[i]);
    }
  }
  int64_t acc = terms[0];
  for (size_t i = 0; i < term_ops.size(); ++i) {
    const int64_t next = term_ops[i] == '+' ? acc + terms[i + 1] : acc - terms[i + 1];
    steps.push_back(str(acc) + term_ops[i] + str(terms[i + 1]) + "=" + str(next));
    acc = next;
  }
  SynthExample e;
  e.prompt = prompt;
  e.answer = str(acc);
  if (sft) {
    std::string s;
    for (size_t i = 0; i < steps.size(); ++i) s += (i ? ", " : "") + steps[i];
    e.completion = s + " " + boxed(e.answer);
  }
  return e;
}

// ---- countdown ----------------------------------------------------------------------------------------------
struct Node {
  int64_t value;
  std::string expr;
  int prec;  // 3 number, 2 product/quotient, 1 sum/difference
};

std::string wrap(const Node& n, bool paren) { return paren ? "(" + n.expr + ")" : n.expr; }

SynthExample make_countdown(KeyedRng& rng, int d, bool sft) {
  static const int kCount[] = {3, 4, 4, 5, 6};
  static const int64_t kMax[] = {9, 9, 25, 25, 50};
  const size_t idx = static_cast<size_t>(std::min(d, 5) - 1);
  const int count = kCount[idx];
  const int64_t max_n = kMax[idx];
  const bool division = d >= 4;
  for (;;) {
    std::vector<int64_t> numbers(static_cast<size_t>(count));
    for (int64_t& x : numbers) x = rng.uniform(1, max_n);
    std::vector<Node> pool;
    for (int64_t x : numbers) pool.push_back({x, str(x), 3});
    bool ok = true;
    while (pool.size() > 1 && ok) {
      ok = false;
      for (int attempt = 0; attempt < 32 && !ok; ++attempt) {
        const size_t i = static_cast<size_t>(rng.uniform(0, static_cast<int64_t>(pool.size()) - 1));
        size_t j = static_cast<size_t>(rng.uniform(0, static_cast<int64_t>(pool.size()) - 2));
        if (j >= i) ++j;
        const Node& a = pool[i];
        const Node& b = pool[j];
        const char op = "+-*/"[rng.uniform(0, division ? 3 : 2)];
        Node r{};
        if (op == '+') {
          r = {a.value + b.value, a.expr + "+" + b.expr, 1};
        } else if (op == '-') {
          if (a.value <= b.value) continue;
          r = {a.value - b.value, a.expr + "-" + wrap(b, b.prec == 1), 1};
        } else if (op == '*') {
          r = {a.value * b.value, wrap(a, a.prec == 1) + "*" + wrap(b, b.prec == 1), 2};
        } else {
          if (b.value <= 1 || a.value % b.value != 0) continue;
          r = {a.value / b.value, wrap(a, a.prec == 1) + "/" + wrap(b, b.prec < 3), 2};
        }
        if (r.value > 100000) continue;
        pool.erase(pool.begin() + static_cast<std::ptrdiff_t>(std::max(i, j)));
        pool.erase(pool.begin() + static_cast<std::ptrdiff_t>(std::min(i, j)));
        pool.push_back(std::move(r));
        ok = true;
      }
    }
    if (!ok || pool[0].value < 1 || pool[0].value > 1000) continue;
    std::sort(numbers.begin(), numbers.end());
    SynthExample e;
    e.prompt = "Use";
    for (int64_t x : numbers) e.prompt += " " + str(x);
    e.prompt += " to make " + str(pool[0].value);
    // The answer names the numbers and the target, the reference of the countdown reward ("3 5 7 -> 22").
    for (int64_t x : numbers) e.answer += str(x) + " ";
    e.answer += "-> " + str(pool[0].value);
    e.extra["numbers"] = numbers;
    e.extra["target"] = pool[0].value;
    e.extra["solution"] = pool[0].expr;
    if (sft) e.completion = pool[0].expr + "=" + str(pool[0].value) + " " + boxed(str(pool[0].value));
    return e;
  }
}

// ---- linear -------------------------------------------------------------------------------------------------
SynthExample make_linear(KeyedRng& rng, int d, bool sft) {
  const int64_t max_a = d == 1 ? 5 : d == 2 ? 9 : 12;
  const int64_t max_b = d == 1 ? 9 : d == 2 ? 20 : 50;
  const int64_t min_x = d >= 3 ? -20 : 0;
  const int64_t max_x = d == 1 ? 9 : 20;
  const int64_t a = rng.uniform(2, max_a);
  const int64_t x = rng.uniform(min_x, max_x);
  const int64_t b = rng.uniform(0, max_b);
  const bool plus = rng.uniform(0, 1) == 0;
  const int64_t c = plus ? a * x + b : a * x - b;
  SynthExample e;
  e.prompt = str(a) + "x" + (plus ? "+" : "-") + str(b) + "=" + str(c) + ", x=";
  e.answer = str(x);
  if (sft) e.completion = str(a) + "x=" + str(a * x) + ", x=" + str(x) + " " + boxed(e.answer);
  return e;
}

// ---- countdown expressions ----------------------------------------------------------------------------------
class ExprParser {
 public:
  explicit ExprParser(const std::string& s) : s_(s) {}
  std::optional<int64_t> parse(std::vector<int64_t>& used, std::string& why) {
    used_ = &used;
    why_ = &why;
    std::optional<int64_t> v = sum();
    skip();
    if (v && pos_ != s_.size()) return fail(fmt::format("unexpected '{}' at offset {}", s_[pos_], pos_));
    return v;
  }

 private:
  std::optional<int64_t> fail(const std::string& w) {
    if (why_->empty()) *why_ = w;
    return std::nullopt;
  }
  void skip() {
    while (pos_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[pos_]))) ++pos_;
  }
  std::optional<int64_t> sum() {
    std::optional<int64_t> v = product();
    for (;;) {
      if (!v) return v;
      skip();
      if (pos_ >= s_.size() || (s_[pos_] != '+' && s_[pos_] != '-')) return v;
      const char op = s_[pos_++];
      const std::optional<int64_t> r = product();
      if (!r) return r;
      int64_t out;
      if (op == '+' ? __builtin_add_overflow(*v, *r, &out) : __builtin_sub_overflow(*v, *r, &out))
        return fail("overflow");
      v = out;
    }
  }
  std::optional<int64_t> product() {
    std::optional<int64_t> v = atom();
    for (;;) {
      if (!v) return v;
      skip();
      if (pos_ >= s_.size() || (s_[pos_] != '*' && s_[pos_] != '/')) return v;
      const char op = s_[pos_++];
      const std::optional<int64_t> r = atom();
      if (!r) return r;
      if (op == '*') {
        int64_t out;
        if (__builtin_mul_overflow(*v, *r, &out)) return fail("overflow");
        v = out;
      } else {
        if (*r == 0) return fail("division by zero");
        if (*v % *r != 0) return fail(fmt::format("{}/{} is not an integer", *v, *r));
        v = *v / *r;
      }
    }
  }
  std::optional<int64_t> atom() {
    skip();
    if (pos_ >= s_.size()) return fail("expression ends early");
    if (s_[pos_] == '(') {
      ++pos_;
      std::optional<int64_t> v = sum();
      if (!v) return v;
      skip();
      if (pos_ >= s_.size() || s_[pos_] != ')') return fail("missing ')'");
      ++pos_;
      return v;
    }
    if (!std::isdigit(static_cast<unsigned char>(s_[pos_])))
      return fail(fmt::format("expected a number at offset {}", pos_));
    int64_t v = 0;
    while (pos_ < s_.size() && std::isdigit(static_cast<unsigned char>(s_[pos_]))) {
      if (v > (INT64_MAX - 9) / 10) return fail("number too large");
      v = v * 10 + (s_[pos_++] - '0');
    }
    used_->push_back(v);
    return v;
  }

  const std::string& s_;
  size_t pos_ = 0;
  std::vector<int64_t>* used_ = nullptr;
  std::string* why_ = nullptr;
};

}  // namespace

std::string SynthExample::to_jsonl() const {
  ordered_json j;
  j["prompt"] = prompt;
  j["answer"] = answer;
  if (!completion.empty()) j["completion"] = completion;
  for (auto it = extra.begin(); it != extra.end(); ++it) j[it.key()] = it.value();
  return j.dump();
}

std::vector<std::string> synth_task_names() { return {"arithmetic", "countdown", "linear"}; }

bool synth_is_test_problem(const std::string& prompt) { return splitmix64(fnv1a64(prompt)) % 8 == 0; }

std::vector<SynthExample> synth_generate(const SynthOptions& o) {
  const auto names = synth_task_names();
  if (std::find(names.begin(), names.end(), o.task) == names.end())
    throw UsageError(fmt::format("--task: unknown task \"{}\" (expected arithmetic, countdown or linear)", o.task));
  if (o.n < 0) throw UsageError(fmt::format("--n: expected an integer >= 0, got {}", o.n));
  if (o.difficulty < 1) throw UsageError(fmt::format("--difficulty: expected an integer >= 1, got {}", o.difficulty));
  const bool test = o.split == SynthSplit::Test;
  KeyedRng rng(splitmix64(splitmix64(o.seed) ^ fnv1a64(o.task)) ^
          splitmix64(static_cast<uint64_t>(o.difficulty) * 2 + (test ? 1 : 0)));
  auto draw = [&]() {
    if (o.task == "arithmetic") return make_arithmetic(rng, o.difficulty, o.sft);
    if (o.task == "countdown") return make_countdown(rng, o.difficulty, o.sft);
    return make_linear(rng, o.difficulty, o.sft);
  };
  std::vector<SynthExample> out;
  out.reserve(static_cast<size_t>(o.n));
  std::set<std::string> seen;
  constexpr int kUnseenTries = 64;
  constexpr int64_t kMaxDraws = 1 << 20;
  for (int64_t i = 0; i < o.n; ++i) {
    SynthExample e;
    bool have = false;
    int tries = 0;
    for (int64_t draws = 0; tries < kUnseenTries; ++draws) {
      RLCU_CHECK(draws < kMaxDraws, "synth: no {} problem found for task {}", test ? "test" : "train", o.task);
      SynthExample c = draw();
      if (synth_is_test_problem(c.prompt) != test) continue;
      ++tries;
      e = std::move(c);
      have = true;
      if (!seen.count(e.prompt)) break;
    }
    RLCU_CHECK(have, "synth: no problem drawn");
    seen.insert(e.prompt);
    out.push_back(std::move(e));
  }
  return out;
}

void write_synth_jsonl(const std::string& path, const std::vector<SynthExample>& examples) {
  OutputFile out(path);
  for (const SynthExample& e : examples) out.write(e.to_jsonl() + "\n");
  out.commit();
}

std::optional<int64_t> eval_countdown_expression(const std::string& expr, const std::vector<int64_t>& numbers,
                                                 std::string* why) {
  std::string w;
  std::vector<int64_t> used;
  ExprParser p(expr);
  std::optional<int64_t> v = p.parse(used, w);
  if (v) {
    std::vector<int64_t> want = numbers;
    std::sort(want.begin(), want.end());
    std::sort(used.begin(), used.end());
    if (used != want) {
      w = "the expression must use each given number exactly once";
      v.reset();
    }
  }
  if (!v && why) *why = w;
  return v;
}

std::string countdown_expression(const std::string& completion) {
  size_t end = completion.size();
  while (end > 0) {
    const size_t nl = completion.rfind('\n', end - 1);
    const size_t begin = nl == std::string::npos ? 0 : nl + 1;
    const std::string line = completion.substr(begin, end - begin);
    const size_t eq = line.find('=');
    if (eq != std::string::npos) {
      size_t b = 0, e = eq;
      while (b < e && std::isspace(static_cast<unsigned char>(line[b]))) ++b;
      while (e > b && std::isspace(static_cast<unsigned char>(line[e - 1]))) --e;
      return line.substr(b, e - b);
    }
    if (nl == std::string::npos) break;
    end = nl;
  }
  return "";
}

bool check_countdown(const std::string& expr, const std::vector<int64_t>& numbers, int64_t target,
                     std::string* why) {
  const std::optional<int64_t> v = eval_countdown_expression(expr, numbers, why);
  if (!v) return false;
  if (*v != target) {
    if (why) *why = fmt::format("the expression equals {}, not {}", *v, target);
    return false;
  }
  return true;
}

}  // namespace rlcu
