// The critic's optimizers and checkpoint state (critic_update.h).
#include "critic_update.h"

#include "rlcu/rl_ops.h"

namespace rlcu {

TrainedCritic::TrainedCritic(const rl::CriticOptions& critic, const OptimizerSection& optimizer, Context& ctx)
    : optimizer_(optimizer) {
  critic_ = std::make_unique<rl::Critic>(critic, ctx);
  Model& m = critic_->model();
  const bool cuda = m.device() == Device::CUDA;
  adam_ = std::make_unique<AdamW>(optimizer, m.flat_master(), m.flat_grads(), cuda ? m.flat_weights() : Tensor(), ctx);
  const rl::Critic::Head h = critic_->head();
  head_adam_ = std::make_unique<AdamW>(optimizer, h.master, h.grad, cuda ? h.weights : Tensor(), ctx);
}

void TrainedCritic::set_collectives(dist::HostCollectives* coll) {
  coll_ = coll;
  adam_->set_communicator(coll ? &coll->communicator() : nullptr);
  head_adam_->set_communicator(coll ? &coll->communicator() : nullptr);
}

nlohmann::ordered_json TrainedCritic::update(const rl::RolloutBatch& batch, const std::vector<rl::Micro>& micros,
                                             int64_t num_iterations, int64_t step, int64_t total_steps, Context& ctx) {
  const double lr = lr_at(optimizer_, step - 1, total_steps);
  OptimizerStepStats os;
  std::vector<float> st;
  for (int64_t it = 0; it < num_iterations; ++it) {
    critic_->accumulate_gradients(batch, micros, ctx);
    os = adam_->step(lr, ctx);
    head_adam_->step(lr, ctx);
    st = critic_->read_stats(ctx);
    if (coll_) {  // sums over every rank's tokens
      std::vector<double> d(st.begin(), st.end());
      coll_->all_reduce(d, dist::ReduceOp::Sum);
      for (size_t k = 0; k < d.size(); ++k) st[k] = static_cast<float>(d[k]);
    }
  }
  nlohmann::ordered_json m;
  if (!st.empty()) {
    m["value_loss"] = st[rl::kVsLoss];
    m["value_clip_ratio"] = st[rl::kVsTokens] > 0 ? st[rl::kVsClipped] / st[rl::kVsTokens] : 0.0;
  }
  m["critic/grad_norm"] = os.grad_norm;
  m["critic/lr"] = lr;
  return m;
}

void TrainedCritic::append_state(std::vector<SafetensorsWriteItem>& items,
                                 std::map<std::string, std::string>& metadata) const {
  append_training_state(items, metadata, critic_->model(), adam_.get(), "critic.");
  items.push_back({"critic.value_head.master", critic_->head().master, DType::F32, {}});
  items.push_back({"critic.value_head.exp_avg", head_adam_->exp_avg(), DType::F32, {}});
  items.push_back({"critic.value_head.exp_avg_sq", head_adam_->exp_avg_sq(), DType::F32, {}});
  metadata["critic.value_head.optimizer_steps"] = std::to_string(head_adam_->steps_done());
}

void TrainedCritic::restore(const CheckpointRead& ck, Context& ctx) {
  restore_training_state(ck, critic_->model(), adam_.get(), ctx, "critic.");
  ck.restore_tensor("critic.value_head.master", critic_->head().master);
  ck.restore_tensor("critic.value_head.exp_avg", head_adam_->exp_avg());
  ck.restore_tensor("critic.value_head.exp_avg_sq", head_adam_->exp_avg_sq());
  head_adam_->set_steps_done(std::stoll(ck.metadata("critic.value_head.optimizer_steps")));
  critic_->refresh_head_weights(ctx);
}

}  // namespace rlcu
