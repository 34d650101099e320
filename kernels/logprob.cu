// Fused log-prob head on CUDA: lm_head -> log-softmax -> gather at the target (+ entropy), never storing a [T, V]
// tensor.
//
// Math (z = scaled logits of one token, V wide; tau = inv_temperature):
//   z[t, j] = tau * (hidden[t, :] . weight[j, :]);   lse[t] = log sum_j exp z[t, j];   p = exp(z - lse)
//   logprob[t] = z[t, target[t]] - lse[t];   entropy[t] = lse[t] - mu[t],  mu[t] = sum_j p[t, j] z[t, j]
//   backward, with a = dlogprob[t], b = dentropy[t] (0 when dentropy is empty):
//   dz[t, j] = a (1[j = target] - p_j) - b p_j (z_j - mu)
//   dhidden[t, :] = tau * sum_j dz[t, j] weight[j, :]          (activation gradient: overwrites)
//   dweight[j, :] += tau * sum_t dz[t, j] hidden[t, :]          (parameter gradient: F32, accumulates; tied or not;
//                                                               skipped when dweight is empty)
// A target outside [0, V) (negative marks "no target") gives logprob = entropy = 0 and no gradient; lse is still
// written.
//
// Shapes/dtypes: hidden[T, H] and weight[V, H] both BF16 (the model) or both F32; targets[T] I32; logprob, lse,
// entropy, dlogprob, dentropy [T] F32; dhidden[T, H] F32 or BF16; dweight[V, H] F32 (checked before the call:
// kernels/contract/logprob.cpp).
//
// Schedule: tokens in chunks of Tc, and for each token chunk the vocabulary in chunks of Vc (a multiple of the
// kLogprobSegment = 256-column segment). cuBLASLt writes the [Tc, Vc] fp32 logits tile (alpha = tau) into the
// context's scratch; in the forward a warp per (row, segment) reduces its 256 logits (held in registers: one read)
// to the segment's (max, sum exp, sum exp * z), writes the saved softmax exp(z - segment max) when asked
// (LogprobParams::probs), and picks the target logit; a last kernel, a warp per row, merges the segments of the
// whole vocabulary into lse / logprob / entropy (and the saved statistics). The backward either recomputes each
// tile, or, with the saved softmax, reads p and z from it (no logits product at all); either way it forms tau * dz
// in the tile's dtype (bf16 for the model) in a second buffer and runs two GEMMs: dhidden_chunk (+)= dz W_chunk
// (fp32 accumulator in scratch when dhidden is BF16) and dweight_chunk += dz^T h_chunk. The entropy gradient needs
// mu = E_p[z]: the saved statistics hold it; without them a statistics pass (one more logits GEMM per tile)
// recomputes it first. Scratch: Tc*Vc*(4 + elt) + Tc*H*4 + Tc*ceil(V/256)*12 bytes (about 0.9 GiB at the default
// 16384 x 8192 chunks, H = 1024 and V = 151,936), allocated on first use and reused. Everything is deterministic (no
// atomics).
// Chunk sizes (H100, 32,768 tokens, H = 1024, V = 151,936, forward + backward): 16384 x 8192 83.4 ms recomputing the
// logits and 70.9 ms with the saved softmax; 8192 x 8192 86.9 / 72.6 ms; 2048 x 8192 81.3 ms saved (a logits tile
// small enough for L2 does not make the forward faster: 31.7 ms against 29.6 ms).
#include <algorithm>
#include <type_traits>
#include <utility>

#include "cuda_common.cuh"
#include "backends.h"
#include "ops_cuda_internal.h"

