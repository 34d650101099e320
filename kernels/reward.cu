// CUDA reward ops (include/rlcu/reward_ops.h; per-completion rules in kernels/reward_common.h, shared with the CPU twin
// kernels/cpu/reward.cpp, so results are bit-identical).
//   detokenize_offsets: one block per completion sums its tokens' byte lengths (fixed-order block reduction of
//                       int64), then one block turns the N lengths into the exclusive scan byte_offsets [N+1].
//   detokenize_bytes:   one block per completion; chunks of blockDim tokens, a shared-memory scan of the chunk's
//                       token lengths gives each thread its output position, each thread copies its token's bytes.
//   reward_*:           one thread per completion runs the shared scalar rule over its bytes.
#include "cuda_common.cuh"
#include "backends.h"
#include "reward_common.h"

namespace rlcu::cuda {

namespace rd = reward_detail;

namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ int64_t token_len(const int64_t* toff, int64_t V, int64_t v) {
  return v < 0 || v >= V ? 0 : toff[v + 1] - toff[v];
}

// In-place inclusive scan of s[0, blockDim.x) (Hillis-Steele); every thread calls it.
__device__ void block_inclusive_scan(int64_t* s) {
  for (int d = 1; d < blockDim.x; d <<= 1) {
    const int64_t add = threadIdx.x >= d ? s[threadIdx.x - d] : 0;
    __syncthreads();
    s[threadIdx.x] += add;
    __syncthreads();
  }
}

__global__ void detok_lengths_kernel(int64_t* lengths, const void* ids, bool ids64, const void* id_offsets,
                                     bool off64, const int64_t* toff, int64_t V) {
  __shared__ int64_t s[kThreads];
  const int64_t i = blockIdx.x;
  const int64_t b = rd::load_index(id_offsets, off64, i), e = rd::load_index(id_offsets, off64, i + 1);
  int64_t n = 0;
  for (int64_t t = b + threadIdx.x; t < e; t += blockDim.x) n += token_len(toff, V, rd::load_index(ids, ids64, t));
  s[threadIdx.x] = n;
  __syncthreads();
  for (int w = blockDim.x / 2; w > 0; w >>= 1) {
    if (threadIdx.x < w) s[threadIdx.x] += s[threadIdx.x + w];
    __syncthreads();
  }
  if (threadIdx.x == 0) lengths[i + 1] = s[0];
}

// byte_offsets[1..N] hold the lengths on entry; one block scans them in chunks of blockDim.
__global__ void exclusive_offsets_kernel(int64_t* offsets, int64_t N) {
  __shared__ int64_t s[kThreads];
  __shared__ int64_t carry;
  if (threadIdx.x == 0) {
    carry = 0;
    offsets[0] = 0;
  }
  __syncthreads();
  for (int64_t base = 0; base < N; base += blockDim.x) {
    const int64_t k = base + threadIdx.x;
    s[threadIdx.x] = k < N ? offsets[k + 1] : 0;
    __syncthreads();
    block_inclusive_scan(s);
    if (k < N) offsets[k + 1] = carry + s[threadIdx.x];
    __syncthreads();
    if (threadIdx.x == blockDim.x - 1) carry += s[threadIdx.x];
    __syncthreads();
  }
}

__global__ void detok_copy_kernel(uint8_t* out, const int64_t* byte_offsets, const void* ids, bool ids64,
                                  const void* id_offsets, bool off64, const uint8_t* tbytes, const int64_t* toff,
                                  int64_t V) {
  __shared__ int64_t s[kThreads];
  const int64_t i = blockIdx.x;
  const int64_t b = rd::load_index(id_offsets, off64, i), e = rd::load_index(id_offsets, off64, i + 1);
  int64_t pos = byte_offsets[i];
  for (int64_t base = b; base < e; base += blockDim.x) {
    const int64_t t = base + threadIdx.x;
    const int64_t v = t < e ? rd::load_index(ids, ids64, t) : -1;
    const int64_t len = t < e ? token_len(toff, V, v) : 0;
    s[threadIdx.x] = len;
    __syncthreads();
    block_inclusive_scan(s);
    const int64_t start = pos + s[threadIdx.x] - len;
    for (int64_t k = 0; k < len; ++k) out[start + k] = tbytes[toff[v] + k];
    const int64_t chunk = s[blockDim.x - 1];
    __syncthreads();
    pos += chunk;
  }
}

struct MathAnswer {
  __device__ float operator()(const uint8_t* a, rd::Span x, const uint8_t* b, rd::Span y) const {
    return rd::math_answer_value(a, x, b, y);
  }
};
struct ExactMatch {
  __device__ float operator()(const uint8_t* a, rd::Span x, const uint8_t* b, rd::Span y) const {
    return rd::exact_match_value(a, x, b, y);
  }
};
struct Countdown {
  __device__ float operator()(const uint8_t* a, rd::Span x, const uint8_t* b, rd::Span y) const {
    return rd::countdown_value(a, x, b, y);
  }
};
struct Contains {
  __device__ float operator()(const uint8_t* a, rd::Span x, const uint8_t* b, rd::Span y) const {
    return rd::contains_value(a, x, b, y);
  }
};

template <class F>
__global__ void pairwise_kernel(float* out, const uint8_t* text, const int64_t* toff, const uint8_t* other,
                                const int64_t* ooff, int64_t N, F f) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= N) return;
  out[i] = f(text, rd::Span{toff[i], toff[i + 1]}, other, rd::Span{ooff[i], ooff[i + 1]});
}

