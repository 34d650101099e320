// `rlcu init-model --arch qwen3|qwen2|llama --hidden H --layers L --heads A --kv-heads K [--intermediate I]
//   [--head-dim D] [--vocab V] [--max-position N] [--tie|--no-tie] [--tokenizer DIR | --byte-tokenizer]
//   --out DIR [--seed S] [--force]`
//
// Writes a randomly initialised Hugging Face model directory (config.json, generation_config.json, bf16
// model.safetensors, tokenizer files); see include/rlcu/init_model.h for the initialisation and the byte-level
// tokenizer. Defaults: intermediate 3*H, head dim H/A, vocab = the tokenizer's size rounded up to a multiple of 64,
// max position 4096, tied embeddings, seed 0. A bad flag value or combination exits 2; a problem with a file exits 1.
#include <memory>

#include "commands.h"
#include "rlcu/init_model.h"

namespace rlcu::cli {

void add_init_model_command(CLI::App& app, Action& action) {
  CLI::App* cmd =
      app.add_subcommand("init-model", "Write a randomly initialised Hugging Face model directory (bf16 safetensors)");
  auto o = std::make_shared<InitModelOptions>();
  auto no_tie = std::make_shared<bool>(false);
  cmd->add_option("--arch", o->arch, "Model type: qwen3, qwen2 or llama")
      ->required()
      ->check(CLI::IsMember({"qwen3", "qwen2", "llama"}));
  const CLI::Validator positive = int_range(1, int64_t{1} << 40);
  cmd->add_option("--hidden", o->hidden, "hidden_size")->required()->check(positive);
  cmd->add_option("--layers", o->layers, "num_hidden_layers")->required()->check(positive);
  cmd->add_option("--heads", o->heads, "num_attention_heads")->required()->check(positive);
  cmd->add_option("--kv-heads", o->kv_heads, "num_key_value_heads (divides --heads)")->required()->check(positive);
  cmd->add_option("--intermediate", o->intermediate, "intermediate_size (default: 3 * hidden)")->check(positive);
  cmd->add_option("--head-dim", o->head_dim, "head_dim (default: hidden / heads)")->check(positive);
  cmd->add_option("--vocab", o->vocab, "vocab_size (default: tokenizer size rounded up to a multiple of 64)")
      ->check(positive);
  cmd->add_option("--max-position", o->max_position, "max_position_embeddings")->capture_default_str()->check(positive);
  CLI::Option* tie = cmd->add_flag("--tie", o->tie, "Tie lm_head to the input embeddings (the default)");
  cmd->add_flag("--no-tie", *no_tie, "Give the model its own lm_head")->excludes(tie);
  CLI::Option* tok = cmd->add_option("--tokenizer", o->tokenizer_dir,
                                     "Copy the tokenizer of this directory (tokenizer.json, tokenizer_config.json, ...)");
  CLI::Option* byte = cmd->add_flag("--byte-tokenizer", o->byte_tokenizer,
                                    "Write a byte-level tokenizer (256 byte tokens + ChatML special tokens)");
  tok->excludes(byte);
  cmd->add_option("--out", o->out_dir, "Output directory (created; must be empty unless --force)")->required();
  cmd->add_option("--seed", o->seed, "Seed of the random initialisation")->capture_default_str();
  cmd->add_flag("--force", o->force, "Write into a non-empty output directory, replacing files of the same names");
  cmd->callback([&action, o, no_tie] {
    action = [o, no_tie] {
      o->tie = !*no_tie;
      init_model(*o);
      return 0;
    };
  });
}

}  // namespace rlcu::cli
