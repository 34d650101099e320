// Shared device-side helpers for kernels/*.cu: element conversion (float <-> bf16/f16), aligned vector
// loads/stores, warp and block reductions, dtype dispatch, launch helpers, a per-context scratch buffer and a
// deterministic column reduction.
//
// API (stable; other kernel files include this header):
//   to_f32(x) / from_f32<T>(f)           float <-> float, __nv_bfloat16, __half
//   Vec<T, N>, load_vec / store_vec      N elements of T as one aligned access (16 bytes: 8 bf16 or 4 f32)
//   is_aligned(p, bytes)                 pointer alignment test for choosing the vector path
//   warp_sum / warp_max, block_sum / block_max (fixed reduction order: results are bit-reproducible)
//   dispatch_float(dtype, what, f)       calls f(T{}) with T = float or __nv_bfloat16, RLCU_CHECK otherwise
//   stream_of(ctx), ceil_div, grid_for   launch helpers; lead_rows(t) = rows of t as [rows, last dim]
//   scratch(ctx, bytes)                  grow-only device scratch owned by the context (see below)
//   column_sum_accumulate(...)           dst[c] += sum over rows r of f(r, c), two passes, no atomics
//   column_finish(dst, partial, G, cols) dst[c] += sum over g of partial[g][c] in a fixed order
// Device functors are plain structs (the build does not enable extended lambdas).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <mutex>
#include <utility>

#include "rlcu/context.h"
#include "rlcu/cuda_check.h"
#include "rlcu/tensor.h"

