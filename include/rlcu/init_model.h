// Fresh model directories: a Hugging Face config.json, generation_config.json, randomly initialised weights in
// model.safetensors (bf16) and tokenizer files, for qwen3, qwen2 and llama, loadable by rlcu and by transformers.
//
// Weights follow transformers' `_init_weights`: every matrix (embeddings, projections, untied lm_head) is drawn
// from normal(0, 0.02), RMSNorm weights (input/post-attention/final norms, Qwen3's q_norm/k_norm) are ones, and
// biases (Qwen2's q/k/v) are zero. Tensor names and shapes are the ones Model::load expects:
//   model.embed_tokens.weight [V,H]; per layer l, model.layers.l.{input_layernorm,post_attention_layernorm}.weight
//   [H], self_attn.{q,k,v}_proj.weight [nq*hd,H] [nkv*hd,H] [nkv*hd,H] (+ .bias for qwen2), self_attn.o_proj.weight
//   [H,nq*hd], self_attn.{q,k}_norm.weight [hd] (qwen3), mlp.{gate,up}_proj.weight [I,H], mlp.down_proj.weight [H,I];
//   model.norm.weight [H]; lm_head.weight [V,H] unless the embeddings are tied.
// Randomness: element i of tensor `name` uses a counter-based generator keyed by (seed, FNV-1a(name), i / 2)
// (Box-Muller on two splitmix64 draws, in double, rounded to bf16), so the same arguments give a byte-identical
// file whatever the thread count, and one tensor's values do not depend on which other tensors exist.
//
// Tokenizers: a copy of an existing tokenizer (tokenizer.json, tokenizer_config.json, special_tokens_map.json and
// chat_template.jinja when present), or a byte-level tokenizer: BPE over the 256 GPT-2 byte symbols (id = byte
// value), no merges, ByteLevel pre-tokenizer (add_prefix_space false, use_regex false) and decoder, and the added
// tokens <|endoftext|> 256 (pad), <|im_start|> 257, <|im_end|> 258 (eos), <think> 259, </think> 260, with a ChatML
// chat template. Any byte string encodes to one token per byte and decodes back to itself.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace rlcu {

struct InitModelOptions {
  std::string arch;               // qwen3 | qwen2 | llama
  int64_t hidden = 0;             // hidden_size
  int64_t layers = 0;             // num_hidden_layers
  int64_t heads = 0;              // num_attention_heads
  int64_t kv_heads = 0;           // num_key_value_heads (divides heads)
  int64_t intermediate = 0;       // 0: 3 * hidden
  int64_t head_dim = 0;           // 0: hidden / heads
  int64_t vocab = 0;              // 0: the tokenizer's size rounded up to a multiple of 64
  int64_t max_position = 4096;    // max_position_embeddings
  bool tie = true;                // tie_word_embeddings
  std::string tokenizer_dir;      // copy this tokenizer ("" = none)
  bool byte_tokenizer = false;    // write the byte-level tokenizer
  uint64_t seed = 0;
  std::string out_dir;
  bool force = false;             // allow writing into a non-empty out_dir (files of the same names are replaced)
};

// What was written.
struct InitModelResult {
  nlohmann::json config;       // config.json
  int64_t num_parameters = 0;  // tied embeddings counted once
  int64_t tokenizer_size = 0;  // 0 without a tokenizer
};

// Checks the options (rlcu::UsageError naming the flag for a bad value or combination), then writes the model
// directory. Errors writing files or reading --tokenizer are rlcu::Error naming the file.
InitModelResult init_model(const InitModelOptions& opts);

// The config.json object of a model (transformers 4.5x form: rope_theta, torch_dtype). bos_id < 0: null.
nlohmann::json init_model_config(const InitModelOptions& opts, int64_t vocab, int32_t bos_id,
                                 const std::vector<int32_t>& eos_ids);

// The byte-level tokenizer's tokenizer.json and tokenizer_config.json texts (model_max_length = max_position).
std::string byte_tokenizer_json();
std::string byte_tokenizer_config_json(int64_t max_position);
constexpr int32_t kByteTokenizerSize = 261;  // 256 bytes + 5 added tokens

// The 256 GPT-2 byte-to-unicode symbols as UTF-8 strings, indexed by byte value.
std::vector<std::string> gpt2_byte_symbols();

}  // namespace rlcu
