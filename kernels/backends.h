// The two backends of every op in kernels/op_table.inc, declared from that table:
//   rlcu::cpu   the CPU twins (kernels/cpu/*.cpp): plain loops over F32 (fp64 accumulation where cheap), the test
//               oracle of the CUDA kernels and the backend of `--device cpu`;
//   rlcu::cuda  the CUDA kernels (kernels/*.cu), host-callable, each enqueued on ctx's stream; built only with the
//               CUDA backend (kernels/dispatch.cpp does not call them otherwise).
// Math, shapes and accumulation semantics are those of the public headers (include/rlcu/ops.h, rl_ops.h,
// reward_ops.h). A backend receives arguments that passed the op's contract (kernels/contract/) when the table
// gives it one, and checks what is specific to it (supported dtypes, alignment, its own limits).
#pragma once

#include "rlcu/ops.h"
#include "rlcu/reward_ops.h"
#include "rlcu/rl_ops.h"

#define RLCU_EXPAND(...) __VA_ARGS__
#define RLCU_BACKEND_DECL(NAME, DEVICE, PROFILE, CONTRACT, PARAMS, ARGS, TENSORS) \
  void NAME(RLCU_EXPAND PARAMS, Context& ctx);
#define RLCU_TRANSFORMER_OP RLCU_BACKEND_DECL
#define RLCU_RL_OP RLCU_BACKEND_DECL
#define RLCU_REWARD_OP RLCU_BACKEND_DECL

namespace rlcu::cpu {
#include "op_table.inc"
}  // namespace rlcu::cpu

namespace rlcu::cuda {
#include "op_table.inc"
}  // namespace rlcu::cuda

#undef RLCU_TRANSFORMER_OP
#undef RLCU_RL_OP
#undef RLCU_REWARD_OP
#undef RLCU_BACKEND_DECL
