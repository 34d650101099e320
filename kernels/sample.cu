// CUDA sampler (ops::sample; math and semantics in include/rlcu/ops.h, CPU twin in kernels/cpu/sample.cpp).
// Three kernels. sample_prep_kernel, one block of kThreads per row of logits[B,V] (the row is re-read from global
// memory, L2, on each pass):
//   pass 1   m = max z and the first index holding it (block arg-max, lowest index on ties)
//   pass 2   Z = sum expf(z - m) and the number of finite tokens (fixed-order block sums); lse = m + logf(Z)
//   top-k    radix select of the top_k-th largest order_key(z): 8 passes of 4-bit digits, counting per digit
//   top-p    the same descent weighted by expf(z - m) over the tokens kept by top-k: the largest key t whose
//            tokens with key >= t hold at least top_p of that set's mass
//   min-p    bound m + logf(min_p)
//   greedy rows (and rows without a finite maximum) are finished here.
// sample_race_kernel, grid (chunks, B): the Gumbel race over the kept tokens of one vocabulary chunk,
//            z - log(-log u) in fp64 with u from sampling::sample_bits (the same Philox words as the CPU), block
//            arg-max with lowest index on ties; tokens whose z is more than kNoiseSpan below m cannot win and are
//            skipped. Chunks (about eight blocks per multiprocessor over the batch) keep small batches fast.
// sample_finish_kernel: the best chunk candidate per row (higher score, then lower index) and its log-prob. The
// chosen token is the same as a single race over the whole row. Per-row state and candidates live in scratch.
// All reductions have a fixed order (no atomics): the result is bit-reproducible. No gradients.
// Parameters, dtypes and sizes are checked before the call (kernels/contract/sample.cpp).
#include <climits>

#include "cuda_common.cuh"
#include "backends.h"
#include "sample_common.h"

namespace rlcu::cuda {

namespace {

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;
constexpr int kDigits = 16;  // 4-bit radix digits

struct SampleArgs {
  int64_t vocab;
  float inv_t;
  uint64_t seed;
  int top_k;
  float top_p;
  float min_p;
  bool greedy;
};

template <class T>
__device__ __forceinline__ float row_z(const T* row, int64_t j, float inv_t) {
  return sampling::sample_logit(to_f32(row[j]), inv_t);
}

// Block arg-max of (v, i): larger v wins, the lower index on ties. Every thread gets the result.
template <class S>
__device__ __forceinline__ void block_argmax(S& v, int& i, S* sv, int* si) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const S ov = __shfl_xor_sync(0xffffffffu, v, o);
    const int oi = __shfl_xor_sync(0xffffffffu, i, o);
    if (ov > v || (ov == v && oi < i)) {
      v = ov;
      i = oi;
    }
  }
  __syncthreads();
  if (lane == 0) {
    sv[warp] = v;
    si[warp] = i;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < kWarps; ++w)
      if (sv[w] > v || (sv[w] == v && si[w] < i)) {
        v = sv[w];
        i = si[w];
      }
    sv[0] = v;
    si[0] = i;
  }
  __syncthreads();
  v = sv[0];
  i = si[0];
}

// Largest key t such that the tokens with key >= max(t, floor) (finite z only) weigh at least `target`, where a
// token weighs 1 (kMass false: a count) or expf(z - m) (kMass true). Most significant digit first; at each level
// the digit is the largest one whose cumulative weight (from the top) reaches the target.
template <bool kMass, class T>
__device__ uint32_t radix_bound(const T* row, const SampleArgs& a, float m, uint32_t floor, float target,
                                float* hist /*[kWarps * kDigits]*/, float* bucket /*[kDigits]*/) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  uint32_t prefix = 0;
  float above = 0.0f;
  for (int shift = 28; shift >= 0; shift -= 4) {
    const uint32_t high_mask = shift == 28 ? 0u : (0xFFFFFFFFu << (shift + 4));
    float acc[kDigits];
#pragma unroll
    for (int d = 0; d < kDigits; ++d) acc[d] = 0.0f;
    for (int64_t j = threadIdx.x; j < a.vocab; j += kThreads) {
      const float z = row_z(row, j, a.inv_t);
      const uint32_t k = sampling::order_key(z);
      if (z == -INFINITY || k < floor || (k & high_mask) != prefix) continue;
      const int digit = static_cast<int>((k >> shift) & 15u);
      const float w = kMass ? expf(z - m) : 1.0f;
#pragma unroll
      for (int d = 0; d < kDigits; ++d) acc[d] += d == digit ? w : 0.0f;
    }
#pragma unroll
    for (int d = 0; d < kDigits; ++d) {
      const float s = warp_sum(acc[d]);
      if (lane == 0) hist[warp * kDigits + d] = s;
    }
    __syncthreads();
    if (threadIdx.x < kDigits) {
      float s = 0.0f;
      for (int w = 0; w < kWarps; ++w) s += hist[w * kDigits + threadIdx.x];
      bucket[threadIdx.x] = s;
    }
    __syncthreads();
    int chosen = -1;
    float run = above, run_before = above;
    for (int d = kDigits - 1; d >= 0; --d) {
      run_before = run;
      run += bucket[d];
      if (run >= target) {
        chosen = d;
        break;
      }
    }
    if (chosen < 0) {  // rounding left the total just short of the target: take the lowest occupied digit
      chosen = 0;
      while (chosen < kDigits - 1 && bucket[chosen] == 0.0f) ++chosen;
      run_before = above;
      for (int d = kDigits - 1; d > chosen; --d) run_before += bucket[d];
    }
    prefix |= static_cast<uint32_t>(chosen) << shift;
    above = run_before;
    __syncthreads();  // everyone has read `bucket` before the next level rewrites it
  }
  return prefix;
}

