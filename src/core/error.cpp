// Error helpers behind RLCU_CHECK (the CUDA ones behind RLCU_CUDA_CHECK, RLCU_CUBLAS_CHECK and RLCU_LAUNCH_CHECK
// are in cuda_runtime.cpp).
#include "rlcu/error.h"

namespace rlcu {

void throw_check_failure(const char* stmt, const char* file, int line, const std::string& msg) {
  throw InternalError(fmt::format("internal check failed: {} at {}:{}{}{}", stmt, file, line,
                                  msg.empty() ? "" : ": ", msg));
}

}  // namespace rlcu
