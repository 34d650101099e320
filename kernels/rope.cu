// Rotary position embedding on CUDA (NeoX half-split layout, as Hugging Face rotate_half).
//
// x[T, nh, hd] (F32 or BF16; out of the same dtype, may alias x), positions[T] (I32), inv_freq[hd/2] (F32, already
// holding the default or llama3-scaled frequencies). For i < hd/2, a = float(positions[t]) * inv_freq[i] in fp32
// and cos/sin from sincosf (full-range accurate, as Hugging Face computes them in fp32):
//   fwd: out[i] = x[i] cos a - x[i+hd/2] sin a,   out[i+hd/2] = x[i+hd/2] cos a + x[i] sin a
//   bwd: the transpose rotation (angle -a) maps dout to dx (activation gradient: overwrites; may alias dout).
// One thread per (token, head, group of V frequencies): reads the two halves, writes them back; 16-byte accesses
// when hd/2 is a multiple of the vector width. The element math is rope_rotate_pair (rope_common.cuh), shared with
// the fused qkv_prepare so both round identically. Shapes and dtypes are checked before the call
// (kernels/contract/rope.cpp).
#include "cuda_common.cuh"
#include "backends.h"
#include "rope_common.cuh"

namespace rlcu::cuda {

namespace {

template <class T, int V>
__global__ void rope_kernel(T* out, const T* x, const int* __restrict__ positions, const float* __restrict__ inv_freq,
                            int64_t tokens, int64_t heads, int64_t half, float sign) {
  const int64_t groups = half / V;
  const int64_t n = tokens * heads * groups;
  for (int64_t w = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; w < n;
       w += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t g = w % groups;
    const int64_t th = w / groups;  // token * heads + head
    const int64_t t = th / heads;
    const int64_t base = th * 2 * half + g * V;
    const float pos = static_cast<float>(positions[t]);
    const Vec<float, V> f = load_vec<V>(inv_freq + g * V);
    const Vec<T, V> lo = load_vec<V>(x + base);
    const Vec<T, V> hi = load_vec<V>(x + base + half);
    Vec<T, V> olo, ohi;
#pragma unroll
    for (int j = 0; j < V; ++j) {
      float rlo, rhi;
      rope_rotate_pair(to_f32(lo.v[j]), to_f32(hi.v[j]), pos, f.v[j], sign, rlo, rhi);
      olo.v[j] = from_f32<T>(rlo);
      ohi.v[j] = from_f32<T>(rhi);
    }
    store_vec<V>(out + base, olo);
    store_vec<V>(out + base + half, ohi);
  }
}

void rope_apply(const Tensor& out, const Tensor& x, const Tensor& positions, const Tensor& inv_freq, float sign,
                const char* op, Context& ctx) {
  const int64_t tokens = x.size(0), hd = x.cols();
  const int64_t half = hd / 2;
  const int64_t heads = tokens == 0 || hd == 0 ? 0 : x.numel() / (tokens * hd);
  if (tokens == 0 || heads == 0 || half == 0) return;
  cudaStream_t s = stream_of(ctx);
  dispatch_float(x.dtype, op, [&](auto tx) {
    using T = decltype(tx);
    constexpr int V = vec16<T>();
    const bool vec = half % V == 0 && is_aligned(out.data, V * sizeof(T)) && is_aligned(x.data, V * sizeof(T)) &&
                     is_aligned(inv_freq.data, V * sizeof(float));
    if (vec) {
      rope_kernel<T, V><<<grid_for(tokens * heads * half / V, 256), 256, 0, s>>>(
          out.ptr<T>(), x.ptr<T>(), positions.ptr<int>(), inv_freq.ptr<float>(), tokens, heads, half, sign);
    } else {
      rope_kernel<T, 1><<<grid_for(tokens * heads * half, 256), 256, 0, s>>>(
          out.ptr<T>(), x.ptr<T>(), positions.ptr<int>(), inv_freq.ptr<float>(), tokens, heads, half, sign);
    }
    RLCU_LAUNCH_CHECK(s);
  });
}

}  // namespace

void rope_fwd(const Tensor& out, const Tensor& x, const Tensor& positions, const Tensor& inv_freq, Context& ctx) {
  rope_apply(out, x, positions, inv_freq, 1.0f, "rope_fwd", ctx);
}

void rope_bwd(const Tensor& dx, const Tensor& dout, const Tensor& positions, const Tensor& inv_freq, Context& ctx) {
  rope_apply(dx, dout, positions, inv_freq, -1.0f, "rope_bwd", ctx);
}

}  // namespace rlcu::cuda
