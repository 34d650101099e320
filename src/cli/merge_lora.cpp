// `rlcu merge-lora --adapter DIR --out DIR [--base DIR]`: writes a Hugging Face model directory whose weights are the
// base's with a PEFT LoRA adapter merged in, W = W0 + (alpha/r) B A (see include/rlcu/lora.h, merge_lora_to_dir).
// The base defaults to the adapter's base_model_name_or_path. A problem with a file exits 1.
#include "commands.h"
#include "rlcu/lora.h"

namespace rlcu::cli {

void add_merge_lora_command(CLI::App& app, Action& action) {
  CLI::App* cmd = app.add_subcommand("merge-lora", "Merge a PEFT LoRA adapter into its base: a Hugging Face model directory");
  auto adapter = std::make_shared<std::string>();
  auto out = std::make_shared<std::string>();
  auto base = std::make_shared<std::string>();
  cmd->add_option("--adapter", *adapter, "PEFT adapter directory (adapter_config.json, adapter_model.safetensors)")
      ->required();
  cmd->add_option("--out", *out, "Output model directory (created)")->required();
  cmd->add_option("--base", *base, "Base model directory (default: the adapter's base_model_name_or_path)");
  cmd->callback([&action, adapter, out, base] {
    action = [adapter, out, base] {
      merge_lora_to_dir(*adapter, *out, *base);
      return 0;
    };
  });
}

}  // namespace rlcu::cli
