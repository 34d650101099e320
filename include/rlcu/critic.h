// The PPO critic: a separate copy of a decoder (initialised from the policy or another model directory) with a
// scalar value head, trained with the clipped value loss.
//
//   V[r] = h_f[r] . w_v        (h_f = the final hidden state of row r, w_v [H] the value head, zero-initialised)
// Row r is the state before completion token t (the row that predicts it), so V_t = V[row of t].
// Backward: dV (from rl::value_loss) -> dh_f[r] = dV[r] w_v (into Transformer::final_hidden_grad_buffer) and
// dw_v += sum_r dV[r] h_f[r]; then the decoder backward from the hidden states. Gradients ACCUMULATE over the
// micro-batches of one pass (accumulate_gradients zeroes them first).
// The critic owns its parameters, gradients and activations; the optimizers that step them (one for the decoder,
// one for the head, each clipping its own gradient norm) and the checkpointing of its state belong to the trainer.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "rlcu/context.h"
#include "rlcu/model.h"
#include "rlcu/rollout_batch.h"
#include "rlcu/tensor.h"

namespace rlcu::rl {

struct CriticOptions {
  std::string init;  // model directory
  int64_t max_tokens = 8192;
  bool checkpointing = false;
  double value_clip = 0.2;
};

class Critic {
 public:
  Critic(const CriticOptions& opt, Context& ctx);
  ~Critic();
  Critic(const Critic&) = delete;
  Critic& operator=(const Critic&) = delete;

  // batch.values [T]: V of every completion token from the current critic, also the "old" values of the clipped
  // value loss.
  void score(RolloutBatch& batch, const std::vector<Micro>& micros, Context& ctx);
  // One pass of the value loss over the micro-batches: zeroes the decoder's and the head's gradients and the
  // statistics, then per micro-batch the forward, rl::value_loss against batch.values (old values) and
  // batch.returns with batch.loss_weights, and the backward.
  void accumulate_gradients(const RolloutBatch& batch, const std::vector<Micro>& micros, Context& ctx);
  // The value-loss statistics of the last pass ([rl::kValueStats], see rl::value_loss); synchronises.
  std::vector<float> read_stats(Context& ctx) const;

  // The trainable parameters: the decoder's (Model::flat_master / flat_grads / flat_weights) and the value head's.
  Model& model() { return *model_; }
  const Model& model() const { return *model_; }
  struct Head {
    Tensor master, grad;  // F32 [H]
    Tensor weights;       // the working copy in the activation dtype on CUDA; empty on the CPU (master is used)
  };
  Head head() const;
  // Recomputes the head's working copy from its master (after the master was restored).
  void refresh_head_weights(Context& ctx);

 private:
  // Forward of one micro-batch; fills vals_ rows [0, T) (F32).
  void forward(const Micro& mb, Context& ctx);

  CriticOptions opt_;
  std::unique_ptr<Model> model_;
  std::unique_ptr<Transformer> tf_;
  OwnedTensor head_master_, head_grad_, head_w_;  // w_v: F32 master + grad, working copy in the act dtype
  OwnedTensor vals_, dv_, dv_act_, old_v_, ret_, w_, stats_, lp_;
};

}  // namespace rlcu::rl
