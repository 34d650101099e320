// CPU fused log-prob head.
//   z[t,v] = (hidden[t,:] . weight[v,:]) * inv_temperature      hidden[T,H], weight[V,H] (F32), targets[T] (I32)
//   lse[t] = log sum_v exp z[t,v]
//   logprob[t] = z[t, targets[t]] - lse[t]
//   entropy[t] = lse[t] - sum_v p[t,v] z[t,v],  p = softmax(z)          (entropy may be empty: not computed)
// targets[t] < 0 marks a row without a target: logprob = entropy = 0 there (lse is still written) and the row
// gets no gradient. A target >= V throws rlcu::Error.
// Backward with a = dlogprob[t], b = dentropy[t] (0 when dentropy is empty):
//   dz[t,v] = (a (onehot_v - p_v) - b p_v (z_v - E_p[z])) * inv_temperature
//   dhidden = dz @ weight   (activation gradient: OVERWRITE)
//   dweight += dz^T @ hidden (parameter gradient: ACCUMULATE; skipped when dweight is null / empty)
// Like the CUDA kernel, no [T,V] logits tensor is held: the vocabulary is walked in blocks of kVocabBlock rows of
// `weight` (one block = one saved-softmax segment, ops::kLogprobSegment), the forward keeps a running (max, sum exp,
// sum exp*z) per token, and the backward recomputes the logits block by block (one extra pass for E_p[z] when
// dentropy is given), or, with the saved softmax (probs, stats), reads p and z from it instead. Everything
// accumulates in double.
// Threads (rlcu/parallel.h) take fixed chunks of tokens (per-token statistics, dz, dhidden) or of vocabulary rows
// (dweight, summed over the tokens in order), so every sum runs in the same order on any number of threads.
// Shapes, dtypes, inv_temperature and the saved softmax are checked by kernels/contract/logprob.cpp; the CPU twin
// takes non-empty 2-D F32 tensors.
#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>
#include <vector>

#include "backends.h"
#include "rlcu/parallel.h"
#include "reference.h"

namespace rlcu::cpu {
namespace ref {

namespace {
constexpr int64_t kVocabBlock = ops::kLogprobSegment;

void check_targets(const char* op, const int32_t* targets, int64_t tokens, int64_t vocab) {
  for (int64_t t = 0; t < tokens; ++t)
    if (targets[t] >= vocab)
      throw Error(fmt::format("{}: target token {} at position {} is outside the vocabulary [0, {})", op, targets[t],
                              t, vocab));
}

// z[tokens, nb] = hidden @ weight[v0 : v0+nb]^T * inv_temperature.
template <class T>
void logits_block(std::vector<double>& z, const T* hidden, const T* weight, int64_t v0, int64_t nb,
                  const LogprobDims& d) {
  matmul_f64(z.data(), hidden, weight + v0 * d.hidden, d.tokens, nb, d.hidden, false, true);
  parallel_for(d.tokens * nb, grain_for(1), [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) z[i] *= d.inv_temperature;
  });
}
}  // namespace

template <class T>
void logprob_fwd_ref(T* logprob, T* entropy, T* lse, const T* hidden, const T* weight, const int32_t* targets,
                     const LogprobDims& d, T* probs, T* stats) {
  check_targets("logprob_fwd", targets, d.tokens, d.vocab);
  const int64_t tokens = d.tokens, scols = ops::logprob_prob_stats_cols(d.vocab);
  std::vector<double> mx(tokens, -std::numeric_limits<double>::infinity()), sum_e(tokens, 0.0), sum_ez(tokens, 0.0),
      z_target(tokens, 0.0), z(static_cast<size_t>(tokens * std::min(kVocabBlock, d.vocab)));
  for (int64_t v0 = 0; v0 < d.vocab; v0 += kVocabBlock) {
    const int64_t nb = std::min(kVocabBlock, d.vocab - v0);
    logits_block(z, hidden, weight, v0, nb, d);
    parallel_for(tokens, grain_for(4 * nb), [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const double* zr = z.data() + t * nb;
      const double bm = *std::max_element(zr, zr + nb);
      const double m_new = std::max(mx[t], bm);
      if (probs) {
        stats[t * scols + v0 / kVocabBlock] = static_cast<T>(bm);
        for (int64_t j = 0; j < nb; ++j) probs[t * d.vocab + v0 + j] = static_cast<T>(std::exp(zr[j] - bm));
      }
      const double rescale = std::exp(mx[t] - m_new);
      double se = sum_e[t] * rescale, sez = sum_ez[t] * rescale;
      for (int64_t j = 0; j < nb; ++j) {
        const double e = std::exp(zr[j] - m_new);
        se += e;
        sez += e * zr[j];
      }
      mx[t] = m_new;
      sum_e[t] = se;
      sum_ez[t] = sez;
      if (targets[t] >= v0 && targets[t] < v0 + nb) z_target[t] = zr[targets[t] - v0];
    }
    });
  }
  for (int64_t t = 0; t < tokens; ++t) {
    const double l = mx[t] + std::log(sum_e[t]);
    lse[t] = static_cast<T>(l);
    const bool active = targets[t] >= 0;
    logprob[t] = static_cast<T>(active ? z_target[t] - l : 0.0);
    if (entropy) entropy[t] = static_cast<T>(active ? l - sum_ez[t] / sum_e[t] : 0.0);
    if (stats) {
      stats[t * scols + scols - 2] = static_cast<T>(active ? z_target[t] : 0.0);
      stats[t * scols + scols - 1] = static_cast<T>(sum_ez[t] / sum_e[t]);
    }
  }
}

