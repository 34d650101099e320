// PLACEHOLDER: optimizer ops on cpu are not written yet.
#include "ops_cpu.h"

namespace rlcu::cpu {

void sum_squares(const Tensor& /*out*/, const Tensor& /*x*/, Context& /*ctx*/) { throw Error("sum_squares is not implemented on cpu"); }
void adamw_update(const Tensor& /*master*/, const Tensor& /*m*/, const Tensor& /*v*/, const Tensor& /*weights*/, const Tensor& /*grad*/, const ops::AdamWParams& /*p*/, Context& /*ctx*/) { throw Error("adamw_update is not implemented on cpu"); }

}  // namespace rlcu::cpu
