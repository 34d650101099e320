// `rlcu train` with LoRA (lora.*, model.adapter) and `rlcu merge-lora` end to end on the CPU:
//   - configs/smoke_lora_cpu.json (shortened) learns, and its checkpoints are PEFT adapters (adapter_config.json,
//     adapter_model.safetensors with PEFT names, no model.safetensors) that merge-lora turns into a model directory
//     `rlcu score` loads;
//   - resume is bit-exact (adapter, trainer state, metrics, samples) with a reference model (kl_coef 0.04, which
//     scores with the frozen base), for adamw and adamw_8bit;
//   - model.adapter starts a run from an adapter (with a learning rate too small to move it, the saved adapter is the
//     input's, bit for bit); a rank other than the adapter's is an error naming lora.rank and the file;
//   - --dry-run prints the LoRA items of the memory plan; bad lora.* values and LoRA in `rlcu sft` are errors.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "cli_util.h"

using json = nlohmann::json;
using namespace rlcu::test;
namespace fs = std::filesystem;

namespace {

const std::string kFixtures = RLCU_TEST_FIXTURES;
const std::string kConfig = std::string(RLCU_SOURCE_DIR) + "/configs/smoke_lora_cpu.json";

json lora_config(const std::string& out_dir) {
  std::ifstream in(kConfig);
  json cfg = json::parse(in);
  cfg["model"]["path"] = kFixtures + "/models/byte-tiny-lora";
  cfg["data"]["path"] = kFixtures + "/data/linear_d1_train.jsonl";
  cfg["run"]["output_dir"] = out_dir;
  return cfg;
}

std::string fresh_dir(const std::string& name) {
  const std::string d = temp_dir() + "/" + name;
  fs::remove_all(d);
  return d;
}

std::string write_config(const json& cfg, const std::string& name) {
  const std::string p = temp_dir() + "/" + name + ".json";
  write_file(p, cfg.dump(2));
  return p;
}

std::vector<json> read_jsonl(const std::string& path) {
  std::vector<json> out;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line))
    if (!line.empty()) out.push_back(json::parse(line));
  return out;
}

double mean(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return v.empty() ? 0.0 : s / static_cast<double>(v.size());
}

CliResult train(const std::string& args) { return run_cli("train " + args); }

}  // namespace

// The committed config learns (mean reward of the last tenth of the steps over the first tenth's), and its final
// checkpoint is a PEFT adapter that merge-lora merges into a loadable model directory.
TEST(CliLora, SmokeRewardRisesAndCheckpointsArePeftAdapters) {
  const std::string dir = fresh_dir("lora_smoke");
  json cfg = lora_config(dir);
  ASSERT_GT(cfg["lora"]["rank"].get<int>(), 0);
  const int steps = cfg["train"]["steps"].get<int>();
  const CliResult r = train(write_config(cfg, "lora_smoke"));
  ASSERT_EQ(r.code, 0) << r.err;
  const std::vector<json> m = read_jsonl(dir + "/metrics.jsonl");
  ASSERT_EQ(m.size(), static_cast<size_t>(steps));
  const size_t n = m.size() / 10;
  std::vector<double> first, last;
  for (size_t i = 0; i < n; ++i) {
    first.push_back(m[i]["reward"].get<double>());
    last.push_back(m[m.size() - n + i]["reward"].get<double>());
  }
  EXPECT_GE(mean(last) - mean(first), 0.2) << "first " << mean(first) << ", last " << mean(last);

  char name[32];
  std::snprintf(name, sizeof name, "step-%06d", steps);
  const std::string ck = dir + "/checkpoints/" + name;
  EXPECT_FALSE(fs::exists(ck + "/model.safetensors"));
  const json ac = json::parse(read_file(ck + "/adapter_config.json"));
  EXPECT_EQ(ac["peft_type"], "LORA");
  EXPECT_EQ(ac["r"], cfg["lora"]["rank"]);
  EXPECT_EQ(ac["lora_alpha"].get<double>(), cfg["lora"]["alpha"].get<double>());
  EXPECT_EQ(ac["task_type"], "CAUSAL_LM");
  EXPECT_EQ(ac["target_modules"].size(), 7u);
  const std::string st = read_file(ck + "/adapter_model.safetensors");
  for (const char* t : {"\"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight\"",
                        "\"base_model.model.model.layers.1.mlp.down_proj.lora_B.weight\""})
    EXPECT_NE(st.find(t), std::string::npos) << t;
  EXPECT_NE(read_file(ck + "/trainer_state.safetensors").find("\"master.base_model.model.model.layers.0.mlp.up_proj."
                                                               "lora_B.weight\""),
            std::string::npos);

  const std::string merged = fresh_dir("lora_smoke_merged");
  CliResult mr = run_cli("merge-lora --adapter " + ck + " --out " + merged);
  ASSERT_EQ(mr.code, 0) << mr.err;
  EXPECT_TRUE(fs::is_regular_file(merged + "/model.safetensors"));
  EXPECT_TRUE(fs::is_regular_file(merged + "/tokenizer.json"));
  write_file(temp_dir() + "/lora_score.jsonl", "{\"ids\": [1, 2, 3, 4]}\n");
  mr = run_cli("score --model " + merged + " --input " + temp_dir() + "/lora_score.jsonl --device cpu");
  EXPECT_EQ(mr.code, 0) << mr.err;
  EXPECT_EQ(run_cli("merge-lora --adapter " + ck).code, 2);  // --out is required
  mr = run_cli("merge-lora --adapter " + dir + " --out " + fresh_dir("lora_bad_merge"));
  EXPECT_EQ(mr.code, 1);
  EXPECT_NE(mr.err.find(dir + "/adapter_config.json"), std::string::npos) << mr.err;
}

