// `rlcu score` end to end: golden log-probabilities of the six fixture models through the CLI (stdout and
// --output, several micro-batch budgets), and the exit code and stderr of every kind of bad input: model files
// (truncated or corrupt safetensors, offsets outside the file, missing tensor, shape mismatch, wrong dtype, unknown
// model_type), input lines (file:line), usage errors and devices.
#include <gtest/gtest.h>

#include <cmath>

#include "parity/model_test_util.h"
#include "rlcu/context.h"

using namespace rlcu;
using namespace rlcu::test;
using nlohmann::json;

namespace {

// The "ids" lines of a golden file as a score input.
std::string write_input(const TempDir& d, const std::vector<GoldenSeq>& golden) {
  std::string s;
  for (const auto& g : golden) s += json{{"ids", g.ids}}.dump() + "\n";
  const std::string p = d.file("input.jsonl");
  write_text(p, s);
  return p;
}

double compare_output(const std::string& out, const std::vector<GoldenSeq>& golden) {
  std::stringstream ss(out);
  std::string line;
  size_t s = 0;
  double worst = 0.0;
  while (std::getline(ss, line)) {
    const json j = json::parse(line);
    EXPECT_EQ(j.size(), 1u);
    const auto lp = j.at("logprobs").get<std::vector<double>>();
    EXPECT_LT(s, golden.size());
    if (s >= golden.size()) break;
    EXPECT_EQ(lp.size(), golden[s].logprobs.size()) << "line " << s + 1;
    for (size_t t = 0; t < lp.size() && t < golden[s].logprobs.size(); ++t)
      worst = std::max(worst, std::abs(lp[t] - golden[s].logprobs[t]));
    ++s;
  }
  EXPECT_EQ(s, golden.size());
  return worst;
}

void expect_failure(const CmdResult& r, int code, const std::vector<std::string>& parts) {
  EXPECT_EQ(r.code, code) << r.err;
  for (const auto& p : parts) EXPECT_NE(r.err.find(p), std::string::npos) << "'" << p << "' not in: " << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << "expected one line on stderr: " << r.err;
}

}  // namespace

TEST(CliScore, GoldenThroughCli) {
  for (const std::string& name : fixture_model_names()) {
    SCOPED_TRACE(name);
    TempDir d("score");
    const std::string dir = fixture_model(name);
    const auto golden = read_golden(dir);
    const std::string in = write_input(d, golden);
    const CmdResult r = run_rlcu("score --model " + quote(dir) + " --input " + quote(in));
    ASSERT_EQ(r.code, 0) << r.err;
    const double err = compare_output(r.out, golden);
    std::printf("%s: rlcu score max |logprob - golden| = %.3e\n", name.c_str(), err);
    EXPECT_LT(err, 1e-4);
    // --output, and a budget that forces one sequence per micro-batch, give the same lines.
    const std::string outp = d.file("out.jsonl");
    const CmdResult r2 = run_rlcu("score --model " + quote(dir) + " --input " + quote(in) + " --output " + quote(outp) +
                                  " --device cpu --max-tokens 80");
    ASSERT_EQ(r2.code, 0) << r2.err;
    EXPECT_TRUE(r2.out.empty());
    EXPECT_EQ(read_text(outp), r.out);
    EXPECT_FALSE(fs::exists(outp + ".tmp." + std::to_string(getpid())));
  }
}

