// Fresh model directories (see include/rlcu/init_model.h): option checks, config.json / generation_config.json in
// the form transformers 4.5x writes, bf16 weights from a counter-based normal generator (normal(0, 0.02) matrices,
// ones for norms, zero biases), and the tokenizer files (a copy, or the built-in byte-level tokenizer).
#include "rlcu/init_model.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "rlcu/error.h"
#include "rlcu/model.h"
#include "rlcu/rng.h"
#include "rlcu/safetensors.h"
#include "rlcu/tensor.h"
#include "rlcu/tokenizer.h"

namespace rlcu {

namespace fs = std::filesystem;
using nlohmann::json;
using nlohmann::ordered_json;

namespace {

constexpr double kInitStd = 0.02;  // transformers' initializer_range default for these models
constexpr const char* kTransformersVersion = "4.51.0";


enum class Init { Normal, Ones, Zeros };

struct ParamSpec {
  std::string name;
  std::vector<int64_t> shape;
  Init init;
};

// HF tensor names and shapes in Model::load's order (see src/model/model.cpp).
std::vector<ParamSpec> param_specs(const ModelConfig& c) {
  const int64_t H = c.hidden_size, I = c.intermediate_size, V = c.vocab_size, qd = c.q_dim(), kvd = c.kv_dim();
  std::vector<ParamSpec> p;
  p.push_back({"model.embed_tokens.weight", {V, H}, Init::Normal});
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const std::string s = fmt::format("model.layers.{}.", l);
    p.push_back({s + "input_layernorm.weight", {H}, Init::Ones});
    p.push_back({s + "self_attn.q_proj.weight", {qd, H}, Init::Normal});
    p.push_back({s + "self_attn.k_proj.weight", {kvd, H}, Init::Normal});
    p.push_back({s + "self_attn.v_proj.weight", {kvd, H}, Init::Normal});
    p.push_back({s + "self_attn.o_proj.weight", {H, qd}, Init::Normal});
    if (c.qkv_bias) {
      p.push_back({s + "self_attn.q_proj.bias", {qd}, Init::Zeros});
      p.push_back({s + "self_attn.k_proj.bias", {kvd}, Init::Zeros});
      p.push_back({s + "self_attn.v_proj.bias", {kvd}, Init::Zeros});
    }
    if (c.o_bias) p.push_back({s + "self_attn.o_proj.bias", {H}, Init::Zeros});
    if (c.qk_norm) {
      p.push_back({s + "self_attn.q_norm.weight", {c.head_dim}, Init::Ones});
      p.push_back({s + "self_attn.k_norm.weight", {c.head_dim}, Init::Ones});
    }
    p.push_back({s + "post_attention_layernorm.weight", {H}, Init::Ones});
    p.push_back({s + "mlp.gate_proj.weight", {I, H}, Init::Normal});
    p.push_back({s + "mlp.up_proj.weight", {I, H}, Init::Normal});
    p.push_back({s + "mlp.down_proj.weight", {H, I}, Init::Normal});
  }
  p.push_back({"model.norm.weight", {H}, Init::Ones});
  if (!c.tie_word_embeddings) p.push_back({"lm_head.weight", {V, H}, Init::Normal});
  return p;
}

// Fills out[0, n) with bf16 normal(0, std) values of the tensor keyed by `key`: pair k = elements (2k, 2k+1) comes
// from Box-Muller on two draws of splitmix64(key, k), so any split of the range gives the same values.
void fill_normal(uint16_t* out, int64_t begin, int64_t end, uint64_t key, double stddev) {
  constexpr double kTwoPi = 6.283185307179586476925286766559;
  for (int64_t i = begin & ~int64_t{1}; i < end; i += 2) {
    const uint64_t base = splitmix64(key ^ splitmix64(static_cast<uint64_t>(i / 2)));
    const double u1 = unit_open(splitmix64(base));
    const double u2 = unit_open(splitmix64(base + 1));
    const double r = std::sqrt(-2.0 * std::log(u1)) * stddev;
    const double z0 = r * std::cos(kTwoPi * u2), z1 = r * std::sin(kTwoPi * u2);
    if (i >= begin) out[i] = f32_to_bf16(static_cast<float>(z0));
    if (i + 1 >= begin && i + 1 < end) out[i + 1] = f32_to_bf16(static_cast<float>(z1));
  }
}

void fill_param(std::vector<uint16_t>& data, const ParamSpec& p, uint64_t seed) {
  if (p.init == Init::Ones) {
    std::fill(data.begin(), data.end(), f32_to_bf16(1.0f));
    return;
  }
  if (p.init == Init::Zeros) {
    std::fill(data.begin(), data.end(), uint16_t{0});
    return;
  }
  const uint64_t key = splitmix64(seed ^ splitmix64(fnv1a64(p.name)));
  const int64_t n = static_cast<int64_t>(data.size());
  const int64_t threads = std::clamp<int64_t>(static_cast<int64_t>(std::thread::hardware_concurrency()), 1, 64);
  const int64_t chunk = std::max<int64_t>((n + threads - 1) / threads, 1 << 16);
  if (n <= chunk) {
    fill_normal(data.data(), 0, n, key, kInitStd);
    return;
  }
  std::vector<std::thread> pool;
  for (int64_t b = 0; b < n; b += chunk)
    pool.emplace_back([&data, b, n, chunk, key] { fill_normal(data.data(), b, std::min(n, b + chunk), key, kInitStd); });
  for (std::thread& t : pool) t.join();
}

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(fmt::format("{}: cannot open", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void write_text(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw Error(fmt::format("{}: cannot create", tmp));
    out << text;
    out.flush();
    if (!out) throw Error(fmt::format("{}: write failed", tmp));
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) throw Error(fmt::format("{}: cannot move into place: {}", path, ec.message()));
}

[[noreturn]] void usage(const std::string& msg) { throw UsageError(msg); }

void check_options(const InitModelOptions& o) {
  if (o.arch != "qwen3" && o.arch != "qwen2" && o.arch != "llama")
    usage(fmt::format("--arch: expected qwen3, qwen2 or llama, got \"{}\"", o.arch));
  auto positive = [](const char* flag, int64_t v) {
    if (v < 1) usage(fmt::format("{}: expected an integer >= 1, got {}", flag, v));
  };
  positive("--hidden", o.hidden);
  positive("--layers", o.layers);
  positive("--heads", o.heads);
  positive("--kv-heads", o.kv_heads);
  positive("--max-position", o.max_position);
  if (o.intermediate < 0) usage(fmt::format("--intermediate: expected an integer >= 1, got {}", o.intermediate));
  if (o.head_dim < 0) usage(fmt::format("--head-dim: expected an even integer >= 2, got {}", o.head_dim));
  if (o.vocab < 0) usage(fmt::format("--vocab: expected an integer >= 1, got {}", o.vocab));
  if (o.heads % o.kv_heads != 0)
    usage(fmt::format("--kv-heads {} must divide --heads {} (grouped-query attention)", o.kv_heads, o.heads));
  if (o.head_dim == 0 && o.hidden % o.heads != 0)
    usage(fmt::format("--heads {} does not divide --hidden {}; give --head-dim", o.heads, o.hidden));
  const int64_t hd = o.head_dim ? o.head_dim : o.hidden / o.heads;
  if (hd % 2 != 0)
    usage(fmt::format("head dim {} is odd; rotary embeddings need an even head dim ({})", hd,
                      o.head_dim ? "--head-dim" : "--hidden / --heads"));
  if (!o.tokenizer_dir.empty() && o.byte_tokenizer) usage("--tokenizer and --byte-tokenizer exclude each other");
  if (o.tokenizer_dir.empty() && !o.byte_tokenizer && o.vocab == 0)
    usage("give a tokenizer (--tokenizer DIR or --byte-tokenizer) or the vocabulary size (--vocab)");
  if (o.out_dir.empty()) usage("--out: expected the output directory");
}

ordered_json added_token(int32_t id, const std::string& content, bool special) {
  return ordered_json{{"id", id},          {"content", content}, {"single_word", false}, {"lstrip", false},
                      {"rstrip", false},   {"normalized", false}, {"special", special}};
}

struct ByteAdded {
  const char* content;
  bool special;
};
constexpr ByteAdded kByteAdded[] = {{"<|endoftext|>", true},
                                    {"<|im_start|>", true},
                                    {"<|im_end|>", true},
                                    {"<think>", false},
                                    {"</think>", false}};
constexpr int32_t kByteEndOfText = 256;
constexpr int32_t kByteImEnd = 258;

// The ChatML template Hugging Face ships for ChatML models (no default system prompt).
constexpr const char* kChatMlTemplate =
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + "
    "'\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

}  // namespace

std::vector<std::string> gpt2_byte_symbols() {
  // GPT-2 bytes_to_unicode: printable Latin-1 bytes map to themselves, the other 68 to U+0100.. in byte order.
  std::vector<std::string> out(256);
  int extra = 0;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    const int cp = printable ? b : 256 + extra++;
    std::string s;
    if (cp < 0x80) {
      s += static_cast<char>(cp);
    } else {
      s += static_cast<char>(0xC0 | (cp >> 6));
      s += static_cast<char>(0x80 | (cp & 0x3F));
    }
    out[static_cast<size_t>(b)] = s;
  }
  return out;
}

