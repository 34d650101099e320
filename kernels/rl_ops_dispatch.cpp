// Dispatch of include/rlcu/rl_ops.h to the CPU (kernels/cpu/advantage.cpp, kernels/cpu/policy_loss.cpp) or CUDA
// (kernels/advantage.cu, kernels/policy_loss.cu) implementation by the device of the first tensor; CUDA calls are
// recorded by the op profiler.
#include "rlcu/rl_ops.h"

#include <initializer_list>

#include "cuda_backend.h"
#include "rlcu/profile.h"

namespace rlcu {
namespace cpu {
#include "rl_op_list.inc"
}  // namespace cpu
namespace cuda {
#include "rl_op_list.inc"
}  // namespace cuda

namespace rl {

namespace {
void check_same_device(const char* op, Device d, std::initializer_list<const Tensor*> ts) {
  for (const Tensor* t : ts)
    RLCU_CHECK(t->empty() || t->device == d, "{}: tensors on different devices ({} vs {})", op, device_name(t->device),
               device_name(d));
}
}  // namespace

void group_advantages(const Tensor& adv, const Tensor& rewards, const GroupAdvantageParams& p, Context& ctx) {
  check_same_device("group_advantages", adv.device, {&adv, &rewards});
  if (adv.device == Device::CPU) {
    cpu::group_advantages(adv, rewards, p, ctx);
    return;
  }
  ProfileScope prof_("group_advantages", ctx);
  RLCU_CUDA_BACKEND(cuda::group_advantages(adv, rewards, p, ctx));
}

void rloo_advantages(const Tensor& adv, const Tensor& rewards, int group_size, Context& ctx) {
  check_same_device("rloo_advantages", adv.device, {&adv, &rewards});
  if (adv.device == Device::CPU) {
    cpu::rloo_advantages(adv, rewards, group_size, ctx);
    return;
  }
  ProfileScope prof_("rloo_advantages", ctx);
  RLCU_CUDA_BACKEND(cuda::rloo_advantages(adv, rewards, group_size, ctx));
}

void reinforce_pp_advantages(const Tensor& adv, const Tensor& returns, const Tensor& seq_rewards,
                             const Tensor& old_logp, const Tensor& ref_logp, const Tensor& cu_seqlens,
                             const ReturnsParams& p, Context& ctx) {
  check_same_device("reinforce_pp_advantages", adv.device, {&adv, &returns, &seq_rewards, &old_logp, &ref_logp, &cu_seqlens});
  if (adv.device == Device::CPU) {
    cpu::reinforce_pp_advantages(adv, returns, seq_rewards, old_logp, ref_logp, cu_seqlens, p, ctx);
    return;
  }
  ProfileScope prof_("reinforce_pp_advantages", ctx);
  RLCU_CUDA_BACKEND(cuda::reinforce_pp_advantages(adv, returns, seq_rewards, old_logp, ref_logp, cu_seqlens, p, ctx));
}

void gae_advantages(const Tensor& adv, const Tensor& returns, const Tensor& values, const Tensor& seq_rewards,
                    const Tensor& old_logp, const Tensor& ref_logp, const Tensor& cu_seqlens, const GaeParams& p,
                    Context& ctx) {
  check_same_device("gae_advantages", adv.device, {&adv, &returns, &values, &seq_rewards, &old_logp, &ref_logp, &cu_seqlens});
  if (adv.device == Device::CPU) {
    cpu::gae_advantages(adv, returns, values, seq_rewards, old_logp, ref_logp, cu_seqlens, p, ctx);
    return;
  }
  ProfileScope prof_("gae_advantages", ctx);
  RLCU_CUDA_BACKEND(cuda::gae_advantages(adv, returns, values, seq_rewards, old_logp, ref_logp, cu_seqlens, p, ctx));
}

void broadcast_to_tokens(const Tensor& out, const Tensor& seq_values, const Tensor& cu_seqlens, Context& ctx) {
  check_same_device("broadcast_to_tokens", out.device, {&out, &seq_values, &cu_seqlens});
  if (out.device == Device::CPU) {
    cpu::broadcast_to_tokens(out, seq_values, cu_seqlens, ctx);
    return;
  }
  ProfileScope prof_("broadcast_to_tokens", ctx);
  RLCU_CUDA_BACKEND(cuda::broadcast_to_tokens(out, seq_values, cu_seqlens, ctx));
}

void loss_weights(const Tensor& w, const Tensor& cu_seqlens, const Tensor& seq_scale, const LossWeightParams& p,
                  Context& ctx) {
  check_same_device("loss_weights", w.device, {&w, &cu_seqlens, &seq_scale});
  if (w.device == Device::CPU) {
    cpu::loss_weights(w, cu_seqlens, seq_scale, p, ctx);
    return;
  }
  ProfileScope prof_("loss_weights", ctx);
  RLCU_CUDA_BACKEND(cuda::loss_weights(w, cu_seqlens, seq_scale, p, ctx));
}

void policy_loss(const Tensor& dlogp, const Tensor& dentropy, const Tensor& stats, const Tensor& logp,
                 const Tensor& old_logp, const Tensor& ref_logp, const Tensor& adv, const Tensor& w,
                 const Tensor& entropy, const Tensor& is_weight, const Tensor& seq_log_ratio,
                 const PolicyLossParams& p, Context& ctx) {
  check_same_device("policy_loss", dlogp.device,
                    {&dlogp, &dentropy, &stats, &logp, &old_logp, &ref_logp, &adv, &w, &entropy, &is_weight,
                     &seq_log_ratio});
  if (dlogp.device == Device::CPU) {
    cpu::policy_loss(dlogp, dentropy, stats, logp, old_logp, ref_logp, adv, w, entropy, is_weight, seq_log_ratio, p,
                     ctx);
    return;
  }
  ProfileScope prof_("policy_loss", ctx);
  RLCU_CUDA_BACKEND(cuda::policy_loss(dlogp, dentropy, stats, logp, old_logp, ref_logp, adv, w, entropy, is_weight,
                                      seq_log_ratio, p, ctx));
}

void sequence_log_ratio(const Tensor& out, const Tensor& logp, const Tensor& old_logp, const Tensor& w,
                        const Tensor& cu_seqlens, Context& ctx) {
  check_same_device("sequence_log_ratio", out.device, {&out, &logp, &old_logp, &w, &cu_seqlens});
  if (out.device == Device::CPU) {
    cpu::sequence_log_ratio(out, logp, old_logp, w, cu_seqlens, ctx);
    return;
  }
  ProfileScope prof_("sequence_log_ratio", ctx);
  RLCU_CUDA_BACKEND(cuda::sequence_log_ratio(out, logp, old_logp, w, cu_seqlens, ctx));
}

void rollout_correction(const Tensor& weight, const Tensor& stats, const Tensor& old_logp, const Tensor& rollout_logp,
                        const Tensor& mask, const Tensor& cu_seqlens, const RolloutCorrectionParams& p, Context& ctx) {
  check_same_device("rollout_correction", weight.device, {&weight, &stats, &old_logp, &rollout_logp, &mask, &cu_seqlens});
  if (weight.device == Device::CPU) {
    cpu::rollout_correction(weight, stats, old_logp, rollout_logp, mask, cu_seqlens, p, ctx);
    return;
  }
  ProfileScope prof_("rollout_correction", ctx);
  RLCU_CUDA_BACKEND(cuda::rollout_correction(weight, stats, old_logp, rollout_logp, mask, cu_seqlens, p, ctx));
}

void value_loss(const Tensor& dv, const Tensor& stats, const Tensor& v, const Tensor& old_v, const Tensor& returns,
                const Tensor& w, const ValueLossParams& p, Context& ctx) {
  check_same_device("value_loss", dv.device, {&dv, &stats, &v, &old_v, &returns, &w});
  if (dv.device == Device::CPU) {
    cpu::value_loss(dv, stats, v, old_v, returns, w, p, ctx);
    return;
  }
  ProfileScope prof_("value_loss", ctx);
  RLCU_CUDA_BACKEND(cuda::value_loss(dv, stats, v, old_v, returns, w, p, ctx));
}

}  // namespace rl
}  // namespace rlcu