namespace {

// 4 steps uninterrupted vs 2 + resume, with the frozen base as the KL reference.
void check_lora_resume(const std::string& optim) {
  const std::string full = fresh_dir("lora_full_" + optim), split = fresh_dir("lora_split_" + optim);
  json a = lora_config(full), b = lora_config(split);
  for (json* c : {&a, &b}) {
    (*c)["train"]["steps"] = 4;
    (*c)["train"]["prompts_per_step"] = 4;
    (*c)["rollout"]["group_size"] = 4;
    (*c)["algorithm"]["kl_coef"] = 0.04;
    (*c)["optimizer"]["name"] = optim;
  }
  b["run"]["output_dir"] = split;
  ASSERT_EQ(train(write_config(a, "lora_full_" + optim)).code, 0);
  CliResult r = train(write_config(b, "lora_split_" + optim) + " --stop-after 2");
  ASSERT_EQ(r.code, 0) << r.err;
  r = train("--resume " + split);
  ASSERT_EQ(r.code, 0) << r.err;
  const std::string ca = full + "/checkpoints/step-000004", cb = split + "/checkpoints/step-000004";
  const std::string aa = read_file(ca + "/adapter_model.safetensors");
  ASSERT_FALSE(aa.empty());
  EXPECT_TRUE(aa == read_file(cb + "/adapter_model.safetensors")) << optim << ": resumed adapter differs";
  EXPECT_TRUE(read_file(ca + "/trainer_state.safetensors") == read_file(cb + "/trainer_state.safetensors"));
  EXPECT_NE(aa, read_file(split + "/checkpoints/step-000002/adapter_model.safetensors"));  // it trained
  const std::vector<json> ma = read_jsonl(full + "/metrics.jsonl"), mb = read_jsonl(split + "/metrics.jsonl");
  ASSERT_EQ(ma.size(), 4u);
  ASSERT_EQ(mb.size(), 4u);
  for (size_t i = 0; i < 4; ++i)
    for (const char* k : {"reward", "entropy", "grad_norm", "loss", "kl"}) {
      ASSERT_TRUE(ma[i].contains(k)) << k;
      EXPECT_EQ(ma[i][k], mb[i][k]) << optim << " step " << i + 1 << " " << k;
    }
  // The reference is the base: the KL to it is 0 before the first update (the same weights, the same forward) and
  // positive after.
  EXPECT_LT(std::abs(ma[0]["kl"].get<double>()), 1e-7);
  EXPECT_GT(ma[3]["kl"].get<double>(), 1e-6);
  const std::vector<json> sa = read_jsonl(full + "/samples.jsonl"), sb = read_jsonl(split + "/samples.jsonl");
  ASSERT_EQ(sa.size(), sb.size());
  for (size_t i = 0; i < sa.size(); ++i) EXPECT_EQ(sa[i]["completion"], sb[i]["completion"]) << i;
}

}  // namespace