// Per-row state handed from sample_prep_kernel to the race and finish kernels.
struct RowState {
  float m;         // max z
  float lse;       // log-sum-exp of z
  uint32_t bound;  // order_key bound of the kept set (top-k / top-p / min-p)
  int done;        // 1: the token is already written (greedy, or a row without a finite maximum)
};
struct Candidate {
  double score;  // best Gumbel score of a vocabulary chunk (-inf when none)
  int tok;       // its token (INT_MAX when none)
};

// Pass 1: max (and its first index), lse and the kept-set bound of one row per block. Greedy rows and rows
// without a finite maximum are finished here.
template <class T>
__global__ void __launch_bounds__(kThreads)
    sample_prep_kernel(int32_t* __restrict__ tokens, float* __restrict__ logprobs, RowState* __restrict__ state,
                       const T* __restrict__ logits, SampleArgs a) {
  __shared__ float red[32];
  __shared__ float hist[kWarps * kDigits];
  __shared__ float bucket[kDigits];
  __shared__ float sv_f[kWarps];
  __shared__ int si[kWarps];
  const int64_t b = blockIdx.x;
  const T* row = logits + b * a.vocab;

  float m = -INFINITY;
  int arg = INT_MAX;
  for (int64_t j = threadIdx.x; j < a.vocab; j += kThreads) {
    const float z = row_z(row, j, a.inv_t);
    if (z > m) {  // strided ascending order: the first maximum of this thread's slice is kept
      m = z;
      arg = static_cast<int>(j);
    }
  }
  block_argmax(m, arg, sv_f, si);
  if (!isfinite(m)) {
    if (threadIdx.x == 0) {
      tokens[b] = -1;
      if (logprobs) logprobs[b] = -INFINITY;
      state[b].done = 1;
    }
    return;
  }

  float esum = 0.0f, nfin = 0.0f;
  for (int64_t j = threadIdx.x; j < a.vocab; j += kThreads) {
    const float z = row_z(row, j, a.inv_t);
    esum += expf(z - m);
    nfin += z != -INFINITY ? 1.0f : 0.0f;
  }
  esum = block_sum(esum, red);
  nfin = block_sum(nfin, red);
  const float lse = m + logf(esum);
  if (a.greedy) {
    if (threadIdx.x == 0) {
      tokens[b] = arg;
      if (logprobs) logprobs[b] = row_z(row, arg, a.inv_t) - lse;
      state[b].done = 1;
    }
    return;
  }
  uint32_t bound = sampling::order_key(-INFINITY);
  if (a.top_k > 0 && static_cast<float>(a.top_k) < nfin)
    bound = radix_bound<false>(row, a, m, bound, static_cast<float>(a.top_k), hist, bucket);
  if (a.top_p < 1.0f) {
    float mass = esum;
    if (a.top_k > 0 && static_cast<float>(a.top_k) < nfin) {
      mass = 0.0f;
      for (int64_t j = threadIdx.x; j < a.vocab; j += kThreads) {
        const float z = row_z(row, j, a.inv_t);
        if (z != -INFINITY && sampling::order_key(z) >= bound) mass += expf(z - m);
      }
      mass = block_sum(mass, red);
    }
    const uint32_t pb = radix_bound<true>(row, a, m, bound, a.top_p * mass, hist, bucket);
    bound = pb > bound ? pb : bound;
  }
  if (a.min_p > 0.0f) {
    const uint32_t mb = sampling::order_key(m + logf(a.min_p));
    bound = mb > bound ? mb : bound;
  }
  if (threadIdx.x == 0) state[b] = RowState{m, lse, bound, 0};
}

