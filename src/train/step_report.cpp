// One RL step's metrics record, samples and console line (step_report.h). Means are fp64 sums in sequence order;
// per-token statistics are the policy-loss sums of rl::policy_loss divided by their token count.
#include "step_report.h"

#include <algorithm>
#include <cmath>

#include "rlcu/tensor.h"

namespace rlcu {

namespace {

using nlohmann::ordered_json;

double mean_of(const std::vector<float>& v) {
  if (v.empty()) return 0.0;
  double s = 0;
  for (float x : v) s += x;
  return s / static_cast<double>(v.size());
}
double std_of(const std::vector<float>& v) {
  if (v.size() < 2) return 0.0;
  const double m = mean_of(v);
  double s = 0;
  for (float x : v) s += (x - m) * (x - m);
  return std::sqrt(s / static_cast<double>(v.size() - 1));
}

// reward, reward_std, rewards/<name>/mean, rewards/<name>/std, frac_reward_zero_std.
void reward_metrics(ordered_json& m, const StepRecord& r) {
  const rl::RolloutBatch& b = *r.batch;
  const int64_t groups = b.num_groups();
  m["reward"] = mean_of(b.rewards);
  m["reward_std"] = std_of(b.rewards);
  for (const auto& [name, vals] : b.reward_components) {
    m["rewards/" + name + "/mean"] = mean_of(vals);
    m["rewards/" + name + "/std"] = std_of(vals);
  }
  m["frac_reward_zero_std"] =
      groups > 0 ? static_cast<double>(r.advantage.zero_std_groups) / static_cast<double>(groups) : 0.0;
}

// kl, entropy, clip ratios, loss, ratio/first_update_mean_abs_dev.
void policy_metrics(ordered_json& m, const StepRecord& r) {
  const std::vector<double>& st = r.update.stats;
  const double tokens = st[rl::kPsTokens];
  if (r.use_reference) m["kl"] = r.loss.kl_coef > 0 && tokens > 0 ? st[rl::kPsKlSum] / tokens : r.advantage.rollout_kl;
  if (tokens > 0) {
    m["entropy"] = st[rl::kPsEntropySum] / tokens;
    m["clip_ratio/low_mean"] = st[rl::kPsClipLow] / tokens;
    if (r.update.clip_low_min >= 0) m["clip_ratio/low_min"] = r.update.clip_low_min;
    m["clip_ratio/high_mean"] = st[rl::kPsClipHigh] / tokens;
    if (r.update.clip_high_max >= 0) m["clip_ratio/high_max"] = r.update.clip_high_max;
    m["clip_ratio/region_mean"] = (st[rl::kPsClipLow] + st[rl::kPsClipHigh]) / tokens;
    if (r.loss.dual_clip > 0) m["clip_ratio/dual_mean"] = st[rl::kPsDualClip] / tokens;
    m["loss"] = st[rl::kPsLoss];
  }
  const std::vector<double>& first = r.update.first_stats;
  if (!first.empty() && first[rl::kPsTokens] > 0)
    m["ratio/first_update_mean_abs_dev"] = first[rl::kPsAbsRatioDev] / first[rl::kPsTokens];
}

// sampling/*: the recomputed old log-probs against the rollout's and the rollout correction.
void sampling_metrics(ordered_json& m, const StepRecord& r) {
  if (!r.recompute) return;
  m["sampling/logprob_diff/mean"] = r.correction.logprob_diff_mean;
  m["sampling/logprob_diff/max"] = r.correction.logprob_diff_max;
  if (r.correction_mode == rl::RolloutCorrection::None) return;
  m["sampling/importance_sampling_ratio/mean"] = r.correction.ratio_mean;
  m["sampling/importance_sampling_ratio/min"] = r.correction.ratio_min;
  m["sampling/importance_sampling_ratio/max"] = r.correction.ratio_max;
  m["sampling/masked_fraction"] = r.correction.masked_fraction;
}

// time/*, tokens_per_s/*, rollout/preemptions, memory/peak_gib.
void speed_metrics(ordered_json& m, const StepRecord& r) {
  const StepTimes& t = r.times;
  const double generated = static_cast<double>(r.engine.generated_tokens);
  m["time/rollout_s"] = t.rollout;
  m["time/reward_s"] = t.reward;
  m["time/reference_s"] = t.reference;
  if (r.recompute) m["time/recompute_s"] = t.recompute;
  m["time/advantage_s"] = t.advantage;
  m["time/train_s"] = t.train;
  m["time/step_s"] = t.step;
  m["tokens_per_s/rollout"] = t.rollout > 0 ? generated / t.rollout : 0.0;
  m["tokens_per_s/train"] =
      t.train > 0
          ? static_cast<double>(r.update.train_tokens * std::max<int64_t>(r.num_iterations, 1)) / t.train
          : 0.0;
  m["tokens_per_s/step"] = t.step > 0 ? generated / t.step : 0.0;
  m["rollout/preemptions"] = r.engine.preemptions;
  if (r.cuda) m["memory/peak_gib"] = static_cast<double>(device_bytes_peak()) / (1 << 30);
}

// completions/*: lengths of all completions and of those that ended on their own (EOS or a stop string), as TRL.
void completion_metrics(ordered_json& m, const rl::RolloutBatch& b) {
  const int64_t N = b.num_seqs();
  double sum = 0, term_sum = 0, clipped = 0;
  int64_t lo = 0, hi = 0, term_lo = 0, term_hi = 0, terminated = 0;
  for (int64_t i = 0; i < N; ++i) {
    const int64_t len = b.lengths[static_cast<size_t>(i)];
    sum += static_cast<double>(len);
    lo = i == 0 ? len : std::min(lo, len);
    hi = i == 0 ? len : std::max(hi, len);
    if (!b.stopped[static_cast<size_t>(i)]) {
      clipped += 1.0;
      continue;
    }
    term_sum += static_cast<double>(len);
    term_lo = terminated == 0 ? len : std::min(term_lo, len);
    term_hi = terminated == 0 ? len : std::max(term_hi, len);
    ++terminated;
  }
  m["completions/mean_length"] = N ? sum / static_cast<double>(N) : 0.0;
  m["completions/min_length"] = lo;
  m["completions/max_length"] = hi;
  m["completions/clipped_ratio"] = N ? clipped / static_cast<double>(N) : 0.0;
  m["completions/mean_terminated_length"] = terminated ? term_sum / static_cast<double>(terminated) : 0.0;
  m["completions/min_terminated_length"] = term_lo;
  m["completions/max_terminated_length"] = term_hi;
}

}  // namespace

ordered_json step_metrics(const StepRecord& r) {
  const rl::RolloutBatch& b = *r.batch;
  ordered_json m;
  m["step"] = r.step;
  reward_metrics(m, r);
  policy_metrics(m, r);
  sampling_metrics(m, r);
  m["num_tokens"] = r.num_tokens;
  completion_metrics(m, b);
  if (r.update.updated) m["grad_norm"] = r.update.optimizer.grad_norm;
  m["learning_rate"] = r.update.lr;
  if (!r.update.updated) m["skipped_update"] = true;
  for (auto it = r.update.critic.begin(); it != r.update.critic.end(); ++it) m[it.key()] = it.value();
  speed_metrics(m, r);
  for (auto it = r.eval.begin(); it != r.eval.end(); ++it) m[it.key()] = it.value();
  m["epoch"] = r.epoch;
  return m;
}

void write_samples(SamplesWriter& out, const StepRecord& r, int64_t log_samples) {
  const rl::RolloutBatch& b = *r.batch;
  for (int64_t i = 0; i < std::min<int64_t>(log_samples, b.num_seqs()); ++i) {
    const size_t k = static_cast<size_t>(i);
    const rl::RolloutPrompt& p = b.prompts[static_cast<size_t>(b.prompt_of[k])];
    SampleRecord sr;
    sr.step = r.step;
    sr.prompt = p.text;
    sr.completion = b.completion_texts[k];
    sr.reward = b.rewards[k];
    sr.extra["answer"] = p.answer;
    sr.extra["finish_reason"] = engine::finish_reason_name(b.finish[k]);
    for (const auto& [name, vals] : b.reward_components) sr.extra["rewards/" + name] = vals[k];
    out.write(sr);
  }
}

std::string step_line(const StepRecord& r, const ordered_json& m) {
  StepSummary ss;
  ss.step = r.step;
  ss.total_steps = r.total_steps;
  ss.reward = mean_of(r.batch->rewards);
  if (m.contains("kl")) ss.kl = m["kl"].get<double>();
  if (m.contains("entropy")) ss.entropy = m["entropy"].get<double>();
  if (r.update.updated) ss.grad_norm = r.update.optimizer.grad_norm;
  ss.lr = r.update.lr;
  ss.tokens_per_s = m["tokens_per_s/step"].get<double>();
  ss.step_seconds = r.times.step;
  ss.phases = {{"rollout", r.times.rollout},
               {"reward", r.times.reward},
               {"reference", r.times.reference},
               {"train", r.times.train}};
  if (r.eta_seconds >= 0) ss.eta_seconds = r.eta_seconds;
  return format_step_line(ss);
}

}  // namespace rlcu
