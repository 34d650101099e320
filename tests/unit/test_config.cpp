// RunConfig: defaults, types, ranges, enums, unknown keys with suggestions, syntax errors with line/column,
// --set overrides, the resolved dump, and run.output_dir's `{section.key}` placeholders.
// Path keys: relative values from a config file are its directory's, from --set the current directory's.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include <unistd.h>

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
  EXPECT_EQ(c.run.device, "auto");
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
    const std::string leaf = f.path.substr(f.path.rfind('.') + 1);  // eval.reward.format: nested objects
    EXPECT_NE(dumped.find("\"" + leaf + "\""), std::string::npos) << f.path;
  }
}

TEST(Config, EvalRewardsFollowTheRunUnlessGiven) {
  // Not given: the run's reward section, also after a round trip through the resolved dump.
  RunConfig c = parse_config(R"({"reward": {"math_answer": 0, "contains": 1}})", "cfg.json");
  EXPECT_FALSE(c.eval.reward_given);
  EXPECT_EQ(c.eval.reward.contains, 1.0);
  EXPECT_EQ(c.eval.reward.math_answer, 0.0);
  RunConfig back = parse_config(config_to_json(c).dump(), "dump.json");
  EXPECT_EQ(back.eval.reward.contains, 1.0);
  EXPECT_EQ(back.eval.reward.math_answer, 0.0);
  // Given (as a nested object or with --set): eval.reward replaces the run's set, defaults for the rest.
  c = parse_config(R"({"reward": {"contains": 1}, "eval": {"reward": {"exact_match": 2}}})", "cfg.json");
  EXPECT_TRUE(c.eval.reward_given);
  EXPECT_EQ(c.eval.reward.exact_match, 2.0);
  EXPECT_EQ(c.eval.reward.contains, 0.0);
  EXPECT_EQ(c.eval.reward.math_answer, 1.0);
  c = parse_config("{}", "cfg.json", {"eval.reward.format=0.5"});
  EXPECT_TRUE(c.eval.reward_given);
  EXPECT_EQ(c.eval.reward.format, 0.5);
  EXPECT_NE(error_of(R"({"eval": {"reward": {"formt": 1}}})").find("unknown key `eval.reward.formt`"),
            std::string::npos);
  EXPECT_NE(error_of(R"({"eval": {"reward": 3}})").find("`eval.reward` must be an object"), std::string::npos);
}

TEST(Config, RecipeKeysAndTheirCrossChecks) {
  const RunConfig d = parse_config("{}", "cfg.json");
  EXPECT_EQ(d.algorithm.policy_loss, "clip");
  EXPECT_EQ(d.algorithm.old_logprobs, "rollout");
  EXPECT_EQ(d.algorithm.rollout_correction, "none");
  EXPECT_EQ(d.algorithm.rollout_correction_cap, 2.0);
  EXPECT_EQ(d.algorithm.gspo_clip_low, 3e-4);
  EXPECT_EQ(d.algorithm.gspo_clip_high, 4e-4);
  EXPECT_TRUE(d.eval.data.empty());
  const std::string e = error_of("{}", {"algorithm.rollout_correction=tis"});
  EXPECT_NE(e.find("`algorithm.rollout_correction` = tis needs `algorithm.old_logprobs` = recompute"),
            std::string::npos)
      << e;
  EXPECT_NO_THROW(parse_config("{}", "cfg.json", {"algorithm.rollout_correction=mis", "algorithm.old_logprobs=recompute"}));
  EXPECT_NE(error_of("{}", {"algorithm.policy_loss=cispo", "algorithm.dual_clip=3"}).find("`algorithm.dual_clip`"),
            std::string::npos);
  EXPECT_NE(error_of("{}", {"algorithm.rollout_correction_cap=1"}).find("algorithm.rollout_correction_cap"),
            std::string::npos);
  EXPECT_NE(error_of("{}", {"algorithm.policy_loss=gpso"}).find("algorithm.policy_loss"), std::string::npos);
}

