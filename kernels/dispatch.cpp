// The public functions of every op in kernels/op_table.inc (include/rlcu/ops.h, rl_ops.h, reward_ops.h), generated
// from that table. Each one
//   1. checks that every tensor argument lives on the device of the table's DEVICE argument (empty tensors excepted),
//   2. runs the op's contract (kernels/contract/) when the table gives it one,
//   3. calls the CPU twin (rlcu::cpu) for a CPU tensor, or the CUDA kernel (rlcu::cuda) for a CUDA tensor, the
//      latter recorded by the op profiler under the table's PROFILE label.
#include <initializer_list>
#include <string>

#include "backends.h"
#include "contract/contract.h"
#include "cuda_backend.h"
#include "rlcu/profile.h"

namespace rlcu {

namespace {

void check_same_device(const char* op, Device d, std::initializer_list<const Tensor*> ts) {
  for (const Tensor* t : ts)
    RLCU_CHECK(t->empty() || t->device == d, "{}: tensors on different devices ({} vs {})", op, device_name(t->device),
               device_name(d));
}

// "gemm MxNxK[ Ta][ Tb] -> dtype", built only while the profiler records.
std::string gemm_profile_label(const Tensor& out, const Tensor& a, const ops::GemmParams& p) {
  if (!profiler_enabled()) return std::string();
  return fmt::format("gemm {}x{}x{}{}{} -> {}", out.size(0), out.size(1), p.trans_a ? a.size(0) : a.size(1),
                     p.trans_a ? " Ta" : "", p.trans_b ? " Tb" : "", dtype_name(out.dtype));
}

}  // namespace

#define RLCU_CONTRACT_CALL_1(NAME, ARGS) contract::NAME ARGS;
#define RLCU_CONTRACT_CALL_0(NAME, ARGS)
#define RLCU_DISPATCH(NAME, DEVICE, PROFILE, CONTRACT, PARAMS, ARGS, TENSORS) \
  void NAME(RLCU_EXPAND PARAMS, Context& ctx) {                                \
    const Device device_ = DEVICE.device;                                      \
    check_same_device(#NAME, device_, {RLCU_EXPAND TENSORS});                  \
    RLCU_CONTRACT_CALL_##CONTRACT(NAME, ARGS)                                  \
    if (device_ == Device::CPU) {                                              \
      cpu::NAME(RLCU_EXPAND ARGS, ctx);                                        \
      return;                                                                  \
    }                                                                          \
    ProfileScope prof_(PROFILE, ctx);                                          \
    RLCU_CUDA_BACKEND(cuda::NAME(RLCU_EXPAND ARGS, ctx));                      \
  }
#define RLCU_SKIP(...)

namespace ops {
#define RLCU_TRANSFORMER_OP RLCU_DISPATCH
#define RLCU_RL_OP RLCU_SKIP
#define RLCU_REWARD_OP RLCU_SKIP
#include "op_table.inc"
#undef RLCU_TRANSFORMER_OP
#undef RLCU_RL_OP
#undef RLCU_REWARD_OP
}  // namespace ops

namespace rl {
#define RLCU_TRANSFORMER_OP RLCU_SKIP
#define RLCU_RL_OP RLCU_DISPATCH
#define RLCU_REWARD_OP RLCU_SKIP
#include "op_table.inc"
#undef RLCU_TRANSFORMER_OP
#undef RLCU_RL_OP
#undef RLCU_REWARD_OP
}  // namespace rl

#define RLCU_TRANSFORMER_OP RLCU_SKIP
#define RLCU_RL_OP RLCU_SKIP
#define RLCU_REWARD_OP RLCU_DISPATCH
#include "op_table.inc"
#undef RLCU_TRANSFORMER_OP
#undef RLCU_RL_OP
#undef RLCU_REWARD_OP

}  // namespace rlcu
