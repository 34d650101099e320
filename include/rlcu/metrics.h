// Run outputs besides checkpoints: RUN/metrics.jsonl, RUN/samples.jsonl, RUN/config.json and the console line.
//
//   metrics.jsonl   one JSON object per training step and line, e.g. {"step": 12, "reward/mean": 0.41, "kl": 0.001,
//                   ...}; every record holds an integer "step". Each line is flushed as it is written. With
//                   MetricsOptions::tensorboard the same records also go to RUN/events.out.tfevents.* as scalars
//                   (include/rlcu/tensorboard.h), with the same resume rule.
//   samples.jsonl   {"step", "prompt", "completion", "reward", ...extra fields} per logged completion.
//   config.json     the resolved run config, written atomically (config.json.tmp, then rename) at the start.
//
// Resume: opening a writer with resume_step >= 0 keeps the lines whose "step" is <= resume_step and drops the rest
// (the steps after the checkpoint, which the resumed run writes again, and a torn last line), so that the files
// describe one consistent run. resume_step < 0 starts the files afresh (truncated).
#pragma once

#include <cstdint>
#include <cstdio>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "rlcu/tensorboard.h"

namespace rlcu {

// Appends JSON objects, one per line, to a file; the common part of the writers below. Move-only.
class JsonlWriter {
 public:
  JsonlWriter(const std::string& path, int64_t resume_step);
  ~JsonlWriter();
  JsonlWriter(JsonlWriter&& o) noexcept;
  JsonlWriter& operator=(JsonlWriter&&) = delete;
  JsonlWriter(const JsonlWriter&) = delete;
  JsonlWriter& operator=(const JsonlWriter&) = delete;

  // Writes one object (must hold an integer "step") as one line and flushes it. Throws rlcu::Error on failure.
  void write(const nlohmann::ordered_json& record);
  const std::string& path() const { return path_; }
  int64_t lines_kept() const { return kept_; }  // lines kept from an earlier run when opened for a resume

 private:
  std::string path_;
  std::FILE* f_ = nullptr;
  int64_t kept_ = 0;
};

struct MetricsOptions {
  bool tensorboard = false;  // also write TensorBoard event files (run.tensorboard)
};

// RUN/metrics.jsonl, and the TensorBoard events when asked for.
class MetricsWriter {
 public:
  explicit MetricsWriter(const std::string& run_dir, int64_t resume_step = -1,
                         const MetricsOptions& options = MetricsOptions());
  void write(const nlohmann::ordered_json& record);
  const std::string& path() const { return w_.path(); }
  // The TensorBoard event file of this process, or "" when not written.
  std::string tensorboard_path() const { return tb_ ? tb_->path() : std::string(); }

 private:
  JsonlWriter w_;
  std::optional<TensorBoardWriter> tb_;
};

struct SampleRecord {
  int64_t step = 0;
  std::string prompt;
  std::string completion;
  double reward = 0;
  nlohmann::ordered_json extra = nlohmann::ordered_json::object();  // more fields, appended after "reward"
};

// RUN/samples.jsonl
class SamplesWriter {
 public:
  explicit SamplesWriter(const std::string& run_dir, int64_t resume_step = -1);
  void write(const SampleRecord& s);
  const std::string& path() const { return w_.path(); }

 private:
  JsonlWriter w_;
};

// Writes the resolved config to RUN/config.json (pretty-printed, atomically); creates RUN when missing.
void write_run_config(const std::string& run_dir, const nlohmann::ordered_json& config);

// One console line per step; absent values are left out.
struct StepSummary {
  int64_t step = 0;  // 1-based step just finished
  int64_t total_steps = 0;
  std::optional<double> reward, kl, entropy, grad_norm, lr;
  std::optional<double> tokens_per_s;
  double step_seconds = 0;
  std::vector<std::pair<std::string, double>> phases;  // ("rollout", seconds), ("train", seconds), ...
  std::optional<double> eta_seconds;                   // time left for the remaining steps
};

// "42 s", "3m07s", "2h05m": a duration for people.
std::string format_duration(double seconds);

// "step 12/100 | reward 0.4125 | kl 0.001234 | entropy 0.5321 | grad_norm 1.234 | lr 1.00e-06 | 1234 tok/s |
//  3.21 s (rollout 2.10 s, reward 0.01 s, train 1.10 s) | ETA 5m20s" (one line)
std::string format_step_line(const StepSummary& s);

}  // namespace rlcu
