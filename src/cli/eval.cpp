// `rlcu eval --model DIR --data FILE.jsonl [--reward NAME[=WEIGHT]]... [--set reward.KEY=VALUE | data.KEY=VALUE]... [--n K]
//   [--greedy] [--temperature T] [--max-new-tokens N] [--seed S] [--device cpu|cuda[:N]] [--output FILE.json]
//   [--chat-template NAME|FILE] [--samples-out FILE.jsonl] [--stop STR]... [--max-batch N] [--kv-fraction F]`
//
// Generates n completions per prompt with the paged-KV engine, scores them with the reward set and reports the
// metrics of include/rlcu/eval.h (mean reward, accuracy, pass@1, pass@k with k = n, mean length, per-component
// means). Data records: {"prompt": text | messages} or {"messages": [...]} plus "answer" (read with the data.* keys of
// `rlcu train`, given with --set data.KEY=VALUE: prompts rendered with the chat template and its generation prompt; every record is checked, with
// file:line in messages, before the model loads). Rewards: default math_answer with weight 1; each --reward
// replaces that default set (NAME one of reward_component_names(), WEIGHT default 1); component parameters come
// from --set reward.KEY=VALUE (the config keys). Output: a table on stdout; --output writes the metrics as one JSON
// object, --samples-out one JSON line per completion (prompt order, then sample order):
//   {"index", "sample", "prompt", "answer", "completion", "reward", "correct", "length", "finish_reason",
//    "rewards/<component>": value...}
// Files are written to a temporary name and renamed, so an error never leaves a partial file.
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <memory>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "output.h"
#include "rlcu/config.h"
#include "rlcu/context.h"
#include "rlcu/data.h"
#include "rlcu/engine.h"
#include "rlcu/eval.h"
#include "rlcu/eval_run.h"
#include "rlcu/model.h"
#include "rlcu/reward.h"
#include "rlcu/token_bytes.h"
#include "rlcu/tokenizer.h"
#include "rlcu/parallel.h"

