// The reference model (include/rlcu/reference.h).
#include "rlcu/reference.h"

#include "rlcu/error.h"

namespace rlcu::rl {

ReferenceModel::ReferenceModel(const std::string& dir, const TransformerOptions& policy_options, Context& ctx) {
  model_ = Model::load(dir, ModelOptions{}, ctx);
  TransformerOptions ro = policy_options;
  ro.training = false;
  ro.checkpointing = false;
  tf_ = std::make_unique<Transformer>(*model_, ro, ctx);
}

ReferenceModel::~ReferenceModel() = default;

void ReferenceModel::score(RolloutBatch& batch, const std::vector<Micro>& micros, const Tensor& logprob_rows,
                           Context& ctx) {
  batch.ref_logprobs.assign(static_cast<size_t>(batch.num_tokens()), 0.0f);
  for (const Micro& mb : micros) {
    const int64_t T = mb.batch.num_tokens();
    RLCU_CHECK(logprob_rows.numel() >= T, "reference: {} log-prob rows for a micro-batch of {} tokens",
               logprob_rows.numel(), T);
    const Tensor lp = logprob_rows.slice_rows(0, T);
    const DeviceBatch db = tf_->upload(mb.batch, ctx);
    tf_->forward(lp, Tensor(), db, ctx);
    ctx.synchronize("reference: read back");
    scatter_rows(batch.ref_logprobs, mb, batch.offsets, to_host_f32(lp));
  }
}

}  // namespace rlcu::rl
