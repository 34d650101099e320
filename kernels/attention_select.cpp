// The host-side choices of the CUDA attention op (see attention_select.h).
#include "attention_select.h"

namespace rlcu::cuda {

AttentionPath select_attention_path(DType dtype, int head_dim, bool all_aligned16) {
  const bool fast = dtype == DType::BF16 && (head_dim == 64 || head_dim == 128) && all_aligned16;
  return fast ? AttentionPath::Fast : AttentionPath::Generic;
}

int generic_per_lane(int head_dim) {
  if (head_dim <= 32) return 1;
  if (head_dim <= 64) return 2;
  if (head_dim <= 128) return 4;
  if (head_dim <= 256) return 8;
  return kMaxGenericHeadDim / 32;
}

}  // namespace rlcu::cuda