namespace rlcu::cuda {

namespace {

constexpr int64_t kDefaultTokenChunk = 16384;
constexpr int64_t kDefaultVocabChunk = 8192;
LogprobChunking g_chunking;

constexpr int kRowThreads = 256;
constexpr int64_t kSeg = ops::kLogprobSegment;  // 256 = 32 lanes x 8 values
constexpr int kSegWarps = 8;                     // segments per block of the statistics kernel
constexpr int kFinishWarps = 8;                  // rows per block of the merge kernel

// Warp per (row r, segment g of the tile): the segment's max, sum exp(z - max) and sum exp(z - max) z into the
// partials at [r, v0 / kSeg + g]; with probs, probs[r, v0 + j] = exp(z_j - max). zt[r] receives z at the target when
// it falls in the segment. VEC: 16-byte logits loads and 4-wide probs stores (w % 4 == 0, probs_ld % 4 == 0).
template <bool VEC, class T>
__global__ void __launch_bounds__(kSegWarps * 32) seg_stats_kernel(
    float* __restrict__ part_m, float* __restrict__ part_s, float* __restrict__ part_sz, float* __restrict__ zt,
    T* __restrict__ probs, int64_t probs_ld, const float* __restrict__ logits, const int* __restrict__ targets,
    int64_t w, int64_t v0, int64_t nseg) {
  const int64_t r = blockIdx.x;
  const int lane = threadIdx.x % 32;
  const int64_t c0 = (static_cast<int64_t>(blockIdx.y) * kSegWarps + threadIdx.x / 32) * kSeg;
  if (c0 >= w) return;
  const float* row = logits + r * w;
  float z[8];
  bool valid[8];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int64_t base = c0 + h * 128 + lane * 4;
    if constexpr (VEC) {
      const bool ok = base < w;
      const float4 v = ok ? *reinterpret_cast<const float4*>(row + base) : make_float4(0.f, 0.f, 0.f, 0.f);
      z[4 * h] = v.x;
      z[4 * h + 1] = v.y;
      z[4 * h + 2] = v.z;
      z[4 * h + 3] = v.w;
#pragma unroll
      for (int k = 0; k < 4; ++k) valid[4 * h + k] = ok;
    } else {
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        valid[4 * h + k] = base + k < w;
        z[4 * h + k] = valid[4 * h + k] ? row[base + k] : 0.0f;
      }
    }
  }
  float m = -INFINITY;
#pragma unroll
  for (int k = 0; k < 8; ++k)
    if (valid[k]) m = fmaxf(m, z[k]);
  m = warp_max(m);
  float e[8], s = 0.0f, sz = 0.0f;
#pragma unroll
  for (int k = 0; k < 8; ++k) {
    e[k] = valid[k] ? expf(z[k] - m) : 0.0f;
    s += e[k];
    sz = valid[k] ? fmaf(e[k], z[k], sz) : sz;
  }
  s = warp_sum(s);
  sz = warp_sum(sz);
  if (probs) {
    T* out = probs + r * probs_ld + v0;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t base = c0 + h * 128 + lane * 4;
      if constexpr (VEC) {
        if (base < w) {
          Vec<T, 4> o;
#pragma unroll
          for (int k = 0; k < 4; ++k) o.v[k] = from_f32<T>(e[4 * h + k]);
          store_vec<4>(out + base, o);
        }
      } else {
#pragma unroll
        for (int k = 0; k < 4; ++k)
          if (valid[4 * h + k]) out[base + k] = from_f32<T>(e[4 * h + k]);
      }
    }
  }
  if (lane == 0) {
    const int64_t g = r * nseg + v0 / kSeg + c0 / kSeg;
    part_m[g] = m;
    part_s[g] = s;
    part_sz[g] = sz;
    const int64_t tg = targets[r] - v0;
    if (tg >= c0 && tg < c0 + kSeg && tg < w) zt[r] = row[tg];
  }
}

// Warp per row: merges the nseg segment partials of row r into lse (= m + log s), logprob, entropy, mu (each output
// optional) and, with stats, the saved statistics row [segment maxima | z at the target | mu].
__global__ void __launch_bounds__(kFinishWarps * 32) finish_kernel(
    float* __restrict__ logprob, float* __restrict__ entropy, float* __restrict__ lse, float* __restrict__ mu,
    float* __restrict__ stats, int64_t stats_ld, const float* __restrict__ part_m, const float* __restrict__ part_s,
    const float* __restrict__ part_sz, const float* __restrict__ zt, const int* __restrict__ targets, int64_t n,
    int64_t nseg, int64_t vocab) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kFinishWarps + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (r >= n) return;
  const float* pm = part_m + r * nseg;
  float m = -INFINITY;
  for (int64_t g = lane; g < nseg; g += 32) m = fmaxf(m, pm[g]);
  m = warp_max(m);
  float s = 0.0f, sz = 0.0f;
  for (int64_t g = lane; g < nseg; g += 32) {
    const float c = expf(pm[g] - m);
    s = fmaf(part_s[r * nseg + g], c, s);
    sz = fmaf(part_sz[r * nseg + g], c, sz);
  }
  s = warp_sum(s);
  sz = warp_sum(sz);
  if (stats)
    for (int64_t g = lane; g < nseg; g += 32) stats[r * stats_ld + g] = pm[g];
  if (lane != 0) return;
  const float l = m + logf(s);
  const int tg = targets[r];
  const bool has = tg >= 0 && tg < vocab;
  if (lse) lse[r] = l;
  if (logprob) logprob[r] = has ? zt[r] - l : 0.0f;
  if (entropy) entropy[r] = has ? l - sz / s : 0.0f;
  if (mu) mu[r] = sz / s;
  if (stats) {
    stats[r * stats_ld + nseg] = has ? zt[r] : 0.0f;
    stats[r * stats_ld + nseg + 1] = sz / s;
  }
}

