// Pieces of the sampler (ops::sample) shared by kernels/cpu/sample.cpp and kernels/sample.cu, so that both pick
// the same token for the same logits and key:
//   sample_logit(x, inv_t)    z = x * inv_t in fp32 (inv_t = 1/temperature in fp32); NaN becomes -inf and -0
//                             becomes +0 (equal logits get equal keys)
//   order_key(z)              uint32 that orders like the float (thresholds are compared on these keys)
//   sample_noise(z, ...)      Gumbel score z - log(-log u) in fp64, u from Philox keyed by
//                             (seed, seq_id, position) with counter word 0 = vocabulary index / 4
//   check_sample_params(p)    rlcu::Error for parameters outside their ranges
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "philox.h"
#include "rlcu/error.h"
#include "rlcu/ops.h"

namespace rlcu::sampling {

// Counter word 3: separates the sampler's stream from other users of the same (seed, sequence, position) key.
constexpr uint32_t kSampleDomain = 0x53414D50u;
// A token whose scaled logit is this far below the maximum can never win the Gumbel race: the noise lies in
// [-log(-log 2^-24), -log(-log(1 - 2^-24))] = [-2.82, 16.64]. Used only to skip work.
constexpr float kNoiseSpan = 24.0f;

RLCU_HD float sample_logit(float x, float inv_t) {
  const float z = x * inv_t + 0.0f;  // + 0 turns -0 into +0 (not folded away without fast-math)
  return z != z ? -INFINITY : z;
}

RLCU_HD uint32_t order_key(float f) {
  uint32_t u;
#if defined(__CUDA_ARCH__)
  u = __float_as_uint(f);
#else
  std::memcpy(&u, &f, 4);
#endif
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// The four uniforms of vocabulary entries [4*group, 4*group + 4) of row (seq_id, position).
RLCU_HD rng::Philox4 sample_bits(uint64_t seed, int32_t seq_id, int32_t position, uint32_t group) {
  return rng::philox4x32_10(group, static_cast<uint32_t>(position), static_cast<uint32_t>(seq_id), kSampleDomain,
                            static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

// Gumbel-perturbed score of a token with scaled logit z and random word `bits`.
RLCU_HD double sample_score(float z, uint32_t bits) {
  const double u = static_cast<double>(rng::uniform_open01(bits));
  return static_cast<double>(z) - log(-log(u));
}

inline void check_sample_params(const ops::SampleParams& p) {
  if (!(p.temperature > 0.0f) || !std::isfinite(p.temperature))
    throw Error(fmt::format("sampling: temperature must be a finite number > 0, got {}", p.temperature));
  if (p.top_k < 0) throw Error(fmt::format("sampling: top_k must be >= 0 (0 = off), got {}", p.top_k));
  if (!(p.top_p > 0.0f && p.top_p <= 1.0f))
    throw Error(fmt::format("sampling: top_p must be in (0, 1] (1 = off), got {}", p.top_p));
  if (!(p.min_p >= 0.0f && p.min_p <= 1.0f))
    throw Error(fmt::format("sampling: min_p must be in [0, 1] (0 = off), got {}", p.min_p));
}

}  // namespace rlcu::sampling
