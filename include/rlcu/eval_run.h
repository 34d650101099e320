// One evaluation pass, shared by `rlcu eval` and evaluation during `rlcu train` (eval.*): generate n completions per
// prompt with the engine, decode them, score them with the reward set, decide correctness and summarise
// (include/rlcu/eval.h gives the metrics), plus the JSON line of one completion (eval samples files).
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "rlcu/data.h"
#include "rlcu/engine.h"
#include "rlcu/eval.h"
#include "rlcu/reward.h"
#include "rlcu/tokenizer.h"

namespace rlcu {

struct EvalRun {
  std::vector<engine::Completion> completions;  // prompt order, then sample order
  std::vector<std::string> texts;               // decoded completions
  std::vector<EvalCompletion> scored;           // rewards, correctness, length per completion
  EvalSummary summary;
  std::string judge;        // the correctness component, "" for the total-reward rule
  double generate_s = 0;    // seconds spent generating
  int64_t generated_tokens = 0;
};

// Generates `n` completions for each of `prompts` with `sampling` (its seed, temperature, stop rules), scores them
// with `rewards` and summarises them. `prompts` must not be empty.
EvalRun run_evaluation(engine::Engine& eng, const std::vector<const PromptSample*>& prompts, int64_t n,
                       const engine::SamplingOptions& sampling, RewardSet& rewards, const Tokenizer& tok);

// {"index", "sample", "prompt", "answer", "completion", "reward", "correct", "length", "finish_reason",
//  "rewards/<component>": value...} of completion i.
nlohmann::ordered_json eval_sample_json(const EvalRun& run, const std::vector<const PromptSample*>& prompts, size_t i);

}  // namespace rlcu
