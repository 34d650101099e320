// Error helpers behind RLCU_CHECK, RLCU_CUDA_CHECK, RLCU_CUBLAS_CHECK and RLCU_LAUNCH_CHECK.
#include <cstdlib>
#include <cstring>

#include "rlcu/cuda_check.h"
#include "rlcu/error.h"

namespace rlcu {

void throw_check_failure(const char* stmt, const char* file, int line, const std::string& msg) {
  throw InternalError(fmt::format("internal check failed: {} at {}:{}{}{}", stmt, file, line,
                                  msg.empty() ? "" : ": ", msg));
}

void throw_cuda_failure(const char* stmt, const char* file, int line, cudaError_t err) {
  throw Error(fmt::format("CUDA error {} ({}) in {} at {}:{}", cudaGetErrorName(err), cudaGetErrorString(err), stmt,
                          file, line));
}

void throw_cublas_failure(const char* stmt, const char* file, int line, int status) {
  throw Error(fmt::format("cuBLAS error {} in {} at {}:{}", status, stmt, file, line));
}

bool sync_check_enabled() {
  static const bool on = [] {
    const char* v = std::getenv("RLCU_SYNC_CHECK");
    return v && std::strcmp(v, "0") != 0 && v[0] != '\0';
  }();
  return on;
}

void launch_check(const char* file, int line, cudaStream_t stream) {
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) throw_cuda_failure("kernel launch", file, line, err);
  if (sync_check_enabled()) {
    err = cudaStreamSynchronize(stream);
    if (err != cudaSuccess) throw_cuda_failure("kernel execution (RLCU_SYNC_CHECK)", file, line, err);
  }
}

}  // namespace rlcu