// dz[r, j] = tau * (a (1[j = target] - p) - b p (z - mu)) for the tile's row r (one block per row; V columns per
// step: V = 4 when the tile width, and with SAVED the vocabulary, allow vector access). p and z come from the
// logits tile, or (SAVED) from the saved softmax: probs (row stride vocab, column v0 + j) scaled by its segment
// statistic, the target's from its exact logit.
template <class T, int V, bool SAVED>
__global__ void dz_kernel(T* __restrict__ dz, const float* __restrict__ logits, const T* __restrict__ probs,
                          const float* __restrict__ stats, int64_t stats_ld, const int* __restrict__ targets,
                          const float* __restrict__ lse, const float* __restrict__ dlogprob,
                          const float* __restrict__ dentropy, const float* __restrict__ mu, int64_t w, int64_t v0,
                          int64_t vocab, float tau) {
  const int64_t r = blockIdx.x;
  T* out = dz + r * w;
  const int tg = targets[r];
  if (tg < 0 || tg >= vocab) {
    for (int64_t j = threadIdx.x; j < w; j += blockDim.x) out[j] = from_f32<T>(0.0f);
    return;
  }
  const float l = lse[r];
  const float a = dlogprob[r] * tau;
  const float b = dentropy ? dentropy[r] * tau : 0.0f;
  const float* st = SAVED ? stats + r * stats_ld : nullptr;
  const int64_t nseg = (vocab + kSeg - 1) / kSeg;
  const float m = !dentropy ? 0.0f : SAVED ? st[nseg + 1] : mu[r];
  const int64_t tj = tg - v0;
#pragma unroll 4
  for (int64_t j0 = static_cast<int64_t>(threadIdx.x) * V; j0 < w; j0 += static_cast<int64_t>(blockDim.x) * V) {
    float p[V], z[V];
    if constexpr (SAVED) {
      const float sm = st[(v0 + j0) / kSeg];  // V divides kSeg: the V columns share a segment
      const float scale = expf(sm - l);
      const Vec<T, V> e = load_vec<V>(probs + r * vocab + v0 + j0);
#pragma unroll
      for (int k = 0; k < V; ++k) {
        const float ev = to_f32(e.v[k]);
        p[k] = ev * scale;
        z[k] = ev > 0.0f ? sm + logf(ev) : 0.0f;
        if (j0 + k == tj) {
          z[k] = st[nseg];
          p[k] = expf(z[k] - l);
        }
      }
    } else {
      const Vec<float, V> zv = load_vec<V>(logits + r * w + j0);
#pragma unroll
      for (int k = 0; k < V; ++k) {
        z[k] = zv.v[k];
        p[k] = expf(z[k] - l);
      }
    }
    Vec<T, V> o;
#pragma unroll
    for (int k = 0; k < V; ++k) {
      float g = -a * p[k];
      if (b != 0.0f && p[k] > 0.0f) g -= b * p[k] * (z[k] - m);
      if (j0 + k == tj) g += a;
      o.v[k] = from_f32<T>(g);
    }
    store_vec<V>(out + j0, o);
  }
}

struct HeadShapes {
  int64_t tokens, hidden, vocab, tc, vc, nseg;
};

// The head's shapes and chunks (the arguments are checked by contract::logprob_fwd / _bwd).
HeadShapes head_shapes(const Tensor& hidden, const Tensor& weight) {
  HeadShapes s{};
  s.tokens = hidden.rows();
  s.hidden = hidden.cols();
  s.vocab = weight.size(0);
  const LogprobChunking c = logprob_chunking();
  s.tc = std::min(s.tokens, c.tokens);
  s.vc = std::min(s.vocab, ceil_div(c.vocab, kSeg) * kSeg);  // tiles start on segment boundaries
  s.nseg = ceil_div(s.vocab, kSeg);
  return s;
}

// The saved softmax of p: {probs, stats} or two empty tensors.
std::pair<Tensor, Tensor> saved_softmax(const ops::LogprobParams& p) {
  if (!p.probs) return {};
  return {*p.probs, *p.prob_stats};
}

Tensor tile(void* p, DType dt, int64_t rows, int64_t cols) { return Tensor(p, dt, Device::CUDA, {rows, cols}); }

struct Partials {
  float *m, *s, *sz, *zt;
};

