// Causal grouped-query attention over packed variable-length sequences, forward and backward (CUDA), the twin of
// kernels/cpu/attention.cpp.
//
// Shapes: q[T,nq,hd], k,v[T,nkv,hd], out/dout/dq[T,nq,hd], dk/dv[T,nkv,hd], lse[T,nq] (F32), cu_seqlens[S+1] (I32,
// on the device; cu_seqlens[0] = 0 and cu_seqlens[S] = T). Query head h reads kv head h / (nq/nkv). Within
// sequence s (rows [cu[s], cu[s+1])), local query i attends to local keys j <= i:
//   x_ij = scale * q_i . k_j,   lse_i = log sum_j exp(x_ij),   P_ij = exp(x_ij - lse_i),   out_i = sum_j P_ij v_j.
// Backward, with D_i = dout_i . out_i:
//   dv_j = sum_{h in group} sum_i P_ij dout_i,   dP_ij = dout_i . v_j,   dS_ij = P_ij (dP_ij - D_i),
//   dq_i = scale sum_j dS_ij k_j,   dk_j = scale sum_{h in group} sum_i dS_ij q_i.
// dq, dk and dv are activation gradients: they are overwritten. No float atomics: every output element is reduced
// by exactly one thread in a fixed order, so results are bit-reproducible.
//
// Two implementations:
//   * Fast path (BF16, hd 64 or 128, 16-byte aligned tensors): FlashAttention-2 style tiles on the tensor cores
//     (mma.sync m16n8k16 bf16 -> fp32, operands through ldmatrix from padded shared memory, cp.async double
//     buffering). Forward: a block of 4 warps owns 128 queries of one (sequence, head), 32 per warp, and streams
//     key tiles (32 keys for hd 128, 64 for hd 64) with an online softmax in the exp2 domain; tiles after the
//     diagonal are never visited. Backward: (1) a
//     row-dot kernel writes D_i as an F32 into the first 4 bytes of row (i, h) of dq, which is free until dq is
//     written; (2) a kernel per 64-key tile of one kv head (4 warps, 16 keys each) accumulates dk, dv in registers
//     over every query head of its group and every query tile at or after the diagonal, recomputing P from lse;
//     (3) a kernel per 64-query tile of one head accumulates dq over its key tiles, reading D from its own rows of
//     dq before overwriting them.
//   * Generic path (F32 or BF16, any hd up to 512): one warp per query row (forward, dq) or key row (dk, dv),
//     fp32 arithmetic, dot products by warp shuffles.
// Blocks map to (tile, head, sequence); the grid's tile extent comes from params.max_seqlen and each block strides
// over tiles, so a hint that is too small costs speed, never correctness.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "ops_cuda.h"
#include "rlcu/cuda_check.h"

namespace rlcu::cuda {

namespace {

using bf16 = __nv_bfloat16;

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;
constexpr unsigned kFullMask = 0xffffffffu;
// Shared-memory rows are padded by 8 bf16 (16 bytes): consecutive rows start 16 bytes apart modulo 128, so the
// eight 16-byte row reads of one ldmatrix hit distinct banks.
constexpr int kPad = 8;
constexpr int kMaxGridYZ = 65535;

// ---- device helpers -------------------------------------------------------------------------------------------

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte global -> shared copy; zero-fills the destination when !valid (then nothing is read from src).
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
  const int n = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src), "r"(n));
}
__device__ __forceinline__ void cp_async4(void* dst, const void* src, bool valid) {
  const int n = valid ? 4 : 0;
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem_addr(dst)), "l"(src), "r"(n));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

// d[16x8] += a[16x16] (row-major fragment) * b[16x8] (column fragment), bf16 inputs, fp32 accumulators.
__device__ __forceinline__ void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

