// Policy and value losses on CUDA, fused forward + backward (math in include/rlcu/rl_ops.h; CPU twin
// kernels/cpu/policy_loss.cpp), GSPO's sequence log-ratio and the rollout-correction weights.
//
// sequence_log_ratio and rollout_correction run one block per sequence: the block sums its rows in fp64 with a
// fixed-order tree and writes the sequence's value to its rows; rollout_correction's per-sequence statistics go to
// partial[seq][k] and a one-block pass combines them in sequence order (sums, mins, maxes) and OVERWRITES stats.
//
// One pass over the T tokens of a micro-batch: each thread takes a grid-stride slice, evaluates the per-token loss
// and gradient in fp64 (the same expressions as the CPU twin, so clip-branch decisions agree) and writes dlogp /
// dentropy (or dv) — overwrite; a token with w = 0 gets zero gradients and adds nothing to the statistics. The statistics are summed per thread in fp64, tree-reduced per block in a fixed order
// into partial[block][k]; a one-block pass adds the block partials in block order and ACCUMULATES (+=) them into the
// F32 stats vector. The grid size depends on T only, so the same inputs give the same bits. No atomics.
// Sizes, dtypes and parameters are checked before the call (kernels/contract/policy_loss.cpp).
#include <algorithm>
#include <cmath>

#include "cuda_common.cuh"
#include "backends.h"

namespace rlcu::cuda {
namespace {

constexpr int kLossThreads = 256;
constexpr int kLossMaxBlocks = 256;

struct PolicyConsts {
  double lo, hi, dual, kl_coef, ent_coef;
  int kl;    // rl::KlEstimator as int
  int kind;  // rl::PolicyLossKind as int
};

__global__ void policy_loss_kernel(float* __restrict__ dlogp, float* __restrict__ dentropy,
                                   double* __restrict__ partial, const float* __restrict__ logp,
                                   const float* __restrict__ old_logp, const float* __restrict__ ref_logp,
                                   const float* __restrict__ adv, const float* __restrict__ w,
                                   const float* __restrict__ entropy, const float* __restrict__ is_weight,
                                   const float* __restrict__ seq_log_ratio, int64_t T, PolicyConsts c) {
  const bool gspo = c.kind == static_cast<int>(rl::PolicyLossKind::Gspo);
  const bool cispo = c.kind == static_cast<int>(rl::PolicyLossKind::Cispo);
  __shared__ double red[32];
  double acc[rl::kPolicyStats];
#pragma unroll
  for (int k = 0; k < rl::kPolicyStats; ++k) acc[k] = 0.0;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < T;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const double wt = w[t];
    if (wt == 0.0) {  // masked: no gradient, no statistics, whatever the other inputs hold
      dlogp[t] = 0.0f;
      if (dentropy) dentropy[t] = 0.0f;
      continue;
    }
    const double lp = logp[t], A = adv[t];
    const double r = gspo ? exp(static_cast<double>(seq_log_ratio[t])) : exp(lp - static_cast<double>(old_logp[t]));
    const double rc = fmin(fmax(r, c.lo), c.hi);
    const double pg1 = -A * r;
    const double pg2 = -A * rc;
    double pg = pg1, dpg = -A * r;
    bool clip_low = false, clip_high = false, dual = false;
    if (cispo) {  // the clipped weight is a constant (stop-gradient) times log p
      pg = -rc * A * lp;
      dpg = -rc * A;
      clip_low = r < c.lo;
      clip_high = r > c.hi;
    } else if (pg2 > pg1) {
      pg = pg2;
      dpg = 0.0;
      clip_low = A < 0;
      clip_high = A > 0;
    }
    if (!cispo && c.dual > 0.0 && A < 0 && pg > -c.dual * A) {
      pg = -c.dual * A;
      dpg = 0.0;
      dual = true;
    }
    double kl = 0.0, dkl = 0.0;
    if (ref_logp) {
      const double x = static_cast<double>(ref_logp[t]) - lp;
      if (c.kl == static_cast<int>(rl::KlEstimator::K1)) {
        kl = -x;
        dkl = 1.0;
      } else if (c.kl == static_cast<int>(rl::KlEstimator::K2)) {
        kl = 0.5 * x * x;
        dkl = -x;
      } else {
        const double ex = exp(x);
        kl = ex - x - 1.0;
        dkl = 1.0 - ex;
      }
    }
    const double H = entropy ? static_cast<double>(entropy[t]) : 0.0;
    const double rho = is_weight ? static_cast<double>(is_weight[t]) : 1.0;
    const double l = rho * pg + c.kl_coef * kl - c.ent_coef * H;
    dlogp[t] = static_cast<float>(wt * (rho * dpg + c.kl_coef * dkl));
    if (dentropy) dentropy[t] = static_cast<float>(-wt * c.ent_coef);
    acc[rl::kPsLoss] += wt * l;
    acc[rl::kPsPg] += wt * rho * pg;
    acc[rl::kPsKl] += wt * kl;
    acc[rl::kPsKlSum] += kl;
    acc[rl::kPsEntropySum] += H;
    acc[rl::kPsClipLow] += clip_low ? 1.0 : 0.0;
    acc[rl::kPsClipHigh] += clip_high ? 1.0 : 0.0;
    acc[rl::kPsDualClip] += dual ? 1.0 : 0.0;
    acc[rl::kPsAbsRatioDev] += fabs(r - 1.0);
    acc[rl::kPsTokens] += 1.0;
  }
#pragma unroll
  for (int k = 0; k < rl::kPolicyStats; ++k) {
    const double v = block_sum(acc[k], red);
    if (threadIdx.x == 0) partial[static_cast<int64_t>(blockIdx.x) * rl::kPolicyStats + k] = v;
  }
}

__global__ void value_loss_kernel(float* __restrict__ dv, double* __restrict__ partial, const float* __restrict__ v,
                                  const float* __restrict__ old_v, const float* __restrict__ returns,
                                  const float* __restrict__ w, int64_t T, double clip) {
  __shared__ double red[32];
  double acc[rl::kValueStats] = {0.0, 0.0, 0.0};
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < T;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const double wt = w[t];
    if (wt == 0.0) {  // masked: no gradient, no statistics
      dv[t] = 0.0f;
      continue;
    }
    const double vt = v[t], ov = old_v[t], R = returns[t];
    const double vc = clip > 0.0 ? ov + fmin(fmax(vt - ov, -clip), clip) : vt;
    const double l1 = (vt - R) * (vt - R), l2 = (vc - R) * (vc - R);
    const bool clipped = l2 > l1;
    const double l = 0.5 * (clipped ? l2 : l1);
    dv[t] = static_cast<float>(clipped ? 0.0 : wt * (vt - R));
    acc[rl::kVsLoss] += wt * l;
    acc[rl::kVsClipped] += clipped ? 1.0 : 0.0;
    acc[rl::kVsTokens] += 1.0;
  }
#pragma unroll
  for (int k = 0; k < rl::kValueStats; ++k) {
    const double s = block_sum(acc[k], red);
    if (threadIdx.x == 0) partial[static_cast<int64_t>(blockIdx.x) * rl::kValueStats + k] = s;
  }
}

