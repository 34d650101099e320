// RunConfig: the typed configuration of a run, built from a JSON file plus `--set a.b.c=value` overrides.
//
// One schema (a list of FieldSpec, in config_schema.cpp) drives everything: defaults, type/range/enum validation,
// unknown-key detection with "did you mean" suggestions, the resolved dump (`rlcu config show`) and the key
// reference (`rlcu config keys`). Errors are rlcu::Error whose message names the file, the full key path and what
// was expected; JSON syntax errors give line and column.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "rlcu/data.h"

namespace rlcu {

struct RunSection {
  int64_t seed = 0;                      // one seed for every random choice of the run
  std::string output_dir = "runs/rlcu";  // where a run writes its outputs
  std::string device = "cuda";           // cpu | cuda | cuda:N
};

struct ModelSection {
  std::string path;                   // Hugging Face model directory (config.json + *.safetensors)
  std::string tokenizer;              // tokenizer directory; empty = the model directory
  std::string chat_template = "auto"; // auto | chatml | qwen2 | qwen2.5 | qwen3 | llama3 | llama3.1 | none | custom
  std::string custom_template;        // used when chat_template = custom
  bool enable_thinking = true;        // Qwen3 chat template's thinking switch
};

struct OptimizerSection {
  double lr = 1e-6;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;
  double max_grad_norm = 1.0;  // 0 disables clipping
  std::string lr_schedule = "constant";  // constant | linear | cosine
  int64_t warmup_steps = 0;
  double min_lr_ratio = 0.0;  // floor of linear/cosine decay as a fraction of lr
};

struct RunConfig {
  RunSection run;
  ModelSection model;
  DataConfig data;
  OptimizerSection optimizer;
};

enum class FieldKind { Int, Float, Bool, String, Enum };

struct FieldSpec {
  std::string path;  // "optimizer.lr"
  FieldKind kind;
  std::string doc;
  double min = -1e300, max = 1e300;  // inclusive range for Int/Float
  bool min_exclusive = false;
  std::vector<std::string> choices;  // Enum
  // Extra validation for String fields: returns "" when valid, else what was expected.
  std::function<std::string(const std::string&)> check;
  std::function<nlohmann::json(const RunConfig&)> get;
  std::function<void(RunConfig&, const nlohmann::json&)> set;
  std::string expectation() const;  // "a number > 0 and <= 1", "one of cpu, cuda", ...
};

const std::vector<FieldSpec>& config_schema();

// Parses `text` (named `source` in messages), applies overrides ("a.b.c=value"; value parsed as JSON when it is
// valid JSON, else taken as a string), validates and returns the config. Throws rlcu::Error.
RunConfig parse_config(const std::string& text, const std::string& source,
                       const std::vector<std::string>& overrides = {});
RunConfig load_config(const std::string& path, const std::vector<std::string>& overrides = {});

nlohmann::ordered_json config_to_json(const RunConfig& cfg);  // every key, resolved
std::string suggest_key(const std::string& unknown);           // closest known key path, or ""

}  // namespace rlcu
