// Hugging Face config.json -> ModelConfig for model_type qwen2, qwen3 and llama, in both the transformers 4.x form
// (`rope_theta`, `rope_scaling` with `type` or `rope_type`, `torch_dtype`) and the 5.x form (`rope_parameters`,
// `dtype`); eos/bos ids from config.json and generation_config.json; rotary inverse frequencies (default, linear,
// llama3) exactly as HF computes them, in double.
// Every error names the file and the field, and says what was expected.
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "rlcu/json_error.h"
#include "rlcu/model.h"

namespace rlcu {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

std::string show(const json& v) {
  std::string s = v.dump();
  return s.size() > 60 ? s.substr(0, 57) + "..." : s;
}

// Typed access to the fields of one JSON object, with errors "<source>: `<prefix><key>`: expected ..., got ...".
class Fields {
 public:
  Fields(const json& j, std::string source, std::string prefix = "")
      : j_(j), source_(std::move(source)), prefix_(std::move(prefix)) {}

  bool has(const char* key) const { return j_.contains(key) && !j_.at(key).is_null(); }
  std::string path(const char* key) const { return prefix_ + key; }
  [[noreturn]] void fail(const char* key, const std::string& what) const {
    throw Error(fmt::format("{}: `{}`: {}", source_, path(key), what));
  }

  int64_t integer(const char* key, int64_t min_value) const {
    if (!has(key)) fail(key, fmt::format("missing (expected an integer >= {})", min_value));
    return integer_or(key, min_value, 0);
  }
  int64_t integer_or(const char* key, int64_t min_value, int64_t def) const {
    if (!has(key)) return def;
    const json& v = j_.at(key);
    if (!v.is_number_integer() || v.get<int64_t>() < min_value)
      fail(key, fmt::format("expected an integer >= {}, got {}", min_value, show(v)));
    return v.get<int64_t>();
  }
  double number(const char* key) const {
    if (!has(key)) fail(key, "missing (expected a positive number)");
    return number_or(key, 0.0);
  }
  double number_or(const char* key, double def) const {
    if (!has(key)) return def;
    const json& v = j_.at(key);
    if (!v.is_number() || !(v.get<double>() > 0.0) || !std::isfinite(v.get<double>()))
      fail(key, fmt::format("expected a positive number, got {}", show(v)));
    return v.get<double>();
  }
  bool boolean_or(const char* key, bool def) const {
    if (!has(key)) return def;
    const json& v = j_.at(key);
    if (!v.is_boolean()) fail(key, fmt::format("expected true or false, got {}", show(v)));
    return v.get<bool>();
  }
  std::string string_or(const char* key, const std::string& def) const {
    if (!has(key)) return def;
    const json& v = j_.at(key);
    if (!v.is_string()) fail(key, fmt::format("expected a string, got {}", show(v)));
    return v.get<std::string>();
  }
  // An int, a list of ints, or null/absent -> the list.
  std::vector<int32_t> token_ids(const char* key) const {
    std::vector<int32_t> out;
    if (!has(key)) return out;
    const json& v = j_.at(key);
    auto one = [&](const json& x) {
      if (!x.is_number_integer() || x.get<int64_t>() < 0 || x.get<int64_t>() > INT32_MAX)
        fail(key, fmt::format("expected a token id or a list of token ids, got {}", show(v)));
      out.push_back(static_cast<int32_t>(x.get<int64_t>()));
    };
    if (v.is_array())
      for (const json& x : v) one(x);
    else
      one(v);
    return out;
  }
  const json& at(const char* key) const { return j_.at(key); }

 private:
  const json& j_;
  std::string source_;
  std::string prefix_;
};

json read_json_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw Error(fmt::format("{}: cannot open", path));
  std::stringstream ss;
  ss << in.rdbuf();
  try {
    return json::parse(ss.str());
  } catch (const json::exception& e) {
    throw Error(json_parse_error(path, ss.str(), e));
  }
}

DType parse_dtype(const Fields& f, const char* key) {
  const std::string s = f.string_or(key, "float32");
  if (s == "float32" || s == "float") return DType::F32;
  if (s == "bfloat16") return DType::BF16;
  if (s == "float16" || s == "half") return DType::F16;
  f.fail(key, fmt::format("expected float32, bfloat16 or float16, got \"{}\"", s));
}

