// Advantage estimators and loss weights on CUDA (math in include/rlcu/rl_ops.h; CPU twin kernels/cpu/advantage.cpp).
//
// group_advantages / rloo_advantages: one warp per group of G rewards. Lane j sums rewards j, j+32, ... in fp64 and
//   the warp adds the lanes in a fixed butterfly: mean (pass 1), then the unbiased std from the squared deviations
//   (pass 2); every read of the group happens before the warp's first write, so adv may alias rewards. Mode "batch"
//   first takes the batch std over all N rewards (fp64, fixed order, see whitening below).
// reinforce_pp_advantages / gae_advantages: the backward recurrence acc_t = c_t + a acc_{t+1} (REINFORCE++: c = token
//   reward, a = gamma; GAE: c = delta_t, a = gamma lambda) in fp64, one warp per sequence: each lane folds a
//   contiguous chunk into an affine map, a fixed-order shuffle scan over the lanes gives each chunk its carry, and a
//   second pass writes the F32 results (the CPU twin runs the plain sequential loop; both are fp64, so they agree to
//   fp32 rounding). Whitening then takes mean and unbiased std of those F32 values (fp64: per-block partial
//   sums over fixed grid-stride slices, the block count a function of T only, added in block order) and rescales
//   every token.
// broadcast_to_tokens / loss_weights: grid-stride over sequences, block threads over a sequence's tokens.
// Everything overwrites its outputs; no float atomics, so results are bit-reproducible.
#include <cmath>

#include "cuda_common.cuh"
#include "backends.h"

