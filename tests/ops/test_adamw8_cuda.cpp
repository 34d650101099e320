// CUDA 8-bit AdamW (kernels/adamw8.cu) against its CPU twin (kernels/cpu/adamw8.cpp): both run the shared math of
// kernels/adamw8_common.h, so after several steps from the same state the F32 master, the U8 codes, the F32 absmax
// scales and the working weights (none, BF16, F32) must be equal bit for bit. Sizes 1, 255, 256, 257 and 100001
// (partial last block), weight decay on and off, a clipping scale, fresh random inputs per case (the seed is printed
// with any failure); every device output carries guard values that must stay untouched. Skipped without a GPU.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "ops/gpu_test_util.h"
#include "rlcu/ops.h"

using namespace rlcu;
using rlcu::test::fresh_seed;
using rlcu::test::GuardedTensor;
using rlcu::test::make_guarded;
using rlcu::test::random_vec;

namespace {

std::vector<uint8_t> bytes_of(const Tensor& t) {
  std::vector<uint8_t> b(t.nbytes());
  copy_bytes(Tensor(b.data(), DType::U8, Device::CPU, {static_cast<int64_t>(b.size())}),
             Tensor(t.data, DType::U8, t.device, {static_cast<int64_t>(t.nbytes())}));
  return b;
}

// A guarded device tensor holding the bytes of a host tensor.
GuardedTensor to_device(const Tensor& h) {
  std::vector<int64_t> shape(h.shape, h.shape + h.ndim);
  GuardedTensor g = make_guarded(h.dtype, Device::CUDA, shape);
  copy_bytes(g.t, h);
  return g;
}

}  // namespace

TEST(OpsCuda, Adamw8MatchesCpuBitForBit) {
  RLCU_REQUIRE_CUDA();
  for (int64_t n : {int64_t(1), int64_t(255), int64_t(256), int64_t(257), int64_t(100001)})
    for (float wd : {0.0f, 0.1f})
      for (int wkind = 0; wkind < 3; ++wkind) {  // 0: no weights, 1: bf16, 2: f32
        const uint64_t seed = fresh_seed();
        const int64_t nb = (n + ops::kAdamw8Block - 1) / ops::kAdamw8Block;
        std::vector<float> master = random_vec(n, seed);
        OwnedTensor hm = OwnedTensor::make(DType::F32, Device::CPU, {n});
        std::memcpy(hm.t.data, master.data(), n * sizeof(float));
        OwnedTensor hmc = OwnedTensor::make(DType::U8, Device::CPU, {n}), hvc = OwnedTensor::make(DType::U8, Device::CPU, {n});
        OwnedTensor hma = OwnedTensor::make(DType::F32, Device::CPU, {nb}), hva = OwnedTensor::make(DType::F32, Device::CPU, {nb});
        for (const OwnedTensor* t : {&hmc, &hvc, &hma, &hva}) std::memset(t->t.data, 0, t->t.nbytes());
        const DType wt = wkind == 2 ? DType::F32 : DType::BF16;
        OwnedTensor hw = OwnedTensor::make(wt, Device::CPU, {n});
        GuardedTensor gm = to_device(hm.t), gmc = to_device(hmc.t), gvc = to_device(hvc.t), gma = to_device(hma.t),
                      gva = to_device(hva.t), gw = make_guarded(wt, Device::CUDA, {n});
        OwnedTensor hg = OwnedTensor::make(DType::F32, Device::CPU, {n});
        GuardedTensor gg = make_guarded(DType::F32, Device::CUDA, {n});
        for (int64_t step = 1; step <= 5; ++step) {
          // Gradients of mixed scales so that blocks hold small and large moments.
          std::vector<float> grad = random_vec(n, seed + step, -3.0f, 3.0f);
          for (int64_t i = 0; i < n; i += 7) grad[i] *= 1e-4f;
          std::memcpy(hg.t.data, grad.data(), n * sizeof(float));
          copy_bytes(gg.t, hg.t);
          ops::AdamWParams p;
          p.lr = 1e-3f;
          p.weight_decay = wd;
          p.grad_scale = 0.5f;
          p.step = step;
          ops::adamw8_update(hm.t, hmc.t, hma.t, hvc.t, hva.t, wkind ? hw.t : Tensor(), hg.t, p, Context::cpu());
          ops::adamw8_update(gm.t, gmc.t, gma.t, gvc.t, gva.t, wkind ? gw.t : Tensor(), gg.t, p, rlcu::test::gpu());
          rlcu::test::settle();
          const std::string tag = fmt::format("adamw8 n={} wd={} weights={} step={} seed={}", n, wd, wkind, step, seed);
          EXPECT_EQ(bytes_of(gm.t), bytes_of(hm.t)) << tag << ": master";
          EXPECT_EQ(bytes_of(gmc.t), bytes_of(hmc.t)) << tag << ": exp_avg codes";
          EXPECT_EQ(bytes_of(gvc.t), bytes_of(hvc.t)) << tag << ": exp_avg_sq codes";
          EXPECT_EQ(bytes_of(gma.t), bytes_of(hma.t)) << tag << ": exp_avg absmax";
          EXPECT_EQ(bytes_of(gva.t), bytes_of(hva.t)) << tag << ": exp_avg_sq absmax";
          if (wkind) {
            EXPECT_EQ(bytes_of(gw.t), bytes_of(hw.t)) << tag << ": weights";
          }
          for (const GuardedTensor* g : {&gm, &gmc, &gvc, &gma, &gva, &gw}) g->check_guards(tag);
          if (::testing::Test::HasFailure()) return;
        }
      }
}
