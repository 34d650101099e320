// Checkpoints of a training run: save (atomic, pruned), find the latest, load, and restore into live tensors.
//
// Layout of one checkpoint, RUN/checkpoints/step-000123 (step = training steps completed, at least 6 digits):
//   model.safetensors           the policy in Hugging Face form: HF tensor names, BF16, rounded (nearest even) from
//                               the F32 master weights; tied embeddings stored once (`model.embed_tokens.weight`),
//                               metadata {"format": "pt"}. Loads with Model::load and with transformers.
//   config.json                 copied from the model directory
//   generation_config.json, tokenizer.json, tokenizer_config.json, special_tokens_map.json, chat_template.jinja
//                               copied when present (tokenizer files from the tokenizer directory first)
//   trainer_state.safetensors   F32 tensors `{prefix}master.{hf name}`, `{prefix}exp_avg.{hf name}`,
//                               `{prefix}exp_avg_sq.{hf name}` (prefix "" for the policy), plus the caller's extra
//                               tensors (e.g. a critic's, with prefix "critic."); metadata `{prefix}optimizer_steps`.
//                               optimizer.name = adamw_8bit stores the flat quantised moments instead of the F32
//                               ones: `{prefix}exp_avg.codes` / `{prefix}exp_avg_sq.codes` U8 [n] and
//                               `{prefix}exp_avg.absmax` / `{prefix}exp_avg_sq.absmax` F32 [ceil(n / 256)], with
//                               metadata `{prefix}optimizer` = "adamw_8bit" and `{prefix}optimizer_block_size`
//                               = "256" (no `optimizer` entry means plain AdamW). Resuming with another
//                               optimizer.name than the checkpoint's is an error naming both.
//   trainer_state.json          {"format": "rlcu-trainer-state", "version": 1, "step", "optimizer_steps", "seed",
//                               "rng", "data_cursor", "model_dir", "tokenizer_dir", "config", "extra"}
// LoRA runs (CheckpointWrite::lora) write the PEFT adapter instead of the model: adapter_config.json and
// adapter_model.safetensors (F32 from the adapter masters; rlcu/lora.h), no model.safetensors / config.json, and
// trainer_state.safetensors holds `master.{peft name}` and the moments of the adapters.
// Every file is a pure function of the saved state: two saves of the same state are byte-identical.
//
// Atomicity: a checkpoint is written into RUN/checkpoints/.tmp-step-000123 and renamed into place once complete;
// RUN/checkpoints/latest (one line: "step-000123") is written to latest.tmp and renamed. A crash therefore leaves
// either the previous checkpoint or the new one, never a partial one; leftover .tmp-* directories are ignored by
// loading and removed by the next save. With keep > 0 only the newest `keep` step-* directories remain.
//
// Restoring copies through host memory into existing tensors on any device, checking dtype and shape; errors name
// the file and the tensor. On CUDA the BF16 working weights are recomputed from the restored F32 master with
// ops::cast, which rounds exactly as AdamW's write-back does, so a resumed run continues bit-exactly.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "rlcu/context.h"
#include "rlcu/safetensors.h"
#include "rlcu/tensor.h"

namespace rlcu {

class Model;
class AdamW;
class LoraAdapters;

// "step-000123"
std::string checkpoint_dir_name(int64_t step);

struct CheckpointWrite {
  std::string run_dir;                   // RUN; the checkpoint goes to RUN/checkpoints/step-NNNNNN
  int64_t step = 0;                      // training steps completed
  const Model* model = nullptr;          // the policy (required)
  const AdamW* optimizer = nullptr;      // the policy's optimizer; null = weights only (no moments)
  const LoraAdapters* lora = nullptr;    // LoRA: the policy is these adapters (optimizer over them) on `model`
  std::string tokenizer_dir;             // where tokenizer files are copied from first; empty = the model directory
  uint64_t seed = 0;                     // run.seed
  nlohmann::json rng = nlohmann::json::object();  // any further RNG state (counters); Philox keys need only seed+step
  nlohmann::json data_cursor;            // DataCursor::to_json(), or null
  nlohmann::ordered_json config;         // the resolved run config (config_to_json)
  nlohmann::json extra = nlohmann::json::object();  // the caller's own state
  std::vector<SafetensorsWriteItem> extra_tensors;  // stored in trainer_state.safetensors under their own names
  std::map<std::string, std::string> extra_metadata;  // added to trainer_state.safetensors' metadata
  int64_t keep = 0;                      // run.keep_checkpoints: prune to the newest `keep`; 0 = keep all
};

// Writes the checkpoint atomically, updates `latest`, prunes, and returns the checkpoint directory.
// Throws rlcu::Error naming the path on an I/O failure (the previous checkpoints stay intact).
std::string save_checkpoint(const CheckpointWrite& w);

// Tensors and metadata of a model's training state for trainer_state.safetensors (see the layout above); use it to
// put a second model (a critic) into CheckpointWrite::extra_tensors / extra_metadata with its own prefix.
// `opt` may be null (master weights only). Master weights are the model's F32 master (the weights on the CPU).
void append_training_state(std::vector<SafetensorsWriteItem>& items, std::map<std::string, std::string>& metadata,
                           const Model& model, const AdamW* opt, const std::string& prefix);

struct CheckpointRead {
  std::string dir;  // RUN/checkpoints/step-NNNNNN
  int64_t step = 0;
  int64_t optimizer_steps = 0;
  uint64_t seed = 0;
  nlohmann::json rng, data_cursor, config, extra;
  nlohmann::json state;  // the whole trainer_state.json
  std::shared_ptr<const SafetensorsFile> tensors;  // trainer_state.safetensors

  bool has_tensor(const std::string& name) const;
  // Copies tensor `name` into `dst` (any device); the stored dtype and shape must equal dst's. Throws rlcu::Error
  // naming trainer_state.safetensors and the tensor.
  void restore_tensor(const std::string& name, const Tensor& dst) const;
  // A string entry of trainer_state.safetensors' metadata; throws when absent.
  std::string metadata(const std::string& key) const;
};

// Steps of the complete checkpoints (step-* directories holding trainer_state.json) of a run, ascending.
std::vector<int64_t> list_checkpoints(const std::string& run_dir);
// The directory of the newest checkpoint: the one `latest` names, else the highest complete step-*; "" when none.
std::string latest_checkpoint(const std::string& run_dir);
// Loads the newest checkpoint of RUN; throws rlcu::Error when there is none or a file is missing or malformed.
CheckpointRead load_checkpoint(const std::string& run_dir);
// Loads one checkpoint directory.
CheckpointRead load_checkpoint_dir(const std::string& dir);

// Restores a model's master weights (and, when it has a separate BF16 working copy, the weights from them), the
// optimizer moments and the optimizer step count (`opt` may be null), saved with `prefix`.
void restore_training_state(const CheckpointRead& ck, Model& model, AdamW* opt, Context& ctx,
                            const std::string& prefix = "");

// A LoRA run's checkpoint: the adapter masters (and working copy), the optimizer state over them, then merge().
// The checkpoint's adapter_config.json must give the adapters' rank, alpha and targets.
void restore_lora_state(const CheckpointRead& ck, LoraAdapters& lora, AdamW* opt, Context& ctx);

}  // namespace rlcu
