// Stream-ordered host-to-device copies and zeroing for the model code (see device_copy.h).
#include "model/device_copy.h"

#include <cstring>

#include "rlcu/cuda_check.h"

namespace rlcu::model_detail {

void upload(const Tensor& dst, const void* src, Context& ctx) {
  if (dst.nbytes() == 0) return;
  if (dst.device == Device::CPU) {
    std::memcpy(dst.data, src, dst.nbytes());
    return;
  }
  RLCU_CHECK(ctx.device() == Device::CUDA, "upload to a CUDA tensor needs a CUDA context");
  RLCU_CUDA_CHECK(
      cudaMemcpyAsync(dst.data, src, dst.nbytes(), cudaMemcpyHostToDevice, static_cast<cudaStream_t>(ctx.stream())));
}

void zero_bytes(const Tensor& dst, Context& ctx) {
  if (dst.nbytes() == 0) return;
  if (dst.device == Device::CPU) {
    std::memset(dst.data, 0, dst.nbytes());
    return;
  }
  RLCU_CHECK(ctx.device() == Device::CUDA, "zeroing a CUDA tensor needs a CUDA context");
  RLCU_CUDA_CHECK(cudaMemsetAsync(dst.data, 0, dst.nbytes(), static_cast<cudaStream_t>(ctx.stream())));
}

}  // namespace rlcu::model_detail
