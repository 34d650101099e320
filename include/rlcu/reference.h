// The reference model of the KL penalty: a frozen copy of the initial policy (loaded again from the policy's model
// directory, no gradients) that scores the completion tokens of a rollout batch; with LoRA, the policy's frozen base
// weights themselves (no second copy).
//
//   ref_logprobs[offsets[s] + t] = log p_ref(completion token t of sequence s | prompt, earlier tokens)
// computed over the same packed micro-batches as the policy's forward, with the policy's transformer options (the
// sampling temperature's scaling included) except that it keeps nothing for a backward.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "rlcu/context.h"
#include "rlcu/model.h"
#include "rlcu/rollout_batch.h"

namespace rlcu::rl {

class ReferenceModel {
 public:
  // Loads `dir`; `policy_options` are the policy's (training and checkpointing are turned off here).
  ReferenceModel(const std::string& dir, const TransformerOptions& policy_options, Context& ctx);
  // A LoRA run's reference: the policy's own frozen base weights (Model::base_weights(), the adapters off), no copy.
  ReferenceModel(Model& policy_base, const TransformerOptions& policy_options, Context& ctx);
  ~ReferenceModel();
  ReferenceModel(const ReferenceModel&) = delete;
  ReferenceModel& operator=(const ReferenceModel&) = delete;

  // Sets batch.ref_logprobs [T]. `logprob_rows` is an F32 vector on the context's device with room for the largest
  // micro-batch (the caller's buffer, e.g. the policy's log-prob rows, which are free while the reference scores).
  void score(RolloutBatch& batch, const std::vector<Micro>& micros, const Tensor& logprob_rows, Context& ctx);

 private:
  std::unique_ptr<Model> model_;
  std::unique_ptr<Transformer> tf_;
};

}  // namespace rlcu::rl