__global__ void format_kernel(float* out, const uint8_t* text, const int64_t* toff, const uint8_t* tags,
                              const int64_t* tag_off, int64_t K, int64_t N) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= N) return;
  out[i] = rd::format_value(text, rd::Span{toff[i], toff[i + 1]}, tags, tag_off, K);
}

__global__ void length_kernel(float* out, const void* id_offsets, bool off64, int64_t N, int64_t L, int64_t C) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= N) return;
  const int64_t n = rd::load_index(id_offsets, off64, i + 1) - rd::load_index(id_offsets, off64, i);
  out[i] = rd::length_value(n, L, C);
}

const uint8_t* u8(const Tensor& t) { return static_cast<const uint8_t*>(t.data); }
const int64_t* i64(const Tensor& t) { return static_cast<const int64_t*>(t.data); }

unsigned thread_grid(int64_t n) { return static_cast<unsigned>(ceil_div(n, kThreads)); }

template <class F>
void launch_pairwise(const Tensor& out, const TextBatch& text, const TextBatch& other, Context& ctx, F f) {
  const int64_t N = text.count();
  if (N == 0) return;
  pairwise_kernel<<<thread_grid(N), kThreads, 0, stream_of(ctx)>>>(out.ptr<float>(), u8(text.bytes),
                                                                   i64(text.offsets), u8(other.bytes),
                                                                   i64(other.offsets), N, f);
  RLCU_CUDA_CHECK(cudaGetLastError());
}

}  // namespace

void detokenize_offsets(const Tensor& byte_offsets, const Tensor& ids, const Tensor& id_offsets,
                        const Tensor& table_bytes, const Tensor& table_offsets, Context& ctx) {
  const int64_t N = id_offsets.numel() - 1, V = table_offsets.numel() - 1;
  int64_t* out = byte_offsets.ptr<int64_t>();
  if (N > 0) {
    detok_lengths_kernel<<<static_cast<unsigned>(N), kThreads, 0, stream_of(ctx)>>>(
        out, ids.data, ids.dtype == DType::I64, id_offsets.data, id_offsets.dtype == DType::I64, i64(table_offsets),
        V);
    RLCU_CUDA_CHECK(cudaGetLastError());
  }
  exclusive_offsets_kernel<<<1, kThreads, 0, stream_of(ctx)>>>(out, N);
  RLCU_CUDA_CHECK(cudaGetLastError());
}

void detokenize_bytes(const Tensor& bytes, const Tensor& byte_offsets, const Tensor& ids, const Tensor& id_offsets,
                      const Tensor& table_bytes, const Tensor& table_offsets, Context& ctx) {
  const int64_t N = id_offsets.numel() - 1, V = table_offsets.numel() - 1;
  if (N == 0) return;
  detok_copy_kernel<<<static_cast<unsigned>(N), kThreads, 0, stream_of(ctx)>>>(
      bytes.ptr<uint8_t>(), i64(byte_offsets), ids.data, ids.dtype == DType::I64, id_offsets.data,
      id_offsets.dtype == DType::I64, u8(table_bytes), i64(table_offsets), V);
  RLCU_CUDA_CHECK(cudaGetLastError());
}

void reward_math_answer(const Tensor& out, const TextBatch& text, const TextBatch& answers, Context& ctx) {
  launch_pairwise(out, text, answers, ctx, MathAnswer{});
}

void reward_exact_match(const Tensor& out, const TextBatch& text, const TextBatch& answers, Context& ctx) {
  launch_pairwise(out, text, answers, ctx, ExactMatch{});
}

// One thread per completion; the expression's stacks (kCountdownMaxStack entries) live in local memory.
void reward_countdown(const Tensor& out, const TextBatch& text, const TextBatch& answers, Context& ctx) {
  launch_pairwise(out, text, answers, ctx, Countdown{});
}

void reward_contains(const Tensor& out, const TextBatch& text, const TextBatch& needles, Context& ctx) {
  launch_pairwise(out, text, needles, ctx, Contains{});
}

void reward_format(const Tensor& out, const TextBatch& text, const TextBatch& tags, Context& ctx) {
  const int64_t N = text.count();
  if (N == 0) return;
  format_kernel<<<thread_grid(N), kThreads, 0, stream_of(ctx)>>>(out.ptr<float>(), u8(text.bytes),
                                                                i64(text.offsets), u8(tags.bytes),
                                                                i64(tags.offsets), tags.count(), N);
  RLCU_CUDA_CHECK(cudaGetLastError());
}

void reward_length(const Tensor& out, const Tensor& id_offsets, const LengthPenalty& p, Context& ctx) {
  const int64_t N = out.numel();
  if (N == 0) return;
  length_kernel<<<thread_grid(N), kThreads, 0, stream_of(ctx)>>>(out.ptr<float>(), id_offsets.data,
                                                                id_offsets.dtype == DType::I64, N, p.max_len,
                                                                p.buffer);
  RLCU_CUDA_CHECK(cudaGetLastError());
}

}  // namespace rlcu::cuda
