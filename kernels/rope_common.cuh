// Rotary-embedding element math shared by kernels/rope.cu (rope_fwd / rope_bwd) and kernels/qkv_prepare.cu (the fused
// Q/K/V preparation of generation). Both compile this one expression, so the fused op rounds exactly like rope_fwd
// (bit-identical bf16 outputs): the generation engine's log-probs then equal the trainer's.
#pragma once

#include <cuda_runtime.h>

namespace rlcu::cuda {

// Rotates the pair (a, b) = (x[i], x[i + hd/2]) by the angle pos * freq (times `sign`: +1 forward, -1 for the
// transpose rotation of the backward pass); cos/sin from sincosf (full-range accurate), fp32 math:
//   lo = a cos - b sin,   hi = b cos + a sin.
// Callers pass `sign` as a runtime value (a kernel argument), never a literal, so that every caller hands the
// compiler the same data flow (sn * sign) and gets the same fused multiply-adds.
__device__ __forceinline__ void rope_rotate_pair(float a, float b, float pos, float freq, float sign, float& lo,
                                                 float& hi) {
  float sn, cs;
  sincosf(pos * freq, &sn, &cs);
  sn *= sign;
  lo = a * cs - b * sn;
  hi = b * cs + a * sn;
}

}  // namespace rlcu::cuda
