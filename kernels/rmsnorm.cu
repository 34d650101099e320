// RMSNorm over the last dim on CUDA (rows of any width: the model's hidden norm is [T, H], the per-head QK-norm
// is [T*heads, hd]).
//
// fwd: rstd[n] = 1 / sqrt(mean_d x[n,d]^2 + eps);  out[n,d] = x[n,d] * rstd[n] * w[d]   (fp32 math, one rounding)
// bwd: with g = dout,  dx[n,d] = rstd * (w[d] g[n,d] - x[n,d] rstd^2 mean_e(w[e] g[n,e] x[n,e]))   (overwrite)
//      dweight[d] (F32) += sum_n g[n,d] x[n,d] rstd[n]                                   (accumulate)
// x/out/dout/dx: F32 or BF16 (out, dout and dx of x's dtype, or BF16 with an F32 x: the F32 residual stream);
// weight F32 or BF16; rstd F32. dx may alias dout. rmsnorm_bwd_add adds the gradient into dx (dx += ...; one
// rounding), which fuses the residual-gradient add.
// Sizes, dtypes, eps and the no-alias rule are checked before the call (kernels/contract/norm.cpp).
//
// Layout (kernels/rmsnorm_common.cuh, shared with the fused QK-norm of qkv_prepare.cu): G lanes per row (G = the
// power of two covering the row's 16-byte vectors, 4..32), so a warp holds 32/G rows and narrow rows (QK-norm,
// hd = 128 in bf16: 16 lanes) keep every lane busy. When a row has no 16-byte path (odd width, misalignment) a warp
// takes one row element by element.
// Backward, vector path with at most 4 vectors per lane (bf16 rows up to 1024 wide, f32 up to 512): one fused
// kernel keeps the row in registers for dx and adds g x rstd into per-lane column sums across the rows it visits
// (a grid of at most kFusedBlocks blocks, fixed for a given shape); each block reduces its warps in a fixed order
// into partial[block][d] and a second kernel adds the partials in order (fp64) into dweight. Otherwise dweight is
// the two-pass column reduction of cuda_common.cuh, run before the dx kernel (so dx may alias dout). No atomics:
// bit-reproducible for a given shape.
#include <algorithm>
#include <type_traits>

#include "cuda_common.cuh"
#include "backends.h"
#include "rmsnorm_common.cuh"

