// CPU elementwise ops over flat views (shapes may differ, element counts must match):
//   add:   out = a + b          (F32; out may alias a or b)
//   scale: out = s * x          (F32; out may alias x)
//   cast:  out = x converted    (F32, BF16 or F16 in; F32 or BF16 out; to BF16 rounds to nearest even)
//   fill:  out = value          (F32, BF16 rounded, or I32 when value is integral)
// Element counts (and scale's shared dtype) are checked by kernels/contract/elementwise.cpp; the checks here are the
// CPU twin's own (non-empty CPU tensors of the dtypes it supports).
// add and scale run on threads (rlcu/parallel.h) over fixed chunks of elements.
// No gradients live here: the model composes these with its own backward (a residual add passes dy to both
// inputs, a scale multiplies dy by s).
#include <cmath>

#include "backends.h"
#include "rlcu/parallel.h"
#include "reference.h"

namespace rlcu::cpu {
namespace ref {

template <class T>
void add_ref(T* out, const T* a, const T* b, int64_t n) {
  parallel_for(n, grain_for(1), [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) out[i] = a[i] + b[i];
  });
}

template <class T>
void scale_ref(T* out, const T* x, double s, int64_t n) {
  const T st = static_cast<T>(s);
  parallel_for(n, grain_for(1), [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) out[i] = st * x[i];
  });
}

template <class T>
void fill_ref(T* out, double value, int64_t n) {
  const T v = static_cast<T>(value);
  for (int64_t i = 0; i < n; ++i) out[i] = v;
}

#define RLCU_INSTANTIATE(T)                                       \
  template void add_ref<T>(T*, const T*, const T*, int64_t);     \
  template void scale_ref<T>(T*, const T*, double, int64_t);     \
  template void fill_ref<T>(T*, double, int64_t);
RLCU_INSTANTIATE(float)
RLCU_INSTANTIATE(double)
#undef RLCU_INSTANTIATE

}  // namespace ref

void add(const Tensor& out, const Tensor& a, const Tensor& b, Context& ctx) {
  check::tensor("add", "out", out, DType::F32);
  check::tensor("add", "a", a, DType::F32);
  check::tensor("add", "b", b, DType::F32);
  ref::add_ref<float>(out.ptr<float>(), a.ptr<float>(), b.ptr<float>(), out.numel());
}

void scale(const Tensor& out, const Tensor& x, float s, Context& ctx) {
  check::tensor("scale", "out", out, DType::F32);
  check::tensor("scale", "x", x, DType::F32);
  ref::scale_ref<float>(out.ptr<float>(), x.ptr<float>(), s, out.numel());
}

void cast(const Tensor& out, const Tensor& x, Context& ctx) {
  RLCU_CHECK(!out.empty() && !x.empty(), "cast: empty tensor (out {}, x {})", out.shape_str(), x.shape_str());
  RLCU_CHECK(out.device == Device::CPU && x.device == Device::CPU, "cast: tensors must be on cpu");
  const int64_t n = out.numel();
  auto load = [&](int64_t i) -> float {
    switch (x.dtype) {
      case DType::F32: return x.ptr<float>()[i];
      case DType::BF16: return bf16_to_f32(x.ptr<uint16_t>()[i]);
      default: return f16_to_f32(x.ptr<uint16_t>()[i]);
    }
  };
  RLCU_CHECK(x.dtype == DType::F32 || x.dtype == DType::BF16 || x.dtype == DType::F16,
             "cast: input dtype {} is not supported on cpu (f32, bf16, f16)", dtype_name(x.dtype));
  if (out.dtype == DType::F32) {
    float* o = out.ptr<float>();
    for (int64_t i = 0; i < n; ++i) o[i] = load(i);
  } else if (out.dtype == DType::BF16) {
    uint16_t* o = out.ptr<uint16_t>();
    for (int64_t i = 0; i < n; ++i) o[i] = f32_to_bf16(load(i));
  } else {
    RLCU_CHECK(false, "cast: output dtype {} is not supported on cpu (f32, bf16)", dtype_name(out.dtype));
  }
}

void fill(const Tensor& out, float value, Context& ctx) {
  RLCU_CHECK(!out.empty() && out.device == Device::CPU, "fill: out {} must be a cpu tensor", out.shape_str());
  const int64_t n = out.numel();
  switch (out.dtype) {
    case DType::F32: ref::fill_ref<float>(out.ptr<float>(), value, n); break;
    case DType::BF16: {
      const uint16_t b = f32_to_bf16(value);
      uint16_t* o = out.ptr<uint16_t>();
      for (int64_t i = 0; i < n; ++i) o[i] = b;
      break;
    }
    case DType::I32: {
      RLCU_CHECK(std::nearbyint(value) == value && value >= -2147483648.0f && value < 2147483648.0f,
                 "fill: value {} is not an int32 for an i32 tensor", value);
      int32_t* o = out.ptr<int32_t>();
      for (int64_t i = 0; i < n; ++i) o[i] = static_cast<int32_t>(value);
      break;
    }
    default: RLCU_CHECK(false, "fill: dtype {} is not supported on cpu (f32, bf16, i32)", dtype_name(out.dtype));
  }
}

}  // namespace rlcu::cpu