std::string byte_tokenizer_json() {
  const ordered_json byte_level = {
      {"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", false}};
  ordered_json added = ordered_json::array();
  for (size_t k = 0; k < std::size(kByteAdded); ++k)
    added.push_back(added_token(256 + static_cast<int32_t>(k), kByteAdded[k].content, kByteAdded[k].special));
  ordered_json vocab = ordered_json::object();
  const std::vector<std::string> sym = gpt2_byte_symbols();
  for (int b = 0; b < 256; ++b) vocab[sym[static_cast<size_t>(b)]] = b;
  ordered_json model = {{"type", "BPE"},
                        {"dropout", nullptr},
                        {"unk_token", nullptr},
                        {"continuing_subword_prefix", nullptr},
                        {"end_of_word_suffix", nullptr},
                        {"fuse_unk", false},
                        {"byte_fallback", false},
                        {"ignore_merges", false},
                        {"vocab", vocab},
                        {"merges", ordered_json::array()}};
  ordered_json post = byte_level;
  post["trim_offsets"] = false;
  const ordered_json j = {{"version", "1.0"},      {"truncation", nullptr},      {"padding", nullptr},
                          {"added_tokens", added}, {"normalizer", nullptr},      {"pre_tokenizer", byte_level},
                          {"post_processor", post}, {"decoder", byte_level},     {"model", model}};
  return j.dump(2) + "\n";
}

