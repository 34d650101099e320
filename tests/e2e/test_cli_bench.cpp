// `rlcu bench train` end to end on the CPU with a tiny fixture model: runs, prints the table and a JSON line with
// the measured figures; bad arguments exit 2, a bad model directory exits 1 naming it.
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
}

TEST(CliBench, Errors) {
  EXPECT_EQ(run_cli("bench train").code, 2);  // --model is required
  auto r = run_cli("bench train --model /nonexistent/dir --device cpu");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("/nonexistent/dir"), std::string::npos) << r.err;
  EXPECT_EQ(run_cli("bench train --model x --device tpu").code, 2);
}
