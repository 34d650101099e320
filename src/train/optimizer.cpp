// AdamW driver and learning-rate schedules (see include/rlcu/optimizer.h).
#include "rlcu/optimizer.h"

#include <cmath>

#include "rlcu/error.h"
#include "rlcu/ops.h"

namespace rlcu {

double lr_at(const OptimizerSection& cfg, int64_t step, int64_t total_steps) {
  RLCU_CHECK(step >= 0, "negative step {}", step);
  const double peak = cfg.lr;
  if (step < cfg.warmup_steps) return peak * static_cast<double>(step + 1) / static_cast<double>(cfg.warmup_steps);
  if (cfg.lr_schedule == "constant") return peak;
  const int64_t decay_steps = total_steps - cfg.warmup_steps;
  if (decay_steps <= 1) return peak;
  const double progress =
      std::min(1.0, static_cast<double>(step - cfg.warmup_steps) / static_cast<double>(decay_steps - 1));
  const double floor = peak * cfg.min_lr_ratio;
  if (cfg.lr_schedule == "linear") return floor + (peak - floor) * (1.0 - progress);
  if (cfg.lr_schedule == "cosine") return floor + (peak - floor) * 0.5 * (1.0 + std::cos(M_PI * progress));
  throw Error(fmt::format("optimizer.lr_schedule: unknown schedule '{}'", cfg.lr_schedule));
}

AdamW::AdamW(const OptimizerSection& cfg, const Tensor& master, const Tensor& grad, const Tensor& weights,
             Context& ctx)
    : cfg_(cfg), master_(master), grad_(grad), weights_(weights) {
  RLCU_CHECK(master.dtype == DType::F32 && grad.dtype == DType::F32, "AdamW needs F32 master weights and grads");
  RLCU_CHECK(master.numel() == grad.numel(), "master {} vs grad {}", master.numel(), grad.numel());
  RLCU_CHECK(weights.empty() || (weights.dtype == DType::BF16 && weights.numel() == master.numel()),
             "AdamW working weights must be BF16 of the master's size");
  const int64_t n = master.numel();
  m_ = OwnedTensor::make(DType::F32, master.device, {n});
  v_ = OwnedTensor::make(DType::F32, master.device, {n});
  norm_ = OwnedTensor::make(DType::F32, master.device, {1});
  ops::fill(m_.t, 0.0f, ctx);
  ops::fill(v_.t, 0.0f, ctx);
}

OptimizerStepStats AdamW::step(double lr, Context& ctx) {
  OptimizerStepStats st;
  st.lr = lr;
  ops::sum_squares(norm_.t, grad_.view({-1}), ctx);
  float sumsq = 0;
  copy_bytes(Tensor(&sumsq, DType::F32, Device::CPU, {1}), norm_.t);  // the step's one sync point
  st.grad_norm = std::sqrt(static_cast<double>(sumsq));
  if (!std::isfinite(st.grad_norm))
    throw Error(fmt::format("gradient norm is {} at optimizer step {}: the update was skipped and training stops "
                            "(lower optimizer.lr or check the data)",
                            st.grad_norm, step_ + 1));
  if (cfg_.max_grad_norm > 0 && st.grad_norm > cfg_.max_grad_norm) st.clip_scale = cfg_.max_grad_norm / st.grad_norm;
  ++step_;
  ops::AdamWParams p;
  p.lr = static_cast<float>(lr);
  p.beta1 = static_cast<float>(cfg_.beta1);
  p.beta2 = static_cast<float>(cfg_.beta2);
  p.eps = static_cast<float>(cfg_.eps);
  p.weight_decay = static_cast<float>(cfg_.weight_decay);
  p.grad_scale = static_cast<float>(st.clip_scale);
  p.step = step_;
  ops::adamw_update(master_.view({-1}), m_.t, v_.t, weights_.empty() ? Tensor() : weights_.view({-1}),
                    grad_.view({-1}), p, ctx);
  return st;
}

}  // namespace rlcu