// Addresses for the three ldmatrix patterns used below, for a tile stored row-major with `ld` elements per row.
// A operand (16 rows x 16 cols at (r0, c0)): registers a0..a3 of the m16n8k16 A fragment.
__device__ __forceinline__ const bf16* a_frag_addr(const bf16* tile, int ld, int r0, int c0, int lane) {
  return tile + (r0 + (lane & 15)) * ld + c0 + (lane >> 4) * 8;
}
// B operand from a tile stored [n][k] (B^T row-major): covers n0..n0+15, k0..k0+15 and yields {b0,b1} for
// n-tile n0 and {b2,b3} for n-tile n0+8.
__device__ __forceinline__ const bf16* bt_frag_addr(const bf16* tile, int ld, int n0, int k0, int lane) {
  return tile + (n0 + (lane & 7) + ((lane >> 4) << 3)) * ld + k0 + ((lane >> 3) & 1) * 8;
}
// B operand from a tile stored [k][n] (B row-major), read with ldmatrix.trans: same register order as above.
__device__ __forceinline__ const bf16* b_frag_addr_trans(const bf16* tile, int ld, int k0, int n0, int lane) {
  return tile + (k0 + (lane & 7) + ((lane >> 3) & 1) * 8) * ld + n0 + (lane >> 4) * 8;
}

// Loads `ROWS` rows of HD bf16 (global row stride `ld` elements) into shared memory with row stride HD + kPad;
// rows at or after `valid_rows` are zero-filled. `safe` is any readable address (used for skipped rows).
template <int HD, int ROWS, int NTHREADS>
__device__ __forceinline__ void load_tile(bf16* dst, const bf16* src, int64_t ld, int valid_rows, const bf16* safe,
                                          int tid) {
  constexpr int kChunks = HD / 8;
#pragma unroll
  for (int c = tid; c < ROWS * kChunks; c += NTHREADS) {
    const int r = c / kChunks, ch = c % kChunks;
    const bool ok = r < valid_rows;
    cp_async16(dst + r * (HD + kPad) + ch * 8, ok ? src + r * ld + ch * 8 : safe, ok);
  }
}

// ---- fast path: forward ---------------------------------------------------------------------------------------

struct FastFwdParams {
  bf16* out;
  float* lse;
  const bf16* q;
  const bf16* k;
  const bf16* v;
  const int* cu_seqlens;
  int nq, nkv, group;
  float scale_log2;  // scale * log2(e)
};

// Measured on an H200 (64 x 512 tokens, causal): 4 warps of 2 m-tiles beat 8 or 4 warps of one m-tile by 9-12%;
// hd 128 takes 32-key steps (64 would spill the score tile), hd 64 takes 64-key steps.
template <int HD>
struct FwdCfg {
  static constexpr int kWarps = 4;
  static constexpr int kMTiles = 2;  // 16-row m-tiles per warp: each K/V fragment read feeds kMTiles products
  static constexpr int kThreads = kWarps * 32;
  static constexpr int kWarpRows = 16 * kMTiles;
  static constexpr int kBM = kWarps * kWarpRows;  // queries per block
  static constexpr int kBN = HD > 64 ? 32 : 64;   // keys per step
  static constexpr int kLd = HD + kPad;
  static constexpr int kSmemBytes = (kBM + 4 * kBN) * kLd * static_cast<int>(sizeof(bf16));
};