// stats[k] += sum over blocks b (in order) of partial[b][k]; one thread per statistic.
__global__ void stats_finish_kernel(float* __restrict__ stats, const double* __restrict__ partial, int blocks,
                                    int n_stats) {
  const int k = threadIdx.x;
  if (k >= n_stats) return;
  double s = 0.0;
  for (int b = 0; b < blocks; ++b) s += partial[static_cast<int64_t>(b) * n_stats + k];
  stats[k] += static_cast<float>(s);
}

struct MinOpD {
  __device__ __forceinline__ double operator()(double a, double b) const { return fmin(a, b); }
};
struct MaxOpD {
  __device__ __forceinline__ double operator()(double a, double b) const { return fmax(a, b); }
};

// One block per sequence s: the mean of logp - old_logp over its rows with w != 0, written to all its rows.
__global__ void sequence_log_ratio_kernel(float* __restrict__ out, const float* __restrict__ logp,
                                          const float* __restrict__ old_logp, const float* __restrict__ w,
                                          const int32_t* __restrict__ cu) {
  __shared__ double red[32];
  const int64_t b = cu[blockIdx.x], e = cu[blockIdx.x + 1];
  double sum = 0.0, n = 0.0;
  for (int64_t t = b + threadIdx.x; t < e; t += blockDim.x) {
    if (w[t] == 0.0f) continue;
    sum += static_cast<double>(logp[t]) - static_cast<double>(old_logp[t]);
    n += 1.0;
  }
  sum = block_sum(sum, red);
  n = block_sum(n, red);
  const float mean = n > 0.0 ? static_cast<float>(sum / n) : 0.0f;
  for (int64_t t = b + threadIdx.x; t < e; t += blockDim.x) out[t] = mean;
}

struct CorrectionConsts {
  int mode;  // rl::RolloutCorrection as int
  bool sequence;
  double cap;
};

__device__ double correction_weight(double rho, const CorrectionConsts& c) {
  if (c.mode == static_cast<int>(rl::RolloutCorrection::Tis)) return fmin(rho, c.cap);
  if (c.mode == static_cast<int>(rl::RolloutCorrection::Mis)) return rho >= 1.0 / c.cap && rho <= c.cap ? 1.0 : 0.0;
  return 1.0;
}

