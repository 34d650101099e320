// Helpers for CUDA-vs-CPU op tests: visible skip without a GPU, one tolerance table per dtype, guarded device
// tensors (sentinel values after the end of every output must stay untouched), NaN-proof comparison, and fresh
// random inputs per test.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "rlcu/context.h"
#include "rlcu/tensor.h"
#if RLCU_WITH_CUDA
#include "rlcu/cuda_check.h"
#endif

namespace rlcu::test {

inline bool have_cuda() { return cuda_device_count() > 0; }

#define RLCU_REQUIRE_CUDA() \
  if (!::rlcu::test::have_cuda()) GTEST_SKIP() << "no CUDA device: GPU test skipped"

// Tolerances per dtype of the tensor under test: |got - want| <= abs + rel * |want| element-wise.
struct Tol {
  double rel;
  double abs;
};
inline Tol tol_for(DType t) {
  switch (t) {
    case DType::F32: return {1e-5, 1e-5};
    case DType::BF16: return {1e-2, 1e-2};
    case DType::F16: return {1e-3, 1e-3};
    default: return {0, 0};
  }
}

// Fresh random values: a new seed per call unless one is given (printed on failure through the `what` text).
inline uint64_t fresh_seed() {
  static std::random_device rd;
  return (static_cast<uint64_t>(rd()) << 32) ^ rd();
}
inline std::vector<float> random_vec(size_t n, uint64_t seed, float lo = -1.0f, float hi = 1.0f) {
  std::mt19937_64 g(seed);
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = d(g);
  return v;
}

// A device tensor followed by `kGuard` sentinel elements. check_guards() fails the test if any changed.
struct GuardedTensor {
  static constexpr int64_t kGuard = 64;
  OwnedTensor storage;
  Tensor t;
  std::vector<char> sentinel;

  void check_guards(const std::string& what) const {
    const size_t esz = dtype_size(t.dtype);
    std::vector<char> tail(kGuard * esz);
    Tensor guard(static_cast<char*>(t.data) + t.nbytes(), DType::U8, t.device,
                 {static_cast<int64_t>(tail.size())});
    copy_bytes(Tensor(tail.data(), DType::U8, Device::CPU, {static_cast<int64_t>(tail.size())}), guard);
    EXPECT_EQ(0, std::memcmp(tail.data(), sentinel.data(), tail.size())) << what << ": wrote past the end";
  }
};

inline GuardedTensor make_guarded(DType dt, Device dev, const std::vector<int64_t>& shape) {
  GuardedTensor g;
  Tensor probe(nullptr, dt, dev, shape);
  const int64_t n = probe.numel();
  g.storage = OwnedTensor::make(dt, dev, {n + GuardedTensor::kGuard});
  g.t = Tensor(g.storage.t.data, dt, dev, shape);
  const size_t esz = dtype_size(dt);
  g.sentinel.resize(GuardedTensor::kGuard * esz);
  for (size_t i = 0; i < g.sentinel.size(); ++i) g.sentinel[i] = static_cast<char>(0xA5 ^ (i * 7));
  // Poison the body with NaN-ish bytes (0xFF) so unwritten outputs are caught, then the guard with the sentinel.
  std::vector<char> body(probe.nbytes(), static_cast<char>(0xFF));
  body.insert(body.end(), g.sentinel.begin(), g.sentinel.end());
  copy_bytes(Tensor(g.storage.t.data, DType::U8, dev, {static_cast<int64_t>(body.size())}),
             Tensor(body.data(), DType::U8, Device::CPU, {static_cast<int64_t>(body.size())}));
  return g;
}

// Element-wise comparison; NaN or Inf in `got` always fails. Reports the worst element.
inline void expect_close(const std::vector<float>& got, const std::vector<float>& want, Tol tol,
                         const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  size_t bad = 0, worst = 0;
  double worst_excess = -1;
  for (size_t i = 0; i < got.size(); ++i) {
    const double g = got[i], w = want[i];
    const double lim = tol.abs + tol.rel * std::fabs(w);
    const double err = std::fabs(g - w);
    const bool ok = std::isfinite(g) && err <= lim;
    if (!ok) ++bad;
    const double excess = std::isfinite(g) ? err - lim : 1e300;
    if (excess > worst_excess) {
      worst_excess = excess;
      worst = i;
    }
  }
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << got.size() << " elements out of tolerance (rel "
                     << tol.rel << ", abs " << tol.abs << "); worst at " << worst << ": got " << got[worst]
                     << ", want " << want[worst];
}

// ---- shared plumbing of the CUDA-vs-CPU tests -------------------------------------------------------------------
inline Context& gpu() {
  static std::unique_ptr<Context> c = Context::cuda(0);
  return *c;
}
inline Context& host() { return Context::cpu(); }

// Settle before reading results and after uploads: the op stream and then the whole device.
inline void settle() {
  gpu().synchronize("test");
#if RLCU_WITH_CUDA
  RLCU_CUDA_CHECK(cudaDeviceSynchronize());
#endif
}

// v with every value rounded to what dt can hold (bf16), so CPU references see the GPU's inputs.
inline std::vector<float> rounded(std::vector<float> v, DType dt) {
  if (dt == DType::BF16)
    for (float& x : v) x = round_to_bf16(x);
  return v;
}

// Guarded device tensors: with values, without (outputs), and I32.
inline GuardedTensor dev(DType dt, const std::vector<int64_t>& shape, const std::vector<float>& v) {
  GuardedTensor g = make_guarded(dt, Device::CUDA, shape);
  from_host_f32(g.t, v);
  return g;
}
inline GuardedTensor dev_out(DType dt, const std::vector<int64_t>& shape) {
  return make_guarded(dt, Device::CUDA, shape);
}
inline GuardedTensor dev_i32(const std::vector<int64_t>& shape, std::vector<int32_t> v) {
  GuardedTensor g = make_guarded(DType::I32, Device::CUDA, shape);
  if (!v.empty()) copy_bytes(g.t, Tensor(v.data(), DType::I32, Device::CPU, shape));
  return g;
}

// Host views for the CPU twins.
inline Tensor hf(std::vector<float>& v, const std::vector<int64_t>& shape) {
  return Tensor(v.data(), DType::F32, Device::CPU, shape);
}
inline Tensor hi(std::vector<int32_t>& v, const std::vector<int64_t>& shape) {
  return Tensor(v.data(), DType::I32, Device::CPU, shape);
}

// A device result against the CPU twin's, and its guards.
inline void expect_tensor(const GuardedTensor& g, const std::vector<float>& want, Tol tol, const std::string& what) {
  settle();
  expect_close(to_host_f32(g.t), want, tol, what);
  g.check_guards(what);
}

}  // namespace rlcu::test
