// Trainer-internal: what one RL step reports — the metrics.jsonl record, the samples.jsonl lines and the console
// line — assembled from the step's rollout batch, its advantage statistics, the update's results and the phase
// times. Metric names follow TRL where TRL has one (README lists them all).
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "rlcu/advantage.h"
#include "rlcu/engine.h"
#include "rlcu/metrics.h"
#include "rlcu/optimizer.h"
#include "rlcu/rl_ops.h"
#include "rlcu/rollout_batch.h"
#include "rlcu/rollout_correction.h"

namespace rlcu {

// Seconds per phase (time/*_s).
struct StepTimes {
  double rollout = 0, reward = 0, reference = 0, recompute = 0, advantage = 0, train = 0, step = 0;
};

// The update phase's results.
struct UpdateResult {
  bool updated = false;        // false when no token carried a loss weight (the step skipped its update)
  double lr = 0;               // the policy's learning rate of this step
  std::vector<double> stats;   // rl::PolicyStat sums of the last pass [rl::kPolicyStats] (zeros without an update)
  std::vector<double> first_stats;  // of the first pass, or empty
  OptimizerStepStats optimizer;     // of the last pass
  nlohmann::ordered_json critic;    // the critic's metrics (PPO), or null
  int64_t train_tokens = 0;         // tokens of the micro-batches of one pass
  // The smallest low-clip and largest high-clip token fraction over the last pass's micro-batches (TRL gathers them
  // over processes; here over the micro-batches of every data-parallel rank); negative = no micro-batch had tokens.
  double clip_low_min = -1, clip_high_max = -1;
};

// Everything one step's report reads.
struct StepRecord {
  int64_t step = 0;
  int64_t total_steps = 0;
  const rl::RolloutBatch* batch = nullptr;
  rl::AdvantageStats advantage;
  UpdateResult update;
  StepTimes times;
  engine::EngineStats engine;
  bool use_reference = false;
  bool recompute = false;  // old log-probs recomputed: sampling/logprob_diff/*, time/recompute_s
  rl::RolloutCorrection correction_mode = rl::RolloutCorrection::None;  // not None: sampling/importance_sampling_*
  rl::CorrectionStats correction;  // with recompute
  nlohmann::ordered_json eval;     // eval/* metrics and time/eval_s of an evaluation after this step, or null
  rl::PolicyLossParams loss;   // the policy loss's parameters (KL coefficient, dual clip)
  int64_t num_iterations = 1;  // passes over the batch
  bool cuda = false;           // report memory/peak_gib
  int64_t epoch = 0;           // the data loader's epoch after this step's prompts
  int64_t num_tokens = 0;      // prompt + completion tokens of all steps so far, this one included
  double eta_seconds = -1;     // time left for the remaining steps (the mean step time so far); < 0 = unknown
};

// The metrics.jsonl record (keys in a fixed order).
nlohmann::ordered_json step_metrics(const StepRecord& r);
// The first `log_samples` completions of the batch as samples.jsonl lines.
void write_samples(SamplesWriter& out, const StepRecord& r, int64_t log_samples);
// The console line, from the record and its metrics.
std::string step_line(const StepRecord& r, const nlohmann::ordered_json& metrics);

}  // namespace rlcu