namespace rlcu::cli {

namespace {

using nlohmann::ordered_json;

struct EvalArgs {
  std::string model, data, output, samples_out, device = "auto", chat_template = "auto";
  int threads = 0;  // threads of the CPU kernels; 0 = all cores
  std::vector<std::string> rewards, sets, stop;
  int n = 1;
  bool greedy = false;
  float temperature = 1.0f;
  int64_t max_new_tokens = 256;
  uint64_t seed = 0;
  int64_t max_batch = 256;
  double kv_fraction = 0.9;
};

// The reward section from --reward and --set (validated through the config schema).
RewardSection reward_section(const EvalArgs& a) {
  std::vector<std::string> ov;
  if (!a.rewards.empty()) {
    for (const std::string& name : reward_component_names()) ov.push_back("reward." + name + "=0");
    for (const std::string& r : a.rewards) {
      const size_t eq = r.find('=');
      const std::string name = r.substr(0, eq);
      const std::vector<std::string>& names = reward_component_names();
      if (std::find(names.begin(), names.end(), name) == names.end()) {
        std::string all;
        for (const std::string& n : names) all += (all.empty() ? "" : ", ") + n;
        throw UsageError(fmt::format("--reward {}: unknown reward `{}` (expected one of {})", r, name, all));
      }
      const std::string weight = eq == std::string::npos ? std::string("1") : r.substr(eq + 1);
      char* end = nullptr;
      const double w = std::strtod(weight.c_str(), &end);
      if (weight.empty() || end != weight.c_str() + weight.size() || !std::isfinite(w))
        throw UsageError(fmt::format("--reward {}: the weight `{}` is not a number (expected NAME or NAME=WEIGHT)", r,
                                     weight));
      ov.push_back("reward." + name + "=" + weight);
    }
  }
  for (const std::string& s : a.sets) {
    if (s.rfind("data.", 0) == 0) continue;  // data_config
    if (s.rfind("reward.", 0) != 0)
      throw UsageError(fmt::format("--set {}: only reward.* and data.* keys apply to eval, e.g. --set "
                                   "reward.format_tags=<a>,</a> or --set data.prompt_field=question",
                                   s));
    ov.push_back(s);
  }
  return parse_config("{}", "eval", ov).reward;
}

// How --data is read: the data.* keys of `rlcu train` from --set (data.path is --data; no shuffling, no length
// limit).
DataConfig data_config(const EvalArgs& a) {
  std::vector<std::string> ov;
  for (const std::string& s : a.sets) {
    if (s.rfind("data.", 0) != 0) continue;
    const std::string key = s.substr(0, s.find('='));
    if (key == "data.path" || key == "data.shuffle" || key == "data.max_prompt_tokens")
      throw UsageError(fmt::format("--set {}: {} does not apply to eval (the prompts are --data, in file order, of any "
                                   "length)",
                                   s, key));
    ov.push_back(s);
  }
  DataConfig dc = parse_config("{}", "eval", ov).data;
  dc.path = a.data;
  dc.max_prompt_tokens = 0;
  dc.shuffle = false;
  return dc;
}

std::string pct(double v) { return fmt::format("{:.2f}%", 100.0 * v); }

int run_eval(const EvalArgs& a) {
  if (a.n < 1) throw UsageError("--n must be >= 1");
  if (a.max_new_tokens < 1) throw UsageError("--max-new-tokens must be >= 1");
  if (!(a.temperature > 0)) throw UsageError("--temperature must be > 0");
  int device_index = 0;
  const Device device = parse_device(a.device, "--device", &device_index);
  set_cpu_threads(a.threads);
  spdlog::info("{}", device_note(a.device, device, device_index));
  const RewardSection rs = reward_section(a);
  validate_reward_section(rs);

  // ---- prompts (checked before the model loads) ------------------------------------------------------------------
  const Tokenizer tok = Tokenizer::load(a.model);
  const PromptFormat format = make_prompt_format(tok, a.chat_template);
  const ModelConfig mc = ModelConfig::load(a.model);
  const DataConfig dc = data_config(a);
  const PromptDataset data = PromptDataset::load(dc, format);
  int64_t longest = 0;
  for (int64_t i = 0; i < data.size(); ++i) {
    for (int32_t id : data[i].ids)
      if (id >= mc.vocab_size)
        throw Error(fmt::format("{}:{}: token id {} is outside the model's vocabulary of {}", a.data, data[i].line, id,
                                mc.vocab_size));
    longest = std::max<int64_t>(longest, static_cast<int64_t>(data[i].ids.size()));
  }
  Output out(a.output);
  std::unique_ptr<Output> samples_out = a.samples_out.empty() ? nullptr : std::make_unique<Output>(a.samples_out);

  // ---- generate --------------------------------------------------------------------------------------------------
  std::unique_ptr<Context> cuda_ctx;
  if (device == Device::CUDA) cuda_ctx = Context::cuda(device_index);
  Context& ctx = cuda_ctx ? *cuda_ctx : Context::cpu();
  const auto model = Model::load(a.model, ModelOptions{}, ctx);
  engine::EngineOptions eo;
  eo.max_batch = std::max<int64_t>(a.max_batch, a.n);
  eo.kv_fraction = a.kv_fraction;
  eo.prefill_tokens = std::max<int64_t>(8192, longest);
  eo.max_model_len = longest + a.max_new_tokens;
  if (mc.max_position_embeddings > 0) eo.max_model_len = std::min(eo.max_model_len, mc.max_position_embeddings);
  engine::Engine eng(*model, eo, ctx);
  engine::SamplingOptions so;
  so.sample.seed = a.seed;
  so.sample.temperature = a.temperature;
  so.sample.greedy = a.greedy;
  so.max_new_tokens = a.max_new_tokens;
  so.eos_ids = engine::stop_token_ids(mc, &tok);
  const TokenBytesTable bytes = TokenBytesTable::build(tok, mc.vocab_size);
  so.token_bytes = &bytes;
  so.stop_strings = a.stop;
  std::vector<const PromptSample*> prompts;
  for (int64_t i = 0; i < data.size(); ++i) prompts.push_back(&data[i]);
  RewardSet rewards(rs, &tok, ctx);
  const EvalRun run = run_evaluation(eng, prompts, a.n, so, rewards, tok);
  const EvalSummary& s = run.summary;
  const std::string& judge = run.judge;
  const double gen_s = run.generate_s;

  // ---- outputs ---------------------------------------------------------------------------------------------------
  if (samples_out) {
    for (size_t i = 0; i < run.completions.size(); ++i)
      samples_out->write(eval_sample_json(run, prompts, i).dump(-1, ' ', false,
                                                                nlohmann::json::error_handler_t::replace) +
                         "\n");
    samples_out->commit();
  }
  ordered_json j;
  j["model"] = a.model;
  j["data"] = a.data;
  j["prompts"] = s.prompts;
  j["n"] = s.n;
  j["completions"] = s.completions;
  j["mean_reward"] = s.mean_reward;
  j["accuracy"] = s.accuracy;
  j["correct_by"] = judge.empty() ? "reward>=1" : judge;
  j["pass@1"] = s.pass_at_1;
  j["k"] = s.k;
  j["pass@k"] = s.pass_at_k;
  j["mean_length"] = s.mean_length;
  ordered_json comp = ordered_json::object();
  for (const auto& [name, v] : s.component_means) comp[name] = v;
  j["rewards"] = comp;
  j["sampling"] = {{"greedy", a.greedy},       {"temperature", a.temperature}, {"seed", a.seed},
                   {"max_new_tokens", a.max_new_tokens}, {"chat_template", format.chat.name()}};
  j["generate_s"] = gen_s;
  j["generated_tokens"] = eng.stats().generated_tokens;
  if (!a.output.empty()) {
    out.write(j.dump(2) + "\n");
    out.commit();
  }
  std::string table;
  table += fmt::format("{:<16} {}\n", "prompts", s.prompts);
  table += fmt::format("{:<16} {} ({} per prompt)\n", "completions", s.completions, s.n);
  table += fmt::format("{:<16} {:.4f}\n", "mean_reward", s.mean_reward);
  table += fmt::format("{:<16} {} (correct by {})\n", "accuracy", pct(s.accuracy),
                       judge.empty() ? "reward >= 1" : judge);
  table += fmt::format("{:<16} {}\n", "pass@1", pct(s.pass_at_1));
  table += fmt::format("{:<16} {}\n", fmt::format("pass@{}", s.k), pct(s.pass_at_k));
  table += fmt::format("{:<16} {:.1f} tokens\n", "mean_length", s.mean_length);
  for (const auto& [name, v] : s.component_means) table += fmt::format("{:<16} {:.4f}\n", "rewards/" + name, v);
  OutputFile::write_stdout(table);
  OutputFile::check_stdout();
  spdlog::info("generated {} tokens in {:.2f} s", eng.stats().generated_tokens, gen_s);
  return 0;
}

}  // namespace

void add_eval_command(CLI::App& app, Action& action) {
  CLI::App* cmd = app.add_subcommand("eval", "Generate for a prompt set and report reward, accuracy and pass@k");
  auto a = std::make_shared<EvalArgs>();
  cmd->add_option("--model", a->model, "Hugging Face model directory (with tokenizer.json)")->required();
  cmd->add_option("--data", a->data, "JSONL: {\"prompt\" or \"messages\", \"answer\"} per line")->required();
  cmd->add_option("--reward", a->rewards,
                  "Reward component NAME[=WEIGHT] (repeatable; replaces the default math_answer=1)");
  cmd->add_option("--set", a->sets,
                  "A reward.* or data.* config key: --set reward.format_tags=<a>,</a>, --set data.prompt_field=question, "
                  "data.answer_field, data.messages_field, data.prompt_template, data.system_prompt, data.tools_field, "
                  "data.skip_malformed, data.max_samples (repeatable)");
  cmd->add_option("--n", a->n, "Samples per prompt (pass@k uses k = n)")->capture_default_str();
  cmd->add_flag("--greedy", a->greedy, "Pick the most likely token");
  cmd->add_option("--temperature", a->temperature, "Sampling temperature (> 0)")->capture_default_str();
  cmd->add_option("--max-new-tokens", a->max_new_tokens, "Tokens generated at most per sample")
      ->capture_default_str();
  cmd->add_option("--seed", a->seed, "Sampling seed")->capture_default_str();
  cmd->add_option("--device", a->device, "auto, cpu, cuda or cuda:N")->capture_default_str();
  cmd->add_option("--threads", a->threads, "Threads of the CPU kernels; 0 = all cores")
      ->capture_default_str()
      ->check(int_range(0, 4096));
  cmd->add_option("--output", a->output, "Write the metrics as JSON to this file");
  cmd->add_option("--chat-template", a->chat_template,
                  "auto (the model's template), none, chatml, qwen2, qwen2.5, qwen3, llama3, llama3.1, or a Jinja file")
      ->capture_default_str();
  cmd->add_option("--samples-out", a->samples_out, "Write every completion with its rewards (JSONL)");
  cmd->add_option("--stop", a->stop, "Stop string (repeatable)");
  cmd->add_option("--max-batch", a->max_batch, "Sequences decoded together at most")
      ->capture_default_str()
      ->check(int_range(1, 4096));
  cmd->add_option("--kv-fraction", a->kv_fraction, "CUDA: share of free memory for the KV cache")
      ->capture_default_str()
      ->check(float_range(0.01, 1.0));
  cmd->callback([&action, a] { action = [a] { return run_eval(*a); }; });
}

}  // namespace rlcu::cli
