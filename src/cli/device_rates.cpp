// Measured copy bandwidth and product rate of a device; the model's matmul parameter count (see device_rates.h).
#include "device_rates.h"

#include <algorithm>
#include <chrono>
#include <functional>
#include <random>
#include <vector>

#include "rlcu/ops.h"
#include "rlcu/tensor.h"

namespace rlcu::cli {

namespace {

// Median seconds per launch of `launch` over 5 timings of 10 launches, after one untimed batch.
double median_seconds(Context& ctx, const std::function<void()>& launch) {
  constexpr int kBatch = 10, kTimings = 5;
  auto batch = [&] {
    ctx.synchronize("device rates: before a batch");
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < kBatch; ++i) launch();
    ctx.synchronize("device rates: after a batch");
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / kBatch;
  };
  batch();
  std::vector<double> t;
  for (int i = 0; i < kTimings; ++i) t.push_back(batch());
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

// Normal(0, 1) values from `seed` into a F32 or BF16 tensor.
void fill_normal(const Tensor& t, uint64_t seed, Context& ctx) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd;
  const size_t n = static_cast<size_t>(t.numel());
  if (t.dtype == DType::BF16) {
    std::vector<uint16_t> h(n);
    for (auto& x : h) x = f32_to_bf16(nd(rng));
    ctx.upload(t, h.data());
  } else {
    std::vector<float> h(n);
    for (auto& x : h) x = nd(rng);
    ctx.upload(t, h.data());
  }
  ctx.synchronize("device rates: operands uploaded");
}

}  // namespace

DeviceRates measure_device_rates(Context& ctx) {
  const Device dev = ctx.device();
  const bool gpu = dev == Device::CUDA;
  DeviceRates r;
  {
    const int64_t n = gpu ? (int64_t(1) << 30) : (int64_t(64) << 20);
    OwnedTensor src = OwnedTensor::make(DType::U8, dev, {n});
    OwnedTensor dst = OwnedTensor::make(DType::U8, dev, {n});
    ctx.zero(src.t);  // (a copy's speed does not depend on the bytes)
    const double s = median_seconds(ctx, [&] { ctx.copy(dst.t, src.t); });
    r.copy_bytes_per_s = 2.0 * static_cast<double>(n) / s;
  }
  {
    const int64_t n = gpu ? 8192 : 512;
    const DType dt = gpu ? DType::BF16 : DType::F32;
    OwnedTensor a = OwnedTensor::make(dt, dev, {n, n});
    OwnedTensor b = OwnedTensor::make(dt, dev, {n, n});
    OwnedTensor c = OwnedTensor::make(dt, dev, {n, n});
    fill_normal(a.t, 1, ctx);  // random operands: a product of zeros runs faster than real data
    fill_normal(b.t, 2, ctx);
    ops::GemmParams p;
    p.trans_b = true;
    const double s = median_seconds(ctx, [&] { ops::gemm(c.t, a.t, b.t, p, ctx); });
    r.gemm_flops_per_s = 2.0 * static_cast<double>(n) * static_cast<double>(n) * static_cast<double>(n) / s;
  }
  return r;
}

double head_parameters(const ModelConfig& mc) {
  return static_cast<double>(mc.vocab_size) * static_cast<double>(mc.hidden_size);
}

double matmul_parameters(const ModelConfig& mc) {
  const double H = static_cast<double>(mc.hidden_size), I = static_cast<double>(mc.intermediate_size);
  const double q = static_cast<double>(mc.q_dim()), kv = static_cast<double>(mc.kv_dim());
  return static_cast<double>(mc.num_layers) * (H * (q + 2.0 * kv) + q * H + 3.0 * H * I) + head_parameters(mc);
}

}  // namespace rlcu::cli
