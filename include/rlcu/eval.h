// Evaluation metrics of `rlcu eval`: per prompt, n sampled completions, each with a total reward and a correctness
// bit; summarised as
//   mean_reward   mean of the total reward over all completions
//   accuracy      fraction of completions that are correct
//   pass@1        mean over prompts of c/n (c = correct completions of the prompt)
//   pass@k        mean over prompts of the unbiased estimator 1 - C(n - c, k) / C(n, k) (Chen et al. 2021), computed
//                 as 1 - prod_{i = n-c+1}^{n} (1 - k / i) in fp64; 1 when n - c < k
//   mean_length   mean completion length in tokens
// A completion is correct when its correctness component is 1: the first enabled component of math_answer,
// exact_match, contains (each 0 or 1); with none of those enabled, when the total reward is >= 1 - 1e-6.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace rlcu {

// Unbiased pass@k from n samples of which c are correct (0 <= c <= n, 1 <= k <= n).
double pass_at_k(int64_t n, int64_t c, int64_t k);

// The component that decides correctness among `enabled` (RewardSet::enabled()), or "" for the total-reward rule.
std::string correctness_component(const std::vector<std::string>& enabled);
// Whether a completion is correct: component value == 1 when `component` is set, else total >= 1 - 1e-6.
bool is_correct(const std::string& component, double component_value, double total);

struct EvalCompletion {
  int64_t prompt = 0;  // index of its prompt, 0 .. prompts-1
  double reward = 0;   // total reward
  bool correct = false;
  int64_t length = 0;  // tokens
  std::map<std::string, double> components;  // unweighted component values
};

struct EvalSummary {
  int64_t prompts = 0, completions = 0, n = 0, k = 0;
  double mean_reward = 0, accuracy = 0, pass_at_1 = 0, pass_at_k = 0, mean_length = 0;
  std::map<std::string, double> component_means;
};

// Summarises completions of `prompts` prompts with `n` samples each (every prompt must have exactly n); pass@k
// uses k = n. Throws rlcu::Error when the counts do not match.
EvalSummary summarize_eval(const std::vector<EvalCompletion>& completions, int64_t prompts, int64_t n);

}  // namespace rlcu
