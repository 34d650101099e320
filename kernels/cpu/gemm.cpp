// PLACEHOLDER: gemm ops on cpu are not written yet.
#include "ops_cpu.h"

namespace rlcu::cpu {

void gemm(const Tensor& /*out*/, const Tensor& /*a*/, const Tensor& /*b*/, const ops::GemmParams& /*p*/, Context& /*ctx*/) { throw Error("gemm is not implemented on cpu"); }
void bias_add(const Tensor& /*out*/, const Tensor& /*bias*/, Context& /*ctx*/) { throw Error("bias_add is not implemented on cpu"); }
void bias_grad(const Tensor& /*dbias*/, const Tensor& /*dy*/, Context& /*ctx*/) { throw Error("bias_grad is not implemented on cpu"); }

}  // namespace rlcu::cpu
