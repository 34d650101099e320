// CPU policy and value losses, fused forward + backward (math in include/rlcu/rl_ops.h), per token in fp64:
//   policy_loss: clip: r = exp(logp - old_logp); gspo: r = exp(seq_log_ratio);
//                pg = max(-A r, -A clip(r, 1 - cl, 1 + ch)), dual clip for A < 0; dpg = -A r unclipped, 0 clipped;
//                cispo: pg = -clip(r, 1 - cl, 1 + ch) A logp, dpg = -clip(r, 1 - cl, 1 + ch) A;
//                kl from the k1/k2/k3 estimator; l = rho pg + kl_coef kl - ent_coef H (rho = is_weight or 1);
//                dlogp = w (rho dpg + kl_coef dkl); dentropy = -w ent_coef.
//   sequence_log_ratio: per packed sequence, the fp64 mean of logp - old_logp over its rows with w != 0.
//   rollout_correction: the TIS / MIS weights of the rollout policy against the recomputed old policy, per token or
//                per sequence, and their statistics.
//   value_loss:  l = 0.5 max((v - R)^2, (v_clip - R)^2), dv = w (v - R) unless the clipped term is strictly larger.
// Tokens with w = 0 get zero gradients and add nothing to the statistics (non-finite inputs there do not leak).
// Gradients overwrite; stats accumulate (+=) fp64 sums taken in token order, added to the F32 stats once per call.
// Sizes, dtypes and parameters are checked by kernels/contract/policy_loss.cpp; the CPU twin checks the cu_seqlens
// values it reads.
#include <cmath>

#include "reference.h"
#include "backends.h"

