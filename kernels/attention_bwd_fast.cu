// Causal packed-sequence attention, backward, tensor-core path (BF16, hd 64 or 128, 16-byte aligned tensors; math
// and shapes in kernels/attention.cu, the op's entry point), mma.sync m16n8k16 tiles as the forward's:
//   (1) a row-dot kernel writes D_i = dout_i . out_i as an F32 into the first 4 bytes of row (i, h) of dq, which is
//       free until dq is written;
//   (2) a kernel per 64-key tile of one kv head (4 warps, 16 keys each) accumulates dk, dv in registers over every
//       query head of its group and every query tile at or after the diagonal, recomputing P from lse;
//   (3) a kernel per 64-query tile of one head accumulates dq over its key tiles, reading D from its own rows of dq
//       before overwriting them.
// dq, dk, dv are overwritten; each element is reduced by one thread in a fixed order (no atomics).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "attention_common.cuh"

namespace rlcu::cuda {

namespace {

struct FastBwdParams {
  bf16* dq;  // also holds D_i (F32) in the first 4 bytes of each row until the dq kernel overwrites it
  bf16* dk;
  bf16* dv;
  const bf16* dout;
  const bf16* q;
  const bf16* k;
  const bf16* v;
  const float* lse;
  const int* cu_seqlens;
  int nq, nkv, group;
  float scale, scale_log2;
};

template <int HD>
struct BwdCfg {
  static constexpr int kWarps = 4;
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kTile = kWarps * 16;  // keys per dk/dv block, queries per dq block, and the step of both
  static constexpr int kLd = HD + kPad;
  // dk/dv: K, V tiles plus two stages of (Q, dO) tiles and two stages of (lse, D) rows.
  static constexpr int kDkvSmemBytes =
      6 * kTile * kLd * static_cast<int>(sizeof(bf16)) + 4 * kTile * static_cast<int>(sizeof(float));
  // dq: Q, dO tiles plus two stages of (K, V) tiles.
  static constexpr int kDqSmemBytes = 6 * kTile * kLd * static_cast<int>(sizeof(bf16));
};

// D_i = dout_i . out_i for every row (t, h), written as an F32 into the start of row (t, h) of dq. One warp per row.
template <int HD>
__global__ void attention_bwd_dot_kernel(bf16* dq, const bf16* dout, const bf16* out, int64_t rows) {
  constexpr int kPer = HD / 32;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x & 31;
  if (row >= rows) return;
  const bf16* a = dout + row * HD + lane * kPer;
  const bf16* b = out + row * HD + lane * kPer;
  float acc = 0.0f;
#pragma unroll
  for (int i = 0; i < kPer; i += 2) {
    const float2 x = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(a + i));
    const float2 y = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(b + i));
    acc = fmaf(x.x, y.x, acc);
    acc = fmaf(x.y, y.y, acc);
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(kFullMask, acc, o);
  if (lane == 0) *reinterpret_cast<float*>(dq + row * HD) = acc;
}

template <int HD>
__global__ void __launch_bounds__(BwdCfg<HD>::kThreads, 2) attention_bwd_dkdv_kernel(FastBwdParams p) {
  using C = BwdCfg<HD>;
  constexpr int kT = C::kTile, kLd = C::kLd, kThreads = C::kThreads;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* k_s = reinterpret_cast<bf16*>(smem_raw);  // [kT][kLd]
  bf16* v_s = k_s + kT * kLd;                       // [kT][kLd]
  bf16* q_s = v_s + kT * kLd;                       // [2][kT][kLd]
  bf16* do_s = q_s + 2 * kT * kLd;                  // [2][kT][kLd]
  float* lse_s = reinterpret_cast<float*>(do_s + 2 * kT * kLd);  // [2][kT]
  float* d_s = lse_s + 2 * kT;                                    // [2][kT]

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int g = lane >> 2, t4 = lane & 3;
  const int s = blockIdx.z, kvh = blockIdx.y;
  const int start = p.cu_seqlens[s];
  const int len = p.cu_seqlens[s + 1] - start;
  const int n_tiles = (len + kT - 1) / kT;
  const int64_t q_ld = static_cast<int64_t>(p.nq) * HD, kv_ld = static_cast<int64_t>(p.nkv) * HD;

  // Query rows and statistics of step `it` (head kvh*group + it / n_q, query tile first_q + it % n_q).
  auto load_step = [&](int it, int stage, int first_q, int n_q) {
    const int h = kvh * p.group + it / n_q;
    const int q0 = (first_q + it % n_q) * kT;
    const int64_t off = (start + q0) * q_ld + h * HD;
    load_tile<HD, kT, kThreads>(q_s + stage * kT * kLd, p.q + off, q_ld, len - q0, p.q, tid);
    load_tile<HD, kT, kThreads>(do_s + stage * kT * kLd, p.dout + off, q_ld, len - q0, p.dout, tid);
    if (tid < kT) {
      const bool ok = q0 + tid < len;
      const int64_t row = static_cast<int64_t>(start + q0 + tid) * p.nq + h;
      cp_async4(lse_s + stage * kT + tid, ok ? p.lse + row : p.lse, ok);
    } else if (tid < 2 * kT) {
      const int r = tid - kT;
      const bool ok = q0 + r < len;
      const int64_t row = static_cast<int64_t>(start + q0 + r) * p.nq + h;
      cp_async4(d_s + stage * kT + r, ok ? p.dq + row * HD : p.dq, ok);
    }
  };

  for (int tile = blockIdx.x; tile < n_tiles; tile += gridDim.x) {
    const int kv0 = tile * kT;
    const int key0 = kv0 + warp * 16;  // this warp's first key (local index)
    const int first_q = tile;          // query tiles before the diagonal see none of these keys
    const int n_q = n_tiles - first_q;
    const int n_it = p.group * n_q;
    __syncthreads();
    load_tile<HD, kT, kThreads>(k_s, p.k + (start + kv0) * kv_ld + kvh * HD, kv_ld, len - kv0, p.k, tid);
    load_tile<HD, kT, kThreads>(v_s, p.v + (start + kv0) * kv_ld + kvh * HD, kv_ld, len - kv0, p.v, tid);
    load_step(0, 0, first_q, n_q);
    cp_async_commit();

    float dk[HD / 8][4], dv[HD / 8][4];
#pragma unroll
    for (int i = 0; i < HD / 8; ++i) {
      dk[i][0] = dk[i][1] = dk[i][2] = dk[i][3] = 0.0f;
      dv[i][0] = dv[i][1] = dv[i][2] = dv[i][3] = 0.0f;
    }

    for (int it = 0; it < n_it; ++it) {
      const int st = it & 1;
      if (it + 1 < n_it) {
        load_step(it + 1, st ^ 1, first_q, n_q);
        cp_async_commit();
        cp_async_wait<1>();
      } else {
        cp_async_wait<0>();
      }
      __syncthreads();
      const int q0 = (first_q + it % n_q) * kT;
      if (key0 < len) {
        const bf16* qt = q_s + st * kT * kLd;
        const bf16* dot = do_s + st * kT * kLd;
        const float* lse_t = lse_s + st * kT;
        const float* d_t = d_s + st * kT;
        // S^T = K Q^T for this warp's 16 keys x kT queries.
        float pt[kT / 8][4];
#pragma unroll
        for (int i = 0; i < kT / 8; ++i) pt[i][0] = pt[i][1] = pt[i][2] = pt[i][3] = 0.0f;
#pragma unroll
        for (int ks = 0; ks < HD / 16; ++ks) {
          uint32_t a[4];
          ldmatrix_x4(a, a_frag_addr(k_s, kLd, warp * 16, ks * 16, lane));
#pragma unroll
          for (int np = 0; np < kT / 16; ++np) {
            uint32_t b[4];
            ldmatrix_x4(b, bt_frag_addr(qt, kLd, np * 16, ks * 16, lane));
            mma_bf16(pt[2 * np], a, b[0], b[1]);
            mma_bf16(pt[2 * np + 1], a, b[2], b[3]);
          }
        }
        // P^T = exp(x - lse) on the causal, in-sequence entries, 0 elsewhere.
#pragma unroll
        for (int nt = 0; nt < kT / 8; ++nt) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int qc = nt * 8 + 2 * t4 + (e & 1);
            const int qi = q0 + qc;
            const int key = key0 + g + (e >> 1) * 8;
            const float x = fmaf(pt[nt][e], p.scale_log2, -lse_t[qc] * kLog2e);
            pt[nt][e] = (qi >= key && qi < len) ? exp2f(x) : 0.0f;
          }
        }
        // dV += P^T dO.
#pragma unroll
        for (int kk = 0; kk < kT / 16; ++kk) {
          const uint32_t pa[4] = {pack_bf16(pt[2 * kk][0], pt[2 * kk][1]), pack_bf16(pt[2 * kk][2], pt[2 * kk][3]),
                                  pack_bf16(pt[2 * kk + 1][0], pt[2 * kk + 1][1]),
                                  pack_bf16(pt[2 * kk + 1][2], pt[2 * kk + 1][3])};
#pragma unroll
          for (int np = 0; np < HD / 16; ++np) {
            uint32_t b[4];
            ldmatrix_x4_trans(b, b_frag_addr_trans(dot, kLd, kk * 16, np * 16, lane));
            mma_bf16(dv[2 * np], pa, b[0], b[1]);
            mma_bf16(dv[2 * np + 1], pa, b[2], b[3]);
          }
        }
        // dP^T = V dO^T.
        float dpt[kT / 8][4];
#pragma unroll
        for (int i = 0; i < kT / 8; ++i) dpt[i][0] = dpt[i][1] = dpt[i][2] = dpt[i][3] = 0.0f;
#pragma unroll
        for (int ks = 0; ks < HD / 16; ++ks) {
          uint32_t a[4];
          ldmatrix_x4(a, a_frag_addr(v_s, kLd, warp * 16, ks * 16, lane));
#pragma unroll
          for (int np = 0; np < kT / 16; ++np) {
            uint32_t b[4];
            ldmatrix_x4(b, bt_frag_addr(dot, kLd, np * 16, ks * 16, lane));
            mma_bf16(dpt[2 * np], a, b[0], b[1]);
            mma_bf16(dpt[2 * np + 1], a, b[2], b[3]);
          }
        }
        // dS^T = P^T (dP^T - D), then dK += dS^T Q.
#pragma unroll
        for (int nt = 0; nt < kT / 8; ++nt) {
#pragma unroll
          for (int e = 0; e < 4; ++e) pt[nt][e] *= dpt[nt][e] - d_t[nt * 8 + 2 * t4 + (e & 1)];
        }
#pragma unroll
        for (int kk = 0; kk < kT / 16; ++kk) {
          const uint32_t da[4] = {pack_bf16(pt[2 * kk][0], pt[2 * kk][1]), pack_bf16(pt[2 * kk][2], pt[2 * kk][3]),
                                  pack_bf16(pt[2 * kk + 1][0], pt[2 * kk + 1][1]),
                                  pack_bf16(pt[2 * kk + 1][2], pt[2 * kk + 1][3])};
#pragma unroll
          for (int np = 0; np < HD / 16; ++np) {
            uint32_t b[4];
            ldmatrix_x4_trans(b, b_frag_addr_trans(qt, kLd, kk * 16, np * 16, lane));
            mma_bf16(dk[2 * np], da, b[0], b[1]);
            mma_bf16(dk[2 * np + 1], da, b[2], b[3]);
          }
        }
      }
      __syncthreads();
    }

#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int key = key0 + g + r * 8;
      if (key < len) {
        const int64_t off = (start + key) * kv_ld + kvh * HD;
#pragma unroll
        for (int nd = 0; nd < HD / 8; ++nd) {
          *reinterpret_cast<__nv_bfloat162*>(p.dk + off + nd * 8 + 2 * t4) =
              __floats2bfloat162_rn(dk[nd][2 * r] * p.scale, dk[nd][2 * r + 1] * p.scale);
          *reinterpret_cast<__nv_bfloat162*>(p.dv + off + nd * 8 + 2 * t4) =
              __floats2bfloat162_rn(dv[nd][2 * r], dv[nd][2 * r + 1]);
        }
      }
    }
  }
}

