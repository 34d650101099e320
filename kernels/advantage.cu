// Advantage estimators and loss weights on CUDA (math in include/rlcu/rl_ops.h; CPU twin kernels/cpu/advantage.cpp).
//
// group_advantages / rloo_advantages: one warp per group of G rewards. Lane j sums rewards j, j+32, ... in fp64 and
//   the warp adds the lanes in a fixed butterfly: mean (pass 1), then the unbiased std from the squared deviations
//   (pass 2); every read of the group happens before the warp's first write, so adv may alias rewards. Mode "batch"
//   first runs one block over all N rewards (fp64, fixed order) for the batch std.
// reinforce_pp_advantages / gae_advantages: one thread per sequence runs the backward recurrence in fp64 (token
//   rewards -kl_coef kl_t + final reward; G_t = r_t + gamma G_{t+1}; GAE delta/A), writes the F32 result; whitening
//   then takes mean and unbiased std of those F32 values in one block (fp64, fixed order) and rescales every token.
// broadcast_to_tokens / loss_weights: grid-stride over sequences, block threads over a sequence's tokens.
// Everything overwrites its outputs; no float atomics, so results are bit-reproducible.
#include <cmath>

#include "cuda_common.cuh"
#include "rlcu/rl_ops.h"

namespace rlcu::cuda {
#include "rl_op_list.inc"

namespace {

constexpr int kStatThreads = 1024;

enum GroupMode : int { kGroupStd = 0, kBatchStd = 1, kNoStd = 2, kLeaveOneOut = 3 };

// out[0] = mean, out[1] = unbiased std (0 for n <= 1) of x[0, n), fp64, one block of kStatThreads.
__global__ void mean_std_kernel(double* __restrict__ out, const float* __restrict__ x, int64_t n) {
  __shared__ double red[32];
  double s = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s += static_cast<double>(x[i]);
  s = block_sum(s, red);
  const double m = n > 0 ? s / static_cast<double>(n) : 0.0;
  double q = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const double d = static_cast<double>(x[i]) - m;
    q += d * d;
  }
  q = block_sum(q, red);
  if (threadIdx.x == 0) {
    out[0] = m;
    out[1] = n > 1 ? sqrt(q / static_cast<double>(n - 1)) : 0.0;
  }
}

// One warp per group; blockDim.x a multiple of 32.
__global__ void group_adv_kernel(float* adv, const float* rewards, int64_t groups, int G, int mode, double eps,
                                 const double* __restrict__ batch_stats) {
  const int lane = threadIdx.x & 31;
  const int64_t g = static_cast<int64_t>(blockIdx.x) * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (g >= groups) return;  // whole warps leave together
  const float* r = rewards + g * G;
  double s = 0.0;
  for (int i = lane; i < G; i += 32) s += static_cast<double>(r[i]);
  s = warp_sum(s);
  const double m = s / static_cast<double>(G);
  double denom = 1.0;
  if (mode == kGroupStd) {
    double q = 0.0;
    for (int i = lane; i < G; i += 32) {
      const double d = static_cast<double>(r[i]) - m;
      q += d * d;
    }
    q = warp_sum(q);
    denom = (G > 1 ? sqrt(q / static_cast<double>(G - 1)) : 0.0) + eps;
  } else if (mode == kBatchStd) {
    denom = batch_stats[1] + eps;
  }
  // Every lane has finished its reads of the whole group (warp_sum synchronises the warp); from here on a lane
  // reads and writes only its own elements, so adv may alias rewards.
  for (int i = lane; i < G; i += 32) {
    const double ri = r[i];
    adv[g * G + i] = mode == kLeaveOneOut ? static_cast<float>(ri - (s - ri) / static_cast<double>(G - 1))
                                          : static_cast<float>((ri - m) / denom);
  }
}

struct ScanParams {
  double gamma, gl, kl_coef;
  int kl;  // rl::KlEstimator as int
  bool gae;
};

__device__ __forceinline__ double kl_value(int k, double logp, double ref) {
  const double x = ref - logp;
  if (k == static_cast<int>(rl::KlEstimator::K1)) return -x;
  if (k == static_cast<int>(rl::KlEstimator::K2)) return 0.5 * x * x;
  return exp(x) - x - 1.0;
}

// One thread per sequence: backward scan of the token rewards (REINFORCE++ returns or GAE).
__global__ void returns_scan_kernel(float* __restrict__ adv, float* __restrict__ returns,
                                    const float* __restrict__ values, const float* __restrict__ seq_rewards,
                                    const float* __restrict__ old_logp, const float* __restrict__ ref_logp,
                                    const int32_t* __restrict__ cu, int64_t n_seqs, ScanParams p) {
  for (int64_t s = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; s < n_seqs;
       s += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = cu[s], e = cu[s + 1];
    double acc = 0.0, next_v = 0.0;
    for (int64_t t = e - 1; t >= b; --t) {
      double r = old_logp ? -p.kl_coef * kl_value(p.kl, old_logp[t], ref_logp[t]) : 0.0;
      if (t == e - 1) r += static_cast<double>(seq_rewards[s]);
      if (p.gae) {
        const double vt = values[t];
        acc = (r + p.gamma * next_v - vt) + p.gl * acc;
        next_v = vt;
        adv[t] = static_cast<float>(acc);
        returns[t] = static_cast<float>(acc + vt);
      } else {
        acc = r + p.gamma * acc;
        adv[t] = static_cast<float>(acc);
        if (returns) returns[t] = static_cast<float>(acc);
      }
    }
  }
}

__global__ void whiten_kernel(float* __restrict__ x, int64_t n, const double* __restrict__ stats, double eps) {
  const double m = stats[0], inv = 1.0 / (stats[1] + eps);
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    x[i] = static_cast<float>((static_cast<double>(x[i]) - m) * inv);
}

// Per-sequence value to its tokens; with `agg` >= 0 the value is the loss weight of that aggregation mode.
struct WeightParams {
  int agg;  // -1: broadcast seq_values; else rl::LossAgg
  double total_tokens, num_seqs, norm_len;
};
__global__ void per_seq_kernel(float* __restrict__ out, const float* __restrict__ seq_values,
                               const int32_t* __restrict__ cu, int64_t n_seqs, WeightParams p) {
  for (int64_t s = blockIdx.x; s < n_seqs; s += gridDim.x) {
    const int64_t b = cu[s], e = cu[s + 1];
    float v;
    if (p.agg < 0) {
      v = seq_values[s];
    } else {
      double ws = 0.0;
      switch (static_cast<rl::LossAgg>(p.agg)) {
        case rl::LossAgg::TokenMean: ws = 1.0 / p.total_tokens; break;
        case rl::LossAgg::SeqMeanTokenMean: ws = 1.0 / (p.num_seqs * static_cast<double>(e - b)); break;
        case rl::LossAgg::SeqMeanTokenSum: ws = 1.0 / p.num_seqs; break;
        case rl::LossAgg::SeqMeanTokenSumNorm: ws = 1.0 / (p.num_seqs * p.norm_len); break;
      }
      if (seq_values) ws *= static_cast<double>(seq_values[s]);
      v = static_cast<float>(ws);
    }
    for (int64_t t = b + threadIdx.x; t < e; t += blockDim.x) out[t] = v;
  }
}

// A CUDA F32 tensor of exactly n elements (an empty view only for n == 0).
void need_f32(const char* op, const char* name, const Tensor& t, int64_t n) {
  if (n == 0 && t.empty()) return;
  RLCU_CHECK(!t.empty(), "{}: {} is empty", op, name);
  check_cuda_tensor(t, op);
  RLCU_CHECK(t.dtype == DType::F32 && t.numel() == n, "{}: {} must be f32 of {} elements (got {} {})", op, name, n,
             dtype_name(t.dtype), t.shape_str());
}

// cu_seqlens [N+1] I32 on CUDA; returns N. The offsets themselves stay on the device: T comes from the caller.
int64_t check_cu(const char* op, const Tensor& cu) {
  RLCU_CHECK(!cu.empty() && cu.dtype == DType::I32 && cu.ndim == 1 && cu.numel() >= 1,
             "{}: cu_seqlens must be i32 [N+1] (got {} {})", op, dtype_name(cu.dtype), cu.shape_str());
  check_cuda_tensor(cu, op);
  return cu.numel() - 1;
}

void launch_group(const Tensor& adv, const Tensor& rewards, int G, int mode, double eps, Context& ctx,
                  const char* op) {
  const int64_t N = rewards.numel();
  need_f32(op, "rewards", rewards, N);
  need_f32(op, "adv", adv, N);
  if (N == 0) return;
  cudaStream_t s = stream_of(ctx);
  double* stats = nullptr;
  if (mode == kBatchStd) {
    stats = static_cast<double*>(scratch(ctx, 2 * sizeof(double)));
    mean_std_kernel<<<1, kStatThreads, 0, s>>>(stats, rewards.ptr<float>(), N);
    RLCU_LAUNCH_CHECK(s);
  }
  const int64_t groups = N / G;
  constexpr int kWarps = 4;
  group_adv_kernel<<<static_cast<unsigned>(ceil_div(groups, kWarps)), 32 * kWarps, 0, s>>>(
      adv.ptr<float>(), rewards.ptr<float>(), groups, G, mode, eps, stats);
  RLCU_LAUNCH_CHECK(s);
}

// Shared driver of REINFORCE++ and GAE.
void launch_scan(const char* op, const Tensor& adv, const Tensor& returns, const Tensor& values,
                 const Tensor& seq_rewards, const Tensor& old_logp, const Tensor& ref_logp, const Tensor& cu_seqlens,
                 const rl::TokenRewardParams& rp, ScanParams sp, bool whiten, float eps, Context& ctx) {
  const int64_t N = check_cu(op, cu_seqlens);
  const int64_t T = adv.numel();
  need_f32(op, "adv", adv, T);
  if (sp.gae || !returns.empty()) need_f32(op, "returns", returns, T);
  if (sp.gae) need_f32(op, "values", values, T);
  need_f32(op, "seq_rewards", seq_rewards, N);
  const bool kl = rp.kl_coef != 0.0f;
  if (kl) {
    need_f32(op, "old_logp", old_logp, T);
    need_f32(op, "ref_logp", ref_logp, T);
  }
  sp.kl_coef = rp.kl_coef;
  sp.kl = static_cast<int>(rp.kl);
  if (N == 0 || T == 0) return;
  cudaStream_t s = stream_of(ctx);
  double* stats = whiten ? static_cast<double*>(scratch(ctx, 2 * sizeof(double))) : nullptr;
  returns_scan_kernel<<<grid_for(N, 128), 128, 0, s>>>(
      adv.ptr<float>(), returns.empty() ? nullptr : returns.ptr<float>(),
      values.empty() ? nullptr : values.ptr<float>(), seq_rewards.ptr<float>(),
      kl ? old_logp.ptr<float>() : nullptr, kl ? ref_logp.ptr<float>() : nullptr, cu_seqlens.ptr<int32_t>(), N, sp);
  RLCU_LAUNCH_CHECK(s);
  if (whiten) {
    mean_std_kernel<<<1, kStatThreads, 0, s>>>(stats, adv.ptr<float>(), T);
    RLCU_LAUNCH_CHECK(s);
    whiten_kernel<<<grid_for(T, 256, 4096), 256, 0, s>>>(adv.ptr<float>(), T, stats, eps);
    RLCU_LAUNCH_CHECK(s);
  }
}

void launch_per_seq(const Tensor& out, const Tensor& seq_values, const Tensor& cu_seqlens, const WeightParams& wp,
                    Context& ctx) {
  const int64_t N = cu_seqlens.numel() - 1;
  if (N == 0 || out.numel() == 0) return;
  cudaStream_t s = stream_of(ctx);
  per_seq_kernel<<<grid_for(N, 1, 65535), 128, 0, s>>>(out.ptr<float>(),
                                                        seq_values.empty() ? nullptr : seq_values.ptr<float>(),
                                                        cu_seqlens.ptr<int32_t>(), N, wp);
  RLCU_LAUNCH_CHECK(s);
}

}  // namespace

