// Host-side entry points of kernels/*.cu beyond include/rlcu/ops.h, for the CUDA op tests and benchmarks:
// choosing the matrix-product path explicitly (so the portable fallback kernel is tested, not only reachable when
// cuBLASLt has no algorithm for a shape) and setting the log-prob head's chunk sizes (so chunk boundaries are
// exercised at small sizes, and tile shapes can be compared at real ones). Plain C++: includable from .cpp.
#pragma once

#include <cstdint>

#include "rlcu/ops.h"

namespace rlcu::cuda {

enum class GemmPath {
  Auto,      // cuBLASLt; the fallback kernel only when cuBLASLt offers no algorithm for the shape
  CublasLt,  // cuBLASLt or an error
  Fallback,  // the portable tiled kernel (fp32 accumulation)
};
void gemm_with_path(const Tensor& out, const Tensor& a, const Tensor& b, const ops::GemmParams& p, GemmPath path,
                    Context& ctx);

// Token and vocabulary chunk of the fused log-prob head (0 restores the default). Process-wide; not thread-safe
// against concurrent log-prob calls.
struct LogprobChunking {
  int64_t tokens = 0;
  int64_t vocab = 0;
};
void set_logprob_chunking(const LogprobChunking& c);
LogprobChunking logprob_chunking();  // the sizes in effect

}  // namespace rlcu::cuda
