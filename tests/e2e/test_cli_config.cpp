// CLI behaviour of `rlcu config`, `--version`, `info` and usage errors: exit codes and one-line messages.
#include <gtest/gtest.h>

#include "cli_util.h"

using rlcu::test::run_cli;
using rlcu::test::temp_dir;
using rlcu::test::write_file;

TEST(CliConfig, CheckAndShow) {
  const std::string p = temp_dir() + "/ok.json";
  write_file(p, R"({"optimizer": {"lr": 1e-5}})");
  auto r = run_cli("config check " + p);
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("ok"), std::string::npos);
  r = run_cli("config show " + p + " --set optimizer.lr=3e-6 --set run.seed=5");
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("\"lr\": 3e-06"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("\"seed\": 5"), std::string::npos);
  EXPECT_NE(r.out.find("\"beta1\": 0.9"), std::string::npos);  // defaults filled in
}

TEST(CliConfig, ShowFillsOutputDirPlaceholders) {
  const std::string p = temp_dir() + "/sweep.json";
  write_file(p, R"({"run": {"output_dir": "runs/lr{optimizer.lr}_g{rollout.group_size}"}})");
  auto r = run_cli("config show " + p + " --set optimizer.lr=1e-3");
  EXPECT_EQ(r.code, 0) << r.err;
  // Relative to the config file's directory.
  EXPECT_NE(r.out.find("\"output_dir\": \"" + temp_dir() + "/runs/lr0.001_g8\""), std::string::npos) << r.out;
  r = run_cli("config check " + p + " --set 'run.output_dir=runs/{optimizer.lrr}'");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("--set run.output_dir: `run.output_dir` = \"runs/{optimizer.lrr}\""), std::string::npos)
      << r.err;
  EXPECT_NE(r.err.find("did you mean `{optimizer.lr}`?"), std::string::npos) << r.err;
}

TEST(CliConfig, ShippedConfigsAreValid) {
  for (const char* name : {"configs/base.json", "configs/smoke_cpu.json", "configs/demo.json", "configs/demo_sft.json"}) {
    auto r = run_cli(std::string("config check ") + RLCU_SOURCE_DIR + "/" + name);
    EXPECT_EQ(r.code, 0) << name << ": " << r.err;
  }
}

TEST(CliConfig, MistakesExitOneAndNameTheKey) {
  const std::string dir = temp_dir();
  struct Case {
    std::string text, needle;
  } cases[] = {
      {R"({"optimizer": {"lrr": 1e-6}})", "did you mean `optimizer.lr`?"},
      {R"({"optimizer": {"lr": "x"}})", "`optimizer.lr`: expected a number"},
      {"{\n\"run\": {\"seed\": 1", "bad.json:2:"},
      {R"({"run": {"device": "gpu"}})", "`run.device`"},
  };
  for (const Case& c : cases) {
    const std::string p = dir + "/bad.json";
    write_file(p, c.text);
    auto r = run_cli("config check " + p);
    EXPECT_EQ(r.code, 1) << c.text;
    EXPECT_NE(r.err.find(c.needle), std::string::npos) << c.text << " -> " << r.err;
    EXPECT_NE(r.err.find("bad.json"), std::string::npos) << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << "one line: " << r.err;
  }
  auto r = run_cli("config check " + dir + "/missing.json");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("missing.json"), std::string::npos);
}

TEST(CliConfig, UsageErrorsExitTwo) {
  const auto bare = run_cli("");  // `rlcu` alone lists the commands
  EXPECT_EQ(bare.code, 2);
  for (const char* c : {"train", "sft", "eval", "generate", "score", "config", "data", "init-model"})
    EXPECT_NE(bare.out.find(std::string("\n  ") + c + " "), std::string::npos) << c << " in " << bare.out;
  EXPECT_EQ(run_cli("no-such-command").code, 2);
  EXPECT_EQ(run_cli("config check").code, 2);
  EXPECT_EQ(run_cli("config check x.json --set noequals").code, 2);
  EXPECT_EQ(run_cli("info --bogus").code, 2);
}

TEST(CliConfig, VersionAndInfo) {
  auto r = run_cli("--version");
  EXPECT_EQ(r.code, 0);
  EXPECT_NE(r.out.find("rlcu 0."), std::string::npos);
  r = run_cli("info");
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("CUDA runtime"), std::string::npos);
  EXPECT_TRUE(r.out.find("GPU 0") != std::string::npos || r.out.find("no CUDA device") != std::string::npos);
}

TEST(CliConfig, ReadmeReferenceMatchesKeys) {
  auto r = run_cli("config keys --markdown");
  ASSERT_EQ(r.code, 0) << r.err;
  const std::string readme = rlcu::test::read_file(std::string(RLCU_SOURCE_DIR) + "/README.md");
  EXPECT_NE(readme.find(r.out), std::string::npos)
      << "README.md's configuration reference is out of date: paste `rlcu config keys --markdown` into it";
}
