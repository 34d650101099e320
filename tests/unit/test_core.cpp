// Core: tensor views, arena, bf16 conversion, device parsing.
#include <gtest/gtest.h>

#include <cmath>

#include "rlcu/context.h"
#include "rlcu/tensor.h"

using namespace rlcu;

TEST(Core, Bf16RoundTripAndRounding) {
  EXPECT_EQ(bf16_to_f32(f32_to_bf16(1.0f)), 1.0f);
  EXPECT_EQ(bf16_to_f32(f32_to_bf16(-2.5f)), -2.5f);
  // 1 + 2^-8 is exactly halfway between two bf16 values: ties go to even (1.0).
  EXPECT_EQ(round_to_bf16(1.0f + std::ldexp(1.0f, -8)), 1.0f);
  EXPECT_EQ(round_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8)), 1.0f + std::ldexp(1.0f, -6));
  EXPECT_TRUE(std::isnan(round_to_bf16(std::nanf(""))));
}

TEST(Core, F16Conversion) {
  EXPECT_EQ(f16_to_f32(0x3c00), 1.0f);
  EXPECT_EQ(f16_to_f32(0xc000), -2.0f);
  EXPECT_EQ(f16_to_f32(0x0001), std::ldexp(1.0f, -24));
  EXPECT_TRUE(std::isinf(f16_to_f32(0x7c00)));
}

TEST(Core, ViewsAndSlices) {
  std::vector<float> data(24);
  for (int i = 0; i < 24; ++i) data[i] = float(i);
  Tensor t(data.data(), DType::F32, Device::CPU, {4, 6});
  EXPECT_EQ(t.numel(), 24);
  Tensor v = t.view({2, -1, 3});
  EXPECT_EQ(v.size(1), 4);
  Tensor s = t.slice_rows(1, 3);
  EXPECT_EQ(s.size(0), 2);
  EXPECT_EQ(s.ptr<float>()[0], 6.0f);
  EXPECT_THROW(t.view({5, 5}), InternalError);
  EXPECT_THROW(t.slice_rows(3, 5), InternalError);
}

TEST(Core, ArenaAlignsAndResets) {
  Arena a(4096, Device::CPU);
  Tensor x = a.alloc(DType::F32, {3});
  Tensor y = a.alloc(DType::BF16, {5});
  EXPECT_EQ(reinterpret_cast<uintptr_t>(y.data) % 256, 0u);
  EXPECT_NE(x.data, y.data);
  EXPECT_THROW(a.alloc(DType::F32, {10000}), Error);
  a.reset();
  EXPECT_EQ(a.used(), 0u);
  EXPECT_EQ(a.alloc(DType::F32, {1}).data, x.data);
}

TEST(Core, HostConversions) {
  auto o = OwnedTensor::make(DType::BF16, Device::CPU, {3});
  from_host_f32(o.t, {1.0f, 0.5f, -3.0f});
  auto back = to_host_f32(o.t);
  EXPECT_EQ(back, (std::vector<float>{1.0f, 0.5f, -3.0f}));
}

TEST(Core, ParseDevice) {
  int idx = -1;
  EXPECT_EQ(parse_device("cpu", "--device"), Device::CPU);
  EXPECT_EQ(parse_device("cuda:1", "--device", &idx), Device::CUDA);
  EXPECT_EQ(idx, 1);
  EXPECT_THROW(parse_device("gpu", "--device"), UsageError);
  EXPECT_THROW(parse_device("cuda:x", "--device"), UsageError);
}
