// What the causal packed-sequence attention kernels share (kernels/attention.cu: the op's host entry points and
// argument checks; kernels/attention_fwd_fast.cu, kernels/attention_bwd_fast.cu: the tensor-core paths;
// kernels/attention_generic.cu: the warp-per-row path; the path choice is kernels/attention_select.cpp):
//   attention::Dims and the launchers of each path (host; arguments already checked by attention.cu),
//   the constants of the exp2-domain softmax, the padded shared-memory row layout (kPad) and load_tile (device).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "mma.cuh"
#include "rlcu/cuda_check.h"
#include "rlcu/ops.h"

namespace rlcu::cuda {

namespace attention {

struct Dims {
  int64_t tokens;
  int nq, nkv, hd;
};

// Blocks per sequence and head along the tile axis: params.max_seqlen rounded up to tiles (at least one).
inline int grid_tiles(int max_seqlen, int tile) { return max_seqlen <= tile ? 1 : (max_seqlen + tile - 1) / tile; }

// Tensor-core paths, bf16, head dim 64 or 128 (hd), 16-byte aligned tensors.
void fwd_fast(int hd, const Tensor& out, const Tensor& lse, const Tensor& q, const Tensor& k, const Tensor& v,
              const Tensor& cu_seqlens, const ops::AttentionParams& p, const Dims& d, cudaStream_t stream);
void bwd_fast(int hd, const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dout, const Tensor& q,
              const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse, const Tensor& cu_seqlens,
              const ops::AttentionParams& p, const Dims& d, cudaStream_t stream);
// Warp-per-row path, F32 or BF16 (q's dtype), any head dim up to kMaxGenericHeadDim (attention_select.h).
void fwd_generic(const Tensor& out, const Tensor& lse, const Tensor& q, const Tensor& k, const Tensor& v,
                 const Tensor& cu_seqlens, const ops::AttentionParams& p, const Dims& d, cudaStream_t stream);
void bwd_generic(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dout, const Tensor& q,
                 const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse, const Tensor& cu_seqlens,
                 const ops::AttentionParams& p, const Dims& d, cudaStream_t stream);

}  // namespace attention

namespace {

using bf16 = __nv_bfloat16;

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;
constexpr unsigned kFullMask = 0xffffffffu;
// Shared-memory rows are padded by 8 bf16 (16 bytes): consecutive rows start 16 bytes apart modulo 128, so the
// eight 16-byte row reads of one ldmatrix hit distinct banks.
constexpr int kPad = 8;

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

template <typename Kernel>
void set_smem(Kernel kernel, int bytes) {
  RLCU_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
}

}  // namespace

}  // namespace rlcu::cuda