TEST(Config, TrainerSectionDefaults) {
  const RunConfig c = parse_config("{}", "cfg.json");
  EXPECT_EQ(c.run.save_every, 0);
  EXPECT_EQ(c.run.keep_checkpoints, 0);
  EXPECT_EQ(c.run.resume, "never");
  EXPECT_EQ(parse_config(R"({"run": {"resume": "auto"}})", "cfg.json").run.resume, "auto");
  const std::string e = error_of("{}", {"run.resume=always"});
  EXPECT_NE(e.find("run.resume"), std::string::npos) << e;
  EXPECT_NE(e.find("never"), std::string::npos) << e;
  EXPECT_EQ(c.algorithm.name, "grpo");
  EXPECT_EQ(c.algorithm.scale_rewards, "group");
  EXPECT_DOUBLE_EQ(c.algorithm.clip_low, 0.2);
  EXPECT_DOUBLE_EQ(c.algorithm.clip_high, 0.2);
  EXPECT_DOUBLE_EQ(c.algorithm.dual_clip, 0.0);
  EXPECT_EQ(c.algorithm.num_iterations, 1);
  EXPECT_DOUBLE_EQ(c.algorithm.kl_coef, 0.0);
  EXPECT_EQ(c.algorithm.kl_estimator, "k3");
  EXPECT_FALSE(c.algorithm.kl_in_reward);
  EXPECT_DOUBLE_EQ(c.algorithm.entropy_coef, 0.0);
  EXPECT_EQ(c.algorithm.loss_agg, "token-mean");
  EXPECT_FALSE(c.algorithm.dynamic_sampling);
  EXPECT_FALSE(c.algorithm.mask_truncated);
  EXPECT_DOUBLE_EQ(c.algorithm.gamma, 1.0);
  EXPECT_DOUBLE_EQ(c.algorithm.lam, 0.95);
  EXPECT_TRUE(c.algorithm.whiten_advantages);
  EXPECT_DOUBLE_EQ(c.algorithm.value_clip, 0.2);
  EXPECT_DOUBLE_EQ(c.algorithm.critic_lr, 1e-5);
  EXPECT_EQ(c.algorithm.critic_init, "policy");
  EXPECT_EQ(c.train.steps, 100);
  EXPECT_EQ(c.train.prompts_per_step, 8);
  EXPECT_EQ(c.train.micro_batch_tokens, 8192);
  EXPECT_FALSE(c.train.checkpointing);
  EXPECT_EQ(c.train.log_samples, 4);
  EXPECT_EQ(c.rollout.group_size, 8);
  EXPECT_EQ(c.rollout.max_new_tokens, 256);
  EXPECT_DOUBLE_EQ(c.rollout.temperature, 1.0);
  EXPECT_DOUBLE_EQ(c.rollout.top_p, 1.0);
  EXPECT_EQ(c.rollout.top_k, 0);
  EXPECT_DOUBLE_EQ(c.rollout.min_p, 0.0);
  EXPECT_EQ(c.rollout.stop, "");
  EXPECT_DOUBLE_EQ(c.rollout.kv_fraction, 0.9);
  EXPECT_EQ(c.rollout.block_size, 16);
  EXPECT_EQ(c.rollout.max_batch, 256);
  EXPECT_TRUE(c.rollout.cuda_graphs);
  EXPECT_EQ(c.rollout.prefill_tokens, 8192);
}

