// Contracts of the advantage ops of include/rlcu/rl_ops.h (kernels/op_table.inc rows with CONTRACT = 1): the
// parameter rules both backends rely on. The backends (kernels/cpu/advantage.cpp, kernels/advantage.cu) check their
// tensors' dtypes and element counts (the CPU twin also reads and checks cu_seqlens; the CUDA kernels cannot
// without a sync).
#include "contract/contract.h"

namespace rlcu::contract {

namespace {

// The config name of a seq-mean mode, for messages (rl::name_of lives in the rl module, above this library).
const char* seq_mean_name(rl::LossAgg m) {
  switch (m) {
    case rl::LossAgg::SeqMeanTokenMean: return "seq-mean-token-mean";
    case rl::LossAgg::SeqMeanTokenSum: return "seq-mean-token-sum";
    default: return "seq-mean-token-sum-norm";
  }
}

}  // namespace

void group_advantages(const Tensor& adv, const Tensor& rewards, const rl::GroupAdvantageParams& p) {
  (void)adv;
  const int64_t N = rewards.numel();
  RLCU_CHECK(p.group_size >= 1 && N % p.group_size == 0, "group_advantages: {} rewards are not groups of {}", N,
             p.group_size);
}

void rloo_advantages(const Tensor& adv, const Tensor& rewards, int group_size) {
  (void)adv;
  const int64_t N = rewards.numel();
  RLCU_CHECK(group_size >= 2 && N % group_size == 0,
             "rloo_advantages: {} rewards are not groups of {} (RLOO needs G >= 2)", N, group_size);
}

void loss_weights(const Tensor& w, const Tensor& cu_seqlens, const Tensor& seq_scale, const rl::LossWeightParams& p) {
  (void)w, (void)cu_seqlens, (void)seq_scale;
  const char* op = "loss_weights";
  if (p.mode == rl::LossAgg::TokenMean)
    RLCU_CHECK(p.total_tokens > 0, "{}: token-mean needs total_tokens > 0 (got {})", op, p.total_tokens);
  else
    RLCU_CHECK(p.num_seqs > 0, "{}: {} needs num_seqs > 0 (got {})", op, seq_mean_name(p.mode), p.num_seqs);
  if (p.mode == rl::LossAgg::SeqMeanTokenSumNorm)
    RLCU_CHECK(p.norm_len > 0, "{}: seq-mean-token-sum-norm needs norm_len > 0 (got {})", op, p.norm_len);
}

}  // namespace rlcu::contract
