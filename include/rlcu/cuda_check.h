// RLCU_CUDA_CHECK and RLCU_CUBLAS_CHECK: turn a failed CUDA runtime / cuBLAS(Lt) status into an rlcu::Error
// naming the statement, file and line. RLCU_LAUNCH_CHECK() after each kernel launch checks the launch and,
// when the environment sets RLCU_SYNC_CHECK=1, synchronises the stream so that asynchronous faults surface
// at the launch that caused them.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include "rlcu/error.h"

namespace rlcu {
[[noreturn]] void throw_cuda_failure(const char* stmt, const char* file, int line, cudaError_t err);
[[noreturn]] void throw_cublas_failure(const char* stmt, const char* file, int line, int status);
bool sync_check_enabled();
void launch_check(const char* file, int line, cudaStream_t stream);
}  // namespace rlcu

#define RLCU_CUDA_CHECK(stmt)                                                         \
  do {                                                                                \
    cudaError_t rlcu_err_ = (stmt);                                                   \
    if (rlcu_err_ != cudaSuccess) ::rlcu::throw_cuda_failure(#stmt, __FILE__, __LINE__, rlcu_err_); \
  } while (0)

#define RLCU_CUBLAS_CHECK(stmt)                                                          \
  do {                                                                                   \
    int rlcu_st_ = static_cast<int>(stmt);                                               \
    if (rlcu_st_ != 0) ::rlcu::throw_cublas_failure(#stmt, __FILE__, __LINE__, rlcu_st_); \
  } while (0)

#define RLCU_LAUNCH_CHECK(stream) ::rlcu::launch_check(__FILE__, __LINE__, (stream))
