// RMSNorm over the last dim on CUDA (rows of any width: the model's hidden norm is [T, H], the per-head QK-norm
// is [T*heads, hd]).
//
// fwd: rstd[n] = 1 / sqrt(mean_d x[n,d]^2 + eps);  out[n,d] = x[n,d] * rstd[n] * w[d]   (fp32 math, one rounding)
// bwd: with g = dout,  dx[n,d] = rstd * (w[d] g[n,d] - x[n,d] rstd^2 mean_e(w[e] g[n,e] x[n,e]))   (overwrite)
//      dweight[d] (F32) += sum_n g[n,d] x[n,d] rstd[n]                                   (accumulate)
// x/out/dout/dx: F32 or BF16 (out and dx of x's dtype); weight F32 or BF16; rstd F32.
// One warp per row with 16-byte loads when the row width allows; dweight is the deterministic two-pass column
// reduction of cuda_common.cuh (no atomics). dx may alias dout: dweight is reduced before dx is written.
#include "cuda_common.cuh"
#include "ops_cuda.h"

namespace rlcu::cuda {

namespace {

constexpr int kWarpsPerBlock = 8;

template <class T, class W, int V>
__global__ void rmsnorm_fwd_kernel(T* __restrict__ out, float* __restrict__ rstd, const T* __restrict__ x,
                                   const W* __restrict__ w, int64_t rows, int64_t dim, float eps) {
  const int lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  if (row >= rows) return;
  const T* xr = x + row * dim;
  float ss = 0.0f;
#pragma unroll 4
  for (int64_t c = static_cast<int64_t>(lane) * V; c < dim; c += 32 * V) {
    const Vec<T, V> v = load_vec<V>(xr + c);
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const float f = to_f32(v.v[j]);
      ss = fmaf(f, f, ss);
    }
  }
  ss = warp_sum(ss);
  const float r = rsqrtf(ss / static_cast<float>(dim) + eps);
  if (lane == 0) rstd[row] = r;
  T* orow = out + row * dim;
#pragma unroll 4
  for (int64_t c = static_cast<int64_t>(lane) * V; c < dim; c += 32 * V) {
    const Vec<T, V> v = load_vec<V>(xr + c);
    const Vec<W, V> wv = load_vec<V>(w + c);
    Vec<T, V> o;
#pragma unroll
    for (int j = 0; j < V; ++j) o.v[j] = from_f32<T>(to_f32(v.v[j]) * r * to_f32(wv.v[j]));
    store_vec<V>(orow + c, o);
  }
}

template <class T, class W, int V>
__global__ void rmsnorm_bwd_kernel(T* dx, const T* dout, const T* __restrict__ x, const W* __restrict__ w,
                                   const float* __restrict__ rstd, int64_t rows, int64_t dim) {
  const int lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  if (row >= rows) return;
  const T* xr = x + row * dim;
  const T* gr = dout + row * dim;
  float dot = 0.0f;
#pragma unroll 4
  for (int64_t c = static_cast<int64_t>(lane) * V; c < dim; c += 32 * V) {
    const Vec<T, V> xv = load_vec<V>(xr + c);
    const Vec<T, V> gv = load_vec<V>(gr + c);
    const Vec<W, V> wv = load_vec<V>(w + c);
#pragma unroll
    for (int j = 0; j < V; ++j) dot = fmaf(to_f32(wv.v[j]) * to_f32(gv.v[j]), to_f32(xv.v[j]), dot);
  }
  dot = warp_sum(dot);
  const float r = rstd[row];
  const float k = r * r * dot / static_cast<float>(dim);
  T* dr = dx + row * dim;
#pragma unroll 4
  for (int64_t c = static_cast<int64_t>(lane) * V; c < dim; c += 32 * V) {
    const Vec<T, V> xv = load_vec<V>(xr + c);
    const Vec<T, V> gv = load_vec<V>(gr + c);
    const Vec<W, V> wv = load_vec<V>(w + c);
    Vec<T, V> o;
#pragma unroll
    for (int j = 0; j < V; ++j)
      o.v[j] = from_f32<T>(r * (to_f32(wv.v[j]) * to_f32(gv.v[j]) - to_f32(xv.v[j]) * k));
    store_vec<V>(dr + c, o);
  }
}

// f(n, d) = dout[n,d] * x[n,d] * rstd[n] for the dweight column reduction.
template <class T>
struct NormWeightGrad {
  const T* dout;
  const T* x;
  const float* rstd;
  int64_t dim;
  __device__ float operator()(int64_t r, int64_t c) const {
    return to_f32(dout[r * dim + c]) * to_f32(x[r * dim + c]) * rstd[r];
  }
};

template <class T, class W>
bool vec_ok(int64_t dim, std::initializer_list<const void*> ts, std::initializer_list<const void*> ws) {
  constexpr int V = vec16<T>();
  if (dim % V != 0) return false;
  for (const void* p : ts)
    if (!is_aligned(p, V * sizeof(T))) return false;
  for (const void* p : ws)
    if (!is_aligned(p, V * sizeof(W))) return false;
  return true;
}

void check_common(const Tensor& x, const Tensor& weight, const Tensor& rstd, const char* op) {
  check_cuda_tensor(x, op);
  check_cuda_tensor(weight, op);
  check_cuda_tensor(rstd, op);
  RLCU_CHECK(x.ndim >= 1, "{}: x must have at least one dim", op);
  RLCU_CHECK(weight.numel() == x.cols(), "{}: weight {} does not match the last dim of x {}", op, weight.shape_str(),
             x.shape_str());
  RLCU_CHECK(rstd.dtype == DType::F32 && rstd.numel() == x.rows(), "{}: rstd must be f32 with {} elements, got {} {}",
             op, x.rows(), dtype_name(rstd.dtype), rstd.shape_str());
}

}  // namespace

