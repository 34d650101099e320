// Device context: where ops run. CPU contexts carry nothing; CUDA contexts own a stream, a cuBLASLt handle and
// its workspace. Ops take the context last ("then the stream"). Raw CUDA handles are kept as void* so that
// this header stays free of CUDA includes; every CUDA runtime call of the host code goes through core (this header
// and tensor.h), so the modules above core build without the CUDA toolkit (RLCU_CUDA=OFF).
//
// Stream-ordered transfers: upload / download / zero are queued on the context's stream after the kernels already
// queued there (on the CPU they happen at once). A pageable host source may be reused as soon as upload returns
// (the runtime stages it); a download's destination is valid after synchronize().
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "rlcu/tensor.h"

namespace rlcu {

struct MemoryInfo {
  size_t free_bytes = 0;
  size_t total_bytes = 0;
};

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

  // dst.nbytes() bytes from host memory `src` into dst (any device), stream-ordered.
  void upload(const Tensor& dst, const void* src) const;
  // src.nbytes() bytes of src (any device) into host memory `dst`, stream-ordered: read dst after synchronize().
  void download(void* dst, const Tensor& src) const;
  // Sets every byte of dst to zero, stream-ordered.
  void zero(const Tensor& dst) const;
  // src's bytes into dst (same byte size; any devices), stream-ordered.
  void copy(const Tensor& dst, const Tensor& src) const;
  // Free and total memory of this context's device (0 / 0 on the CPU).
  MemoryInfo memory_info() const;
  // Streaming multiprocessors of the device (1 on the CPU).
  int multiprocessors() const;

 private:
  Context() = default;
  Device device_ = Device::CPU;
  int device_index_ = -1;
  void* stream_ = nullptr;
  void* cublaslt_ = nullptr;
  void* workspace_ = nullptr;
  size_t workspace_bytes_ = 0;
};

// A captured sequence of launches on a CUDA context's stream, replayed with launch(). Move-only.
class CudaGraph {
 public:
  CudaGraph() = default;
  // Runs `enqueue` under stream capture on ctx's stream (nothing executes) and instantiates the graph.
  static CudaGraph capture(Context& ctx, const std::function<void()>& enqueue);
  ~CudaGraph();
  CudaGraph(CudaGraph&& o) noexcept;
  CudaGraph& operator=(CudaGraph&& o) noexcept;
  CudaGraph(const CudaGraph&) = delete;
  CudaGraph& operator=(const CudaGraph&) = delete;
  void launch(Context& ctx) const;
  bool empty() const { return exec_ == nullptr; }

 private:
  void* exec_ = nullptr;  // cudaGraphExec_t
};

struct GpuInfo {
  int index;
  std::string name;
  size_t total_memory;
  size_t free_memory;
  int cc_major, cc_minor;
  int multiprocessors;
};

bool built_with_cuda();  // false for a CPU-only build (RLCU_CUDA=OFF)
int cuda_device_count();  // 0 when there is no driver or no device
int cuda_runtime_version();
int cuda_driver_version();  // 0 when there is no driver
std::vector<GpuInfo> cuda_devices();

// Parses "auto" (the first CUDA device when there is one, else the CPU), "cpu", "cuda" or "cuda:N" (N >= 0).
// Throws UsageError naming `what` otherwise.
Device parse_device(const std::string& s, const std::string& what, int* index = nullptr);
// The log line of the device a command runs on: "device cpu (auto: no CUDA device found), 2 threads" (the CPU
// kernels' threads, rlcu/parallel.h), "device cuda:0".
std::string device_note(const std::string& requested, Device d, int index);

}  // namespace rlcu