template <int HD>
__global__ void __launch_bounds__(FwdCfg<HD>::kThreads, 1) attention_fwd_kernel(FastFwdParams p) {
  using C = FwdCfg<HD>;
  constexpr int kBM = C::kBM, kBN = C::kBN, kLd = C::kLd, kThreads = C::kThreads;
  constexpr int kMT = C::kMTiles, kWarpRows = C::kWarpRows;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* q_s = reinterpret_cast<bf16*>(smem_raw);  // [kBM][kLd]
  bf16* k_s = q_s + kBM * kLd;                      // [2][kBN][kLd]
  bf16* v_s = k_s + 2 * kBN * kLd;                  // [2][kBN][kLd]

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int g = lane >> 2, t4 = lane & 3;
  const int s = blockIdx.z, h = blockIdx.y, kvh = h / p.group;
  const int start = p.cu_seqlens[s];
  const int len = p.cu_seqlens[s + 1] - start;
  const int n_tiles = (len + kBM - 1) / kBM;
  const int64_t q_ld = static_cast<int64_t>(p.nq) * HD, kv_ld = static_cast<int64_t>(p.nkv) * HD;
  const bf16* q_seq = p.q + start * q_ld + h * HD;
  const bf16* k_seq = p.k + start * kv_ld + kvh * HD;
  const bf16* v_seq = p.v + start * kv_ld + kvh * HD;

  // Heaviest (last) tiles first: block 0 takes the last tile of the longest sequence.
  for (int tile = gridDim.x - 1 - blockIdx.x; tile < n_tiles; tile += gridDim.x) {
    const int q0 = tile * kBM;
    const int n_kv = (min(q0 + kBM, len) + kBN - 1) / kBN;
    const int row0 = q0 + warp * kWarpRows;  // this warp's first query (local index)
    __syncthreads();                         // shared memory of the previous tile is no longer read
    load_tile<HD, kBM, kThreads>(q_s, q_seq + q0 * q_ld, q_ld, len - q0, p.q, tid);
    load_tile<HD, kBN, kThreads>(k_s, k_seq, kv_ld, len, p.k, tid);
    load_tile<HD, kBN, kThreads>(v_s, v_seq, kv_ld, len, p.v, tid);
    cp_async_commit();

    float o[kMT][HD / 8][4];
    float m[kMT][2], l[kMT][2];
#pragma unroll
    for (int mi = 0; mi < kMT; ++mi) {
#pragma unroll
      for (int i = 0; i < HD / 8; ++i) o[mi][i][0] = o[mi][i][1] = o[mi][i][2] = o[mi][i][3] = 0.0f;
      m[mi][0] = m[mi][1] = -INFINITY;
      l[mi][0] = l[mi][1] = 0.0f;
    }

    for (int j = 0; j < n_kv; ++j) {
      const int st = j & 1;
      if (j + 1 < n_kv) {
        const int nxt = (j + 1) * kBN;
        load_tile<HD, kBN, kThreads>(k_s + (st ^ 1) * kBN * kLd, k_seq + nxt * kv_ld, kv_ld, len - nxt, p.k, tid);
        load_tile<HD, kBN, kThreads>(v_s + (st ^ 1) * kBN * kLd, v_seq + nxt * kv_ld, kv_ld, len - nxt, p.v, tid);
        cp_async_commit();
        cp_async_wait<1>();
      } else {
        cp_async_wait<0>();
      }
      __syncthreads();
      const int kv0 = j * kBN;
      // Skip tiles wholly after this warp's last query (causal) and warps with no query in the sequence.
      if (kv0 <= row0 + kWarpRows - 1 && row0 < len) {
        const bf16* kt = k_s + st * kBN * kLd;
        const bf16* vt = v_s + st * kBN * kLd;
        float sc[kMT][kBN / 8][4];
#pragma unroll
        for (int mi = 0; mi < kMT; ++mi) {
#pragma unroll
          for (int i = 0; i < kBN / 8; ++i) sc[mi][i][0] = sc[mi][i][1] = sc[mi][i][2] = sc[mi][i][3] = 0.0f;
        }
#pragma unroll
        for (int ks = 0; ks < HD / 16; ++ks) {
          uint32_t qa[kMT][4];
#pragma unroll
          for (int mi = 0; mi < kMT; ++mi)
            ldmatrix_x4(qa[mi], a_frag_addr(q_s, kLd, warp * kWarpRows + mi * 16, ks * 16, lane));
#pragma unroll
          for (int np = 0; np < kBN / 16; ++np) {
            uint32_t b[4];
            ldmatrix_x4(b, bt_frag_addr(kt, kLd, np * 16, ks * 16, lane));
#pragma unroll
            for (int mi = 0; mi < kMT; ++mi) {
              mma_bf16(sc[mi][2 * np], qa[mi], b[0], b[1]);
              mma_bf16(sc[mi][2 * np + 1], qa[mi], b[2], b[3]);
            }
          }
        }
        const bool need_mask = kv0 + kBN - 1 > row0 || kv0 + kBN > len;
#pragma unroll
        for (int mi = 0; mi < kMT; ++mi) {
#pragma unroll
          for (int nt = 0; nt < kBN / 8; ++nt) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              float x = sc[mi][nt][e] * p.scale_log2;
              if (need_mask) {
                const int col = kv0 + nt * 8 + 2 * t4 + (e & 1);
                const int row = row0 + mi * 16 + g + (e >> 1) * 8;
                if (col > row || col >= len) x = -INFINITY;
              }
              sc[mi][nt][e] = x;
            }
          }
          // Online softmax; a row is shared by the 4 threads of a quad.
#pragma unroll
          for (int r = 0; r < 2; ++r) {
            float mx = -INFINITY;
#pragma unroll
            for (int nt = 0; nt < kBN / 8; ++nt) mx = fmaxf(mx, fmaxf(sc[mi][nt][2 * r], sc[mi][nt][2 * r + 1]));
            mx = fmaxf(mx, __shfl_xor_sync(kFullMask, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(kFullMask, mx, 2));
            const float m_new = fmaxf(m[mi][r], mx);
            const float m_use = m_new == -INFINITY ? 0.0f : m_new;  // a row with no valid key so far stays at 0
            const float alpha = exp2f(m[mi][r] - m_use);
            m[mi][r] = m_new;
            l[mi][r] *= alpha;
#pragma unroll
            for (int nd = 0; nd < HD / 8; ++nd) {
              o[mi][nd][2 * r] *= alpha;
              o[mi][nd][2 * r + 1] *= alpha;
            }
#pragma unroll
            for (int nt = 0; nt < kBN / 8; ++nt) {
              const float p0 = exp2f(sc[mi][nt][2 * r] - m_use);
              const float p1 = exp2f(sc[mi][nt][2 * r + 1] - m_use);
              l[mi][r] += p0 + p1;  // per-thread partial row sum; the quad is reduced once at the end
              sc[mi][nt][2 * r] = p0;
              sc[mi][nt][2 * r + 1] = p1;
            }
          }
        }
        // o += P v: the accumulator layout of two adjacent key n-tiles is the A fragment of one 16-key slice.
#pragma unroll
        for (int kk = 0; kk < kBN / 16; ++kk) {
          uint32_t pa[kMT][4];
#pragma unroll
          for (int mi = 0; mi < kMT; ++mi) {
            pa[mi][0] = pack_bf16(sc[mi][2 * kk][0], sc[mi][2 * kk][1]);
            pa[mi][1] = pack_bf16(sc[mi][2 * kk][2], sc[mi][2 * kk][3]);
            pa[mi][2] = pack_bf16(sc[mi][2 * kk + 1][0], sc[mi][2 * kk + 1][1]);
            pa[mi][3] = pack_bf16(sc[mi][2 * kk + 1][2], sc[mi][2 * kk + 1][3]);
          }
#pragma unroll
          for (int np = 0; np < HD / 16; ++np) {
            uint32_t b[4];
            ldmatrix_x4_trans(b, b_frag_addr_trans(vt, kLd, kk * 16, np * 16, lane));
#pragma unroll
            for (int mi = 0; mi < kMT; ++mi) {
              mma_bf16(o[mi][2 * np], pa[mi], b[0], b[1]);
              mma_bf16(o[mi][2 * np + 1], pa[mi], b[2], b[3]);
            }
          }
        }
      }
      __syncthreads();  // the next iteration's loads overwrite the stage read here
    }

#pragma unroll
    for (int mi = 0; mi < kMT; ++mi) {
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        float sum = l[mi][r];
        sum += __shfl_xor_sync(kFullMask, sum, 1);
        sum += __shfl_xor_sync(kFullMask, sum, 2);
        const int row = row0 + mi * 16 + g + r * 8;
        if (row < len) {
          const float inv = 1.0f / sum;
          bf16* orow = p.out + (start + row) * q_ld + h * HD;
#pragma unroll
          for (int nd = 0; nd < HD / 8; ++nd)
            *reinterpret_cast<__nv_bfloat162*>(orow + nd * 8 + 2 * t4) =
                __floats2bfloat162_rn(o[mi][nd][2 * r] * inv, o[mi][nd][2 * r + 1] * inv);
          if (t4 == 0) p.lse[static_cast<int64_t>(start + row) * p.nq + h] = (m[mi][r] + log2f(sum)) * kLn2;
        }
      }
    }
  }
}

