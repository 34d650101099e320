// Host-to-device staging for the model code, ordered on the context's stream so that a copy never races with
// kernels still reading the destination. On the CPU these are plain memcpy/memset.
// A pageable host source may be reused as soon as upload() returns (the CUDA runtime stages it before returning).
#pragma once

#include "rlcu/context.h"
#include "rlcu/tensor.h"

namespace rlcu::model_detail {

// dst.nbytes() bytes from host memory `src` into `dst` (any device).
void upload(const Tensor& dst, const void* src, Context& ctx);
// Sets every byte of `dst` to zero.
void zero_bytes(const Tensor& dst, Context& ctx);

}  // namespace rlcu::model_detail
