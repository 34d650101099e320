// Paged KV-cache ops on CUDA (math and shapes in include/rlcu/ops.h; CPU twin in kernels/cpu/paged_attention.cpp).
//
// kv_cache_write: one thread per 16-byte chunk of a K/V row, copied to its pool slot (negative slot: skipped).
// kv_block_copy:  grid (copies, planes); each block copies `count` rows of W elements within one plane.
// paged_attention_decode, split-KV ("flash-decoding"):
//   grid (num_splits, nkv * head_chunks, B), 128 threads (4 warps). A sequence of n tokens uses
//   ns = clamp(ceil(n / 64), 1, num_splits) splits (blocks with split >= ns only mark their split empty); one block
//   reads one KV head's tokens in [split * tps, min(n, (split+1) * tps)), tps = ceil(n / ns), once for up to 8 query
//   heads of its GQA group (head_chunks = ceil(group / 8)). Each warp takes 4 consecutive tokens per step (all
//   loads issued first), the warps interleaving; lanes hold hd/32 elements of q, k, v;
//   the dot products are warp sums; an online softmax keeps (max, sum, acc) per query head. The 4 warps merge in
//   shared memory. With one split the block writes out = acc / sum; otherwise it writes the split's normalised
//   output and log-sum-exp to the workspace, and paged_decode_merge_kernel combines the splits:
//   out = sum_s exp(lse_s - L) o_s with L = log sum_s exp(lse_s). Empty splits have lse = -inf; n = 0 gives zeros.
//   The grid depends on B and num_splits only, so a captured CUDA graph stays valid for any context lengths.
//   BF16 caches with hd 64 or 128 take paged_decode_vec_kernel (16-byte lanes, see there); other dtypes and head
//   dims take the generic paged_decode_kernel.
// Accumulation in fp32. No gradients: generation only. Shapes and dtypes are checked before the call
// (kernels/contract/paged_attention.cpp); this file checks its grid limits and the split-KV workspace.
#include <cmath>

#include "cuda_common.cuh"
#include "backends.h"

