// Failure behaviour of the commands end to end (README "Failure behaviour"), one case per defect found:
//   - a reward command that prints an extra line stops the run (exit 1, the command and the line named, the last
//     completed step saved) instead of shifting every later reward onto another completion;
//   - a NaN or inf in a model's weights is an error naming the file and the tensor in `score`, `generate` and
//     `train`, not null log-probs or an internal check later;
//   - a failed write (stdout on /dev/full, `--output` on a link to /dev/full) exits 1 naming the output, for
//     tokenize, config show/keys/check, info, eval, score, generate and data synth; an output that is a device is
//     written directly, never replaced by a renamed temporary file;
//   - input mistakes: JSON errors name the file, line and column without the library's text (score, generate,
//     tokenize inputs, a sharded index, tokenizer.json); a directory given as an input file is an error, not an
//     empty input; token ids beyond int32 are errors, not wrapped ids; a --reward weight that is not a number exits
//     2; `rlcu sft` does not apply the checks between RL-only keys; config strings must be valid UTF-8.
#include <gtest/gtest.h>

#include <sys/stat.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli_util.h"

using namespace rlcu::test;
using nlohmann::json;
namespace fs = std::filesystem;

namespace {

const std::string kModel = std::string(RLCU_TEST_FIXTURES) + "/models/byte-tiny";
const std::string kData = std::string(RLCU_TEST_FIXTURES) + "/data/linear_d1_train.jsonl";
const std::string kEvalData = std::string(RLCU_TEST_FIXTURES) + "/data/linear_d1_eval.jsonl";
const std::string kSmoke = std::string(RLCU_SOURCE_DIR) + "/configs/smoke_cpu.json";

std::string fresh_dir(const std::string& name) {
  const std::string d = temp_dir() + "/" + name;
  fs::remove_all(d);
  return d;
}

json smoke_config(const std::string& model, const std::string& out_dir, int steps) {
  std::ifstream in(kSmoke);
  json cfg = json::parse(in);
  cfg["model"]["path"] = model;
  cfg["data"]["path"] = kData;
  cfg["run"]["output_dir"] = out_dir;
  cfg["train"]["steps"] = steps;
  cfg["train"]["prompts_per_step"] = 4;
  cfg["rollout"]["group_size"] = 4;
  return cfg;
}

std::string write_config(const json& cfg, const std::string& name) {
  const std::string p = temp_dir() + "/" + name + ".json";
  write_file(p, cfg.dump(2));
  return p;
}

bool dev_full_is_a_device() {
  struct stat st;
  return ::stat("/dev/full", &st) == 0 && S_ISCHR(st.st_mode);
}

// A copy of byte-tiny whose tensor `name` holds the bf16 bits `bits` at element `index`.
std::string model_with_bad_value(const std::string& dir_name, const std::string& name, size_t index, uint16_t bits) {
  const std::string dir = fresh_dir(dir_name);
  fs::create_directories(dir);
  for (const fs::directory_entry& e : fs::directory_iterator(kModel))
    fs::copy_file(e.path(), dir + "/" + e.path().filename().string());
  std::string bytes = read_file(dir + "/model.safetensors");
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  const json header = json::parse(bytes.substr(8, n));
  EXPECT_EQ(header.at(name).at("dtype"), "BF16");
  const size_t at = 8 + n + header.at(name).at("data_offsets")[0].get<size_t>() + 2 * index;
  std::memcpy(&bytes[at], &bits, 2);
  write_file(dir + "/model.safetensors", bytes);
  return dir;
}

}  // namespace

// ---- reward command: one line per request ---------------------------------------------------------------------------