// One block per sequence: its weights and its statistics partial[seq][k] (min/max identities +-inf without a unit).
__global__ void rollout_correction_kernel(float* __restrict__ weight, double* __restrict__ partial,
                                          const float* __restrict__ old_logp, const float* __restrict__ rollout_logp,
                                          const float* __restrict__ mask, const int32_t* __restrict__ cu,
                                          CorrectionConsts c) {
  __shared__ double red[32];
  const int64_t b = cu[blockIdx.x], e = cu[blockIdx.x + 1];
  double lr = 0.0, n = 0.0, dsum = 0.0, dmax = 0.0, rsum = 0.0, rmin = INFINITY, rmax = -INFINITY, masked = 0.0;
  for (int64_t t = b + threadIdx.x; t < e; t += blockDim.x) {
    weight[t] = 0.0f;
    if (mask[t] == 0.0f) continue;
    const double d = static_cast<double>(old_logp[t]) - static_cast<double>(rollout_logp[t]);
    dsum += fabs(d);
    dmax = fmax(dmax, fabs(d));
    lr += d;
    n += 1.0;
    if (!c.sequence) {
      const double rho = exp(d), wgt = correction_weight(rho, c);
      rsum += rho;
      rmin = fmin(rmin, rho);
      rmax = fmax(rmax, rho);
      masked += wgt == 0.0 ? 1.0 : 0.0;
      weight[t] = static_cast<float>(wgt);
    }
  }
  lr = block_sum(lr, red);
  n = block_sum(n, red);
  dsum = block_sum(dsum, red);
  dmax = block_reduce(dmax, red, MaxOpD{}, 0.0);
  double units = n;
  if (c.sequence) {
    units = n > 0.0 ? 1.0 : 0.0;
    if (n > 0.0) {
      const double rho = exp(lr), wgt = correction_weight(rho, c);
      rsum = rho;
      rmin = rho;
      rmax = rho;
      masked = wgt == 0.0 ? 1.0 : 0.0;
      for (int64_t t = b + threadIdx.x; t < e; t += blockDim.x)
        if (mask[t] != 0.0f) weight[t] = static_cast<float>(wgt);
    }
  } else {
    rsum = block_sum(rsum, red);
    rmin = block_reduce(rmin, red, MinOpD{}, static_cast<double>(INFINITY));
    rmax = block_reduce(rmax, red, MaxOpD{}, -static_cast<double>(INFINITY));
    masked = block_sum(masked, red);
  }
  if (threadIdx.x == 0) {
    double* p = partial + static_cast<int64_t>(blockIdx.x) * rl::kRolloutCorrectionStats;
    p[rl::kRcRatioSum] = rsum;
    p[rl::kRcRatioMin] = rmin;
    p[rl::kRcRatioMax] = rmax;
    p[rl::kRcMasked] = masked;
    p[rl::kRcUnits] = units;
    p[rl::kRcAbsDiffSum] = dsum;
    p[rl::kRcAbsDiffMax] = dmax;
    p[rl::kRcTokens] = n;
  }
}

// stats[k] = the sequence-order combination of partial[s][k] (sum, or min / max for those statistics); overwrite.
__global__ void rollout_correction_finish_kernel(float* __restrict__ stats, const double* __restrict__ partial,
                                                 int64_t seqs) {
  const int k = threadIdx.x;
  if (k >= rl::kRolloutCorrectionStats) return;
  const bool is_min = k == rl::kRcRatioMin, is_max = k == rl::kRcRatioMax || k == rl::kRcAbsDiffMax;
  double v = is_min ? INFINITY : (k == rl::kRcRatioMax ? -INFINITY : 0.0), units = 0.0;
  for (int64_t s = 0; s < seqs; ++s) {
    const double x = partial[s * rl::kRolloutCorrectionStats + k];
    units += partial[s * rl::kRolloutCorrectionStats + rl::kRcUnits];
    v = is_min ? fmin(v, x) : (is_max ? fmax(v, x) : v + x);
  }
  if ((is_min || k == rl::kRcRatioMax) && units == 0.0) v = 0.0;
  stats[k] = static_cast<float>(v);
}

int loss_blocks(int64_t T) { return static_cast<int>(grid_for(T, kLossThreads * 4, kLossMaxBlocks)); }

}  // namespace

