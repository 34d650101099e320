// Old log-probs recomputed by the training forward, and the rollout correction that follows (algorithm.old_logprobs =
// recompute, algorithm.rollout_correction = tis | mis).
//
//   recomputed_logprobs[offsets[s] + t] = log pi_old(completion token t of s | ...) from the policy's own training
//   forward over the step's micro-batches, before the first update: the ratio of the first update is then exactly 1.
//   is_weights[t] = rl::rollout_correction's weight of pi_old against the sampler's rollout_logprobs (token- or
//   sequence-level TIS / MIS, see include/rlcu/rl_ops.h), applied to the policy-gradient term of the loss.
// Device buffers are sized once, for the largest batch the config allows; apply() allocates no device memory.
#pragma once

#include <cstdint>
#include <vector>

#include "rlcu/context.h"
#include "rlcu/model.h"
#include "rlcu/rl_ops.h"
#include "rlcu/rollout_batch.h"
#include "rlcu/tensor.h"

namespace rlcu::rl {

// Scores the completion tokens of `batch` with `tf` over `micros` into per_token [T] (completion layout): the code
// path of the reference model and of the recomputed old log-probs. `logprob_rows` is an F32 vector on the context's
// device with room for the largest micro-batch.
void score_completions(std::vector<float>& per_token, const RolloutBatch& batch, const std::vector<Micro>& micros,
                       Transformer& tf, const Tensor& logprob_rows, Context& ctx);

// The statistics of one batch's correction (means over units / tokens; include/rlcu/rl_ops.h's RolloutCorrectionStat).
struct CorrectionStats {
  double ratio_mean = 0, ratio_min = 0, ratio_max = 0, masked_fraction = 0;
  double logprob_diff_mean = 0, logprob_diff_max = 0;
};

class RolloutCorrector {
 public:
  // Capacity: max_tokens completion tokens and max_seqs sequences per batch.
  RolloutCorrector(const RolloutCorrectionParams& p, int64_t max_seqs, int64_t max_tokens, Device device);

  // Reads batch.recomputed_logprobs, rollout_logprobs, loss_mask and offsets; sets batch.is_weights when the mode
  // is not None (else leaves it empty) and returns the statistics.
  CorrectionStats apply(RolloutBatch& batch, Context& ctx);

 private:
  RolloutCorrectionParams p_;
  OwnedTensor weight_, stats_, old_, roll_, mask_, cu_;
};

}  // namespace rlcu::rl