namespace rlcu::cpu {
namespace {

// cu_seqlens [S+1] I32 on the CPU covering exactly `rows` rows: 0 = cu[0] <= ... <= cu[S] = rows.
const int32_t* check_rows(const char* op, const Tensor& cu_seqlens, int64_t rows) {
  check::tensor(op, "cu_seqlens", cu_seqlens, DType::I32, 1);
  RLCU_CHECK(cu_seqlens.numel() >= 1, "{}: cu_seqlens has no element, expected S+1 >= 1", op);
  const int32_t* cu = cu_seqlens.ptr<int32_t>();
  RLCU_CHECK(cu[0] == 0, "{}: cu_seqlens[0] = {}, expected 0", op, cu[0]);
  for (int64_t s = 1; s < cu_seqlens.numel(); ++s)
    RLCU_CHECK(cu[s] >= cu[s - 1], "{}: cu_seqlens decreases at {} ({} < {})", op, s, cu[s], cu[s - 1]);
  RLCU_CHECK(cu[cu_seqlens.numel() - 1] == rows, "{}: cu_seqlens ends at {}, expected {} rows", op,
             cu[cu_seqlens.numel() - 1], rows);
  return cu;
}

}  // namespace

void policy_loss(const Tensor& dlogp, const Tensor& dentropy, const Tensor& stats, const Tensor& logp,
                 const Tensor& old_logp, const Tensor& ref_logp, const Tensor& adv, const Tensor& w,
                 const Tensor& entropy, const Tensor& is_weight, const Tensor& seq_log_ratio,
                 const rl::PolicyLossParams& p, Context& ctx) {
  const int64_t T = logp.numel();
  const bool use_kl = p.kl_coef != 0.0f;
  const bool use_ent = !entropy.empty();
  const bool use_is = !is_weight.empty();
  const bool gspo = p.kind == rl::PolicyLossKind::Gspo, cispo = p.kind == rl::PolicyLossKind::Cispo;

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
    const double r = gspo ? std::exp(static_cast<double>(seq_log_ratio.ptr<float>()[t]))
                          : std::exp(lp - static_cast<double>(old_logp.ptr<float>()[t]));
    const double rc = std::fmin(std::fmax(r, lo), hi);
    const double pg1 = -A * r;
    const double pg2 = -A * rc;
    double pg = pg1, dpg = -A * r;
    bool clip_low = false, clip_high = false, dual = false;
    if (cispo) {  // the clipped weight is a constant (stop-gradient) times log p
      pg = -rc * A * lp;
      dpg = -rc * A;
      clip_low = r < lo;
      clip_high = r > hi;
    } else if (pg2 > pg1) {  // the clipped constant is the max
      pg = pg2;
      dpg = 0.0;
      clip_low = A < 0;
      clip_high = A > 0;
    }
    if (!cispo && c > 0.0 && A < 0 && pg > -c * A) {
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
    const double rho = use_is ? static_cast<double>(is_weight.ptr<float>()[t]) : 1.0;
    const double l = rho * pg + kc * kl - ec * H;
    dlogp.ptr<float>()[t] = static_cast<float>(wt * (rho * dpg + kc * dkl));
    if (!dentropy.empty()) dentropy.ptr<float>()[t] = static_cast<float>(-wt * ec);
    sum[rl::kPsLoss] += wt * l;
    sum[rl::kPsPg] += wt * rho * pg;
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

void sequence_log_ratio(const Tensor& out, const Tensor& logp, const Tensor& old_logp, const Tensor& w,
                        const Tensor& cu_seqlens, Context& ctx) {
  const char* op = "sequence_log_ratio";
  const int64_t T = logp.numel();
  const int32_t* cu = check_rows(op, cu_seqlens, T);
  const int64_t S = cu_seqlens.numel() - 1;
  for (int64_t s = 0; s < S; ++s) {
    double sum = 0.0, n = 0.0;
    for (int64_t t = cu[s]; t < cu[s + 1]; ++t) {
      if (w.ptr<float>()[t] == 0.0f) continue;
      sum += static_cast<double>(logp.ptr<float>()[t]) - static_cast<double>(old_logp.ptr<float>()[t]);
      n += 1.0;
    }
    const float mean = n > 0.0 ? static_cast<float>(sum / n) : 0.0f;
    for (int64_t t = cu[s]; t < cu[s + 1]; ++t) out.ptr<float>()[t] = mean;
  }
}

void rollout_correction(const Tensor& weight, const Tensor& stats, const Tensor& old_logp, const Tensor& rollout_logp,
                        const Tensor& mask, const Tensor& cu_seqlens, const rl::RolloutCorrectionParams& p,
                        Context& ctx) {
  const char* op = "rollout_correction";
  const int64_t T = old_logp.numel();
  const int32_t* cu = check_rows(op, cu_seqlens, T);
  const int64_t N = cu_seqlens.numel() - 1;
  const double C = p.cap;
  const auto weight_of = [&](double rho) {
    switch (p.mode) {
      case rl::RolloutCorrection::Tis: return std::fmin(rho, C);
      case rl::RolloutCorrection::Mis: return rho >= 1.0 / C && rho <= C ? 1.0 : 0.0;
      case rl::RolloutCorrection::None: break;
    }
    return 1.0;
  };
  double st[rl::kRolloutCorrectionStats] = {};
  const auto unit = [&](double rho, double wgt) {
    st[rl::kRcRatioMin] = st[rl::kRcUnits] == 0.0 ? rho : std::fmin(st[rl::kRcRatioMin], rho);
    st[rl::kRcRatioMax] = st[rl::kRcUnits] == 0.0 ? rho : std::fmax(st[rl::kRcRatioMax], rho);
    st[rl::kRcRatioSum] += rho;
    st[rl::kRcMasked] += wgt == 0.0 ? 1.0 : 0.0;
    st[rl::kRcUnits] += 1.0;
  };
  const bool seq = p.level == rl::CorrectionLevel::Sequence;
  float* wo = weight.ptr<float>();
  for (int64_t s = 0; s < N; ++s) {
    double lr = 0.0, n = 0.0;
    for (int64_t t = cu[s]; t < cu[s + 1]; ++t) {
      wo[t] = 0.0f;
      if (mask.ptr<float>()[t] == 0.0f) continue;
      const double d = static_cast<double>(old_logp.ptr<float>()[t]) - static_cast<double>(rollout_logp.ptr<float>()[t]);
      st[rl::kRcAbsDiffSum] += std::fabs(d);
      st[rl::kRcAbsDiffMax] = std::fmax(st[rl::kRcAbsDiffMax], std::fabs(d));
      st[rl::kRcTokens] += 1.0;
      lr += d;
      n += 1.0;
      if (!seq) {
        const double rho = std::exp(d), wgt = weight_of(rho);
        unit(rho, wgt);
        wo[t] = static_cast<float>(wgt);
      }
    }
    if (seq && n > 0.0) {
      const double rho = std::exp(lr), wgt = weight_of(rho);
      unit(rho, wgt);
      for (int64_t t = cu[s]; t < cu[s + 1]; ++t)
        if (mask.ptr<float>()[t] != 0.0f) wo[t] = static_cast<float>(wgt);
    }
  }
  for (int k = 0; k < rl::kRolloutCorrectionStats; ++k) stats.ptr<float>()[k] = static_cast<float>(st[k]);
}

void value_loss(const Tensor& dv, const Tensor& stats, const Tensor& v, const Tensor& old_v, const Tensor& returns,
                const Tensor& w, const rl::ValueLossParams& p, Context& ctx) {
  const int64_t T = v.numel();
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