// ---- fast path: backward --------------------------------------------------------------------------------------

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

// ---- generic path (F32 or BF16, any head dim up to 32 * kMaxPerLane) ------------------------------------------

constexpr int kGenericWarps = 4;
constexpr int kMaxPerLane = 16;

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

// ---- host side ------------------------------------------------------------------------------------------------

struct Dims {
  int64_t tokens;
  int nq, nkv, hd;
};

void check_same_shape(const char* op, const char* name, const Tensor& t, const Tensor& ref) {
  RLCU_CHECK(t.ndim == ref.ndim && t.numel() == ref.numel() && t.shape[0] == ref.shape[0] &&
                 t.shape[t.ndim - 1] == ref.shape[ref.ndim - 1],
             "{}: {} has shape {}, expected {}", op, name, t.shape_str(), ref.shape_str());
  RLCU_CHECK(t.dtype == ref.dtype, "{}: {} is {}, expected {}", op, name, dtype_name(t.dtype), dtype_name(ref.dtype));
  RLCU_CHECK(t.device == Device::CUDA && !t.empty(), "{}: {} must be a CUDA tensor", op, name);
}

Dims check_inputs(const char* op, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& lse,
                  const Tensor& cu_seqlens, const ops::AttentionParams& p) {
  RLCU_CHECK(q.ndim == 3 && k.ndim == 3, "{}: q [T,nq,hd] and k [T,nkv,hd] expected, got {} and {}", op,
             q.shape_str(), k.shape_str());
  RLCU_CHECK(q.dtype == DType::F32 || q.dtype == DType::BF16, "{}: dtype {} not supported (F32 or BF16)", op,
             dtype_name(q.dtype));
  RLCU_CHECK(q.device == Device::CUDA && k.device == Device::CUDA && v.device == Device::CUDA,
             "{}: q, k, v must be CUDA tensors", op);
  Dims d{q.shape[0], static_cast<int>(q.shape[1]), static_cast<int>(k.shape[1]), static_cast<int>(q.shape[2])};
  RLCU_CHECK(k.shape[0] == d.tokens && k.shape[2] == d.hd && k.dtype == q.dtype,
             "{}: k has shape {} ({}), expected [{},nkv,{}] ({})", op, k.shape_str(), dtype_name(k.dtype), d.tokens,
             d.hd, dtype_name(q.dtype));
  check_same_shape(op, "v", v, k);
  RLCU_CHECK(d.nq > 0 && d.nkv > 0 && d.nq % d.nkv == 0, "{}: nq ({}) must be a positive multiple of nkv ({})", op,
             d.nq, d.nkv);
  RLCU_CHECK(d.hd > 0 && d.hd <= 32 * kMaxPerLane, "{}: head dim {} outside [1, {}]", op, d.hd, 32 * kMaxPerLane);
  RLCU_CHECK(lse.dtype == DType::F32 && lse.numel() == d.tokens * d.nq && lse.device == Device::CUDA,
             "{}: lse must be F32 [{},{}] on CUDA, got {} {}", op, d.tokens, d.nq, dtype_name(lse.dtype),
             lse.shape_str());
  RLCU_CHECK(cu_seqlens.dtype == DType::I32 && cu_seqlens.device == Device::CUDA &&
                 cu_seqlens.numel() == static_cast<int64_t>(p.num_seqs) + 1,
             "{}: cu_seqlens must be I32 [num_seqs+1 = {}] on CUDA, got {} {}", op, p.num_seqs + 1,
             dtype_name(cu_seqlens.dtype), cu_seqlens.shape_str());
  RLCU_CHECK(p.num_seqs >= 0 && p.num_seqs <= kMaxGridYZ, "{}: num_seqs {} outside [0, {}]", op, p.num_seqs,
             kMaxGridYZ);
  RLCU_CHECK(p.max_seqlen >= 0, "{}: max_seqlen {} is negative", op, p.max_seqlen);
  RLCU_CHECK(p.scale > 0.0f && std::isfinite(p.scale), "{}: scale {} must be positive and finite", op, p.scale);
  return d;
}

