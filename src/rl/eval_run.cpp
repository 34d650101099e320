// One evaluation pass (include/rlcu/eval_run.h).
#include "rlcu/eval_run.h"

#include <chrono>

#include "rlcu/error.h"

namespace rlcu {

EvalRun run_evaluation(engine::Engine& eng, const std::vector<const PromptSample*>& prompts, int64_t n,
                       const engine::SamplingOptions& sampling, RewardSet& rewards, const Tokenizer& tok) {
  RLCU_CHECK(!prompts.empty() && n >= 1, "evaluation: {} prompts x {} samples", prompts.size(), n);
  std::vector<engine::Request> reqs;
  for (const PromptSample* p : prompts) reqs.push_back({p->ids, static_cast<int>(n)});
  EvalRun run;
  const auto t0 = std::chrono::steady_clock::now();
  run.completions = eng.generate(reqs, sampling);
  run.generate_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  run.generated_tokens = eng.stats().generated_tokens;
  RewardBatch rb;
  for (const engine::Completion& c : run.completions) {
    const PromptSample& ps = *prompts[static_cast<size_t>(c.request)];
    run.texts.push_back(tok.decode(c.ids));
    rb.items.push_back({ps.text, ps.ids, c.ids, ps.answer, run.texts.back()});
  }
  const RewardResult rr = rewards.score(rb);
  run.judge = correctness_component(rewards.enabled());
  for (size_t i = 0; i < run.completions.size(); ++i) {
    EvalCompletion e;
    e.prompt = run.completions[i].request;
    e.reward = rr.total[i];
    e.length = static_cast<int64_t>(run.completions[i].ids.size());
    for (const auto& [name, vals] : rr.components) e.components[name] = vals[i];
    e.correct = is_correct(run.judge, run.judge.empty() ? 0.0 : e.components.at(run.judge), e.reward);
    run.scored.push_back(std::move(e));
  }
  run.summary = summarize_eval(run.scored, static_cast<int64_t>(prompts.size()), n);
  return run;
}

nlohmann::ordered_json eval_sample_json(const EvalRun& run, const std::vector<const PromptSample*>& prompts,
                                        size_t i) {
  const engine::Completion& c = run.completions[i];
  const PromptSample& ps = *prompts[static_cast<size_t>(c.request)];
  nlohmann::ordered_json j;
  j["index"] = c.request;
  j["sample"] = c.sample;
  j["prompt"] = ps.text;
  j["answer"] = ps.answer;
  j["completion"] = run.texts[i];
  j["reward"] = run.scored[i].reward;
  j["correct"] = run.scored[i].correct;
  j["length"] = run.scored[i].length;
  j["finish_reason"] = engine::finish_reason_name(c.finish);
  for (const auto& [name, v] : run.scored[i].components) j["rewards/" + name] = v;
  return j;
}

}  // namespace rlcu
