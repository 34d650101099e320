// Every CUDA runtime call of core behind one seam. cuda_runtime.cpp implements it with the CUDA runtime and
// cuBLASLt; cuda_none.cpp is the build without CUDA (RLCU_CUDA=OFF), where the queries answer "no device" and a
// call that needs a device throws rlcu::Error. Handles are void* so that no CUDA header leaks out of core; streams
// are cudaStream_t, events cudaEvent_t, graphs cudaGraphExec_t.
#pragma once

#include <cstddef>
#include <vector>

#include "rlcu/context.h"

namespace rlcu::cuda_rt {

bool built_with_cuda();
int device_count();  // 0 when there is no driver or no device (or no CUDA in this build)
int runtime_version();
int driver_version();
std::vector<GpuInfo> devices();

// Device memory: throws rlcu::Error "out of GPU memory allocating ... (... free of ...)" when it fails.
void* device_alloc(size_t bytes);
void device_free(void* p);
// Page-locked host memory (asynchronous copies from/to it); nullptr when the build has no CUDA.
void* host_alloc_pinned(size_t bytes);
void host_free_pinned(void* p);
MemoryInfo memory_info();  // of the current device

// A context's resources on `device`: a blocking stream, a cuBLASLt handle and a workspace of `workspace_bytes`.
void create_context(int device, size_t workspace_bytes, void** stream, void** cublaslt, void** workspace);
void destroy_context(void* stream, void* cublaslt, void* workspace);
int multiprocessors(int device);

// Copies: synchronous in any direction (on the legacy default stream), and stream-ordered on `stream`.
void copy(void* dst, const void* src, size_t bytes);
void copy_async(void* dst, const void* src, size_t bytes, void* stream);
void zero_async(void* dst, size_t bytes, void* stream);
void stream_synchronize(void* stream, const char* why);

void* event_create();
void event_record(void* event, void* stream);
float event_elapsed_ms(void* start, void* end);

// Stream capture into an instantiated graph.
void capture_begin(void* stream);
void* capture_end(void* stream);     // the instantiated graph
void capture_abort(void* stream);    // ends a capture after an exception, discarding it
void graph_launch(void* graph, void* stream);
void graph_destroy(void* graph);

}  // namespace rlcu::cuda_rt