bool aligned16(const Tensor& t) { return (reinterpret_cast<uintptr_t>(t.data) & 15u) == 0; }

int grid_tiles(int max_seqlen, int tile) { return max_seqlen <= tile ? 1 : (max_seqlen + tile - 1) / tile; }

template <typename Kernel>
void set_smem(Kernel kernel, int bytes) {
  RLCU_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
}

template <int HD>
void launch_fwd_fast(const Tensor& out, const Tensor& lse, const Tensor& q, const Tensor& k, const Tensor& v,
                     const Tensor& cu_seqlens, const ops::AttentionParams& p, const Dims& d, cudaStream_t stream) {
  using C = FwdCfg<HD>;
  FastFwdParams fp{out.ptr<bf16>(), lse.ptr<float>(), q.ptr<bf16>(), k.ptr<bf16>(), v.ptr<bf16>(),
                   cu_seqlens.ptr<int>(), d.nq, d.nkv, d.nq / d.nkv, p.scale * kLog2e};
  set_smem(attention_fwd_kernel<HD>, C::kSmemBytes);
  const dim3 grid(grid_tiles(p.max_seqlen, C::kBM), d.nq, p.num_seqs);
  attention_fwd_kernel<HD><<<grid, C::kThreads, C::kSmemBytes, stream>>>(fp);
  RLCU_LAUNCH_CHECK(stream);
}

