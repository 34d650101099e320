// Causal packed-sequence attention, generic path (F32 or BF16, any head dim up to kMaxGenericHeadDim; math and
// shapes in kernels/attention.cu, the op's entry point): one warp per query row (forward, dq) or key row (dk, dv),
// fp32 arithmetic, dot products by warp shuffles; lane l holds elements l + 32 c of a row (c < NPL, the
// elements-per-lane count generic_per_lane picks in kernels/attention_select.cpp). dq, dk, dv are overwritten.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "attention_common.cuh"
#include "attention_select.h"

namespace rlcu::cuda {

namespace {

constexpr int kGenericWarps = 4;
constexpr int kMaxPerLane = kMaxGenericHeadDim / 32;

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(bf16 x) { return __bfloat162float(x); }
__device__ __forceinline__ void store_f32(float* p, float x) { *p = x; }
__device__ __forceinline__ void store_f32(bf16* p, float x) { *p = __float2bfloat16_rn(x); }

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(kFullMask, x, o);
  return x;
}

// Lane `lane` holds elements d = lane + 32 c (c < NPL, d < hd) of a row.
template <int NPL, typename T>
__device__ __forceinline__ void load_row(float (&x)[NPL], const T* row, int hd, int lane) {
#pragma unroll
  for (int c = 0; c < NPL; ++c) {
    const int d = lane + 32 * c;
    x[c] = d < hd ? to_f32(row[d]) : 0.0f;
  }
}
template <int NPL, typename T>
__device__ __forceinline__ float dot_row(const float (&x)[NPL], const T* row, int hd, int lane) {
  float acc = 0.0f;
#pragma unroll
  for (int c = 0; c < NPL; ++c) {
    const int d = lane + 32 * c;
    if (d < hd) acc = fmaf(x[c], to_f32(row[d]), acc);
  }
  return acc;
}

template <typename T>
struct GenericParams {
  T* out;
  float* lse;
  T* dq;
  T* dk;
  T* dv;
  const T* dout;
  const T* q;
  const T* k;
  const T* v;
  const T* o;  // forward output (backward only)
  const float* lse_in;
  const int* cu_seqlens;
  int nq, nkv, group, hd;
  float scale;
};

// One warp per query row of one head: online softmax over keys 0..i.
template <typename T, int NPL>
__global__ void attention_fwd_generic_kernel(GenericParams<T> p) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int s = blockIdx.z, h = blockIdx.y, kvh = h / p.group;
  const int start = p.cu_seqlens[s];
  const int len = p.cu_seqlens[s + 1] - start;
  const int64_t q_ld = static_cast<int64_t>(p.nq) * p.hd, kv_ld = static_cast<int64_t>(p.nkv) * p.hd;
  for (int i = blockIdx.x * kGenericWarps + warp; i < len; i += gridDim.x * kGenericWarps) {
    float qr[NPL], acc[NPL];
    load_row<NPL>(qr, p.q + (start + i) * q_ld + h * p.hd, p.hd, lane);
#pragma unroll
    for (int c = 0; c < NPL; ++c) acc[c] = 0.0f;
    float m = -INFINITY, l = 0.0f;
    for (int j = 0; j <= i; ++j) {
      const int64_t kv = (start + j) * kv_ld + kvh * p.hd;
      const float x = warp_sum(dot_row<NPL>(qr, p.k + kv, p.hd, lane)) * p.scale;
      const float m_new = fmaxf(m, x);
      const float alpha = expf(m - m_new);
      const float pj = expf(x - m_new);
      l = l * alpha + pj;
      float vr[NPL];
      load_row<NPL>(vr, p.v + kv, p.hd, lane);
#pragma unroll
      for (int c = 0; c < NPL; ++c) acc[c] = fmaf(pj, vr[c], acc[c] * alpha);
      m = m_new;
    }
    const float inv = 1.0f / l;
    T* orow = p.out + (start + i) * q_ld + h * p.hd;
#pragma unroll
    for (int c = 0; c < NPL; ++c) {
      const int d = lane + 32 * c;
      if (d < p.hd) store_f32(orow + d, acc[c] * inv);
    }
    if (lane == 0) p.lse[static_cast<int64_t>(start + i) * p.nq + h] = m + logf(l);
  }
}

