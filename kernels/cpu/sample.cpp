// CPU sampler (ops::sample; math and semantics in include/rlcu/ops.h). Per row b of logits[B,V]:
//   z_j = logits[b,j] * (1/temperature) in fp32 (NaN -> -inf); m = max z; lse = m + log(sum_j exp(z_j - m)) (fp64)
//   greedy: token = first j with z_j == m.
//   otherwise: kth = the top_k-th largest z over finite tokens (nth_element);
//              pth = walking the tokens with z >= kth in decreasing z, the z at which the running sum of
//                    e_j = expf(z_j - m) (fp64 sum) first reaches top_p * (sum of e over that set);
//              min-p bound m + logf(min_p);
//              token = argmax over kept j (order_key(z_j) >= the largest bound) of z_j - log(-log u_j) in fp64,
//                      lowest index on ties, u_j from sampling::sample_bits (shared with the CUDA kernel).
//   logprobs[b] = z_token - lse.  Rows without a finite maximum: token -1, logprob -inf.
// No gradients: this op produces tokens, not differentiable values. Parameters, dtypes and sizes are checked by
// kernels/contract/sample.cpp; the CPU twin takes 1-D token, position and log-prob vectors.
#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>
#include <vector>

#include "sample_common.h"
#include "backends.h"
#include "reference.h"

namespace rlcu::cpu {

namespace {

void check_sample_args(const Tensor& tokens, const Tensor& logprobs, const Tensor& logits, const Tensor& seq_ids,
                       const Tensor& positions) {
  const int64_t B = logits.size(0);
  check::shape("sample", "tokens", tokens, {B});
  if (!logprobs.empty()) check::shape("sample", "logprobs", logprobs, {B});
  check::shape("sample", "seq_ids", seq_ids, {B});
  check::shape("sample", "positions", positions, {B});
}

// The top-k-th largest finite value of z, or -inf when top-k keeps every finite token.
float top_k_bound(const std::vector<float>& z, int top_k) {
  std::vector<float> fin;
  fin.reserve(z.size());
  for (float v : z)
    if (v != -INFINITY) fin.push_back(v);
  if (top_k <= 0 || static_cast<size_t>(top_k) >= fin.size()) return -INFINITY;
  std::nth_element(fin.begin(), fin.begin() + (top_k - 1), fin.end(),
                   [](float a, float b) { return sampling::order_key(a) > sampling::order_key(b); });
  return fin[top_k - 1];
}

// The largest z value t (t >= floor) such that the tokens with z >= t hold at least top_p of the mass of the
// tokens with z >= floor.
float top_p_bound(const std::vector<float>& z, float m, float floor, float top_p) {
  std::vector<std::pair<float, float>> cand;  // (z, e)
  const uint32_t floor_key = sampling::order_key(floor);
  for (float v : z)
    if (v != -INFINITY && sampling::order_key(v) >= floor_key) cand.emplace_back(v, std::exp(v - m));
  std::sort(cand.begin(), cand.end(), [](const auto& a, const auto& b) {
    return sampling::order_key(a.first) > sampling::order_key(b.first);
  });
  double total = 0.0;
  for (const auto& c : cand) total += c.second;
  const double target = static_cast<double>(static_cast<float>(top_p * static_cast<float>(total)));
  double run = 0.0;
  for (const auto& c : cand) {
    run += c.second;
    if (run >= target) return c.first;
  }
  return cand.empty() ? floor : cand.back().first;
}

}  // namespace

void sample(const Tensor& tokens, const Tensor& logprobs, const Tensor& logits, const Tensor& seq_ids,
            const Tensor& positions, const ops::SampleParams& p, Context& /*ctx*/) {
  check_sample_args(tokens, logprobs, logits, seq_ids, positions);
  const int64_t B = logits.size(0), V = logits.size(1);
  const float inv_t = 1.0f / p.temperature;
  std::vector<float> z(static_cast<size_t>(V));
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t j = 0; j < V; ++j) {
      const float x = logits.dtype == DType::F32 ? logits.ptr<float>()[b * V + j]
                                                 : bf16_to_f32(logits.ptr<uint16_t>()[b * V + j]);
      z[j] = sampling::sample_logit(x, inv_t);
    }
    float m = -INFINITY;
    int64_t arg = -1;
    for (int64_t j = 0; j < V; ++j)
      if (z[j] > m) {
        m = z[j];
        arg = j;
      }
    int32_t tok = -1;
    float lp = -INFINITY;
    if (std::isfinite(m)) {
      double sum = 0.0;
      for (int64_t j = 0; j < V; ++j) sum += std::exp(static_cast<double>(z[j]) - m);
      const double lse = m + std::log(sum);
      if (p.greedy) {
        tok = static_cast<int32_t>(arg);
      } else {
        float bound = top_k_bound(z, p.top_k);
        uint32_t bound_key = sampling::order_key(bound);
        if (p.top_p < 1.0f) bound_key = std::max(bound_key, sampling::order_key(top_p_bound(z, m, bound, p.top_p)));
        if (p.min_p > 0.0f) bound_key = std::max(bound_key, sampling::order_key(m + std::log(p.min_p)));
        const int32_t sid = seq_ids.ptr<int32_t>()[b], pos = positions.ptr<int32_t>()[b];
        double best = -std::numeric_limits<double>::infinity();
        for (int64_t j = 0; j < V; ++j) {
          if (z[j] == -INFINITY || sampling::order_key(z[j]) < bound_key) continue;
          const rng::Philox4 r = sampling::sample_bits(p.seed, sid, pos, static_cast<uint32_t>(j >> 2));
          const double s = sampling::sample_score(z[j], r.v[j & 3]);
          if (tok < 0 || s > best) {
            best = s;
            tok = static_cast<int32_t>(j);
          }
        }
      }
      lp = static_cast<float>(static_cast<double>(z[tok]) - lse);
    }
    tokens.ptr<int32_t>()[b] = tok;
    if (!logprobs.empty()) logprobs.ptr<float>()[b] = lp;
  }
}

}  // namespace rlcu::cpu
