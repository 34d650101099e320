// AdamW over one flat F32 master-weight buffer: global gradient L2 norm, clipping to optimizer.max_grad_norm,
// the fused update (ops::adamw_update, which also writes the BF16 working copy when there is one), and the
// learning-rate schedules (constant / linear / cosine after linear warm-up).
//
// Gradients are not cleared here: the trainer zeroes them (ops::fill) before accumulating the next step.
#pragma once

#include <cstdint>

#include "rlcu/config.h"
#include "rlcu/context.h"
#include "rlcu/tensor.h"

namespace rlcu {

// Learning rate for optimizer step `step` (0-based) of `total_steps`: linear warm-up from lr/warmup to lr over
// `warmup_steps`, then constant, or linear / cosine decay to lr * min_lr_ratio at the last step.
double lr_at(const OptimizerSection& cfg, int64_t step, int64_t total_steps);

struct OptimizerStepStats {
  double grad_norm = 0;  // before clipping
  double clip_scale = 1;  // factor applied to the gradients (1 = not clipped)
  double lr = 0;
};

class AdamW {
 public:
  // master: F32 [n]; grad: F32 [n]; weights: BF16 [n] working copy or an empty Tensor (CPU: master is the weights).
  // Allocates the two moment buffers (zeroed) on the master's device.
  AdamW(const OptimizerSection& cfg, const Tensor& master, const Tensor& grad, const Tensor& weights, Context& ctx);

  // One update with learning rate `lr`; synchronises once to read the gradient norm.
  OptimizerStepStats step(double lr, Context& ctx);

  int64_t steps_done() const { return step_; }
  void set_steps_done(int64_t s) { step_ = s; }
  const Tensor& exp_avg() const { return m_.t; }
  const Tensor& exp_avg_sq() const { return v_.t; }

 private:
  OptimizerSection cfg_;
  Tensor master_, grad_, weights_;
  OwnedTensor m_, v_, norm_;
  int64_t step_ = 0;
};

}  // namespace rlcu