TEST(Config, TrainerSectionValuesAndRanges) {
  const RunConfig c = parse_config(
      R"({"algorithm": {"name": "ppo", "kl_estimator": "k1", "loss_agg": "seq-mean-token-sum-norm", "dual_clip": 3},
          "train": {"steps": 5}, "rollout": {"top_p": 0.9, "stop": "</answer>|\\|"}, "run": {"keep_checkpoints": 2}})",
      "cfg.json", {"rollout.group_size=1", "algorithm.critic_init=/models/critic"});
  EXPECT_EQ(c.algorithm.name, "ppo");
  EXPECT_EQ(c.algorithm.kl_estimator, "k1");
  EXPECT_EQ(c.algorithm.loss_agg, "seq-mean-token-sum-norm");
  EXPECT_DOUBLE_EQ(c.algorithm.dual_clip, 3.0);
  EXPECT_EQ(c.algorithm.critic_init, "/models/critic");
  EXPECT_EQ(c.train.steps, 5);
  EXPECT_EQ(c.rollout.group_size, 1);  // PPO needs no group
  EXPECT_EQ(c.run.keep_checkpoints, 2);
  EXPECT_EQ(parse_stop_strings(c.rollout.stop), (std::vector<std::string>{"</answer>", "|"}));

  EXPECT_NE(error_of(R"({"algorithm": {"name": "dpo"}})").find("one of grpo, ppo, rloo, reinforce_pp"),
            std::string::npos);
  EXPECT_NE(error_of(R"({"algorithm": {"kl_estimator": "k4"}})").find("`algorithm.kl_estimator`"), std::string::npos);
  EXPECT_NE(error_of(R"({"algorithm": {"num_iterations": 0}})").find("an integer >= 1"), std::string::npos);
  EXPECT_NE(error_of(R"({"algorithm": {"kl_coef": -0.1}})").find("`algorithm.kl_coef`"), std::string::npos);
  EXPECT_NE(error_of(R"({"algorithm": {"lam": 1.5}})").find("a number >= 0 and <= 1"), std::string::npos);
  EXPECT_NE(error_of(R"({"algorithm": {"critic_init": ""}})").find("`policy` or a model directory"),
            std::string::npos);
  EXPECT_NE(error_of(R"({"train": {"steps": 0}})").find("`train.steps`: expected an integer >= 1"), std::string::npos);
  EXPECT_NE(error_of(R"({"train": {"log_samples": -1}})").find("`train.log_samples`"), std::string::npos);
  EXPECT_NE(error_of(R"({"rollout": {"temperature": 0}})").find("`rollout.temperature`: expected a number > 0"),
            std::string::npos);
  EXPECT_NE(error_of(R"({"rollout": {"top_p": 0}})").find("a number > 0 and <= 1"), std::string::npos);
  EXPECT_NE(error_of(R"({"rollout": {"top_p": 1.01}})").find("`rollout.top_p`"), std::string::npos);
  EXPECT_NE(error_of(R"({"rollout": {"min_p": 2}})").find("`rollout.min_p`"), std::string::npos);
  EXPECT_NE(error_of(R"({"rollout": {"kv_fraction": 0}})").find("`rollout.kv_fraction`"), std::string::npos);
  EXPECT_NE(error_of(R"({"rollout": {"block_size": 0}})").find("`rollout.block_size`"), std::string::npos);
  EXPECT_NE(error_of(R"({"rollout": {"cuda_graphs": 1}})").find("expected true or false"), std::string::npos);
  EXPECT_NE(error_of(R"({"run": {"save_every": -1}})").find("`run.save_every`: expected an integer >= 0"),
            std::string::npos);
  EXPECT_NE(error_of(R"({"rollout": {"stop": "a||b"}})").find("`rollout.stop`"), std::string::npos);
  EXPECT_NE(error_of(R"({"rollout": {"stop": "a\\"}})").find("`rollout.stop`"), std::string::npos);
}

TEST(Config, CrossFieldChecksNameTheKeys) {
  EXPECT_EQ(error_of(R"({"algorithm": {"name": "rloo"}, "rollout": {"group_size": 1}})"),
            "cfg.json: `algorithm.name` = rloo compares the completions of one prompt and needs "
            "`rollout.group_size` >= 2, got 1");
  EXPECT_NE(error_of("{}", {"rollout.group_size=1"}).find("`algorithm.name` = grpo"), std::string::npos);
  EXPECT_NO_THROW(parse_config(R"({"algorithm": {"name": "reinforce_pp"}, "rollout": {"group_size": 1}})", "c"));
  EXPECT_NE(error_of(R"({"algorithm": {"name": "ppo", "dynamic_sampling": true}, "rollout": {"group_size": 1}})")
                .find("`algorithm.dynamic_sampling` needs `rollout.group_size` >= 2"),
            std::string::npos);
  EXPECT_EQ(error_of(R"({"algorithm": {"dual_clip": 0.5}})"),
            "cfg.json: `algorithm.dual_clip`: expected 0 (off) or a number > 1, got 0.5");
  EXPECT_NE(error_of(R"({"algorithm": {"dual_clip": 1}})").find("`algorithm.dual_clip`"), std::string::npos);
  const std::string e = error_of(R"({"rollout": {"max_new_tokens": 8000}})");
  EXPECT_NE(e.find("`data.max_prompt_tokens` + `rollout.max_new_tokens` (1024 + 8000) exceed "
                   "`train.micro_batch_tokens` (8192)"),
            std::string::npos)
      << e;
  EXPECT_NO_THROW(parse_config(R"({"rollout": {"max_new_tokens": 8000}, "data": {"max_prompt_tokens": 192}})", "c"));
}

