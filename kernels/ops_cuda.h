// CUDA implementations of include/rlcu/ops.h (kernels/*.cu). Host-callable; each enqueues on ctx's stream.
#pragma once

#include "rlcu/ops.h"

namespace rlcu::cuda {
#include "op_list.inc"
}  // namespace rlcu::cuda
