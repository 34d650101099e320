// SwiGLU on CUDA.
//
// gate_up[T, 2I] holds gate g in columns [0, I) and up u in [I, 2I); s = sigmoid(g), silu(g) = g s.
//   fwd: out[T, I] = silu(g) * u
//   bwd: dgate_up[:, :I] = dout * u * s * (1 + g (1 - s)),  dgate_up[:, I:] = dout * silu(g)   (overwrite)
// Shapes and the shared dtype are checked before the call (kernels/contract/elementwise.cpp).
// All tensors F32 or BF16 of one dtype; fp32 math. One thread per V consecutive columns (16-byte accesses when I
// is a multiple of the vector width). dgate_up may alias gate_up (each thread reads its elements before writing).
#include "cuda_common.cuh"
#include "backends.h"

namespace rlcu::cuda {

namespace {

__device__ __forceinline__ float sigmoid(float g) { return 1.0f / (1.0f + expf(-g)); }

template <class T, int V>
__global__ void swiglu_fwd_kernel(T* __restrict__ out, const T* __restrict__ gate_up, int64_t tokens, int64_t inter) {
  const int64_t groups = inter / V;
  const int64_t n = tokens * groups;
  for (int64_t w = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; w < n;
       w += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = w / groups, c = (w % groups) * V;
    const T* row = gate_up + t * 2 * inter;
    const Vec<T, V> g = load_vec<V>(row + c);
    const Vec<T, V> u = load_vec<V>(row + inter + c);
    Vec<T, V> o;
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const float gf = to_f32(g.v[j]);
      o.v[j] = from_f32<T>(gf * sigmoid(gf) * to_f32(u.v[j]));
    }
    store_vec<V>(out + t * inter + c, o);
  }
}

template <class T, int V>
__global__ void swiglu_bwd_kernel(T* dgate_up, const T* __restrict__ dout, const T* gate_up, int64_t tokens,
                                  int64_t inter) {
  const int64_t groups = inter / V;
  const int64_t n = tokens * groups;
  for (int64_t w = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; w < n;
       w += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = w / groups, c = (w % groups) * V;
    const T* row = gate_up + t * 2 * inter;
    const Vec<T, V> g = load_vec<V>(row + c);
    const Vec<T, V> u = load_vec<V>(row + inter + c);
    const Vec<T, V> d = load_vec<V>(dout + t * inter + c);
    Vec<T, V> dg, du;
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const float gf = to_f32(g.v[j]), uf = to_f32(u.v[j]), df = to_f32(d.v[j]);
      const float s = sigmoid(gf);
      dg.v[j] = from_f32<T>(df * uf * s * (1.0f + gf * (1.0f - s)));
      du.v[j] = from_f32<T>(df * gf * s);
    }
    T* drow = dgate_up + t * 2 * inter;
    store_vec<V>(drow + c, dg);
    store_vec<V>(drow + inter + c, du);
  }
}

}  // namespace

void swiglu_fwd(const Tensor& out, const Tensor& gate_up, Context& ctx) {
  const int64_t inter = gate_up.cols() / 2;
  const int64_t tokens = gate_up.rows();
  if (tokens == 0 || inter == 0) return;
  cudaStream_t s = stream_of(ctx);
  dispatch_float(out.dtype, "swiglu_fwd", [&](auto tag) {
    using T = decltype(tag);
    constexpr int V = vec16<T>();
    if (inter % V == 0 && is_aligned(out.data, 16) && is_aligned(gate_up.data, 16)) {
      swiglu_fwd_kernel<T, V><<<grid_for(tokens * inter / V, 256), 256, 0, s>>>(out.ptr<T>(), gate_up.ptr<T>(), tokens,
                                                                              inter);
    } else {
      swiglu_fwd_kernel<T, 1><<<grid_for(tokens * inter, 256), 256, 0, s>>>(out.ptr<T>(), gate_up.ptr<T>(), tokens,
                                                                          inter);
    }
    RLCU_LAUNCH_CHECK(s);
  });
}

void swiglu_bwd(const Tensor& dgate_up, const Tensor& dout, const Tensor& gate_up, Context& ctx) {
  const int64_t inter = gate_up.cols() / 2;
  const int64_t tokens = gate_up.rows();
  if (tokens == 0 || inter == 0) return;
  cudaStream_t s = stream_of(ctx);
  dispatch_float(gate_up.dtype, "swiglu_bwd", [&](auto tag) {
    using T = decltype(tag);
    constexpr int V = vec16<T>();
    if (inter % V == 0 && is_aligned(dgate_up.data, 16) && is_aligned(dout.data, 16) &&
        is_aligned(gate_up.data, 16)) {
      swiglu_bwd_kernel<T, V><<<grid_for(tokens * inter / V, 256), 256, 0, s>>>(dgate_up.ptr<T>(), dout.ptr<T>(),
                                                                              gate_up.ptr<T>(), tokens, inter);
    } else {
      swiglu_bwd_kernel<T, 1><<<grid_for(tokens * inter, 256), 256, 0, s>>>(dgate_up.ptr<T>(), dout.ptr<T>(),
                                                                          gate_up.ptr<T>(), tokens, inter);
    }
    RLCU_LAUNCH_CHECK(s);
  });
}

}  // namespace rlcu::cuda
