// Tensors: non-owning views (data pointer, dtype, shape, device), one owning RAII buffer type, and a bump
// arena carved out of one buffer. Views are row-major and contiguous; `rows(b, e)` slices the first dimension
// and `view({...})` reshapes without copying. Nothing here allocates except Buffer::alloc.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <string>
#include <vector>

#include "rlcu/error.h"

namespace rlcu {

enum class DType : uint8_t { F32, BF16, F16, I32, I64, U8, F64 };
enum class Device : uint8_t { CPU, CUDA };

size_t dtype_size(DType t);
const char* dtype_name(DType t);
const char* device_name(Device d);

// bf16 / f16 bit conversions on the host (round to nearest even; NaN stays NaN).
inline float bf16_to_f32(uint16_t b) {
  uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x007fffffu)) return static_cast<uint16_t>((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
float f16_to_f32(uint16_t h);
inline float round_to_bf16(float f) { return bf16_to_f32(f32_to_bf16(f)); }

constexpr int kMaxDims = 4;

struct Tensor {
  void* data = nullptr;
  DType dtype = DType::F32;
  Device device = Device::CPU;
  int ndim = 0;
  int64_t shape[kMaxDims] = {0, 0, 0, 0};

  Tensor() = default;
  Tensor(void* d, DType t, Device dev, std::initializer_list<int64_t> dims);
  Tensor(void* d, DType t, Device dev, const std::vector<int64_t>& dims);

  bool empty() const { return data == nullptr; }
  int64_t numel() const;
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype); }
  int64_t size(int d) const { return shape[d < 0 ? d + ndim : d]; }
  // Number of rows when viewed as 2-D [rows, last dim].
  int64_t rows() const { return ndim == 0 ? 0 : numel() / shape[ndim - 1]; }
  int64_t cols() const { return ndim == 0 ? 0 : shape[ndim - 1]; }
  template <class T>
  T* ptr() const { return static_cast<T*>(data); }

  Tensor view(std::initializer_list<int64_t> dims) const;  // same numel; one dim may be -1
  Tensor slice_rows(int64_t begin, int64_t end) const;     // [begin, end) of dim 0
  std::string shape_str() const;
};

// One owning buffer: host memory (256-byte aligned) or device memory (cudaMalloc). Move-only.
class Buffer {
 public:
  Buffer() = default;
  static Buffer alloc(size_t bytes, Device device);
  // Host memory that is page-locked when CUDA is available (asynchronous copies to and from it); plain host memory
  // otherwise. device() is CPU.
  static Buffer alloc_pinned(size_t bytes);
  ~Buffer();
  Buffer(Buffer&& o) noexcept;
  Buffer& operator=(Buffer&& o) noexcept;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;

  void* data() const { return data_; }
  size_t size() const { return size_; }
  Device device() const { return device_; }
  Tensor as(DType t, std::initializer_list<int64_t> dims) const;

 private:
  void release();
  void* data_ = nullptr;
  size_t size_ = 0;
  Device device_ = Device::CPU;
  bool pinned_ = false;
};

// Device memory held by Buffers (bytes now, and the peak since start or since the last reset).
size_t device_bytes_in_use();
size_t device_bytes_peak();
void reset_device_bytes_peak();
// The same for CPU Buffers (Buffer::alloc on Device::CPU, and alloc_pinned's fallback when there is no GPU;
// pinned memory is not counted).
size_t host_buffer_bytes_in_use();
size_t host_buffer_bytes_peak();
// device_bytes_peak() for CUDA, host_buffer_bytes_peak() for the CPU.
size_t buffer_bytes_peak(Device d);

// Owning tensor: a Buffer and the view over it.
struct OwnedTensor {
  Buffer buf;
  Tensor t;
  static OwnedTensor make(DType dt, Device dev, const std::vector<int64_t>& dims);
};

// Bump allocator over one buffer: allocations are 256-byte aligned and freed all at once by reset().
class Arena {
 public:
  Arena() = default;
  Arena(size_t bytes, Device device) : buf_(Buffer::alloc(bytes, device)) {}
  Tensor alloc(DType t, std::initializer_list<int64_t> dims);
  Tensor alloc(DType t, const std::vector<int64_t>& dims);
  void reset() { used_ = 0; }
  size_t used() const { return used_; }
  size_t peak() const { return peak_; }
  size_t capacity() const { return buf_.size(); }
  Device device() const { return buf_.device(); }

 private:
  Buffer buf_;
  size_t used_ = 0;
  size_t peak_ = 0;
};

// Copies between views of equal byte size on any pair of devices (synchronous; on the legacy default stream, which
// is ordered with every Context stream since those are created blocking).
void copy_bytes(const Tensor& dst, const Tensor& src);
// Host <-> view helpers used by tests and the CLI (synchronous).
std::vector<float> to_host_f32(const Tensor& t);  // F32/BF16/F16 -> float
void from_host_f32(const Tensor& t, const std::vector<float>& v);  // float -> F32/BF16 with rounding

}  // namespace rlcu
