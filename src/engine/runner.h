// The engine's model runner: drives the decoder for generation over a paged KV cache. It owns the KV pool, the
// activation arena, the staging of host inputs, the CUDA graphs of decode steps, the sampler call and the block
// copies; each layer is rlcu/layer.h's layer_forward, the same code the training forward runs, with the layer's
// cache planes in its AttentionSpec. Inference only; one residual buffer updated in place (x_mid = x_out = x; the
// residual adds are fused into the o_proj and down_proj products), activations in the model's working dtype (BF16
// on CUDA, F32 on the CPU), logits in F32.
//
//   prefill(batch): packed prompts (positions from 0): every layer writes its K/V for all tokens into the cache at
//     their slots and attends densely within each sequence (AttentionSpec::dense — a prefill always starts at
//     position 0, also when a preempted sequence is recomputed, so no cached context is read); then the final
//     hidden rows listed in `logit_rows` (a row may repeat: the n samples of a prompt) become logits [R, V].
//   decode(batch): one token per sequence: K/V written at its slot, paged attention over the context through the
//     block tables (AttentionSpec::paged), logits [B, V]. On CUDA the step from the embedding to the logits is
//     captured once per batch bucket in a CUDA graph and replayed; rows past the live batch are padding (slot -1,
//     context 0).
//   sample(): ops::sample on the first R rows of the last logits.
//
// Cache layout: one buffer [L, 2, num_slots, nkv, hd]; layer l's K is plane 2l, its V plane 2l+1, slot s = block *
// block_size + offset (see block_manager.h). Host-side inputs are staged in page-locked memory on CUDA and copied
// with one asynchronous copy per array; sample() synchronises (the scheduler needs the tokens).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "batch.h"
#include "block_manager.h"
#include "rlcu/context.h"
#include "rlcu/model.h"
#include "rlcu/ops.h"

namespace rlcu::engine {

struct RunnerOptions {
  int64_t max_tokens = 8192;  // prefill budget (tokens per pass)
  int64_t max_batch = 256;    // decode rows and logit rows
  int64_t num_blocks = 0;
  int64_t block_size = 16;
  int64_t max_blocks_per_seq = 0;  // block-table row width (covers max_model_len)
  int num_splits = 1;              // split-KV chunks per sequence at most
  bool cuda_graphs = true;
  bool fp32_residual = false;  // keep the residual stream in F32
};

class Runner {
 public:
  Runner(const Model& model, const RunnerOptions& opt, Context& ctx);
  ~Runner();
  Runner(const Runner&) = delete;
  Runner& operator=(const Runner&) = delete;

  // Bytes needed for everything but the KV pool (activations, logits, staging, workspace).
  static size_t activation_bytes(const ModelConfig& c, const RunnerOptions& opt, DType act);
  size_t activation_bytes() const;
  size_t kv_bytes() const;

  void copy_blocks(const std::vector<BlockCopy>& copies);
  void prefill(const PrefillInput& in);  // logits for in.logit_rows.size() rows
  void decode(const DecodeInput& in);    // logits for in.ids.size() rows
  // Samples the first `seq_ids.size()` rows of the last logits; fills tokens and logprobs (host).
  void sample(std::vector<int32_t>& tokens, std::vector<float>& logprobs, const std::vector<int32_t>& seq_ids,
              const std::vector<int32_t>& positions, const ops::SampleParams& p);
  // The last logits (F32 [rows, V]) for tests.
  Tensor logits(int64_t rows) const;
  int64_t graphs_captured() const;
  void set_cuda_graphs(bool on);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Decode batch buckets: 1, 2, 4, 8, 16, then multiples of 16, capped at max_batch.
int64_t decode_bucket(int64_t batch, int64_t max_batch);

}  // namespace rlcu::engine