template <int HD>
void launch_bwd_fast(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dout, const Tensor& q,
                     const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse,
                     const Tensor& cu_seqlens, const ops::AttentionParams& p, const Dims& d, cudaStream_t stream) {
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
  const int tiles = grid_tiles(p.max_seqlen, C::kTile);
  set_smem(attention_bwd_dkdv_kernel<HD>, C::kDkvSmemBytes);
  attention_bwd_dkdv_kernel<HD><<<dim3(tiles, d.nkv, p.num_seqs), C::kThreads, C::kDkvSmemBytes, stream>>>(bp);
  RLCU_LAUNCH_CHECK(stream);
  set_smem(attention_bwd_dq_kernel<HD>, C::kDqSmemBytes);
  attention_bwd_dq_kernel<HD><<<dim3(tiles, d.nq, p.num_seqs), C::kThreads, C::kDqSmemBytes, stream>>>(bp);
  RLCU_LAUNCH_CHECK(stream);
}

template <typename T>
GenericParams<T> generic_params(const Dims& d, const Tensor& cu_seqlens, const ops::AttentionParams& p) {
  GenericParams<T> gp{};
  gp.cu_seqlens = cu_seqlens.ptr<int>();
  gp.nq = d.nq;
  gp.nkv = d.nkv;
  gp.group = d.nq / d.nkv;
  gp.hd = d.hd;
  gp.scale = p.scale;
  return gp;
}

// Calls f(std::integral_constant<int, NPL>) with the smallest elements-per-lane count that covers hd.
template <typename F>
void with_per_lane(int hd, F&& f) {
  if (hd <= 32) f(std::integral_constant<int, 1>());
  else if (hd <= 64) f(std::integral_constant<int, 2>());
  else if (hd <= 128) f(std::integral_constant<int, 4>());
  else if (hd <= 256) f(std::integral_constant<int, 8>());
  else f(std::integral_constant<int, kMaxPerLane>());
}