TEST(CliFailures, ARewardCommandsExtraLineStopsTheRunAndKeepsTheCompletedSteps) {
  const std::string dir = fresh_dir("extra_line");
  // 16 requests a step, answered line for line, except request 32 (the last of step 2), which gets two lines in one
  // write. Before, the second line became the reward of step 3's first completion and every later one shifted by
  // one; the run ended with exit 0.
  json cfg = smoke_config(kModel, dir, 4);
  cfg["reward"]["contains"] = 0.0;
  cfg["reward"]["command"] = 1.0;
  cfg["reward"]["command_line"] =
      "i=0; while IFS= read -r l; do i=$((i+1)); if [ $i = 32 ]; then printf '1\\n0\\n'; else echo 0.5; fi; done";
  const CliResult r = run_cli("train " + write_config(cfg, "extra_line"));
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_NE(r.err.find("reward command `i=0;"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("extra reply line"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("expected exactly one line per request"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("after reply line 16 of 16, the batch's last: `0`"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("step 2 failed; the last completed step 1 is saved"), std::string::npos) << r.err;
  EXPECT_TRUE(fs::exists(dir + "/checkpoints/step-000001/model.safetensors"));
  EXPECT_FALSE(fs::exists(dir + "/checkpoints/step-000002"));
}

// ---- non-finite weights ----------------------------------------------------------------------------------------------

TEST(CliFailures, NonFiniteWeightsAreRejectedNamingFileAndTensor) {
  const std::string tensor = "model.layers.1.mlp.up_proj.weight";
  const std::string nan_model = model_with_bad_value("nan_model", tensor, 77, 0x7fc0);
  const std::string inf_model = model_with_bad_value("inf_model", "model.norm.weight", 3, 0xff80);
  const std::string in = temp_dir() + "/nan_in.jsonl";
  write_file(in, "{\"ids\": [1, 2, 3]}\n");

  CliResult r = run_cli("score --model " + nan_model + " --input " + in);
  EXPECT_EQ(r.code, 1) << r.err << r.out;
  EXPECT_NE(r.err.find(nan_model + "/model.safetensors: tensor `" + tensor + "`: element 77 of 12288 is NaN"),
            std::string::npos)
      << r.err;
  EXPECT_TRUE(r.out.empty()) << r.out;
  r = run_cli("score --model " + inf_model + " --input " + in);
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_NE(r.err.find("tensor `model.norm.weight`: element 3 of 64 is -inf"), std::string::npos) << r.err;

  r = run_cli("generate --model " + nan_model + " --input " + in + " --max-new-tokens 2");
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_NE(r.err.find("tensor `" + tensor + "`: element 77"), std::string::npos) << r.err;

  const std::string dir = fresh_dir("nan_train");
  r = run_cli("train " + write_config(smoke_config(nan_model, dir, 1), "nan_train"));
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_NE(r.err.find("tensor `" + tensor + "`: element 77"), std::string::npos) << r.err;
}

// ---- write errors ----------------------------------------------------------------------------------------------------

TEST(CliFailures, AFullStdoutOrOutputFileExitsOneNamingIt) {
  ASSERT_TRUE(dev_full_is_a_device());
  const std::string cfg = write_config(smoke_config(kModel, fresh_dir("full_cfg"), 1), "full_cfg");
  const std::string ids = temp_dir() + "/full_ids.jsonl", text = temp_dir() + "/full_text.jsonl";
  write_file(ids, "{\"ids\": [1, 2, 3]}\n");
  write_file(text, "{\"text\": \"1x+2=3, x=\"}\n");
  const std::string eval = "eval --model " + kModel + " --data " + kEvalData + " --greedy --max-new-tokens 2";
  const std::vector<std::string> to_stdout = {
      "tokenize --tokenizer " + kModel + " --input " + text,
      "config show " + cfg,
      "config keys",
      "config keys --markdown",
      "config check " + cfg,
      "info",
      "score --model " + kModel + " --input " + ids,
      "generate --model " + kModel + " --input " + ids + " --max-new-tokens 2",
      eval,
  };
  for (const std::string& args : to_stdout) {
    SCOPED_TRACE(args);
    const CliResult ok = run_cli(args);
    ASSERT_EQ(ok.code, 0) << ok.err;  // the command works with a working stdout
    ASSERT_FALSE(ok.out.empty());
    const CliResult r = run_cli(args, "", "/dev/full");
    EXPECT_EQ(r.code, 1) << r.err;
    EXPECT_NE(r.err.find("stdout: write failed"), std::string::npos) << r.err;
  }
  // Output files through a link to /dev/full: a build that renamed a temporary file over the output would replace
  // the link, not the device.
  const std::string full = temp_dir() + "/full_link";
  fs::remove(full);
  fs::create_symlink("/dev/full", full);
  const std::vector<std::string> to_file = {
      "score --model " + kModel + " --input " + ids + " --output " + full,
      "generate --model " + kModel + " --input " + ids + " --max-new-tokens 2 --output " + full,
      eval + " --output " + full,
      eval + " --samples-out " + full,
      "data synth --task linear --n 5 --out " + full,
  };
  for (const std::string& args : to_file) {
    SCOPED_TRACE(args);
    const CliResult r = run_cli(args);
    EXPECT_EQ(r.code, 1) << r.err;
    EXPECT_NE(r.err.find(full + ": write failed: No space left on device"), std::string::npos) << r.err;
    EXPECT_TRUE(fs::is_symlink(full)) << "the output replaced the link instead of writing to the device";
    EXPECT_TRUE(dev_full_is_a_device());
  }
  // A device that accepts the data is written directly (through a link, as above).
  const std::string null = temp_dir() + "/null_link";
  fs::remove(null);
  fs::create_symlink("/dev/null", null);
  const CliResult r = run_cli("data synth --task linear --n 5 --out " + null);
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(fs::is_symlink(null));
}

// ---- input mistakes: one case per finding ------------------------------------------------------------------------------

namespace {

void expect_error(const CliResult& r, int code, const std::vector<std::string>& parts) {
  EXPECT_EQ(r.code, code) << r.err;
  for (const std::string& p : parts) EXPECT_NE(r.err.find(p), std::string::npos) << "'" << p << "' not in: " << r.err;
  EXPECT_EQ(r.err.find("json.exception"), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("filesystem error"), std::string::npos) << r.err;
}

}  // namespace

TEST(CliFailures, JsonErrorsNameFileLineAndColumnWithoutTheLibrarysText) {
  const std::string in = temp_dir() + "/bad_line.jsonl";
  write_file(in, "{\"ids\": [1]}\n{\"ids\": [1,]}\n");
  // Before: `...:2: not valid JSON: [json.exception.parse_error.101] parse error at line 1, column 12: ...`.
  const std::string where = in + ":2:12: invalid JSON: syntax error while parsing value - unexpected ']'";
  expect_error(run_cli("score --model " + kModel + " --input " + in), 1, {where});
  expect_error(run_cli("generate --model " + kModel + " --input " + in), 1, {where});
  expect_error(run_cli("tokenize --tokenizer " + kModel + " --decode --input " + in), 1, {where});
  // Found by fuzz_jsonl and fuzz_safetensors: a number too large for a double is the library's out_of_range, not a
  // parse_error, and escaped as "[json.exception.out_of_range.406] number overflow parsing '1e999'".
  write_file(in, "{\"ids\": [1]}\n{\"ids\": [1e999]}\n");
  expect_error(run_cli("score --model " + kModel + " --input " + in), 1,
               {in + ":2: invalid JSON: number overflow parsing '1e999'"});
  const std::string cfg = temp_dir() + "/overflow.json";
  write_file(cfg, "{\"train\": {\"steps\": 1e999}}");
  expect_error(run_cli("config check " + cfg), 1, {cfg + ": invalid JSON: number overflow parsing '1e999'"});
  write_file(in, "{\"ids\": [1]}\n{\"ids\": [1,]}\n");
  // A sharded index and a tokenizer.json with the wrong structure.
  const std::string idx = fresh_dir("bad_index");
  fs::create_directories(idx);
  for (const char* f : {"config.json", "tokenizer.json", "tokenizer_config.json"})
    fs::copy_file(kModel + "/" + f, idx + "/" + f);
  write_file(idx + "/model.safetensors.index.json", "{\"weight_map\": {\"a\": \"x.safetensors\",}}");
  const std::string good = temp_dir() + "/good_line.jsonl";
  write_file(good, "{\"ids\": [1]}\n");
  expect_error(run_cli("score --model " + idx + " --input " + good), 1,
               {idx + "/model.safetensors.index.json:1:38: invalid JSON: syntax error while parsing object key"});
  write_file(idx + "/tokenizer.json", "{\"model\": 5}");
  expect_error(run_cli("tokenize --tokenizer " + idx + " --input " + good), 1,
               {idx + "/tokenizer.json: no \"model\" object"});  // before: "cannot use value() with number"
}

TEST(CliFailures, ADirectoryGivenAsAnInputFileIsAnError) {
  // A directory opens as an empty stream: before, `tokenize` printed nothing and exited 0, a config read as
  // "invalid JSON" at 1:1, and data "no usable prompts".
  const std::string dir = fresh_dir("a_dir");
  fs::create_directories(dir);
  expect_error(run_cli("tokenize --tokenizer " + kModel + " --input " + dir), 1, {dir + ": is a directory"});
  expect_error(run_cli("score --model " + kModel + " --input " + dir), 1, {dir + ": is a directory"});
  expect_error(run_cli("config check " + dir), 1, {dir + ": is a directory, expected a JSON config file"});
  json cfg = smoke_config(kModel, fresh_dir("a_dir_run"), 1);
  cfg["data"]["path"] = dir;
  expect_error(run_cli("train " + write_config(cfg, "a_dir_run")), 1, {dir + ": is a directory"});
  expect_error(run_cli("eval --model " + kModel + " --data " + dir), 1, {dir + ": is a directory"});
}

TEST(CliFailures, TokenIdsBeyondInt32AreErrorsNotWrappedIds) {
  // 4294967298 = 2^32 + 2 was converted to int32 as 2 and decoded as "\u0002", exit 0.
  const std::string in = temp_dir() + "/wrap.jsonl";
  write_file(in, "{\"ids\": [1, 4294967298]}\n");
  expect_error(run_cli("tokenize --tokenizer " + kModel + " --decode --input " + in), 1,
               {in + ":1: ids[1] = 4294967298: expected a token id (an integer in [0, 2^31))"});
  write_file(in, "{\"ids\": [-1]}\n");
  expect_error(run_cli("tokenize --tokenizer " + kModel + " --decode --input " + in), 1, {in + ":1: ids[0] = -1"});
}

TEST(CliFailures, UsageErrorsExitTwo) {
  // A --reward weight that is not a number is a command-line mistake (before: exit 1).
  expect_error(run_cli("eval --model " + kModel + " --data " + kEvalData + " --reward contains=abc"), 2,
               {"--reward contains=abc: the weight `abc` is not a number"});
  expect_error(run_cli("config check " + kSmoke + " --set train.steps"), 2, {"expected KEY=VALUE"});
}

TEST(CliFailures, SftDoesNotValidateRlOnlyKeys) {
  // rollout.group_size = 1 with the default algorithm (grpo) is an RL mistake; SFT reads neither key. Before, `rlcu
  // sft` exited 1 naming algorithm.name; `rlcu train` still refuses it.
  const std::string data = temp_dir() + "/sft_rl_keys.jsonl";
  std::string text;
  for (int i = 1; i <= 8; ++i)
    text += "{\"prompt\": \"" + std::to_string(i) + "+1=\", \"completion\": \"" + std::to_string(i + 1) + "\"}\n";
  write_file(data, text);
  const std::string dir = fresh_dir("sft_rl_keys");
  const std::string args = std::string(RLCU_SOURCE_DIR) + "/configs/demo_sft.json --device cpu --set model.path=" +
                           kModel + " --set sft.path=" + data + " --set run.output_dir=" + dir +
                           " --set sft.steps=1 --set sft.eval_fraction=0 --set rollout.group_size=1";
  const CliResult r = run_cli("sft " + args);
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(fs::exists(dir + "/checkpoints/step-000001/model.safetensors"));
  json cfg = smoke_config(kModel, fresh_dir("rl_keys"), 1);
  cfg["rollout"]["group_size"] = 1;
  expect_error(run_cli("train " + write_config(cfg, "rl_keys")), 1, {"`rollout.group_size` >= 2, got 1"});
}

TEST(CliFailures, ConfigStringsMustBeValidUtf8) {
  // Found by fuzz_config: an invalid UTF-8 string made the error message's JSON dump throw the library's
  // "[json.exception.type_error.316] invalid UTF-8 byte" (and config.json could not have been written).
  expect_error(run_cli("config check " + kSmoke + " --set 'run.output_dir=runs/\xff'"), 1,
               {"--set run.output_dir: `run.output_dir`: expected a string of valid UTF-8"});
  expect_error(run_cli("config check " + kSmoke + " --set 'train.steps=\xff'"), 1, {"`train.steps`: expected"});
}
