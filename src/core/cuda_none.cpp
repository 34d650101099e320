// core's CUDA seam (cuda_rt.h) in a build without CUDA (RLCU_CUDA=OFF): no device exists, so the queries answer
// "none" and Context::cuda() refuses before any of the device calls below could be reached; those throw in case
// a caller bypasses it.
#include "cuda_rt.h"

namespace rlcu::cuda_rt {

namespace {
[[noreturn]] void no_cuda(const char* what) {
  throw Error(fmt::format("{}: this rlcu was built without CUDA (RLCU_CUDA=OFF); use --device cpu", what));
}
}  // namespace

bool built_with_cuda() { return false; }
int device_count() { return 0; }
int runtime_version() { return 0; }
int driver_version() { return 0; }
std::vector<GpuInfo> devices() { return {}; }
void* device_alloc(size_t) { no_cuda("GPU memory"); }
void device_free(void*) {}
void* host_alloc_pinned(size_t) { return nullptr; }
void host_free_pinned(void*) {}
MemoryInfo memory_info() { no_cuda("GPU memory query"); }
void create_context(int, size_t, void**, void**, void**) { no_cuda("--device cuda"); }
void destroy_context(void*, void*, void*) {}
int multiprocessors(int) { no_cuda("GPU query"); }
void copy(void*, const void*, size_t) { no_cuda("GPU copy"); }
void copy_async(void*, const void*, size_t, void*) { no_cuda("GPU copy"); }
void zero_async(void*, size_t, void*) { no_cuda("GPU memset"); }
void stream_synchronize(void*, const char*) {}
void* event_create() { no_cuda("GPU events"); }
void event_record(void*, void*) { no_cuda("GPU events"); }
float event_elapsed_ms(void*, void*) { no_cuda("GPU events"); }
void capture_begin(void*) { no_cuda("CUDA graphs"); }
void* capture_end(void*) { no_cuda("CUDA graphs"); }
void capture_abort(void*) {}
void graph_launch(void*, void*) { no_cuda("CUDA graphs"); }
void graph_destroy(void*) {}

}  // namespace rlcu::cuda_rt
