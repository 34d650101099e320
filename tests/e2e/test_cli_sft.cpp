// `rlcu sft` end to end on the CPU, with a tiny random model from `rlcu init-model --byte-tokenizer` and arithmetic
// SFT data from `rlcu data synth --sft`: the held-out loss falls clearly over a few dozen steps and every metrics
// field is there; the step-0 held-out loss and the step-1 training loss equal an independent computation (whole
// sequences through Transformer::forward, next-token targets, completion rows picked from the record's mask);
// --stop-after + --resume gives a byte-identical final model.safetensors and the same metrics; the final checkpoint
// loads as a model for `rlcu eval` and `rlcu train`; chat-message records train; bad data names file:line; a run
// directory that holds a run is refused and --overwrite starts over; a resume refuses changed training data;
// --dry-run prints the memory plan, exits 0 and creates no run directory, and its total is within 5% of the peak of
// the run's buffers; a plan over run.memory_limit_gib stops the run naming the settings that shrink it.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <memory>

#include "parity/model_test_util.h"
#include "rlcu/config.h"
#include "rlcu/context.h"
#include "rlcu/model.h"
#include "rlcu/sft.h"
#include "rlcu/tokenizer.h"

using namespace rlcu;
using namespace rlcu::test;
using nlohmann::json;

namespace {

class CliSft : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = std::make_unique<TempDir>("sft-e2e");
    const CmdResult m = run_rlcu("init-model --arch qwen3 --hidden 64 --layers 2 --heads 4 --kv-heads 2 "
                                 "--byte-tokenizer --seed 3 --out " + quote(model()));
    ASSERT_EQ(m.code, 0) << m.err;
    const CmdResult d = run_rlcu("data synth --task arithmetic --n 400 --sft --seed 1 --out " + quote(train_data()));
    ASSERT_EQ(d.code, 0) << d.err;
    const CmdResult t =
        run_rlcu("data synth --task arithmetic --n 24 --sft --split test --seed 2 --out " + quote(test_data()));
    ASSERT_EQ(t.code, 0) << t.err;
  }
  static void TearDownTestSuite() { dir_.reset(); }

  static std::string model() { return dir_->file("model"); }
  static std::string train_data() { return dir_->file("train.jsonl"); }
  static std::string test_data() { return dir_->file("test.jsonl"); }
  static std::string file(const std::string& name) { return dir_->file(name); }

  // A CPU config: lr 3e-3, 1024 tokens per step in micro-batches of 256.
  static json config(const std::string& run, int64_t steps) {
    return json{{"run", {{"device", "cpu"}, {"output_dir", file(run)}, {"seed", 1}}},
                {"model", {{"path", model()}}},
                {"optimizer", {{"lr", 3e-3}}},
                {"train", {{"micro_batch_tokens", 256}}},
                {"data", {{"max_prompt_tokens", 0}}},
                {"sft",
                 {{"path", train_data()}, {"steps", steps}, {"batch_tokens", 1024}, {"eval_every", 10},
                  {"eval_fraction", 0.1}}}};
  }
  static std::string write_config(const std::string& name, const json& cfg) {
    write_json(file(name), cfg);
    return file(name);
  }

  static std::unique_ptr<TempDir> dir_;
};
std::unique_ptr<TempDir> CliSft::dir_;

std::vector<json> read_jsonl(const std::string& path) {
  std::vector<json> out;
  std::istringstream in(read_text(path));
  std::string line;
  while (std::getline(in, line))
    if (!line.empty()) out.push_back(json::parse(line));
  return out;
}

std::string final_dir(const std::string& run, int64_t step) {
  char name[32];
  std::snprintf(name, sizeof(name), "step-%06lld", static_cast<long long>(step));
  return run + "/checkpoints/" + name;
}

// Mean negative log-likelihood of the completion tokens of `examples` under the model in `dir`: each sequence on
// its own through the forward pass with plain next-token targets; rows r with loss[r + 1] summed in double.
double reference_nll(const std::string& dir, const std::vector<const SftExample*>& examples) {
  Context& ctx = Context::cpu();
  auto m = Model::load(dir, ModelOptions{}, ctx);
  TransformerOptions to;
  to.max_tokens = 512;
  Transformer tf(*m, to, ctx);
  OwnedTensor lp = OwnedTensor::make(DType::F32, Device::CPU, {512});
  double nll = 0;
  int64_t n = 0;
  for (const SftExample* ex : examples) {
    PackedBatch b;
    b.add_sequence(ex->ids);
    const int64_t T = b.num_tokens();
    const DeviceBatch db = tf.upload(b, ctx);
    tf.forward(lp.t.slice_rows(0, T), Tensor(), db, ctx);
    const float* p = lp.t.ptr<float>();
    for (int64_t r = 0; r + 1 < T; ++r)
      if (ex->loss[static_cast<size_t>(r + 1)]) {
        nll -= p[r];
        ++n;
      }
  }
  return nll / static_cast<double>(n);
}

}  // namespace

