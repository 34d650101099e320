// Device contexts (CPU singleton; CUDA stream + cuBLASLt handle + workspace), stream-ordered transfers, CUDA graph
// capture and CUDA device queries; the CUDA runtime calls themselves are behind cuda_rt.h.
#include "rlcu/context.h"

#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>

#include "cuda_rt.h"
#include "rlcu/parallel.h"

namespace rlcu {

Context& Context::cpu() {
  static Context c;
  return c;
}

std::unique_ptr<Context> Context::cuda(int device_index) {
  if (!cuda_rt::built_with_cuda())
    throw Error("--device cuda: this rlcu was built without CUDA (RLCU_CUDA=OFF); use --device cpu");
  const int n = cuda_device_count();
  if (n == 0) throw Error("--device cuda: no CUDA device is available on this machine (try --device cpu)");
  if (device_index < 0 || device_index >= n)
    throw Error(fmt::format("CUDA device {} does not exist ({} device(s) present)", device_index, n));
  std::unique_ptr<Context> c(new Context());
  c->device_ = Device::CUDA;
  c->device_index_ = device_index;
  c->workspace_bytes_ = size_t(32) << 20;
  cuda_rt::create_context(device_index, c->workspace_bytes_, &c->stream_, &c->cublaslt_, &c->workspace_);
  return c;
}

Context::~Context() {
  if (device_ != Device::CUDA) return;
  cuda_rt::destroy_context(stream_, cublaslt_, workspace_);
}

void Context::synchronize(const char* why) const {
  if (device_ != Device::CUDA) return;
  cuda_rt::stream_synchronize(stream_, why);
}

void Context::upload(const Tensor& dst, const void* src) const {
  if (dst.nbytes() == 0) return;
  if (dst.device == Device::CPU) {
    std::memcpy(dst.data, src, dst.nbytes());
    return;
  }
  RLCU_CHECK(device_ == Device::CUDA, "upload to a CUDA tensor needs a CUDA context");
  cuda_rt::copy_async(dst.data, src, dst.nbytes(), stream_);
}

void Context::download(void* dst, const Tensor& src) const {
  if (src.nbytes() == 0) return;
  if (src.device == Device::CPU) {
    std::memcpy(dst, src.data, src.nbytes());
    return;
  }
  RLCU_CHECK(device_ == Device::CUDA, "download from a CUDA tensor needs a CUDA context");
  cuda_rt::copy_async(dst, src.data, src.nbytes(), stream_);
}

void Context::zero(const Tensor& dst) const {
  if (dst.nbytes() == 0) return;
  if (dst.device == Device::CPU) {
    std::memset(dst.data, 0, dst.nbytes());
    return;
  }
  RLCU_CHECK(device_ == Device::CUDA, "zeroing a CUDA tensor needs a CUDA context");
  cuda_rt::zero_async(dst.data, dst.nbytes(), stream_);
}

void Context::copy(const Tensor& dst, const Tensor& src) const {
  RLCU_CHECK(dst.nbytes() == src.nbytes(), "copy of " + std::to_string(src.nbytes()) + " bytes into a tensor of " +
                                               std::to_string(dst.nbytes()));
  if (dst.nbytes() == 0) return;
  if (dst.device == Device::CPU && src.device == Device::CPU) {
    std::memcpy(dst.data, src.data, dst.nbytes());
    return;
  }
  RLCU_CHECK(device_ == Device::CUDA, "a copy involving a CUDA tensor needs a CUDA context");
  cuda_rt::copy_async(dst.data, src.data, dst.nbytes(), stream_);
}

MemoryInfo Context::memory_info() const {
  if (device_ != Device::CUDA) return {};
  return cuda_rt::memory_info();
}

int Context::multiprocessors() const {
  if (device_ != Device::CUDA) return 1;
  return cuda_rt::multiprocessors(device_index_);
}

CudaGraph CudaGraph::capture(Context& ctx, const std::function<void()>& enqueue) {
  RLCU_CHECK(ctx.device() == Device::CUDA, "CUDA graph capture on a {} context", device_name(ctx.device()));
  cuda_rt::capture_begin(ctx.stream());
  try {
    enqueue();
  } catch (...) {
    cuda_rt::capture_abort(ctx.stream());
    throw;
  }
  CudaGraph g;
  g.exec_ = cuda_rt::capture_end(ctx.stream());
  return g;
}

CudaGraph::~CudaGraph() {
  if (exec_) cuda_rt::graph_destroy(exec_);
}

CudaGraph::CudaGraph(CudaGraph&& o) noexcept : exec_(std::exchange(o.exec_, nullptr)) {}

CudaGraph& CudaGraph::operator=(CudaGraph&& o) noexcept {
  if (this != &o) {
    if (exec_) cuda_rt::graph_destroy(exec_);
    exec_ = std::exchange(o.exec_, nullptr);
  }
  return *this;
}

void CudaGraph::launch(Context& ctx) const {
  RLCU_CHECK(exec_ != nullptr, "launch of an empty CUDA graph");
  cuda_rt::graph_launch(exec_, ctx.stream());
}

bool built_with_cuda() { return cuda_rt::built_with_cuda(); }
int cuda_device_count() { return cuda_rt::device_count(); }
int cuda_runtime_version() { return cuda_rt::runtime_version(); }
int cuda_driver_version() { return cuda_rt::driver_version(); }
std::vector<GpuInfo> cuda_devices() { return cuda_rt::devices(); }

Device parse_device(const std::string& s, const std::string& what, int* index) {
  if (index) *index = 0;
  if (s == "auto") return cuda_device_count() > 0 ? Device::CUDA : Device::CPU;
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
  throw UsageError(fmt::format("{}: expected auto, cpu, cuda or cuda:N, got '{}'", what, s));
}

std::string device_note(const std::string& requested, Device d, int index) {
  const std::string chosen = d == Device::CPU ? "cpu" : fmt::format("cuda:{}", index);
  const std::string threads = fmt::format(", {} thread{}", cpu_threads(), cpu_threads() == 1 ? "" : "s");
  if (requested != "auto") return fmt::format("device {}{}", chosen, d == Device::CPU ? threads : "");
  if (d == Device::CPU)
    return fmt::format("device cpu (auto: {}){}", built_with_cuda() ? "no CUDA device found" : "a build without CUDA",
                       threads);
  return fmt::format("device {} (auto: the first of {} CUDA device{})", chosen, cuda_device_count(),
                     cuda_device_count() == 1 ? "" : "s");
}

}  // namespace rlcu
