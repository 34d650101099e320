// Fused log-prob head on CUDA: lm_head -> log-softmax -> gather at the target (+ entropy), never storing a [T, V]
// tensor.
//
// Math (z = scaled logits of one token, V wide; tau = inv_temperature):
//   z[t, j] = tau * (hidden[t, :] . weight[j, :]);   lse[t] = log sum_j exp z[t, j];   p = exp(z - lse)
//   logprob[t] = z[t, target[t]] - lse[t];   entropy[t] = lse[t] - mu[t],  mu[t] = sum_j p[t, j] z[t, j]
//   backward, with a = dlogprob[t], b = dentropy[t] (0 when dentropy is empty):
//   dz[t, j] = a (1[j = target] - p_j) - b p_j (z_j - mu)
//   dhidden[t, :] = tau * sum_j dz[t, j] weight[j, :]          (activation gradient: overwrites)
//   dweight[j, :] += tau * sum_t dz[t, j] hidden[t, :]          (parameter gradient: F32, accumulates; tied or not)
// A target outside [0, V) (negative marks "no target") gives logprob = entropy = 0 and no gradient; lse is still
// written.
//
// Shapes/dtypes: hidden[T, H] and weight[V, H] both BF16 (the model) or both F32; targets[T] I32; logprob, lse,
// entropy, dlogprob, dentropy [T] F32; dhidden[T, H] F32 or BF16; dweight[V, H] F32.
//
// Schedule: tokens in chunks of Tc, and for each token chunk the vocabulary in chunks of Vc. cuBLASLt writes the
// [Tc, Vc] fp32 logits tile (alpha = tau) into the context's scratch; in the forward a block per row folds the
// tile into running (max, sum exp, sum exp * z) statistics (online softmax across vocabulary chunks) and picks
// the target logit; a last kernel turns them into lse / logprob / entropy. The backward recomputes each tile, forms
// tau * dz in the tile's dtype (bf16 for the model) in a second buffer, and runs two GEMMs: dhidden_chunk (+)= dz
// W_chunk (fp32 accumulator in scratch when dhidden is BF16) and dweight_chunk += dz^T h_chunk. The entropy
// gradient needs mu, which the backward does not receive: when dentropy is given, a statistics pass (one more
// logits GEMM per tile) recomputes it first. Scratch: Tc*Vc*(4 + elt) + Tc*H*4 bytes (about 208 MiB at the 4096 x
// 8192 default and H = 1024), allocated on first use and reused. Everything is deterministic (no atomics).
#include <algorithm>
#include <type_traits>

#include "cuda_common.cuh"
#include "ops_cuda.h"
#include "ops_cuda_internal.h"

