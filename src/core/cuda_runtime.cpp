// core's CUDA runtime calls (see cuda_rt.h), and the CUDA-specific error helpers of cuda_check.h.
#include <cuda_runtime.h>

#include <cstdlib>
#include <cstring>

#include "cuda_rt.h"
#include "rlcu/cuda_check.h"
#include "rlcu/tensor.h"

namespace rlcu {

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

namespace cuda_rt {

namespace {
cudaStream_t as_stream(void* s) { return static_cast<cudaStream_t>(s); }
}  // namespace

bool built_with_cuda() { return true; }

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return n;
}

int runtime_version() {
  int v = 0;
  (void)cudaRuntimeGetVersion(&v);
  return v;
}

int driver_version() {
  int v = 0;
  if (cudaDriverGetVersion(&v) != cudaSuccess) return 0;
  return v;
}

std::vector<GpuInfo> devices() {
  std::vector<GpuInfo> out;
  const int n = device_count();
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

void* device_alloc(size_t bytes) {
  void* p = nullptr;
  cudaError_t err = cudaMalloc(&p, bytes);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    size_t free_b = 0, total_b = 0;
    (void)cudaMemGetInfo(&free_b, &total_b);
    throw Error(fmt::format("out of GPU memory allocating {:.1f} MiB ({:.1f} MiB free of {:.1f} MiB; rlcu's buffers "
                            "hold {:.1f} MiB)",
                            bytes / 1048576.0, free_b / 1048576.0, total_b / 1048576.0,
                            device_bytes_in_use() / 1048576.0));
  }
  return p;
}

void device_free(void* p) { (void)cudaFree(p); }

void* host_alloc_pinned(size_t bytes) {
  void* p = nullptr;
  RLCU_CUDA_CHECK(cudaHostAlloc(&p, bytes, cudaHostAllocDefault));
  return p;
}

void host_free_pinned(void* p) { (void)cudaFreeHost(p); }

MemoryInfo memory_info() {
  MemoryInfo m;
  RLCU_CUDA_CHECK(cudaMemGetInfo(&m.free_bytes, &m.total_bytes));
  return m;
}

void create_context(int device, size_t workspace_bytes, void** stream, void** cublaslt, void** workspace) {
  RLCU_CUDA_CHECK(cudaSetDevice(device));
  // A blocking stream: the synchronous copies of copy_bytes()/to_host_f32() (legacy default stream) are then
  // ordered after the kernels queued here, and kernels queued afterwards wait for those copies.
  cudaStream_t s = nullptr;
  RLCU_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamDefault));
  *stream = s;
  cublasLtHandle_t h = nullptr;
  RLCU_CUBLAS_CHECK(cublasLtCreate(&h));
  *cublaslt = h;
  RLCU_CUDA_CHECK(cudaMalloc(workspace, workspace_bytes));
}

void destroy_context(void* stream, void* cublaslt, void* workspace) {
  if (workspace) (void)cudaFree(workspace);
  if (cublaslt) (void)cublasLtDestroy(static_cast<cublasLtHandle_t>(cublaslt));
  if (stream) (void)cudaStreamDestroy(as_stream(stream));
}

int multiprocessors(int device) {
  int n = 0;
  RLCU_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device));
  return n;
}

void copy(void* dst, const void* src, size_t bytes) { RLCU_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDefault)); }

void copy_async(void* dst, const void* src, size_t bytes, void* stream) {
  RLCU_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, as_stream(stream)));
}

void zero_async(void* dst, size_t bytes, void* stream) {
  RLCU_CUDA_CHECK(cudaMemsetAsync(dst, 0, bytes, as_stream(stream)));
}

void stream_synchronize(void* stream, const char* why) {
  cudaError_t err = cudaStreamSynchronize(as_stream(stream));
  if (err != cudaSuccess) throw_cuda_failure(why, __FILE__, __LINE__, err);
}

void* event_create() {
  cudaEvent_t e = nullptr;
  RLCU_CUDA_CHECK(cudaEventCreate(&e));
  return e;
}

void event_record(void* event, void* stream) {
  RLCU_CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(event), as_stream(stream)));
}

float event_elapsed_ms(void* start, void* end) {
  float ms = 0;
  RLCU_CUDA_CHECK(cudaEventElapsedTime(&ms, static_cast<cudaEvent_t>(start), static_cast<cudaEvent_t>(end)));
  return ms;
}

void capture_begin(void* stream) {
  RLCU_CUDA_CHECK(cudaStreamBeginCapture(as_stream(stream), cudaStreamCaptureModeThreadLocal));
}

void* capture_end(void* stream) {
  cudaGraph_t graph = nullptr;
  RLCU_CUDA_CHECK(cudaStreamEndCapture(as_stream(stream), &graph));
  cudaGraphExec_t exec = nullptr;
  const cudaError_t err = cudaGraphInstantiate(&exec, graph, 0);
  (void)cudaGraphDestroy(graph);
  if (err != cudaSuccess) throw_cuda_failure("cudaGraphInstantiate", __FILE__, __LINE__, err);
  return exec;
}

void capture_abort(void* stream) {
  cudaGraph_t graph = nullptr;
  (void)cudaStreamEndCapture(as_stream(stream), &graph);
  if (graph) (void)cudaGraphDestroy(graph);
  (void)cudaGetLastError();
}

void graph_launch(void* graph, void* stream) {
  RLCU_CUDA_CHECK(cudaGraphLaunch(static_cast<cudaGraphExec_t>(graph), as_stream(stream)));
}

void graph_destroy(void* graph) { (void)cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(graph)); }

}  // namespace cuda_rt
}  // namespace rlcu
