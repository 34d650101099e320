// Optimizer kernels on CUDA.
//
// sum_squares: out[0] (F32) = sum_i x[i]^2 over x (F32 or BF16), deterministic: pass 1 gives each of G blocks (G a
//   function of the size only) a fixed grid-stride slice, summed per thread in fp64 and tree-reduced in the block;
//   pass 2 adds the G partials in a fixed order. Same size, same bits. (Overwrites out.)
// adamw_update: one pass over the flat F32 master weights with decoupled weight decay:
//   g = grad * grad_scale;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
//   master -= lr * ((m / bc1) / (sqrt(v / bc2) + eps) + wd * master),  bc1 = 1 - b1^step, bc2 = 1 - b2^step;
//   weights (optional) = master: BF16 rounded to nearest even (the model's working copy) or an F32 copy.
//   master, m and v are updated in place; grad is read only.
// Shapes, dtypes and the step are checked before the call (kernels/contract/optimizer.cpp).
// 16-byte accesses when every pointer allows them.
#include <cmath>

#include "cuda_common.cuh"
#include "backends.h"

namespace rlcu::cuda {

namespace {

constexpr int kSumThreads = 256;
constexpr int kSumMaxBlocks = 1024;

template <class T, int V>
__global__ void sum_squares_partial_kernel(double* __restrict__ partial, const T* __restrict__ x, int64_t n) {
  __shared__ double red[32];
  const int64_t nv = n / V;
  double acc = 0.0;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < nv;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const Vec<T, V> v = load_vec<V>(x + i * V);
    float s = 0.0f;
#pragma unroll
    for (int j = 0; j < V; ++j) s = fmaf(to_f32(v.v[j]), to_f32(v.v[j]), s);
    acc += s;
  }
  if (blockIdx.x == 0)  // the tail (fewer than V elements)
    for (int64_t i = nv * V + threadIdx.x; i < n; i += blockDim.x) {
      const float f = to_f32(x[i]);
      acc += static_cast<double>(f) * f;
    }
  acc = block_sum(acc, red);
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

__global__ void sum_squares_finish_kernel(float* __restrict__ out, const double* __restrict__ partial, int blocks) {
  __shared__ double red[32];
  double acc = 0.0;
  for (int i = threadIdx.x; i < blocks; i += blockDim.x) acc += partial[i];
  acc = block_sum(acc, red);
  if (threadIdx.x == 0) out[0] = static_cast<float>(acc);
}

struct AdamWConsts {
  float lr, b1, b2, eps, wd, grad_scale, inv_bc1, inv_bc2;
};

__device__ __forceinline__ float adamw_one(float& master, float& m, float& v, float grad, const AdamWConsts& c) {
  const float g = grad * c.grad_scale;
  m = c.b1 * m + (1.0f - c.b1) * g;
  v = c.b2 * v + (1.0f - c.b2) * g * g;
  const float mhat = m * c.inv_bc1, vhat = v * c.inv_bc2;
  master = master - c.lr * (mhat / (sqrtf(vhat) + c.eps) + c.wd * master);
  return master;
}

template <class W, int V>
__global__ void adamw_kernel(float* __restrict__ master, float* __restrict__ m, float* __restrict__ v,
                             W* __restrict__ weights, const float* __restrict__ grad, int64_t n, AdamWConsts c) {
  const int64_t nv = n / V;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < nv;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    Vec<float, V> pm = load_vec<V>(master + i * V), mm = load_vec<V>(m + i * V), vv = load_vec<V>(v + i * V);
    const Vec<float, V> gg = load_vec<V>(grad + i * V);
    Vec<W, V> w;
#pragma unroll
    for (int j = 0; j < V; ++j) w.v[j] = from_f32<W>(adamw_one(pm.v[j], mm.v[j], vv.v[j], gg.v[j], c));
    store_vec<V>(master + i * V, pm);
    store_vec<V>(m + i * V, mm);
    store_vec<V>(v + i * V, vv);
    if (weights) store_vec<V>(weights + i * V, w);
  }
}

}  // namespace

void sum_squares(const Tensor& out, const Tensor& x, Context& ctx) {
  const int64_t n = x.numel();
  cudaStream_t s = stream_of(ctx);
  const int blocks = static_cast<int>(grid_for(n, kSumThreads * 16, kSumMaxBlocks));
  double* partial = static_cast<double*>(scratch(ctx, sizeof(double) * blocks));
  dispatch_float(x.dtype, "sum_squares x", [&](auto tag) {
    using T = decltype(tag);
    constexpr int V = vec16<T>();
    if (is_aligned(x.data, 16)) {
      sum_squares_partial_kernel<T, V><<<blocks, kSumThreads, 0, s>>>(partial, x.ptr<T>(), n);
    } else {
      sum_squares_partial_kernel<T, 1><<<blocks, kSumThreads, 0, s>>>(partial, x.ptr<T>(), n);
    }
    RLCU_LAUNCH_CHECK(s);
  });
  sum_squares_finish_kernel<<<1, 1024, 0, s>>>(out.ptr<float>(), partial, blocks);
  RLCU_LAUNCH_CHECK(s);
}

void adamw_update(const Tensor& master, const Tensor& m, const Tensor& v, const Tensor& weights, const Tensor& grad,
                  const ops::AdamWParams& p, Context& ctx) {
  const int64_t n = master.numel();
  if (n == 0) return;
  const double bc1 = 1.0 - std::pow(static_cast<double>(p.beta1), static_cast<double>(p.step));
  const double bc2 = 1.0 - std::pow(static_cast<double>(p.beta2), static_cast<double>(p.step));
  const AdamWConsts c{p.lr, p.beta1, p.beta2, p.eps, p.weight_decay, p.grad_scale, static_cast<float>(1.0 / bc1),
                      static_cast<float>(1.0 / bc2)};
  cudaStream_t s = stream_of(ctx);
  auto run = [&](auto tag) {
    using W = decltype(tag);
    W* w = weights.empty() ? nullptr : weights.ptr<W>();
    constexpr int V = 4;
    const bool al = is_aligned(master.data, 16) && is_aligned(m.data, 16) && is_aligned(v.data, 16) &&
                    is_aligned(grad.data, 16) && (w == nullptr || is_aligned(w, V * sizeof(W)));
    const int64_t head = al ? n / V * V : 0;
    if (head > 0)
      adamw_kernel<W, V><<<grid_for(head / V, 256), 256, 0, s>>>(master.ptr<float>(), m.ptr<float>(),
                                                                 v.ptr<float>(), w, grad.ptr<float>(), head, c);
    if (n > head)
      adamw_kernel<W, 1><<<grid_for(n - head, 256), 256, 0, s>>>(
          master.ptr<float>() + head, m.ptr<float>() + head, v.ptr<float>() + head, w ? w + head : nullptr,
          grad.ptr<float>() + head, n - head, c);
  };
  if (!weights.empty() && weights.dtype == DType::F32) run(float{});
  else run(bf16{});
  RLCU_LAUNCH_CHECK(s);
}

}  // namespace rlcu::cuda