// Runs the statistics pass over all vocabulary chunks for tokens [t0, t0 + n): segment partials of every row, and
// the saved softmax rows [t0, t0 + n) when probs is non-empty.
void stats_pass(const HeadShapes& sh, const Tensor& h2, const Tensor& weight, const int* targets, int64_t t0, int64_t n,
                float tau, float* logits, const Partials& pa, const Tensor& probs, Context& ctx) {
  cudaStream_t st = stream_of(ctx);
  ops::GemmParams gp;
  gp.trans_b = true;
  gp.alpha = tau;
  for (int64_t v0 = 0; v0 < sh.vocab; v0 += sh.vc) {
    const int64_t w = std::min(sh.vc, sh.vocab - v0);
    cuda::gemm(tile(logits, DType::F32, n, w), h2.slice_rows(t0, t0 + n), weight.slice_rows(v0, v0 + w), gp, ctx);
    const dim3 grid(static_cast<unsigned>(n), static_cast<unsigned>(ceil_div(w, kSeg * kSegWarps)));
    auto launch = [&](auto tag, auto vec) {
      using T = decltype(tag);
      T* pr = probs.empty() ? nullptr : probs.ptr<T>() + t0 * sh.vocab;
      seg_stats_kernel<decltype(vec)::value, T><<<grid, kSegWarps * 32, 0, st>>>(
          pa.m, pa.s, pa.sz, pa.zt, pr, sh.vocab, logits, targets + t0, w, v0, sh.nseg);
    };
    const bool vec = w % 4 == 0 && (probs.empty() || sh.vocab % 4 == 0);
    dispatch_float(h2.dtype, "logprob stats", [&](auto tag) {
      if (vec) launch(tag, std::true_type{});
      else launch(tag, std::false_type{});
    });
    RLCU_LAUNCH_CHECK(st);
  }
}

Partials carve_partials(Carver& c, const HeadShapes& sh) {
  Partials pa;
  pa.m = c.take<float>(sh.tc * sh.nseg);
  pa.s = c.take<float>(sh.tc * sh.nseg);
  pa.sz = c.take<float>(sh.tc * sh.nseg);
  pa.zt = c.take<float>(sh.tc);
  return pa;
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
  const HeadShapes sh = head_shapes(hidden, weight);
  const std::pair<Tensor, Tensor> sv = saved_softmax(p);
  const Tensor& probs = sv.first;
  const Tensor& stats = sv.second;
  if (sh.tokens == 0) return;
  Carver measure;
  measure.take<float>(sh.tc * sh.vc);
  carve_partials(measure, sh);
  Carver carve(static_cast<char*>(scratch(ctx, measure.size())));
  float* logits = carve.take<float>(sh.tc * sh.vc);
  const Partials pa = carve_partials(carve, sh);

  const Tensor h2 = hidden.view({sh.tokens, sh.hidden});
  const int* tg = targets.ptr<int>();
  const int64_t scols = ops::logprob_prob_stats_cols(sh.vocab);
  cudaStream_t st = stream_of(ctx);
  for (int64_t t0 = 0; t0 < sh.tokens; t0 += sh.tc) {
    const int64_t n = std::min(sh.tc, sh.tokens - t0);
    stats_pass(sh, h2, weight, tg, t0, n, p.inv_temperature, logits, pa, probs, ctx);
    finish_kernel<<<static_cast<unsigned>(ceil_div(n, kFinishWarps)), kFinishWarps * 32, 0, st>>>(
        logprob.ptr<float>() + t0, entropy.empty() ? nullptr : entropy.ptr<float>() + t0, lse.ptr<float>() + t0,
        nullptr, stats.empty() ? nullptr : stats.ptr<float>() + t0 * scols, scols, pa.m, pa.s, pa.sz, pa.zt, tg + t0,
        n, sh.nseg, sh.vocab);
    RLCU_LAUNCH_CHECK(st);
  }
}

