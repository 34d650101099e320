// Data-parallel `rlcu train` on the CPU: 1 to 4 ranks of the rlcu binary started as local processes with
// torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT on a free port),
// talking over the socket communicator, on configs/smoke_cpu.json's tiny model and task with 6 prompts x 4 samples
// per step, GRPO with a reference model (KL in the loss), REINFORCE++ with dynamic sampling, and PPO:
//   - 2 and 3 ranks (GRPO also 4, sharing the prompts unevenly) give step 1 the same completions (global sequence
//     ids), rewards and batch statistics bit for bit and the same loss, gradient norm, entropy, KL and value loss
//     (to float summation order) as one process with the same global batch; after 4 steps the master weights are
//     within 1% of the one-process run's update (||w_n - w_1|| <= 0.01 ||w_1 - w_0||); the run directory holds
//     one metrics.jsonl with one line per step, written by rank 0;
//   - `rlcu sft` on 2 and 3 ranks: the step and held-out losses and the gradient norm of one process, weights within
//     1% of its update after 4 steps; a 2-rank SFT run resumes bit-exactly;
//   - torchrun's variables with WORLD_SIZE=1 give byte-identical checkpoints to a plain run;
//   - a 2-rank run stopped with --stop-after 2 and resumed (2 ranks) ends byte-identical to an uninterrupted one;
//   - SIGTERM to rank 1 alone stops both ranks after the same step with rank 0's checkpoint of it (exit 143);
//   - a SIGKILLed rank 1 ends rank 0 with an error naming rank 1 within 90 s (not a hang).
#include <gtest/gtest.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli_util.h"
#include "dist_test_util.h"
#include "rlcu/safetensors.h"

using namespace rlcu::test;
using nlohmann::json;
namespace fs = std::filesystem;