void rmsnorm_fwd(const Tensor& out, const Tensor& rstd, const Tensor& x, const Tensor& weight, float eps,
                 Context& ctx) {
  check_common(x, weight, rstd, "rmsnorm_fwd");
  check_cuda_tensor(out, "rmsnorm_fwd");
  RLCU_CHECK(out.numel() == x.numel() && out.dtype == x.dtype, "rmsnorm_fwd: out {} {} must match x {} {}",
             dtype_name(out.dtype), out.shape_str(), dtype_name(x.dtype), x.shape_str());
  const int64_t rows = x.rows(), dim = x.cols();
  if (rows == 0 || dim == 0) return;
  cudaStream_t s = stream_of(ctx);
  const unsigned grid = static_cast<unsigned>(ceil_div(rows, kWarpsPerBlock));
  dispatch_float(x.dtype, "rmsnorm_fwd x", [&](auto tx) {
    using T = decltype(tx);
    dispatch_float(weight.dtype, "rmsnorm_fwd weight", [&](auto tw) {
      using W = decltype(tw);
      if (vec_ok<T, W>(dim, {out.data, x.data}, {weight.data})) {
        rmsnorm_fwd_kernel<T, W, vec16<T>()><<<grid, kWarpsPerBlock * 32, 0, s>>>(
            out.ptr<T>(), rstd.ptr<float>(), x.ptr<T>(), weight.ptr<W>(), rows, dim, eps);
      } else {
        rmsnorm_fwd_kernel<T, W, 1><<<grid, kWarpsPerBlock * 32, 0, s>>>(out.ptr<T>(), rstd.ptr<float>(), x.ptr<T>(),
                                                                         weight.ptr<W>(), rows, dim, eps);
      }
      RLCU_LAUNCH_CHECK(s);
    });
  });
}

void rmsnorm_bwd(const Tensor& dx, const Tensor& dweight, const Tensor& dout, const Tensor& x, const Tensor& weight,
                 const Tensor& rstd, Context& ctx) {
  check_common(x, weight, rstd, "rmsnorm_bwd");
  check_cuda_tensor(dx, "rmsnorm_bwd");
  check_cuda_tensor(dout, "rmsnorm_bwd");
  check_cuda_tensor(dweight, "rmsnorm_bwd");
  RLCU_CHECK(dx.numel() == x.numel() && dx.dtype == x.dtype && dout.numel() == x.numel() && dout.dtype == x.dtype,
             "rmsnorm_bwd: dx {} {} and dout {} {} must match x {} {}", dtype_name(dx.dtype), dx.shape_str(),
             dtype_name(dout.dtype), dout.shape_str(), dtype_name(x.dtype), x.shape_str());
  RLCU_CHECK(dweight.dtype == DType::F32 && dweight.numel() == x.cols(), "rmsnorm_bwd: dweight must be f32 [{}], got {} {}",
             x.cols(), dtype_name(dweight.dtype), dweight.shape_str());
  const int64_t rows = x.rows(), dim = x.cols();
  if (rows == 0 || dim == 0) return;
  cudaStream_t s = stream_of(ctx);
  float* partial = static_cast<float*>(scratch(ctx, column_scratch_floats(rows, dim) * sizeof(float)));
  const unsigned grid = static_cast<unsigned>(ceil_div(rows, kWarpsPerBlock));
  dispatch_float(x.dtype, "rmsnorm_bwd x", [&](auto tx) {
    using T = decltype(tx);
    column_sum_accumulate(dweight.ptr<float>(), rows, dim, NormWeightGrad<T>{dout.ptr<T>(), x.ptr<T>(),
                                                                            rstd.ptr<float>(), dim},
                          partial, s);
    dispatch_float(weight.dtype, "rmsnorm_bwd weight", [&](auto tw) {
      using W = decltype(tw);
      if (vec_ok<T, W>(dim, {dx.data, dout.data, x.data}, {weight.data})) {
        rmsnorm_bwd_kernel<T, W, vec16<T>()><<<grid, kWarpsPerBlock * 32, 0, s>>>(
            dx.ptr<T>(), dout.ptr<T>(), x.ptr<T>(), weight.ptr<W>(), rstd.ptr<float>(), rows, dim);
      } else {
        rmsnorm_bwd_kernel<T, W, 1><<<grid, kWarpsPerBlock * 32, 0, s>>>(
            dx.ptr<T>(), dout.ptr<T>(), x.ptr<T>(), weight.ptr<W>(), rstd.ptr<float>(), rows, dim);
      }
      RLCU_LAUNCH_CHECK(s);
    });
  });
}

}  // namespace rlcu::cuda