TEST(Config, StopStringEncoding) {
  EXPECT_TRUE(parse_stop_strings("").empty());
  EXPECT_EQ(parse_stop_strings("a"), (std::vector<std::string>{"a"}));
  EXPECT_EQ(parse_stop_strings("\n\n|</s>"), (std::vector<std::string>{"\n\n", "</s>"}));
  EXPECT_EQ(parse_stop_strings("x\\|y|\\\\"), (std::vector<std::string>{"x|y", "\\"}));
  EXPECT_THROW(parse_stop_strings("|a"), Error);
  EXPECT_THROW(parse_stop_strings("a|"), Error);
  EXPECT_THROW(parse_stop_strings("a\\n"), Error);
  try {
    parse_stop_strings("ab\\", "rollout.stop");
    ADD_FAILURE() << "no error";
  } catch (const Error& err) {
    EXPECT_NE(std::string(err.what()).find("rollout.stop: `\\` at byte 2"), std::string::npos) << err.what();
  }
}

TEST(Config, OutputDirPlaceholdersAreFilledFromTheResolvedConfig) {
  const auto dir = [](const std::string& text, const std::vector<std::string>& sets = {}) {
    return parse_config(text, "cfg.json", sets).run.output_dir;
  };
  // Numbers as a user writes them, after --set and with defaults; ints, bools, enums and strings as they are.
  EXPECT_EQ(dir(R"({"run": {"output_dir": "runs/lr{optimizer.lr}_g{rollout.group_size}"}})",
                {"optimizer.lr=1e-3", "rollout.group_size=4"}),
            "runs/lr0.001_g4");
  EXPECT_EQ(dir(R"({"run": {"output_dir": "r/{optimizer.lr}"}, "optimizer": {"lr": 2e-6}})"), "r/2e-6");
  EXPECT_EQ(dir(R"({"run": {"output_dir": "r/{optimizer.lr}"}, "optimizer": {"lr": 0.0003}})"), "r/0.0003");
  EXPECT_EQ(dir(R"({"run": {"output_dir": "r/{optimizer.beta2}"}})"), "r/0.999");  // a default
  EXPECT_EQ(dir(R"({"run": {"output_dir": "r/{optimizer.max_grad_norm}"}})"), "r/1");
  EXPECT_EQ(dir(R"({"run": {"output_dir": "r/{optimizer.eps}"}})"), "r/1e-8");
  EXPECT_EQ(dir(R"({"run": {"output_dir": "r/{optimizer.max_grad_norm}"}})", {"optimizer.max_grad_norm=1e12"}),
            "r/1000000000000");
  EXPECT_EQ(dir(R"({"run": {"output_dir": "{algorithm.name}-{train.checkpointing}-s{run.seed}"}})",
                {"algorithm.name=rloo", "run.seed=3"}),
            "rloo-false-s3");
  EXPECT_EQ(dir(R"({"run": {"output_dir": "a{{b}}c"}})"), "a{b}c");  // literal braces
  EXPECT_EQ(dir(R"({"run": {"output_dir": "plain/dir"}})"), "plain/dir");
  // The resolved dump (config show, RUN/config.json) holds the filled path.
  const RunConfig c = parse_config(R"({"run": {"output_dir": "runs/lr{optimizer.lr}"}})", "cfg.json",
                                   {"optimizer.lr=0.01"});
  EXPECT_EQ(config_to_json(c)["run"]["output_dir"], "runs/lr0.01");
}