namespace rlcu::cuda {

using bf16 = __nv_bfloat16;

// ---- element conversion ----------------------------------------------------------------------------------------
__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(bf16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }

template <class T>
__device__ __forceinline__ T from_f32(float f);
template <>
__device__ __forceinline__ float from_f32<float>(float f) { return f; }
template <>
__device__ __forceinline__ bf16 from_f32<bf16>(float f) { return __float2bfloat16_rn(f); }
template <>
__device__ __forceinline__ __half from_f32<__half>(float f) { return __float2half_rn(f); }

// ---- vector access -------------------------------------------------------------------------------------------
// N elements of T read or written as one aligned access; the caller guarantees alignment (is_aligned).
template <class T, int N>
struct alignas(sizeof(T) * N) Vec {
  T v[N];
};

template <int N, class T>
__device__ __forceinline__ Vec<T, N> load_vec(const T* p) {
  return *reinterpret_cast<const Vec<T, N>*>(p);
}
template <int N, class T>
__device__ __forceinline__ void store_vec(T* p, const Vec<T, N>& x) {
  *reinterpret_cast<Vec<T, N>*>(p) = x;
}

inline bool is_aligned(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

// Elements per 16-byte access.
template <class T>
constexpr int vec16() {
  return static_cast<int>(16 / sizeof(T));
}

// ---- reductions (fixed butterfly / tree order) ------------------------------------------------------------------
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ double warp_sum(double v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Block-wide reductions for blockDim.x a multiple of 32 (at most 1024). Every thread gets the result.
// `red` is __shared__ scratch of at least 32 elements; the function synchronises before returning and may be
// called repeatedly with the same scratch.
template <class R, class Op>
__device__ __forceinline__ R block_reduce(R v, R* red, Op op, R identity) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  __syncthreads();  // previous users of `red` are done
  if (lane == 0) red[warp] = v;
  __syncthreads();
  v = lane < nwarps ? red[lane] : identity;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
struct SumOp {
  template <class R>
  __device__ __forceinline__ R operator()(R a, R b) const { return a + b; }
};
struct MaxOp {
  __device__ __forceinline__ float operator()(float a, float b) const { return fmaxf(a, b); }
};
__device__ __forceinline__ float block_sum(float v, float* red) { return block_reduce(v, red, SumOp{}, 0.0f); }
__device__ __forceinline__ double block_sum(double v, double* red) { return block_reduce(v, red, SumOp{}, 0.0); }
__device__ __forceinline__ float block_max(float v, float* red) { return block_reduce(v, red, MaxOp{}, -INFINITY); }

// ---- host-side launch helpers ------------------------------------------------------------------------------------
inline cudaStream_t stream_of(const Context& ctx) { return static_cast<cudaStream_t>(ctx.stream()); }

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// 1-D grid covering `work` items with `threads` per block, capped (kernels then loop grid-stride).
inline unsigned grid_for(int64_t work, int threads, int64_t cap = int64_t(1) << 20) {
  int64_t g = ceil_div(work, threads);
  if (g < 1) g = 1;
  if (g > cap) g = cap;
  return static_cast<unsigned>(g);
}

// Calls f(T{}) with T = float for F32 and T = bf16 for BF16.
template <class F>
void dispatch_float(DType t, const char* what, F&& f) {
  switch (t) {
    case DType::F32: f(float{}); break;
    case DType::BF16: f(bf16{}); break;
    default: RLCU_CHECK(false, "{}: unsupported dtype {} on cuda (expected f32 or bf16)", what, dtype_name(t));
  }
}

// Rows of a tensor viewed as [rows, last dim], also when the last dim is 0 (Tensor::rows() divides by it).
inline int64_t lead_rows(const Tensor& t) {
  int64_t r = 1;
  for (int i = 0; i + 1 < t.ndim; ++i) r *= t.shape[i];
  return t.ndim == 0 ? 0 : r;
}

inline void check_cuda_tensor(const Tensor& t, const char* what) {
  RLCU_CHECK(t.device == Device::CUDA, "{}: tensor on {} where a cuda tensor is expected", what,
             device_name(t.device));
}

// ---- scratch ---------------------------------------------------------------------------------------------------
// One grow-only device buffer per context, for the temporaries of a single op (partial sums, sort buffers, the
// log-prob head's logits tile). Ops on one context run in stream order, so an op may use the whole buffer until
// it returns; an op calls scratch() once, before it enqueues work. Growing frees the old buffer (cudaFree
// synchronises the device, so queued work that still reads it finishes first); the first step of a run sizes
// it, later steps allocate nothing. Not to be called while a CUDA graph is being captured unless already large
// enough.
class ScratchRegistry {
 public:
  static ScratchRegistry& instance() {
    static ScratchRegistry r;
    return r;
  }
  void* get(const Context& ctx, size_t bytes) {
    std::lock_guard<std::mutex> lock(mu_);
    Buffer& b = bufs_[{&ctx, ctx.device_index()}];
    if (b.size() < bytes) {
      b = Buffer();  // free first so the peak is not old + new
      b = Buffer::alloc((bytes + 0xFFFFF) & ~size_t(0xFFFFF), Device::CUDA);
    }
    return b.data();
  }

 private:
  std::mutex mu_;
  std::map<std::pair<const Context*, int>, Buffer> bufs_;
};

inline void* scratch(const Context& ctx, size_t bytes) { return ScratchRegistry::instance().get(ctx, bytes); }

// Carves 256-byte-aligned pieces out of one scratch region: first measure (base == nullptr), then assign.
class Carver {
 public:
  explicit Carver(char* base = nullptr) : base_(base) {}
  template <class T>
  T* take(size_t count) {
    off_ = (off_ + 255) & ~size_t(255);
    T* p = base_ ? reinterpret_cast<T*>(base_ + off_) : nullptr;
    off_ += count * sizeof(T);
    return p;
  }
  size_t size() const { return (off_ + 255) & ~size_t(255); }

 private:
  char* base_;
  size_t off_ = 0;
};

// ---- deterministic column reduction ------------------------------------------------------------------------------
// dst[c] += sum_{r < rows} f(r, c) for c < cols, without atomics. Pass 1: the rows are split into G groups (G
// depends only on `rows`); block (column tile, group) sums its rows per column into partial[g][c]. Pass 2
// (column_finish) adds the G partials per column in a fixed order (fp64) and accumulates into dst.
// Bit-reproducible for a given shape.
constexpr int kColTile = 64;   // columns per block (a warp covers 32 of them: coalesced row segments)
constexpr int kRowLanes = 4;   // row lanes per block; block = kColTile * kRowLanes threads

inline int column_groups(int64_t rows) {
  int64_t g = ceil_div(rows, 64);
  if (g > 256) g = 256;
  return static_cast<int>(g < 1 ? 1 : g);
}
inline size_t column_scratch_floats(int64_t rows, int64_t cols) {
  return static_cast<size_t>(column_groups(rows)) * static_cast<size_t>(cols);
}

template <class F>
__global__ void column_partial_kernel(float* __restrict__ partial, int64_t rows, int64_t cols, int64_t rows_per_group,
                                      F f) {
  __shared__ float red[kRowLanes][kColTile];
  const int tc = threadIdx.x % kColTile, tr = threadIdx.x / kColTile;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kColTile + tc;
  const int64_t g = blockIdx.y;
  const int64_t r0 = g * rows_per_group;
  const int64_t r1 = r0 + rows_per_group < rows ? r0 + rows_per_group : rows;
  float acc = 0.0f;
  if (c < cols)
    for (int64_t r = r0 + tr; r < r1; r += kRowLanes) acc += f(r, c);
  red[tr][tc] = acc;
  __syncthreads();
  if (tr == 0 && c < cols) {
    float s = red[0][tc];
#pragma unroll
    for (int i = 1; i < kRowLanes; ++i) s += red[i][tc];
    partial[g * cols + c] = s;
  }
}

// Pass 2: a block of kFinishCols columns x kFinishLanes lanes per column tile; lane l adds groups l, l + lanes, ...
// (fp64, loads coalesced across the columns and several in flight), then lane 0 adds the lanes in order. A
// template so that every including translation unit gets its own copy (no relocatable device code).
constexpr int kFinishCols = 32;
constexpr int kFinishLanes = 16;
template <int kUnused = 0>
__global__ void column_finish_kernel(float* __restrict__ dst, const float* __restrict__ partial, int groups,
                                     int64_t cols) {
  __shared__ double red[kFinishLanes][kFinishCols];
  const int tx = threadIdx.x % kFinishCols, ty = threadIdx.x / kFinishCols;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kFinishCols + tx;
  double s = 0.0;
  if (c < cols) {
#pragma unroll 8
    for (int g = ty; g < groups; g += kFinishLanes) s += partial[static_cast<int64_t>(g) * cols + c];
  }
  red[ty][tx] = s;
  __syncthreads();
  if (ty == 0 && c < cols) {
    double t = red[0][tx];
#pragma unroll
    for (int i = 1; i < kFinishLanes; ++i) t += red[i][tx];
    dst[c] += static_cast<float>(t);
  }
}
// dst[c] += sum over g < groups of partial[g][c]  (deterministic).
inline void column_finish(float* dst, const float* partial, int groups, int64_t cols, cudaStream_t stream) {
  column_finish_kernel<><<<static_cast<unsigned>(ceil_div(cols, kFinishCols)), kFinishCols * kFinishLanes, 0,
                           stream>>>(dst, partial, groups, cols);
  RLCU_LAUNCH_CHECK(stream);
}

template <class F>
void column_sum_accumulate(float* dst, int64_t rows, int64_t cols, F f, float* partial, cudaStream_t stream) {
  if (cols == 0) return;
  const int groups = column_groups(rows);
  const int64_t per = ceil_div(rows < 1 ? 1 : rows, groups);
  dim3 grid(static_cast<unsigned>(ceil_div(cols, kColTile)), static_cast<unsigned>(groups));
  column_partial_kernel<<<grid, kColTile * kRowLanes, 0, stream>>>(partial, rows, cols, per, f);
  RLCU_LAUNCH_CHECK(stream);
  column_finish(dst, partial, groups, cols, stream);
}

}  // namespace rlcu::cuda
