// Recomputed old log-probs and the rollout correction (include/rlcu/rollout_correction.h).
#include "rlcu/rollout_correction.h"

#include "rlcu/error.h"

namespace rlcu::rl {

void score_completions(std::vector<float>& per_token, const RolloutBatch& batch, const std::vector<Micro>& micros,
                       Transformer& tf, const Tensor& logprob_rows, Context& ctx) {
  per_token.assign(static_cast<size_t>(batch.num_tokens()), 0.0f);
  for (const Micro& mb : micros) {
    const int64_t T = mb.batch.num_tokens();
    RLCU_CHECK(logprob_rows.numel() >= T, "scoring: {} log-prob rows for a micro-batch of {} tokens",
               logprob_rows.numel(), T);
    const Tensor lp = logprob_rows.slice_rows(0, T);
    const DeviceBatch db = tf.upload(mb.batch, ctx);
    tf.forward(lp, Tensor(), db, ctx, Transformer::ForwardUse::ScoreOnly);
    ctx.synchronize("scoring: read back");
    scatter_rows(per_token, mb, batch.offsets, to_host_f32(lp));
  }
}

RolloutCorrector::RolloutCorrector(const RolloutCorrectionParams& p, int64_t max_seqs, int64_t max_tokens,
                                   Device device)
    : p_(p) {
  const int64_t T = std::max<int64_t>(max_tokens, 1);
  for (OwnedTensor* t : {&weight_, &old_, &roll_, &mask_}) *t = OwnedTensor::make(DType::F32, device, {T});
  stats_ = OwnedTensor::make(DType::F32, device, {kRolloutCorrectionStats});
  cu_ = OwnedTensor::make(DType::I32, device, {max_seqs + 1});
}

CorrectionStats RolloutCorrector::apply(RolloutBatch& batch, Context& ctx) {
  const int64_t T = batch.num_tokens(), N = batch.num_seqs();
  RLCU_CHECK(static_cast<int64_t>(batch.recomputed_logprobs.size()) == T,
             "rollout correction: {} recomputed log-probs for {} tokens", batch.recomputed_logprobs.size(), T);
  RLCU_CHECK(T <= old_.t.numel() && N + 1 <= cu_.t.numel(),
             "rollout correction: a batch of {} sequences / {} tokens exceeds the capacity {} / {}", N, T,
             cu_.t.numel() - 1, old_.t.numel());
  const Tensor w = weight_.t.slice_rows(0, T), o = old_.t.slice_rows(0, T), r = roll_.t.slice_rows(0, T);
  const Tensor m = mask_.t.slice_rows(0, T), cu = cu_.t.slice_rows(0, N + 1);
  ctx.upload(o, batch.recomputed_logprobs.data());
  ctx.upload(r, batch.rollout_logprobs.data());
  ctx.upload(m, batch.loss_mask.data());
  ctx.upload(cu, batch.offsets.data());
  rollout_correction(w, stats_.t, o, r, m, cu, p_, ctx);
  ctx.synchronize("rollout correction: read back");
  if (p_.mode != RolloutCorrection::None) batch.is_weights = to_host_f32(w);
  const std::vector<float> s = to_host_f32(stats_.t);
  CorrectionStats cs;
  const double units = s[kRcUnits], tokens = s[kRcTokens];
  cs.ratio_mean = units > 0 ? s[kRcRatioSum] / units : 0.0;
  cs.ratio_min = s[kRcRatioMin];
  cs.ratio_max = s[kRcRatioMax];
  cs.masked_fraction = units > 0 ? s[kRcMasked] / units : 0.0;
  cs.logprob_diff_mean = tokens > 0 ? s[kRcAbsDiffSum] / tokens : 0.0;
  cs.logprob_diff_max = s[kRcAbsDiffMax];
  return cs;
}

}  // namespace rlcu::rl
