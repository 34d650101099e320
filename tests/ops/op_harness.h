// The CUDA-vs-CPU harness that an op joins with a small case description (tests/ops/test_backend_ops.cpp lists the
// cases). A case names the op's tensor arguments in call order and how to call the op on them:
//   in(name, shape, dtype, lo, hi)   random input in [lo, hi) (rounded to dtype, so both backends see equal values)
//   inout(name, shape, dtype, ...)   an accumulated output (+=): both sides start from the same random values
//   out(name, shape, dtype)          an overwritten output (the device copy starts as NaN bytes)
//   ints(name, shape, dtype, v)      integer input with the given values (I32, I64 or U8)
//   none(name)                       an empty Tensor (an optional argument left out)
// run_case() builds the arguments twice — F32 CPU tensors (integers keep their dtype) and guarded CUDA tensors of the
// given dtypes — calls `run` on each (which reaches the CPU twin and the CUDA kernel through the public dispatch),
// then compares every out/inout argument: NaN or Inf fails, the guard bytes after each device tensor must be
// untouched, and values must agree within the dtype's tolerance (gpu_test_util.h) or the argument's own.
#pragma once

#include <fmt/format.h>

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "ops/gpu_test_util.h"

namespace rlcu::test {

struct Arg {
  enum Kind { In, InOut, Out, Index, None } kind = In;
  std::string name;
  std::vector<int64_t> shape;
  DType dtype = DType::F32;
  float lo = -1.0f, hi = 1.0f;
  std::vector<int64_t> values;  // Index
  std::optional<Tol> tol;       // outputs: instead of tol_for(dtype)
};

inline Arg in(std::string name, std::vector<int64_t> shape, DType dt = DType::F32, float lo = -1.0f, float hi = 1.0f) {
  return {Arg::In, std::move(name), std::move(shape), dt, lo, hi, {}, {}};
}
inline Arg inout(std::string name, std::vector<int64_t> shape, DType dt = DType::F32, float lo = -1.0f,
                 float hi = 1.0f) {
  return {Arg::InOut, std::move(name), std::move(shape), dt, lo, hi, {}, {}};
}
inline Arg out(std::string name, std::vector<int64_t> shape, DType dt = DType::F32, std::optional<Tol> tol = {}) {
  return {Arg::Out, std::move(name), std::move(shape), dt, 0.0f, 0.0f, {}, tol};
}
inline Arg ints(std::string name, std::vector<int64_t> shape, DType dt, std::vector<int64_t> values) {
  return {Arg::Index, std::move(name), std::move(shape), dt, 0.0f, 0.0f, std::move(values), {}};
}
inline Arg none(std::string name) { return {Arg::None, std::move(name), {}, DType::F32, 0.0f, 0.0f, {}, {}}; }

struct OpCase {
  std::string name;
  std::vector<Arg> args;
  // Calls the op on the arguments (in the order of `args`) with the context of their device.
  std::function<void(const std::vector<Tensor>& t, Context& ctx)> run;
};

namespace harness_detail {

inline std::vector<uint8_t> index_bytes(const Arg& a) {
  const size_t esz = dtype_size(a.dtype);
  std::vector<uint8_t> b(a.values.size() * esz);
  for (size_t i = 0; i < a.values.size(); ++i) {
    const int64_t v = a.values[i];
    if (a.dtype == DType::I64) std::memcpy(&b[i * esz], &v, esz);
    else if (a.dtype == DType::I32) {
      const int32_t x = static_cast<int32_t>(v);
      std::memcpy(&b[i * esz], &x, esz);
    } else {
      b[i] = static_cast<uint8_t>(v);
    }
  }
  return b;
}

}  // namespace harness_detail

// Runs one case on both backends with inputs drawn from `seed` and compares the outputs.
inline void run_case(const OpCase& c, uint64_t seed) {
  const std::string tag = fmt::format("{} seed={}", c.name, seed);
  const size_t n = c.args.size();
  std::vector<std::vector<float>> host_f32(n);
  std::vector<std::vector<uint8_t>> host_raw(n);
  std::vector<GuardedTensor> dev_args(n);
  std::vector<Tensor> cpu_t(n), gpu_t(n);
  for (size_t i = 0; i < n; ++i) {
    const Arg& a = c.args[i];
    switch (a.kind) {
      case Arg::None: break;
      case Arg::Index: {
        host_raw[i] = harness_detail::index_bytes(a);
        cpu_t[i] = Tensor(host_raw[i].data(), a.dtype, Device::CPU, a.shape);
        dev_args[i] = make_guarded(a.dtype, Device::CUDA, a.shape);
        if (!host_raw[i].empty()) copy_bytes(dev_args[i].t, cpu_t[i]);
        gpu_t[i] = dev_args[i].t;
        break;
      }
      case Arg::In:
      case Arg::InOut:
      case Arg::Out: {
        const int64_t numel = Tensor(nullptr, a.dtype, Device::CPU, a.shape).numel();
        host_f32[i] = a.kind == Arg::Out ? std::vector<float>(static_cast<size_t>(numel), 0.0f)
                                         : rounded(random_vec(static_cast<size_t>(numel), seed + i, a.lo, a.hi),
                                                   a.dtype);
        cpu_t[i] = Tensor(host_f32[i].data(), DType::F32, Device::CPU, a.shape);
        dev_args[i] = a.kind == Arg::Out ? dev_out(a.dtype, a.shape) : dev(a.dtype, a.shape, host_f32[i]);
        gpu_t[i] = dev_args[i].t;
        break;
      }
    }
  }
  c.run(cpu_t, host());
  settle();
  c.run(gpu_t, gpu());
  for (size_t i = 0; i < n; ++i) {
    const Arg& a = c.args[i];
    if (a.kind != Arg::Out && a.kind != Arg::InOut) continue;
    expect_tensor(dev_args[i], host_f32[i], a.tol ? *a.tol : tol_for(a.dtype), tag + " " + a.name);
  }
  for (size_t i = 0; i < n; ++i)
    if (c.args[i].kind != Arg::None) dev_args[i].check_guards(tag + " " + c.args[i].name);
}

}  // namespace rlcu::test
