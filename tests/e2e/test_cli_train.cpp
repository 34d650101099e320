// `rlcu train` end to end on the CPU, driven through the CLI with configs derived from configs/smoke_cpu.json (the
// committed byte-level 2-layer model tests/fixtures/models/byte-tiny and tests/fixtures/data/linear_d1_train.jsonl):
//   - short GRPO (KL penalty in the loss), RLOO (KL penalty in the reward), REINFORCE++ (token KL in the returns)
//     and PPO runs write metrics.jsonl with every documented key, and the values agree with what the run's
//     samples.jsonl shows (mean/std of the step's rewards over all logged completions, the fraction of groups with
//     equal rewards, the fraction of completions cut at max_new_tokens); the KL to the reference is 0 at step 1
//     (policy = reference) and positive later; with one update per batch the ratio to the rollout policy is 1
//     (mean |ratio - 1| ~ 0, no clipping); the checkpoint holds an HF model directory plus trainer state and
//     reloads;
//   - a run stopped with --stop-after 2 and resumed to step 4 ends with a model.safetensors (and trainer state)
//     byte-identical to an uninterrupted 4-step run, for GRPO, PPO, RLOO and REINFORCE++, and GRPO with
//     optimizer.name = adamw_8bit (whose resume with adamw is an error naming both). The reward there is an
//     external /bin/sh command whose value depends on the completion's length, so every step has reward variance
//     and non-zero gradients;
//   - a shortened smoke run shows the reward rising (mean of the last 10% of steps over the first 10%); shorter
//     RLOO, REINFORCE++ and 8-bit AdamW smoke runs too (mean of the last third of the steps over the first third;
//     the 8-bit run's trainer state is at least 1.6x smaller than plain AdamW's);
//   - config mistakes (no data.path, unknown algorithm.name) exit 1 with a message naming the key.
//   - the memory plan: --dry-run prints it (every item of the run), exits 0 and creates no run directory, and each
//     shrinking setting lowers its total; the plan is within 5% of the measured peak of the run's buffers (GRPO with a
//     reference model, checkpointing + 8-bit AdamW, PPO with its critic); a plan over run.memory_limit_gib stops the
//     run before it allocates or writes anything but its lock file, naming the settings that shrink it with their
//     figures.
//   - the run directory: a new run refuses a directory that holds a run without touching a file (the message names
//     --resume and --overwrite), --overwrite starts over, run.resume = auto resumes from a checkpoint and starts fresh
//     without one; a second process exits 1 naming the holder's pid and host, and a SIGKILLed holder leaves no lock;
//     a reward command that dies at step 3 (run.save_every = 0) leaves step 2 saved and the resumed run ends
//     byte-identical to an uninterrupted one; an overflowing gradient saves the step before and a half-applied step
//     (PPO's critic after its policy) is never saved; SIGINT while the reward command hangs saves, exits 130 at once
//     and ends the command's children; a resume refuses changed, deleted or moved model files.
//   - paths: run from `/` with the committed configs/smoke_cpu.json (its relative paths are the config file's), a
//     relative --set run.output_dir lands under the current directory, config.json holds absolute paths and the
//     printed `rlcu train --resume DIR` continues the run from /tmp; a missing model directory "does not exist";
//   - run.device defaults to auto, which the first log line resolves (to the CPU on a machine without a GPU).
#include <gtest/gtest.h>

#include <signal.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli_util.h"
#include "rlcu/context.h"
#include "rlcu/model.h"

using namespace rlcu::test;
using nlohmann::json;
namespace fs = std::filesystem;

namespace {

const std::string kModel = std::string(RLCU_TEST_FIXTURES) + "/models/byte-tiny";
const std::string kData = std::string(RLCU_TEST_FIXTURES) + "/data/linear_d1_train.jsonl";
const std::string kSmoke = std::string(RLCU_SOURCE_DIR) + "/configs/smoke_cpu.json";

// Reward = (length of the completion as it appears JSON-escaped in the request line mod 3) / 2, from /bin/sh alone:
// cheap, deterministic and different between completions from the first step on.
const char* kLengthReward =
    "while IFS= read -r l; do c=${l#*\\\"completion\\\":\\\"}; c=${c%%\\\",\\\"answer\\\":*}; "
    "case $(( ${#c} % 3 )) in 0) echo 0;; 1) echo 0.5;; *) echo 1;; esac; done";

json smoke_config() {
  std::ifstream in(kSmoke);
  json cfg = json::parse(in);
  cfg["model"]["path"] = kModel;
  cfg["data"]["path"] = kData;
  return cfg;
}

// A fresh run directory name under the test's temp directory (not created).
std::string fresh_dir(const std::string& name) {
  const std::string d = temp_dir() + "/" + name;
  fs::remove_all(d);
  return d;
}

std::string write_config(const json& cfg, const std::string& name) {
  const std::string p = temp_dir() + "/" + name + ".json";
  write_file(p, cfg.dump(2));
  return p;
}

std::vector<json> read_jsonl(const std::string& path) {
  std::vector<json> out;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line))
    if (!line.empty()) out.push_back(json::parse(line));
  return out;
}

// A short run with the command reward: P prompts x G samples, every completion logged.
json short_config(const std::string& algo, const std::string& out_dir, int steps) {
  json cfg = smoke_config();
  cfg["run"]["output_dir"] = out_dir;
  cfg["algorithm"]["name"] = algo;
  cfg["train"]["steps"] = steps;
  cfg["train"]["prompts_per_step"] = 4;
  cfg["train"]["log_samples"] = 16;
  cfg["rollout"]["group_size"] = 4;
  cfg["reward"]["contains"] = 0.0;
  cfg["reward"]["command"] = 1.0;
  cfg["reward"]["command_line"] = kLengthReward;
  return cfg;
}

CliResult train(const std::string& args) { return run_cli("train " + args); }

// "000012": the step part of a checkpoint directory name.
std::string fmt_step(int step) {
  std::string s = std::to_string(step);
  return std::string(s.size() < 6 ? 6 - s.size() : 0, '0') + s;
}

double mean(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return v.empty() ? 0.0 : s / static_cast<double>(v.size());
}
double sample_std(const std::vector<double>& v) {
  if (v.size() < 2) return 0.0;
  const double m = mean(v);
  double s = 0;
  for (double x : v) s += (x - m) * (x - m);
  return std::sqrt(s / static_cast<double>(v.size() - 1));
}

