// RunConfig: defaults, types, ranges, enums, unknown keys with suggestions, syntax errors with line/column,
// --set overrides, and the resolved dump.
#include <gtest/gtest.h>

#include "rlcu/config.h"
#include "rlcu/error.h"

using namespace rlcu;

namespace {
std::string error_of(const std::string& text, const std::vector<std::string>& sets = {}) {
  try {
    parse_config(text, "cfg.json", sets);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}
}  // namespace

TEST(Config, DefaultsAndValues) {
  RunConfig c = parse_config(R"({"run": {"seed": 7}, "optimizer": {"lr": 3e-6, "lr_schedule": "cosine"}})", "cfg.json");
  EXPECT_EQ(c.run.seed, 7);
  EXPECT_DOUBLE_EQ(c.optimizer.lr, 3e-6);
  EXPECT_EQ(c.optimizer.lr_schedule, "cosine");
  EXPECT_DOUBLE_EQ(c.optimizer.beta2, 0.999);  // default kept
  EXPECT_EQ(c.run.device, "cuda");
}

TEST(Config, EmptyObjectIsValid) { EXPECT_NO_THROW(parse_config("{}", "cfg.json")); }

TEST(Config, UnknownKeySuggestsClosest) {
  EXPECT_EQ(error_of(R"({"optimizer": {"lrr": 1e-6}})"),
            "cfg.json: unknown key `optimizer.lrr`; did you mean `optimizer.lr`?");
  EXPECT_NE(error_of(R"({"optimiser": {"lr": 1e-6}})").find("unknown key `optimiser`"), std::string::npos);
  EXPECT_NE(error_of(R"({"lr": 1e-6})").find("did you mean `optimizer.lr`?"), std::string::npos);
  EXPECT_NE(error_of(R"({"zzzzzzzzzz": 1})").find("see `rlcu config keys`"), std::string::npos);
}

TEST(Config, WrongTypesNameThePathAndExpectation) {
  EXPECT_EQ(error_of(R"({"optimizer": {"lr": "fast"}})"),
            "cfg.json: `optimizer.lr`: expected a number > 0 and <= 1, got \"fast\"");
  EXPECT_NE(error_of(R"({"run": {"seed": 1.5}})").find("`run.seed`: expected an integer >= 0"), std::string::npos);
  EXPECT_NE(error_of(R"({"run": {"seed": -1}})").find("`run.seed`"), std::string::npos);
  EXPECT_NE(error_of(R"({"model": {"enable_thinking": "yes"}})").find("expected true or false"), std::string::npos);
  EXPECT_NE(error_of(R"({"optimizer": {"lr_schedule": "step"}})").find("one of constant, linear, cosine"),
            std::string::npos);
  EXPECT_NE(error_of(R"({"run": {"device": "tpu"}})").find("cpu, cuda or cuda:N"), std::string::npos);
  EXPECT_NE(error_of(R"({"run": 3})").find("`run` must be an object"), std::string::npos);
  EXPECT_NE(error_of(R"({"optimizer": {"lr": 0}})").find("> 0"), std::string::npos);
  EXPECT_NE(error_of(R"([1, 2])").find("expected a JSON object"), std::string::npos);
}

TEST(Config, SyntaxErrorsGiveLineAndColumn) {
  const std::string e = error_of("{\n  \"run\": {\"seed\": 1,}\n}");
  EXPECT_EQ(e.rfind("cfg.json:2:", 0), 0u) << e;
  EXPECT_NE(e.find("invalid JSON"), std::string::npos);
  const std::string t = error_of("{\"run\": {\"seed\": 1}");  // truncated
  EXPECT_EQ(t.rfind("cfg.json:1:", 0), 0u) << t;
}

TEST(Config, OverridesAreTypedAndValidated) {
  RunConfig c = parse_config("{}", "cfg.json",
                             {"optimizer.lr=2e-6", "run.seed=11", "model.enable_thinking=false", "run.device=cpu",
                              "model.path=\"/m\"", "run.output_dir=out dir"});
  EXPECT_DOUBLE_EQ(c.optimizer.lr, 2e-6);
  EXPECT_EQ(c.run.seed, 11);
  EXPECT_FALSE(c.model.enable_thinking);
  EXPECT_EQ(c.run.device, "cpu");
  EXPECT_EQ(c.model.path, "/m");
  EXPECT_EQ(c.run.output_dir, "out dir");
  EXPECT_NE(error_of("{}", {"optimizer.lrr=1"}).find("--set optimizer.lrr: unknown key"), std::string::npos);
  EXPECT_NE(error_of("{}", {"run.seed=[1,2]"}).find("--set run.seed: `run.seed`: expected an integer"),
            std::string::npos);
  EXPECT_THROW(parse_config("{}", "cfg.json", {"novalue"}), UsageError);
  // An override replaces the file's value.
  EXPECT_EQ(parse_config(R"({"run": {"seed": 1}})", "cfg.json", {"run.seed=2"}).run.seed, 2);
}

TEST(Config, ResolvedDumpRoundTrips) {
  RunConfig c = parse_config(R"({"optimizer": {"weight_decay": 0.1}})", "cfg.json");
  const std::string dumped = config_to_json(c).dump();
  RunConfig back = parse_config(dumped, "dump.json");
  EXPECT_EQ(config_to_json(back).dump(), dumped);
  EXPECT_NE(dumped.find("\"weight_decay\":0.1"), std::string::npos);
  // Every schema key appears in the dump.
  for (const FieldSpec& f : config_schema()) {
    const std::string leaf = f.path.substr(f.path.find('.') + 1);
    EXPECT_NE(dumped.find("\"" + leaf + "\""), std::string::npos) << f.path;
  }
}
