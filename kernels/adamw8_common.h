// 8-bit AdamW math shared by kernels/cpu/adamw8.cpp and kernels/adamw8.cu, so that both give the same bits for the
// same state (the op is described in include/rlcu/ops.h, ops::adamw8_update).
//
// State: the two moments of n elements are stored blockwise-quantised, kAdamw8Block = 256 elements per block:
//   exp_avg     U8 codes [n] into the SIGNED dynamic table, plus F32 absmax [ceil(n / 256)]
//   exp_avg_sq  U8 codes [n] into the UNSIGNED dynamic table, plus F32 absmax [ceil(n / 256)]
//   value = table[code] * absmax[block].
// Dynamic tables (the "dynamic tree" codes of 8-bit optimizers, Dettmers et al. 2022): for exponent e = 0..6 the
// interval [0.1, 1] is cut into 2^e (signed) or 2^(e+1) (unsigned) equal bins and each bin's midpoint is scaled by
// 10^(e-6); signed adds the negatives of the 127 positive values, both add 0 and 1. Sorted ascending, 256 values:
//   signed   [-0.993, ..., -5.5e-7, 0, 5.5e-7, ..., 0.993, 1]   (0 is code 127)
//   unsigned [0, 3.25e-7, ..., 0.996, 1]                        (0 is code 0)
// Near magnitude 10^(e-6) (relative to the block's absmax) the codes are 0.9 * 10^(e-6) / 2^e (signed) or half of
// that (unsigned) apart; values below 2.75e-7 (signed) or 1.6e-7 (unsigned) of the absmax round to 0.
//
// One update of block b (elements i of the block, i < n):
//   m_i, v_i    dequantised with the block's stored absmax
//   g = grad_i * grad_scale;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g g       (fp32, fresh values)
//   master_i -= lr * ((m / bc1) / (sqrt(v / bc2) + eps) + wd * master_i)           (with the fresh m, v)
//   absmax_m = max_i |m_i|, absmax_v = max_i v_i over the block; codes = nearest table entry of m / absmax_m and
//   v / absmax_v (ties to the lower code; absmax 0 stores code "0" for every element).
// Every step is one correctly rounded fp32 operation (device code uses the __f*_rn intrinsics so nothing is
// contracted into an FMA; host code is compiled without FMA contraction), the tables are built once on the host
// and handed to the kernel, and max is order-independent: CPU and CUDA results are bit-identical.
// Plain C++ when not compiled by nvcc.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "philox.h"  // RLCU_HD