void parse_rope(ModelConfig& c, const json& j, const std::string& source) {
  const Fields top(j, source);
  const json* rp = nullptr;
  std::string prefix;
  if (top.has("rope_parameters")) {
    rp = &j.at("rope_parameters");
    prefix = "rope_parameters.";
    if (!rp->is_object()) top.fail("rope_parameters", fmt::format("expected an object, got {}", show(*rp)));
    // Models with several attention types key the parameters by layer type; these models use full attention.
    if (rp->contains("full_attention") && rp->at("full_attention").is_object()) {
      rp = &rp->at("full_attention");
      prefix = "rope_parameters.full_attention.";
    }
  } else if (top.has("rope_scaling")) {
    rp = &j.at("rope_scaling");
    prefix = "rope_scaling.";
    if (!rp->is_object()) top.fail("rope_scaling", fmt::format("expected an object or null, got {}", show(*rp)));
  }
  c.rope.theta = top.number_or("rope_theta", 10000.0);
  if (!rp) return;
  const Fields f(*rp, source, prefix);
  c.rope.theta = f.number_or("rope_theta", c.rope.theta);
  if (f.has("partial_rotary_factor") && f.number("partial_rotary_factor") != 1.0)
    f.fail("partial_rotary_factor", "partial rotary embeddings are not supported (expected 1.0)");
  const char* type_key = f.has("rope_type") ? "rope_type" : "type";
  const std::string type = f.string_or(type_key, "default");
  if (type == "default") {
    c.rope.type = RopeType::Default;
  } else if (type == "linear") {
    c.rope.type = RopeType::Linear;
    c.rope.factor = f.number("factor");
  } else if (type == "llama3") {
    c.rope.type = RopeType::Llama3;
    c.rope.factor = f.number("factor");
    c.rope.low_freq_factor = f.number("low_freq_factor");
    c.rope.high_freq_factor = f.number("high_freq_factor");
    c.rope.original_max_position_embeddings = f.integer("original_max_position_embeddings", 1);
    if (!(c.rope.high_freq_factor > c.rope.low_freq_factor))
      f.fail("high_freq_factor", fmt::format("must be greater than low_freq_factor ({} <= {})", c.rope.high_freq_factor,
                                             c.rope.low_freq_factor));
  } else {
    f.fail(type_key, fmt::format("rope type \"{}\" is not supported (supported: default, linear, llama3)", type));
  }
}

}  // namespace

ModelConfig ModelConfig::from_json(const json& j, const std::string& source) {
  if (!j.is_object()) throw Error(fmt::format("{}: expected a JSON object", source));
  const Fields f(j, source);
  ModelConfig c;
  if (!f.has("model_type")) f.fail("model_type", "missing (expected qwen2, qwen3 or llama)");
  c.model_type = f.string_or("model_type", "");
  if (c.model_type != "qwen2" && c.model_type != "qwen3" && c.model_type != "llama")
    f.fail("model_type",
           fmt::format("model type \"{}\" is not supported (supported: qwen2, qwen3, llama)", c.model_type));
  c.vocab_size = f.integer("vocab_size", 1);
  if (c.vocab_size > INT32_MAX) f.fail("vocab_size", "must fit in 32 bits");
  c.hidden_size = f.integer("hidden_size", 1);
  c.intermediate_size = f.integer("intermediate_size", 1);
  c.num_layers = f.integer("num_hidden_layers", 1);
  c.num_heads = f.integer("num_attention_heads", 1);
  c.num_kv_heads = f.integer_or("num_key_value_heads", 1, c.num_heads);
  if (c.num_heads % c.num_kv_heads != 0)
    f.fail("num_key_value_heads",
           fmt::format("{} does not divide num_attention_heads {}", c.num_kv_heads, c.num_heads));
  if (f.has("head_dim")) {
    c.head_dim = f.integer("head_dim", 2);
  } else {
    if (c.hidden_size % c.num_heads != 0)
      f.fail("num_attention_heads",
             fmt::format("{} does not divide hidden_size {} (and `head_dim` is absent)", c.num_heads, c.hidden_size));
    c.head_dim = c.hidden_size / c.num_heads;
  }
  if (c.head_dim % 2 != 0)
    f.fail(f.has("head_dim") ? "head_dim" : "hidden_size",
           fmt::format("head dim {} is odd; rotary embeddings need an even head dim", c.head_dim));
  c.max_position_embeddings = f.integer_or("max_position_embeddings", 1, 0);
  c.rms_norm_eps = f.number_or("rms_norm_eps", 1e-6);
  c.tie_word_embeddings = f.boolean_or("tie_word_embeddings", false);
  const std::string act = f.string_or("hidden_act", "silu");
  if (act != "silu") f.fail("hidden_act", fmt::format("activation \"{}\" is not supported (expected silu)", act));
  const bool attention_bias = f.boolean_or("attention_bias", false);
  if (c.model_type == "qwen2") {
    c.qkv_bias = true;
    c.o_bias = false;
  } else {
    c.qkv_bias = attention_bias;
    c.o_bias = attention_bias;
  }
  c.qk_norm = c.model_type == "qwen3";
  if (f.boolean_or("mlp_bias", false)) f.fail("mlp_bias", "MLP biases are not supported (expected false)");
  if (f.boolean_or("use_sliding_window", false))
    f.fail("use_sliding_window", "sliding-window attention is not supported (expected false)");
  if (f.has("layer_types")) {
    const json& lt = f.at("layer_types");
    if (!lt.is_array()) f.fail("layer_types", fmt::format("expected a list, got {}", show(lt)));
    for (const json& t : lt)
      if (!t.is_string() || t.get<std::string>() != "full_attention")
        f.fail("layer_types", fmt::format("layer type {} is not supported (expected \"full_attention\")", show(t)));
  }
  parse_rope(c, j, source);
  c.checkpoint_dtype = parse_dtype(f, f.has("dtype") ? "dtype" : "torch_dtype");
  c.eos_token_ids = f.token_ids("eos_token_id");
  const auto bos = f.token_ids("bos_token_id");
  if (bos.size() > 1) f.fail("bos_token_id", "expected a single token id");
  c.bos_token_id = bos.empty() ? -1 : bos[0];
  return c;
}

