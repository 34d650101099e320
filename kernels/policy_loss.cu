// Policy and value losses on CUDA, fused forward + backward (math in include/rlcu/rl_ops.h; CPU twin
// kernels/cpu/policy_loss.cpp).
//
// One pass over the T tokens of a micro-batch: each thread takes a grid-stride slice, evaluates the per-token loss
// and gradient in fp64 (the same expressions as the CPU twin, so clip-branch decisions agree) and writes dlogp /
// dentropy (or dv) — overwrite; a token with w = 0 gets zero gradients and adds nothing to the statistics. The statistics are summed per thread in fp64, tree-reduced per block in a fixed order
// into partial[block][k]; a one-block pass adds the block partials in block order and ACCUMULATES (+=) them into the
// F32 stats vector. The grid size depends on T only, so the same inputs give the same bits. No atomics.
#include <cmath>

#include "cuda_common.cuh"
#include "rlcu/rl_ops.h"

namespace rlcu::cuda {
#include "rl_op_list.inc"

namespace {

constexpr int kLossThreads = 256;
constexpr int kLossMaxBlocks = 256;

struct PolicyConsts {
  double lo, hi, dual, kl_coef, ent_coef;
  int kl;  // rl::KlEstimator as int
};

__global__ void policy_loss_kernel(float* __restrict__ dlogp, float* __restrict__ dentropy,
                                   double* __restrict__ partial, const float* __restrict__ logp,
                                   const float* __restrict__ old_logp, const float* __restrict__ ref_logp,
                                   const float* __restrict__ adv, const float* __restrict__ w,
                                   const float* __restrict__ entropy, int64_t T, PolicyConsts c) {
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
    const double r = exp(lp - static_cast<double>(old_logp[t]));
    const double pg1 = -A * r;
    const double pg2 = -A * fmin(fmax(r, c.lo), c.hi);
    double pg = pg1, dpg = -A * r;
    bool clip_low = false, clip_high = false, dual = false;
    if (pg2 > pg1) {
      pg = pg2;
      dpg = 0.0;
      clip_low = A < 0;
      clip_high = A > 0;
    }
    if (c.dual > 0.0 && A < 0 && pg > -c.dual * A) {
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
    const double l = pg + c.kl_coef * kl - c.ent_coef * H;
    dlogp[t] = static_cast<float>(wt * (dpg + c.kl_coef * dkl));
    if (dentropy) dentropy[t] = static_cast<float>(-wt * c.ent_coef);
    acc[rl::kPsLoss] += wt * l;
    acc[rl::kPsPg] += wt * pg;
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

void need_f32(const char* op, const char* name, const Tensor& t, int64_t n) {
  if (n == 0 && t.empty()) return;
  RLCU_CHECK(!t.empty(), "{}: {} is empty", op, name);
  check_cuda_tensor(t, op);
  RLCU_CHECK(t.dtype == DType::F32 && t.numel() == n, "{}: {} must be f32 of {} elements (got {} {})", op, name, n,
             dtype_name(t.dtype), t.shape_str());
}

int loss_blocks(int64_t T) { return static_cast<int>(grid_for(T, kLossThreads * 4, kLossMaxBlocks)); }

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
  need_f32(op, "stats", stats, rl::kPolicyStats);
  const bool use_kl = p.kl_coef != 0.0f;
  const bool use_ent = !entropy.empty();
  if (use_kl) need_f32(op, "ref_logp", ref_logp, T);
  if (use_ent) need_f32(op, "entropy", entropy, T);
  RLCU_CHECK(p.ent_coef == 0.0f || use_ent, "{}: ent_coef = {} needs the entropy tensor", op, p.ent_coef);
  if (!dentropy.empty()) need_f32(op, "dentropy", dentropy, T);
  RLCU_CHECK(p.clip_low >= 0.0f && p.clip_high >= 0.0f, "{}: clip_low {} and clip_high {} must be >= 0", op,
             p.clip_low, p.clip_high);
  RLCU_CHECK(p.dual_clip == 0.0f || p.dual_clip > 1.0f, "{}: dual_clip {} must be 0 (off) or > 1", op, p.dual_clip);
  if (T == 0) return;
  PolicyConsts c;
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
      use_ent ? entropy.ptr<float>() : nullptr, T, c);
  RLCU_LAUNCH_CHECK(s);
  stats_finish_kernel<<<1, 32, 0, s>>>(stats.ptr<float>(), partial, blocks, rl::kPolicyStats);
  RLCU_LAUNCH_CHECK(s);
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
  need_f32(op, "stats", stats, rl::kValueStats);
  RLCU_CHECK(p.clip >= 0.0f, "{}: clip {} must be >= 0", op, p.clip);
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