namespace rlcu::cuda {

namespace {

constexpr int kDecodeWarps = 4;
constexpr int kMaxHeadsPerBlock = 8;
constexpr int kUnroll = 4;     // token steps loaded ahead, generic kernel
constexpr int kVecUnroll = 8;  // token steps loaded ahead, vectorised kernel (8 measured 1.5% faster than 4 on H100)
constexpr int kMinSplitTokens = 64;

template <class T, int V>
__global__ void kv_cache_write_kernel(T* __restrict__ kc, T* __restrict__ vc, const T* __restrict__ k,
                                      const T* __restrict__ v, const int* __restrict__ slots, int64_t T_,
                                      int64_t row, int64_t num_slots) {
  const int64_t per_row = row / V, n = T_ * per_row;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = i / per_row, c = (i % per_row) * V;
    const int s = slots[t];
    if (s < 0 || s >= num_slots) continue;
    store_vec<V>(kc + s * row + c, load_vec<V>(k + t * row + c));
    store_vec<V>(vc + s * row + c, load_vec<V>(v + t * row + c));
  }
}

template <class T>
__global__ void kv_block_copy_kernel(T* __restrict__ cache, const int* __restrict__ copies, int64_t slots,
                                     int64_t W) {
  const int* c = copies + 3 * blockIdx.x;
  const int64_t src = c[0], dst = c[1], n = c[2];
  T* plane = cache + static_cast<int64_t>(blockIdx.y) * slots * W;
  for (int64_t i = threadIdx.x; i < n * W; i += blockDim.x) plane[dst * W + i] = plane[src * W + i];
}

// EPL = elements of a head row per lane (hd <= 32 * EPL).
template <class T, int EPL>
__global__ void __launch_bounds__(kDecodeWarps * 32)
    paged_decode_kernel(T* __restrict__ out, float* __restrict__ ws, const T* __restrict__ q,
                        const T* __restrict__ kc, const T* __restrict__ vc, const int* __restrict__ tables,
                        const int* __restrict__ lens, int nq, int nkv, int hd, int max_blocks, int block_size,
                        int num_splits, float scale) {
  const int split = blockIdx.x, b = blockIdx.z;
  const int group = nq / nkv, chunks = (group + kMaxHeadsPerBlock - 1) / kMaxHeadsPerBlock;
  const int g = blockIdx.y / chunks, h0 = g * group + (blockIdx.y % chunks) * kMaxHeadsPerBlock;
  const int nh = min(kMaxHeadsPerBlock, g * group + group - h0);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int n = lens[b];
  // Splits actually used by this sequence: at most num_splits chunks of at least kMinSplitTokens tokens.
  const int ns = max(1, min(num_splits, (n + kMinSplitTokens - 1) / kMinSplitTokens));
  const int tps = (n + ns - 1) / ns;
  const int t0 = split * tps, t1 = split < ns ? min(n, t0 + tps) : t0;

  float qr[kMaxHeadsPerBlock][EPL], acc[kMaxHeadsPerBlock][EPL], m[kMaxHeadsPerBlock], l[kMaxHeadsPerBlock];
#pragma unroll
  for (int h = 0; h < kMaxHeadsPerBlock; ++h) {
    m[h] = -INFINITY;
    l[h] = 0.0f;
#pragma unroll
    for (int e = 0; e < EPL; ++e) {
      const int d = lane * EPL + e;
      qr[h][e] = (h < nh && d < hd) ? to_f32(q[(static_cast<int64_t>(b) * nq + h0 + h) * hd + d]) * scale : 0.0f;
      acc[h][e] = 0.0f;
    }
  }
  const int* table = tables + static_cast<int64_t>(b) * max_blocks;
  // Each warp takes kUnroll consecutive tokens per step and issues all their loads before any arithmetic, so
  // several K/V rows are in flight per warp.
  for (int tb = t0 + warp * kUnroll; tb < t1; tb += kDecodeWarps * kUnroll) {
    float kr[kUnroll][EPL], vr[kUnroll][EPL];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int t = tb + u;
      if (t < t1) {
        const int64_t slot = static_cast<int64_t>(table[t / block_size]) * block_size + t % block_size;
        const int64_t base = (slot * nkv + g) * hd;
#pragma unroll
        for (int e = 0; e < EPL; ++e) {
          const int d = lane * EPL + e;
          kr[u][e] = d < hd ? to_f32(kc[base + d]) : 0.0f;
          vr[u][e] = d < hd ? to_f32(vc[base + d]) : 0.0f;
        }
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      if (tb + u >= t1) break;
#pragma unroll
      for (int h = 0; h < kMaxHeadsPerBlock; ++h) {
        if (h >= nh) break;
        float s = 0.0f;
#pragma unroll
        for (int e = 0; e < EPL; ++e) s += qr[h][e] * kr[u][e];
        s = warp_sum(s);
        const float mn = fmaxf(m[h], s), corr = __expf(m[h] - mn), p = __expf(s - mn);
        l[h] = l[h] * corr + p;
#pragma unroll
        for (int e = 0; e < EPL; ++e) acc[h][e] = acc[h][e] * corr + p * vr[u][e];
        m[h] = mn;
      }
    }
  }

  // Merge the warps: warp w publishes (m, l, acc) per head; warp 0 combines.
  __shared__ float sm_m[kDecodeWarps][kMaxHeadsPerBlock], sm_l[kDecodeWarps][kMaxHeadsPerBlock];
  __shared__ float sm_acc[kDecodeWarps][kMaxHeadsPerBlock][32 * EPL];
  if (lane == 0)
    for (int h = 0; h < nh; ++h) {
      sm_m[warp][h] = m[h];
      sm_l[warp][h] = l[h];
    }
#pragma unroll
  for (int h = 0; h < kMaxHeadsPerBlock; ++h)
    if (h < nh)
#pragma unroll
      for (int e = 0; e < EPL; ++e) sm_acc[warp][h][lane * EPL + e] = acc[h][e];
  __syncthreads();
  // Each thread finishes some (head, dim) pairs.
  for (int i = threadIdx.x; i < nh * hd; i += blockDim.x) {
    const int h = i / hd, d = i % hd;
    float M = -INFINITY;
    for (int w = 0; w < kDecodeWarps; ++w) M = fmaxf(M, sm_m[w][h]);
    float L = 0.0f, A = 0.0f;
    if (M > -INFINITY)
      for (int w = 0; w < kDecodeWarps; ++w) {
        const float c = __expf(sm_m[w][h] - M);
        L += c * sm_l[w][h];
        A += c * sm_acc[w][h][d];
      }
    const int64_t row = static_cast<int64_t>(b) * nq + h0 + h;
    if (num_splits == 1) {
      out[row * hd + d] = from_f32<T>(L > 0.0f ? A / L : 0.0f);
    } else {
      float* o = ws + (row * num_splits + split) * hd;
      o[d] = L > 0.0f ? A / L : 0.0f;
      if (d == 0) {
        float* lse = ws + static_cast<int64_t>(gridDim.z) * nq * num_splits * hd;
        lse[row * num_splits + split] = L > 0.0f ? M + __logf(L) : -INFINITY;
      }
    }
  }
}

// Vectorised decode for BF16 caches with hd = HD in {64, 128}: each lane owns 8 consecutive dims (one 16-byte load
// of K and of V per token), LPT = HD/8 lanes share a token and a warp covers 32/LPT tokens per load; the dot product
// is reduced over the LPT lanes of a token (xor shuffles inside the group). Each lane group keeps its own online
// softmax state for up to MAXH query heads; the groups of a warp merge by shuffles, the warps in shared memory.
// kVecUnroll token steps are loaded before any arithmetic. Same split-KV and workspace layout as paged_decode_kernel.
template <int HD, int MAXH>
__global__ void __launch_bounds__(kDecodeWarps * 32)
    paged_decode_vec_kernel(bf16* __restrict__ out, float* __restrict__ ws, const bf16* __restrict__ q,
                            const bf16* __restrict__ kc, const bf16* __restrict__ vc, const int* __restrict__ tables,
                            const int* __restrict__ lens, int nq, int nkv, int max_blocks, int block_size,
                            int num_splits, float scale) {
  constexpr int LPT = HD / 8, TPW = 32 / LPT;
  const int split = blockIdx.x, b = blockIdx.z;
  const int group = nq / nkv, chunks = (group + MAXH - 1) / MAXH;
  const int g = blockIdx.y / chunks, h0 = g * group + (blockIdx.y % chunks) * MAXH;
  const int nh = min(MAXH, g * group + group - h0);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, sub = lane / LPT, d0 = (lane % LPT) * 8;
  const int n = lens[b];
  const int ns = max(1, min(num_splits, (n + kMinSplitTokens - 1) / kMinSplitTokens));
  const int tps = (n + ns - 1) / ns;
  const int t0 = split * tps, t1 = split < ns ? min(n, t0 + tps) : t0;

  float qv[MAXH][8], acc[MAXH][8], m[MAXH], l[MAXH];
#pragma unroll
  for (int h = 0; h < MAXH; ++h) {
    m[h] = -INFINITY;
    l[h] = 0.0f;
    const int hh = min(h, nh - 1);
    const uint4 raw = *reinterpret_cast<const uint4*>(q + (static_cast<int64_t>(b) * nq + h0 + hh) * HD + d0);
    const bf16* qe = reinterpret_cast<const bf16*>(&raw);
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      qv[h][e] = __bfloat162float(qe[e]) * scale;
      acc[h][e] = 0.0f;
    }
  }
  const int* table = tables + static_cast<int64_t>(b) * max_blocks;
  constexpr int kStep = kDecodeWarps * TPW * kVecUnroll;
  for (int tb = t0 + warp * TPW * kVecUnroll; tb < t1; tb += kStep) {
    uint4 kr[kVecUnroll], vr[kVecUnroll];
#pragma unroll
    for (int u = 0; u < kVecUnroll; ++u) {
      const int t = tb + u * TPW + sub;
      if (t < t1) {
        const int64_t slot = static_cast<int64_t>(table[t / block_size]) * block_size + t % block_size;
        const int64_t base = (slot * nkv + g) * HD + d0;
        kr[u] = *reinterpret_cast<const uint4*>(kc + base);
        vr[u] = *reinterpret_cast<const uint4*>(vc + base);
      } else {
        kr[u] = make_uint4(0, 0, 0, 0);
        vr[u] = make_uint4(0, 0, 0, 0);
      }
    }
#pragma unroll
    for (int u = 0; u < kVecUnroll; ++u) {
      const bool valid = tb + u * TPW + sub < t1;
      const bf16* ke = reinterpret_cast<const bf16*>(&kr[u]);
      const bf16* ve = reinterpret_cast<const bf16*>(&vr[u]);
      float kf[8], vf[8];
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        kf[e] = __bfloat162float(ke[e]);
        vf[e] = __bfloat162float(ve[e]);
      }
#pragma unroll
      for (int h = 0; h < MAXH; ++h) {
        float s = 0.0f;
#pragma unroll
        for (int e = 0; e < 8; ++e) s += qv[h][e] * kf[e];
#pragma unroll
        for (int o = LPT / 2; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
        if (!valid || h >= nh) continue;
        const float mn = fmaxf(m[h], s), corr = __expf(m[h] - mn), p = __expf(s - mn);
        l[h] = l[h] * corr + p;
#pragma unroll
        for (int e = 0; e < 8; ++e) acc[h][e] = acc[h][e] * corr + p * vf[e];
        m[h] = mn;
      }
    }
  }
  // Merge the TPW token groups of the warp (lanes with the same dims), then the warps.
#pragma unroll
  for (int o = LPT; o < 32; o <<= 1) {
#pragma unroll
    for (int h = 0; h < MAXH; ++h) {
      const float m2 = __shfl_xor_sync(0xffffffffu, m[h], o), l2 = __shfl_xor_sync(0xffffffffu, l[h], o);
      const float M = fmaxf(m[h], m2);
      const float c1 = M == -INFINITY ? 0.0f : __expf(m[h] - M), c2 = M == -INFINITY ? 0.0f : __expf(m2 - M);
      l[h] = l[h] * c1 + l2 * c2;
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        const float a2 = __shfl_xor_sync(0xffffffffu, acc[h][e], o);
        acc[h][e] = acc[h][e] * c1 + a2 * c2;
      }
      m[h] = M;
    }
  }
  __shared__ float sm_m[kDecodeWarps][MAXH], sm_l[kDecodeWarps][MAXH];
  __shared__ float sm_acc[kDecodeWarps][MAXH][HD];
  if (sub == 0) {
#pragma unroll
    for (int h = 0; h < MAXH; ++h) {
      if (lane == 0) {
        sm_m[warp][h] = m[h];
        sm_l[warp][h] = l[h];
      }
#pragma unroll
      for (int e = 0; e < 8; ++e) sm_acc[warp][h][d0 + e] = acc[h][e];
    }
  }
  __syncthreads();
  for (int i = threadIdx.x; i < nh * HD; i += blockDim.x) {
    const int h = i / HD, d = i % HD;
    float M = -INFINITY;
    for (int w = 0; w < kDecodeWarps; ++w) M = fmaxf(M, sm_m[w][h]);
    float L = 0.0f, A = 0.0f;
    if (M > -INFINITY)
      for (int w = 0; w < kDecodeWarps; ++w) {
        const float c = __expf(sm_m[w][h] - M);
        L += c * sm_l[w][h];
        A += c * sm_acc[w][h][d];
      }
    const int64_t row = static_cast<int64_t>(b) * nq + h0 + h;
    if (num_splits == 1) {
      out[row * HD + d] = __float2bfloat16_rn(L > 0.0f ? A / L : 0.0f);
    } else {
      ws[(row * num_splits + split) * HD + d] = L > 0.0f ? A / L : 0.0f;
      if (d == 0) {
        float* lse = ws + static_cast<int64_t>(gridDim.z) * nq * num_splits * HD;
        lse[row * num_splits + split] = L > 0.0f ? M + __logf(L) : -INFINITY;
      }
    }
  }
}