// One warp per query row of one head: dq_i = scale sum_{j<=i} P_ij (dP_ij - D_i) k_j.
template <typename T, int NPL>
__global__ void attention_bwd_dq_generic_kernel(GenericParams<T> p) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int s = blockIdx.z, h = blockIdx.y, kvh = h / p.group;
  const int start = p.cu_seqlens[s];
  const int len = p.cu_seqlens[s + 1] - start;
  const int64_t q_ld = static_cast<int64_t>(p.nq) * p.hd, kv_ld = static_cast<int64_t>(p.nkv) * p.hd;
  for (int i = blockIdx.x * kGenericWarps + warp; i < len; i += gridDim.x * kGenericWarps) {
    const int64_t qrow = (start + i) * q_ld + h * p.hd;
    float qr[NPL], dor[NPL], acc[NPL];
    load_row<NPL>(qr, p.q + qrow, p.hd, lane);
    load_row<NPL>(dor, p.dout + qrow, p.hd, lane);
#pragma unroll
    for (int c = 0; c < NPL; ++c) acc[c] = 0.0f;
    const float di = warp_sum(dot_row<NPL>(dor, p.o + qrow, p.hd, lane));
    const float lse = p.lse_in[static_cast<int64_t>(start + i) * p.nq + h];
    for (int j = 0; j <= i; ++j) {
      const int64_t kv = (start + j) * kv_ld + kvh * p.hd;
      const float x = warp_sum(dot_row<NPL>(qr, p.k + kv, p.hd, lane)) * p.scale;
      const float dp = warp_sum(dot_row<NPL>(dor, p.v + kv, p.hd, lane));
      const float ds = expf(x - lse) * (dp - di);
      float kr[NPL];
      load_row<NPL>(kr, p.k + kv, p.hd, lane);
#pragma unroll
      for (int c = 0; c < NPL; ++c) acc[c] = fmaf(ds, kr[c], acc[c]);
    }
    T* drow = p.dq + qrow;
#pragma unroll
    for (int c = 0; c < NPL; ++c) {
      const int d = lane + 32 * c;
      if (d < p.hd) store_f32(drow + d, acc[c] * p.scale);
    }
  }
}

// One warp per key row of one kv head: sums over the query heads of its group and the queries i >= j.
template <typename T, int NPL>
__global__ void attention_bwd_dkdv_generic_kernel(GenericParams<T> p) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int s = blockIdx.z, kvh = blockIdx.y;
  const int start = p.cu_seqlens[s];
  const int len = p.cu_seqlens[s + 1] - start;
  const int64_t q_ld = static_cast<int64_t>(p.nq) * p.hd, kv_ld = static_cast<int64_t>(p.nkv) * p.hd;
  for (int j = blockIdx.x * kGenericWarps + warp; j < len; j += gridDim.x * kGenericWarps) {
    const int64_t kv = (start + j) * kv_ld + kvh * p.hd;
    float kr[NPL], vr[NPL], dk[NPL], dv[NPL];
    load_row<NPL>(kr, p.k + kv, p.hd, lane);
    load_row<NPL>(vr, p.v + kv, p.hd, lane);
#pragma unroll
    for (int c = 0; c < NPL; ++c) dk[c] = dv[c] = 0.0f;
    for (int hh = 0; hh < p.group; ++hh) {
      const int h = kvh * p.group + hh;
      for (int i = j; i < len; ++i) {
        const int64_t qrow = (start + i) * q_ld + h * p.hd;
        float dor[NPL];
        load_row<NPL>(dor, p.dout + qrow, p.hd, lane);
        const float x = warp_sum(dot_row<NPL>(kr, p.q + qrow, p.hd, lane)) * p.scale;
        const float dp = warp_sum(dot_row<NPL>(vr, p.dout + qrow, p.hd, lane));
        const float di = warp_sum(dot_row<NPL>(dor, p.o + qrow, p.hd, lane));
        const float pij = expf(x - p.lse_in[static_cast<int64_t>(start + i) * p.nq + h]);
        const float ds = pij * (dp - di);
        float qr[NPL];
        load_row<NPL>(qr, p.q + qrow, p.hd, lane);
#pragma unroll
        for (int c = 0; c < NPL; ++c) {
          dv[c] = fmaf(pij, dor[c], dv[c]);
          dk[c] = fmaf(ds, qr[c], dk[c]);
        }
      }
    }
#pragma unroll
    for (int c = 0; c < NPL; ++c) {
      const int d = lane + 32 * c;
      if (d < p.hd) {
        store_f32(p.dk + kv + d, dk[c] * p.scale);
        store_f32(p.dv + kv + d, dv[c]);
      }
    }
  }
}