TEST(Config, OutputDirPlaceholderErrorsNameTheKeyAndThePlaceholder) {
  EXPECT_EQ(error_of(R"({"run": {"output_dir": "runs/{optimizer.lrr}"}})"),
            "cfg.json: `run.output_dir` = \"runs/{optimizer.lrr}\": placeholder `{optimizer.lrr}` names no config "
            "key; did you mean `{optimizer.lr}`?");
  EXPECT_EQ(error_of(R"({"run": {"output_dir": "runs/lr{optimizer.lr"}})"),
            "cfg.json: `run.output_dir` = \"runs/lr{optimizer.lr\": placeholder `{optimizer.lr` at byte 7 is not "
            "closed by `}` (write `{{` for a literal brace)");
  EXPECT_NE(error_of(R"({"run": {"output_dir": "a{optimizer.lr{x}"}})").find("`{optimizer.lr` at byte 1 is not closed"),
            std::string::npos);
  EXPECT_NE(error_of(R"({"run": {"output_dir": "a}b"}})").find("`}` at byte 1 closes no placeholder"),
            std::string::npos);
  EXPECT_NE(error_of(R"({"run": {"output_dir": "a{}"}})").find("placeholder `{}` names no config key"),
            std::string::npos);
  EXPECT_NE(error_of(R"({"run": {"output_dir": "{run.output_dir}"}})").find("names the key itself"),
            std::string::npos);
  // Given with --set, the error names the option.
  EXPECT_EQ(error_of("{}", {"run.output_dir=runs/{nope.key}"})
                .rfind("--set run.output_dir: `run.output_dir` = \"runs/{nope.key}\": placeholder `{nope.key}`", 0),
            0u);
}

TEST(Config, ResumeDirectoryBracesAreNotPlaceholders) {
  char tmpl[] = "/tmp/rlcu_config_XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  const std::string run = std::string(tmpl) + "/lr{0.1}";
  std::filesystem::create_directories(run);
  std::ofstream(run + "/config.json") << R"({"run": {"output_dir": "elsewhere"}})";
  const RunConfig c = load_run_config("train", "", {}, run, "", nullptr);
  EXPECT_EQ(c.run.output_dir, run);
  std::filesystem::remove_all(tmpl);
}

TEST(Config, RelativePathsResolveAgainstTheConfigFileOrTheCurrentDirectory) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / ("rlcu_cfg_paths_" + std::to_string(::getpid()));
  fs::create_directories(dir / "sub");
  const fs::path file = dir / "sub" / "run.json";
  std::ofstream(file) << R"({"run": {"output_dir": "../runs/{run.seed}"}, "model": {"path": "models/m"},
    "data": {"path": "/abs/data.jsonl"}, "reward": {"model_path": "rm"}, "algorithm": {"critic_init": "policy"},
    "eval": {"data": "../held.jsonl"}})";
  const fs::path cwd = fs::current_path();
  RunConfig c = load_config(file.string(), {"model.tokenizer=tok", "sft.path=./s.jsonl"});
  EXPECT_EQ(c.run.output_dir, (dir / "runs" / "0").string());
  EXPECT_EQ(c.model.path, (dir / "sub" / "models" / "m").string());
  EXPECT_EQ(c.data.path, "/abs/data.jsonl");
  EXPECT_EQ(c.reward.model_path, (dir / "sub" / "rm").string());
  EXPECT_EQ(c.eval.reward.model_path, (dir / "sub" / "rm").string());
  EXPECT_EQ(c.algorithm.critic_init, "policy");
  EXPECT_EQ(c.eval.data, (dir / "held.jsonl").string());
  EXPECT_EQ(c.model.tokenizer, (cwd / "tok").string());
  EXPECT_EQ(c.sft.path, (cwd / "s.jsonl").string());
  EXPECT_EQ(c.model.chat_template_file, "");  // empty stays empty
  // --set run.output_dir and the default are the current directory's.
  EXPECT_EQ(load_config(file.string(), {"run.output_dir=out"}).run.output_dir, (cwd / "out").string());
  std::ofstream(file) << "{}";
  EXPECT_EQ(load_config(file.string()).run.output_dir, (cwd / "runs" / "rlcu").string());
  // Text parsed without a file keeps the values as written.
  EXPECT_EQ(parse_config(R"({"model": {"path": "models/m"}})", "cfg.json").model.path, "models/m");
  fs::remove_all(dir);
}
