// CPU advantage estimators and loss weights (math in include/rlcu/rl_ops.h), plain loops in fp64:
//   group_advantages  a_i = (r_i - mean_g) / (std + eps) (std of the group, of the batch, or no division);
//                     mean and unbiased std are two-pass fp64 sums in index order (std of one value is 0).
//   rloo_advantages   a_i = r_i - (sum_g - r_i) / (G - 1), sum_g in fp64.
//   reinforce_pp_advantages / gae_advantages
//                     token rewards r_t = -kl_coef kl_t + final reward on the last token; one fp64 backward scan per
//                     sequence; the unwhitened result is rounded to F32 into adv, then (whiten) mean and std over all
//                     T tokens of those F32 values (fp64, index order) give adv = (x - mean) / (std + eps).
//                     GAE returns = A + V in fp64 from the unrounded A.
//   broadcast_to_tokens, loss_weights: per-token copies of a per-sequence value (weights computed in fp64).
// Outputs overwrite; the inputs may alias the outputs where the header says so. These ops produce targets for the
// losses and have no gradients.
#include <cmath>
#include <vector>

#include "reference.h"
#include "backends.h"

namespace rlcu::cpu {
namespace {

// A CPU F32 tensor of exactly n elements; an empty view is accepted only for n == 0.
void need_f32(const char* op, const char* name, const Tensor& t, int64_t n) {
  if (n == 0 && t.empty()) return;
  check::tensor(op, name, t, DType::F32);
  check::numel(op, name, t, n);
}

// cu_seqlens [N+1] I32 on the CPU: 0 = cu[0] <= cu[1] <= ... ; returns T = cu[N].
int64_t check_cu_seqlens(const char* op, const Tensor& cu) {
  check::tensor(op, "cu_seqlens", cu, DType::I32, 1);
  RLCU_CHECK(cu.numel() >= 1, "{}: cu_seqlens has no element, expected N+1 >= 1", op);
  const int32_t* c = cu.ptr<int32_t>();
  RLCU_CHECK(c[0] == 0, "{}: cu_seqlens[0] = {}, expected 0", op, c[0]);
  for (int64_t s = 1; s < cu.numel(); ++s)
    RLCU_CHECK(c[s] >= c[s - 1], "{}: cu_seqlens decreases at {} ({} < {})", op, s, c[s], c[s - 1]);
  return c[cu.numel() - 1];
}

double kl_value(rl::KlEstimator k, double logp, double ref) {
  const double x = ref - logp;
  switch (k) {
    case rl::KlEstimator::K1: return -x;
    case rl::KlEstimator::K2: return 0.5 * x * x;
    case rl::KlEstimator::K3: return std::exp(x) - x - 1.0;
  }
  return 0.0;
}

// Token rewards of the whole batch in fp64 (see the header).
std::vector<double> token_rewards(const char* op, const Tensor& seq_rewards, const Tensor& old_logp,
                                  const Tensor& ref_logp, const Tensor& cu_seqlens, const rl::TokenRewardParams& p,
                                  int64_t n_seqs, int64_t T) {
  need_f32(op, "seq_rewards", seq_rewards, n_seqs);
  const bool kl = p.kl_coef != 0.0f;
  if (kl) {
    need_f32(op, "old_logp", old_logp, T);
    need_f32(op, "ref_logp", ref_logp, T);
  }
  std::vector<double> r(static_cast<size_t>(T), 0.0);
  if (kl) {
    const float* lp = old_logp.ptr<float>();
    const float* rp = ref_logp.ptr<float>();
    for (int64_t t = 0; t < T; ++t) r[t] = -static_cast<double>(p.kl_coef) * kl_value(p.kl, lp[t], rp[t]);
  }
  const int32_t* cu = cu_seqlens.ptr<int32_t>();
  for (int64_t s = 0; s < n_seqs; ++s)
    if (cu[s + 1] > cu[s]) r[cu[s + 1] - 1] += static_cast<double>(seq_rewards.ptr<float>()[s]);
  return r;
}

// Two-pass mean and unbiased std of n floats in index order (std = 0 for n <= 1).
void mean_std(const float* x, int64_t n, double* mean, double* std) {
  double s = 0.0;
  for (int64_t i = 0; i < n; ++i) s += x[i];
  const double m = n > 0 ? s / static_cast<double>(n) : 0.0;
  double q = 0.0;
  for (int64_t i = 0; i < n; ++i) q += (x[i] - m) * (x[i] - m);
  *mean = m;
  *std = n > 1 ? std::sqrt(q / static_cast<double>(n - 1)) : 0.0;
}

void whiten_in_place(float* x, int64_t n, float eps) {
  double m, sd;
  mean_std(x, n, &m, &sd);
  const double inv = 1.0 / (sd + static_cast<double>(eps));
  for (int64_t i = 0; i < n; ++i) x[i] = static_cast<float>((x[i] - m) * inv);
}

}  // namespace

void group_advantages(const Tensor& adv, const Tensor& rewards, const rl::GroupAdvantageParams& p, Context& ctx) {
  const char* op = "group_advantages";
  const int64_t N = rewards.numel();
  need_f32(op, "rewards", rewards, N);
  need_f32(op, "adv", adv, N);
  if (N == 0) return;
  const int64_t G = p.group_size;
  const float* r = rewards.ptr<float>();
  double batch_mean = 0.0, batch_std = 0.0;
  if (p.norm == rl::AdvantageNorm::Batch) mean_std(r, N, &batch_mean, &batch_std);
  std::vector<double> out(static_cast<size_t>(N));  // adv may alias rewards: read every group before writing
  for (int64_t g = 0; g < N / G; ++g) {
    double m, sd;
    mean_std(r + g * G, G, &m, &sd);
    const double denom = p.norm == rl::AdvantageNorm::Group   ? sd + static_cast<double>(p.eps)
                         : p.norm == rl::AdvantageNorm::Batch ? batch_std + static_cast<double>(p.eps)
                                                              : 1.0;
    for (int64_t i = g * G; i < (g + 1) * G; ++i) out[i] = (r[i] - m) / denom;
  }
  for (int64_t i = 0; i < N; ++i) adv.ptr<float>()[i] = static_cast<float>(out[i]);
}

void rloo_advantages(const Tensor& adv, const Tensor& rewards, int group_size, Context& ctx) {
  const char* op = "rloo_advantages";
  const int64_t N = rewards.numel();
  need_f32(op, "rewards", rewards, N);
  need_f32(op, "adv", adv, N);
  const int64_t G = group_size;
  const float* r = rewards.ptr<float>();
  for (int64_t g = 0; g < N / G; ++g) {
    double s = 0.0;
    for (int64_t i = g * G; i < (g + 1) * G; ++i) s += r[i];
    std::vector<double> a(static_cast<size_t>(G));
    for (int64_t j = 0; j < G; ++j) a[j] = r[g * G + j] - (s - r[g * G + j]) / static_cast<double>(G - 1);
    for (int64_t j = 0; j < G; ++j) adv.ptr<float>()[g * G + j] = static_cast<float>(a[j]);
  }
}

void reinforce_pp_advantages(const Tensor& adv, const Tensor& returns, const Tensor& seq_rewards,
                             const Tensor& old_logp, const Tensor& ref_logp, const Tensor& cu_seqlens,
                             const rl::ReturnsParams& p, Context& ctx) {
  const char* op = "reinforce_pp_advantages";
  const int64_t T = check_cu_seqlens(op, cu_seqlens);
  const int64_t N = cu_seqlens.numel() - 1;
  need_f32(op, "adv", adv, T);
  if (!returns.empty()) need_f32(op, "returns", returns, T);
  const std::vector<double> r = token_rewards(op, seq_rewards, old_logp, ref_logp, cu_seqlens, p.reward, N, T);
  const int32_t* cu = cu_seqlens.ptr<int32_t>();
  float* a = adv.ptr<float>();
  for (int64_t s = 0; s < N; ++s) {
    double g = 0.0;
    for (int64_t t = cu[s + 1] - 1; t >= cu[s]; --t) {
      g = r[t] + static_cast<double>(p.gamma) * g;
      a[t] = static_cast<float>(g);
      if (!returns.empty()) returns.ptr<float>()[t] = static_cast<float>(g);
    }
  }
  if (p.whiten) whiten_in_place(a, T, p.eps);
}

void gae_advantages(const Tensor& adv, const Tensor& returns, const Tensor& values, const Tensor& seq_rewards,
                    const Tensor& old_logp, const Tensor& ref_logp, const Tensor& cu_seqlens, const rl::GaeParams& p,
                    Context& ctx) {
  const char* op = "gae_advantages";
  const int64_t T = check_cu_seqlens(op, cu_seqlens);
  const int64_t N = cu_seqlens.numel() - 1;
  need_f32(op, "adv", adv, T);
  need_f32(op, "returns", returns, T);
  need_f32(op, "values", values, T);
  const std::vector<double> r = token_rewards(op, seq_rewards, old_logp, ref_logp, cu_seqlens, p.reward, N, T);
  const int32_t* cu = cu_seqlens.ptr<int32_t>();
  const float* v = values.ptr<float>();
  float* a = adv.ptr<float>();
  float* ret = returns.ptr<float>();
  const double gamma = p.gamma, gl = static_cast<double>(p.gamma) * static_cast<double>(p.lambda);
  for (int64_t s = 0; s < N; ++s) {
    double next_v = 0.0, next_a = 0.0;
    for (int64_t t = cu[s + 1] - 1; t >= cu[s]; --t) {
      const double vt = v[t];
      const double delta = r[t] + gamma * next_v - vt;
      next_a = delta + gl * next_a;
      next_v = vt;
      a[t] = static_cast<float>(next_a);
      ret[t] = static_cast<float>(next_a + vt);
    }
  }
  if (p.whiten) whiten_in_place(a, T, p.eps);
}

void broadcast_to_tokens(const Tensor& out, const Tensor& seq_values, const Tensor& cu_seqlens, Context& ctx) {
  const char* op = "broadcast_to_tokens";
  const int64_t T = check_cu_seqlens(op, cu_seqlens);
  const int64_t N = cu_seqlens.numel() - 1;
  need_f32(op, "out", out, T);
  need_f32(op, "seq_values", seq_values, N);
  const int32_t* cu = cu_seqlens.ptr<int32_t>();
  for (int64_t s = 0; s < N; ++s)
    for (int64_t t = cu[s]; t < cu[s + 1]; ++t) out.ptr<float>()[t] = seq_values.ptr<float>()[s];
}

void loss_weights(const Tensor& w, const Tensor& cu_seqlens, const Tensor& seq_scale, const rl::LossWeightParams& p,
                  Context& ctx) {
  const char* op = "loss_weights";
  const int64_t T = check_cu_seqlens(op, cu_seqlens);
  const int64_t N = cu_seqlens.numel() - 1;
  need_f32(op, "w", w, T);
  if (!seq_scale.empty()) need_f32(op, "seq_scale", seq_scale, N);
  const int32_t* cu = cu_seqlens.ptr<int32_t>();
  for (int64_t s = 0; s < N; ++s) {
    const int64_t len = cu[s + 1] - cu[s];
    if (len == 0) continue;
    double ws = 0.0;
    switch (p.mode) {
      case rl::LossAgg::TokenMean: ws = 1.0 / static_cast<double>(p.total_tokens); break;
      case rl::LossAgg::SeqMeanTokenMean: ws = 1.0 / (static_cast<double>(p.num_seqs) * static_cast<double>(len)); break;
      case rl::LossAgg::SeqMeanTokenSum: ws = 1.0 / static_cast<double>(p.num_seqs); break;
      case rl::LossAgg::SeqMeanTokenSumNorm:
        ws = 1.0 / (static_cast<double>(p.num_seqs) * static_cast<double>(p.norm_len));
        break;
    }
    if (!seq_scale.empty()) ws *= static_cast<double>(seq_scale.ptr<float>()[s]);
    for (int64_t t = cu[s]; t < cu[s + 1]; ++t) w.ptr<float>()[t] = static_cast<float>(ws);
  }
}

}  // namespace rlcu::cpu
