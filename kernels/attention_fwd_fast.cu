// Causal packed-sequence attention, forward, tensor-core path (BF16, hd 64 or 128, 16-byte aligned tensors; math
// and shapes in kernels/attention.cu, the op's entry point): FlashAttention-2 style tiles on the tensor cores
// (mma.sync m16n8k16 bf16 -> fp32, operands through ldmatrix from padded shared memory, cp.async double buffering).
// A block of 4 warps owns 128 queries of one (sequence, head), 32 per warp, and streams key tiles (32 keys for
// hd 128, 64 for hd 64) with an online softmax in the exp2 domain; tiles after the diagonal are never visited.
// Writes out (overwrite) and lse (F32, natural log).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "attention_common.cuh"

namespace rlcu::cuda {

namespace {

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

template <int HD>
void launch_fwd_fast(const Tensor& out, const Tensor& lse, const Tensor& q, const Tensor& k, const Tensor& v,
                     const Tensor& cu_seqlens, const ops::AttentionParams& p, const attention::Dims& d,
                     cudaStream_t stream) {
  using C = FwdCfg<HD>;
  FastFwdParams fp{out.ptr<bf16>(), lse.ptr<float>(), q.ptr<bf16>(), k.ptr<bf16>(), v.ptr<bf16>(),
                   cu_seqlens.ptr<int>(), d.nq, d.nkv, d.nq / d.nkv, p.scale * kLog2e};
  set_smem(attention_fwd_kernel<HD>, C::kSmemBytes);
  const dim3 grid(attention::grid_tiles(p.max_seqlen, C::kBM), d.nq, p.num_seqs);
  attention_fwd_kernel<HD><<<grid, C::kThreads, C::kSmemBytes, stream>>>(fp);
  RLCU_LAUNCH_CHECK(stream);
}

}  // namespace

void attention::fwd_fast(int hd, const Tensor& out, const Tensor& lse, const Tensor& q, const Tensor& k,
                         const Tensor& v, const Tensor& cu_seqlens, const ops::AttentionParams& p, const Dims& d,
                         cudaStream_t stream) {
  if (hd == 64) launch_fwd_fast<64>(out, lse, q, k, v, cu_seqlens, p, d, stream);
  else launch_fwd_fast<128>(out, lse, q, k, v, cu_seqlens, p, d, stream);
}

}  // namespace rlcu::cuda
