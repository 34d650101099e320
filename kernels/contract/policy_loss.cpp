// Contracts of the loss-side RL ops of include/rlcu/rl_ops.h (kernels/op_table.inc rows with CONTRACT = 1): the F32
// per-token tensors of one length T (optional ones only when their feature is on), the F32 statistics vectors,
// cu_seqlens I32 [S+1] and the loss parameters. The backends keep what is theirs: the CPU twins
// (kernels/cpu/policy_loss.cpp) read and check the cu_seqlens values; the CUDA kernels (kernels/policy_loss.cu)
// cannot without a sync.
#include "contract/contract.h"

namespace rlcu::contract {

namespace {

void need_f32(const char* op, const char* name, const Tensor& t, int64_t n) {
  if (n == 0 && t.empty()) return;
  RLCU_CHECK(!t.empty(), "{}: {} is empty", op, name);
  RLCU_CHECK(t.dtype == DType::F32 && t.numel() == n, "{}: {} must be f32 of {} elements (got {} {})", op, name, n,
             dtype_name(t.dtype), t.shape_str());
}

void need_cu(const char* op, const Tensor& cu_seqlens) {
  RLCU_CHECK(!cu_seqlens.empty(), "{}: cu_seqlens is empty", op);
  RLCU_CHECK(cu_seqlens.dtype == DType::I32 && cu_seqlens.numel() >= 1, "{}: cu_seqlens must be i32 of S+1 >= 1 "
             "elements (got {} {})", op, dtype_name(cu_seqlens.dtype), cu_seqlens.shape_str());
}

}  // namespace

void policy_loss(const Tensor& dlogp, const Tensor& dentropy, const Tensor& stats, const Tensor& logp,
                 const Tensor& old_logp, const Tensor& ref_logp, const Tensor& adv, const Tensor& w,
                 const Tensor& entropy, const Tensor& is_weight, const Tensor& seq_log_ratio,
                 const rl::PolicyLossParams& p) {
  const char* op = "policy_loss";
  const int64_t T = logp.numel();
  need_f32(op, "logp", logp, T);
  need_f32(op, "dlogp", dlogp, T);
  need_f32(op, "old_logp", old_logp, T);
  need_f32(op, "adv", adv, T);
  need_f32(op, "w", w, T);
  need_f32(op, "stats", stats, rl::kPolicyStats);
  const bool use_ent = !entropy.empty();
  if (p.kl_coef != 0.0f) need_f32(op, "ref_logp", ref_logp, T);
  if (use_ent) need_f32(op, "entropy", entropy, T);
  RLCU_CHECK(p.ent_coef == 0.0f || use_ent, "{}: ent_coef = {} needs the entropy tensor", op, p.ent_coef);
  if (!dentropy.empty()) need_f32(op, "dentropy", dentropy, T);
  RLCU_CHECK(p.clip_low >= 0.0f && p.clip_high >= 0.0f, "{}: clip_low {} and clip_high {} must be >= 0", op,
             p.clip_low, p.clip_high);
  RLCU_CHECK(p.dual_clip == 0.0f || p.dual_clip > 1.0f, "{}: dual_clip {} must be 0 (off) or > 1", op, p.dual_clip);
  if (!is_weight.empty()) need_f32(op, "is_weight", is_weight, T);
  if (p.kind == rl::PolicyLossKind::Gspo) need_f32(op, "seq_log_ratio", seq_log_ratio, T);
  RLCU_CHECK(p.kind != rl::PolicyLossKind::Cispo || p.dual_clip == 0.0f, "{}: dual_clip does not apply to the cispo loss",
             op);
}

void sequence_log_ratio(const Tensor& out, const Tensor& logp, const Tensor& old_logp, const Tensor& w,
                        const Tensor& cu_seqlens) {
  const char* op = "sequence_log_ratio";
  const int64_t T = logp.numel();
  need_f32(op, "logp", logp, T);
  need_f32(op, "out", out, T);
  need_f32(op, "old_logp", old_logp, T);
  need_f32(op, "w", w, T);
  need_cu(op, cu_seqlens);
}

void rollout_correction(const Tensor& weight, const Tensor& stats, const Tensor& old_logp, const Tensor& rollout_logp,
                        const Tensor& mask, const Tensor& cu_seqlens, const rl::RolloutCorrectionParams& p) {
  const char* op = "rollout_correction";
  const int64_t T = old_logp.numel();
  need_f32(op, "old_logp", old_logp, T);
  need_f32(op, "weight", weight, T);
  need_f32(op, "rollout_logp", rollout_logp, T);
  need_f32(op, "mask", mask, T);
  need_f32(op, "stats", stats, rl::kRolloutCorrectionStats);
  RLCU_CHECK(p.cap > 1.0f, "{}: cap {} must be > 1", op, p.cap);
  need_cu(op, cu_seqlens);
}

void value_loss(const Tensor& dv, const Tensor& stats, const Tensor& v, const Tensor& old_v, const Tensor& returns,
                const Tensor& w, const rl::ValueLossParams& p) {
  const char* op = "value_loss";
  const int64_t T = v.numel();
  need_f32(op, "v", v, T);
  need_f32(op, "dv", dv, T);
  need_f32(op, "old_v", old_v, T);
  need_f32(op, "returns", returns, T);
  need_f32(op, "w", w, T);
  need_f32(op, "stats", stats, rl::kValueStats);
  RLCU_CHECK(p.clip >= 0.0f, "{}: clip {} must be >= 0", op, p.clip);
}

}  // namespace rlcu::contract
