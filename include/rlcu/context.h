// Device context: where ops run. CPU contexts carry nothing; CUDA contexts own a stream, a cuBLASLt handle and
// its workspace. Ops take the context last ("then the stream"). Raw CUDA handles are kept as void* so that
// this header stays free of CUDA includes.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "rlcu/tensor.h"

namespace rlcu {

class Context {
 public:
  static Context& cpu();  // process-wide CPU context
  // Creates a CUDA context on `device_index`: a stream (blocking, so that synchronous copies order with it), a cuBLASLt handle and a 32 MiB workspace.
  static std::unique_ptr<Context> cuda(int device_index = 0);
  ~Context();
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;

  Device device() const { return device_; }
  int device_index() const { return device_index_; }
  void* stream() const { return stream_; }      // cudaStream_t
  void* cublaslt() const { return cublaslt_; }  // cublasLtHandle_t
  void* workspace() const { return workspace_; }
  size_t workspace_bytes() const { return workspace_bytes_; }
  // Named sync point: waits for all work queued on this context's stream.
  void synchronize(const char* why) const;

 private:
  Context() = default;
  Device device_ = Device::CPU;
  int device_index_ = -1;
  void* stream_ = nullptr;
  void* cublaslt_ = nullptr;
  void* workspace_ = nullptr;
  size_t workspace_bytes_ = 0;
};

struct GpuInfo {
  int index;
  std::string name;
  size_t total_memory;
  size_t free_memory;
  int cc_major, cc_minor;
  int multiprocessors;
};

int cuda_device_count();  // 0 when there is no driver or no device
int cuda_runtime_version();
int cuda_driver_version();  // 0 when there is no driver
std::vector<GpuInfo> cuda_devices();

// Parses "cpu", "cuda" or "cuda:N" (N >= 0). Throws UsageError naming `what` otherwise.
Device parse_device(const std::string& s, const std::string& what, int* index = nullptr);

}  // namespace rlcu
