// The host-side choices of the CUDA attention op (kernels/attention.cu), as plain C++ so that a CPU test covers them:
//   select_attention_path   the tensor-core path (kernels/attention_fwd_fast.cu, kernels/attention_bwd_fast.cu) for
//                           BF16 with head dim 64 or 128 when every tensor is 16-byte aligned, else the generic
//                           warp-per-row path (kernels/attention_generic.cu);
//   generic_per_lane        the generic path's elements per lane: the smallest of 1, 2, 4, 8, 16 with 32 * n >= hd.
#pragma once

#include "rlcu/tensor.h"

namespace rlcu::cuda {

enum class AttentionPath { Fast, Generic };

// Largest head dim of the generic path (and so of the op): 32 lanes x 16 elements.
constexpr int kMaxGenericHeadDim = 512;

// all_aligned16: every tensor of the call starts on a 16-byte boundary.
AttentionPath select_attention_path(DType dtype, int head_dim, bool all_aligned16);

// head_dim in [1, kMaxGenericHeadDim].
int generic_per_lane(int head_dim);

}  // namespace rlcu::cuda
