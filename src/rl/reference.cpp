// The reference model (include/rlcu/reference.h).
#include "rlcu/reference.h"

#include "rlcu/error.h"
#include "rlcu/rollout_correction.h"

namespace rlcu::rl {

ReferenceModel::ReferenceModel(const std::string& dir, const TransformerOptions& policy_options, Context& ctx) {
  model_ = Model::load(dir, ModelOptions{}, ctx);
  TransformerOptions ro = policy_options;
  ro.training = false;
  ro.checkpointing = false;
  tf_ = std::make_unique<Transformer>(*model_, ro, ctx);
}

ReferenceModel::ReferenceModel(Model& policy_base, const TransformerOptions& policy_options, Context& ctx) {
  TransformerOptions ro = policy_options;
  ro.training = false;
  ro.checkpointing = false;
  ro.lora = nullptr;
  ro.lora_rank = 0;
  ro.base_weights = true;
  tf_ = std::make_unique<Transformer>(policy_base, ro, ctx);
}

ReferenceModel::~ReferenceModel() = default;

void ReferenceModel::score(RolloutBatch& batch, const std::vector<Micro>& micros, const Tensor& logprob_rows,
                           Context& ctx) {
  score_completions(batch.ref_logprobs, batch, micros, *tf_, logprob_rows, ctx);
}

}  // namespace rlcu::rl