TEST_F(CliSft, HeldOutLossFallsAndMetricsAreComplete) {
  const std::string cfg = write_config("decrease.json", config("decrease", 40));
  const CmdResult r = run_rlcu("sft " + quote(cfg));
  ASSERT_EQ(r.code, 0) << r.err;
  const std::vector<json> m = read_jsonl(file("decrease") + "/metrics.jsonl");
  ASSERT_EQ(m.size(), 41u);
  std::map<int64_t, double> eval;
  for (size_t i = 0; i < m.size(); ++i) {
    ASSERT_EQ(m[i]["step"], static_cast<int64_t>(i));
    if (m[i].contains("eval_loss")) eval[static_cast<int64_t>(i)] = m[i]["eval_loss"].get<double>();
    if (i == 0) continue;
    for (const char* k : {"loss", "learning_rate", "grad_norm", "tokens_per_s/train", "epoch"})
      ASSERT_TRUE(m[i].contains(k) && m[i][k].is_number()) << k << " at step " << i;
    EXPECT_FALSE(m[i].contains("lr") || m[i].contains("tokens_per_s"));
    EXPECT_DOUBLE_EQ(m[i]["learning_rate"].get<double>(), 3e-3);
    EXPECT_TRUE(std::isfinite(m[i]["loss"].get<double>()));
  }
  ASSERT_EQ(eval.size(), 5u);  // steps 0, 10, 20, 30, 40
  for (int64_t s : {0, 10, 20, 30, 40}) ASSERT_TRUE(eval.count(s)) << s;
  // A random model starts near the uniform loss ln(320); training must at least halve the held-out loss.
  EXPECT_NEAR(eval[0], std::log(320.0), 0.1);
  EXPECT_LT(eval[40], 0.5 * eval[0]) << eval[0] << " -> " << eval[40];
  EXPECT_LT(eval[40], eval[20]);
  // 360 training examples served in order: the epoch counter grows past 1.
  EXPECT_GT(m.back()["epoch"].get<double>(), 1.0);

  // The final checkpoint is a model directory: `rlcu eval` and `rlcu train` take it as the model.
  const std::string fin = final_dir(file("decrease"), 40);
  const CmdResult e = run_rlcu("eval --model " + quote(fin) + " --data " + quote(test_data()) +
                               " --greedy --max-new-tokens 24 --output " + quote(file("eval.json")));
  ASSERT_EQ(e.code, 0) << e.err;
  const json ej = read_json(file("eval.json"));
  EXPECT_EQ(ej["prompts"], 24);
  const json train_cfg = {{"run", {{"device", "cpu"}, {"output_dir", file("rl")}}},
                          {"model", {{"path", fin}}},
                          {"data", {{"path", test_data()}}},
                          {"train", {{"steps", 1}, {"prompts_per_step", 2}, {"micro_batch_tokens", 2048}}},
                          {"rollout", {{"group_size", 2}, {"max_new_tokens", 16}}}};
  const CmdResult t = run_rlcu("train " + quote(write_config("rl.json", train_cfg)));
  ASSERT_EQ(t.code, 0) << t.err;
}