TEST(CliScore, ModelFileErrors) {
  TempDir d("score");
  const std::string dir = d.file("m");
  const std::string st = dir + "/model.safetensors";
  const std::string in = d.file("in.jsonl");
  write_text(in, "{\"ids\": [1, 2, 3]}\n");
  const std::string args = "score --model " + quote(dir) + " --input " + quote(in);
  const std::string original = read_text(fixture_model("llama3-tiny") + "/model.safetensors");
  auto reset = [&] { copy_model(fixture_model("llama3-tiny"), dir); };
  auto edit_header = [&](const std::string& from, const std::string& to) {
    std::string b = original;
    const size_t pos = b.find(from);
    ASSERT_NE(pos, std::string::npos) << from;
    ASSERT_LT(pos, 3000u);
    b.replace(pos, from.size(), to);
    write_text(st, b);
  };

  reset();
  write_text(st, original.substr(0, original.size() - 100));
  expect_failure(run_rlcu(args), 1, {st, "`model.norm.weight`", "past the end"});

  write_text(st, original.substr(0, 100));
  expect_failure(run_rlcu(args), 1, {st, "header length"});

  edit_header(R"("__metadata__":{)", R"("__metadata__";{)");
  expect_failure(run_rlcu(args), 1, {st, "not valid JSON"});

  // Offsets outside the file: same text length, a data_offsets end beyond the data section.
  edit_header(R"("data_offsets":[558080,574464])", R"("data_offsets":[558080,974464])");
  expect_failure(run_rlcu(args), 1, {st, "`model.layers.1.self_attn.q_proj.weight`", "past the end"});

  // A missing tensor: rename one entry to a name the model does not know.
  edit_header(R"("model.layers.0.self_attn.v_proj.weight")", R"("model.layers.0.self_attn.x_proj.weight")");
  expect_failure(run_rlcu(args), 1, {st, "`model.layers.0.self_attn.v_proj.weight`", "missing"});

  // Shape mismatch: [64,64] -> [8,512] keeps the byte size and the header length.
  edit_header(R"("model.layers.0.self_attn.o_proj.weight":{"dtype":"F32","shape":[64,64])",
              R"("model.layers.0.self_attn.o_proj.weight":{"dtype":"F32","shape":[8,512])");
  expect_failure(run_rlcu(args), 1, {st, "`model.layers.0.self_attn.o_proj.weight`", "[8, 512]", "[64, 64]"});

  // Wrong dtype: I32 has the same size as F32, so only the dtype check can catch it.
  edit_header(R"("model.embed_tokens.weight":{"dtype":"F32")", R"("model.embed_tokens.weight":{"dtype":"I32")");
  expect_failure(run_rlcu(args), 1, {st, "`model.embed_tokens.weight`", "I32"});

  // Unknown model_type, and a truncated config.json.
  reset();
  json cfg = read_json(dir + "/config.json");
  cfg["model_type"] = "mistral";
  write_json(dir + "/config.json", cfg);
  expect_failure(run_rlcu(args), 1, {dir + "/config.json", "`model_type`", "mistral"});
  const std::string text = read_text(fixture_model("llama3-tiny") + "/config.json");
  write_text(dir + "/config.json", text.substr(0, text.size() / 2));
  expect_failure(run_rlcu(args), 1, {dir + "/config.json:", "invalid JSON"});

  // No weights at all.
  reset();
  fs::remove(st);
  expect_failure(run_rlcu(args), 1, {dir, "no model.safetensors"});
  expect_failure(run_rlcu("score --model " + quote(d.file("absent")) + " --input " + quote(in)), 1, {d.file("absent")});
}