template <typename T>
void launch_fwd_generic(const Tensor& out, const Tensor& lse, const Tensor& q, const Tensor& k, const Tensor& v,
                        const Tensor& cu_seqlens, const ops::AttentionParams& p, const Dims& d, cudaStream_t stream) {
  GenericParams<T> gp = generic_params<T>(d, cu_seqlens, p);
  gp.out = out.ptr<T>();
  gp.lse = lse.ptr<float>();
  gp.q = q.ptr<T>();
  gp.k = k.ptr<T>();
  gp.v = v.ptr<T>();
  const dim3 grid(grid_tiles(p.max_seqlen, kGenericWarps), d.nq, p.num_seqs);
  with_per_lane(d.hd, [&](auto npl) {
    attention_fwd_generic_kernel<T, decltype(npl)::value><<<grid, kGenericWarps * 32, 0, stream>>>(gp);
    RLCU_LAUNCH_CHECK(stream);
  });
}

template <typename T>
void launch_bwd_generic(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dout, const Tensor& q,
                        const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse,
                        const Tensor& cu_seqlens, const ops::AttentionParams& p, const Dims& d, cudaStream_t stream) {
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
  const int tiles = grid_tiles(p.max_seqlen, kGenericWarps);
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

void attention_fwd(const Tensor& out, const Tensor& lse, const Tensor& q, const Tensor& k, const Tensor& v,
                   const Tensor& cu_seqlens, const ops::AttentionParams& p, Context& ctx) {
  const Dims d = check_inputs("attention_fwd", q, k, v, lse, cu_seqlens, p);
  check_same_shape("attention_fwd", "out", out, q);
  if (d.tokens == 0 || p.num_seqs == 0) return;
  auto stream = static_cast<cudaStream_t>(ctx.stream());
  const bool fast = q.dtype == DType::BF16 && (d.hd == 64 || d.hd == 128) && aligned16(q) && aligned16(k) &&
                    aligned16(v) && aligned16(out);
  if (fast && d.hd == 64) launch_fwd_fast<64>(out, lse, q, k, v, cu_seqlens, p, d, stream);
  else if (fast) launch_fwd_fast<128>(out, lse, q, k, v, cu_seqlens, p, d, stream);
  else if (q.dtype == DType::BF16) launch_fwd_generic<bf16>(out, lse, q, k, v, cu_seqlens, p, d, stream);
  else launch_fwd_generic<float>(out, lse, q, k, v, cu_seqlens, p, d, stream);
}

void attention_bwd(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dout, const Tensor& q,
                   const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse,
                   const Tensor& cu_seqlens, const ops::AttentionParams& p, Context& ctx) {
  const char* op = "attention_bwd";
  const Dims d = check_inputs(op, q, k, v, lse, cu_seqlens, p);
  check_same_shape(op, "out", out, q);
  check_same_shape(op, "dout", dout, q);
  check_same_shape(op, "dq", dq, q);
  check_same_shape(op, "dk", dk, k);
  check_same_shape(op, "dv", dv, k);
  if (d.tokens == 0 || p.num_seqs == 0) return;
  auto stream = static_cast<cudaStream_t>(ctx.stream());
  const bool fast = q.dtype == DType::BF16 && (d.hd == 64 || d.hd == 128) && aligned16(q) && aligned16(k) &&
                    aligned16(v) && aligned16(out) && aligned16(dout) && aligned16(dq) && aligned16(dk) && aligned16(dv);
  if (fast && d.hd == 64) launch_bwd_fast<64>(dq, dk, dv, dout, q, k, v, out, lse, cu_seqlens, p, d, stream);
  else if (fast) launch_bwd_fast<128>(dq, dk, dv, dout, q, k, v, out, lse, cu_seqlens, p, d, stream);
  else if (q.dtype == DType::BF16) launch_bwd_generic<bf16>(dq, dk, dv, dout, q, k, v, out, lse, cu_seqlens, p, d, stream);
  else launch_bwd_generic<float>(dq, dk, dv, dout, q, k, v, out, lse, cu_seqlens, p, d, stream);
}

}  // namespace rlcu::cuda