// The checks shared by the GRPO and PPO runs: keys, values against samples.jsonl, checkpoint contents.
void check_run(const std::string& dir, const json& cfg, bool ppo, bool with_kl) {
  const int steps = cfg["train"]["steps"].get<int>();
  const int P = cfg["train"]["prompts_per_step"].get<int>();
  const int G = cfg["rollout"]["group_size"].get<int>();
  const double lr = cfg["optimizer"]["lr"].get<double>();
  const std::vector<json> metrics = read_jsonl(dir + "/metrics.jsonl");
  const std::vector<json> samples = read_jsonl(dir + "/samples.jsonl");
  ASSERT_EQ(metrics.size(), static_cast<size_t>(steps));
  ASSERT_EQ(samples.size(), static_cast<size_t>(steps * P * G));  // log_samples covers every completion

  std::vector<std::string> keys = {"step", "reward", "reward_std", "rewards/command/mean", "rewards/command/std",
                                   "frac_reward_zero_std", "entropy", "clip_ratio/low_mean", "clip_ratio/low_min",
                                   "clip_ratio/high_mean", "clip_ratio/high_max", "num_tokens",
                                   "completions/mean_length", "completions/min_length", "completions/max_length",
                                   "completions/clipped_ratio", "completions/mean_terminated_length",
                                   "completions/min_terminated_length", "completions/max_terminated_length",
                                   "grad_norm", "learning_rate",
                                   "ratio/first_update_mean_abs_dev", "time/rollout_s", "time/reward_s",
                                   "time/train_s", "time/step_s", "tokens_per_s/rollout", "tokens_per_s/train",
                                   "tokens_per_s/step"};
  if (with_kl) keys.push_back("kl");
  if (ppo) keys.push_back("value_loss");
  for (int s = 0; s < steps; ++s) {
    const json& m = metrics[static_cast<size_t>(s)];
    SCOPED_TRACE("step " + std::to_string(s + 1));
    for (const std::string& k : keys) EXPECT_TRUE(m.contains(k)) << "missing " << k << " in " << m.dump();
    if (!ppo) {
      EXPECT_FALSE(m.contains("value_loss"));
    }
    if (!with_kl) {
      EXPECT_FALSE(m.contains("kl"));
    }
    for (const char* k : {"sampling/logprob_diff/mean", "time/recompute_s", "eval/accuracy", "time/eval_s"})
      EXPECT_FALSE(m.contains(k)) << k << ": off by default";
    EXPECT_EQ(m["step"].get<int>(), s + 1);

    // The step's rewards as logged per completion; groups are G consecutive completions.
    std::vector<double> r;
    int truncated = 0, zero_std_groups = 0;
    EXPECT_FALSE(m.contains("lr")) << "TRL's name is learning_rate";
    for (int i = 0; i < P * G; ++i) {
      const json& smp = samples[static_cast<size_t>(s * P * G + i)];
      EXPECT_EQ(smp["step"].get<int>(), s + 1);
      const double v = smp["reward"].get<double>();
      EXPECT_TRUE(v == 0.0 || v == 0.5 || v == 1.0) << v;
      EXPECT_EQ(v, smp["rewards/command"].get<double>());
      r.push_back(v);
      if (smp["finish_reason"] == "length") ++truncated;
    }
    for (int g = 0; g < P; ++g) {
      bool same = true;
      for (int j = 1; j < G; ++j) same = same && r[static_cast<size_t>(g * G + j)] == r[static_cast<size_t>(g * G)];
      zero_std_groups += same;
    }
    EXPECT_NEAR(m["reward"].get<double>(), mean(r), 1e-6);
    EXPECT_NEAR(m["rewards/command/mean"].get<double>(), mean(r), 1e-6);
    EXPECT_NEAR(m["reward_std"].get<double>(), sample_std(r), 1e-6);
    EXPECT_NEAR(m["rewards/command/std"].get<double>(), sample_std(r), 1e-6);
    EXPECT_GT(m["reward_std"].get<double>(), 0.0);  // the command reward has variance from the first step
    EXPECT_NEAR(m["frac_reward_zero_std"].get<double>(), static_cast<double>(zero_std_groups) / P, 1e-12);
    EXPECT_NEAR(m["completions/clipped_ratio"].get<double>(), static_cast<double>(truncated) / (P * G), 1e-12);
    const double len = m["completions/mean_length"].get<double>();
    EXPECT_GT(len, 0.0);
    EXPECT_LE(len, cfg["rollout"]["max_new_tokens"].get<double>());
    EXPECT_LE(m["completions/min_length"].get<double>(), len);
    EXPECT_GE(m["completions/max_length"].get<double>(), len);
    if (truncated > 0) {
      EXPECT_EQ(m["completions/max_length"], cfg["rollout"]["max_new_tokens"]);
    }
    if (truncated < P * G) {
      EXPECT_GT(m["completions/mean_terminated_length"].get<double>(), 0.0);
      EXPECT_LE(m["completions/min_terminated_length"].get<double>(),
                m["completions/mean_terminated_length"].get<double>());
      EXPECT_GE(m["completions/max_terminated_length"].get<double>(),
                m["completions/mean_terminated_length"].get<double>());
    }
    // num_tokens: prompt + completion tokens of all steps so far (TRL's counter), growing every step.
    if (s > 0) {
      EXPECT_GT(m["num_tokens"].get<double>(), metrics[static_cast<size_t>(s - 1)]["num_tokens"].get<double>());
    }
    EXPECT_GE(m["num_tokens"].get<double>(), len * P * G * (s + 1));
    // One update per rollout batch on the CPU: the policy that is trained is the one that sampled.
    EXPECT_LT(m["ratio/first_update_mean_abs_dev"].get<double>(), 1e-5);
    EXPECT_EQ(m["clip_ratio/low_mean"].get<double>(), 0.0);
    EXPECT_EQ(m["clip_ratio/high_mean"].get<double>(), 0.0);
    EXPECT_EQ(m["clip_ratio/low_min"].get<double>(), 0.0);
    EXPECT_EQ(m["clip_ratio/high_max"].get<double>(), 0.0);
    const double ent = m["entropy"].get<double>();
    EXPECT_GT(ent, 0.0);
    EXPECT_LE(ent, std::log(320.0) + 1e-3);  // at most uniform over the model's vocabulary
    EXPECT_GT(m["grad_norm"].get<double>(), 0.0);
    EXPECT_DOUBLE_EQ(m["learning_rate"].get<double>(), lr);
    for (const char* k : {"time/rollout_s", "time/train_s", "time/step_s", "tokens_per_s/rollout",
                          "tokens_per_s/train", "tokens_per_s/step"})
      EXPECT_GT(m[k].get<double>(), 0.0) << k;
    if (ppo) {
      EXPECT_TRUE(std::isfinite(m["value_loss"].get<double>()));
      EXPECT_GE(m["value_loss"].get<double>(), 0.0);
    }
  }
  if (with_kl) {
    // Step 1 samples from and trains the initial policy, which is the reference: KL exactly 0 on the CPU.
    EXPECT_LT(std::abs(metrics.front()["kl"].get<double>()), 1e-7);
    EXPECT_GT(metrics.back()["kl"].get<double>(), 0.0);
  }

  // The final checkpoint: an HF model directory plus trainer state; it reloads and differs from the initial model.
  const std::string ck = dir + "/checkpoints/step-" + fmt_step(steps);
  for (const char* f : {"model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json",
                        "trainer_state.json", "trainer_state.safetensors"})
    EXPECT_TRUE(fs::exists(ck + "/" + f)) << ck << "/" << f;
  EXPECT_EQ(read_file(dir + "/checkpoints/latest").substr(0, 11), "step-" + fmt_step(steps));
  const json state = json::parse(read_file(ck + "/trainer_state.json"));
  EXPECT_EQ(state["step"].get<int>(), steps);
  EXPECT_NE(read_file(ck + "/model.safetensors"), read_file(kModel + "/model.safetensors"));
  auto reloaded = rlcu::Model::load(ck, rlcu::ModelOptions{}, rlcu::Context::cpu());
  auto initial = rlcu::Model::load(kModel, rlcu::ModelOptions{}, rlcu::Context::cpu());
  EXPECT_EQ(reloaded->num_parameters(), initial->num_parameters());
  EXPECT_TRUE(fs::exists(dir + "/config.json"));
}

}  // namespace

TEST(CliTrain, GrpoShortRunWritesMetricsSamplesAndCheckpoint) {
  const std::string dir = fresh_dir("grpo_short");
  json cfg = short_config("grpo", dir, 4);
  cfg["algorithm"]["kl_coef"] = 0.05;
  const CliResult r = train(write_config(cfg, "grpo_short"));
  ASSERT_EQ(r.code, 0) << r.err;
  check_run(dir, cfg, /*ppo=*/false, /*with_kl=*/true);
}