namespace rlcu::cuda {

namespace {

constexpr int64_t kDefaultTokenChunk = 8192;
constexpr int64_t kDefaultVocabChunk = 8192;
LogprobChunking g_chunking;

constexpr int kRowThreads = 256;

// Folds logits[r, :w] (one block per row) into the running statistics of row r.
//   first: this is the first vocabulary chunk (initialise instead of merging).
//   zt (optional): receives z at the target when the target falls in [v0, v0 + w).
__global__ void stats_kernel(float* __restrict__ run_m, float* __restrict__ run_s, float* __restrict__ run_sz,
                             float* __restrict__ zt, const float* __restrict__ logits, const int* __restrict__ targets,
                             int64_t w, int64_t v0, bool first) {
  __shared__ float red[32];
  const int64_t r = blockIdx.x;
  const float* row = logits + r * w;
  // Rounds of up to kBatch values per thread: all loads of a round are issued first, then the round's maximum
  // rescales the running sums once and every value costs one exp.
  constexpr int kBatch = 16;
  float m = -INFINITY, s = 0.0f, sz = 0.0f;
  auto fold = [&](const float (&z)[kBatch], int valid) {
    float mr = -INFINITY;
#pragma unroll
    for (int k = 0; k < kBatch; ++k)
      if (k < valid) mr = fmaxf(mr, z[k]);
    if (mr > m) {
      const float c = expf(m - mr);  // 0 while m = -inf
      s *= c;
      sz *= c;
      m = mr;
    }
#pragma unroll
    for (int k = 0; k < kBatch; ++k)
      if (k < valid) {
        const float e = expf(z[k] - m);
        s += e;
        sz = fmaf(e, z[k], sz);
      }
  };
  const int64_t step = blockDim.x;
  if (w % 4 == 0) {
    const float4* row4 = reinterpret_cast<const float4*>(row);
    const int64_t n4 = w / 4;
    for (int64_t j = threadIdx.x; j < n4; j += step * (kBatch / 4)) {
      float z[kBatch];
      int valid = 0;
#pragma unroll
      for (int k = 0; k < kBatch / 4; ++k) {
        const int64_t jj = j + k * step;
        if (jj < n4) {
          const float4 v = row4[jj];
          z[4 * k] = v.x;
          z[4 * k + 1] = v.y;
          z[4 * k + 2] = v.z;
          z[4 * k + 3] = v.w;
          valid = 4 * (k + 1);
        }
      }
      fold(z, valid);
    }
  } else {
    for (int64_t j = threadIdx.x; j < w; j += step * kBatch) {
      float z[kBatch];
      int valid = 0;
#pragma unroll
      for (int k = 0; k < kBatch; ++k) {
        const int64_t jj = j + k * step;
        if (jj < w) {
          z[k] = row[jj];
          valid = k + 1;
        }
      }
      fold(z, valid);
    }
  }
  const float bm = block_max(m, red);
  const float c = m == -INFINITY ? 0.0f : expf(m - bm);
  const float bs = block_sum(s * c, red);
  const float bsz = block_sum(sz * c, red);
  if (threadIdx.x == 0) {
    if (first) {
      run_m[r] = bm;
      run_s[r] = bs;
      run_sz[r] = bsz;
    } else {
      const float om = run_m[r];
      const float nm = fmaxf(om, bm);
      const float co = expf(om - nm), cn = expf(bm - nm);
      run_m[r] = nm;
      run_s[r] = run_s[r] * co + bs * cn;
      run_sz[r] = run_sz[r] * co + bsz * cn;
    }
    if (zt) {
      const int tg = targets[r];
      if (tg >= v0 && tg < v0 + w) zt[r] = row[tg - v0];
    }
  }
}

__global__ void finish_fwd_kernel(float* __restrict__ logprob, float* __restrict__ entropy, float* __restrict__ lse,
                                  const float* __restrict__ run_m, const float* __restrict__ run_s,
                                  const float* __restrict__ run_sz, const float* __restrict__ zt,
                                  const int* __restrict__ targets, int64_t n, int64_t vocab) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= n) return;
  const float l = run_m[r] + logf(run_s[r]);
  lse[r] = l;
  const int tg = targets[r];
  const bool has = tg >= 0 && tg < vocab;
  logprob[r] = has ? zt[r] - l : 0.0f;
  if (entropy) entropy[r] = has ? l - run_sz[r] / run_s[r] : 0.0f;
}

__global__ void finish_mu_kernel(float* __restrict__ mu, const float* __restrict__ run_s,
                                 const float* __restrict__ run_sz, int64_t n) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r < n) mu[r] = run_sz[r] / run_s[r];
}

