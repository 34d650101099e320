// PLACEHOLDER: rope ops on cuda are not written yet.
#include "ops_cuda.h"

namespace rlcu::cuda {

void rope_fwd(const Tensor& /*out*/, const Tensor& /*x*/, const Tensor& /*positions*/, const Tensor& /*inv_freq*/, Context& /*ctx*/) { throw Error("rope_fwd is not implemented on cuda"); }
void rope_bwd(const Tensor& /*dx*/, const Tensor& /*dout*/, const Tensor& /*positions*/, const Tensor& /*inv_freq*/, Context& /*ctx*/) { throw Error("rope_bwd is not implemented on cuda"); }

}  // namespace rlcu::cuda