TEST(CliTrain, RlooShortRunWritesMetricsSamplesAndCheckpoint) {
  const std::string dir = fresh_dir("rloo_short");
  json cfg = short_config("rloo", dir, 4);
  cfg["algorithm"]["kl_coef"] = 0.05;
  cfg["algorithm"]["kl_in_reward"] = true;
  const CliResult r = train(write_config(cfg, "rloo_short"));
  ASSERT_EQ(r.code, 0) << r.err;
  check_run(dir, cfg, /*ppo=*/false, /*with_kl=*/true);
}

TEST(CliTrain, ReinforcePpShortRunWritesMetricsSamplesAndCheckpoint) {
  const std::string dir = fresh_dir("reinforce_pp_short");
  json cfg = short_config("reinforce_pp", dir, 4);
  cfg["algorithm"]["kl_coef"] = 0.05;
  const CliResult r = train(write_config(cfg, "reinforce_pp_short"));
  ASSERT_EQ(r.code, 0) << r.err;
  check_run(dir, cfg, /*ppo=*/false, /*with_kl=*/true);
}

TEST(CliTrain, PpoShortRunWritesMetricsSamplesAndCheckpoint) {
  const std::string dir = fresh_dir("ppo_short");
  json cfg = short_config("ppo", dir, 4);
  const CliResult r = train(write_config(cfg, "ppo_short"));
  ASSERT_EQ(r.code, 0) << r.err;
  check_run(dir, cfg, /*ppo=*/true, /*with_kl=*/false);
}

namespace {

// Uninterrupted 4 steps vs --stop-after 2 then --resume: identical final model, trainer state and step metrics.
// `optim` is optimizer.name ("" = the config's default).
void check_resume(const std::string& algo, const std::string& optim = "") {
  const std::string tag = algo + (optim.empty() ? "" : "_" + optim);
  const std::string full = fresh_dir(tag + "_full"), split = fresh_dir(tag + "_split");
  json cfg_full = short_config(algo, full, 4), cfg_split = short_config(algo, split, 4);
  if (!optim.empty()) cfg_full["optimizer"]["name"] = cfg_split["optimizer"]["name"] = optim;
  CliResult r = train(write_config(cfg_full, tag + "_full"));
  ASSERT_EQ(r.code, 0) << r.err;
  r = train(write_config(cfg_split, tag + "_split") + " --stop-after 2");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(fs::exists(split + "/checkpoints/step-000002/model.safetensors"));
  EXPECT_FALSE(fs::exists(split + "/checkpoints/step-000004"));
  EXPECT_EQ(read_jsonl(split + "/metrics.jsonl").size(), 2u);
  r = train("--resume " + split);
  ASSERT_EQ(r.code, 0) << r.err;

  const std::string a = full + "/checkpoints/step-000004", b = split + "/checkpoints/step-000004";
  const std::string ma = read_file(a + "/model.safetensors"), mb = read_file(b + "/model.safetensors");
  ASSERT_FALSE(ma.empty());
  EXPECT_TRUE(ma == mb) << algo << ": resumed model.safetensors differs from the uninterrupted run's";
  EXPECT_TRUE(read_file(a + "/trainer_state.safetensors") == read_file(b + "/trainer_state.safetensors"));
  // The model moved: a resume that silently skipped training would also match an untrained pair.
  EXPECT_NE(ma, read_file(split + "/checkpoints/step-000002/model.safetensors"));

  const std::vector<json> ra = read_jsonl(full + "/metrics.jsonl"), rb = read_jsonl(split + "/metrics.jsonl");
  ASSERT_EQ(ra.size(), 4u);
  ASSERT_EQ(rb.size(), 4u);
  for (size_t i = 0; i < 4; ++i)
    for (const char* k : {"step", "reward", "reward_std", "entropy", "grad_norm", "loss"})
      EXPECT_EQ(ra[i][k], rb[i][k]) << algo << " step " << i + 1 << " " << k;
  const std::vector<json> sa = read_jsonl(full + "/samples.jsonl"), sb = read_jsonl(split + "/samples.jsonl");
  ASSERT_EQ(sa.size(), sb.size());
  for (size_t i = 0; i < sa.size(); ++i) EXPECT_EQ(sa[i]["completion"], sb[i]["completion"]) << i;
}

}  // namespace

// CPU threads change no bit: the smoke config (with a reference model and two updates per batch, so the KL, the
// ratio and every threaded kernel take part) run with run.threads = 1 and with --threads 2 ends with identical
// model.safetensors, trainer state and step metrics; the first log line names the thread count.
TEST(CliTrain, OneAndTwoCpuThreadsGiveTheSameModel) {
  const std::string one = fresh_dir("threads_1"), two = fresh_dir("threads_2");
  auto config = [](const std::string& dir, const std::string& tag) {
    json cfg = smoke_config();
    cfg["run"]["output_dir"] = dir;
    cfg["train"]["steps"] = 6;
    cfg["algorithm"]["kl_coef"] = 0.04;
    cfg["algorithm"]["num_iterations"] = 2;
    return write_config(cfg, tag);
  };
  CliResult r = train(config(one, "threads_1") + " --set run.threads=1");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find(", 1 thread\n"), std::string::npos) << r.err;
  r = train(config(two, "threads_2") + " --set run.threads=1 --threads 2");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find(", 2 threads\n"), std::string::npos) << r.err;
  const std::string a = one + "/checkpoints/step-000006", b = two + "/checkpoints/step-000006";
  const std::string ma = read_file(a + "/model.safetensors");
  ASSERT_FALSE(ma.empty());
  EXPECT_TRUE(ma == read_file(b + "/model.safetensors")) << "model.safetensors differs between 1 and 2 threads";
  EXPECT_TRUE(read_file(a + "/trainer_state.safetensors") == read_file(b + "/trainer_state.safetensors"));
  EXPECT_NE(ma, read_file(kModel + "/model.safetensors"));
  const std::vector<json> ra = read_jsonl(one + "/metrics.jsonl"), rb = read_jsonl(two + "/metrics.jsonl");
  ASSERT_EQ(ra.size(), 6u);
  ASSERT_EQ(rb.size(), 6u);
  for (size_t i = 0; i < ra.size(); ++i)
    for (const char* k : {"reward", "reward_std", "entropy", "kl", "grad_norm", "loss"})
      EXPECT_EQ(ra[i][k], rb[i][k]) << "step " << i + 1 << " " << k;
  EXPECT_EQ(json::parse(read_file(two + "/config.json"))["run"]["threads"], 2);
}

TEST(CliTrain, GrpoResumeIsBitExact) { check_resume("grpo"); }
TEST(CliTrain, PpoResumeIsBitExact) { check_resume("ppo"); }
TEST(CliTrain, RlooResumeIsBitExact) { check_resume("rloo"); }
TEST(CliTrain, ReinforcePpResumeIsBitExact) { check_resume("reinforce_pp"); }

// 8-bit AdamW: the quantised moments are checkpointed (U8 codes, F32 absmax per block) and the resume is bit-exact;
// resuming with plain AdamW is an error naming both optimizers.
TEST(CliTrain, Adamw8bitResumeIsBitExact) {
  check_resume("grpo", "adamw_8bit");
  const std::string split = temp_dir() + "/grpo_adamw_8bit_split";
  const std::string ts = read_file(split + "/checkpoints/step-000004/trainer_state.safetensors");
  for (const char* name : {"\"exp_avg.codes\":{\"dtype\":\"U8\"", "\"exp_avg_sq.absmax\":{\"dtype\":\"F32\"",
                           "\"optimizer\":\"adamw_8bit\""})
    EXPECT_NE(ts.find(name), std::string::npos) << name;
  const CliResult r = train("--resume " + split + " --set optimizer.name=adamw --set train.steps=6");
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_NE(r.err.find("optimizer state is adamw_8bit but optimizer.name is adamw"), std::string::npos) << r.err;
}