void group_advantages(const Tensor& adv, const Tensor& rewards, const rl::GroupAdvantageParams& p, Context& ctx) {
  const char* op = "group_advantages";
  const int64_t N = rewards.numel();
  RLCU_CHECK(p.group_size >= 1 && N % p.group_size == 0, "{}: {} rewards are not groups of {}", op, N, p.group_size);
  const int mode = p.norm == rl::AdvantageNorm::Group ? kGroupStd : p.norm == rl::AdvantageNorm::Batch ? kBatchStd : kNoStd;
  launch_group(adv, rewards, p.group_size, mode, p.eps, ctx, op);
}

void rloo_advantages(const Tensor& adv, const Tensor& rewards, int group_size, Context& ctx) {
  const char* op = "rloo_advantages";
  const int64_t N = rewards.numel();
  RLCU_CHECK(group_size >= 2 && N % group_size == 0, "{}: {} rewards are not groups of {} (RLOO needs G >= 2)", op,
             N, group_size);
  launch_group(adv, rewards, group_size, kLeaveOneOut, 0.0, ctx, op);
}

void reinforce_pp_advantages(const Tensor& adv, const Tensor& returns, const Tensor& seq_rewards,
                             const Tensor& old_logp, const Tensor& ref_logp, const Tensor& cu_seqlens,
                             const rl::ReturnsParams& p, Context& ctx) {
  ScanParams sp{};
  sp.gamma = p.gamma;
  sp.gae = false;
  launch_scan("reinforce_pp_advantages", adv, returns, Tensor(), seq_rewards, old_logp, ref_logp, cu_seqlens,
              p.reward, sp, p.whiten, p.eps, ctx);
}

