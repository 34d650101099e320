// PLACEHOLDER: swiglu ops on cpu are not written yet.
#include "ops_cpu.h"

namespace rlcu::cpu {

void swiglu_fwd(const Tensor& /*out*/, const Tensor& /*gate_up*/, Context& /*ctx*/) { throw Error("swiglu_fwd is not implemented on cpu"); }
void swiglu_bwd(const Tensor& /*dgate_up*/, const Tensor& /*dout*/, const Tensor& /*gate_up*/, Context& /*ctx*/) { throw Error("swiglu_bwd is not implemented on cpu"); }

}  // namespace rlcu::cpu