// A shortened smoke_cpu run: the reward of the last 10% of steps exceeds that of the first 10%.
constexpr int kSmokeSteps = 60;
constexpr double kSmokeLr = 0.01;

TEST(CliTrain, SmokeRewardRises) {
  const std::string dir = fresh_dir("smoke_short");
  json cfg = smoke_config();
  cfg["run"]["output_dir"] = dir;
  cfg["train"]["steps"] = kSmokeSteps;
  cfg["optimizer"]["lr"] = kSmokeLr;
  const CliResult r = train(write_config(cfg, "smoke_short"));
  ASSERT_EQ(r.code, 0) << r.err;
  const std::vector<json> m = read_jsonl(dir + "/metrics.jsonl");
  ASSERT_EQ(m.size(), static_cast<size_t>(kSmokeSteps));
  const size_t n = m.size() / 10;
  std::vector<double> first, last;
  for (size_t i = 0; i < n; ++i) {
    first.push_back(m[i]["reward"].get<double>());
    last.push_back(m[m.size() - n + i]["reward"].get<double>());
  }
  EXPECT_GE(mean(last) - mean(first), 0.15) << "first " << mean(first) << ", last " << mean(last);
}

// configs/smoke_8bit_cpu.json shortened to 30 steps like the RLOO smoke test: the mean reward of the last third of
// the steps exceeds the first third's by 0.1, and its trainer state is at least 1.6x smaller than plain AdamW's (a
// 1-step run of the same config with optimizer.name = adamw).
TEST(CliTrain, Adamw8bitSmokeRewardRisesWithASmallerTrainerState) {
  const std::string dir = fresh_dir("smoke_8bit"), dir32 = fresh_dir("smoke_8bit_vs_adamw");
  std::ifstream in(std::string(RLCU_SOURCE_DIR) + "/configs/smoke_8bit_cpu.json");
  json cfg = json::parse(in);
  ASSERT_EQ(cfg["optimizer"]["name"], "adamw_8bit");
  cfg["model"]["path"] = kModel;
  cfg["data"]["path"] = kData;
  cfg["run"]["output_dir"] = dir;
  const int steps = 30;
  cfg["train"]["steps"] = steps;
  cfg["train"]["log_samples"] = 0;
  cfg["optimizer"]["lr"] = kSmokeLr;
  CliResult r = train(write_config(cfg, "smoke_8bit"));
  ASSERT_EQ(r.code, 0) << r.err;
  const std::vector<json> m = read_jsonl(dir + "/metrics.jsonl");
  ASSERT_EQ(m.size(), static_cast<size_t>(steps));
  const size_t n = m.size() / 3;
  std::vector<double> first, last;
  for (size_t i = 0; i < n; ++i) {
    first.push_back(m[i]["reward"].get<double>());
    last.push_back(m[m.size() - n + i]["reward"].get<double>());
  }
  EXPECT_GE(mean(last) - mean(first), 0.1) << "first " << mean(first) << ", last " << mean(last);
  cfg["run"]["output_dir"] = dir32;
  cfg["train"]["steps"] = 1;
  cfg["optimizer"]["name"] = "adamw";
  r = train(write_config(cfg, "smoke_8bit_vs_adamw"));
  ASSERT_EQ(r.code, 0) << r.err;
  const double q8 = static_cast<double>(
      fs::file_size(dir + "/checkpoints/step-" + fmt_step(steps) + "/trainer_state.safetensors"));
  const double f32 = static_cast<double>(fs::file_size(dir32 + "/checkpoints/step-000001/trainer_state.safetensors"));
  EXPECT_GE(f32 / q8, 1.6) << "adamw " << f32 << " bytes, adamw_8bit " << q8 << " bytes";
}

namespace {

// A shorter smoke_cpu run of `algo`: the mean reward of the last third of the steps exceeds the first third's.
// `algorithm` adds algorithm.* keys (a policy loss, say); `tag` names the run.
void check_reward_rises(const std::string& algo, int steps, double min_gain, const json& algorithm = json::object(),
                        const std::string& tag = "") {
  const std::string dir = fresh_dir(algo + tag + "_smoke");
  json cfg = smoke_config();
  cfg["run"]["output_dir"] = dir;
  cfg["algorithm"]["name"] = algo;
  cfg["algorithm"].update(algorithm);
  cfg["train"]["steps"] = steps;
  cfg["train"]["log_samples"] = 0;
  cfg["optimizer"]["lr"] = kSmokeLr;
  const CliResult r = train(write_config(cfg, algo + tag + "_smoke"));
  ASSERT_EQ(r.code, 0) << r.err;
  const std::vector<json> m = read_jsonl(dir + "/metrics.jsonl");
  ASSERT_EQ(m.size(), static_cast<size_t>(steps));
  const size_t n = m.size() / 3;
  std::vector<double> first, last;
  for (size_t i = 0; i < n; ++i) {
    first.push_back(m[i]["reward"].get<double>());
    last.push_back(m[m.size() - n + i]["reward"].get<double>());
  }
  EXPECT_GE(mean(last) - mean(first), min_gain) << algo << ": first " << mean(first) << ", last " << mean(last);
}

}  // namespace

TEST(CliTrain, RlooSmokeRewardRises) { check_reward_rises("rloo", 30, 0.1); }
TEST(CliTrain, ReinforcePpSmokeRewardRises) { check_reward_rises("reinforce_pp", 30, 0.1); }
TEST(CliTrain, GspoSmokeRewardRises) {
  check_reward_rises("grpo", 30, 0.1, {{"policy_loss", "gspo"}, {"loss_agg", "seq-mean-token-mean"}}, "_gspo");
}
TEST(CliTrain, CispoSmokeRewardRises) { check_reward_rises("grpo", 30, 0.1, {{"policy_loss", "cispo"}}, "_cispo"); }
TEST(CliTrain, RecomputeTisSmokeRewardRises) {
  check_reward_rises("grpo", 30, 0.1,
                     {{"old_logprobs", "recompute"}, {"rollout_correction", "tis"},
                      {"rollout_correction_level", "sequence"}},
                     "_tis");
}

