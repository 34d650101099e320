// PLACEHOLDER: gemm ops on cuda are not written yet.
#include "ops_cuda.h"

namespace rlcu::cuda {

void gemm(const Tensor& /*out*/, const Tensor& /*a*/, const Tensor& /*b*/, const ops::GemmParams& /*p*/, Context& /*ctx*/) { throw Error("gemm is not implemented on cuda"); }
void bias_add(const Tensor& /*out*/, const Tensor& /*bias*/, Context& /*ctx*/) { throw Error("bias_add is not implemented on cuda"); }
void bias_grad(const Tensor& /*dbias*/, const Tensor& /*dy*/, Context& /*ctx*/) { throw Error("bias_grad is not implemented on cuda"); }

}  // namespace rlcu::cuda