void gae_advantages(const Tensor& adv, const Tensor& returns, const Tensor& values, const Tensor& seq_rewards,
                    const Tensor& old_logp, const Tensor& ref_logp, const Tensor& cu_seqlens, const rl::GaeParams& p,
                    Context& ctx) {
  ScanParams sp{};
  sp.gamma = p.gamma;
  sp.gl = static_cast<double>(p.gamma) * static_cast<double>(p.lambda);
  sp.gae = true;
  launch_scan("gae_advantages", adv, returns, values, seq_rewards, old_logp, ref_logp, cu_seqlens, p.reward, sp,
              p.whiten, p.eps, ctx);
}

void broadcast_to_tokens(const Tensor& out, const Tensor& seq_values, const Tensor& cu_seqlens, Context& ctx) {
  const char* op = "broadcast_to_tokens";
  const int64_t N = check_cu(op, cu_seqlens);
  need_f32(op, "out", out, out.numel());
  need_f32(op, "seq_values", seq_values, N);
  WeightParams wp{};
  wp.agg = -1;
  launch_per_seq(out, seq_values, cu_seqlens, wp, ctx);
}

void loss_weights(const Tensor& w, const Tensor& cu_seqlens, const Tensor& seq_scale, const rl::LossWeightParams& p,
                  Context& ctx) {
  const char* op = "loss_weights";
  const int64_t N = check_cu(op, cu_seqlens);
  need_f32(op, "w", w, w.numel());
  if (!seq_scale.empty()) need_f32(op, "seq_scale", seq_scale, N);
  if (p.mode == rl::LossAgg::TokenMean)
    RLCU_CHECK(p.total_tokens > 0, "{}: token-mean needs total_tokens > 0 (got {})", op, p.total_tokens);
  else
    RLCU_CHECK(p.num_seqs > 0, "{}: {} needs num_seqs > 0 (got {})", op, rl::name_of(p.mode), p.num_seqs);
  if (p.mode == rl::LossAgg::SeqMeanTokenSumNorm)
    RLCU_CHECK(p.norm_len > 0, "{}: seq-mean-token-sum-norm needs norm_len > 0 (got {})", op, p.norm_len);
  WeightParams wp{};
  wp.agg = static_cast<int>(p.mode);
  wp.total_tokens = static_cast<double>(p.total_tokens);
  wp.num_seqs = static_cast<double>(p.num_seqs);
  wp.norm_len = static_cast<double>(p.norm_len);
  launch_per_seq(w, seq_scale, cu_seqlens, wp, ctx);
}

}  // namespace rlcu::cuda