// Recomputed old log-probs with a correction, two updates per batch, and evaluation every 2 steps (and at the start):
// the first ratio is exactly 1, the sampling/* metrics are logged every step, eval/* at steps 0, 2 and 4 only.
TEST(CliTrain, RecomputeCorrectionAndEvalMetrics) {
  const std::string dir = fresh_dir("recompute_eval");
  json cfg = short_config("grpo", dir, 4);
  cfg["algorithm"]["old_logprobs"] = "recompute";
  cfg["algorithm"]["rollout_correction"] = "mis";
  cfg["algorithm"]["num_iterations"] = 2;
  cfg["eval"] = {{"data", std::string(RLCU_TEST_FIXTURES) + "/data/linear_d1_eval.jsonl"},
                 {"every", 2},
                 {"at_start", true},
                 {"n", 2},
                 {"max_prompts", 5},
                 {"max_new_tokens", 6},
                 {"reward", {{"math_answer", 0.0}, {"contains", 1.0}}}};
  const CliResult r = train(write_config(cfg, "recompute_eval"));
  ASSERT_EQ(r.code, 0) << r.err;
  const std::vector<json> m = read_jsonl(dir + "/metrics.jsonl");
  ASSERT_EQ(m.size(), 5u);
  const std::vector<std::string> eval_keys = {"eval/accuracy", "eval/pass@1", "eval/pass@k", "eval/mean_reward",
                                              "eval/mean_length", "time/eval_s"};
  for (size_t i = 0; i < m.size(); ++i) {
    SCOPED_TRACE("record " + std::to_string(i));
    EXPECT_EQ(m[i]["step"].get<int>(), static_cast<int>(i));
    for (const std::string& k : eval_keys) EXPECT_EQ(m[i].contains(k), i % 2 == 0) << k;
    if (i % 2 == 0) {
      EXPECT_EQ(m[i]["eval/k"].get<int>(), 2);
      EXPECT_LE(m[i]["eval/pass@1"].get<double>(), m[i]["eval/pass@k"].get<double>());
      EXPECT_GT(m[i]["eval/mean_length"].get<double>(), 0.0);
      EXPECT_LE(m[i]["eval/mean_length"].get<double>(), 6.0);
    }
    if (i == 0) {
      EXPECT_FALSE(m[i].contains("reward"));  // the step-0 record holds the evaluation only
      continue;
    }
    EXPECT_EQ(m[i]["ratio/first_update_mean_abs_dev"].get<double>(), 0.0);  // recomputed: the ratio starts at 1
    for (const char* k : {"sampling/logprob_diff/mean", "sampling/logprob_diff/max", "time/recompute_s",
                          "sampling/importance_sampling_ratio/mean", "sampling/importance_sampling_ratio/min",
                          "sampling/importance_sampling_ratio/max", "sampling/masked_fraction"})
      ASSERT_TRUE(m[i].contains(k)) << k;
    const double mn = m[i]["sampling/importance_sampling_ratio/min"].get<double>();
    const double mx = m[i]["sampling/importance_sampling_ratio/max"].get<double>();
    const double mean_ratio = m[i]["sampling/importance_sampling_ratio/mean"].get<double>();
    EXPECT_LE(mn, mean_ratio);
    EXPECT_LE(mean_ratio, mx);
    EXPECT_NEAR(mean_ratio, 1.0, 1e-4);  // the CPU engine and the training forward agree to float rounding
    EXPECT_LT(m[i]["sampling/logprob_diff/max"].get<double>(), 1e-4);
    EXPECT_EQ(m[i]["sampling/masked_fraction"].get<double>(), 0.0);
  }
  const std::vector<json> ev = read_jsonl(dir + "/eval_samples.jsonl");
  ASSERT_EQ(ev.size(), 3u * 5u * 2u);
  for (size_t i = 0; i < ev.size(); ++i) {
    EXPECT_EQ(ev[i]["step"].get<int>(), static_cast<int>(2 * (i / 10)));
    EXPECT_TRUE(ev[i].contains("rewards/contains")) << ev[i].dump();  // eval.reward replaced the command reward
    EXPECT_FALSE(ev[i].contains("rewards/command")) << ev[i].dump();
  }
  // The correction without recomputed log-probs is a config error naming both keys.
  cfg["algorithm"]["old_logprobs"] = "rollout";
  const CliResult bad = train(write_config(cfg, "tis_no_recompute"));
  EXPECT_EQ(bad.code, 1) << bad.err;
  EXPECT_NE(bad.err.find("algorithm.rollout_correction"), std::string::npos) << bad.err;
  EXPECT_NE(bad.err.find("algorithm.old_logprobs"), std::string::npos) << bad.err;
}

TEST(CliTrain, ConfigMistakesExitOneNamingTheKey) {
  const std::string dir = fresh_dir("bad");
  json cfg = smoke_config();
  cfg["run"]["output_dir"] = dir;
  cfg["data"].erase("path");
  CliResult r = train(write_config(cfg, "no_data"));
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_NE(r.err.find("data.path"), std::string::npos) << r.err;

  cfg = smoke_config();
  cfg["run"]["output_dir"] = dir;
  cfg["algorithm"]["name"] = "ppo2";
  r = train(write_config(cfg, "bad_algo"));
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_NE(r.err.find("algorithm.name"), std::string::npos) << r.err;

  cfg = smoke_config();
  cfg["run"]["output_dir"] = dir;
  r = train(write_config(cfg, "ok") + " --set algorithm.name=sac");
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_NE(r.err.find("algorithm.name"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(dir));  // nothing written before the config is valid
}

// ---- the memory plan: --dry-run, the plan against the run's peak, a plan that does not fit --------------------------

namespace {

// The bytes of the plan's total row ("| **total** | **G** | N bytes |") in a dry run's output; -1 when absent.
int64_t plan_total_bytes(const std::string& out) {
  const size_t t = out.find("| **total** |");
  if (t == std::string::npos) return -1;
  const size_t b = out.find(" bytes |", t);
  const size_t a = out.rfind("| ", b);
  return std::stoll(out.substr(a + 2, b - a - 2));
}

}  // namespace

TEST(CliTrainMemory, DryRunPrintsThePlanAndCreatesNoRunDirectory) {
  const std::string dir = fresh_dir("dry_run");
  json cfg = smoke_config();
  cfg["run"]["output_dir"] = dir;
  cfg["algorithm"]["kl_coef"] = 0.04;
  const std::string path = write_config(cfg, "dry_run");
  CliResult r = train(path + " --dry-run");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_FALSE(fs::exists(dir)) << "a dry run created " << dir;
  for (const char* item : {"memory plan (cpu, per device)", "| policy weights (f32) |", "| policy gradients (f32) |",
                           "| optimizer state (adamw) |", "| policy activations |", "| saved head softmax |",
                           "| reference model |", "| per-token rows |", "| rollout engine buffers |", "| KV pool |",
                           "| **total** |", "| limit | none |"})
    EXPECT_NE(r.out.find(item), std::string::npos) << item << "\n" << r.out;
  const int64_t base = plan_total_bytes(r.out);
  ASSERT_GT(base, 0) << r.out;
  // Each setting that should shrink the plan does.
  for (const char* set : {"train.checkpointing=true", "optimizer.name=adamw_8bit", "train.save_head_probs=false",
                          "train.micro_batch_tokens=1536"}) {
    r = train(path + " --dry-run --set " + set);
    ASSERT_EQ(r.code, 0) << set << ": " << r.err;
    EXPECT_LT(plan_total_bytes(r.out), base) << set << "\n" << r.out;
  }
  EXPECT_NE(r.out.find("1536 tokens per micro-batch"), std::string::npos) << r.out;
  // The checks of a real start still run: a data file that is missing is an error, and still no directory.
  r = train(path + " --dry-run --set data.path=" + temp_dir() + "/no_such.jsonl");
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_FALSE(fs::exists(dir));
  // A limit the plan fits is shown as such.
  r = train(path + " --dry-run --set run.memory_limit_gib=4");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("| limit (run.memory_limit_gib) | 4 | fits |"), std::string::npos) << r.out;
}

