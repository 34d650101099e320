// `rlcu generate --model DIR --input FILE.jsonl [--output FILE] [--n N] [--max-new-tokens N] [--greedy]
//   [--temperature T] [--top-p P] [--top-k K] [--min-p M] [--seed S] [--ignore-eos] [--stop STR]...
//   [--device cpu|cuda[:N]] [--max-batch N] [--kv-fraction F] [--chat-template NAME|FILE]`
//
// Input lines (non-blank): {"ids": [token ids]} (used as is), {"prompt": "text"} (encoded as raw text, with the
// tokenizer's own special tokens such as Llama's BOS) or {"messages": [{"role", "content"}, ...]} (rendered with the
// chat template — the model's own unless --chat-template picks another — and the generation prompt; a "tools" list
// goes to the template). Text needs a tokenizer.json in the model directory.
// Output: one line per completion, in input order and sample order:
//   {"index": input line's prompt index, "sample": j, "ids": [...], "logprobs": [...], "finish_reason":
//    "eos" | "stop" | "length", "text": "..." (when a tokenizer is present)}
// Every input line is read and checked (file:line in every message) before the model loads.
#include <spdlog/spdlog.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>

#include "commands.h"
#include "output.h"
#include "rlcu/chat.h"
#include "rlcu/context.h"
#include "rlcu/data.h"
#include "rlcu/engine.h"
#include "rlcu/input_file.h"
#include "rlcu/json_error.h"
#include "rlcu/model.h"
#include "rlcu/token_bytes.h"
#include "rlcu/tokenizer.h"
#include "rlcu/parallel.h"