TEST(CliLora, ResumeIsBitExact) { check_lora_resume("adamw"); }
TEST(CliLora, ResumeIsBitExact8bit) { check_lora_resume("adamw_8bit"); }

// model.adapter: a run starts from an existing adapter (its r, lora_alpha and target_modules when lora.rank is 0).
TEST(CliLora, ModelAdapterStartsFromAnAdapter) {
  const std::string src = fresh_dir("lora_src");
  json cfg = lora_config(src);
  cfg["train"]["steps"] = 2;
  cfg["lora"]["rank"] = 4;
  cfg["lora"]["alpha"] = 8.0;
  cfg["lora"]["targets"] = "q_proj,v_proj,down_proj";
  ASSERT_EQ(train(write_config(cfg, "lora_src")).code, 0);
  const std::string adapter = src + "/checkpoints/step-000002";

  const std::string dst = fresh_dir("lora_dst");
  json c2 = lora_config(dst);
  c2["train"]["steps"] = 1;
  c2["lora"]["rank"] = 0;
  c2["model"]["adapter"] = adapter;
  c2["optimizer"]["lr"] = 1e-30;  // too small to change an f32 weight: the saved adapter must be the input's
  c2["optimizer"]["weight_decay"] = 0.0;
  CliResult r = train(write_config(c2, "lora_dst"));
  ASSERT_EQ(r.code, 0) << r.err;
  const json ac = json::parse(read_file(dst + "/checkpoints/step-000001/adapter_config.json"));
  EXPECT_EQ(ac["r"], 4);
  EXPECT_EQ(ac["target_modules"], json({"q_proj", "v_proj", "down_proj"}));
  EXPECT_TRUE(read_file(dst + "/checkpoints/step-000001/adapter_model.safetensors") ==
              read_file(adapter + "/adapter_model.safetensors"));

  c2["lora"]["rank"] = 8;
  r = train(write_config(c2, "lora_dst_rank") + " --overwrite");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("lora.rank = 8"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find(adapter + "/adapter_config.json"), std::string::npos) << r.err;
}

TEST(CliLora, DryRunPlanAndConfigErrors) {
  json cfg = lora_config(fresh_dir("lora_dry"));
  const std::string path = write_config(cfg, "lora_dry");
  CliResult r = train(path + " --dry-run");
  ASSERT_EQ(r.code, 0) << r.err;
  for (const char* item : {"| LoRA effective weights (f32) |", "| LoRA adapters |", "| LoRA backward scratch |",
                           "the frozen base (no masters, moments or gradients)", "of the adapters"})
    EXPECT_NE(r.out.find(item), std::string::npos) << item << "\n" << r.out;
  EXPECT_EQ(r.out.find("| policy gradients (f32) |"), std::string::npos) << r.out;
  r = train(path + " --dry-run --set lora.rank=0");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("| policy gradients (f32) |"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("LoRA"), std::string::npos) << r.out;

  r = train(path + " --dry-run --set lora.targets=q_proj,mlp");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("lora.targets"), std::string::npos) << r.err;
  r = train(path + " --dry-run --set lora.rank=-1");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("lora.rank"), std::string::npos) << r.err;
  r = train(path + " --dry-run --set lora.alpha=0");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("lora.alpha"), std::string::npos) << r.err;
  r = train(path + " --dry-run --set model.adapter=" + temp_dir() + "/no_such_adapter");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("no_such_adapter/adapter_config.json"), std::string::npos) << r.err;
}