void policy_loss(const Tensor& dlogp, const Tensor& dentropy, const Tensor& stats, const Tensor& logp,
                 const Tensor& old_logp, const Tensor& ref_logp, const Tensor& adv, const Tensor& w,
                 const Tensor& entropy, const Tensor& is_weight, const Tensor& seq_log_ratio,
                 const rl::PolicyLossParams& p, Context& ctx) {
  const int64_t T = logp.numel();
  const bool use_kl = p.kl_coef != 0.0f;
  const bool use_ent = !entropy.empty();
  const bool use_is = !is_weight.empty(), gspo = p.kind == rl::PolicyLossKind::Gspo;
  if (T == 0) return;
  PolicyConsts c;
  c.kind = static_cast<int>(p.kind);
  c.lo = 1.0 - static_cast<double>(p.clip_low);
  c.hi = 1.0 + static_cast<double>(p.clip_high);
  c.dual = p.dual_clip;
  c.kl_coef = p.kl_coef;
  c.ent_coef = p.ent_coef;
  c.kl = static_cast<int>(p.kl);
  const int blocks = loss_blocks(T);
  cudaStream_t s = stream_of(ctx);
  double* partial = static_cast<double*>(scratch(ctx, sizeof(double) * blocks * rl::kPolicyStats));
  policy_loss_kernel<<<blocks, kLossThreads, 0, s>>>(
      dlogp.ptr<float>(), dentropy.empty() ? nullptr : dentropy.ptr<float>(), partial, logp.ptr<float>(),
      old_logp.ptr<float>(), use_kl ? ref_logp.ptr<float>() : nullptr, adv.ptr<float>(), w.ptr<float>(),
      use_ent ? entropy.ptr<float>() : nullptr, use_is ? is_weight.ptr<float>() : nullptr,
      gspo ? seq_log_ratio.ptr<float>() : nullptr, T, c);
  RLCU_LAUNCH_CHECK(s);
  stats_finish_kernel<<<1, 32, 0, s>>>(stats.ptr<float>(), partial, blocks, rl::kPolicyStats);
  RLCU_LAUNCH_CHECK(s);
}

void sequence_log_ratio(const Tensor& out, const Tensor& logp, const Tensor& old_logp, const Tensor& w,
                        const Tensor& cu_seqlens, Context& ctx) {
  const int64_t S = cu_seqlens.numel() - 1;  // its values are the caller's guarantee (include/rlcu/rl_ops.h)
  if (S == 0) return;
  cudaStream_t s = stream_of(ctx);
  sequence_log_ratio_kernel<<<static_cast<unsigned>(S), kLossThreads, 0, s>>>(
      out.ptr<float>(), logp.ptr<float>(), old_logp.ptr<float>(), w.ptr<float>(), cu_seqlens.ptr<int32_t>());
  RLCU_LAUNCH_CHECK(s);
}

void rollout_correction(const Tensor& weight, const Tensor& stats, const Tensor& old_logp, const Tensor& rollout_logp,
                        const Tensor& mask, const Tensor& cu_seqlens, const rl::RolloutCorrectionParams& p,
                        Context& ctx) {
  const int64_t N = cu_seqlens.numel() - 1;  // its values are the caller's guarantee (include/rlcu/rl_ops.h)
  cudaStream_t s = stream_of(ctx);
  CorrectionConsts c;
  c.mode = static_cast<int>(p.mode);
  c.sequence = p.level == rl::CorrectionLevel::Sequence;
  c.cap = p.cap;
  double* partial = static_cast<double*>(scratch(ctx, sizeof(double) * std::max<int64_t>(N, 1) *
                                                          rl::kRolloutCorrectionStats));
  if (N > 0) {
    rollout_correction_kernel<<<static_cast<unsigned>(N), kLossThreads, 0, s>>>(
        weight.ptr<float>(), partial, old_logp.ptr<float>(), rollout_logp.ptr<float>(), mask.ptr<float>(),
        cu_seqlens.ptr<int32_t>(), c);
    RLCU_LAUNCH_CHECK(s);
  }
  rollout_correction_finish_kernel<<<1, 32, 0, s>>>(stats.ptr<float>(), partial, N);
  RLCU_LAUNCH_CHECK(s);
}

void value_loss(const Tensor& dv, const Tensor& stats, const Tensor& v, const Tensor& old_v, const Tensor& returns,
                const Tensor& w, const rl::ValueLossParams& p, Context& ctx) {
  const int64_t T = v.numel();
  if (T == 0) return;
  const int blocks = loss_blocks(T);
  cudaStream_t s = stream_of(ctx);
  double* partial = static_cast<double*>(scratch(ctx, sizeof(double) * blocks * rl::kValueStats));
  value_loss_kernel<<<blocks, kLossThreads, 0, s>>>(dv.ptr<float>(), partial, v.ptr<float>(), old_v.ptr<float>(),
                                                    returns.ptr<float>(), w.ptr<float>(), T, p.clip);
  RLCU_LAUNCH_CHECK(s);
  stats_finish_kernel<<<1, 32, 0, s>>>(stats.ptr<float>(), partial, blocks, rl::kValueStats);
  RLCU_LAUNCH_CHECK(s);
}

}  // namespace rlcu::cuda
