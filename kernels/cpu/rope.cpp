// PLACEHOLDER: rope ops on cpu are not written yet.
#include "ops_cpu.h"

namespace rlcu::cpu {

void rope_fwd(const Tensor& /*out*/, const Tensor& /*x*/, const Tensor& /*positions*/, const Tensor& /*inv_freq*/, Context& /*ctx*/) { throw Error("rope_fwd is not implemented on cpu"); }
void rope_bwd(const Tensor& /*dx*/, const Tensor& /*dout*/, const Tensor& /*positions*/, const Tensor& /*inv_freq*/, Context& /*ctx*/) { throw Error("rope_bwd is not implemented on cpu"); }

}  // namespace rlcu::cpu
