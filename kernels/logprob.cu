// PLACEHOLDER: logprob ops on cuda are not written yet.
#include "ops_cuda.h"

namespace rlcu::cuda {

void logprob_fwd(const Tensor& /*logprob*/, const Tensor& /*entropy*/, const Tensor& /*lse*/, const Tensor& /*hidden*/, const Tensor& /*weight*/, const Tensor& /*targets*/, const ops::LogprobParams& /*p*/, Context& /*ctx*/) { throw Error("logprob_fwd is not implemented on cuda"); }
void logprob_bwd(const Tensor& /*dhidden*/, const Tensor& /*dweight*/, const Tensor& /*dlogprob*/, const Tensor& /*dentropy*/, const Tensor& /*hidden*/, const Tensor& /*weight*/, const Tensor& /*targets*/, const Tensor& /*lse*/, const ops::LogprobParams& /*p*/, Context& /*ctx*/) { throw Error("logprob_bwd is not implemented on cuda"); }

}  // namespace rlcu::cuda
