// Counter-based Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11), callable
// from host and device code so that the CPU and CUDA implementations draw bit-identical random numbers.
//
//   philox4x32_10(counter[4], key[2]) -> 4 uint32 words; 10 rounds of the multipliers 0xD2511F53 / 0xCD9E8D57
//   and the Weyl key increments 0x9E3779B9 / 0xBB67AE85 (the reference constants).
//   uniform_open01(x) -> ((x >> 9) + 0.5) * 2^-23, a float in [2^-24, 1 - 2^-24], computed exactly in fp32
//   (23 bits, so that the largest value + 0.5 still has an exact fp32 representation below 1).
//
// Plain C++ when not compiled by nvcc; includable from .cpp and .cu files.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define RLCU_HD __host__ __device__ __forceinline__
#else
#define RLCU_HD inline
#endif

namespace rlcu::rng {

struct Philox4 {
  uint32_t v[4];
};

RLCU_HD Philox4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0, uint32_t k1) {
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u, kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
  for (int r = 0; r < 10; ++r) {
    const uint64_t p0 = static_cast<uint64_t>(kM0) * c0;
    const uint64_t p1 = static_cast<uint64_t>(kM1) * c2;
    const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
    const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
    k0 += kW0;
    k1 += kW1;
  }
  return Philox4{{c0, c1, c2, c3}};
}

RLCU_HD float uniform_open01(uint32_t x) {
  return (static_cast<float>(x >> 9) + 0.5f) * (1.0f / 8388608.0f);
}

}  // namespace rlcu::rng
