// `rlcu score --model DIR --input FILE.jsonl [--output FILE] [--device cpu|cuda[:N]] [--max-tokens N]`
//
// Each non-blank input line is an object with "ids": [token ids] (other keys are ignored); each output line is
// {"logprobs": [...]} with logprobs[t] = log p(ids[t+1] | ids[0..t]) (n-1 values, "%.9g"), in input order.
// The whole input is read and checked (file:line in every message) before the model runs; sequences are packed
// in order into micro-batches of at most --max-tokens tokens. --output is written to a temporary file in the
// same directory and renamed at the end, so an error never leaves a partial file; without --output the lines go
// to stdout.
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "output.h"
#include "rlcu/context.h"
#include "rlcu/input_file.h"
#include "rlcu/json_error.h"
#include "rlcu/model.h"
#include "rlcu/parallel.h"

namespace rlcu::cli {

namespace {

using nlohmann::json;

struct ScoreArgs {
  std::string model;
  std::string input;
  std::string output;
  std::string device = "auto";
  int threads = 0;  // threads of the CPU kernels; 0 = all cores
  int64_t max_tokens = 4096;
};

std::vector<std::vector<int32_t>> read_sequences(const std::string& path, const ModelConfig& cfg, int64_t max_tokens) {
  require_not_directory(path, "a JSONL file (--input)");
  std::ifstream in(path);
  if (!in) throw Error(fmt::format("{}: cannot open: {}", path, std::strerror(errno)));
  std::vector<std::vector<int32_t>> seqs;
  std::string line;
  int64_t lineno = 0;
  bool warned_long = false;
  while (std::getline(in, line)) {
    ++lineno;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    json j;
    try {
      j = json::parse(line);
    } catch (const json::exception& e) {
      throw Error(json_line_error(path, lineno, e));
    }
    if (!j.is_object() || !j.contains("ids"))
      throw Error(fmt::format("{}:{}: expected an object with \"ids\": [token ids]", path, lineno));
    const json& ids = j["ids"];
    if (!ids.is_array() || ids.empty())
      throw Error(fmt::format("{}:{}: `ids` must be a non-empty list of token ids", path, lineno));
    std::vector<int32_t> seq;
    seq.reserve(ids.size());
    for (size_t i = 0; i < ids.size(); ++i) {
      const json& v = ids[i];
      if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() >= cfg.vocab_size)
        throw Error(
            fmt::format("{}:{}: ids[{}] = {} is not a token id in [0, {})", path, lineno, i, v.dump(), cfg.vocab_size));
      seq.push_back(static_cast<int32_t>(v.get<int64_t>()));
    }
    if (static_cast<int64_t>(seq.size()) > max_tokens)
      throw Error(
          fmt::format("{}:{}: sequence of {} tokens exceeds --max-tokens {}", path, lineno, seq.size(), max_tokens));
    if (cfg.max_position_embeddings > 0 && static_cast<int64_t>(seq.size()) > cfg.max_position_embeddings &&
        !warned_long) {
      spdlog::warn("{}:{}: sequence of {} tokens is longer than the model's max_position_embeddings {}", path, lineno,
                   seq.size(), cfg.max_position_embeddings);
      warned_long = true;
    }
    seqs.push_back(std::move(seq));
  }
  if (in.bad()) throw Error(fmt::format("{}: read error", path));
  return seqs;
}

std::string format_line(const float* lp, size_t n) {
  std::string s = "{\"logprobs\": [";
  for (size_t i = 0; i < n; ++i) {
    if (i) s += ", ";
    s += std::isfinite(lp[i]) ? fmt::format("{:.9g}", lp[i]) : std::string("null");
  }
  s += "]}\n";
  return s;
}

int run_score(const ScoreArgs& a) {
  int device_index = 0;
  const Device device = parse_device(a.device, "--device", &device_index);
  set_cpu_threads(a.threads);
  std::unique_ptr<Context> cuda_ctx;
  if (device == Device::CUDA) cuda_ctx = Context::cuda(device_index);
  Context& ctx = cuda_ctx ? *cuda_ctx : Context::cpu();

  const ModelConfig cfg = ModelConfig::load(a.model);
  const auto seqs = read_sequences(a.input, cfg, a.max_tokens);
  Output out(a.output);
  const auto model = Model::load(a.model, ModelOptions{}, ctx);
  spdlog::info("{}", device_note(a.device, device, device_index));  // after the inputs: errors stay one line
  int64_t total = 0;
  for (const auto& s : seqs) total += static_cast<int64_t>(s.size());
  TransformerOptions topt;
  topt.max_tokens = std::min<int64_t>(a.max_tokens, std::max<int64_t>(total, 1));
  topt.act_dtype = default_act_dtype(device);
  topt.fp32_residual = true;  // as the rollout engine and the trainer
  Transformer tf(*model, topt, ctx);
  const OwnedTensor logprob = OwnedTensor::make(DType::F32, device, {topt.max_tokens});

  PackedBatch batch;
  size_t first = 0;
  auto flush = [&](size_t end) {
    if (batch.num_tokens() == 0) return;
    const DeviceBatch db = tf.upload(batch, ctx);
    const Tensor lp = logprob.t.slice_rows(0, batch.num_tokens());
    tf.forward(lp, Tensor(), db, ctx);
    ctx.synchronize("score: log-probabilities ready");
    const std::vector<float> host = to_host_f32(lp);
    for (size_t i = first; i < end; ++i) {
      const int32_t b = batch.cu_seqlens[i - first];
      const int32_t e = batch.cu_seqlens[i - first + 1];
      out.write(format_line(host.data() + b, static_cast<size_t>(e - b - 1)));
    }
    batch.clear();
    first = end;
  };
  for (size_t i = 0; i < seqs.size(); ++i) {
    if (batch.num_tokens() + static_cast<int64_t>(seqs[i].size()) > topt.max_tokens) flush(i);
    batch.add_sequence(seqs[i]);
  }
  flush(seqs.size());
  out.commit();
  spdlog::debug("scored {} sequences ({} tokens)", seqs.size(), total);
  return 0;
}

}  // namespace

void add_score_command(CLI::App& app, Action& action) {
  CLI::App* cmd = app.add_subcommand("score", "Per-token log-probabilities of token-id sequences under a model");
  auto args = std::make_shared<ScoreArgs>();
  cmd->add_option("--model", args->model, "Hugging Face model directory (config.json + safetensors)")->required();
  cmd->add_option("--input", args->input, "JSONL input, one {\"ids\": [...]} per line")->required();
  cmd->add_option("--output", args->output, "JSONL output, one {\"logprobs\": [...]} per input line (default: stdout)");
  cmd->add_option("--device", args->device, "auto, cpu, cuda or cuda:N")->capture_default_str();
  cmd->add_option("--threads", args->threads, "Threads of the CPU kernels; 0 = all cores")
      ->capture_default_str()
      ->check(int_range(0, 4096));
  cmd->add_option("--max-tokens", args->max_tokens, "Token budget of one packed micro-batch")
      ->capture_default_str()
      ->check(int_range(1, int64_t{1} << 30));
  cmd->callback([&action, args] { action = [args] { return run_score(*args); }; });
}

}  // namespace rlcu::cli