template <int HD>
__global__ void __launch_bounds__(BwdCfg<HD>::kThreads, 2) attention_bwd_dq_kernel(FastBwdParams p) {
  using C = BwdCfg<HD>;
  constexpr int kT = C::kTile, kLd = C::kLd, kThreads = C::kThreads;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* q_s = reinterpret_cast<bf16*>(smem_raw);  // [kT][kLd]
  bf16* do_s = q_s + kT * kLd;                      // [kT][kLd]
  bf16* k_s = do_s + kT * kLd;                      // [2][kT][kLd]
  bf16* v_s = k_s + 2 * kT * kLd;                   // [2][kT][kLd]

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int g = lane >> 2, t4 = lane & 3;
  const int s = blockIdx.z, h = blockIdx.y, kvh = h / p.group;
  const int start = p.cu_seqlens[s];
  const int len = p.cu_seqlens[s + 1] - start;
  const int n_tiles = (len + kT - 1) / kT;
  const int64_t q_ld = static_cast<int64_t>(p.nq) * HD, kv_ld = static_cast<int64_t>(p.nkv) * HD;
  const bf16* k_seq = p.k + start * kv_ld + kvh * HD;
  const bf16* v_seq = p.v + start * kv_ld + kvh * HD;

  for (int tile = gridDim.x - 1 - blockIdx.x; tile < n_tiles; tile += gridDim.x) {
    const int q0 = tile * kT;
    const int n_kv = tile + 1;
    const int row0 = q0 + warp * 16;
    // Row statistics, read before this block overwrites its rows of dq (which hold D).
    float lse2[2], dd[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int row = row0 + g + r * 8;
      const int64_t idx = static_cast<int64_t>(start + row) * p.nq + h;
      lse2[r] = row < len ? p.lse[idx] * kLog2e : 0.0f;
      dd[r] = row < len ? *reinterpret_cast<const float*>(p.dq + idx * HD) : 0.0f;
    }
    __syncthreads();
    const int64_t qoff = (start + q0) * q_ld + h * HD;
    load_tile<HD, kT, kThreads>(q_s, p.q + qoff, q_ld, len - q0, p.q, tid);
    load_tile<HD, kT, kThreads>(do_s, p.dout + qoff, q_ld, len - q0, p.dout, tid);
    load_tile<HD, kT, kThreads>(k_s, k_seq, kv_ld, len, p.k, tid);
    load_tile<HD, kT, kThreads>(v_s, v_seq, kv_ld, len, p.v, tid);
    cp_async_commit();

    float dq[HD / 8][4];
#pragma unroll
    for (int i = 0; i < HD / 8; ++i) dq[i][0] = dq[i][1] = dq[i][2] = dq[i][3] = 0.0f;

    for (int j = 0; j < n_kv; ++j) {
      const int st = j & 1;
      if (j + 1 < n_kv) {
        const int nxt = (j + 1) * kT;
        load_tile<HD, kT, kThreads>(k_s + (st ^ 1) * kT * kLd, k_seq + nxt * kv_ld, kv_ld, len - nxt, p.k, tid);
        load_tile<HD, kT, kThreads>(v_s + (st ^ 1) * kT * kLd, v_seq + nxt * kv_ld, kv_ld, len - nxt, p.v, tid);
        cp_async_commit();
        cp_async_wait<1>();
      } else {
        cp_async_wait<0>();
      }
      __syncthreads();
      const int kv0 = j * kT;
      if (kv0 <= row0 + 15 && row0 < len) {
        const bf16* kt = k_s + st * kT * kLd;
        const bf16* vt = v_s + st * kT * kLd;
        float sc[kT / 8][4], dp[kT / 8][4];
#pragma unroll
        for (int i = 0; i < kT / 8; ++i) {
          sc[i][0] = sc[i][1] = sc[i][2] = sc[i][3] = 0.0f;
          dp[i][0] = dp[i][1] = dp[i][2] = dp[i][3] = 0.0f;
        }
        // S = Q K^T and dP = dO V^T for this warp's 16 queries x kT keys.
#pragma unroll
        for (int ks = 0; ks < HD / 16; ++ks) {
          uint32_t a[4], c[4];
          ldmatrix_x4(a, a_frag_addr(q_s, kLd, warp * 16, ks * 16, lane));
          ldmatrix_x4(c, a_frag_addr(do_s, kLd, warp * 16, ks * 16, lane));
#pragma unroll
          for (int np = 0; np < kT / 16; ++np) {
            uint32_t b[4];
            ldmatrix_x4(b, bt_frag_addr(kt, kLd, np * 16, ks * 16, lane));
            mma_bf16(sc[2 * np], a, b[0], b[1]);
            mma_bf16(sc[2 * np + 1], a, b[2], b[3]);
            ldmatrix_x4(b, bt_frag_addr(vt, kLd, np * 16, ks * 16, lane));
            mma_bf16(dp[2 * np], c, b[0], b[1]);
            mma_bf16(dp[2 * np + 1], c, b[2], b[3]);
          }
        }
        // dS = P (dP - D) with P = exp(x - lse) on the causal, in-sequence entries.
#pragma unroll
        for (int nt = 0; nt < kT / 8; ++nt) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int r = e >> 1;
            const int col = kv0 + nt * 8 + 2 * t4 + (e & 1);
            const int row = row0 + g + r * 8;
            const float pv = (col <= row && col < len) ? exp2f(fmaf(sc[nt][e], p.scale_log2, -lse2[r])) : 0.0f;
            sc[nt][e] = pv * (dp[nt][e] - dd[r]);
          }
        }
        // dQ += dS K.
#pragma unroll
        for (int kk = 0; kk < kT / 16; ++kk) {
          const uint32_t da[4] = {pack_bf16(sc[2 * kk][0], sc[2 * kk][1]), pack_bf16(sc[2 * kk][2], sc[2 * kk][3]),
                                  pack_bf16(sc[2 * kk + 1][0], sc[2 * kk + 1][1]),
                                  pack_bf16(sc[2 * kk + 1][2], sc[2 * kk + 1][3])};
#pragma unroll
          for (int np = 0; np < HD / 16; ++np) {
            uint32_t b[4];
            ldmatrix_x4_trans(b, b_frag_addr_trans(kt, kLd, kk * 16, np * 16, lane));
            mma_bf16(dq[2 * np], da, b[0], b[1]);
            mma_bf16(dq[2 * np + 1], da, b[2], b[3]);
          }
        }
      }
      __syncthreads();
    }