TEST_F(CliSft, LossesMatchAnIndependentForward) {
  json c = config("ref", 1);
  c["sft"]["eval_path"] = test_data();
  c["train"]["micro_batch_tokens"] = 128;  // a step spans several micro-batches
  c["sft"]["batch_tokens"] = 600;
  const CmdResult r = run_rlcu("sft " + quote(write_config("ref.json", c)));
  ASSERT_EQ(r.code, 0) << r.err;
  const std::vector<json> m = read_jsonl(file("ref") + "/metrics.jsonl");
  ASSERT_EQ(m.size(), 2u);

  const Tokenizer tok = Tokenizer::load(model());
  const PromptFormat f = make_prompt_format(tok);
  const int32_t eos = tok.eos_id();
  const std::vector<SftExample> ev = load_sft_examples(test_data(), DataConfig{}, "completion", f, eos, 128);
  const std::vector<SftExample> tr = load_sft_examples(train_data(), DataConfig{}, "completion", f, eos, 128);
  std::vector<const SftExample*> evp;
  for (const SftExample& e : ev) evp.push_back(&e);
  EXPECT_NEAR(m[0]["eval_loss"].get<double>(), reference_nll(model(), evp), 1e-5);

  std::vector<int64_t> len;
  for (const SftExample& e : tr) len.push_back(static_cast<int64_t>(e.ids.size()));
  const std::vector<SftStep> sched = sft_schedule(len, 1, true, 1, 1, 600);
  std::vector<const SftExample*> step1;
  int64_t tokens = 0, completion = 0;
  for (int64_t i : sched[0].examples) {
    step1.push_back(&tr[static_cast<size_t>(i)]);
    tokens += len[static_cast<size_t>(i)];
    completion += tr[static_cast<size_t>(i)].completion_tokens();
  }
  EXPECT_GT(step1.size(), 3u);
  EXPECT_EQ(m[1]["tokens"], tokens);
  EXPECT_EQ(m[1]["completion_tokens"], completion);
  EXPECT_NEAR(m[1]["loss"].get<double>(), reference_nll(model(), step1), 1e-5);
  // The step lowers the loss of its own batch (the gradient points downhill).
  EXPECT_LT(reference_nll(final_dir(file("ref"), 1), step1), m[1]["loss"].get<double>() - 0.05);
}

TEST_F(CliSft, ResumeAfterStopIsByteIdentical) {
  const std::string full = write_config("full.json", config("full", 12));
  const std::string part = write_config("part.json", config("part", 12));
  ASSERT_EQ(run_rlcu("sft " + quote(full)).code, 0);
  const CmdResult a = run_rlcu("sft " + quote(part) + " --stop-after 5");
  ASSERT_EQ(a.code, 0) << a.err;
  EXPECT_TRUE(fs::exists(final_dir(file("part"), 5) + "/model.safetensors"));
  EXPECT_FALSE(fs::exists(final_dir(file("part"), 12)));
  const CmdResult b = run_rlcu("sft --resume " + quote(file("part")));
  ASSERT_EQ(b.code, 0) << b.err;
  const std::string x = read_text(final_dir(file("full"), 12) + "/model.safetensors");
  const std::string y = read_text(final_dir(file("part"), 12) + "/model.safetensors");
  ASSERT_FALSE(x.empty());
  EXPECT_TRUE(x == y) << "resumed model differs";
  const std::vector<json> mx = read_jsonl(file("full") + "/metrics.jsonl");
  const std::vector<json> my = read_jsonl(file("part") + "/metrics.jsonl");
  ASSERT_EQ(mx.size(), 13u);
  ASSERT_EQ(my.size(), 13u);
  for (size_t i = 0; i < mx.size(); ++i) {
    EXPECT_EQ(my[i]["step"], mx[i]["step"]);
    for (const char* k : {"loss", "grad_norm", "eval_loss", "epoch"})
      if (mx[i].contains(k)) {
        EXPECT_EQ(my[i][k], mx[i][k]) << k << " at step " << i;
      }
  }
}

TEST_F(CliSft, ChatMessageRecordsTrain) {
  std::string text;
  for (int i = 0; i < 12; ++i)
    text += json{{"messages", json::array({{{"role", "user"}, {"content", std::to_string(i) + "+1="}},
                                          {{"role", "assistant"}, {"content", std::to_string(i + 1)}},
                                          {{"role", "user"}, {"content", "again"}},
                                          {{"role", "assistant"}, {"content", std::to_string(i + 1) + "!"}}})}}
                .dump() +
            "\n";
  write_text(file("chat.jsonl"), text);
  json c = config("chat", 3);
  c["sft"]["path"] = file("chat.jsonl");
  c["sft"]["batch_tokens"] = 200;
  const CmdResult r = run_rlcu("sft " + quote(write_config("chat.json", c)));
  ASSERT_EQ(r.code, 0) << r.err;
  const std::vector<json> m = read_jsonl(file("chat") + "/metrics.jsonl");
  ASSERT_EQ(m.size(), 4u);
  EXPECT_GT(m[1]["completion_tokens"].get<int64_t>(), 0);
}

