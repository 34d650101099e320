// PLACEHOLDER: rmsnorm ops on cuda are not written yet.
#include "ops_cuda.h"

namespace rlcu::cuda {

void rmsnorm_fwd(const Tensor& /*out*/, const Tensor& /*rstd*/, const Tensor& /*x*/, const Tensor& /*weight*/, float /*eps*/, Context& /*ctx*/) { throw Error("rmsnorm_fwd is not implemented on cuda"); }
void rmsnorm_bwd(const Tensor& /*dx*/, const Tensor& /*dweight*/, const Tensor& /*dout*/, const Tensor& /*x*/, const Tensor& /*weight*/, const Tensor& /*rstd*/, Context& /*ctx*/) { throw Error("rmsnorm_bwd is not implemented on cuda"); }

}  // namespace rlcu::cuda