// One block per (b, head): combines the splits' normalised outputs by their log-sum-exp.
template <class T>
__global__ void paged_decode_merge_kernel(T* __restrict__ out, const float* __restrict__ ws, int64_t rows, int hd,
                                          int num_splits) {
  const int64_t row = blockIdx.x;
  const float* lse = ws + rows * num_splits * hd + row * num_splits;
  float M = -INFINITY;
  for (int s = 0; s < num_splits; ++s) M = fmaxf(M, lse[s]);
  float W = 0.0f;
  if (M > -INFINITY)
    for (int s = 0; s < num_splits; ++s) W += __expf(lse[s] - M);
  for (int d = threadIdx.x; d < hd; d += blockDim.x) {
    float a = 0.0f;
    if (M > -INFINITY)
      for (int s = 0; s < num_splits; ++s) a += __expf(lse[s] - M) * ws[(row * num_splits + s) * hd + d];
    out[row * hd + d] = from_f32<T>(W > 0.0f ? a / W : 0.0f);
  }
}

}  // namespace

void kv_cache_write(const Tensor& k_cache, const Tensor& v_cache, const Tensor& k, const Tensor& v,
                    const Tensor& slots, Context& ctx) {
  const char* op = "kv_cache_write";
  const int64_t T_ = k.shape[0], row = k.shape[1] * k.shape[2];
  if (T_ == 0) return;
  dispatch_float(k.dtype, op, [&](auto tag) {
    using T = decltype(tag);
    constexpr int V = vec16<T>();
    auto* kc = k_cache.ptr<T>();
    auto* vc = v_cache.ptr<T>();
    const bool vec = row % V == 0 && is_aligned(kc, 16) && is_aligned(vc, 16) && is_aligned(k.data, 16) &&
                     is_aligned(v.data, 16);
    if (vec)
      kv_cache_write_kernel<T, V><<<grid_for(T_ * row / V, 256), 256, 0, stream_of(ctx)>>>(
          kc, vc, k.ptr<T>(), v.ptr<T>(), slots.ptr<int>(), T_, row, k_cache.shape[0]);
    else
      kv_cache_write_kernel<T, 1><<<grid_for(T_ * row, 256), 256, 0, stream_of(ctx)>>>(
          kc, vc, k.ptr<T>(), v.ptr<T>(), slots.ptr<int>(), T_, row, k_cache.shape[0]);
    RLCU_CUDA_CHECK(cudaGetLastError());
  });
}