namespace {
// The softmax p and logits z of tokens x [v0, v0 + nb) from the saved softmax (see ops.h): z is only meaningful
// where p > 0 (a probability that underflowed carries no gradient).
template <class T>
void saved_block(std::vector<double>& p, std::vector<double>& z, const T* probs, const T* stats, const T* lse,
                 const int32_t* targets, int64_t v0, int64_t nb, const LogprobDims& d) {
  const int64_t scols = ops::logprob_prob_stats_cols(d.vocab);
  parallel_for(d.tokens, grain_for(4 * nb), [&](int64_t t0, int64_t t1) {
  for (int64_t t = t0; t < t1; ++t) {
    const T* st = stats + t * scols;
    const double m = static_cast<double>(st[v0 / kVocabBlock]), l = static_cast<double>(lse[t]);
    for (int64_t j = 0; j < nb; ++j) {
      const double e = static_cast<double>(probs[t * d.vocab + v0 + j]);
      double& pj = p[t * nb + j];
      double& zj = z[t * nb + j];
      if (v0 + j == targets[t]) {
        zj = static_cast<double>(st[scols - 2]);
        pj = std::exp(zj - l);
      } else {
        pj = e * std::exp(m - l);
        zj = e > 0.0 ? m + std::log(e) : 0.0;
      }
    }
  }
  });
}
}  // namespace

template <class T>
void logprob_bwd_ref(T* dhidden, T* dweight, const T* dlogprob, const T* dentropy, const T* hidden, const T* weight,
                     const int32_t* targets, const T* lse, const LogprobDims& d, const T* probs, const T* stats) {
  check_targets("logprob_bwd", targets, d.tokens, d.vocab);
  const int64_t tokens = d.tokens, H = d.hidden;
  std::vector<double> z(static_cast<size_t>(tokens * std::min(kVocabBlock, d.vocab))), p(probs ? z.size() : 0);
  // E_p[z] per token: only needed for the entropy term.
  std::vector<double> mean_z(tokens, 0.0);
  if (dentropy && probs) {
    const int64_t scols = ops::logprob_prob_stats_cols(d.vocab);
    for (int64_t t = 0; t < tokens; ++t) mean_z[t] = static_cast<double>(stats[t * scols + scols - 1]);
  } else if (dentropy) {
    for (int64_t v0 = 0; v0 < d.vocab; v0 += kVocabBlock) {
      const int64_t nb = std::min(kVocabBlock, d.vocab - v0);
      logits_block(z, hidden, weight, v0, nb, d);
      parallel_for(tokens, grain_for(4 * nb), [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; ++t) {
          const double l = static_cast<double>(lse[t]);
          const double* zr = z.data() + t * nb;
          for (int64_t j = 0; j < nb; ++j) mean_z[t] += std::exp(zr[j] - l) * zr[j];
        }
      });
    }
  }
  std::vector<double> dh(static_cast<size_t>(tokens * H), 0.0), dw(static_cast<size_t>(std::min(kVocabBlock, d.vocab) * H));
  for (int64_t v0 = 0; v0 < d.vocab; v0 += kVocabBlock) {
    const int64_t nb = std::min(kVocabBlock, d.vocab - v0);
    if (probs) saved_block(p, z, probs, stats, lse, targets, v0, nb, d);
    else logits_block(z, hidden, weight, v0, nb, d);
    // z becomes dz in place; then dhidden += dz @ weight per token.
    parallel_for(tokens, grain_for(nb * (4 + H)), [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      double* zr = z.data() + t * nb;
      if (targets[t] < 0) {
        std::fill(zr, zr + nb, 0.0);
        continue;
      }
      const double a = static_cast<double>(dlogprob[t]);
      const double b = dentropy ? static_cast<double>(dentropy[t]) : 0.0;
      const double l = static_cast<double>(lse[t]);
      for (int64_t j = 0; j < nb; ++j) {
        const double pj = probs ? p[t * nb + j] : std::exp(zr[j] - l);
        const double onehot = (v0 + j == targets[t]) ? 1.0 : 0.0;
        const double ent = pj > 0.0 ? b * pj * (zr[j] - mean_z[t]) : 0.0;
        zr[j] = (a * (onehot - pj) - ent) * d.inv_temperature;
      }
    }
    for (int64_t t = t0; t < t1; ++t) {
      const double* dzr = z.data() + t * nb;
      double* dhr = dh.data() + t * H;
      for (int64_t j = 0; j < nb; ++j) {
        const double g = dzr[j];
        if (g == 0.0) continue;
        const T* wr = weight + (v0 + j) * H;
        for (int64_t h = 0; h < H; ++h) dhr[h] += g * static_cast<double>(wr[h]);
      }
    }
    });
    if (!dweight) continue;  // no head gradient wanted (a frozen head)
    // dweight rows of this block: each sums over the tokens in order.
    T* dwout = dweight + v0 * H;
    parallel_for(nb, grain_for(tokens * H), [&](int64_t j0, int64_t j1) {
      for (int64_t j = j0; j < j1; ++j) {
        double* dwr = dw.data() + j * H;
        std::fill(dwr, dwr + H, 0.0);
        for (int64_t t = 0; t < tokens; ++t) {
          if (targets[t] < 0) continue;
          const double g = z[t * nb + j];
          const T* hr = hidden + t * H;
          for (int64_t h = 0; h < H; ++h) dwr[h] += g * static_cast<double>(hr[h]);
        }
        for (int64_t h = 0; h < H; ++h) dwout[j * H + h] = static_cast<T>(static_cast<double>(dwout[j * H + h]) + dwr[h]);
      }
    });
  }
  parallel_for(tokens * H, grain_for(1), [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) dhidden[i] = static_cast<T>(dh[i]);
  });
}