// The plan's total is within 5% of the peak of the run's buffers (CPU Buffers are counted like device ones), for
// GRPO with a reference model, with and without checkpointing and 8-bit AdamW, for PPO with its critic, and for LoRA
// (with the base as the reference; with checkpointing, 8-bit AdamW and some targets).
TEST(CliTrainMemory, PlanIsWithinFivePercentOfTheMeasuredPeak) {
  struct Case {
    const char* tag;
    std::vector<std::string> sets;
  };
  const std::vector<Case> cases = {
      {"grpo_ref", {"algorithm.kl_coef=0.04"}},
      {"grpo_ckpt_8bit", {"train.checkpointing=true", "optimizer.name=adamw_8bit"}},
      {"ppo", {"algorithm.name=ppo", "train.save_head_probs=false"}},
      {"lora_ref", {"lora.rank=8", "algorithm.kl_coef=0.04"}},
      {"lora_ckpt_8bit", {"lora.rank=4", "lora.targets=q_proj,v_proj,down_proj", "train.checkpointing=true",
                          "optimizer.name=adamw_8bit"}}};
  for (const Case& c : cases) {
    const std::string dir = fresh_dir(std::string("plan_") + c.tag);
    json cfg = smoke_config();
    cfg["run"]["output_dir"] = dir;
    cfg["train"]["steps"] = 2;
    cfg["train"]["log_samples"] = 0;
    std::string args = write_config(cfg, std::string("plan_") + c.tag);
    for (const std::string& s : c.sets) args += " --set " + s;
    CliResult r = train(args + " --dry-run");
    ASSERT_EQ(r.code, 0) << c.tag << ": " << r.err;
    const int64_t plan = plan_total_bytes(r.out);
    r = train(args);
    ASSERT_EQ(r.code, 0) << c.tag << ": " << r.err;
    const size_t at = r.err.find("memory: peak ");
    ASSERT_NE(at, std::string::npos) << r.err;
    const int64_t peak = std::stoll(r.err.substr(at + 13));
    const size_t pp = r.err.find("memory plan ", at);
    ASSERT_NE(pp, std::string::npos);
    EXPECT_EQ(std::stoll(r.err.substr(pp + 12)), plan) << c.tag << ": the run's plan differs from the dry run's";
    std::printf("%s: plan %lld bytes, peak %lld bytes (%.2f%%)\n", c.tag, static_cast<long long>(plan),
                static_cast<long long>(peak), 100.0 * (plan - peak) / peak);
    EXPECT_NEAR(static_cast<double>(plan), static_cast<double>(peak), 0.05 * peak) << c.tag;
  }
}

TEST(CliTrainMemory, APlanThatDoesNotFitStopsBeforeAllocatingAndNamesTheSettings) {
  const std::string dir = fresh_dir("no_fit");
  json cfg = smoke_config();
  cfg["run"]["output_dir"] = dir;
  cfg["run"]["memory_limit_gib"] = 0.001;
  const CliResult r = train(write_config(cfg, "no_fit"));
  EXPECT_EQ(r.code, 1) << r.err;
  for (const char* s : {"the memory plan needs", "the limit (run.memory_limit_gib) is 0.00 GiB", "largest: ",
                        "train.micro_batch_tokens=1032 -> ", "train.checkpointing=true -> ", "optimizer.name=adamw_8bit -> ",
                        "train.save_head_probs=false -> "})
    EXPECT_NE(r.err.find(s), std::string::npos) << s << "\n" << r.err;
  // Nothing but the run's lock file (the directory is opened first, so that a busy one is refused at once).
  if (fs::exists(dir)) {
    for (const auto& e : fs::directory_iterator(dir)) {
      EXPECT_EQ(e.path().filename(), "rlcu.lock") << e.path();
    }
  }
}

// ---- the run directory: refusal, --overwrite, run.resume = auto, the lock, error-exit checkpoints, inputs --------

namespace {

// Every file under `dir` (relative path -> contents).
std::map<std::string, std::string> snapshot(const std::string& dir) {
  std::map<std::string, std::string> out;
  for (const fs::directory_entry& e : fs::recursive_directory_iterator(dir))
    if (e.is_regular_file()) out[fs::relative(e.path(), dir).string()] = read_file(e.path().string());
  return out;
}

// Starts `rlcu ARGS` in the background (stdout/stderr to BASE.out/.err); returns its pid.
pid_t spawn_cli(const std::string& args, const std::string& base) {
  const std::string cmd = "exec " + std::string(RLCU_BIN) + " " + args + " >" + base + ".out 2>" + base + ".err";
  const pid_t pid = fork();
  if (pid == 0) {
    execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  return pid;
}

// Waits up to `secs` for `pid` to exit; its exit code (128 + signal when killed), or -1 when it did not exit.
int wait_exit(pid_t pid, double secs) {
  for (int i = 0; i < static_cast<int>(secs * 100); ++i) {
    int status = 0;
    if (waitpid(pid, &status, WNOHANG) == pid)
      return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    usleep(10000);
  }
  return -1;
}

bool wait_for_file(const std::string& path, double secs) {
  for (int i = 0; i < static_cast<int>(secs * 100) && !fs::exists(path); ++i) usleep(10000);
  return fs::exists(path);
}

// True while `pid` exists and is not a zombie.
bool process_alive(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(in, line)) return false;
  const size_t p = line.rfind(')');
  return p != std::string::npos && p + 2 < line.size() && line[p + 2] != 'Z';
}

// The length reward, but before each reply: `prelude` (sh), with $i the 1-based request count of this process.
std::string counting_reward(const std::string& prelude) {
  std::string r = kLengthReward;
  const std::string head = "while IFS= read -r l; do ";
  return "i=0; " + head + "i=$((i+1)); " + prelude + "; " + r.substr(head.size());
}

}  // namespace

