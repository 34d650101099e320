// PLACEHOLDER: attention ops on cpu are not written yet.
#include "ops_cpu.h"

namespace rlcu::cpu {

void attention_fwd(const Tensor& /*out*/, const Tensor& /*lse*/, const Tensor& /*q*/, const Tensor& /*k*/, const Tensor& /*v*/, const Tensor& /*cu_seqlens*/, const ops::AttentionParams& /*p*/, Context& /*ctx*/) { throw Error("attention_fwd is not implemented on cpu"); }
void attention_bwd(const Tensor& /*dq*/, const Tensor& /*dk*/, const Tensor& /*dv*/, const Tensor& /*dout*/, const Tensor& /*q*/, const Tensor& /*k*/, const Tensor& /*v*/, const Tensor& /*out*/, const Tensor& /*lse*/, const Tensor& /*cu_seqlens*/, const ops::AttentionParams& /*p*/, Context& /*ctx*/) { throw Error("attention_bwd is not implemented on cpu"); }

}  // namespace rlcu::cpu
