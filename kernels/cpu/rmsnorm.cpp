// PLACEHOLDER: rmsnorm ops on cpu are not written yet.
#include "ops_cpu.h"

namespace rlcu::cpu {

void rmsnorm_fwd(const Tensor& /*out*/, const Tensor& /*rstd*/, const Tensor& /*x*/, const Tensor& /*weight*/, float /*eps*/, Context& /*ctx*/) { throw Error("rmsnorm_fwd is not implemented on cpu"); }
void rmsnorm_bwd(const Tensor& /*dx*/, const Tensor& /*dweight*/, const Tensor& /*dout*/, const Tensor& /*x*/, const Tensor& /*weight*/, const Tensor& /*rstd*/, Context& /*ctx*/) { throw Error("rmsnorm_bwd is not implemented on cpu"); }

}  // namespace rlcu::cpu