template <typename T>
GenericParams<T> generic_params(const attention::Dims& d, const Tensor& cu_seqlens, const ops::AttentionParams& p) {
  GenericParams<T> gp{};
  gp.cu_seqlens = cu_seqlens.ptr<int>();
  gp.nq = d.nq;
  gp.nkv = d.nkv;
  gp.group = d.nq / d.nkv;
  gp.hd = d.hd;
  gp.scale = p.scale;
  return gp;
}

// Calls f(std::integral_constant<int, NPL>) with NPL = generic_per_lane(hd).
template <typename F>
void with_per_lane(int hd, F&& f) {
  switch (generic_per_lane(hd)) {
    case 1: f(std::integral_constant<int, 1>()); break;
    case 2: f(std::integral_constant<int, 2>()); break;
    case 4: f(std::integral_constant<int, 4>()); break;
    case 8: f(std::integral_constant<int, 8>()); break;
    default: f(std::integral_constant<int, kMaxPerLane>()); break;
  }
}

template <typename T>
void launch_fwd_generic(const Tensor& out, const Tensor& lse, const Tensor& q, const Tensor& k, const Tensor& v,
                        const Tensor& cu_seqlens, const ops::AttentionParams& p, const attention::Dims& d,
                        cudaStream_t stream) {
  GenericParams<T> gp = generic_params<T>(d, cu_seqlens, p);
  gp.out = out.ptr<T>();
  gp.lse = lse.ptr<float>();
  gp.q = q.ptr<T>();
  gp.k = k.ptr<T>();
  gp.v = v.ptr<T>();
  const dim3 grid(attention::grid_tiles(p.max_seqlen, kGenericWarps), d.nq, p.num_seqs);
  with_per_lane(d.hd, [&](auto npl) {
    attention_fwd_generic_kernel<T, decltype(npl)::value><<<grid, kGenericWarps * 32, 0, stream>>>(gp);
    RLCU_LAUNCH_CHECK(stream);
  });
}

template <typename T>
void launch_bwd_generic(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dout, const Tensor& q,
                        const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse,
                        const Tensor& cu_seqlens, const ops::AttentionParams& p, const attention::Dims& d,
                        cudaStream_t stream) {
  GenericParams<T> gp = generic_params<T>(d, cu_seqlens, p);
  gp.dq = dq.ptr<T>();
  gp.dk = dk.ptr<T>();
  gp.dv = dv.ptr<T>();
  gp.dout = dout.ptr<T>();
  gp.q = q.ptr<T>();
  gp.k = k.ptr<T>();
  gp.v = v.ptr<T>();
  gp.o = out.ptr<T>();
  gp.lse_in = lse.ptr<float>();
  const int tiles = attention::grid_tiles(p.max_seqlen, kGenericWarps);
  with_per_lane(d.hd, [&](auto npl) {
    constexpr int kNpl = decltype(npl)::value;
    attention_bwd_dq_generic_kernel<T, kNpl><<<dim3(tiles, d.nq, p.num_seqs), kGenericWarps * 32, 0, stream>>>(gp);
    RLCU_LAUNCH_CHECK(stream);
    attention_bwd_dkdv_generic_kernel<T, kNpl>
        <<<dim3(tiles, d.nkv, p.num_seqs), kGenericWarps * 32, 0, stream>>>(gp);
    RLCU_LAUNCH_CHECK(stream);
  });
}

}  // namespace

void attention::fwd_generic(const Tensor& out, const Tensor& lse, const Tensor& q, const Tensor& k, const Tensor& v,
                            const Tensor& cu_seqlens, const ops::AttentionParams& p, const Dims& d,
                            cudaStream_t stream) {
  if (q.dtype == DType::BF16) launch_fwd_generic<bf16>(out, lse, q, k, v, cu_seqlens, p, d, stream);
  else launch_fwd_generic<float>(out, lse, q, k, v, cu_seqlens, p, d, stream);
}

void attention::bwd_generic(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dout, const Tensor& q,
                            const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse,
                            const Tensor& cu_seqlens, const ops::AttentionParams& p, const Dims& d,
                            cudaStream_t stream) {
  if (q.dtype == DType::BF16) launch_bwd_generic<bf16>(dq, dk, dv, dout, q, k, v, out, lse, cu_seqlens, p, d, stream);
  else launch_bwd_generic<float>(dq, dk, dv, dout, q, k, v, out, lse, cu_seqlens, p, d, stream);
}

}  // namespace rlcu::cuda