std::string byte_tokenizer_config_json(int64_t max_position) {
  ordered_json decoder = ordered_json::object();
  for (size_t k = 0; k < std::size(kByteAdded); ++k) {
    ordered_json t = added_token(256 + static_cast<int32_t>(k), kByteAdded[k].content, kByteAdded[k].special);
    t.erase("id");
    decoder[std::to_string(256 + k)] = t;
  }
  const ordered_json j = {{"add_bos_token", false},
                          {"add_prefix_space", false},
                          {"added_tokens_decoder", decoder},
                          {"bos_token", nullptr},
                          {"chat_template", kChatMlTemplate},
                          {"clean_up_tokenization_spaces", false},
                          {"eos_token", "<|im_end|>"},
                          {"errors", "replace"},
                          {"model_max_length", max_position},
                          {"pad_token", "<|endoftext|>"},
                          {"split_special_tokens", false},
                          {"tokenizer_class", "PreTrainedTokenizerFast"},
                          {"unk_token", nullptr}};
  return j.dump(2) + "\n";
}

json init_model_config(const InitModelOptions& o, int64_t vocab, int32_t bos_id, const std::vector<int32_t>& eos_ids) {
  const bool llama = o.arch == "llama";
  json j;
  j["architectures"] = {o.arch == "qwen3" ? "Qwen3ForCausalLM" : o.arch == "qwen2" ? "Qwen2ForCausalLM"
                                                                                   : "LlamaForCausalLM"};
  j["model_type"] = o.arch;
  if (o.arch != "qwen2") j["attention_bias"] = false;
  j["attention_dropout"] = 0.0;
  j["bos_token_id"] = bos_id >= 0 ? json(bos_id) : json(nullptr);
  if (eos_ids.empty())
    j["eos_token_id"] = nullptr;
  else if (eos_ids.size() == 1)
    j["eos_token_id"] = eos_ids[0];
  else
    j["eos_token_id"] = eos_ids;
  j["head_dim"] = o.head_dim ? o.head_dim : o.hidden / o.heads;
  j["hidden_act"] = "silu";
  j["hidden_size"] = o.hidden;
  j["initializer_range"] = kInitStd;
  j["intermediate_size"] = o.intermediate ? o.intermediate : 3 * o.hidden;
  j["max_position_embeddings"] = o.max_position;
  j["num_attention_heads"] = o.heads;
  j["num_hidden_layers"] = o.layers;
  j["num_key_value_heads"] = o.kv_heads;
  j["rms_norm_eps"] = llama ? 1e-5 : 1e-6;
  j["rope_scaling"] = nullptr;
  j["rope_theta"] = llama ? 500000.0 : 1000000.0;
  j["tie_word_embeddings"] = o.tie;
  j["torch_dtype"] = "bfloat16";
  j["transformers_version"] = kTransformersVersion;
  j["use_cache"] = true;
  j["vocab_size"] = vocab;
  if (llama) {
    j["mlp_bias"] = false;
    j["pretraining_tp"] = 1;
  } else {
    j["max_window_layers"] = o.layers;
    j["sliding_window"] = nullptr;
    j["use_sliding_window"] = false;
  }
  return j;
}