TEST(CliScore, InputErrorsNameFileAndLine) {
  TempDir d("score");
  const std::string model = quote(fixture_model("qwen3-tiny"));
  const std::string in = d.file("in.jsonl");
  auto run_with = [&](const std::string& content) {
    write_text(in, content);
    return run_rlcu("score --model " + model + " --input " + quote(in));
  };
  expect_failure(run_with("{\"ids\": [1, 2]}\n\n{\"ids\": [1, 2\n"), 1, {in + ":3:14: invalid JSON"});
  expect_failure(run_with("{\"ids\": [1, 2]}\n{\"tokens\": [1]}\n"), 1, {in + ":2", "\"ids\""});
  expect_failure(run_with("{\"ids\": []}\n"), 1, {in + ":1", "non-empty"});
  expect_failure(run_with("{\"ids\": [1, 512]}\n"), 1, {in + ":1", "ids[1] = 512", "[0, 512)"});
  expect_failure(run_with("{\"ids\": [1, -3]}\n"), 1, {in + ":1", "ids[1]"});
  expect_failure(run_with("{\"ids\": [1, 2.5]}\n"), 1, {in + ":1", "ids[1]"});
  expect_failure(run_with("[1, 2]\n"), 1, {in + ":1"});
  write_text(in, "{\"ids\": [1]}\n{\"ids\": [1, 2]}\n");
  const CmdResult long_seq = run_rlcu("score --model " + model + " --input " + quote(in) + " --max-tokens 1");
  expect_failure(long_seq, 1, {in + ":2", "--max-tokens 1"});
  expect_failure(run_rlcu("score --model " + model + " --input " + quote(d.file("absent.jsonl"))), 1,
                 {d.file("absent.jsonl"), "cannot open"});

  // Blank lines are skipped; an empty input gives an empty output.
  const CmdResult ok = run_with("\n{\"ids\": [5]}\n  \n{\"ids\": [5, 6], \"note\": \"extra keys are ignored\"}\n");
  ASSERT_EQ(ok.code, 0) << ok.err;
  std::stringstream ss(ok.out);
  std::string l1, l2;
  std::getline(ss, l1);
  std::getline(ss, l2);
  EXPECT_EQ(l1, "{\"logprobs\": []}");
  EXPECT_EQ(json::parse(l2)["logprobs"].size(), 1u);
  const CmdResult empty = run_with("");
  EXPECT_EQ(empty.code, 0) << empty.err;
  EXPECT_TRUE(empty.out.empty());
}

TEST(CliScore, OutputIsAtomicAndUsageErrors) {
  TempDir d("score");
  const std::string model = quote(fixture_model("qwen3-tiny"));
  const std::string in = d.file("in.jsonl");
  const std::string out = d.file("out.jsonl");
  write_text(in, "{\"ids\": [1, 2, 3]}\n{\"ids\": [1, 99999]}\n");
  write_text(out, "previous\n");
  const CmdResult bad = run_rlcu("score --model " + model + " --input " + quote(in) + " --output " + quote(out));
  expect_failure(bad, 1, {in + ":2"});
  EXPECT_EQ(read_text(out), "previous\n");
  for (const auto& e : fs::directory_iterator(d.str()))
    EXPECT_EQ(e.path().filename().string().find(".tmp"), std::string::npos) << e.path();
  write_text(in, "{\"ids\": [1, 2, 3]}\n");
  expect_failure(run_rlcu("score --model " + model + " --input " + quote(in) + " --output " +
                          quote(d.file("no/such/dir/out.jsonl"))),
                 1, {d.file("no/such/dir/out.jsonl")});

  EXPECT_EQ(run_rlcu("score --input " + quote(in)).code, 2);
  EXPECT_EQ(run_rlcu("score --model " + model).code, 2);
  EXPECT_EQ(run_rlcu("score --model " + model + " --input " + quote(in) + " --max-tokens 0").code, 2);
  expect_failure(run_rlcu("score --model " + model + " --input " + quote(in) + " --device tpu"), 2,
                 {"--device", "tpu"});
}

TEST(CliScore, CudaDevice) {
  TempDir d("score");
  const std::string dir = fixture_model("qwen3-tiny");
  const auto golden = read_golden(dir);
  const std::string in = write_input(d, golden);
  const CmdResult r = run_rlcu("score --model " + quote(dir) + " --input " + quote(in) + " --device cuda");
  if (cuda_device_count() == 0) {
    expect_failure(r, 1, {"CUDA"});
    GTEST_SKIP() << "no CUDA device: checked the clean error only";
  }
  // BF16 weights and activations on the GPU: agreement at bf16 precision.
  ASSERT_EQ(r.code, 0) << r.err;
  const double err = compare_output(r.out, golden);
  std::printf("qwen3-tiny on CUDA (bf16): max |logprob - golden| = %.3e\n", err);
  EXPECT_LT(err, 6e-2);  // bf16 rounding of the float32 weights and of the activations (2.3e-2 on an H200)
}
