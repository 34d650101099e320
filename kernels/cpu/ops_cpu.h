// CPU reference implementations of include/rlcu/ops.h: plain loops over F32 (fp64 accumulation where cheap).
// They are the test oracle for the CUDA kernels and the CPU backend of `--device cpu`.
#pragma once

#include "rlcu/ops.h"

namespace rlcu::cpu {
#include "op_list.inc"
}  // namespace rlcu::cpu
