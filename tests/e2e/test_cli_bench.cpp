// `rlcu bench train` end to end on the CPU with a tiny fixture model: runs (also with --optim adamw_8bit), prints the
// table and a JSON line with the measured figures; bad arguments exit 2, a bad model directory exits 1 naming it.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "cli_util.h"

using rlcu::test::run_cli;

TEST(CliBench, TrainOnCpuReportsThroughput) {
  const std::string model = std::string(RLCU_TEST_FIXTURES) + "/models/qwen3-tiny";
  auto r = run_cli("bench train --model " + model + " --device cpu --batch 3 --seq-len 17 --micro-batch-tokens 40 "
                   "--steps 2 --warmup 1 --checkpointing");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("| qwen3 | cpu | 3 x 17 | yes |"), std::string::npos) << r.out;
  const std::string last = r.out.substr(r.out.rfind('{'));
  const auto j = nlohmann::json::parse(last);
  EXPECT_EQ(j["micro_batch_seqs"], 2);  // 40-token budget holds two 17-token sequences
  EXPECT_GT(j["tokens_per_s"].get<double>(), 0.0);
  EXPECT_EQ(j["step_seconds"].size(), 2u);
  EXPECT_EQ(j["optimizer"], "adamw");
  r = run_cli("bench train --model " + model + " --device cpu --batch 2 --seq-len 9 --steps 1 --warmup 0 "
              "--optim adamw_8bit");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(nlohmann::json::parse(r.out.substr(r.out.rfind('{')))["optimizer"], "adamw_8bit");
  EXPECT_EQ(run_cli("bench train --model " + model + " --device cpu --optim sgd").code, 2);
}

// --lora-rank: adapters on every linear layer of the frozen base; the table and the JSON line say so.
TEST(CliBench, TrainLoraOnCpu) {
  const std::string model = std::string(RLCU_TEST_FIXTURES) + "/models/qwen3-tiny";
  auto r = run_cli("bench train --model " + model + " --device cpu --batch 2 --seq-len 9 --steps 1 --warmup 1 "
                   "--lora-rank 4 --lora-alpha 8");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("| LoRA r=4 |"), std::string::npos) << r.out;
  const auto j = nlohmann::json::parse(r.out.substr(r.out.rfind('{')));
  EXPECT_EQ(j["lora_rank"], 4);
  EXPECT_GT(j["tokens_per_s"].get<double>(), 0.0);
  EXPECT_GT(j["model_tflops"].get<double>(), 0.0);
  EXPECT_EQ(run_cli("bench train --model " + model + " --device cpu --lora-rank -1").code, 2);
}

TEST(CliBench, RolloutOnCpuReportsTheBound) {
  const std::string model = std::string(RLCU_TEST_FIXTURES) + "/models/qwen3-tiny";
  auto r = run_cli("bench rollout --model " + model + " --device cpu --prompts 2 --samples 3 --prompt-len 5 "
                   "--new-tokens 6 --repeats 1");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("| decode step |"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("| prefill (all passes) |"), std::string::npos) << r.out;
  const auto j = nlohmann::json::parse(r.out.substr(r.out.rfind('{')));
  EXPECT_GT(j["copy_bytes_per_s"].get<double>(), 0.0);
  EXPECT_GT(j["gemm_flops_per_s"].get<double>(), 0.0);
  EXPECT_GT(j["decode_memory_ms"].get<double>(), 0.0);
  EXPECT_GT(j["decode_compute_ms"].get<double>(), 0.0);
  EXPECT_GT(j["prefill_compute_ms"].get<double>(), 0.0);
  // (A tiny model sits in the CPU's caches, so its steps may beat a bound measured on 64 MiB: only > 0 is checked.)
  EXPECT_GT(j["decode_bound_fraction"].get<double>(), 0.0);
  EXPECT_GT(j["prefill_bound_fraction"].get<double>(), 0.0);
  EXPECT_LT(j["mean_abs_dlogprob"].get<double>(), 1e-5);  // fp32 on the CPU: the two paths agree to rounding
}

TEST(CliBench, Errors) {
  EXPECT_EQ(run_cli("bench train").code, 2);  // --model is required
  auto r = run_cli("bench train --model /nonexistent/dir --device cpu");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("/nonexistent/dir"), std::string::npos) << r.err;
  EXPECT_EQ(run_cli("bench train --model x --device tpu").code, 2);
}
