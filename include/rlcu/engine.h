// The rollout engine: samples completions for prompts with a paged KV cache, on the same weights the trainer
// updates (no copy), on the CPU or on CUDA.
//
// Flow of generate(requests, sampling):
//   * every request is one prompt and n samples. The prompt is prefilled ONCE (packed with other prompts, up to
//     EngineOptions::prefill_tokens tokens per pass); its K/V go into the paged cache, and its n samples then FORK
//     the prompt's blocks (reference counts; the partially filled last block is copied on write when a sample first
//     appends to it). Each sample draws its first token from the prompt's last logits.
//   * continuous batching: one engine step is either a prefill pass (waiting prompts are admitted while running
//     slots, blocks and the token budget allow) or a decode step over every running sequence. A finished sequence
//     frees its blocks and slot at once, so waiting prompts are admitted in the next step.
//   * decode steps on CUDA replay CUDA graphs captured once per engine for bucketed batch sizes (1, 2, 4, 8, 16,
//     then multiples of 16); rows beyond the live batch are padding (no cache write, zero attention).
//   * when the KV pool runs out during decode, the most recently admitted sequence is preempted: its blocks are
//     freed and it is later prefilled again from prompt + tokens generated so far (recompute), then continues.
//   * the sampler (ops::sample) is keyed by (seed, sequence id, position), sequence id = first_seq_id + request
//     index * n + sample index (first_seq_id: a data-parallel rank's first global sequence) and position = the token's index in prompt + completion, so a completion does not depend on batching,
//     preemption or the device's batch buckets (up to float rounding between CPU and CUDA logits).
//   * stops: an EOS id (unless ignore_eos), a stop string in the completion's bytes (the token that completes it is
//     kept), max_new_tokens, or the model's context length (max_model_len).
// Returned log-probs are those of ops::sample: the token's log-prob under the temperature-scaled full distribution
// (before top-k/top-p/min-p), computed from fp32 logits of the same bf16 weights the trainer uses.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "rlcu/context.h"
#include "rlcu/model.h"
#include "rlcu/ops.h"

namespace rlcu {
class Tokenizer;
class TokenBytesTable;
}

namespace rlcu::engine {

struct EngineOptions {
  int64_t block_size = 16;         // tokens per KV block
  double kv_fraction = 0.9;        // CUDA: share of the free device memory (after weights, training state and the
                                   // engine's activations) given to the KV pool
  int64_t max_kv_tokens = 0;       // cap on the pool size in tokens; 0 = no cap on CUDA, 65536 on the CPU
  int64_t max_batch = 256;         // sequences decoded together at most
  int64_t prefill_tokens = 8192;   // tokens per prefill pass (a longer prompt is an error)
  int64_t max_model_len = 0;       // longest prompt + completion; 0 = the model's max_position_embeddings
  bool cuda_graphs = true;         // capture decode steps in CUDA graphs (CUDA only)
  bool fp32_residual = true;       // keep the residual stream in F32 (as the trainer's Transformer does by
                                   // default): rollout log-probs then match the training forward ~3x closer
};

struct SamplingOptions {
  ops::SampleParams sample;                   // seed, temperature, top_k, top_p, min_p, greedy
  int64_t max_new_tokens = 256;
  std::vector<int32_t> eos_ids;               // stop ids (usually the model's and the tokenizer's EOS)
  bool ignore_eos = false;
  std::vector<std::string> stop_strings;      // byte strings; need token_bytes
  const TokenBytesTable* token_bytes = nullptr;  // bytes of every token id, at least the model's vocabulary
  int32_t first_seq_id = 0;  // the sampler's sequence id of the first request's first sample (data parallel: the
                             // global index of this rank's first sequence, so that completions do not depend on the
                             // number of ranks)
};

struct Request {
  std::vector<int32_t> prompt;  // at least one token
  int n = 1;                    // samples of this prompt
};

enum class FinishReason { Eos, Stop, Length };
const char* finish_reason_name(FinishReason r);  // "eos", "stop", "length"

struct Completion {
  int request = 0;  // index into the requests
  int sample = 0;   // 0 .. n-1
  std::vector<int32_t> ids;       // generated tokens (the EOS / stop token included)
  std::vector<float> logprobs;    // one per generated token
  FinishReason finish = FinishReason::Length;
};

struct EngineStats {
  int64_t prompts = 0, sequences = 0;
  int64_t prefill_passes = 0, prefill_tokens = 0;  // prompt tokens prefilled, recomputation included
  int64_t decode_steps = 0, generated_tokens = 0;
  int64_t preemptions = 0;
  int64_t peak_blocks_used = 0;
  double prefill_seconds = 0, decode_seconds = 0, total_seconds = 0;
  double mean_decode_batch() const { return decode_steps ? double(generated_tokens) / decode_steps : 0.0; }
};

// Called after every engine step with (finished sequences, all sequences).
using ProgressFn = std::function<void(int64_t, int64_t)>;

// The engine's device memory for a model, computed as the constructor sizes it (see Engine::memory).
struct EngineMemory {
  int64_t kv_blocks = 0;        // the pool
  size_t kv_bytes = 0;
  size_t kv_block_bytes = 0;    // one block of every layer's K and V
  int64_t min_kv_blocks = 0;    // one longest sequence plus one prefill pass
  size_t activation_bytes = 0;  // the runner's device buffers
};

class Engine {
 public:
  // What Engine(model, opt, ctx) allocates for a model of config `c` with `weight_dtype` weights on `device`, when
  // `free_bytes` of device memory are free at its construction (CUDA; ignored on the CPU). The constructor sizes
  // itself with this function.
  static EngineMemory memory(const ModelConfig& c, DType weight_dtype, Device device, const EngineOptions& opt,
                             size_t free_bytes);

  // Sizes the KV pool and allocates everything (activations, pool, staging, graphs are captured lazily).
  Engine(const Model& model, const EngineOptions& opt, Context& ctx);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Completions in request order, samples in order within a request. Throws rlcu::Error for a prompt that is empty,
  // holds an id outside the vocabulary, or does not fit the context length or the prefill budget.
  std::vector<Completion> generate(const std::vector<Request>& requests, const SamplingOptions& sampling,
                                   const ProgressFn& progress = {});

  const EngineStats& stats() const;  // of the last generate()
  int64_t kv_blocks() const;
  int64_t block_size() const;
  size_t kv_bytes() const;           // the pool's device/host bytes
  size_t activation_bytes() const;   // the engine's other buffers
  int64_t max_model_len() const;
  // Turns CUDA-graph replay of decode steps on or off (e.g. to time each op with the profiler).
  void set_cuda_graphs(bool on);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// The ids that end a completion: the model's EOS ids (generation_config.json, config.json) followed by the
// tokenizer's that are not among them. `tok` may be null.
std::vector<int32_t> stop_token_ids(const ModelConfig& model, const Tokenizer* tok);

}  // namespace rlcu::engine
