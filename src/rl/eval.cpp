// Evaluation metrics (include/rlcu/eval.h): pass@k's product form avoids the huge binomials of
// 1 - C(n-c, k) / C(n, k); sums are fp64 in completion order.
#include "rlcu/eval.h"

#include <algorithm>

#include "rlcu/error.h"

namespace rlcu {

double pass_at_k(int64_t n, int64_t c, int64_t k) {
  RLCU_CHECK(n >= 1 && c >= 0 && c <= n && k >= 1 && k <= n, "pass_at_k: n={} c={} k={}", n, c, k);
  if (n - c < k) return 1.0;
  double miss = 1.0;  // C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k/i)
  for (int64_t i = n - c + 1; i <= n; ++i) miss *= 1.0 - static_cast<double>(k) / static_cast<double>(i);
  return 1.0 - miss;
}

std::string correctness_component(const std::vector<std::string>& enabled) {
  for (const char* name : {"countdown", "math_answer", "exact_match", "contains"})
    if (std::find(enabled.begin(), enabled.end(), name) != enabled.end()) return name;
  return "";
}

bool is_correct(const std::string& component, double component_value, double total) {
  return component.empty() ? total >= 1.0 - 1e-6 : component_value == 1.0;
}

EvalSummary summarize_eval(const std::vector<EvalCompletion>& completions, int64_t prompts, int64_t n) {
  if (prompts < 1 || n < 1) throw Error(fmt::format("eval: need at least one prompt and one sample, got {} and {}", prompts, n));
  if (static_cast<int64_t>(completions.size()) != prompts * n)
    throw Error(fmt::format("eval: {} completions for {} prompts x {} samples", completions.size(), prompts, n));
  std::vector<int64_t> seen(static_cast<size_t>(prompts), 0), correct(static_cast<size_t>(prompts), 0);
  EvalSummary s;
  s.prompts = prompts;
  s.completions = static_cast<int64_t>(completions.size());
  s.n = n;
  s.k = n;
  double reward = 0, length = 0, right = 0;
  std::map<std::string, double> comp;
  for (const EvalCompletion& c : completions) {
    if (c.prompt < 0 || c.prompt >= prompts) throw Error(fmt::format("eval: prompt index {} out of range", c.prompt));
    ++seen[static_cast<size_t>(c.prompt)];
    if (c.correct) ++correct[static_cast<size_t>(c.prompt)];
    reward += c.reward;
    length += static_cast<double>(c.length);
    right += c.correct ? 1.0 : 0.0;
    for (const auto& [name, v] : c.components) comp[name] += v;
  }
  double p1 = 0, pk = 0;
  for (int64_t p = 0; p < prompts; ++p) {
    if (seen[static_cast<size_t>(p)] != n)
      throw Error(fmt::format("eval: prompt {} has {} completions, expected {}", p, seen[static_cast<size_t>(p)], n));
    const int64_t c = correct[static_cast<size_t>(p)];
    p1 += pass_at_k(n, c, 1);
    pk += pass_at_k(n, c, n);
  }
  const double N = static_cast<double>(s.completions);
  s.mean_reward = reward / N;
  s.accuracy = right / N;
  s.mean_length = length / N;
  s.pass_at_1 = p1 / static_cast<double>(prompts);
  s.pass_at_k = pk / static_cast<double>(prompts);
  for (const auto& [name, v] : comp) s.component_means[name] = v / N;
  return s;
}

}  // namespace rlcu
