// Rates a benchmark divides its work by, measured on the card it runs on (not the vendor's figures), and the model
// arithmetic both benchmarks share.
//
// copy_bytes_per_s: a device-to-device copy of a large buffer, counting the bytes read plus the bytes written
// (1 GiB each way on a GPU, 64 MiB on the CPU). gemm_flops_per_s: 2·M·N·K over the time of one square product in the
// activation dtype (bf16 8192³ on a GPU, fp32 512³ on the CPU). Each figure is the median of 5 timings of 10
// back-to-back launches between two synchronisations, after one warm-up timing; the host clock brackets each batch
// (the launch gaps are far below 1% at these sizes).
#pragma once

#include "rlcu/context.h"
#include "rlcu/model.h"

namespace rlcu::cli {

struct DeviceRates {
  double copy_bytes_per_s = 0;
  double gemm_flops_per_s = 0;
};

DeviceRates measure_device_rates(Context& ctx);

// Parameters that take part in a matrix product per token: every layer's q/k/v/o and MLP projections and the LM
// head (norms, biases and the embedding lookup excluded).
double matmul_parameters(const ModelConfig& mc);
// Of those, the LM head's.
double head_parameters(const ModelConfig& mc);

}  // namespace rlcu::cli
