// Elementwise ops on CUDA (tensors of equal element count, any shape).
//
//   add:   out = a + b        (out, a, b each F32 or BF16; out may alias a or b)
//   scale: out = s * x        (F32 or BF16; may alias)
//   cast:  out = x converted  (F32, BF16 or F16 in; F32 or BF16 out; round to nearest even)
//   fill:  out = value        (F32, BF16, I32; the value converted as by a C cast for I32)
// Element counts and scale's shared dtype are checked before the call (kernels/contract/elementwise.cpp).
// fp32 math, one rounding at the store. One thread per 8 elements (16-byte bf16 / 32-byte f32 accesses) when every
// pointer is aligned for it, else one per element.
#include <type_traits>

#include "cuda_common.cuh"
#include "backends.h"

namespace rlcu::cuda {

namespace {

constexpr int kVec = 8;

template <class TO, class TA, class TB, int V>
__global__ void add_kernel(TO* out, const TA* a, const TB* b, int64_t n) {
  const int64_t nv = n / V;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < nv;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const Vec<TA, V> x = load_vec<V>(a + i * V);
    const Vec<TB, V> y = load_vec<V>(b + i * V);
    Vec<TO, V> o;
#pragma unroll
    for (int j = 0; j < V; ++j) o.v[j] = from_f32<TO>(to_f32(x.v[j]) + to_f32(y.v[j]));
    store_vec<V>(out + i * V, o);
  }
}

template <class TO, class TI, int V>
__global__ void scale_cast_kernel(TO* out, const TI* x, float s, int64_t n) {
  const int64_t nv = n / V;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < nv;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const Vec<TI, V> v = load_vec<V>(x + i * V);
    Vec<TO, V> o;
#pragma unroll
    for (int j = 0; j < V; ++j) o.v[j] = from_f32<TO>(s * to_f32(v.v[j]));
    store_vec<V>(out + i * V, o);
  }
}

template <class T>
__device__ __forceinline__ T fill_value(float v) {
  return from_f32<T>(v);
}
template <>
__device__ __forceinline__ int fill_value<int>(float v) {
  return static_cast<int>(v);
}

template <class T, int V>
__global__ void fill_kernel(T* out, float value, int64_t n) {
  const int64_t nv = n / V;
  const T fv = fill_value<T>(value);
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < nv;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    Vec<T, V> o;
#pragma unroll
    for (int j = 0; j < V; ++j) o.v[j] = fv;
    store_vec<V>(out + i * V, o);
  }
}

// The vector kernel over the first n - n % kVec elements, the scalar kernel over the tail.
template <class Launch>
void vector_then_tail(int64_t n, bool aligned, cudaStream_t s, Launch&& launch) {
  const int64_t head = aligned ? n / kVec * kVec : 0;
  if (head > 0) launch(std::integral_constant<int, kVec>{}, int64_t(0), head, grid_for(head / kVec, 256));
  if (n > head) launch(std::integral_constant<int, 1>{}, head, n - head, grid_for(n - head, 256));
  RLCU_LAUNCH_CHECK(s);
}

// Calls f(T{}) for F32, BF16 and F16 (inputs of cast).
template <class F>
void dispatch_float16(DType t, const char* what, F&& f) {
  if (t == DType::F16) f(__half{});
  else dispatch_float(t, what, f);
}

}  // namespace

void add(const Tensor& out, const Tensor& a, const Tensor& b, Context& ctx) {
  const int64_t n = out.numel();
  if (n == 0) return;
  cudaStream_t s = stream_of(ctx);
  dispatch_float(out.dtype, "add out", [&](auto to) {
    using TO = decltype(to);
    dispatch_float(a.dtype, "add a", [&](auto ta) {
      using TA = decltype(ta);
      dispatch_float(b.dtype, "add b", [&](auto tb) {
        using TB = decltype(tb);
        const bool al = is_aligned(out.data, kVec * sizeof(TO)) && is_aligned(a.data, kVec * sizeof(TA)) &&
                        is_aligned(b.data, kVec * sizeof(TB));
        vector_then_tail(n, al, s, [&](auto v, int64_t off, int64_t cnt, unsigned grid) {
          add_kernel<TO, TA, TB, decltype(v)::value>
              <<<grid, 256, 0, s>>>(out.ptr<TO>() + off, a.ptr<TA>() + off, b.ptr<TB>() + off, cnt);
        });
      });
    });
  });
}

void scale(const Tensor& out, const Tensor& x, float sc, Context& ctx) {
  const int64_t n = out.numel();
  if (n == 0) return;
  cudaStream_t s = stream_of(ctx);
  dispatch_float(out.dtype, "scale", [&](auto tag) {
    using T = decltype(tag);
    const bool al = is_aligned(out.data, kVec * sizeof(T)) && is_aligned(x.data, kVec * sizeof(T));
    vector_then_tail(n, al, s, [&](auto v, int64_t off, int64_t cnt, unsigned grid) {
      scale_cast_kernel<T, T, decltype(v)::value><<<grid, 256, 0, s>>>(out.ptr<T>() + off, x.ptr<T>() + off, sc, cnt);
    });
  });
}

void cast(const Tensor& out, const Tensor& x, Context& ctx) {
  const int64_t n = out.numel();
  if (n == 0) return;
  cudaStream_t s = stream_of(ctx);
  if (out.dtype == x.dtype) {
    if (out.data != x.data)
      RLCU_CUDA_CHECK(cudaMemcpyAsync(out.data, x.data, out.nbytes(), cudaMemcpyDeviceToDevice, s));
    return;
  }
  dispatch_float(out.dtype, "cast out", [&](auto to) {
    using TO = decltype(to);
    dispatch_float16(x.dtype, "cast x", [&](auto ti) {
      using TI = decltype(ti);
      const bool al = is_aligned(out.data, kVec * sizeof(TO)) && is_aligned(x.data, kVec * sizeof(TI));
      vector_then_tail(n, al, s, [&](auto v, int64_t off, int64_t cnt, unsigned grid) {
        scale_cast_kernel<TO, TI, decltype(v)::value>
            <<<grid, 256, 0, s>>>(out.ptr<TO>() + off, x.ptr<TI>() + off, 1.0f, cnt);
      });
    });
  });
}

void fill(const Tensor& out, float value, Context& ctx) {
  check_cuda_tensor(out, "fill");
  const int64_t n = out.numel();
  if (n == 0) return;
  cudaStream_t s = stream_of(ctx);
  auto run = [&](auto tag) {
    using T = decltype(tag);
    const bool al = is_aligned(out.data, kVec * sizeof(T));
    vector_then_tail(n, al, s, [&](auto v, int64_t off, int64_t cnt, unsigned grid) {
      fill_kernel<T, decltype(v)::value><<<grid, 256, 0, s>>>(out.ptr<T>() + off, value, cnt);
    });
  };
  if (out.dtype == DType::I32) run(int{});
  else dispatch_float(out.dtype, "fill", run);
}

}  // namespace rlcu::cuda