namespace {

const std::string kModel = std::string(RLCU_TEST_FIXTURES) + "/models/byte-tiny";
const std::string kData = std::string(RLCU_TEST_FIXTURES) + "/data/linear_d1_train.jsonl";
const std::string kSmoke = std::string(RLCU_SOURCE_DIR) + "/configs/smoke_cpu.json";

// Reward = (length of the completion as it appears JSON-escaped in the request line mod 3) / 2, from /bin/sh alone:
// every step has reward variance, so every step updates. The request's keys are in alphabetical order (answer,
// completion, index, prompt): the completion ends where "index" begins, so the reward does not depend on the
// request's index, which counts within one rank's batch.
const char* kLengthReward =
    "while IFS= read -r l; do c=${l#*\\\"completion\\\":\\\"}; c=${c%%\\\",\\\"index\\\":*}; "
    "case $(( ${#c} % 3 )) in 0) echo 0;; 1) echo 0.5;; *) echo 1;; esac; done";

// A GRPO config (KL to a reference model in the loss) writing to `dir`; `steps` steps; `set` overrides keys.
std::string write_config(const std::string& name, const std::string& dir, int steps, const json& set = json::object()) {
  std::ifstream in(kSmoke);
  json cfg = json::parse(in);
  cfg["model"]["path"] = kModel;
  cfg["data"]["path"] = kData;
  cfg["run"]["output_dir"] = dir;
  cfg["run"]["device"] = "cpu";
  cfg["train"]["steps"] = steps;
  cfg["train"]["prompts_per_step"] = 6;
  cfg["train"]["micro_batch_tokens"] = 128;  // several micro-batches per rank
  cfg["data"]["max_prompt_tokens"] = 64;
  cfg["rollout"]["group_size"] = 4;
  cfg["rollout"]["max_new_tokens"] = 8;
  cfg["algorithm"]["kl_coef"] = 0.04;
  cfg["reward"]["contains"] = 0.0;
  cfg["reward"]["command"] = 1.0;
  cfg["reward"]["command_line"] = kLengthReward;
  for (auto it = set.begin(); it != set.end(); ++it)
    for (auto jt = it.value().begin(); jt != it.value().end(); ++jt) cfg[it.key()][jt.key()] = jt.value();
  const std::string path = temp_dir() + "/" + name + ".json";
  write_file(path, cfg.dump(2));
  return path;
}

std::string fresh_dir(const std::string& name) {
  const std::string d = temp_dir() + "/" + name;
  fs::remove_all(d);
  return d;
}

std::map<std::string, std::string> torchrun_env(int rank, int world, int port) {
  return {{"RANK", std::to_string(rank)},       {"WORLD_SIZE", std::to_string(world)},
          {"LOCAL_RANK", std::to_string(rank)}, {"LOCAL_WORLD_SIZE", std::to_string(world)},
          {"MASTER_ADDR", "127.0.0.1"},         {"MASTER_PORT", std::to_string(port)},
          {"RLCU_DIST_RENDEZVOUS_TIMEOUT_S", "60"}, {"RLCU_DIST_TIMEOUT_S", "60"}};
}

// `world` ranks of `rlcu <args>` (stderr into the captured stdout), bounded by limit_s.
std::vector<Outcome> run_ranks(int world, const std::vector<std::string>& args, double limit_s = 120) {
  const int port = free_port();
  return run_children(
      world,
      [&](int rank) {
        dup2(1, 2);
        exec_with_env(RLCU_BIN, args, torchrun_env(rank, world, port));
      },
      limit_s);
}

void expect_all_ok(const std::vector<Outcome>& res) {
  for (size_t r = 0; r < res.size(); ++r)
    ASSERT_EQ(res[r].exit_code, 0) << "rank " << r << (res[r].timed_out ? " timed out" : "") << ":\n" << res[r].out;
}

std::vector<json> metrics(const std::string& dir) {
  std::vector<json> out;
  std::ifstream in(dir + "/metrics.jsonl");
  for (std::string line; std::getline(in, line);) {  // a line being written may be incomplete: skip it
    json m = json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (m.is_object()) out.push_back(std::move(m));
  }
  return out;
}

std::string ckpt(const std::string& dir, int step) {
  char name[32];
  std::snprintf(name, sizeof name, "step-%06d", step);
  return dir + "/checkpoints/" + name;
}

// The F32 tensors of a safetensors file by name (F32 / BF16 entries converted).
std::map<std::string, std::vector<float>> tensors(const std::string& path, const std::string& prefix = "") {
  const rlcu::SafetensorsFile f = rlcu::SafetensorsFile::open(path);
  std::map<std::string, std::vector<float>> out;
  for (const auto& [name, e] : f.tensors()) {
    if (name.rfind(prefix, 0) != 0 || (e.dtype != "F32" && e.dtype != "BF16")) continue;
    std::vector<float> v(static_cast<size_t>(e.numel()));
    f.read_converted(e, v.data(), rlcu::DType::F32);
    out[name.substr(prefix.size())] = std::move(v);
  }
  return out;
}

// Metrics without the fields that measure time and speed.
std::string stripped_metrics(const std::string& dir) {
  std::string out;
  for (json m : metrics(dir)) {
    for (auto it = m.begin(); it != m.end();) {
      const std::string k = it.key();
      if (k.rfind("time/", 0) == 0 || k.rfind("tokens_per_s", 0) == 0 || k.rfind("memory/", 0) == 0)
        it = m.erase(it);
      else
        ++it;
    }
    out += m.dump() + "\n";
  }
  return out;
}

// One process against 2 and 3 ranks with the same global batch, for `algo` with extra config `set`.
void expect_same_objective(const std::string& algo, json set, const std::vector<int>& worlds = {2, 3}) {
  set["algorithm"]["name"] = algo;
  const std::string d1 = fresh_dir("dp_" + algo + "_w1");
  const CliResult one = run_cli("train " + write_config("dp_w1", d1, 4, set));
  ASSERT_EQ(one.code, 0) << one.err;
  const std::vector<json> m1 = metrics(d1);
  ASSERT_EQ(m1.size(), 4u);
  for (const json& m : m1) ASSERT_FALSE(m.contains("skipped_update")) << "every step must train: " << m.dump();
  const auto w0 = tensors(kModel + "/model.safetensors");
  const auto w1 = tensors(ckpt(d1, 4) + "/trainer_state.safetensors", "master.");
  ASSERT_FALSE(w1.empty());

  for (int world : worlds) {
    SCOPED_TRACE(algo + ", world size " + std::to_string(world));
    const std::string dn = fresh_dir("dp_" + algo + "_w" + std::to_string(world));
    const auto res = run_ranks(world, {"train", write_config("dp_wn", dn, 4, set)});
    expect_all_ok(res);
    const std::vector<json> mn = metrics(dn);
    ASSERT_EQ(mn.size(), 4u) << "one metrics.jsonl, one line per step";
    // Step 1: the same completions and rewards bit for bit, the same batch statistics; the loss to float rounding.
    for (const char* k : {"reward", "reward_std", "frac_reward_zero_std", "completions/mean_length",
                          "completions/clipped_ratio", "num_tokens"})
      EXPECT_EQ(mn[0][k], m1[0][k]) << k;
    for (const char* k : {"loss", "grad_norm", "entropy", "kl", "value_loss"}) {
      if (!m1[0].contains(k)) continue;
      const double a = m1[0][k].get<double>(), b = mn[0][k].get<double>();
      EXPECT_NEAR(b, a, 1e-5 * std::max(1.0, std::fabs(a))) << k;
    }
    // Weights after 4 steps: the difference to the one-process run against that run's whole update.
    const auto wn = tensors(ckpt(dn, 4) + "/trainer_state.safetensors", "master.");
    ASSERT_EQ(wn.size(), w1.size());
    double diff = 0, update = 0;
    for (const auto& [name, v1] : w1) {
      ASSERT_TRUE(w0.count(name) && wn.count(name)) << name;
      const std::vector<float>&a = w0.at(name), &b = wn.at(name);
      ASSERT_EQ(a.size(), v1.size());
      for (size_t i = 0; i < v1.size(); ++i) {
        diff += (double(b[i]) - v1[i]) * (double(b[i]) - v1[i]);
        update += (double(v1[i]) - a[i]) * (double(v1[i]) - a[i]);
      }
    }
    ASSERT_GT(update, 0);
    EXPECT_LE(std::sqrt(diff), 0.01 * std::sqrt(update)) << "relative " << std::sqrt(diff / update);
    std::printf("%s, %d ranks: |w_n - w_1| / |w_1 - w_0| = %.3g after 4 steps\n", algo.c_str(), world,
                std::sqrt(diff / update));
    EXPECT_TRUE(fs::exists(dn + "/rlcu.lock"));
    EXPECT_TRUE(fs::exists(ckpt(dn, 4) + "/model.safetensors"));
  }
}

// 4 ranks share the 6 prompts unevenly (1, 2, 1, 2).
TEST(TrainDist, GrpoRanksTrainTheSameObjectiveAsOneProcess) {
  expect_same_objective("grpo", json::object(), {2, 3, 4});
}

// Batch whitening of token-level advantages, and DAPO's dynamic sampling with the token-mean loss over kept groups.
TEST(TrainDist, ReinforcePpWithDynamicSamplingTrainsTheSameObjective) {
  json set;
  set["algorithm"]["dynamic_sampling"] = true;
  expect_same_objective("reinforce_pp", set);
}

// PPO: the critic's values are gathered, its gradients and value-loss sums reduced.
TEST(TrainDist, PpoRanksTrainTheSameObjective) { expect_same_objective("ppo", json::object()); }

// `rlcu sft` on the linear task's prompts and answers: `steps` steps, 4 per step on average.
std::string write_sft_config(const std::string& name, const std::string& dir, int steps) {
  const std::string data = temp_dir() + "/dp_sft.jsonl";
  if (!fs::exists(data)) {
    std::ifstream in(kData);
    std::string out, line;
    for (int i = 0; i < 200 && std::getline(in, line); ++i) {
      const json r = json::parse(line);
      out += json({{"prompt", r["prompt"]}, {"completion", r["answer"]}}).dump() + "\n";
    }
    write_file(data, out);
  }
  json cfg;
  cfg["run"] = {{"seed", 0}, {"output_dir", dir}, {"device", "cpu"}};
  cfg["model"] = {{"path", kModel}, {"chat_template", "none"}};
  cfg["optimizer"] = {{"lr", 0.003}, {"lr_schedule", "constant"}};
  cfg["train"] = {{"micro_batch_tokens", 64}};  // several micro-batches per rank
  cfg["sft"] = {{"path", data}, {"eval_fraction", 0.1}, {"steps", steps}, {"batch_tokens", 160}, {"eval_every", 2}};
  const std::string path = temp_dir() + "/" + name + ".json";
  write_file(path, cfg.dump(2));
  return path;
}

// SFT: 2 and 3 ranks share each step's examples and the eval set; the loss (token mean over the whole step), the
// held-out loss and the gradient norm agree with one process, and so do the weights after 4 steps.
TEST(TrainDist, SftRanksTrainTheSameObjectiveAsOneProcess) {
  const std::string d1 = fresh_dir("dp_sft_w1");
  const CliResult one = run_cli("sft " + write_sft_config("dp_sft_w1", d1, 4));
  ASSERT_EQ(one.code, 0) << one.err;
  const std::vector<json> m1 = metrics(d1);
  ASSERT_EQ(m1.size(), 5u);  // step 0 (held-out loss) and 4 steps
  const auto w0 = tensors(kModel + "/model.safetensors");
  const auto w1 = tensors(ckpt(d1, 4) + "/trainer_state.safetensors", "master.");
  for (int world : {2, 3}) {
    SCOPED_TRACE("world size " + std::to_string(world));
    const std::string dn = fresh_dir("dp_sft_w" + std::to_string(world));
    expect_all_ok(run_ranks(world, {"sft", write_sft_config("dp_sft_wn", dn, 4)}));
    const std::vector<json> mn = metrics(dn);
    ASSERT_EQ(mn.size(), m1.size());
    for (size_t i = 0; i < m1.size(); ++i)
      for (const char* k : {"loss", "eval_loss", "grad_norm"}) {
        if (!m1[i].contains(k)) continue;
        const double a = m1[i][k].get<double>(), b = mn[i][k].get<double>();
        EXPECT_NEAR(b, a, 1e-5 * std::max(1.0, std::fabs(a))) << k << " at step " << i;
      }
    for (const char* k : {"tokens", "completion_tokens"}) EXPECT_EQ(mn[1][k], m1[1][k]) << k;
    const auto wn = tensors(ckpt(dn, 4) + "/trainer_state.safetensors", "master.");
    double diff = 0, update = 0;
    for (const auto& [name, v1] : w1) {
      const std::vector<float>&a = w0.at(name), &b = wn.at(name);
      for (size_t i = 0; i < v1.size(); ++i) {
        diff += (double(b[i]) - v1[i]) * (double(b[i]) - v1[i]);
        update += (double(v1[i]) - a[i]) * (double(v1[i]) - a[i]);
      }
    }
    ASSERT_GT(update, 0);
    EXPECT_LE(std::sqrt(diff), 0.01 * std::sqrt(update)) << "relative " << std::sqrt(diff / update);
    std::printf("sft, %d ranks: |w_n - w_1| / |w_1 - w_0| = %.3g after 4 steps\n", world, std::sqrt(diff / update));
  }
}

// A 2-rank SFT run stopped after 2 steps and resumed ends byte-identical to an uninterrupted one.
TEST(TrainDist, SftResumeOfTwoRanksIsBitExact) {
  const std::string full = fresh_dir("dp_sft_full"), part = fresh_dir("dp_sft_part");
  expect_all_ok(run_ranks(2, {"sft", write_sft_config("dp_sft_full", full, 4)}));
  expect_all_ok(run_ranks(2, {"sft", write_sft_config("dp_sft_part", part, 4), "--stop-after", "2"}));
  expect_all_ok(run_ranks(2, {"sft", "--resume", part}));
  for (const char* f : {"model.safetensors", "trainer_state.safetensors"})
    EXPECT_EQ(read_file(ckpt(full, 4) + "/" + f), read_file(ckpt(part, 4) + "/" + f)) << f;
  EXPECT_EQ(stripped_metrics(full), stripped_metrics(part));
}

TEST(TrainDist, TorchrunWithWorldSizeOneEqualsAPlainRun) {
  const std::string a = fresh_dir("dp_plain"), b = fresh_dir("dp_ws1");
  const CliResult plain = run_cli("train " + write_config("dp_plain", a, 2));
  ASSERT_EQ(plain.code, 0) << plain.err;
  expect_all_ok(run_ranks(1, {"train", write_config("dp_ws1", b, 2)}));
  for (const char* f : {"model.safetensors", "trainer_state.safetensors"})
    EXPECT_EQ(read_file(ckpt(a, 2) + "/" + f), read_file(ckpt(b, 2) + "/" + f)) << f;
  EXPECT_EQ(stripped_metrics(a), stripped_metrics(b));
}

TEST(TrainDist, ResumeOfTwoRanksIsBitExact) {
  const std::string full = fresh_dir("dp_full"), part = fresh_dir("dp_part");
  expect_all_ok(run_ranks(2, {"train", write_config("dp_full", full, 4)}));
  expect_all_ok(run_ranks(2, {"train", write_config("dp_part", part, 4), "--stop-after", "2"}));
  ASSERT_EQ(metrics(part).size(), 2u);
  expect_all_ok(run_ranks(2, {"train", "--resume", part}));
  for (const char* f : {"model.safetensors", "trainer_state.safetensors"})
    EXPECT_EQ(read_file(ckpt(full, 4) + "/" + f), read_file(ckpt(part, 4) + "/" + f)) << f;
  EXPECT_EQ(stripped_metrics(full), stripped_metrics(part));
}

// Starts 2 ranks of a long run with output in files; returns their pids.
std::vector<pid_t> start_ranks(const std::string& cfg, const std::string& log_prefix) {
  const int port = free_port();
  std::vector<pid_t> pids;
  for (int r = 0; r < 2; ++r) {
    const pid_t pid = fork();
    if (pid == 0) {
      const std::string log = log_prefix + std::to_string(r) + ".log";
      const int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      dup2(fd, 1);
      dup2(fd, 2);
      close(fd);
      exec_with_env(RLCU_BIN, {"train", cfg}, torchrun_env(r, 2, port));
    }
    pids.push_back(pid);
  }
  return pids;
}

// Waits up to limit_s for pid to exit; its exit code, or -1 (still running: killed) / 128 + signal.
int wait_exit(pid_t pid, double limit_s, double* seconds) {
  const auto t0 = std::chrono::steady_clock::now();
  for (;;) {
    int status = 0;
    if (waitpid(pid, &status, WNOHANG) == pid) {
      *seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }
    if (std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() > limit_s) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      *seconds = limit_s;
      return -1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

// Waits until the run directory's metrics.jsonl has at least `lines` lines (bounded).
bool wait_for_steps(const std::string& dir, size_t lines, double limit_s) {
  const auto t0 = std::chrono::steady_clock::now();
  while (std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() < limit_s) {
    if (fs::exists(dir + "/metrics.jsonl") && metrics(dir).size() >= lines) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return false;
}

TEST(TrainDist, SigtermOnOneRankStopsEveryRankWithACheckpoint) {
  const std::string dir = fresh_dir("dp_sig");
  const std::string logs = temp_dir() + "/dp_sig_rank";
  const std::vector<pid_t> pids = start_ranks(write_config("dp_sig", dir, 100000), logs);
  const bool started = wait_for_steps(dir, 1, 60);
  kill(pids[1], SIGTERM);
  double s0 = 0, s1 = 0;
  const int c1 = wait_exit(pids[1], 60, &s1), c0 = wait_exit(pids[0], 60, &s0);
  ASSERT_TRUE(started) << read_file(logs + "0.log");
  EXPECT_EQ(c0, 128 + SIGTERM) << read_file(logs + "0.log");
  EXPECT_EQ(c1, 128 + SIGTERM) << read_file(logs + "1.log");
  const size_t steps = metrics(dir).size();
  ASSERT_GE(steps, 1u);
  EXPECT_TRUE(fs::exists(ckpt(dir, static_cast<int>(steps)) + "/trainer_state.safetensors"))
      << "rank 0 saved the last step, " << steps;
}

TEST(TrainDist, AKilledRankEndsTheOtherWithAnError) {
  const std::string dir = fresh_dir("dp_kill");
  const std::string logs = temp_dir() + "/dp_kill_rank";
  const std::vector<pid_t> pids = start_ranks(write_config("dp_kill", dir, 100000), logs);
  const bool started = wait_for_steps(dir, 1, 60);
  kill(pids[1], SIGKILL);
  double s1 = 0, s0 = 0;
  wait_exit(pids[1], 10, &s1);
  const int c0 = wait_exit(pids[0], 90, &s0);
  ASSERT_TRUE(started) << read_file(logs + "0.log");
  const std::string log0 = read_file(logs + "0.log");
  EXPECT_EQ(c0, 1) << log0;
  EXPECT_LT(s0, 90.0);
  EXPECT_NE(log0.find("rank 1"), std::string::npos) << log0;
}

}  // namespace
