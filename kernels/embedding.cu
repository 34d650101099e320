// PLACEHOLDER: embedding ops on cuda are not written yet.
#include "ops_cuda.h"

namespace rlcu::cuda {

void embedding_fwd(const Tensor& /*out*/, const Tensor& /*table*/, const Tensor& /*ids*/, Context& /*ctx*/) { throw Error("embedding_fwd is not implemented on cuda"); }
void embedding_bwd(const Tensor& /*dtable*/, const Tensor& /*dout*/, const Tensor& /*ids*/, Context& /*ctx*/) { throw Error("embedding_bwd is not implemented on cuda"); }

}  // namespace rlcu::cuda