#define RLCU_INSTANTIATE(T)                                                                                   \
  template void logprob_fwd_ref<T>(T*, T*, T*, const T*, const T*, const int32_t*, const LogprobDims&, T*, T*); \
  template void logprob_bwd_ref<T>(T*, T*, const T*, const T*, const T*, const T*, const int32_t*, const T*,     \
                                   const LogprobDims&, const T*, const T*);
RLCU_INSTANTIATE(float)
RLCU_INSTANTIATE(double)
#undef RLCU_INSTANTIATE

}  // namespace ref

namespace {
ref::LogprobDims logprob_dims(const char* op, const Tensor& hidden, const Tensor& weight, const Tensor& targets,
                              const ops::LogprobParams& p) {
  check::tensor(op, "hidden", hidden, DType::F32, 2);
  check::tensor(op, "weight", weight, DType::F32, 2);
  ref::LogprobDims d;
  d.tokens = hidden.shape[0];
  d.hidden = hidden.shape[1];
  d.vocab = weight.shape[0];
  d.inv_temperature = p.inv_temperature;
  return d;
}

// The saved softmax of p (both tensors or neither): {probs, stats} pointers, null when not used.
std::pair<float*, float*> saved_softmax(const char* op, const ops::LogprobParams& p) {
  if (!p.probs) return {nullptr, nullptr};
  check::tensor(op, "probs", *p.probs, DType::F32, 2);
  check::tensor(op, "prob_stats", *p.prob_stats, DType::F32, 2);
  return {p.probs->ptr<float>(), p.prob_stats->ptr<float>()};
}
}  // namespace

void logprob_fwd(const Tensor& logprob, const Tensor& entropy, const Tensor& lse, const Tensor& hidden,
                 const Tensor& weight, const Tensor& targets, const ops::LogprobParams& p, Context& ctx) {
  const char* op = "logprob_fwd";
  const ref::LogprobDims d = logprob_dims(op, hidden, weight, targets, p);
  const auto [probs, stats] = saved_softmax(op, p);
  ref::logprob_fwd_ref<float>(logprob.ptr<float>(), entropy.empty() ? nullptr : entropy.ptr<float>(),
                              lse.ptr<float>(), hidden.ptr<float>(), weight.ptr<float>(), targets.ptr<int32_t>(), d,
                              probs, stats);
}

void logprob_bwd(const Tensor& dhidden, const Tensor& dweight, const Tensor& dlogprob, const Tensor& dentropy,
                 const Tensor& hidden, const Tensor& weight, const Tensor& targets, const Tensor& lse,
                 const ops::LogprobParams& p, Context& ctx) {
  const char* op = "logprob_bwd";
  const ref::LogprobDims d = logprob_dims(op, hidden, weight, targets, p);
  check::tensor(op, "dhidden", dhidden, DType::F32, 2);
  if (!dweight.empty()) check::tensor(op, "dweight", dweight, DType::F32, 2);
  const auto [probs, stats] = saved_softmax(op, p);
  ref::logprob_bwd_ref<float>(dhidden.ptr<float>(), dweight.empty() ? nullptr : dweight.ptr<float>(), dlogprob.ptr<float>(),
                              dentropy.empty() ? nullptr : dentropy.ptr<float>(), hidden.ptr<float>(),
                              weight.ptr<float>(), targets.ptr<int32_t>(), lse.ptr<float>(), d, probs, stats);
}

}  // namespace rlcu::cpu