// dz[r, j] = tau * (a (1[j = target] - p) - b p (z - mu)) for the tile's row r (one block per row; V columns per
// step: V = 4 when the tile width allows 16-byte logits loads).
template <class T, int V>
__global__ void dz_kernel(T* __restrict__ dz, const float* __restrict__ logits, const int* __restrict__ targets,
                          const float* __restrict__ lse, const float* __restrict__ dlogprob,
                          const float* __restrict__ dentropy, const float* __restrict__ mu, int64_t w, int64_t v0,
                          int64_t vocab, float tau) {
  const int64_t r = blockIdx.x;
  const float* row = logits + r * w;
  T* out = dz + r * w;
  const int tg = targets[r];
  if (tg < 0 || tg >= vocab) {
    for (int64_t j = threadIdx.x; j < w; j += blockDim.x) out[j] = from_f32<T>(0.0f);
    return;
  }
  const float l = lse[r];
  const float a = dlogprob[r] * tau;
  const float b = dentropy ? dentropy[r] * tau : 0.0f;
  const float m = dentropy ? mu[r] : 0.0f;
  const int64_t tj = tg - v0;
#pragma unroll 4
  for (int64_t j0 = static_cast<int64_t>(threadIdx.x) * V; j0 < w; j0 += static_cast<int64_t>(blockDim.x) * V) {
    const Vec<float, V> z = load_vec<V>(row + j0);
    Vec<T, V> o;
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const float p = expf(z.v[k] - l);
      float g = -a * p;
      if (b != 0.0f) g -= b * p * (z.v[k] - m);
      if (j0 + k == tj) g += a;
      o.v[k] = from_f32<T>(g);
    }
    store_vec<V>(out + j0, o);
  }
}

struct HeadShapes {
  int64_t tokens, hidden, vocab, tc, vc;
};

HeadShapes check_head(const Tensor& hidden, const Tensor& weight, const Tensor& targets, const char* op) {
  check_cuda_tensor(hidden, op);
  check_cuda_tensor(weight, op);
  check_cuda_tensor(targets, op);
  RLCU_CHECK(weight.ndim == 2, "{}: weight must be [V, H], got {}", op, weight.shape_str());
  HeadShapes s{};
  s.tokens = hidden.rows();
  s.hidden = hidden.cols();
  s.vocab = weight.size(0);
  RLCU_CHECK(weight.size(1) == s.hidden, "{}: hidden {} and weight {} disagree on H", op, hidden.shape_str(),
             weight.shape_str());
  RLCU_CHECK(hidden.dtype == weight.dtype && (hidden.dtype == DType::BF16 || hidden.dtype == DType::F32),
             "{}: hidden ({}) and weight ({}) must both be bf16 or both f32", op, dtype_name(hidden.dtype),
             dtype_name(weight.dtype));
  RLCU_CHECK(targets.dtype == DType::I32 && targets.numel() == s.tokens, "{}: targets must be i32 [{}], got {} {}", op,
             s.tokens, dtype_name(targets.dtype), targets.shape_str());
  RLCU_CHECK(s.vocab > 0 && s.hidden > 0, "{}: empty weight {}", op, weight.shape_str());
  const LogprobChunking c = logprob_chunking();
  s.tc = std::min(s.tokens, c.tokens);
  s.vc = std::min(s.vocab, c.vocab);
  return s;
}

void check_vec(const Tensor& t, int64_t n, const char* op, const char* name) {
  check_cuda_tensor(t, op);
  RLCU_CHECK(t.dtype == DType::F32 && t.numel() == n, "{}: {} must be f32 [{}], got {} {}", op, name, n,
             dtype_name(t.dtype), t.shape_str());
}

Tensor tile(void* p, DType dt, int64_t rows, int64_t cols) { return Tensor(p, dt, Device::CUDA, {rows, cols}); }

// Runs the statistics pass over all vocabulary chunks for tokens [t0, t0 + n).
void stats_pass(const HeadShapes& sh, const Tensor& h2, const Tensor& weight, const int* targets, int64_t t0, int64_t n,
                float tau, float* logits, float* m, float* s, float* sz, float* zt, Context& ctx) {
  cudaStream_t st = stream_of(ctx);
  ops::GemmParams gp;
  gp.trans_b = true;
  gp.alpha = tau;
  for (int64_t v0 = 0; v0 < sh.vocab; v0 += sh.vc) {
    const int64_t w = std::min(sh.vc, sh.vocab - v0);
    cuda::gemm(tile(logits, DType::F32, n, w), h2.slice_rows(t0, t0 + n), weight.slice_rows(v0, v0 + w), gp, ctx);
    stats_kernel<<<static_cast<unsigned>(n), kRowThreads, 0, st>>>(m, s, sz, zt, logits, targets + t0, w, v0, v0 == 0);
    RLCU_LAUNCH_CHECK(st);
  }
}

}  // namespace