InitModelResult init_model(const InitModelOptions& o) {
  check_options(o);

  // The tokenizer: its size, special ids and files.
  int64_t tok_size = 0;
  int32_t bos = -1;
  std::vector<int32_t> eos;
  int32_t pad = -1;
  std::vector<std::pair<std::string, std::string>> tok_files;  // name -> contents
  if (o.byte_tokenizer) {
    tok_files = {{"tokenizer.json", byte_tokenizer_json()},
                 {"tokenizer_config.json", byte_tokenizer_config_json(o.max_position)}};
    const Tokenizer tok = Tokenizer::from_json(tok_files[0].second, tok_files[1].second);
    RLCU_CHECK(tok.vocab_size() == kByteTokenizerSize, "byte tokenizer has {} tokens", tok.vocab_size());
    tok_size = kByteTokenizerSize;
    eos = {kByteImEnd, kByteEndOfText};
    pad = kByteEndOfText;
  } else if (!o.tokenizer_dir.empty()) {
    const fs::path src(o.tokenizer_dir);
    std::error_code ec;
    if (!fs::is_directory(src, ec)) throw Error(fmt::format("{}: not a directory (--tokenizer)", o.tokenizer_dir));
    if (!fs::exists(src / "tokenizer.json", ec))
      throw Error(fmt::format("{}: missing (--tokenizer expects a directory with tokenizer.json)",
                              (src / "tokenizer.json").string()));
    const Tokenizer tok = Tokenizer::load(o.tokenizer_dir);
    tok_size = tok.vocab_size();
    bos = tok.bos_id();
    eos = tok.eos_ids();
    pad = tok.pad_id();
    for (const char* name : {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"})
      if (fs::exists(src / name, ec)) tok_files.emplace_back(name, read_text((src / name).string()));
  }

  int64_t vocab = o.vocab;
  if (vocab == 0) vocab = (tok_size + 63) / 64 * 64;
  if (vocab < tok_size)
    throw UsageError(fmt::format("--vocab {} is smaller than the tokenizer's {} tokens", vocab, tok_size));
  if (vocab > INT32_MAX) throw UsageError(fmt::format("--vocab {} does not fit in 32 bits", vocab));

  InitModelResult res;
  res.config = init_model_config(o, vocab, bos, eos.empty() ? eos : std::vector<int32_t>{eos[0]});
  res.tokenizer_size = tok_size;
  const ModelConfig c = ModelConfig::from_json(res.config, "config.json");

  // The output directory.
  const fs::path out(o.out_dir);
  std::error_code ec;
  if (fs::exists(out, ec)) {
    if (!fs::is_directory(out, ec)) throw Error(fmt::format("{}: exists and is not a directory (--out)", o.out_dir));
    if (!o.force && fs::directory_iterator(out, ec) != fs::directory_iterator())
      throw Error(fmt::format("{}: directory is not empty (--out; use --force to write into it)", o.out_dir));
  } else {
    fs::create_directories(out, ec);
    if (ec) throw Error(fmt::format("{}: cannot create directory: {}", o.out_dir, ec.message()));
  }

  // Weights.
  const std::vector<ParamSpec> specs = param_specs(c);
  std::vector<std::vector<uint16_t>> data(specs.size());
  std::vector<SafetensorsWriteItem> items;
  items.reserve(specs.size());
  for (size_t k = 0; k < specs.size(); ++k) {
    int64_t n = 1;
    for (int64_t d : specs[k].shape) n *= d;
    data[k].resize(static_cast<size_t>(n));
    fill_param(data[k], specs[k], o.seed);
    res.num_parameters += n;
    items.push_back({specs[k].name, Tensor(data[k].data(), DType::BF16, Device::CPU, specs[k].shape), DType::BF16, {}});
  }
  write_safetensors((out / "model.safetensors").string(), items, {{"format", "pt"}});

  write_text((out / "config.json").string(), res.config.dump(2) + "\n");
  json gen;
  gen["_from_model_config"] = true;
  if (bos >= 0) gen["bos_token_id"] = bos;
  if (eos.size() == 1)
    gen["eos_token_id"] = eos[0];
  else if (!eos.empty())
    gen["eos_token_id"] = eos;
  if (pad >= 0) gen["pad_token_id"] = pad;
  gen["transformers_version"] = kTransformersVersion;
  write_text((out / "generation_config.json").string(), gen.dump(2) + "\n");
  for (const auto& [name, text] : tok_files) write_text((out / name).string(), text);

  spdlog::info("wrote {}: {} with {} layers, hidden {}, {} heads ({} kv, head dim {}), intermediate {}, vocab {}{}, "
               "{:.2f}M parameters (bf16, seed {})",
               o.out_dir, c.model_type, c.num_layers, c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim,
               c.intermediate_size, c.vocab_size, c.tie_word_embeddings ? " (tied)" : "",
               static_cast<double>(res.num_parameters) / 1e6, o.seed);
  return res;
}

}  // namespace rlcu