TEST(CliTrainRunDir, NewRunRefusesARunDirectoryOverwriteStartsOverAutoResumes) {
  const std::string dir = fresh_dir("refuse");
  json cfg = short_config("grpo", dir, 2);
  cfg["run"]["keep_checkpoints"] = 1;
  const std::string path = write_config(cfg, "refuse");
  CliResult r = train(path);
  ASSERT_EQ(r.code, 0) << r.err;
  const std::map<std::string, std::string> before = snapshot(dir);
  ASSERT_TRUE(before.count("metrics.jsonl"));
  ASSERT_TRUE(before.count("inputs.json"));

  // A second new run in the same directory: exit 1, nothing touched, the message names both ways on.
  r = train(path);
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_NE(r.err.find("already holds a run"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("rlcu train --resume " + dir), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("--overwrite"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("latest checkpoint: step 2"), std::string::npos) << r.err;
  EXPECT_TRUE(snapshot(dir) == before) << "a refused run changed the run directory";
  r = train(path + " --set train.steps=5 --set run.save_every=1");  // other settings: still refused
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_TRUE(snapshot(dir) == before);

  // --resume together with --overwrite is a usage error.
  r = train("--resume " + dir + " --overwrite");
  EXPECT_EQ(r.code, 2) << r.err;

  // run.resume = auto with a checkpoint: continues from step 2 to 4, the first two metrics lines kept.
  r = train(path + " --set run.resume=auto --set train.steps=4");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("resuming from its latest checkpoint: step 2"), std::string::npos) << r.err;
  std::vector<json> m = read_jsonl(dir + "/metrics.jsonl");
  ASSERT_EQ(m.size(), 4u);
  std::istringstream old_lines(before.at("metrics.jsonl"));
  for (size_t i = 0; i < 2; ++i) {
    std::string line;
    std::getline(old_lines, line);
    EXPECT_EQ(m[i], json::parse(line)) << "metrics line " << i + 1 << " changed";
  }
  EXPECT_EQ(m[2]["step"].get<int>(), 3);
  EXPECT_TRUE(fs::exists(dir + "/checkpoints/step-000004"));
  EXPECT_FALSE(fs::exists(dir + "/checkpoints/step-000002"));  // keep_checkpoints = 1

  // --overwrite: the old run's outputs go, a new 1-step run takes their place; other files stay.
  write_file(dir + "/notes.txt", "mine");
  r = train(path + " --overwrite --set train.steps=1");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(read_jsonl(dir + "/metrics.jsonl").size(), 1u);
  std::vector<std::string> cks;
  for (const fs::directory_entry& e : fs::directory_iterator(dir + "/checkpoints"))
    if (e.is_directory()) cks.push_back(e.path().filename().string());
  EXPECT_EQ(cks, std::vector<std::string>{"step-000001"});
  EXPECT_EQ(read_file(dir + "/notes.txt"), "mine");

  // run.resume = auto without a checkpoint starts fresh (also clearing what a failed attempt left).
  const std::string fresh = fresh_dir("auto_fresh");
  fs::create_directories(fresh);
  write_file(fresh + "/metrics.jsonl", "{\"step\": 1}\n");
  json c2 = short_config("grpo", fresh, 1);
  c2["run"]["resume"] = "auto";
  r = train(write_config(c2, "auto_fresh"));
  ASSERT_EQ(r.code, 0) << r.err;
  m = read_jsonl(fresh + "/metrics.jsonl");
  ASSERT_EQ(m.size(), 1u);
  EXPECT_TRUE(m[0].contains("reward"));
}

TEST(CliTrainRunDir, SecondProcessExitsNamingTheHolderAndAKilledHolderLeavesNoLock) {
  const std::string dir = fresh_dir("locked"), block = temp_dir() + "/locked.block", go = temp_dir() + "/locked.go";
  fs::remove(go);
  write_file(block, "");
  // The first run's reward command waits (while `block` exists) for `go`: the run holds its directory meanwhile.
  json cfg = short_config("grpo", dir, 1);
  cfg["reward"]["command_line"] =
      counting_reward("while [ -e " + block + " ] && [ ! -e " + go + " ]; do sleep 0.05; done");
  const pid_t holder = spawn_cli("train " + write_config(cfg, "locked"), temp_dir() + "/locked_holder");
  ASSERT_GT(holder, 0);
  bool locked = false;
  for (int i = 0; i < 1000 && !locked; ++i, usleep(10000))
    locked = read_file(dir + "/rlcu.lock").find("\"pid\":" + std::to_string(holder)) != std::string::npos &&
             fs::exists(dir + "/config.json");
  ASSERT_TRUE(locked) << read_file(temp_dir() + "/locked_holder.err");

  const json plain = short_config("grpo", dir, 1);  // a reward command that does not wait
  const std::string other = write_config(plain, "locked_other");
  for (const std::string& args : {other, other + " --overwrite", "--resume " + dir}) {
    const CliResult r = train(args);
    EXPECT_EQ(r.code, 1) << args << ": " << r.err;
    EXPECT_NE(r.err.find("in use by pid " + std::to_string(holder) + " on host"), std::string::npos) << r.err;
  }

  // SIGKILL: no handler runs; the kernel drops the lock with the process. The reward command, which does not hold
  // the lock (close-on-exec), is still waiting while the next run takes the directory over.
  kill(holder, SIGKILL);
  EXPECT_EQ(wait_exit(holder, 10), 128 + SIGKILL);
  const CliResult r = train(other + " --overwrite");
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(read_jsonl(dir + "/metrics.jsonl").size(), 1u);
  write_file(go, "");  // lets the orphaned command of the killed run finish
}

TEST(CliTrainRunDir, ErrorExitSavesTheLastCompletedStepAndResumeIsBitExact) {
  const std::string full = fresh_dir("err_full"), split = fresh_dir("err_split");
  const std::string flag = temp_dir() + "/err_split.fail";
  CliResult r = train(write_config(short_config("grpo", full, 4), "err_full"));
  ASSERT_EQ(r.code, 0) << r.err;

  // The command dies at the first request of step 3 (16 requests a step) while `flag` exists (run.save_every = 0).
  json cfg = short_config("grpo", split, 4);
  cfg["reward"]["command_line"] = counting_reward("if [ $i -gt 32 ] && [ -e " + flag + " ]; then rm " + flag +
                                                  "; exit 3; fi");
  write_file(flag, "");
  r = train(write_config(cfg, "err_split"));
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_NE(r.err.find("reward command"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("step 3 failed"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("last completed step 2 is saved"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("rlcu train --resume " + split), std::string::npos) << r.err;
  EXPECT_TRUE(fs::exists(split + "/checkpoints/step-000002/model.safetensors"));
  EXPECT_FALSE(fs::exists(split + "/checkpoints/step-000003"));
  EXPECT_EQ(read_jsonl(split + "/metrics.jsonl").size(), 2u);

  // Resumed (the command works again): the same final model as the uninterrupted run, so neither a partial update
  // of step 3 nor its prompts were kept.
  r = train("--resume " + split);
  ASSERT_EQ(r.code, 0) << r.err;
  const std::string a = read_file(full + "/checkpoints/step-000004/model.safetensors");
  ASSERT_FALSE(a.empty());
  EXPECT_TRUE(a == read_file(split + "/checkpoints/step-000004/model.safetensors"));
  EXPECT_TRUE(read_file(full + "/checkpoints/step-000004/trainer_state.safetensors") ==
              read_file(split + "/checkpoints/step-000004/trainer_state.safetensors"));
  const std::vector<json> ma = read_jsonl(full + "/metrics.jsonl"), mb = read_jsonl(split + "/metrics.jsonl");
  ASSERT_EQ(mb.size(), 4u);
  for (size_t i = 0; i < 4; ++i) EXPECT_EQ(ma[i]["reward"], mb[i]["reward"]) << "step " << i + 1;

  // A failure in step 1 has nothing to save and says so.
  const std::string first = fresh_dir("err_first");
  cfg["run"]["output_dir"] = first;
  cfg["reward"]["command_line"] = "exit 3";
  r = train(write_config(cfg, "err_first"));
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_NE(r.err.find("no step had completed"), std::string::npos) << r.err;
}

namespace {

// Rewards of 3e38 from step 2 on, with unscaled (GRPO) advantages: the gradient norm overflows at step 2.
std::string overflowing_reward() {
  return "i=0; while IFS= read -r l; do i=$((i+1)); c=${l#*\\\"completion\\\":\\\"}; "
         "c=${c%%\\\",\\\"answer\\\":*}; case $(( ${#c} % 3 )) in 0) echo 0;; 1) echo 0.5;; "
         "*) if [ $i -gt 16 ]; then echo 3e38; else echo 1; fi;; esac; done";
}

}  // namespace

TEST(CliTrainRunDir, NonFiniteGradientSavesThePreviousStepNeverAPartialUpdate) {
  const std::string dir = fresh_dir("inf_grad");
  json cfg = short_config("grpo", dir, 4);
  cfg["algorithm"]["scale_rewards"] = "none";
  cfg["reward"]["command_line"] = overflowing_reward();
  CliResult r = train(write_config(cfg, "inf_grad"));
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_NE(r.err.find("gradient norm is inf at optimizer step 2"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("step 2 failed; the last completed step 1 is saved"), std::string::npos) << r.err;
  EXPECT_TRUE(fs::exists(dir + "/checkpoints/step-000001/model.safetensors"));
  EXPECT_EQ(json::parse(read_file(dir + "/checkpoints/step-000001/trainer_state.json"))["optimizer_steps"], 1);

  // PPO with whitened advantages: the policy's update of step 2 is finite and applied, then the critic's overflows.
  // The state in memory is half of step 2: it is not saved, and the message says what there is.
  const std::string ppo = fresh_dir("inf_grad_ppo");
  cfg = short_config("ppo", ppo, 4);
  cfg["algorithm"]["whiten_advantages"] = true;
  cfg["reward"]["command_line"] = overflowing_reward();
  r = train(write_config(cfg, "inf_grad_ppo"));
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_NE(r.err.find("step 2 had already applied part of its update, so it is not saved; there is no checkpoint"),
            std::string::npos)
      << r.err;
  EXPECT_FALSE(fs::exists(ppo + "/checkpoints/step-000001"));
  EXPECT_FALSE(fs::exists(ppo + "/checkpoints/step-000002"));
}

TEST(CliTrainRunDir, SigintWhileTheRewardCommandHangsSavesAndEndsItsProcessGroup) {
  const std::string dir = fresh_dir("sigint"), pidfile = temp_dir() + "/sigint.pid";
  fs::remove(pidfile);
  // From step 2 on the command starts a child and waits for it; the timeout (600 s) is far away.
  json cfg = short_config("grpo", dir, 4);
  cfg["reward"]["command_timeout_s"] = 600;
  cfg["reward"]["command_line"] =
      counting_reward("if [ $i -gt 16 ]; then sleep 300 & echo $! > " + pidfile + "; wait; fi");
  const pid_t pid = spawn_cli("train " + write_config(cfg, "sigint"), temp_dir() + "/sigint_run");
  ASSERT_TRUE(wait_for_file(pidfile, 60)) << read_file(temp_dir() + "/sigint_run.err");
  pid_t child = 0;
  for (int i = 0; i < 100 && child == 0; ++i, usleep(10000)) {
    std::ifstream in(pidfile);
    in >> child;
  }
  ASSERT_GT(child, 0);
  kill(pid, SIGINT);
  const int code = wait_exit(pid, 30);
  EXPECT_EQ(code, 128 + SIGINT) << read_file(temp_dir() + "/sigint_run.err");
  EXPECT_TRUE(fs::exists(dir + "/checkpoints/step-000001/model.safetensors"));
  EXPECT_FALSE(fs::exists(dir + "/checkpoints/step-000002"));
  for (int i = 0; i < 500 && process_alive(child); ++i) usleep(10000);
  EXPECT_FALSE(process_alive(child)) << "the reward command's child " << child << " outlived rlcu";
  EXPECT_NE(read_file(temp_dir() + "/sigint_run.err").find("continue with `rlcu train --resume " + dir),
            std::string::npos);
}

TEST(CliTrainRunDir, ResumeRefusesChangedOrMissingInputs) {
  const std::string model = temp_dir() + "/inputs_model", dir = fresh_dir("inputs");
  fs::remove_all(model);
  fs::copy(kModel, model, fs::copy_options::recursive);
  json cfg = short_config("grpo", dir, 2);
  cfg["model"]["path"] = model;
  cfg["algorithm"]["kl_coef"] = 0.05;  // the reference model is read from model.path on every start
  CliResult r = train(write_config(cfg, "inputs") + " --stop-after 1");
  ASSERT_EQ(r.code, 0) << r.err;
  const json rec = json::parse(read_file(dir + "/inputs.json"));
  EXPECT_TRUE(rec["inputs"]["model.path"]["files"].contains("model.safetensors")) << rec.dump();
  EXPECT_TRUE(rec["inputs"].contains("data.path")) << rec.dump();

  // Same size, one byte of the weights changed.
  const std::string weights = model + "/model.safetensors", original = read_file(weights);
  std::string changed = original;
  changed[changed.size() - 3] = static_cast<char>(changed[changed.size() - 3] ^ 0x40);
  write_file(weights, changed);
  r = train("--resume " + dir);
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_NE(r.err.find("model.path: " + weights + " changed since the run started"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("content hash"), std::string::npos) << r.err;
  write_file(weights, original);

  // A deleted file is named as such (not as a tokenizer error further on).
  const std::string tok = read_file(model + "/tokenizer.json");
  fs::remove(model + "/tokenizer.json");
  r = train("--resume " + dir);
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_NE(r.err.find(model + "/tokenizer.json no longer exists"), std::string::npos) << r.err;
  write_file(model + "/tokenizer.json", tok);
  fs::remove_all(model + "_gone");
  fs::rename(model, model + "_gone");
  r = train("--resume " + dir);
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_NE(r.err.find("model.path: \"" + model + "\" no longer exists"), std::string::npos) << r.err;
  fs::rename(model + "_gone", model);

  r = train("--resume " + dir);  // restored: the run continues
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(read_jsonl(dir + "/metrics.jsonl").size(), 2u);
}

TEST(CliTrainPaths, RunsFromRootAndThePrintedResumeWorksFromTmp) {
  const std::string dir = fresh_dir("from_root");
  ASSERT_EQ(dir[0], '/');
  // From `/`: the config's relative model and data paths are the config file's; a relative --set is the current
  // directory's (here `/`).
  CliResult r = run_cli("train " + kSmoke + " --set run.output_dir=" + dir.substr(1) +
                            " --set train.steps=3 --set train.prompts_per_step=2 --set rollout.group_size=2 "
                            "--stop-after 1",
                        "/");
  ASSERT_EQ(r.code, 0) << r.err;
  const json resolved = json::parse(read_file(dir + "/config.json"));
  EXPECT_EQ(resolved["run"]["output_dir"], dir);
  EXPECT_EQ(resolved["model"]["path"], fs::path(kModel).lexically_normal().string());
  EXPECT_EQ(resolved["data"]["path"], fs::path(kData).lexically_normal().string());
  const std::string marker = "rlcu train --resume ";
  const size_t at = r.err.rfind(marker);
  ASSERT_NE(at, std::string::npos) << r.err;
  std::string resume_dir = r.err.substr(at + marker.size());
  resume_dir = resume_dir.substr(0, resume_dir.find_first_of("` \n"));
  EXPECT_EQ(resume_dir, dir);
  r = run_cli("train --resume " + resume_dir, "/tmp");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(fs::exists(dir + "/checkpoints/step-" + fmt_step(3) + "/model.safetensors")) << r.err;
  EXPECT_EQ(read_jsonl(dir + "/metrics.jsonl").size(), 3u);
}

TEST(CliTrainPaths, MissingModelDirectoryDoesNotExist) {
  json cfg = smoke_config();
  cfg["model"]["path"] = "no_such_model_dir";  // relative: the config file's directory
  cfg["run"]["output_dir"] = fresh_dir("missing_model");
  const CliResult r = train(write_config(cfg, "missing_model"));
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find(temp_dir() + "/no_such_model_dir: the "), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("directory does not exist"), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("tokenizer.json"), std::string::npos) << r.err;
}

TEST(CliTrainDevice, AutoIsTheDefaultAndTheFirstLogLineSaysWhich) {
  json cfg = smoke_config();
  cfg["run"].erase("device");
  cfg["run"]["output_dir"] = fresh_dir("device_auto");
  cfg["train"]["steps"] = 1;
  cfg["train"]["prompts_per_step"] = 2;
  cfg["rollout"]["group_size"] = 2;
  const CliResult r = train(write_config(cfg, "device_auto"));
  ASSERT_EQ(r.code, 0) << r.err;
  const std::string first = r.err.substr(0, r.err.find('\n'));
  if (rlcu::cuda_device_count() == 0) {
    EXPECT_NE(first.find("device cpu (auto: "), std::string::npos) << r.err;
  } else {
    EXPECT_NE(first.find("device cuda:0 (auto: "), std::string::npos) << r.err;
  }
  EXPECT_EQ(json::parse(read_file(cfg["run"]["output_dir"].get<std::string>() + "/config.json"))["run"]["device"],
            "auto");
  // The step line's ETA and the summary at the end.
  EXPECT_NE(r.err.find("step 1/1 | reward "), std::string::npos) << r.err;
  EXPECT_NE(r.err.find(" | ETA 0 s"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("done: 1 steps (1 in this invocation, "), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("(mean of the first and last 1 steps) | final checkpoint " +
                       cfg["run"]["output_dir"].get<std::string>() + "/checkpoints/step-000001"),
            std::string::npos)
      << r.err;
}

TEST(CliData, SynthToStdout) {
  const CliResult r = run_cli("data synth --task countdown --n 3 --out -");
  ASSERT_EQ(r.code, 0) << r.err;
  std::istringstream in(r.out);
  int lines = 0;
  for (std::string line; std::getline(in, line); ++lines)
    EXPECT_NE(json::parse(line)["answer"].get<std::string>().find(" -> "), std::string::npos) << line;
  EXPECT_EQ(lines, 3);
  EXPECT_NE(r.err.find("to stdout"), std::string::npos) << r.err;
}
