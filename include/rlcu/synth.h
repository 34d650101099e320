// Synthetic verifiable tasks: short prompts with exact integer answers, deterministic from (task, difficulty,
// split, seed), for smoke runs and demos where a tiny byte-level model must learn the format.
//
//   arithmetic  "12+7=" -> "19". Difficulty 1: a+b or a-b, a in [0,99], b in [0,9], never negative;
//               2: a, b in [0,99], results may be negative; 3: three operands in [0,99] with + - *;
//               d >= 4: min(d-1, 5) operands in [0, 10^min(d-2, 3)) with + - *. Usual precedence (* first).
//               SFT completion: the steps, products first, then left to right: "12*3=36, 36-45=-9 \boxed{-9}".
//   countdown   "Use 3 5 7 to make 22" -> "3 5 7 -> 22". The numbers (d1: 3 in [1,9]; d2: 4 in [1,9]; d3: 4 in
//               [1,25]; d4: 5 in [1,25]; d >= 5: 6 in [1,50]) are combined pairwise in a random order with + - * (and
//               exact division from d4) keeping every intermediate a positive integer; the target is the result
//               (<= 1000). The record's answer is "NUMBERS -> TARGET", the reference of the `countdown` reward
//               (include/rlcu/reward_ops.h), so that the reward checks the expression, not only a boxed target the
//               prompt states; the record also carries "numbers", "target" and "solution" (one expression using every
//               number once). SFT completion: "3*5+7=22 \boxed{22}".
//               countdown_expression(completion) takes the text before the first '=' of the completion's last line
//               containing one, and check_countdown(expr, numbers, target) evaluates it (integers, + - * / and
//               parentheses, exact division only) and requires it to use exactly the given numbers, each once.
//   linear      "3x+5=20, x=" -> "5": a*x+b=c or a*x-b=c with x in [0,9] (d1: a in [2,5], b in [0,9]; larger
//               ranges and negative x with higher difficulty). SFT completion: "3x=15, x=5 \boxed{5}".
//
// Records: {"prompt", "answer"} plus task fields; with sft also "completion" (ends with \boxed{answer}).
// Splits: a problem belongs to the test split when the 64-bit FNV-1a hash of its prompt text is 0 mod 8, to the
// train split otherwise, so a train file and a test file never share a problem whatever their seeds. Within one
// file a problem is not repeated while the generator finds unseen ones within 64 draws (small spaces, e.g.
// arithmetic difficulty 1 with 1,955 problems, about 1,700 of them train, repeat once exhausted).
// Determinism: draws come from splitmix64 keyed by (seed, task, difficulty, split) only, so the same options give
// the same records byte for byte on every platform.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace rlcu {

enum class SynthSplit { Train, Test };

struct SynthOptions {
  std::string task = "arithmetic";  // arithmetic | countdown | linear
  int64_t n = 100;
  uint64_t seed = 0;
  int difficulty = 1;               // >= 1
  SynthSplit split = SynthSplit::Train;
  bool sft = false;                 // add "completion"
};

// One record; `extra` holds task fields (countdown: numbers, target, solution).
struct SynthExample {
  std::string prompt;
  std::string answer;
  std::string completion;  // "" unless sft
  nlohmann::ordered_json extra = nlohmann::ordered_json::object();

  // {"prompt", "answer"[, "completion"], extra fields...} as one JSON line (no newline).
  std::string to_jsonl() const;
};

std::vector<std::string> synth_task_names();
// Throws rlcu::UsageError for an unknown task, n < 0 or difficulty < 1.
std::vector<SynthExample> synth_generate(const SynthOptions& opts);
// Whether a prompt belongs to the test split (see the file header).
bool synth_is_test_problem(const std::string& prompt);
// Writes the records as JSONL to PATH (rlcu::OutputFile: a temporary file and a rename, or directly to a device).
// Throws rlcu::Error naming PATH on I/O failure.
void write_synth_jsonl(const std::string& path, const std::vector<SynthExample>& examples);

// Evaluates an integer expression (+ - * /, parentheses, unary minus not allowed) using each of `numbers` exactly
// once; nullopt (with *why) when it does not parse, divides inexactly or by zero, overflows or uses other numbers.
std::optional<int64_t> eval_countdown_expression(const std::string& expr, const std::vector<int64_t>& numbers,
                                                 std::string* why = nullptr);
// The expression of a countdown completion: the text before the first '=' on the last line containing one
// (trimmed); "" when there is none.
std::string countdown_expression(const std::string& completion);
// Whether `expr` uses exactly `numbers` and evaluates to `target`.
bool check_countdown(const std::string& expr, const std::vector<int64_t>& numbers, int64_t target,
                     std::string* why = nullptr);

}  // namespace rlcu