namespace rlcu::adamw8 {

constexpr int kBlock = 256;
constexpr int kCodes = 256;
constexpr int kSignedZero = 127;  // code of 0 in the signed table
constexpr int kUnsignedZero = 0;  // code of 0 in the unsigned table

struct Tables {
  float sgn[kCodes];  // exp_avg
  float uns[kCodes];  // exp_avg_sq
};

// The update's fp32 constants, computed once on the host from ops::AdamWParams.
struct Consts {
  float lr, b1, omb1, b2, omb2, eps, wd, grad_scale, inv_bc1, inv_bc2;
};

RLCU_HD float mul(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
RLCU_HD float add(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
RLCU_HD float sub(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}
RLCU_HD float div(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}
RLCU_HD float sqrt_rn(float a) {
#if defined(__CUDA_ARCH__)
  return __fsqrt_rn(a);
#else
  return std::sqrt(a);
#endif
}

// BF16 bits of f rounded to nearest even (NaN stays a quiet NaN).
RLCU_HD uint16_t bf16_bits(float f) {
  uint32_t u;
#if defined(__CUDA_ARCH__)
  u = __float_as_uint(f);
#else
  std::memcpy(&u, &f, sizeof(u));
#endif
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

// Nearest entry of the sorted table t[256] to x (ties to the lower code); x is clamped to [t[0], t[255]].
RLCU_HD uint8_t quantise(const float* t, float x) {
  if (!(x > t[0])) return 0;
  if (!(x < t[kCodes - 1])) return kCodes - 1;
  int lo = 0, hi = kCodes - 1;  // t[lo] < x < t[hi]
  while (hi - lo > 1) {
    const int mid = (lo + hi) / 2;
    if (t[mid] <= x) lo = mid;
    else hi = mid;
  }
  return sub(x, t[lo]) <= sub(t[hi], x) ? static_cast<uint8_t>(lo) : static_cast<uint8_t>(hi);
}

RLCU_HD float dequantise(const float* t, uint8_t code, float absmax) { return mul(t[code], absmax); }

// The code of `x` in a block with absmax `absmax` (absmax 0: the table's zero).
RLCU_HD uint8_t quantise_scaled(const float* t, float x, float absmax, int zero_code) {
  if (absmax == 0.0f) return static_cast<uint8_t>(zero_code);
  return quantise(t, div(x, absmax));
}

// One element: updates m, v (fresh fp32 values) and master; returns the new master.
RLCU_HD float update_one(float& master, float& m, float& v, float grad, const Consts& c) {
  const float g = mul(grad, c.grad_scale);
  m = add(mul(c.b1, m), mul(c.omb1, g));
  v = add(mul(c.b2, v), mul(mul(c.omb2, g), g));
  const float mhat = mul(m, c.inv_bc1), vhat = mul(v, c.inv_bc2);
  const float upd = add(div(mhat, add(sqrt_rn(vhat), c.eps)), mul(c.wd, master));
  master = sub(master, mul(c.lr, upd));
  return master;
}

// ---- host only (plain functions: not callable from device code) -----------------------------------------------

// The dynamic tables (see the file comment); built in double from exact decimal literals, then rounded to float.
inline Tables make_tables() {
  static const double kPow10[7] = {1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1e0};
  Tables tb{};
  for (int pass = 0; pass < 2; ++pass) {
    const bool sgn = pass == 0;
    double vals[kCodes];
    int k = 0;
    for (int e = 0; e < 7; ++e) {
      const int bins = sgn ? (1 << e) : (1 << (e + 1));
      for (int j = 0; j < bins; ++j) {
        const double lo = 0.1 + 0.9 * static_cast<double>(j) / bins;
        const double hi = 0.1 + 0.9 * static_cast<double>(j + 1) / bins;
        const double mean = kPow10[e] * ((lo + hi) / 2.0);
        vals[k++] = mean;
        if (sgn) vals[k++] = -mean;
      }
    }
    vals[k++] = 0.0;
    vals[k++] = 1.0;
    // insertion sort (256 values, once)
    for (int i = 1; i < k; ++i)
      for (int j = i; j > 0 && vals[j - 1] > vals[j]; --j) {
        const double t = vals[j];
        vals[j] = vals[j - 1];
        vals[j - 1] = t;
      }
    float* out = sgn ? tb.sgn : tb.uns;
    for (int i = 0; i < kCodes; ++i) out[i] = static_cast<float>(vals[i]);
  }
  return tb;
}

inline const Tables& tables() {
  static const Tables t = make_tables();
  return t;
}

inline int64_t num_blocks(int64_t n) { return (n + kBlock - 1) / kBlock; }

// lr, betas, eps, decay and clipping scale as fp32; bias corrections in double, then fp32 (as ops::adamw_update).
template <class P>
Consts make_consts(const P& p) {
  const double bc1 = 1.0 - std::pow(static_cast<double>(p.beta1), static_cast<double>(p.step));
  const double bc2 = 1.0 - std::pow(static_cast<double>(p.beta2), static_cast<double>(p.step));
  Consts c;
  c.lr = p.lr;
  c.b1 = p.beta1;
  c.omb1 = 1.0f - p.beta1;
  c.b2 = p.beta2;
  c.omb2 = 1.0f - p.beta2;
  c.eps = p.eps;
  c.wd = p.weight_decay;
  c.grad_scale = p.grad_scale;
  c.inv_bc1 = static_cast<float>(1.0 / bc1);
  c.inv_bc2 = static_cast<float>(1.0 / bc2);
  return c;
}

}  // namespace rlcu::adamw8
