// AdamW over one flat F32 master-weight buffer: global gradient L2 norm, clipping to optimizer.max_grad_norm,
// the fused update (ops::adamw_update, which also writes the BF16 working copy when there is one), and the
// learning-rate schedules (constant / linear / cosine after linear warm-up).
// optimizer.name = adamw_8bit keeps the two moments blockwise-quantised instead (ops::adamw8_update: U8 codes per
// element and an F32 absmax per block of ops::kAdamw8Block elements, kernels/adamw8_common.h); the masters stay F32.
//
// Gradients are not cleared here: the trainer zeroes them (ops::fill) before accumulating the next step.
// Data parallel (set_communicator): step() first sums the gradients over the ranks (all_reduce, in place), so the
// norm, the clipping and the update are those of the global batch and identical on every rank (replicated state).
#pragma once

#include <cstdint>
#include <string>

#include "rlcu/config.h"
#include "rlcu/context.h"
#include "rlcu/tensor.h"

namespace rlcu {

namespace dist {
class Communicator;
}

// Learning rate for optimizer step `step` (0-based) of `total_steps`: linear warm-up from lr/warmup to lr over
// `warmup_steps`, then constant, or linear / cosine decay to lr * min_lr_ratio at the last step.
double lr_at(const OptimizerSection& cfg, int64_t step, int64_t total_steps);

struct OptimizerStepStats {
  double grad_norm = 0;  // before clipping
  double clip_scale = 1;  // factor applied to the gradients (1 = not clipped)
  double lr = 0;
};

enum class OptimizerKind { AdamW, AdamW8bit };
// optimizer.name parsed ("adamw" | "adamw_8bit"); throws naming the key otherwise.
OptimizerKind optimizer_kind(const std::string& name);
const char* optimizer_name(OptimizerKind k);
// Bytes of optimizer state (the moments) for n parameters.
int64_t optimizer_state_bytes(OptimizerKind k, int64_t n);

class AdamW {
 public:
  // master: F32 [n]; grad: F32 [n]; weights: BF16 [n] working copy or an empty Tensor (CPU: master is the weights).
  // Allocates the two moment buffers (zeroed) on the master's device.
  AdamW(const OptimizerSection& cfg, const Tensor& master, const Tensor& grad, const Tensor& weights, Context& ctx);

  // One update with learning rate `lr`; synchronises once to read the gradient norm.
  OptimizerStepStats step(double lr, Context& ctx);

  // Sums the gradients over `comm`'s ranks at the start of every step (null: this process's gradients only).
  void set_communicator(dist::Communicator* comm) { comm_ = comm; }

  int64_t steps_done() const { return step_; }
  void set_steps_done(int64_t s) { step_ = s; }
  OptimizerKind kind() const { return kind_; }
  // adamw: the F32 moments [n]. adamw_8bit: the U8 codes [n]; *_absmax() are the F32 scales [ceil(n / 256)].
  const Tensor& exp_avg() const { return m_.t; }
  const Tensor& exp_avg_sq() const { return v_.t; }
  const Tensor& exp_avg_absmax() const { return m_absmax_.t; }
  const Tensor& exp_avg_sq_absmax() const { return v_absmax_.t; }

 private:
  OptimizerSection cfg_;
  OptimizerKind kind_ = OptimizerKind::AdamW;
  Tensor master_, grad_, weights_;
  OwnedTensor m_, v_, m_absmax_, v_absmax_, norm_;
  int64_t step_ = 0;
  dist::Communicator* comm_ = nullptr;
};

}  // namespace rlcu