namespace rlcu::cuda {

namespace {

constexpr int kWarpsPerBlock = 8;
constexpr int kFusedMaxSlots = 4;    // 16-byte vectors per lane in the fused backward
constexpr int kFusedBlocks = 528;    // grid cap of the fused backward (a constant: results depend on shape only)

// Sum over the G lanes of a row group (xor partners stay inside aligned groups of G lanes).
template <int G>
__device__ __forceinline__ float group_sum(float v) {
#pragma unroll
  for (int o = G / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

template <class T, class O, class W, int V, int G>
__global__ void rmsnorm_fwd_kernel(O* __restrict__ out, float* __restrict__ rstd, const T* __restrict__ x,
                                   const W* __restrict__ w, int64_t rows, int64_t dim, float eps) {
  constexpr int kRowsPerWarp = 32 / G;
  const int lane = threadIdx.x & 31, sub = lane % G;
  const int64_t row =
      (static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5)) * kRowsPerWarp + lane / G;
  const bool ok = row < rows;  // every lane takes part in the shuffles
  const int64_t lim = ok ? dim : 0;
  const T* xr = x + (ok ? row : 0) * dim;
  float ss = 0.0f;
#pragma unroll 4
  for (int64_t c = static_cast<int64_t>(sub) * V; c < lim; c += G * V) {
    const Vec<T, V> v = load_vec<V>(xr + c);
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const float f = to_f32(v.v[j]);
      ss = fmaf(f, f, ss);
    }
  }
  ss = group_sum<G>(ss);
  const float r = rsqrtf(ss / static_cast<float>(dim) + eps);
  if (ok && sub == 0) rstd[row] = r;
  O* orow = out + (ok ? row : 0) * dim;
#pragma unroll 4
  for (int64_t c = static_cast<int64_t>(sub) * V; c < lim; c += G * V) {
    const Vec<T, V> v = load_vec<V>(xr + c);
    const Vec<W, V> wv = load_vec<V>(w + c);
    Vec<O, V> o;
#pragma unroll
    for (int j = 0; j < V; ++j) o.v[j] = from_f32<O>(to_f32(v.v[j]) * r * to_f32(wv.v[j]));
    store_vec<V>(orow + c, o);
  }
}

// dx only (dweight done separately); one warp per row. ACC: dx += the gradient instead of dx = it.
template <class T, class X, class W, int V, bool ACC>
__global__ void rmsnorm_bwd_kernel(T* dx, const T* dout, const X* __restrict__ x, const W* __restrict__ w,
                                   const float* __restrict__ rstd, int64_t rows, int64_t dim) {
  const int lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  if (row >= rows) return;
  const X* xr = x + row * dim;
  const T* gr = dout + row * dim;
  float dot = 0.0f;
#pragma unroll 4
  for (int64_t c = static_cast<int64_t>(lane) * V; c < dim; c += 32 * V) {
    const Vec<X, V> xv = load_vec<V>(xr + c);
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
    const Vec<X, V> xv = load_vec<V>(xr + c);
    const Vec<T, V> gv = load_vec<V>(gr + c);
    const Vec<W, V> wv = load_vec<V>(w + c);
    Vec<T, V> o;
    if constexpr (ACC) o = load_vec<V>(dr + c);
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const float g = r * (to_f32(wv.v[j]) * to_f32(gv.v[j]) - to_f32(xv.v[j]) * k);
      o.v[j] = from_f32<T>(ACC ? to_f32(o.v[j]) + g : g);
    }
    store_vec<V>(dr + c, o);
  }
}

// Fused backward: dx for the rows of this block's grid-stride walk, and partial[block][d] = sum over those rows of
// g x rstd. Lane `sub` of a row group owns columns sub*V + s*G*V (s < S). Dynamic shared memory: warps * dim floats.
template <class T, class X, class W, int V, int G, int S, bool ACC>
__global__ void rmsnorm_bwd_fused_kernel(T* dx, float* __restrict__ partial, const T* dout, const X* __restrict__ x,
                                         const W* __restrict__ w, const float* __restrict__ rstd, int64_t rows,
                                         int64_t dim) {
  extern __shared__ float warp_sums[];  // [kWarpsPerBlock][dim]
  constexpr int kRowsPerWarp = 32 / G;
  constexpr int64_t kRowsPerBlock = kWarpsPerBlock * kRowsPerWarp;
  const int lane = threadIdx.x & 31, sub = lane % G, warp = threadIdx.x >> 5;
  Vec<W, V> wv[S];
  float acc[S][V];
#pragma unroll
  for (int s = 0; s < S; ++s) {
    const int64_t c = static_cast<int64_t>(sub) * V + s * G * V;
    if (c < dim) wv[s] = load_vec<V>(w + c);
#pragma unroll
    for (int j = 0; j < V; ++j) acc[s][j] = 0.0f;
  }
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock; base < rows;
       base += static_cast<int64_t>(gridDim.x) * kRowsPerBlock) {
    const int64_t row = base + warp * kRowsPerWarp + lane / G;
    const bool ok = row < rows;
    const int64_t off = (ok ? row : 0) * dim;
    Vec<X, V> xv[S];
    Vec<T, V> gv[S];
    float dot = 0.0f;
#pragma unroll
    for (int s = 0; s < S; ++s) {
      const int64_t c = static_cast<int64_t>(sub) * V + s * G * V;
      if (ok && c < dim) {
        xv[s] = load_vec<V>(x + off + c);
        gv[s] = load_vec<V>(dout + off + c);
#pragma unroll
        for (int j = 0; j < V; ++j) dot = fmaf(to_f32(wv[s].v[j]) * to_f32(gv[s].v[j]), to_f32(xv[s].v[j]), dot);
      }
    }
    dot = group_sum<G>(dot);
    if (!ok) continue;
    const float r = rstd[row];
    const float k = r * r * dot / static_cast<float>(dim);
#pragma unroll
    for (int s = 0; s < S; ++s) {
      const int64_t c = static_cast<int64_t>(sub) * V + s * G * V;
      if (c < dim) {
        Vec<T, V> o;
        if constexpr (ACC) o = load_vec<V>(dx + off + c);
#pragma unroll
        for (int j = 0; j < V; ++j) {
          const float xf = to_f32(xv[s].v[j]), gf = to_f32(gv[s].v[j]);
          const float gx = r * (to_f32(wv[s].v[j]) * gf - xf * k);
          o.v[j] = from_f32<T>(ACC ? to_f32(o.v[j]) + gx : gx);
          acc[s][j] = fmaf(gf * xf, r, acc[s][j]);
        }
        store_vec<V>(dx + off + c, o);
      }
    }
  }
  // Rows groups of one warp: butterfly over the lane bits above G (fixed order), then warps in order via smem.
#pragma unroll
  for (int s = 0; s < S; ++s)
#pragma unroll
    for (int j = 0; j < V; ++j)
#pragma unroll
      for (int o = 16; o >= G; o >>= 1) acc[s][j] += __shfl_xor_sync(0xffffffffu, acc[s][j], o);
  if (lane < G) {
#pragma unroll
    for (int s = 0; s < S; ++s) {
      const int64_t c = static_cast<int64_t>(sub) * V + s * G * V;
      if (c < dim)
#pragma unroll
        for (int j = 0; j < V; ++j) warp_sums[warp * dim + c + j] = acc[s][j];
    }
  }
  __syncthreads();
  for (int64_t c = threadIdx.x; c < dim; c += blockDim.x) {
    float t = warp_sums[c];
#pragma unroll
    for (int i = 1; i < kWarpsPerBlock; ++i) t += warp_sums[i * dim + c];
    partial[static_cast<int64_t>(blockIdx.x) * dim + c] = t;
  }
}

