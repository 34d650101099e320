// AdamW driver and learning-rate schedules (see include/rlcu/optimizer.h).
#include "rlcu/optimizer.h"

#include <cmath>

#include "rlcu/dist.h"
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

OptimizerKind optimizer_kind(const std::string& name) {
  if (name == "adamw") return OptimizerKind::AdamW;
  if (name == "adamw_8bit") return OptimizerKind::AdamW8bit;
  throw Error(fmt::format("optimizer.name: unknown optimizer '{}' (expected adamw or adamw_8bit)", name));
}

const char* optimizer_name(OptimizerKind k) { return k == OptimizerKind::AdamW8bit ? "adamw_8bit" : "adamw"; }

int64_t optimizer_state_bytes(OptimizerKind k, int64_t n) {
  if (k == OptimizerKind::AdamW) return 2 * n * static_cast<int64_t>(sizeof(float));
  const int64_t blocks = (n + ops::kAdamw8Block - 1) / ops::kAdamw8Block;
  return 2 * (n + blocks * static_cast<int64_t>(sizeof(float)));
}

AdamW::AdamW(const OptimizerSection& cfg, const Tensor& master, const Tensor& grad, const Tensor& weights,
             Context& ctx)
    : cfg_(cfg), kind_(optimizer_kind(cfg.name)), master_(master), grad_(grad), weights_(weights) {
  RLCU_CHECK(master.dtype == DType::F32 && grad.dtype == DType::F32, "AdamW needs F32 master weights and grads");
  RLCU_CHECK(master.numel() == grad.numel(), "master {} vs grad {}", master.numel(), grad.numel());
  RLCU_CHECK(weights.empty() || (weights.dtype == DType::BF16 && weights.numel() == master.numel()),
             "AdamW working weights must be BF16 of the master's size");
  const int64_t n = master.numel();
  norm_ = OwnedTensor::make(DType::F32, master.device, {1});
  if (kind_ == OptimizerKind::AdamW) {
    m_ = OwnedTensor::make(DType::F32, master.device, {n});
    v_ = OwnedTensor::make(DType::F32, master.device, {n});
    ops::fill(m_.t, 0.0f, ctx);
    ops::fill(v_.t, 0.0f, ctx);
    return;
  }
  // Zero moments: absmax 0 dequantises every code to 0; the codes start as byte 0 (what a save of them writes).
  const int64_t blocks = (n + ops::kAdamw8Block - 1) / ops::kAdamw8Block;
  m_ = OwnedTensor::make(DType::U8, master.device, {n});
  v_ = OwnedTensor::make(DType::U8, master.device, {n});
  m_absmax_ = OwnedTensor::make(DType::F32, master.device, {blocks});
  v_absmax_ = OwnedTensor::make(DType::F32, master.device, {blocks});
  for (const OwnedTensor* t : {&m_, &v_, &m_absmax_, &v_absmax_}) ctx.zero(t->t);
}

OptimizerStepStats AdamW::step(double lr, Context& ctx) {
  OptimizerStepStats st;
  st.lr = lr;
  if (comm_) comm_->all_reduce(grad_.view({-1}), dist::ReduceOp::Sum, ctx);
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
  const Tensor w = weights_.empty() ? Tensor() : weights_.view({-1});
  if (kind_ == OptimizerKind::AdamW)
    ops::adamw_update(master_.view({-1}), m_.t, v_.t, w, grad_.view({-1}), p, ctx);
  else
    ops::adamw8_update(master_.view({-1}), m_.t, m_absmax_.t, v_.t, v_absmax_.t, w, grad_.view({-1}), p, ctx);
  return st;
}

}  // namespace rlcu
