// rmsnorm_fwd's lane layout, shared by kernels/rmsnorm.cu and kernels/qkv_prepare.cu (the fused QK-norm of
// generation), so that both reduce a row's sum of squares in the same order and the fused op's bf16 outputs equal
// rmsnorm_fwd's bit for bit (the generation engine's log-probs then equal the trainer's).
//
// Vector path (the row splits into 16-byte vectors of V elements and every tensor is aligned to them): a row takes
// G = rmsnorm_lanes_per_row(dim / V) lanes; lane `sub` chains fmaf over the elements of vectors sub, sub + G, ...
// in order, then the xor butterfly over the G lanes (offsets G/2 .. 1). Otherwise one warp (G = 32) takes the row
// element by element (V = 1).
#pragma once

#include <cstdint>

namespace rlcu::cuda {

// Lanes per row of the vector path: the power of two (4..32) covering the row's vectors.
inline int rmsnorm_lanes_per_row(int64_t vectors) {
  int g = 4;
  while (g < 32 && g < vectors) g <<= 1;
  return g;
}

}  // namespace rlcu::cuda