namespace rlcu::cuda {
namespace {

enum GroupMode : int { kGroupStd = 0, kBatchStd = 1, kNoStd = 2, kLeaveOneOut = 3 };

// Mean and unbiased std of x[0, n) in fp64, deterministic: pass 1 gives each of `blocks` blocks (a function of n
// only) a grid-stride slice, summed per thread and tree-reduced per block; pass 2 adds the block partials in a fixed
// order. Run once for the sum (mean) and once for the squared deviations from that mean (std, 0 for n <= 1).
constexpr int kMomentThreads = 256;
inline int moment_blocks(int64_t n) { return static_cast<int>(grid_for(n, kMomentThreads * 8, 512)); }

__global__ void moment_partial_kernel(double* __restrict__ partial, const float* __restrict__ x, int64_t n,
                                      const double* __restrict__ mean) {
  __shared__ double red[32];
  const double m = mean ? mean[0] : 0.0;
  double acc = 0.0;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const double d = static_cast<double>(x[i]) - m;
    acc += mean ? d * d : d;
  }
  acc = block_sum(acc, red);
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

// stats[0] = mean (second == false) or stats[1] = unbiased std (second == true) from the block partials.
__global__ void moment_finish_kernel(double* __restrict__ stats, const double* __restrict__ partial, int blocks,
                                     int64_t n, bool second) {
  __shared__ double red[32];
  double acc = 0.0;
  for (int i = threadIdx.x; i < blocks; i += blockDim.x) acc += partial[i];
  acc = block_sum(acc, red);
  if (threadIdx.x == 0) {
    if (!second) stats[0] = n > 0 ? acc / static_cast<double>(n) : 0.0;
    else stats[1] = n > 1 ? sqrt(acc / static_cast<double>(n - 1)) : 0.0;
  }
}

// stats[2] (device) = {mean, std} of x; `partial` holds moment_blocks(n) doubles.
void launch_mean_std(double* stats, double* partial, const float* x, int64_t n, cudaStream_t s) {
  const int blocks = moment_blocks(n);
  moment_partial_kernel<<<blocks, kMomentThreads, 0, s>>>(partial, x, n, nullptr);
  moment_finish_kernel<<<1, kMomentThreads, 0, s>>>(stats, partial, blocks, n, false);
  moment_partial_kernel<<<blocks, kMomentThreads, 0, s>>>(partial, x, n, stats);
  moment_finish_kernel<<<1, kMomentThreads, 0, s>>>(stats, partial, blocks, n, true);
  RLCU_LAUNCH_CHECK(s);
}

// Scratch for launch_mean_std: 2 statistics followed by the partials.
double* mean_std_scratch(Context& ctx, int64_t n) {
  return static_cast<double*>(scratch(ctx, sizeof(double) * (2 + moment_blocks(n))));
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

// The per-token term c_t of the backward recurrence acc_t = c_t + a acc_{t+1} (acc_e = 0):
// REINFORCE++ c_t = r_t, a = gamma;  GAE c_t = delta_t = r_t + gamma V_{t+1} - V_t, a = gamma lambda.
struct ScanInputs {
  const float* values;
  const float* seq_rewards;
  const float* old_logp;
  const float* ref_logp;
};
__device__ __forceinline__ double scan_term(const ScanInputs& in, const ScanParams& p, int64_t s, int64_t t,
                                            int64_t e) {
  double r = in.old_logp ? -p.kl_coef * kl_value(p.kl, in.old_logp[t], in.ref_logp[t]) : 0.0;
  if (t == e - 1) r += static_cast<double>(in.seq_rewards[s]);
  if (!p.gae) return r;
  const double next_v = t + 1 < e ? static_cast<double>(in.values[t + 1]) : 0.0;
  return r + p.gamma * next_v - static_cast<double>(in.values[t]);
}

// One warp per sequence. Lane k owns the contiguous chunk [lo_k, hi_k) of the sequence's tokens. Pass 1: each lane
// folds its chunk from the right into the affine map x -> L + F x (x = acc at hi_k, F = a^len_k). A fixed-order
// suffix scan of these maps over the lanes (shuffles, fp64) gives every lane the value acc at hi_k (its carry).
// Pass 2: each lane re-runs its chunk from the carry and writes the F32 results.
__global__ void returns_scan_kernel(float* __restrict__ adv, float* __restrict__ returns, ScanInputs in,
                                    const int32_t* __restrict__ cu, int64_t n_seqs, ScanParams p) {
  const int lane = threadIdx.x & 31;
  const int64_t s = static_cast<int64_t>(blockIdx.x) * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (s >= n_seqs) return;  // whole warps leave together
  const int64_t b = cu[s], e = cu[s + 1];
  const double a = p.gae ? p.gl : p.gamma;
  const int64_t chunk = (e - b + 31) / 32;
  const int64_t lo = b + lane * chunk < e ? b + lane * chunk : e;
  const int64_t hi = lo + chunk < e ? lo + chunk : e;
  double L = 0.0, F = 1.0;
  for (int64_t t = hi - 1; t >= lo; --t) {
    L = scan_term(in, p, s, t, e) + a * L;
    F *= a;
  }
  // Inclusive suffix scan: lane k ends with the composition of the maps of lanes k..31 (identity past the end).
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const double L2 = __shfl_down_sync(0xffffffffu, L, o);
    const double F2 = __shfl_down_sync(0xffffffffu, F, o);
    if (lane + o < 32) {
      L = L + F * L2;
      F = F * F2;
    }
  }
  double acc = __shfl_down_sync(0xffffffffu, L, 1);  // acc at hi_k = the composed value of lanes k+1..31
  if (lane == 31) acc = 0.0;
  for (int64_t t = hi - 1; t >= lo; --t) {
    acc = scan_term(in, p, s, t, e) + a * acc;
    if (p.gae) {
      adv[t] = static_cast<float>(acc);
      returns[t] = static_cast<float>(acc + static_cast<double>(in.values[t]));
    } else {
      adv[t] = static_cast<float>(acc);
      if (returns) returns[t] = static_cast<float>(acc);
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
    stats = mean_std_scratch(ctx, N);
    launch_mean_std(stats, stats + 2, rewards.ptr<float>(), N, s);
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
  double* stats = whiten ? mean_std_scratch(ctx, T) : nullptr;
  const ScanInputs in{values.empty() ? nullptr : values.ptr<float>(), seq_rewards.ptr<float>(),
                      kl ? old_logp.ptr<float>() : nullptr, kl ? ref_logp.ptr<float>() : nullptr};
  constexpr int kScanWarps = 4;
  returns_scan_kernel<<<static_cast<unsigned>(ceil_div(N, kScanWarps)), 32 * kScanWarps, 0, s>>>(
      adv.ptr<float>(), returns.empty() ? nullptr : returns.ptr<float>(), in, cu_seqlens.ptr<int32_t>(), N, sp);
  RLCU_LAUNCH_CHECK(s);
  if (whiten) {
    launch_mean_std(stats, stats + 2, adv.ptr<float>(), T, s);
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
  const int mode = p.norm == rl::AdvantageNorm::Group ? kGroupStd : p.norm == rl::AdvantageNorm::Batch ? kBatchStd : kNoStd;
  launch_group(adv, rewards, p.group_size, mode, p.eps, ctx, op);
}

void rloo_advantages(const Tensor& adv, const Tensor& rewards, int group_size, Context& ctx) {
  const char* op = "rloo_advantages";
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
  WeightParams wp{};
  wp.agg = static_cast<int>(p.mode);
  wp.total_tokens = static_cast<double>(p.total_tokens);
  wp.num_seqs = static_cast<double>(p.num_seqs);
  wp.norm_len = static_cast<double>(p.norm_len);
  launch_per_seq(w, seq_scale, cu_seqlens, wp, ctx);
}

}  // namespace rlcu::cuda
