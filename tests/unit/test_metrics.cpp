// metrics.jsonl / samples.jsonl writers (one flushed JSON object per line, resume truncation, torn lines), the
// atomic RUN/config.json and the console step line.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "rlcu/config.h"
#include "rlcu/error.h"
#include "rlcu/metrics.h"

using namespace rlcu;
namespace fs = std::filesystem;

namespace {

std::string fresh_dir() {
  char tmpl[] = "/tmp/rlcu_metrics_XXXXXX";
  const char* d = mkdtemp(tmpl);
  if (!d) throw std::runtime_error("mkdtemp failed");
  return d;
}

std::vector<std::string> lines_of(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::vector<std::string> out;
  std::string line;
  while (std::getline(in, line)) out.push_back(line);
  return out;
}

std::vector<int64_t> steps_of(const fs::path& p) {
  std::vector<int64_t> s;
  for (const std::string& l : lines_of(p)) s.push_back(nlohmann::json::parse(l)["step"].get<int64_t>());
  return s;
}

nlohmann::ordered_json rec(int64_t step, double reward) {
  nlohmann::ordered_json j;
  j["step"] = step;
  j["reward/mean"] = reward;
  return j;
}

}  // namespace

TEST(Metrics, OneFlushedObjectPerLine) {
  const std::string run = fresh_dir() + "/nested/run";  // created on demand
  MetricsWriter m(run);
  EXPECT_EQ(m.path(), run + "/metrics.jsonl");
  m.write(rec(1, 0.5));
  // Readable while the writer is still open (flushed per line).
  ASSERT_EQ(lines_of(m.path()), (std::vector<std::string>{R"({"step":1,"reward/mean":0.5})"}));
  nlohmann::ordered_json r = rec(2, 0.75);
  r["kl"] = std::nan("");
  r["phase"] = {{"rollout", 1.5}};
  m.write(r);
  const auto lines = lines_of(m.path());
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[1], R"({"step":2,"reward/mean":0.75,"kl":null,"phase":{"rollout":1.5}})");
  EXPECT_THROW(m.write(nlohmann::ordered_json{{"reward", 1}}), InternalError);  // no step
}

TEST(Metrics, ResumeDropsLaterStepsAndTornLines) {
  const std::string run = fresh_dir();
  {
    MetricsWriter m(run);
    for (int s = 1; s <= 5; ++s) m.write(rec(s, s * 0.1));
  }
  {
    std::ofstream(run + "/metrics.jsonl", std::ios::app) << "{\"step\": 6, \"rew";  // a crash mid-line
  }
  {
    MetricsWriter m(run, 3);
    EXPECT_EQ(steps_of(run + "/metrics.jsonl"), (std::vector<int64_t>{1, 2, 3}));
    m.write(rec(4, 9.0));
  }
  EXPECT_EQ(steps_of(run + "/metrics.jsonl"), (std::vector<int64_t>{1, 2, 3, 4}));
  EXPECT_EQ(nlohmann::json::parse(lines_of(run + "/metrics.jsonl")[3])["reward/mean"].get<double>(), 9.0);
  EXPECT_FALSE(fs::exists(run + "/metrics.jsonl.tmp"));
  {
    MetricsWriter m(run, 0);  // resumed from a step-0 checkpoint: nothing kept
    EXPECT_TRUE(lines_of(m.path()).empty());
  }
  {
    MetricsWriter m(run);  // resume_step < 0: a fresh run truncates
    m.write(rec(1, 0));
  }
  EXPECT_EQ(steps_of(run + "/metrics.jsonl"), (std::vector<int64_t>{1}));
  // Resuming where no file exists yet is fine.
  const std::string other = fresh_dir();
  MetricsWriter m(other, 7);
  m.write(rec(8, 1));
  EXPECT_EQ(steps_of(other + "/metrics.jsonl"), (std::vector<int64_t>{8}));
}

TEST(Metrics, SamplesHaveTheStandardFieldsFirst) {
  const std::string run = fresh_dir();
  {
    SamplesWriter s(run);
    SampleRecord r;
    r.step = 3;
    r.prompt = "What is 2+2?";
    r.completion = "4\n\"done\"";
    r.reward = 1.0;
    r.extra["answer"] = "4";
    r.extra["tokens"] = 2;
    s.write(r);
    r.step = 4;
    r.completion = std::string("bad \xff byte");
    r.extra = nlohmann::ordered_json::object();
    s.write(r);
  }
  const auto lines = lines_of(run + "/samples.jsonl");
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[0],
            R"({"step":3,"prompt":"What is 2+2?","completion":"4\n\"done\"","reward":1.0,"answer":"4","tokens":2})");
  // Invalid UTF-8 in generated text is replaced, never fatal.
  EXPECT_EQ(nlohmann::json::parse(lines[1])["completion"].get<std::string>(), "bad \xef\xbf\xbd byte");
  SamplesWriter resumed(run, 3);
  EXPECT_EQ(steps_of(run + "/samples.jsonl"), (std::vector<int64_t>{3}));
}

TEST(Metrics, RunConfigIsWrittenAtomically) {
  const std::string run = fresh_dir() + "/r";
  const RunConfig cfg = parse_config(R"({"optimizer": {"lr": 2e-6}, "train": {"steps": 3}})", "cfg.json");
  write_run_config(run, config_to_json(cfg));
  EXPECT_FALSE(fs::exists(run + "/config.json.tmp"));
  std::ifstream in(run + "/config.json");
  std::stringstream ss;
  ss << in.rdbuf();
  const RunConfig back = parse_config(ss.str(), "config.json");
  EXPECT_DOUBLE_EQ(back.optimizer.lr, 2e-6);
  EXPECT_EQ(back.train.steps, 3);
  EXPECT_EQ(config_to_json(back).dump(), config_to_json(cfg).dump());
}

TEST(Metrics, ConsoleStepLine) {
  StepSummary s;
  s.step = 12;
  s.total_steps = 100;
  s.reward = 0.41254;
  s.kl = 0.00123456;
  s.entropy = 0.53214;
  s.grad_norm = 1.23456;
  s.lr = 1e-6;
  s.tokens_per_s = 1234.4;
  s.step_seconds = 3.214;
  s.phases = {{"rollout", 2.1}, {"reward", 0.012}, {"train", 1.1}};
  EXPECT_EQ(format_step_line(s),
            "step 12/100 | reward 0.4125 | kl 0.001235 | entropy 0.5321 | grad_norm 1.235 | lr 1.00e-06 | 1234 tok/s"
            " | 3.21 s (rollout 2.10 s, reward 0.01 s, train 1.10 s)");
  StepSummary bare;
  bare.step = 1;
  bare.total_steps = 1;
  bare.step_seconds = 0.5;
  EXPECT_EQ(format_step_line(bare), "step 1/1 | 0.50 s");
}