// Pass 2, grid (chunks, B): the Gumbel race over one chunk of 4-token groups of a row.
template <class T>
__global__ void __launch_bounds__(kThreads)
    sample_race_kernel(Candidate* __restrict__ cand, const RowState* __restrict__ state, const T* __restrict__ logits,
                       const int32_t* __restrict__ seq_ids, const int32_t* __restrict__ positions, SampleArgs a,
                       int64_t groups_per_chunk) {
  __shared__ double sv_d[kWarps];
  __shared__ int si[kWarps];
  const int64_t b = blockIdx.y, c = blockIdx.x;
  const RowState st = state[b];
  if (st.done) return;
  const T* row = logits + b * a.vocab;
  const int32_t sid = seq_ids[b], pos = positions[b];
  const float skip_below = st.m - sampling::kNoiseSpan;
  const int64_t groups = (a.vocab + 3) / 4;
  const int64_t g0 = c * groups_per_chunk, g1 = g0 + groups_per_chunk < groups ? g0 + groups_per_chunk : groups;
  double best = -INFINITY;
  int tok = INT_MAX;
  for (int64_t g = g0 + threadIdx.x; g < g1; g += kThreads) {
    float z4[4];
    bool any = false;
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const int64_t j = g * 4 + q;
      z4[q] = j < a.vocab ? row_z(row, j, a.inv_t) : -INFINITY;
      const bool keep = z4[q] != -INFINITY && z4[q] >= skip_below && sampling::order_key(z4[q]) >= st.bound;
      if (!keep) z4[q] = -INFINITY;
      any = any || keep;
    }
    if (!any) continue;
    const rng::Philox4 r = sampling::sample_bits(a.seed, sid, pos, static_cast<uint32_t>(g));
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      if (z4[q] == -INFINITY) continue;
      const double s = sampling::sample_score(z4[q], r.v[q]);
      if (s > best) {  // groups ascend per thread: the first of equal scores is kept
        best = s;
        tok = static_cast<int>(g * 4 + q);
      }
    }
  }
  block_argmax(best, tok, sv_d, si);
  if (threadIdx.x == 0) cand[b * gridDim.x + c] = Candidate{best, tok};
}

// Pass 3, one thread per row: the best candidate over the chunks (higher score, then lower index) and its log-prob.
template <class T>
__global__ void sample_finish_kernel(int32_t* __restrict__ tokens, float* __restrict__ logprobs,
                                     const RowState* __restrict__ state, const Candidate* __restrict__ cand,
                                     const T* __restrict__ logits, SampleArgs a, int64_t rows, int chunks) {
  const int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= rows || state[b].done) return;
  double best = -INFINITY;
  int tok = INT_MAX;
  for (int c = 0; c < chunks; ++c) {
    const Candidate k = cand[b * chunks + c];
    if (k.score > best || (k.score == best && k.tok < tok)) {
      best = k.score;
      tok = k.tok;
    }
  }
  tokens[b] = tok;
  if (logprobs) logprobs[b] = row_z(logits + b * a.vocab, tok, a.inv_t) - state[b].lse;
}

int multiprocessors() {
  static int n = [] {
    int dev = 0, v = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess)
      return 132;
    return v;
  }();
  return n;
}

}  // namespace

void sample(const Tensor& tokens, const Tensor& logprobs, const Tensor& logits, const Tensor& seq_ids,
            const Tensor& positions, const ops::SampleParams& p, Context& ctx) {
  RLCU_CHECK(logits.size(1) < INT_MAX, "sample: vocabulary size {} out of range", logits.size(1));
  const int64_t B = logits.size(0);
  if (B == 0) return;
  SampleArgs a;
  a.vocab = logits.size(1);
  a.inv_t = 1.0f / p.temperature;
  a.seed = p.seed;
  a.top_k = p.top_k;
  a.top_p = p.top_p;
  a.min_p = p.min_p;
  a.greedy = p.greedy;
  // The race is split over enough vocabulary chunks per row for about eight blocks per multiprocessor.
  const int64_t groups = (a.vocab + 3) / 4;
  const int chunks = static_cast<int>(
      std::min<int64_t>(std::max<int64_t>(1, (8 * multiprocessors() + B - 1) / B), std::min<int64_t>(64, groups)));
  const int64_t per_chunk = (groups + chunks - 1) / chunks;
  Carver plan;
  plan.take<RowState>(static_cast<size_t>(B));
  plan.take<Candidate>(static_cast<size_t>(B * chunks));
  Carver carve(static_cast<char*>(scratch(ctx, plan.size())));
  RowState* state = carve.take<RowState>(static_cast<size_t>(B));
  Candidate* cand = carve.take<Candidate>(static_cast<size_t>(B * chunks));
  int32_t* tok = tokens.ptr<int32_t>();
  float* lp = logprobs.empty() ? nullptr : logprobs.ptr<float>();
  dispatch_float(logits.dtype, "sample: logits", [&](auto tag) {
    using T = decltype(tag);
    sample_prep_kernel<T><<<static_cast<unsigned>(B), kThreads, 0, stream_of(ctx)>>>(tok, lp, state, logits.ptr<T>(), a);
    RLCU_LAUNCH_CHECK(stream_of(ctx));
    if (a.greedy) return;
    sample_race_kernel<T><<<dim3(static_cast<unsigned>(chunks), static_cast<unsigned>(B)), kThreads, 0,
                            stream_of(ctx)>>>(cand, state, logits.ptr<T>(), seq_ids.ptr<int32_t>(),
                                              positions.ptr<int32_t>(), a, per_chunk);
    RLCU_LAUNCH_CHECK(stream_of(ctx));
    sample_finish_kernel<T><<<grid_for(B, 128), 128, 0, stream_of(ctx)>>>(tok, lp, state, cand, logits.ptr<T>(), a,
                                                                         B, chunks);
    RLCU_LAUNCH_CHECK(stream_of(ctx));
  });
}

}  // namespace rlcu::cuda