void kv_block_copy(const Tensor& cache, const Tensor& copies, Context& ctx) {
  const char* op = "kv_block_copy";
  const int64_t C = copies.shape[0];
  if (C == 0) return;
  RLCU_CHECK(C < (int64_t(1) << 31) && cache.shape[0] < 65536, "{}: too many copies or planes", op);
  dispatch_float(cache.dtype, op, [&](auto tag) {
    using T = decltype(tag);
    kv_block_copy_kernel<T><<<dim3(static_cast<unsigned>(C), static_cast<unsigned>(cache.shape[0])), 256, 0,
                              stream_of(ctx)>>>(cache.ptr<T>(), copies.ptr<int>(), cache.shape[1], cache.shape[2]);
    RLCU_CUDA_CHECK(cudaGetLastError());
  });
}

void paged_attention_decode(const Tensor& out, const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                            const Tensor& block_tables, const Tensor& context_lens, const Tensor& workspace,
                            const ops::PagedAttentionParams& p, Context& ctx) {
  const char* op = "paged_attention_decode";
  const int64_t B = q.shape[0], nq = q.shape[1], hd = q.shape[2], nkv = k_cache.shape[1];
  RLCU_CHECK(hd >= 1 && hd <= 256, "{}: q {} does not match the cache {} (hd <= 256, nq a multiple of nkv)", op,
             q.shape_str(), k_cache.shape_str());
  RLCU_CHECK(p.num_splits <= 65535, "{}: block_size {} and num_splits {} out of range", op, p.block_size,
             p.num_splits);
  if (p.num_splits > 1)
    RLCU_CHECK(workspace.dtype == DType::F32 &&
                   workspace.numel() >= ops::paged_attention_workspace_elems(B, nq, hd, p.num_splits),
               "{}: workspace {} {} smaller than {} f32 elements", op, dtype_name(workspace.dtype),
               workspace.shape_str(), ops::paged_attention_workspace_elems(B, nq, hd, p.num_splits));
  if (B == 0) return;
  RLCU_CHECK(B < 65536, "{}: batch {} too large", op, B);
  const int group = static_cast<int>(nq / nkv);
  const int chunks = (group + kMaxHeadsPerBlock - 1) / kMaxHeadsPerBlock;
  const dim3 grid(static_cast<unsigned>(p.num_splits), static_cast<unsigned>(nkv * chunks),
                  static_cast<unsigned>(B));
  float* ws = p.num_splits > 1 ? workspace.ptr<float>() : nullptr;
  // BF16 caches with hd 64 / 128 (aligned rows): the vectorised kernel, with MAXH = the group size rounded up to a
  // power of two (at most 8 query heads per block).
  const bool vec = q.dtype == DType::BF16 && (hd == 64 || hd == 128) && is_aligned(q.data, 16) &&
                   is_aligned(k_cache.data, 16) && is_aligned(v_cache.data, 16);
  if (vec) {
    const int maxh = group <= 1 ? 1 : group <= 2 ? 2 : group <= 4 ? 4 : 8;
    const int vchunks = (group + maxh - 1) / maxh;
    const dim3 vgrid(static_cast<unsigned>(p.num_splits), static_cast<unsigned>(nkv * vchunks),
                     static_cast<unsigned>(B));
    auto launch = [&](auto hd_c, auto maxh_c) {
      constexpr int HD = decltype(hd_c)::value, MAXH = decltype(maxh_c)::value;
      paged_decode_vec_kernel<HD, MAXH><<<vgrid, kDecodeWarps * 32, 0, stream_of(ctx)>>>(
          out.ptr<bf16>(), ws, q.ptr<bf16>(), k_cache.ptr<bf16>(), v_cache.ptr<bf16>(), block_tables.ptr<int>(),
          context_lens.ptr<int>(), static_cast<int>(nq), static_cast<int>(nkv),
          static_cast<int>(block_tables.shape[1]), p.block_size, p.num_splits, p.scale);
    };
    auto by_heads = [&](auto hd_c) {
      if (maxh == 1) launch(hd_c, std::integral_constant<int, 1>{});
      else if (maxh == 2) launch(hd_c, std::integral_constant<int, 2>{});
      else if (maxh == 4) launch(hd_c, std::integral_constant<int, 4>{});
      else launch(hd_c, std::integral_constant<int, 8>{});
    };
    if (hd == 64)
      by_heads(std::integral_constant<int, 64>{});
    else
      by_heads(std::integral_constant<int, 128>{});
    RLCU_CUDA_CHECK(cudaGetLastError());
    if (p.num_splits > 1) {
      paged_decode_merge_kernel<bf16><<<static_cast<unsigned>(B * nq), 128, 0, stream_of(ctx)>>>(
          out.ptr<bf16>(), ws, B * nq, static_cast<int>(hd), p.num_splits);
      RLCU_CUDA_CHECK(cudaGetLastError());
    }
    return;
  }
  dispatch_float(q.dtype, op, [&](auto tag) {
    using T = decltype(tag);
    auto launch = [&](auto epl) {
      constexpr int EPL = decltype(epl)::value;
      paged_decode_kernel<T, EPL><<<grid, kDecodeWarps * 32, 0, stream_of(ctx)>>>(
          out.ptr<T>(), ws, q.ptr<T>(), k_cache.ptr<T>(), v_cache.ptr<T>(), block_tables.ptr<int>(),
          context_lens.ptr<int>(), static_cast<int>(nq), static_cast<int>(nkv), static_cast<int>(hd),
          static_cast<int>(block_tables.shape[1]), p.block_size, p.num_splits, p.scale);
    };
    if (hd <= 32)
      launch(std::integral_constant<int, 1>{});
    else if (hd <= 64)
      launch(std::integral_constant<int, 2>{});
    else if (hd <= 128)
      launch(std::integral_constant<int, 4>{});
    else
      launch(std::integral_constant<int, 8>{});
    RLCU_CUDA_CHECK(cudaGetLastError());
    if (p.num_splits > 1) {
      paged_decode_merge_kernel<T><<<static_cast<unsigned>(B * nq), 128, 0, stream_of(ctx)>>>(
          out.ptr<T>(), ws, B * nq, static_cast<int>(hd), p.num_splits);
      RLCU_CUDA_CHECK(cudaGetLastError());
    }
  });
}

}  // namespace rlcu::cuda
