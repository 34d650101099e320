// Tensor views, the owning Buffer, the bump Arena and host/device copies.
#include "rlcu/tensor.h"

#include <atomic>
#include <cstdlib>
#include <utility>

#include "cuda_rt.h"

namespace rlcu {

size_t dtype_size(DType t) {
  switch (t) {
    case DType::F32: return 4;
    case DType::BF16: return 2;
    case DType::F16: return 2;
    case DType::I32: return 4;
    case DType::I64: return 8;
    case DType::U8: return 1;
    case DType::F64: return 8;
  }
  return 0;
}

const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "f32";
    case DType::BF16: return "bf16";
    case DType::F16: return "f16";
    case DType::I32: return "i32";
    case DType::I64: return "i64";
    case DType::U8: return "u8";
    case DType::F64: return "f64";
  }
  return "?";
}

const char* device_name(Device d) { return d == Device::CPU ? "cpu" : "cuda"; }

float f16_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t u;
  if (exp == 0) {
    if (mant == 0) {
      u = sign;
    } else {  // subnormal: normalise
      exp = 127 - 15 + 1;
      while ((mant & 0x400u) == 0) {
        mant <<= 1;
        --exp;
      }
      mant &= 0x3ffu;
      u = sign | (exp << 23) | (mant << 13);
    }
  } else if (exp == 31) {
    u = sign | 0x7f800000u | (mant << 13);
  } else {
    u = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

Tensor::Tensor(void* d, DType t, Device dev, std::initializer_list<int64_t> dims) : data(d), dtype(t), device(dev) {
  RLCU_CHECK(dims.size() <= kMaxDims, "too many dims");
  for (int64_t s : dims) shape[ndim++] = s;
}

Tensor::Tensor(void* d, DType t, Device dev, const std::vector<int64_t>& dims) : data(d), dtype(t), device(dev) {
  RLCU_CHECK(dims.size() <= kMaxDims, "too many dims");
  for (int64_t s : dims) shape[ndim++] = s;
}

int64_t Tensor::numel() const {
  if (ndim == 0) return 0;
  int64_t n = 1;
  for (int i = 0; i < ndim; ++i) n *= shape[i];
  return n;
}

Tensor Tensor::view(std::initializer_list<int64_t> dims) const {
  Tensor t = *this;
  t.ndim = 0;
  int infer = -1;
  int64_t known = 1;
  for (int64_t s : dims) {
    RLCU_CHECK(t.ndim < kMaxDims, "too many dims");
    if (s == -1) {
      RLCU_CHECK(infer < 0, "view: two inferred dims");
      infer = t.ndim;
    } else {
      known *= s;
    }
    t.shape[t.ndim++] = s;
  }
  if (infer >= 0) {
    RLCU_CHECK(known > 0 && numel() % known == 0, "view {} of {}", known, shape_str());
    t.shape[infer] = numel() / known;
  }
  RLCU_CHECK(t.numel() == numel(), "view changes numel: {} -> {}", shape_str(), t.shape_str());
  return t;
}

Tensor Tensor::slice_rows(int64_t begin, int64_t end) const {
  RLCU_CHECK(ndim >= 1 && begin >= 0 && begin <= end && end <= shape[0], "slice_rows [{}, {}) of {}", begin, end,
             shape_str());
  Tensor t = *this;
  const int64_t row = shape[0] == 0 ? 0 : numel() / shape[0];
  t.data = static_cast<char*>(data) + static_cast<size_t>(begin * row) * dtype_size(dtype);
  t.shape[0] = end - begin;
  return t;
}

std::string Tensor::shape_str() const {
  std::string s = "[";
  for (int i = 0; i < ndim; ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

namespace {
std::atomic<size_t> g_device_in_use{0}, g_device_peak{0};
std::atomic<size_t> g_host_in_use{0}, g_host_peak{0};  // CPU Buffers that are not pinned

void track(std::atomic<size_t>& in_use, std::atomic<size_t>& peak_of, size_t bytes) {
  const size_t now = in_use.fetch_add(bytes) + bytes;
  size_t peak = peak_of.load();
  while (now > peak && !peak_of.compare_exchange_weak(peak, now)) {
  }
}
}  // namespace

size_t device_bytes_in_use() { return g_device_in_use.load(); }
size_t device_bytes_peak() { return g_device_peak.load(); }
void reset_device_bytes_peak() { g_device_peak.store(g_device_in_use.load()); }
size_t host_buffer_bytes_in_use() { return g_host_in_use.load(); }
size_t host_buffer_bytes_peak() { return g_host_peak.load(); }
size_t buffer_bytes_peak(Device d) { return d == Device::CPU ? host_buffer_bytes_peak() : device_bytes_peak(); }

Buffer Buffer::alloc(size_t bytes, Device device) {
  Buffer b;
  b.device_ = device;
  b.size_ = bytes;
  if (bytes == 0) return b;
  if (device == Device::CPU) {
    b.data_ = std::aligned_alloc(256, (bytes + 255) / 256 * 256);
    if (!b.data_) throw Error(fmt::format("out of host memory allocating {} bytes", bytes));
    track(g_host_in_use, g_host_peak, bytes);
  } else {
    b.data_ = cuda_rt::device_alloc(bytes);
    track(g_device_in_use, g_device_peak, bytes);
  }
  return b;
}

Buffer Buffer::alloc_pinned(size_t bytes) {
  Buffer b;
  b.size_ = bytes;
  if (bytes == 0) return b;
  b.data_ = cuda_rt::device_count() > 0 ? cuda_rt::host_alloc_pinned(bytes) : nullptr;
  if (b.data_) {
    b.pinned_ = true;
    return b;
  }
  b.data_ = std::aligned_alloc(256, (bytes + 255) / 256 * 256);
  if (!b.data_) throw Error(fmt::format("out of host memory allocating {} bytes", bytes));
  track(g_host_in_use, g_host_peak, bytes);  // released as a CPU buffer
  return b;
}

void Buffer::release() {
  if (!data_) return;
  if (device_ == Device::CPU) {
    if (pinned_) {
      cuda_rt::host_free_pinned(data_);
    } else {
      std::free(data_);
      g_host_in_use.fetch_sub(size_);
    }
  } else {
    cuda_rt::device_free(data_);
    g_device_in_use.fetch_sub(size_);
  }
  data_ = nullptr;
  size_ = 0;
}

Buffer::~Buffer() { release(); }

Buffer::Buffer(Buffer&& o) noexcept : data_(o.data_), size_(o.size_), device_(o.device_), pinned_(o.pinned_) {
  o.data_ = nullptr;
  o.size_ = 0;
  o.pinned_ = false;
}

Buffer& Buffer::operator=(Buffer&& o) noexcept {
  if (this != &o) {
    release();
    data_ = std::exchange(o.data_, nullptr);
    size_ = std::exchange(o.size_, 0);
    device_ = o.device_;
    pinned_ = std::exchange(o.pinned_, false);
  }
  return *this;
}

Tensor Buffer::as(DType t, std::initializer_list<int64_t> dims) const {
  Tensor v(data_, t, device_, dims);
  RLCU_CHECK(v.nbytes() <= size_, "buffer of {} bytes viewed as {} {}", size_, dtype_name(t), v.shape_str());
  return v;
}

OwnedTensor OwnedTensor::make(DType dt, Device dev, const std::vector<int64_t>& dims) {
  OwnedTensor o;
  Tensor probe(nullptr, dt, dev, dims);
  o.buf = Buffer::alloc(probe.nbytes(), dev);
  o.t = Tensor(o.buf.data(), dt, dev, dims);
  return o;
}

Tensor Arena::alloc(DType t, const std::vector<int64_t>& dims) {
  Tensor v(nullptr, t, buf_.device(), dims);
  const size_t bytes = (v.nbytes() + 255) / 256 * 256;
  if (used_ + bytes > buf_.size())
    throw Error(fmt::format("arena exhausted: need {} more bytes, {} of {} used", bytes, used_, buf_.size()));
  v.data = static_cast<char*>(buf_.data()) + used_;
  used_ += bytes;
  if (used_ > peak_) peak_ = used_;
  return v;
}

Tensor Arena::alloc(DType t, std::initializer_list<int64_t> dims) { return alloc(t, std::vector<int64_t>(dims)); }

void copy_bytes(const Tensor& dst, const Tensor& src) {
  RLCU_CHECK(dst.nbytes() == src.nbytes(), "copy_bytes size mismatch {} vs {}", dst.nbytes(), src.nbytes());
  if (dst.nbytes() == 0) return;
  if (dst.device == Device::CPU && src.device == Device::CPU) {
    std::memcpy(dst.data, src.data, dst.nbytes());
    return;
  }
  cuda_rt::copy(dst.data, src.data, dst.nbytes());
}

std::vector<float> to_host_f32(const Tensor& t) {
  const size_t n = static_cast<size_t>(t.numel());
  std::vector<char> raw(t.nbytes());
  copy_bytes(Tensor(raw.data(), t.dtype, Device::CPU, {static_cast<int64_t>(n)}), t.view({-1}));
  std::vector<float> out(n);
  switch (t.dtype) {
    case DType::F32: std::memcpy(out.data(), raw.data(), n * 4); break;
    case DType::BF16:
      for (size_t i = 0; i < n; ++i) out[i] = bf16_to_f32(reinterpret_cast<const uint16_t*>(raw.data())[i]);
      break;
    case DType::F16:
      for (size_t i = 0; i < n; ++i) out[i] = f16_to_f32(reinterpret_cast<const uint16_t*>(raw.data())[i]);
      break;
    case DType::I32:
      for (size_t i = 0; i < n; ++i) out[i] = static_cast<float>(reinterpret_cast<const int32_t*>(raw.data())[i]);
      break;
    default: RLCU_CHECK(false, "to_host_f32: unsupported dtype {}", dtype_name(t.dtype));
  }
  return out;
}

void from_host_f32(const Tensor& t, const std::vector<float>& v) {
  RLCU_CHECK(static_cast<int64_t>(v.size()) == t.numel(), "from_host_f32 size {} vs {}", v.size(), t.numel());
  const size_t n = v.size();
  std::vector<char> raw(t.nbytes());
  switch (t.dtype) {
    case DType::F32: std::memcpy(raw.data(), v.data(), n * 4); break;
    case DType::BF16:
      for (size_t i = 0; i < n; ++i) reinterpret_cast<uint16_t*>(raw.data())[i] = f32_to_bf16(v[i]);
      break;
    case DType::I32:
      for (size_t i = 0; i < n; ++i) reinterpret_cast<int32_t*>(raw.data())[i] = static_cast<int32_t>(v[i]);
      break;
    default: RLCU_CHECK(false, "from_host_f32: unsupported dtype {}", dtype_name(t.dtype));
  }
  copy_bytes(t.view({-1}), Tensor(raw.data(), t.dtype, Device::CPU, {static_cast<int64_t>(n)}));
}

}  // namespace rlcu