// f(n, d) = dout[n,d] * x[n,d] * rstd[n] for the dweight column reduction.
template <class T, class X>
struct NormWeightGrad {
  const T* dout;
  const X* x;
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

template <class F>
void with_lanes(int g, F&& f) {
  switch (g) {
    case 4: f(std::integral_constant<int, 4>{}); break;
    case 8: f(std::integral_constant<int, 8>{}); break;
    case 16: f(std::integral_constant<int, 16>{}); break;
    default: f(std::integral_constant<int, 32>{}); break;
  }
}

template <class F>
void with_slots(int64_t s, F&& f) {
  if (s <= 1) f(std::integral_constant<int, 1>{});
  else if (s <= 2) f(std::integral_constant<int, 2>{});
  else f(std::integral_constant<int, 4>{});
}

}  // namespace

void rmsnorm_fwd(const Tensor& out, const Tensor& rstd, const Tensor& x, const Tensor& weight, float eps,
                 Context& ctx) {
  const int64_t rows = lead_rows(x), dim = x.cols();
  if (rows == 0 || dim == 0) return;
  cudaStream_t s = stream_of(ctx);
  dispatch_float(x.dtype, "rmsnorm_fwd x", [&](auto tx) {
    using T = decltype(tx);
    dispatch_float(out.dtype, "rmsnorm_fwd out", [&](auto to) {
      using O = decltype(to);
      if constexpr (std::is_same_v<T, O> || std::is_same_v<T, float>) {
        dispatch_float(weight.dtype, "rmsnorm_fwd weight", [&](auto tw) {
          using W = decltype(tw);
          constexpr int V = vec16<T>();
          if (vec_ok<T, W>(dim, {x.data}, {weight.data}) && is_aligned(out.data, V * sizeof(O))) {
            with_lanes(rmsnorm_lanes_per_row(dim / V), [&](auto g) {
              constexpr int G = decltype(g)::value;
              const unsigned grid = static_cast<unsigned>(ceil_div(rows, kWarpsPerBlock * (32 / G)));
              rmsnorm_fwd_kernel<T, O, W, V, G><<<grid, kWarpsPerBlock * 32, 0, s>>>(
                  out.ptr<O>(), rstd.ptr<float>(), x.ptr<T>(), weight.ptr<W>(), rows, dim, eps);
            });
          } else {
            rmsnorm_fwd_kernel<T, O, W, 1, 32><<<static_cast<unsigned>(ceil_div(rows, kWarpsPerBlock)),
                                                 kWarpsPerBlock * 32, 0, s>>>(out.ptr<O>(), rstd.ptr<float>(),
                                                                              x.ptr<T>(), weight.ptr<W>(), rows, dim,
                                                                              eps);
          }
          RLCU_LAUNCH_CHECK(s);
        });
      }
    });
  });
}

