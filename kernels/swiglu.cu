// PLACEHOLDER: swiglu ops on cuda are not written yet.
#include "ops_cuda.h"

namespace rlcu::cuda {

void swiglu_fwd(const Tensor& /*out*/, const Tensor& /*gate_up*/, Context& /*ctx*/) { throw Error("swiglu_fwd is not implemented on cuda"); }
void swiglu_bwd(const Tensor& /*dgate_up*/, const Tensor& /*dout*/, const Tensor& /*gate_up*/, Context& /*ctx*/) { throw Error("swiglu_bwd is not implemented on cuda"); }

}  // namespace rlcu::cuda