void logprob_bwd(const Tensor& dhidden, const Tensor& dweight, const Tensor& dlogprob, const Tensor& dentropy,
                 const Tensor& hidden, const Tensor& weight, const Tensor& targets, const Tensor& lse,
                 const ops::LogprobParams& p, Context& ctx) {
  const HeadShapes sh = head_shapes(hidden, weight);
  const std::pair<Tensor, Tensor> sv = saved_softmax(p);
  const Tensor& probs = sv.first;
  const Tensor& stats = sv.second;
  if (sh.tokens == 0) return;
  const bool saved = !probs.empty();
  const bool with_entropy = !dentropy.empty();
  const bool mu_pass = with_entropy && !saved;  // mu = E_p[z] from a statistics pass
  const bool direct = dhidden.dtype == DType::F32;  // accumulate straight into dhidden
  const DType dzt = hidden.dtype;

  Carver measure;
  measure.take<float>(saved ? 0 : sh.tc * sh.vc);
  measure.take<char>(sh.tc * sh.vc * dtype_size(dzt));
  measure.take<float>(direct ? 0 : sh.tc * sh.hidden);
  measure.take<float>(sh.tc);
  if (mu_pass) carve_partials(measure, sh);
  Carver carve(static_cast<char*>(scratch(ctx, measure.size())));
  float* logits = carve.take<float>(saved ? 0 : sh.tc * sh.vc);
  char* dz = carve.take<char>(sh.tc * sh.vc * dtype_size(dzt));
  float* acc = carve.take<float>(direct ? 0 : sh.tc * sh.hidden);
  float* mu = carve.take<float>(sh.tc);
  const Partials pa = mu_pass ? carve_partials(carve, sh) : Partials{};

  const Tensor h2 = hidden.view({sh.tokens, sh.hidden});
  const Tensor dh2 = dhidden.view({sh.tokens, sh.hidden});
  const Tensor dw2 = dweight.empty() ? Tensor() : dweight.view({sh.vocab, sh.hidden});
  const int* tg = targets.ptr<int>();
  const float tau = p.inv_temperature;
  const int64_t scols = ops::logprob_prob_stats_cols(sh.vocab);
  cudaStream_t st = stream_of(ctx);
  ops::GemmParams logit_p;
  logit_p.trans_b = true;
  logit_p.alpha = tau;

  for (int64_t t0 = 0; t0 < sh.tokens; t0 += sh.tc) {
    const int64_t n = std::min(sh.tc, sh.tokens - t0);
    if (mu_pass) {
      stats_pass(sh, h2, weight, tg, t0, n, tau, logits, pa, Tensor(), ctx);
      finish_kernel<<<static_cast<unsigned>(ceil_div(n, kFinishWarps)), kFinishWarps * 32, 0, st>>>(
          nullptr, nullptr, nullptr, mu, nullptr, 0, pa.m, pa.s, pa.sz, pa.zt, tg + t0, n, sh.nseg, sh.vocab);
      RLCU_LAUNCH_CHECK(st);
    }
    const Tensor hc = h2.slice_rows(t0, t0 + n);
    const Tensor dh = direct ? dh2.slice_rows(t0, t0 + n) : tile(acc, DType::F32, n, sh.hidden);
    for (int64_t v0 = 0; v0 < sh.vocab; v0 += sh.vc) {
      const int64_t w = std::min(sh.vc, sh.vocab - v0);
      const Tensor wc = weight.slice_rows(v0, v0 + w);
      if (!saved) cuda::gemm(tile(logits, DType::F32, n, w), hc, wc, logit_p, ctx);
      dispatch_float(dzt, "logprob_bwd dz", [&](auto tag) {
        using T = decltype(tag);
        const T* pr = saved ? probs.ptr<T>() + t0 * sh.vocab : nullptr;
        const float* sp = saved ? stats.ptr<float>() + t0 * scols : nullptr;
        auto launch = [&](auto vc, auto sv) {
          dz_kernel<T, decltype(vc)::value, decltype(sv)::value><<<static_cast<unsigned>(n), kRowThreads, 0, st>>>(
              reinterpret_cast<T*>(dz), logits, pr, sp, scols, tg + t0, lse.ptr<float>() + t0,
              dlogprob.ptr<float>() + t0, with_entropy ? dentropy.ptr<float>() + t0 : nullptr, mu, w, v0, sh.vocab,
              tau);
        };
        const bool vec = w % 4 == 0 && (!saved || sh.vocab % 4 == 0);
        if (saved) {
          if (vec) launch(std::integral_constant<int, 4>{}, std::true_type{});
          else launch(std::integral_constant<int, 1>{}, std::true_type{});
        } else {
          if (vec) launch(std::integral_constant<int, 4>{}, std::false_type{});
          else launch(std::integral_constant<int, 1>{}, std::false_type{});
        }
        RLCU_LAUNCH_CHECK(st);
      });
      const Tensor dzc = tile(dz, dzt, n, w);
      ops::GemmParams hp;
      hp.beta = v0 == 0 ? 0.0f : 1.0f;
      cuda::gemm(dh, dzc, wc, hp, ctx);
      ops::GemmParams wp;
      wp.trans_a = true;
      wp.beta = 1.0f;
      if (!dw2.empty()) cuda::gemm(dw2.slice_rows(v0, v0 + w), dzc, hc, wp, ctx);
    }
    if (!direct) cast(dh2.slice_rows(t0, t0 + n), dh, ctx);
  }
}

}  // namespace rlcu::cuda