#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int row = row0 + g + r * 8;
      if (row < len) {
        bf16* drow = p.dq + (start + row) * q_ld + h * HD;
#pragma unroll
        for (int nd = 0; nd < HD / 8; ++nd)
          *reinterpret_cast<__nv_bfloat162*>(drow + nd * 8 + 2 * t4) =
              __floats2bfloat162_rn(dq[nd][2 * r] * p.scale, dq[nd][2 * r + 1] * p.scale);
      }
    }
  }
}

template <int HD>
void launch_bwd_fast(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dout, const Tensor& q,
                     const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse,
                     const Tensor& cu_seqlens, const ops::AttentionParams& p, const attention::Dims& d,
                     cudaStream_t stream) {
  using C = BwdCfg<HD>;
  const int64_t rows = d.tokens * d.nq;
  constexpr int kDotWarps = 8;
  attention_bwd_dot_kernel<HD><<<static_cast<unsigned>((rows + kDotWarps - 1) / kDotWarps), kDotWarps * 32, 0,
                                 stream>>>(dq.ptr<bf16>(), dout.ptr<bf16>(), out.ptr<bf16>(), rows);
  RLCU_LAUNCH_CHECK(stream);
  FastBwdParams bp{dq.ptr<bf16>(), dk.ptr<bf16>(),  dv.ptr<bf16>(),       dout.ptr<bf16>(),
                   q.ptr<bf16>(),  k.ptr<bf16>(),   v.ptr<bf16>(),        lse.ptr<float>(),
                   cu_seqlens.ptr<int>(), d.nq,     d.nkv,                d.nq / d.nkv,
                   p.scale,        p.scale * kLog2e};
  const int tiles = attention::grid_tiles(p.max_seqlen, C::kTile);
  set_smem(attention_bwd_dkdv_kernel<HD>, C::kDkvSmemBytes);
  attention_bwd_dkdv_kernel<HD><<<dim3(tiles, d.nkv, p.num_seqs), C::kThreads, C::kDkvSmemBytes, stream>>>(bp);
  RLCU_LAUNCH_CHECK(stream);
  set_smem(attention_bwd_dq_kernel<HD>, C::kDqSmemBytes);
  attention_bwd_dq_kernel<HD><<<dim3(tiles, d.nq, p.num_seqs), C::kThreads, C::kDqSmemBytes, stream>>>(bp);
  RLCU_LAUNCH_CHECK(stream);
}

}  // namespace

void attention::bwd_fast(int hd, const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dout,
                         const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse,
                         const Tensor& cu_seqlens, const ops::AttentionParams& p, const Dims& d, cudaStream_t stream) {
  if (hd == 64) launch_bwd_fast<64>(dq, dk, dv, dout, q, k, v, out, lse, cu_seqlens, p, d, stream);
  else launch_bwd_fast<128>(dq, dk, dv, dout, q, k, v, out, lse, cu_seqlens, p, d, stream);
}

}  // namespace rlcu::cuda
