// Trainer-internal: the PPO critic as the trainer trains it — the rl::Critic (value model, value loss, gradients)
// plus its two AdamW optimizers (decoder and value head, each clipping its own gradient norm to
// optimizer.max_grad_norm, both at algorithm.critic_lr on the policy's schedule) and its checkpoint state, stored
// under the prefix "critic." in trainer_state.safetensors.
#pragma once

#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "rlcu/checkpoint.h"
#include "rlcu/config.h"
#include "rlcu/critic.h"
#include "rlcu/dist.h"
#include "rlcu/optimizer.h"
#include "rlcu/rollout_batch.h"

namespace rlcu {

class TrainedCritic {
 public:
  // `optimizer` is the run's optimizer section with lr = algorithm.critic_lr.
  TrainedCritic(const rl::CriticOptions& critic, const OptimizerSection& optimizer, Context& ctx);

  rl::Critic& critic() { return *critic_; }
  // Data parallel: both optimizers sum the gradients over the ranks and the value-loss statistics are summed too.
  void set_collectives(dist::HostCollectives* coll);
  // num_iterations passes of value-loss updates over the micro-batches (one optimizer step of each optimizer per
  // pass); returns the metrics value_loss, value_clip_ratio (of the last pass), critic/grad_norm, critic/lr.
  nlohmann::ordered_json update(const rl::RolloutBatch& batch, const std::vector<rl::Micro>& micros,
                                int64_t num_iterations, int64_t step, int64_t total_steps, Context& ctx);

  void append_state(std::vector<SafetensorsWriteItem>& items, std::map<std::string, std::string>& metadata) const;
  void restore(const CheckpointRead& ck, Context& ctx);

 private:
  OptimizerSection optimizer_;
  std::unique_ptr<rl::Critic> critic_;
  std::unique_ptr<AdamW> adam_, head_adam_;
  dist::HostCollectives* coll_ = nullptr;
};

}  // namespace rlcu
