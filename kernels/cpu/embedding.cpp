// PLACEHOLDER: embedding ops on cpu are not written yet.
#include "ops_cpu.h"

namespace rlcu::cpu {

void embedding_fwd(const Tensor& /*out*/, const Tensor& /*table*/, const Tensor& /*ids*/, Context& /*ctx*/) { throw Error("embedding_fwd is not implemented on cpu"); }
void embedding_bwd(const Tensor& /*dtable*/, const Tensor& /*dout*/, const Tensor& /*ids*/, Context& /*ctx*/) { throw Error("embedding_bwd is not implemented on cpu"); }

}  // namespace rlcu::cpu
