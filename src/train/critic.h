// The PPO critic: a separate copy of a decoder (initialised from the policy or another model directory) with a
// scalar value head, trained with the clipped value loss and its own AdamW.
//
//   V[r] = h_f[r] . w_v        (h_f = the final hidden state of row r, w_v [H] the value head, zero-initialised)
// Row r is the state before completion token t (the row that predicts it), so V_t = V[row of t].
// Backward: dV (from rl::value_loss) -> dh_f[r] = dV[r] w_v (into Transformer::final_hidden_grad_buffer) and
// dw_v += sum_r dV[r] h_f[r]; then the decoder backward from the hidden states. The decoder and the head each clip
// their own gradient norm (optimizer.max_grad_norm) and step their own AdamW at algorithm.critic_lr.
// Checkpoints store the critic under the prefix "critic." in trainer_state.safetensors.
#pragma once

#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "rlcu/checkpoint.h"
#include "rlcu/config.h"
#include "rlcu/model.h"
#include "rlcu/optimizer.h"
#include "micro.h"

namespace rlcu {

struct CriticOptions {
  std::string init;  // model directory
  int64_t max_tokens = 8192;
  bool checkpointing = false;
  OptimizerSection optimizer;  // lr = algorithm.critic_lr
  double value_clip = 0.2;
};

class Critic {
 public:
  Critic(const CriticOptions& opt, Context& ctx);
  ~Critic();

  // Values of every completion token, in completion layout ([Tc], offsets comp_cu), from the current critic.
  // Also kept as the "old" values of the clipped value loss.
  std::vector<float> values(const std::vector<Micro>& micros, const std::vector<int32_t>& comp_cu, Context& ctx);
  void set_returns(std::vector<float> returns) { returns_ = std::move(returns); }
  // num_iterations passes of value-loss updates over the micro-batches with per-token weights w_c (completion
  // layout); returns the metrics (value_loss, value_clip_ratio, critic_grad_norm, critic_lr).
  nlohmann::ordered_json update(const std::vector<Micro>& micros, const std::vector<int32_t>& comp_cu,
                                const std::vector<float>& w_c, int64_t num_iterations, int64_t step,
                                int64_t total_steps, Context& ctx);

  void append_state(std::vector<SafetensorsWriteItem>& items, std::map<std::string, std::string>& metadata) const;
  void restore(const CheckpointRead& ck, Context& ctx);

 private:
  // Forward of one micro-batch; fills values_ rows [0, T) (F32).
  void forward(const Micro& mb, Context& ctx);

  CriticOptions opt_;
  std::unique_ptr<Model> model_;
  std::unique_ptr<Transformer> tf_;
  std::unique_ptr<AdamW> adam_, head_adam_;
  OwnedTensor head_master_, head_grad_, head_w_;  // w_v: F32 master + grad, working copy in the act dtype
  OwnedTensor head_m_, head_v_;
  OwnedTensor vals_, dv_, dv_act_, old_v_, ret_, w_, stats_, lp_;
  std::vector<float> old_c_, returns_;
};

}  // namespace rlcu