TEST_F(CliSft, DataErrorsNameFileAndLine) {
  write_text(file("bad.jsonl"), "{\"prompt\": \"1+1=\", \"completion\": \"2\"}\n{\"prompt\": \"2+2=\"}\n");
  json c = config("bad", 2);
  c["sft"]["path"] = file("bad.jsonl");
  CmdResult r = run_rlcu("sft " + quote(write_config("bad.json", c)));
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find(file("bad.jsonl") + ":2:"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("\"completion\""), std::string::npos) << r.err;

  c["sft"]["path"] = file("nowhere.jsonl");
  r = run_rlcu("sft " + quote(write_config("bad2.json", c)));
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find(file("nowhere.jsonl") + ": cannot open"), std::string::npos) << r.err;

  c["sft"].erase("path");
  r = run_rlcu("sft " + quote(write_config("bad3.json", c)));
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("sft.path is not set"), std::string::npos) << r.err;

  r = run_rlcu("sft " + quote(write_config("bad4.json", c)) + " --set sft.epochs=0");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("sft.epochs"), std::string::npos) << r.err;

  r = run_rlcu("sft");
  EXPECT_EQ(r.code, 2) << r.err;
}

TEST_F(CliSft, RunDirectoryRefusedOverwrittenAndInputsChecked) {
  const std::string cfg = write_config("rundir.json", config("rundir", 2));
  const std::string dir = file("rundir");
  ASSERT_EQ(run_rlcu("sft " + quote(cfg)).code, 0);
  const std::string metrics = read_text(dir + "/metrics.jsonl");
  CmdResult r = run_rlcu("sft " + quote(cfg));
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_NE(r.err.find("already holds a run"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("rlcu sft --resume " + dir), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("--overwrite"), std::string::npos) << r.err;
  EXPECT_EQ(read_text(dir + "/metrics.jsonl"), metrics);
  r = run_rlcu("sft " + quote(cfg) + " --overwrite --set sft.steps=1");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_FALSE(fs::exists(final_dir(dir, 2)));
  EXPECT_TRUE(fs::exists(final_dir(dir, 1)));

  // The training data changed since the run started: a resume refuses it, naming the key and the file.
  const std::string data = file("rundir_data.jsonl");
  fs::copy_file(train_data(), data, fs::copy_options::overwrite_existing);
  json c = config("rundir_inputs", 3);
  c["sft"]["path"] = data;
  ASSERT_EQ(run_rlcu("sft " + quote(write_config("rundir_inputs.json", c)) + " --stop-after 1").code, 0);
  const std::string text = read_text(data);
  write_text(data, text + text.substr(0, text.find('\n') + 1));
  r = run_rlcu("sft --resume " + quote(file("rundir_inputs")));
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_NE(r.err.find("sft.path: " + data + " changed since the run started"), std::string::npos) << r.err;
  write_text(data, text);
  r = run_rlcu("sft --resume " + quote(file("rundir_inputs")));
  EXPECT_EQ(r.code, 0) << r.err;
}

TEST_F(CliSft, DryRunPrintsThePlanWithinFivePercentOfThePeak) {
  const std::string run = file("dry");
  json c = config("dry", 3);
  c["optimizer"]["name"] = "adamw_8bit";
  const std::string cfg = write_config("dry.json", c);
  CmdResult r = run_rlcu("sft " + quote(cfg) + " --dry-run");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_FALSE(std::filesystem::exists(run)) << "a dry run created " << run;
  for (const char* item : {"memory plan (cpu, per device)", "| policy weights (f32) |", "| optimizer state (adamw_8bit) |",
                           "| policy activations |", "| saved head softmax |", "| per-token rows |"})
    EXPECT_NE(r.out.find(item), std::string::npos) << item << "\n" << r.out;
  EXPECT_EQ(r.out.find("KV pool"), std::string::npos) << "sft has no rollout engine\n" << r.out;
  const size_t t = r.out.find("| **total** |");
  ASSERT_NE(t, std::string::npos) << r.out;
  const size_t b = r.out.find(" bytes |", t);
  const size_t a = r.out.rfind("| ", b);
  const long long plan = std::stoll(r.out.substr(a + 2, b - a - 2));
  r = run_rlcu("sft " + quote(cfg));
  ASSERT_EQ(r.code, 0) << r.err;
  const size_t at = r.err.find("memory: peak ");
  ASSERT_NE(at, std::string::npos) << r.err;
  const long long peak = std::stoll(r.err.substr(at + 13));
  EXPECT_NEAR(static_cast<double>(plan), static_cast<double>(peak), 0.05 * peak);
  r = run_rlcu("sft " + quote(write_config("nofit.json", config("nofit", 3))) + " --set run.memory_limit_gib=0.0001");
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_NE(r.err.find("the memory plan needs"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("optimizer.name=adamw_8bit -> "), std::string::npos) << r.err;
  if (std::filesystem::exists(file("nofit"))) {
    for (const auto& e : std::filesystem::directory_iterator(file("nofit"))) {
      EXPECT_EQ(e.path().filename(), "rlcu.lock") << e.path();
    }
  }
}
