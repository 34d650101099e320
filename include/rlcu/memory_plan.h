// The memory plan of a run: what `rlcu train` / `rlcu sft` will allocate on its device, computed before anything is
// allocated from the same sizing functions the allocations use (Model::buffer_bytes, Transformer::plan_bytes,
// Engine::memory, optimizer_state_bytes), so the plan cannot drift from the buffers.
//
// Items (per device; a run on N ranks holds the same on each):
//   policy weights            working weights: BF16 on CUDA, F32 on the CPU (where they double as the masters);
//                             with LoRA the frozen base (no masters, moments or gradients)
//   policy masters            F32 master weights (CUDA; not with LoRA)
//   policy gradients          F32 (not with LoRA)
//   LoRA effective weights    LoRA: W0 + (alpha/r) B A of the target matrices (what the engine and the training
//                             forward read; rlcu/lora.h), weight dtype
//   LoRA adapters             LoRA: F32 masters + F32 gradients (+ the BF16 working copy on CUDA) of A and B
//   optimizer state           adamw: F32 exp_avg + exp_avg_sq (8 bytes/parameter); adamw_8bit: U8 codes + an F32
//                             absmax per 256 elements for each (about 2 bytes/parameter); of the adapters with LoRA
//   policy activations        the training arena for train.micro_batch_tokens tokens (with or without
//                             train.checkpointing), without the saved head softmax. LoRA's backward reads the same
//                             saved layer inputs (h1, attn, h2, act) as the full one: no activation is added for it
//   LoRA backward scratch     LoRA: U = X A^T and G = dY B [tokens, r], the fused-output rows [N, r] and the frozen
//                             norms' gradient sink
//   saved head softmax        train.save_head_probs: micro_batch_tokens x vocab values (activation dtype)
//   reference model           weights + its inference arena (algorithm with a reference model); with LoRA only the
//                             arena (the reference is the frozen base itself)
//   critic                    PPO: weights, masters, gradients, fp32 AdamW moments, its training arena, value head
//   reward model              reward.model != 0: weights + its inference arena (8192 tokens)
//   per-token rows            the trainer's F32 rows of one micro-batch
//   rollout engine            the engine's activation buffers
//   KV pool                   the engine's paged KV cache: what the rollouts can use, on CUDA capped by
//                             rollout.kv_fraction of the memory left (so it grows into what the limit leaves)
//   workspaces                CUDA: the 256 MiB the engine leaves free for cuBLAS and op scratch
// The plan fits when every item but the KV pool, plus a KV pool for one longest sequence and one prefill pass
// (CUDA; the whole pool on the CPU), is within the limit: run.memory_limit_gib, or on CUDA the free device memory
// when that is 0 (on the CPU 0 means no limit).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "rlcu/config.h"
#include "rlcu/engine.h"
#include "rlcu/lora.h"
#include "rlcu/model.h"
#include "rlcu/tensor.h"

namespace rlcu {

struct MemoryItem {
  std::string name;
  size_t bytes = 0;
  std::string detail;
};

// What a plan is computed from (the trainer and the SFT trainer fill it after checking the config, the model
// headers, the tokenizer and the data).
struct MemoryPlanInputs {
  RunConfig cfg;                   // the resolved config (train.*, optimizer.name, run.memory_limit_gib)
  Device device = Device::CPU;
  size_t free_bytes = 0;           // CUDA: free device memory before the run allocates
  ModelConfig policy;              // Model::inspect of model.path
  LoraSpec lora;                   // lora_spec_from_config (rank 0: full fine-tuning)
  bool reference = false;          // a reference model (the policy's files)
  bool critic = false;             // PPO's critic of config `critic_model`
  ModelConfig critic_model;
  bool reward_model = false;       // reward.model != 0, of config `reward`
  ModelConfig reward;
  bool engine = false;             // a rollout engine with options `engine_options`
  engine::EngineOptions engine_options;
  int64_t token_rows = 0;          // F32 rows of micro_batch_tokens the trainer keeps for the policy
  int64_t min_micro_batch_tokens = 1;  // the longest sequence (a smaller micro-batch is not suggested)
};

struct MemoryPlan {
  Device device = Device::CPU;
  std::vector<MemoryItem> items;
  size_t kv_bytes = 0;             // the KV pool item's bytes (0 without an engine)
  size_t min_kv_bytes = 0;         // the smallest pool the run can work with
  int64_t kv_blocks = 0;
  size_t limit = 0;                // 0 = none
  std::string limit_source;        // "run.memory_limit_gib", "free device memory" or ""

  size_t total() const;
  // What must fit: every item but the KV pool, plus the smallest pool (CUDA) or the whole pool (CPU).
  size_t required() const;
  bool fits() const { return limit == 0 || required() <= limit; }
  // A Markdown table: item, GiB, detail; then the total and the limit.
  std::string table() const;
};

MemoryPlan plan_memory(const MemoryPlanInputs& in);

// Throws rlcu::Error when the plan does not fit: the message names the requirement and the limit, the largest
// items, and each setting that would shrink the plan with the requirement it would give.
void check_memory_plan(const MemoryPlanInputs& in, const MemoryPlan& plan);

}  // namespace rlcu