void set_logprob_chunking(const LogprobChunking& c) {
  RLCU_CHECK(c.tokens >= 0 && c.vocab >= 0 && c.tokens <= (int64_t(1) << 31) - 1,
             "set_logprob_chunking: bad sizes {} x {}", c.tokens, c.vocab);
  g_chunking = c;
}

LogprobChunking logprob_chunking() {
  LogprobChunking c = g_chunking;
  if (c.tokens == 0) c.tokens = kDefaultTokenChunk;
  if (c.vocab == 0) c.vocab = kDefaultVocabChunk;
  return c;
}

void logprob_fwd(const Tensor& logprob, const Tensor& entropy, const Tensor& lse, const Tensor& hidden,
                 const Tensor& weight, const Tensor& targets, const ops::LogprobParams& p, Context& ctx) {
  const HeadShapes sh = check_head(hidden, weight, targets, "logprob_fwd");
  check_vec(logprob, sh.tokens, "logprob_fwd", "logprob");
  check_vec(lse, sh.tokens, "logprob_fwd", "lse");
  if (!entropy.empty()) check_vec(entropy, sh.tokens, "logprob_fwd", "entropy");
  if (sh.tokens == 0) return;
  Carver measure;
  measure.take<float>(sh.tc * sh.vc);
  for (int i = 0; i < 4; ++i) measure.take<float>(sh.tc);
  Carver carve(static_cast<char*>(scratch(ctx, measure.size())));
  float* logits = carve.take<float>(sh.tc * sh.vc);
  float* m = carve.take<float>(sh.tc);
  float* s = carve.take<float>(sh.tc);
  float* sz = carve.take<float>(sh.tc);
  float* zt = carve.take<float>(sh.tc);

  const Tensor h2 = hidden.view({sh.tokens, sh.hidden});
  const int* tg = targets.ptr<int>();
  cudaStream_t st = stream_of(ctx);
  for (int64_t t0 = 0; t0 < sh.tokens; t0 += sh.tc) {
    const int64_t n = std::min(sh.tc, sh.tokens - t0);
    stats_pass(sh, h2, weight, tg, t0, n, p.inv_temperature, logits, m, s, sz, zt, ctx);
    finish_fwd_kernel<<<grid_for(n, 256), 256, 0, st>>>(logprob.ptr<float>() + t0,
                                                        entropy.empty() ? nullptr : entropy.ptr<float>() + t0,
                                                        lse.ptr<float>() + t0, m, s, sz, zt, tg + t0, n, sh.vocab);
    RLCU_LAUNCH_CHECK(st);
  }
}

