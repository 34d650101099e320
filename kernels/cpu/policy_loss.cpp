// CPU policy and value losses, fused forward + backward (math in include/rlcu/rl_ops.h), per token in fp64:
//   policy_loss: r = exp(logp - old_logp); pg = max(-A r, -A clip(r, 1 - cl, 1 + ch)), dual clip for A < 0;
//                kl from the k1/k2/k3 estimator; l = pg + kl_coef kl - ent_coef H;
//                dlogp = w (dpg + kl_coef dkl) with dpg = -A r on the unclipped branch, 0 on a clipped one;
//                dentropy = -w ent_coef.
//   value_loss:  l = 0.5 max((v - R)^2, (v_clip - R)^2), dv = w (v - R) unless the clipped term is strictly larger.
// Tokens with w = 0 get zero gradients and add nothing to the statistics (non-finite inputs there do not leak).
// Gradients overwrite; stats accumulate (+=) fp64 sums taken in token order, added to the F32 stats once per call.
#include <cmath>

#include "reference.h"
#include "rlcu/rl_ops.h"

namespace rlcu::cpu {
#include "rl_op_list.inc"

namespace {

void need_f32(const char* op, const char* name, const Tensor& t, int64_t n) {
  if (n == 0 && t.empty()) return;
  check::tensor(op, name, t, DType::F32);
  check::numel(op, name, t, n);
}

}  // namespace

void policy_loss(const Tensor& dlogp, const Tensor& dentropy, const Tensor& stats, const Tensor& logp,
                 const Tensor& old_logp, const Tensor& ref_logp, const Tensor& adv, const Tensor& w,
                 const Tensor& entropy, const rl::PolicyLossParams& p, Context& ctx) {
  const char* op = "policy_loss";
  const int64_t T = logp.numel();
  need_f32(op, "logp", logp, T);
  need_f32(op, "dlogp", dlogp, T);
  need_f32(op, "old_logp", old_logp, T);
  need_f32(op, "adv", adv, T);
  need_f32(op, "w", w, T);
  check::tensor(op, "stats", stats, DType::F32);
  check::numel(op, "stats", stats, rl::kPolicyStats);
  const bool use_kl = p.kl_coef != 0.0f;
  const bool use_ent = !entropy.empty();
  if (use_kl) need_f32(op, "ref_logp", ref_logp, T);
  if (use_ent) need_f32(op, "entropy", entropy, T);
  RLCU_CHECK(p.ent_coef == 0.0f || use_ent, "{}: ent_coef = {} needs the entropy tensor", op, p.ent_coef);
  if (!dentropy.empty()) need_f32(op, "dentropy", dentropy, T);
  RLCU_CHECK(p.clip_low >= 0.0f && p.clip_high >= 0.0f, "{}: clip_low {} and clip_high {} must be >= 0", op,
             p.clip_low, p.clip_high);
  RLCU_CHECK(p.dual_clip == 0.0f || p.dual_clip > 1.0f, "{}: dual_clip {} must be 0 (off) or > 1", op, p.dual_clip);

  const double lo = 1.0 - static_cast<double>(p.clip_low), hi = 1.0 + static_cast<double>(p.clip_high);
  const double c = p.dual_clip, kc = p.kl_coef, ec = p.ent_coef;
  double sum[rl::kPolicyStats] = {};
  for (int64_t t = 0; t < T; ++t) {
    const double wt = w.ptr<float>()[t];
    if (wt == 0.0) {  // masked: no gradient, no statistics, whatever the other inputs hold
      dlogp.ptr<float>()[t] = 0.0f;
      if (!dentropy.empty()) dentropy.ptr<float>()[t] = 0.0f;
      continue;
    }
    const double lp = logp.ptr<float>()[t], A = adv.ptr<float>()[t];
    const double r = std::exp(lp - static_cast<double>(old_logp.ptr<float>()[t]));
    const double pg1 = -A * r;
    const double pg2 = -A * std::fmin(std::fmax(r, lo), hi);
    double pg = pg1, dpg = -A * r;
    bool clip_low = false, clip_high = false, dual = false;
    if (pg2 > pg1) {  // the clipped constant is the max
      pg = pg2;
      dpg = 0.0;
      clip_low = A < 0;
      clip_high = A > 0;
    }
    if (c > 0.0 && A < 0 && pg > -c * A) {
      pg = -c * A;
      dpg = 0.0;
      dual = true;
    }
    double kl = 0.0, dkl = 0.0;
    if (use_kl) {
      const double x = static_cast<double>(ref_logp.ptr<float>()[t]) - lp;
      switch (p.kl) {
        case rl::KlEstimator::K1: kl = -x; dkl = 1.0; break;
        case rl::KlEstimator::K2: kl = 0.5 * x * x; dkl = -x; break;
        case rl::KlEstimator::K3: kl = std::exp(x) - x - 1.0; dkl = 1.0 - std::exp(x); break;
      }
    }
    const double H = use_ent ? static_cast<double>(entropy.ptr<float>()[t]) : 0.0;
    const double l = pg + kc * kl - ec * H;
    dlogp.ptr<float>()[t] = static_cast<float>(wt * (dpg + kc * dkl));
    if (!dentropy.empty()) dentropy.ptr<float>()[t] = static_cast<float>(-wt * ec);
    sum[rl::kPsLoss] += wt * l;
    sum[rl::kPsPg] += wt * pg;
    sum[rl::kPsKl] += wt * kl;
    sum[rl::kPsKlSum] += kl;
    sum[rl::kPsEntropySum] += H;
    sum[rl::kPsClipLow] += clip_low ? 1.0 : 0.0;
    sum[rl::kPsClipHigh] += clip_high ? 1.0 : 0.0;
    sum[rl::kPsDualClip] += dual ? 1.0 : 0.0;
    sum[rl::kPsAbsRatioDev] += std::fabs(r - 1.0);
    sum[rl::kPsTokens] += 1.0;
  }
  for (int k = 0; k < rl::kPolicyStats; ++k) stats.ptr<float>()[k] += static_cast<float>(sum[k]);
}

void value_loss(const Tensor& dv, const Tensor& stats, const Tensor& v, const Tensor& old_v, const Tensor& returns,
                const Tensor& w, const rl::ValueLossParams& p, Context& ctx) {
  const char* op = "value_loss";
  const int64_t T = v.numel();
  need_f32(op, "v", v, T);
  need_f32(op, "dv", dv, T);
  need_f32(op, "old_v", old_v, T);
  need_f32(op, "returns", returns, T);
  need_f32(op, "w", w, T);
  check::tensor(op, "stats", stats, DType::F32);
  check::numel(op, "stats", stats, rl::kValueStats);
  RLCU_CHECK(p.clip >= 0.0f, "{}: clip {} must be >= 0", op, p.clip);
  const double eps = p.clip;
  double sum[rl::kValueStats] = {};
  for (int64_t t = 0; t < T; ++t) {
    const double wt = w.ptr<float>()[t];
    if (wt == 0.0) {  // masked: no gradient, no statistics
      dv.ptr<float>()[t] = 0.0f;
      continue;
    }
    const double vt = v.ptr<float>()[t], ov = old_v.ptr<float>()[t], R = returns.ptr<float>()[t];
    const double vc = eps > 0.0 ? ov + std::fmin(std::fmax(vt - ov, -eps), eps) : vt;
    const double l1 = (vt - R) * (vt - R), l2 = (vc - R) * (vc - R);
    const bool clipped = l2 > l1;
    const double l = 0.5 * (clipped ? l2 : l1);
    dv.ptr<float>()[t] = static_cast<float>(clipped ? 0.0 : wt * (vt - R));
    sum[rl::kVsLoss] += wt * l;
    sum[rl::kVsClipped] += clipped ? 1.0 : 0.0;
    sum[rl::kVsTokens] += 1.0;
  }
  for (int k = 0; k < rl::kValueStats; ++k) stats.ptr<float>()[k] += static_cast<float>(sum[k]);
}

}  // namespace rlcu::cpu
