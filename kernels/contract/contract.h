// Argument contracts of the ops (the rows of kernels/op_table.inc with CONTRACT = 1), declared from that table:
// contract::NAME(args) checks the shapes, dtypes and parameters every backend relies on and throws rlcu::Error
// naming the op, the argument and what was expected. kernels/dispatch.cpp calls it once, after the device check
// and before the backend. Definitions by op family in kernels/contract/: gemm.cpp, norm.cpp (embedding, RMSNorm),
// rope.cpp, elementwise.cpp (add/scale/cast, SwiGLU), logprob.cpp, optimizer.cpp (sum_squares, AdamW, 8-bit AdamW),
// sample.cpp, paged_attention.cpp, advantage.cpp, policy_loss.cpp, reward.cpp.
#pragma once

#include "backends.h"

#define RLCU_CONTRACT_DECL_1(NAME, PARAMS) void NAME(RLCU_EXPAND PARAMS);
#define RLCU_CONTRACT_DECL_0(NAME, PARAMS)
#define RLCU_CONTRACT_DECL(NAME, DEVICE, PROFILE, CONTRACT, PARAMS, ARGS, TENSORS) \
  RLCU_CONTRACT_DECL_##CONTRACT(NAME, PARAMS)
#define RLCU_TRANSFORMER_OP RLCU_CONTRACT_DECL
#define RLCU_RL_OP RLCU_CONTRACT_DECL
#define RLCU_REWARD_OP RLCU_CONTRACT_DECL

namespace rlcu::contract {
#include "op_table.inc"

// Rows of t seen as [rows, last dim] (the product of the leading dims; 0 for a scalar). Unlike Tensor::rows() it
// does not divide by the last dim, so a contract never traps on an empty last dim.
inline int64_t lead_rows(const Tensor& t) {
  int64_t r = 1;
  for (int i = 0; i + 1 < t.ndim; ++i) r *= t.shape[i];
  return t.ndim == 0 ? 0 : r;
}
}  // namespace rlcu::contract

#undef RLCU_TRANSFORMER_OP
#undef RLCU_RL_OP
#undef RLCU_REWARD_OP
#undef RLCU_CONTRACT_DECL
#undef RLCU_CONTRACT_DECL_0
#undef RLCU_CONTRACT_DECL_1