void logprob_bwd(const Tensor& dhidden, const Tensor& dweight, const Tensor& dlogprob, const Tensor& dentropy,
                 const Tensor& hidden, const Tensor& weight, const Tensor& targets, const Tensor& lse,
                 const ops::LogprobParams& p, Context& ctx) {
  const HeadShapes sh = check_head(hidden, weight, targets, "logprob_bwd");
  check_vec(dlogprob, sh.tokens, "logprob_bwd", "dlogprob");
  check_vec(lse, sh.tokens, "logprob_bwd", "lse");
  if (!dentropy.empty()) check_vec(dentropy, sh.tokens, "logprob_bwd", "dentropy");
  check_cuda_tensor(dhidden, "logprob_bwd");
  check_cuda_tensor(dweight, "logprob_bwd");
  RLCU_CHECK(dhidden.rows() == sh.tokens && dhidden.cols() == sh.hidden &&
                 (dhidden.dtype == DType::F32 || dhidden.dtype == DType::BF16),
             "logprob_bwd: dhidden must be f32 or bf16 [{}, {}], got {} {}", sh.tokens, sh.hidden,
             dtype_name(dhidden.dtype), dhidden.shape_str());
  RLCU_CHECK(dweight.dtype == DType::F32 && dweight.rows() == sh.vocab && dweight.cols() == sh.hidden,
             "logprob_bwd: dweight must be f32 [{}, {}], got {} {}", sh.vocab, sh.hidden, dtype_name(dweight.dtype),
             dweight.shape_str());
  if (sh.tokens == 0) return;
  const bool with_entropy = !dentropy.empty();
  const bool direct = dhidden.dtype == DType::F32;  // accumulate straight into dhidden
  const DType dzt = hidden.dtype;

  Carver measure;
  measure.take<float>(sh.tc * sh.vc);
  measure.take<char>(sh.tc * sh.vc * dtype_size(dzt));
  measure.take<float>(direct ? 0 : sh.tc * sh.hidden);
  for (int i = 0; i < 4; ++i) measure.take<float>(sh.tc);
  Carver carve(static_cast<char*>(scratch(ctx, measure.size())));
  float* logits = carve.take<float>(sh.tc * sh.vc);
  char* dz = carve.take<char>(sh.tc * sh.vc * dtype_size(dzt));
  float* acc = carve.take<float>(direct ? 0 : sh.tc * sh.hidden);
  float* m = carve.take<float>(sh.tc);
  float* s = carve.take<float>(sh.tc);
  float* sz = carve.take<float>(sh.tc);
  float* mu = carve.take<float>(sh.tc);

  const Tensor h2 = hidden.view({sh.tokens, sh.hidden});
  const Tensor dh2 = dhidden.view({sh.tokens, sh.hidden});
  const Tensor dw2 = dweight.view({sh.vocab, sh.hidden});
  const int* tg = targets.ptr<int>();
  const float tau = p.inv_temperature;
  cudaStream_t st = stream_of(ctx);
  ops::GemmParams logit_p;
  logit_p.trans_b = true;
  logit_p.alpha = tau;

  for (int64_t t0 = 0; t0 < sh.tokens; t0 += sh.tc) {
    const int64_t n = std::min(sh.tc, sh.tokens - t0);
    if (with_entropy) {
      stats_pass(sh, h2, weight, tg, t0, n, tau, logits, m, s, sz, nullptr, ctx);
      finish_mu_kernel<<<grid_for(n, 256), 256, 0, st>>>(mu, s, sz, n);
      RLCU_LAUNCH_CHECK(st);
    }
    const Tensor hc = h2.slice_rows(t0, t0 + n);
    const Tensor dh = direct ? dh2.slice_rows(t0, t0 + n) : tile(acc, DType::F32, n, sh.hidden);
    for (int64_t v0 = 0; v0 < sh.vocab; v0 += sh.vc) {
      const int64_t w = std::min(sh.vc, sh.vocab - v0);
      const Tensor wc = weight.slice_rows(v0, v0 + w);
      cuda::gemm(tile(logits, DType::F32, n, w), hc, wc, logit_p, ctx);
      dispatch_float(dzt, "logprob_bwd dz", [&](auto tag) {
        using T = decltype(tag);
        auto launch = [&](auto vc) {
          dz_kernel<T, decltype(vc)::value><<<static_cast<unsigned>(n), kRowThreads, 0, st>>>(
              reinterpret_cast<T*>(dz), logits, tg + t0, lse.ptr<float>() + t0, dlogprob.ptr<float>() + t0,
              with_entropy ? dentropy.ptr<float>() + t0 : nullptr, mu, w, v0, sh.vocab, tau);
        };
        if (w % 4 == 0) launch(std::integral_constant<int, 4>{});
        else launch(std::integral_constant<int, 1>{});
        RLCU_LAUNCH_CHECK(st);
      });
      const Tensor dzc = tile(dz, dzt, n, w);
      ops::GemmParams hp;
      hp.beta = v0 == 0 ? 0.0f : 1.0f;
      cuda::gemm(dh, dzc, wc, hp, ctx);
      ops::GemmParams wp;
      wp.trans_a = true;
      wp.beta = 1.0f;
      cuda::gemm(dw2.slice_rows(v0, v0 + w), dzc, hc, wp, ctx);
    }
    if (!direct) cast(dh2.slice_rows(t0, t0 + n), dh, ctx);
  }
}

}  // namespace rlcu::cuda