ModelConfig ModelConfig::load(const std::string& dir) {
  const std::string path = (fs::path(dir) / "config.json").string();
  std::error_code ec;
  if (!fs::exists(dir, ec)) throw Error(fmt::format("{}: the model directory does not exist", dir));
  if (!fs::is_directory(dir, ec)) throw Error(fmt::format("{}: not a directory (expected a model directory)", dir));
  if (!fs::exists(path, ec)) throw Error(fmt::format("{}: missing (not a Hugging Face model directory?)", path));
  ModelConfig c = from_json(read_json_file(path), path);
  const std::string gen_path = (fs::path(dir) / "generation_config.json").string();
  if (fs::exists(gen_path, ec)) {
    const json g = read_json_file(gen_path);
    if (!g.is_object()) throw Error(fmt::format("{}: expected a JSON object", gen_path));
    const Fields gf(g, gen_path);
    std::vector<int32_t> eos = gf.token_ids("eos_token_id");
    for (int32_t id : c.eos_token_ids)
      if (std::find(eos.begin(), eos.end(), id) == eos.end()) eos.push_back(id);
    c.eos_token_ids = eos;
    const auto bos = gf.token_ids("bos_token_id");
    if (bos.size() > 1) gf.fail("bos_token_id", "expected a single token id");
    if (!bos.empty()) c.bos_token_id = bos[0];
  }
  for (int32_t id : c.eos_token_ids)
    if (id >= c.vocab_size)
      throw Error(fmt::format("{}: eos token id {} is outside the vocabulary [0, {})", path, id, c.vocab_size));
  if (c.bos_token_id >= c.vocab_size)
    throw Error(
        fmt::format("{}: bos token id {} is outside the vocabulary [0, {})", path, c.bos_token_id, c.vocab_size));
  return c;
}

std::vector<float> rope_inv_freq(const RopeConfig& r, int64_t head_dim) {
  const int64_t half = head_dim / 2;
  std::vector<float> out(static_cast<size_t>(half));
  constexpr double kPi = 3.14159265358979323846;
  for (int64_t i = 0; i < half; ++i) {
    double f = 1.0 / std::pow(r.theta, static_cast<double>(2 * i) / static_cast<double>(head_dim));
    if (r.type == RopeType::Linear) {
      f /= r.factor;
    } else if (r.type == RopeType::Llama3) {
      // HF _compute_llama3_parameters: long wavelengths are divided by `factor`, short ones kept, and the band in
      // between interpolated smoothly.
      const double old_len = static_cast<double>(r.original_max_position_embeddings);
      const double low_freq_wavelen = old_len / r.low_freq_factor;
      const double high_freq_wavelen = old_len / r.high_freq_factor;
      const double wavelen = 2.0 * kPi / f;
      double scaled = wavelen > low_freq_wavelen ? f / r.factor : f;
      const bool medium = !(wavelen < high_freq_wavelen) && !(wavelen > low_freq_wavelen);
      if (medium) {
        const double smooth = (old_len / wavelen - r.low_freq_factor) / (r.high_freq_factor - r.low_freq_factor);
        scaled = (1.0 - smooth) * scaled / r.factor + smooth * scaled;
      }
      f = scaled;
    }
    out[static_cast<size_t>(i)] = static_cast<float>(f);
  }
  return out;
}

}  // namespace rlcu