namespace rlcu::cli {

namespace {

using nlohmann::json;

struct GenerateArgs {
  std::string model, input, output, device = "auto", chat_template = "auto";
  int threads = 0;  // threads of the CPU kernels; 0 = all cores
  int n = 1;
  int64_t max_new_tokens = 256;
  bool greedy = false, ignore_eos = false;
  float temperature = 1.0f, top_p = 1.0f, min_p = 0.0f;
  int top_k = 0;
  uint64_t seed = 0;
  std::vector<std::string> stop;
  int64_t max_batch = 256;
  double kv_fraction = 0.9;
};

struct InputLine {
  int64_t lineno = 0;
  std::vector<int32_t> ids;
};

// `format` gives the chat format on first use (a model without a template is only an error for "messages" lines).
std::vector<InputLine> read_inputs(const std::string& path, const ModelConfig& cfg, const Tokenizer* tok,
                                   const std::function<const PromptFormat&()>& format) {
  require_not_directory(path, "a JSONL file (--input)");
  std::ifstream in(path);
  if (!in) throw Error(fmt::format("{}: cannot open: {}", path, std::strerror(errno)));
  std::vector<InputLine> out;
  std::string line;
  int64_t lineno = 0;
  while (std::getline(in, line)) {
    ++lineno;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = fmt::format("{}:{}", path, lineno);
    nlohmann::ordered_json j;
    try {
      j = nlohmann::ordered_json::parse(line);
    } catch (const nlohmann::ordered_json::exception& e) {
      throw Error(json_line_error(path, lineno, e));
    }
    if (!j.is_object())
      throw Error(fmt::format("{}: expected an object with \"ids\", \"prompt\" or \"messages\"", where));
    InputLine il;
    il.lineno = lineno;
    try {
      if (j.contains("ids")) {
        const nlohmann::ordered_json& ids = j["ids"];
        if (!ids.is_array() || ids.empty()) throw Error("`ids` must be a non-empty list of token ids");
        for (size_t i = 0; i < ids.size(); ++i) {
          if (!ids[i].is_number_integer() || ids[i].get<int64_t>() < 0 || ids[i].get<int64_t>() >= cfg.vocab_size)
            throw Error(fmt::format("ids[{}] = {} is not a token id in [0, {})", i, ids[i].dump(), cfg.vocab_size));
          il.ids.push_back(static_cast<int32_t>(ids[i].get<int64_t>()));
        }
      } else if (j.contains("prompt") || j.contains("messages")) {
        if (!tok) throw Error("text input needs a tokenizer.json in the model directory (or give \"ids\")");
        if (j.contains("messages")) {
          DataConfig dc;
          dc.prompt_field.clear();
          dc.messages_field = "messages";
          std::string text;
          build_prompt(text, il.ids, record_messages(j, dc), format(), record_tools(j, dc));
        } else {
          if (!j["prompt"].is_string()) throw Error("\"prompt\" must be a string");
          EncodeOptions eo;
          eo.add_special = true;
          il.ids = tok->encode(j["prompt"].get<std::string>(), eo);
        }
        if (il.ids.empty()) throw Error("the prompt encodes to no tokens");
        for (int32_t id : il.ids)
          if (id >= cfg.vocab_size)
            throw Error(fmt::format("token id {} is outside the model's vocabulary of {}", id, cfg.vocab_size));
      } else {
        throw Error("expected \"ids\", \"prompt\" or \"messages\"");
      }
    } catch (const Error& e) {
      throw Error(fmt::format("{}: {}", where, e.what()));
    }
    out.push_back(std::move(il));
  }
  if (in.bad()) throw Error(fmt::format("{}: read error", path));
  if (out.empty()) throw Error(fmt::format("{}: no input lines", path));
  return out;
}

std::string format_completion(const engine::Completion& c, const Tokenizer* tok) {
  json j;
  j["index"] = c.request;
  j["sample"] = c.sample;
  j["ids"] = c.ids;
  json lps = json::array();
  for (float v : c.logprobs) lps.push_back(std::isfinite(v) ? json(std::round(v * 1e6) / 1e6) : json(nullptr));
  j["logprobs"] = std::move(lps);
  j["finish_reason"] = engine::finish_reason_name(c.finish);
  if (tok) j["text"] = tok->decode(c.ids);
  return j.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
}

int run_generate(const GenerateArgs& a) {
  if (a.n < 1) throw UsageError("--n must be >= 1");
  if (a.max_new_tokens < 1) throw UsageError("--max-new-tokens must be >= 1");
  if (!(a.temperature > 0)) throw UsageError("--temperature must be > 0");
  if (!(a.top_p > 0 && a.top_p <= 1)) throw UsageError("--top-p must be in (0, 1]");
  if (!(a.min_p >= 0 && a.min_p <= 1)) throw UsageError("--min-p must be in [0, 1]");
  if (a.top_k < 0) throw UsageError("--top-k must be >= 0");
  int device_index = 0;
  const Device device = parse_device(a.device, "--device", &device_index);
  set_cpu_threads(a.threads);
  spdlog::info("{}", device_note(a.device, device, device_index));

  const ModelConfig cfg = ModelConfig::load(a.model);
  std::optional<Tokenizer> tok;
  std::optional<PromptFormat> format;
  if (std::filesystem::exists(std::filesystem::path(a.model) / "tokenizer.json")) tok = Tokenizer::load(a.model);
  if (!a.stop.empty() && !tok) throw UsageError("--stop needs a tokenizer.json in the model directory");
  auto get_format = [&]() -> const PromptFormat& {
    if (!format) format = make_prompt_format(*tok, a.chat_template);
    return *format;
  };
  if (tok && a.chat_template != "auto") get_format();  // an explicit choice is checked before the inputs
  const std::vector<InputLine> inputs = read_inputs(a.input, cfg, tok ? &*tok : nullptr, get_format);
  Output out(a.output);

  std::unique_ptr<Context> cuda_ctx;
  if (device == Device::CUDA) cuda_ctx = Context::cuda(device_index);
  Context& ctx = cuda_ctx ? *cuda_ctx : Context::cpu();
  const auto model = Model::load(a.model, ModelOptions{}, ctx);

  std::vector<engine::Request> reqs;
  int64_t longest = 0;
  for (const InputLine& il : inputs) {
    reqs.push_back({il.ids, a.n});
    longest = std::max<int64_t>(longest, static_cast<int64_t>(il.ids.size()));
  }
  engine::EngineOptions eo;
  eo.max_batch = std::max<int64_t>(a.max_batch, a.n);
  eo.kv_fraction = a.kv_fraction;
  eo.prefill_tokens = std::max<int64_t>(8192, longest);
  eo.max_model_len = longest + a.max_new_tokens;
  if (cfg.max_position_embeddings > 0) eo.max_model_len = std::min(eo.max_model_len, cfg.max_position_embeddings);
  engine::Engine eng(*model, eo, ctx);

  engine::SamplingOptions so;
  so.sample.seed = a.seed;
  so.sample.temperature = a.temperature;
  so.sample.top_k = a.top_k;
  so.sample.top_p = a.top_p;
  so.sample.min_p = a.min_p;
  so.sample.greedy = a.greedy;
  so.max_new_tokens = a.max_new_tokens;
  so.ignore_eos = a.ignore_eos;
  so.eos_ids = engine::stop_token_ids(cfg, tok ? &*tok : nullptr);
  TokenBytesTable bytes;
  if (tok) {
    bytes = TokenBytesTable::build(*tok, cfg.vocab_size);
    so.token_bytes = &bytes;
  }
  so.stop_strings = a.stop;

  const auto completions = eng.generate(reqs, so);
  for (const auto& c : completions) out.write(format_completion(c, tok ? &*tok : nullptr));
  out.commit();
  const engine::EngineStats& st = eng.stats();
  spdlog::info("generated {} tokens for {} sequences in {:.2f} s ({:.0f} tokens/s; {} decode steps, {} preemptions)",
               st.generated_tokens, st.sequences, st.total_seconds,
               st.total_seconds > 0 ? st.generated_tokens / st.total_seconds : 0.0, st.decode_steps, st.preemptions);
  return 0;
}

}  // namespace

void add_generate_command(CLI::App& app, Action& action) {
  CLI::App* cmd = app.add_subcommand("generate", "Sample completions for prompts with the paged-KV engine");
  auto a = std::make_shared<GenerateArgs>();
  cmd->add_option("--model", a->model, "Hugging Face model directory")->required();
  cmd->add_option("--input", a->input, "JSONL: {\"ids\": [...]}, {\"prompt\": text} or {\"messages\": [...]} per line")
      ->required();
  cmd->add_option("--output", a->output, "JSONL output, one completion per line (default: stdout)");
  cmd->add_option("--n", a->n, "Samples per prompt")->capture_default_str();
  cmd->add_option("--max-new-tokens", a->max_new_tokens, "Tokens generated at most per sample")
      ->capture_default_str();
  cmd->add_flag("--greedy", a->greedy, "Pick the most likely token (temperature still scales the log-probs)");
  cmd->add_option("--temperature", a->temperature, "Sampling temperature (> 0)")->capture_default_str();
  cmd->add_option("--top-p", a->top_p, "Nucleus sampling mass in (0, 1]; 1 = off")->capture_default_str();
  cmd->add_option("--top-k", a->top_k, "Keep the k most likely tokens; 0 = off")->capture_default_str();
  cmd->add_option("--min-p", a->min_p, "Keep tokens with p >= min_p * max p; 0 = off")->capture_default_str();
  cmd->add_option("--seed", a->seed, "Sampling seed")->capture_default_str();
  cmd->add_flag("--ignore-eos", a->ignore_eos, "Do not stop at EOS tokens");
  cmd->add_option("--stop", a->stop, "Stop string (repeatable); the completion keeps the token that completes it");
  cmd->add_option("--device", a->device, "auto, cpu, cuda or cuda:N")->capture_default_str();
  cmd->add_option("--threads", a->threads, "Threads of the CPU kernels; 0 = all cores")
      ->capture_default_str()
      ->check(int_range(0, 4096));
  cmd->add_option("--max-batch", a->max_batch, "Sequences decoded together at most")
      ->capture_default_str()
      ->check(int_range(1, 4096));
  cmd->add_option("--kv-fraction", a->kv_fraction, "CUDA: share of free memory for the KV cache")
      ->capture_default_str()
      ->check(float_range(0.01, 1.0));
  cmd->add_option("--chat-template", a->chat_template,
                  "Chat template for \"messages\" inputs: auto (the model's), none, chatml, qwen2, qwen2.5, qwen3, "
                  "llama3, llama3.1, or a Jinja file")
      ->capture_default_str();
  cmd->callback([&action, a] { action = [a] { return run_generate(*a); }; });
}

}  // namespace rlcu::cli