namespace {

void rmsnorm_bwd_impl(const Tensor& dx, const Tensor& dweight, const Tensor& dout, const Tensor& x,
                      const Tensor& weight, const Tensor& rstd, bool acc, const char* op, Context& ctx) {
  const int64_t rows = lead_rows(x), dim = x.cols();
  if (rows == 0 || dim == 0) return;
  cudaStream_t s = stream_of(ctx);
  dispatch_float(dout.dtype, op, [&](auto tg) {
    using T = decltype(tg);
    dispatch_float(x.dtype, op, [&](auto tx) {
      using X = decltype(tx);
      if constexpr (std::is_same_v<T, X> || std::is_same_v<X, float>) {
        dispatch_float(weight.dtype, op, [&](auto tw) {
          using W = decltype(tw);
          constexpr int V = vec16<T>();
          const bool vec = vec_ok<T, W>(dim, {dx.data, dout.data}, {weight.data}) && is_aligned(x.data, V * sizeof(X));
          const int g = rmsnorm_lanes_per_row(dim / V);
          const int64_t slots = ceil_div(dim / V, g);
          auto with_acc = [&](auto f) {
            if (acc) f(std::true_type{});
            else f(std::false_type{});
          };
          if (vec && slots <= kFusedMaxSlots) {
            with_lanes(g, [&](auto gc) {
              constexpr int G = decltype(gc)::value;
              with_slots(slots, [&](auto sc) {
                constexpr int S = decltype(sc)::value;
                const int64_t rows_per_block = kWarpsPerBlock * (32 / G);
                const int blocks = static_cast<int>(std::min<int64_t>(ceil_div(rows, rows_per_block), kFusedBlocks));
                float* partial = static_cast<float*>(scratch(ctx, sizeof(float) * blocks * dim));
                const size_t smem = sizeof(float) * kWarpsPerBlock * dim;
                with_acc([&](auto ac) {
                  rmsnorm_bwd_fused_kernel<T, X, W, V, G, S, decltype(ac)::value>
                      <<<blocks, kWarpsPerBlock * 32, smem, s>>>(dx.ptr<T>(), partial, dout.ptr<T>(), x.ptr<X>(),
                                                                  weight.ptr<W>(), rstd.ptr<float>(), rows, dim);
                });
                RLCU_LAUNCH_CHECK(s);
                column_finish(dweight.ptr<float>(), partial, blocks, dim, s);
              });
            });
            return;
          }
          float* partial = static_cast<float*>(scratch(ctx, column_scratch_floats(rows, dim) * sizeof(float)));
          column_sum_accumulate(dweight.ptr<float>(), rows, dim,
                                NormWeightGrad<T, X>{dout.ptr<T>(), x.ptr<X>(), rstd.ptr<float>(), dim}, partial, s);
          const unsigned grid = static_cast<unsigned>(ceil_div(rows, kWarpsPerBlock));
          with_acc([&](auto ac) {
            constexpr bool A = decltype(ac)::value;
            if (vec) {
              rmsnorm_bwd_kernel<T, X, W, V, A><<<grid, kWarpsPerBlock * 32, 0, s>>>(
                  dx.ptr<T>(), dout.ptr<T>(), x.ptr<X>(), weight.ptr<W>(), rstd.ptr<float>(), rows, dim);
            } else {
              rmsnorm_bwd_kernel<T, X, W, 1, A><<<grid, kWarpsPerBlock * 32, 0, s>>>(
                  dx.ptr<T>(), dout.ptr<T>(), x.ptr<X>(), weight.ptr<W>(), rstd.ptr<float>(), rows, dim);
            }
          });
          RLCU_LAUNCH_CHECK(s);
        });
      }
    });
  });
}

}  // namespace

void rmsnorm_bwd(const Tensor& dx, const Tensor& dweight, const Tensor& dout, const Tensor& x, const Tensor& weight,
                 const Tensor& rstd, Context& ctx) {
  rmsnorm_bwd_impl(dx, dweight, dout, x, weight, rstd, false, "rmsnorm_bwd", ctx);
}

void rmsnorm_bwd_add(const Tensor& dx, const Tensor& dweight, const Tensor& dout, const Tensor& x,
                     const Tensor& weight, const Tensor& rstd, Context& ctx) {
  rmsnorm_bwd_impl(dx, dweight, dout, x, weight, rstd, true, "rmsnorm_bwd_add", ctx);
}

}  // namespace rlcu::cuda
