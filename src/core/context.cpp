// Device contexts (CPU singleton; CUDA stream + cuBLASLt handle + workspace) and CUDA device queries.
#include "rlcu/context.h"

#include <cstdlib>

#include "rlcu/cuda_check.h"

namespace rlcu {

Context& Context::cpu() {
  static Context c;
  return c;
}

std::unique_ptr<Context> Context::cuda(int device_index) {
  const int n = cuda_device_count();
  if (n == 0) throw Error("--device cuda: no CUDA device is available on this machine (try --device cpu)");
  if (device_index < 0 || device_index >= n)
    throw Error(fmt::format("CUDA device {} does not exist ({} device(s) present)", device_index, n));
  std::unique_ptr<Context> c(new Context());
  c->device_ = Device::CUDA;
  c->device_index_ = device_index;
  RLCU_CUDA_CHECK(cudaSetDevice(device_index));
  // A blocking stream: the synchronous copies of copy_bytes()/to_host_f32() (legacy default stream) are then
  // ordered after the kernels queued here, and kernels queued afterwards wait for those copies.
  cudaStream_t s = nullptr;
  RLCU_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamDefault));
  c->stream_ = s;
  cublasLtHandle_t h = nullptr;
  RLCU_CUBLAS_CHECK(cublasLtCreate(&h));
  c->cublaslt_ = h;
  c->workspace_bytes_ = size_t(32) << 20;
  RLCU_CUDA_CHECK(cudaMalloc(&c->workspace_, c->workspace_bytes_));
  return c;
}

Context::~Context() {
  if (device_ != Device::CUDA) return;
  if (workspace_) (void)cudaFree(workspace_);
  if (cublaslt_) (void)cublasLtDestroy(static_cast<cublasLtHandle_t>(cublaslt_));
  if (stream_) (void)cudaStreamDestroy(static_cast<cudaStream_t>(stream_));
}

void Context::synchronize(const char* why) const {
  if (device_ != Device::CUDA) return;
  cudaError_t err = cudaStreamSynchronize(static_cast<cudaStream_t>(stream_));
  if (err != cudaSuccess) throw_cuda_failure(why, __FILE__, __LINE__, err);
}

int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return n;
}

int cuda_runtime_version() {
  int v = 0;
  (void)cudaRuntimeGetVersion(&v);
  return v;
}

int cuda_driver_version() {
  int v = 0;
  if (cudaDriverGetVersion(&v) != cudaSuccess) return 0;
  return v;
}

std::vector<GpuInfo> cuda_devices() {
  std::vector<GpuInfo> out;
  const int n = cuda_device_count();
  for (int i = 0; i < n; ++i) {
    cudaDeviceProp p{};
    RLCU_CUDA_CHECK(cudaGetDeviceProperties(&p, i));
    GpuInfo g{i, p.name, p.totalGlobalMem, 0, p.major, p.minor, p.multiProcessorCount};
    size_t free_b = 0, total_b = 0;
    if (cudaSetDevice(i) == cudaSuccess && cudaMemGetInfo(&free_b, &total_b) == cudaSuccess) g.free_memory = free_b;
    (void)cudaGetLastError();
    out.push_back(g);
  }
  return out;
}

Device parse_device(const std::string& s, const std::string& what, int* index) {
  if (index) *index = 0;
  if (s == "cpu") return Device::CPU;
  if (s == "cuda") return Device::CUDA;
  if (s.rfind("cuda:", 0) == 0 && s.size() > 5) {
    char* end = nullptr;
    long v = std::strtol(s.c_str() + 5, &end, 10);
    if (*end == '\0' && v >= 0 && v < 1024) {
      if (index) *index = static_cast<int>(v);
      return Device::CUDA;
    }
  }
  throw UsageError(fmt::format("{}: expected cpu, cuda or cuda:N, got '{}'", what, s));
}

}  // namespace rlcu
