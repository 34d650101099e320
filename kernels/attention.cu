// PLACEHOLDER: attention ops on cuda are not written yet.
#include "ops_cuda.h"

namespace rlcu::cuda {

void attention_fwd(const Tensor& /*out*/, const Tensor& /*lse*/, const Tensor& /*q*/, const Tensor& /*k*/, const Tensor& /*v*/, const Tensor& /*cu_seqlens*/, const ops::AttentionParams& /*p*/, Context& /*ctx*/) { throw Error("attention_fwd is not implemented on cuda"); }
void attention_bwd(const Tensor& /*dq*/, const Tensor& /*dk*/, const Tensor& /*dv*/, const Tensor& /*dout*/, const Tensor& /*q*/, const Tensor& /*k*/, const Tensor& /*v*/, const Tensor& /*out*/, const Tensor& /*lse*/, const Tensor& /*cu_seqlens*/, const ops::AttentionParams& /*p*/, Context& /*ctx*/) { throw Error("attention_bwd is not implemented on cuda"); }

}  // namespace rlcu::cuda
