// RL ops: advantage estimators (GRPO / Dr.GRPO, RLOO, REINFORCE++, GAE), per-token loss weights for the loss
// aggregation modes, and the fused policy (clipped ratio + KL + entropy) and value (clipped) losses with their
// gradients. Like include/rlcu/ops.h, each op dispatches on the device of its first (output) tensor to
// `rlcu::cpu::<op>` (kernels/cpu/advantage.cpp, kernels/cpu/policy_loss.cpp: plain loops, fp64 arithmetic, the test
// oracle) or `rlcu::cuda::<op>` (kernels/advantage.cu, kernels/policy_loss.cu). All tensors of one call live on one
// device. Plus a few host helpers (option parsing, DAPO group filter, truncation mask) in plain C++.
//
// Shapes and names
//   A rollout batch holds N = P * G completions (P prompts, G samples each); group g is rows [g*G, (g+1)*G).
//   Completion tokens are packed: cu_seqlens [N+1] I32, cu_seqlens[0] = 0, sequence s owns tokens
//   [cu_seqlens[s], cu_seqlens[s+1]), T = cu_seqlens[N]. Everything else is F32. The CPU ops check cu_seqlens
//   (starts at 0, non-decreasing, ends at T); the CUDA ops cannot read it without a sync, so there the caller
//   guarantees it and T is taken from the token tensors.
//   "std" is always the unbiased sample standard deviation sqrt(sum (x - mean)^2 / (n - 1)), as torch.std; with
//   n = 1 it is defined as 0.
//
// Determinism: every reduction runs in a fixed order (fp64 on both devices, no float atomics), so the same inputs on
// the same device give the same bits. The CUDA ops match the CPU ops to fp32 rounding (tests: 1e-5 rel).
//
// Gradients OVERWRITE (=) their outputs. Loss statistics ACCUMULATE (+=) into their stats vector, so a trainer zeroes
// it once per optimizer step, runs every micro-batch, and reads it back once.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "rlcu/context.h"
#include "rlcu/tensor.h"

namespace rlcu::rl {

// ---- options -------------------------------------------------------------------------------------------------
enum class AdvantageNorm { Group, Batch, None };  // "group" | "batch" | "none"
enum class KlEstimator { K1, K2, K3 };            // "k1" | "k2" | "k3"
enum class LossAgg { TokenMean, SeqMeanTokenMean, SeqMeanTokenSum, SeqMeanTokenSumNorm };
// "token-mean" | "seq-mean-token-mean" | "seq-mean-token-sum" | "seq-mean-token-sum-norm"
enum class PolicyLossKind { Clip, Gspo, Cispo };                // "clip" | "gspo" | "cispo"
enum class RolloutCorrection { None, Tis, Mis };               // "none" | "tis" | "mis"
enum class CorrectionLevel { Token, Sequence };                // "token" | "sequence"

// Parse a config string; throws rlcu::Error naming `field` (e.g. "algorithm.loss_agg") and the accepted values.
AdvantageNorm parse_advantage_norm(const std::string& s, const std::string& field);
KlEstimator parse_kl_estimator(const std::string& s, const std::string& field);
LossAgg parse_loss_agg(const std::string& s, const std::string& field);
PolicyLossKind parse_policy_loss_kind(const std::string& s, const std::string& field);
RolloutCorrection parse_rollout_correction(const std::string& s, const std::string& field);
CorrectionLevel parse_correction_level(const std::string& s, const std::string& field);
const char* name_of(AdvantageNorm m);
const char* name_of(KlEstimator k);
const char* name_of(LossAgg m);
const char* name_of(PolicyLossKind k);
const char* name_of(RolloutCorrection c);
const char* name_of(CorrectionLevel l);

// The per-token KL estimators of log p against log p_ref, with x = ref - logp:
//   k1 = logp - ref = -x            d/dlogp = 1
//   k2 = 0.5 (logp - ref)^2         d/dlogp = logp - ref
//   k3 = exp(x) - x - 1             d/dlogp = 1 - exp(x)
// (k1 is unbiased but can be negative; k3 is unbiased and non-negative; k2's gradient is the true KL gradient.)

// ---- 1. group-relative advantages over one value per completion --------------------------------------------------
// GRPO (norm = Group): a_i = (r_i - mean_g) / (std_g + eps), mean_g / std_g over the G rewards of i's group.
//      (norm = Batch): a_i = (r_i - mean_g) / (std_all + eps), std_all over all N rewards.
//      (norm = None, Dr.GRPO): a_i = r_i - mean_g.
// G = 1 gives a = 0 in every mode. adv and rewards [N] F32, N a multiple of group_size; adv may alias rewards.
struct GroupAdvantageParams {
  int group_size = 1;  // G >= 1
  AdvantageNorm norm = AdvantageNorm::Group;
  float eps = 1e-6f;
};
void group_advantages(const Tensor& adv, const Tensor& rewards, const GroupAdvantageParams& p, Context& ctx);

// RLOO: a_i = r_i - mean_{j != i in i's group} r_j = r_i - (sum_g - r_i) / (G - 1). group_size >= 2.
// adv and rewards [N] F32; adv may alias rewards.
void rloo_advantages(const Tensor& adv, const Tensor& rewards, int group_size, Context& ctx);

// ---- 2./3. token-level returns --------------------------------------------------------------------------------
// Token rewards of sequence s (tokens t in [b, e) of cu_seqlens):
//   r_t = -kl_coef * kl_t + (t == e - 1 ? seq_rewards[s] : 0),  kl_t = KL_est(old_logp_t, ref_logp_t)
// (the estimator applied with logp = old_logp, the rollout policy). With kl_coef == 0, old_logp and ref_logp may be
// empty Tensors. A sequence of length 0 contributes nothing (its reward is lost, as it has no token to carry it).
// Whitening (when on) maps x -> (x - mean) / (std + eps) with mean and std over all T tokens of the call.
struct TokenRewardParams {
  float kl_coef = 0.0f;
  KlEstimator kl = KlEstimator::K1;
};

// REINFORCE++: G_t = sum_{t <= u < e} gamma^(u-t) r_u within each sequence (fp64 backward scan);
// returns[T] = G_t (may be an empty Tensor: not written); adv[T] = whiten(G_t) if whiten else G_t.
// seq_rewards [N], old_logp / ref_logp [T], cu_seqlens [N+1] I32.
struct ReturnsParams {
  TokenRewardParams reward;
  float gamma = 1.0f;
  bool whiten = true;
  float eps = 1e-8f;
};
void reinforce_pp_advantages(const Tensor& adv, const Tensor& returns, const Tensor& seq_rewards,
                             const Tensor& old_logp, const Tensor& ref_logp, const Tensor& cu_seqlens,
                             const ReturnsParams& p, Context& ctx);

// GAE (PPO) per sequence, values V [T] from the critic, V after the last token = 0:
//   delta_t = r_t + gamma V_{t+1} - V_t,   A_t = delta_t + gamma lambda A_{t+1}   (A after the last token = 0)
//   returns_t = A_t + V_t (from the unwhitened A);   adv = whiten(A) if whiten else A.
// adv, returns, values, old_logp, ref_logp [T]; seq_rewards [N]; cu_seqlens [N+1] I32. returns may not be empty.
struct GaeParams {
  TokenRewardParams reward;
  float gamma = 1.0f;
  float lambda = 0.95f;
  bool whiten = true;
  float eps = 1e-8f;
};
void gae_advantages(const Tensor& adv, const Tensor& returns, const Tensor& values, const Tensor& seq_rewards,
                    const Tensor& old_logp, const Tensor& ref_logp, const Tensor& cu_seqlens, const GaeParams& p,
                    Context& ctx);

// ---- 4. per-sequence value -> its tokens ------------------------------------------------------------------------
// out[t] = seq_values[s] for every token t of sequence s. out [T], seq_values [N], cu_seqlens [N+1] I32.
void broadcast_to_tokens(const Tensor& out, const Tensor& seq_values, const Tensor& cu_seqlens, Context& ctx);

// ---- 5. loss aggregation as per-token weights ---------------------------------------------------------------------
// The rollout batch's loss is sum_t w_t l_t over ALL its tokens, so computing it micro-batch by micro-batch with
// these weights and summing gives exactly the whole-batch aggregate. For token t of sequence s (len_s tokens) in
// the micro-batch described by cu_seqlens:
//   token-mean               w = 1 / total_tokens
//   seq-mean-token-mean      w = 1 / (num_seqs * len_s)
//   seq-mean-token-sum       w = 1 / num_seqs
//   seq-mean-token-sum-norm  w = 1 / (num_seqs * norm_len)      (Dr.GRPO; norm_len = max new tokens)
// times seq_scale[s] when seq_scale [N] (F32) is not empty (e.g. 0 for a masked completion, see
// truncation_mask). total_tokens and num_seqs count the whole rollout batch (excluding masked completions), not the
// micro-batch. w [T], cu_seqlens [N+1] I32 of the micro-batch.
struct LossWeightParams {
  LossAgg mode = LossAgg::TokenMean;
  int64_t total_tokens = 0;  // > 0 for token-mean
  int64_t num_seqs = 0;      // > 0 for the seq-mean modes
  int64_t norm_len = 0;      // > 0 for seq-mean-token-sum-norm
};
void loss_weights(const Tensor& w, const Tensor& cu_seqlens, const Tensor& seq_scale, const LossWeightParams& p,
                  Context& ctx);

// ---- 6. policy loss, fused forward + backward per token -----------------------------------------------------------
// With A = adv_t, the ratio r and the policy-gradient term pg_t by kind (lo = 1 - clip_low, hi = 1 + clip_high):
//   clip  (PPO / GRPO)  r = exp(logp - old_logp);
//                       pg_t = max(-A r, -A clip(r, lo, hi)); with dual_clip c > 1 and A < 0: pg_t = min(pg_t, -c A)
//   gspo  (GSPO-token)  r = exp(seq_log_ratio_t), the sequence's geometric-mean ratio (sequence_log_ratio below),
//                       with the gradient of its own token only: dr/dlogp_t = r (r = sg[s_i] pi_t / sg[pi_t]); then
//                       pg_t as for clip. With w_t = 1 / (num_seqs len_i) (seq-mean-token-mean) the sum over the
//                       tokens is exactly GSPO's sequence objective and its gradient.
//   cispo               r = exp(logp - old_logp); pg_t = -sg[clip(r, lo, hi)] A logp_t (dual clip does not apply)
//   kl_t = KL_est(logp_t, ref_logp_t) (see above)
//   l_t  = rho_t pg_t + kl_coef kl_t - ent_coef H_t,   loss = sum_t w_t l_t
// where rho_t = is_weight[t], the rollout-correction weight (rollout_correction below), or 1 when is_weight is empty.
// Outputs (overwrite):
//   dlogp[t]    = w_t dl_t/dlogp_t = w_t (rho_t dpg_t + kl_coef dkl_t), where dpg = -A r on the unclipped branch and
//                 0 where the clipped (or dual-clipped) constant is the max (min); cispo: dpg = -clip(r, lo, hi) A;
//   dentropy[t] = -w_t ent_coef (may be an empty Tensor: not written).
// Inputs: logp, old_logp, adv, w [T]; ref_logp [T] (may be empty when kl_coef == 0); entropy [T] (may be empty when
// ent_coef == 0); is_weight [T] (may be empty); seq_log_ratio [T] (gspo only, else may be empty). Branches (clip,
// gspo): "clipped low" is r < lo with A < 0, "clipped high" r > hi with A > 0 (the clipped constant is then the max),
// "dual-clipped" A < 0 with -A r > -c A (i.e. r > c), which replaces pg_t by -c A; cispo: "clipped low" r < lo,
// "clipped high" r > hi, whatever the sign of A. The per-token arithmetic is fp64 on both devices (so branch
// decisions agree).
// Masked tokens (w_t == 0) get dlogp = dentropy = 0 and add nothing to the statistics, whatever their other inputs
// hold (padding rows may carry garbage or non-finite values).
// stats [kPolicyStats] F32 ACCUMULATES (+=) sums over this call's active tokens (w_t != 0), fp64 in a fixed order:
enum PolicyStat : int {
  kPsLoss = 0,        // sum_t w_t l_t
  kPsPg = 1,          // sum_t w_t rho_t pg_t
  kPsKl = 2,          // sum_t w_t kl_t            (0 when kl_coef == 0)
  kPsKlSum = 3,       // sum_t kl_t                (0 when kl_coef == 0)
  kPsEntropySum = 4,  // sum_t H_t                 (0 when entropy is empty)
  kPsClipLow = 5,     // tokens clipped low
  kPsClipHigh = 6,    // tokens clipped high
  kPsDualClip = 7,    // tokens dual-clipped
  kPsAbsRatioDev = 8, // sum_t |r_t - 1|           (gspo: the sequence ratio of each token)
  kPsTokens = 9,      // active tokens
  kPolicyStats = 10,
};
// Metrics: kl mean = [3]/[9], clip_ratio/low_mean = [5]/[9], clip_ratio/high_mean = [6]/[9], mean |ratio-1| =
// [8]/[9], entropy mean = [4]/[9]; the loss is [0] summed over micro-batches.
struct PolicyLossParams {
  PolicyLossKind kind = PolicyLossKind::Clip;
  float clip_low = 0.2f;
  float clip_high = 0.2f;
  float dual_clip = 0.0f;  // 0 = off, else > 1 (clip and gspo)
  float kl_coef = 0.0f;
  KlEstimator kl = KlEstimator::K3;
  float ent_coef = 0.0f;
};
void policy_loss(const Tensor& dlogp, const Tensor& dentropy, const Tensor& stats, const Tensor& logp,
                 const Tensor& old_logp, const Tensor& ref_logp, const Tensor& adv, const Tensor& w,
                 const Tensor& entropy, const Tensor& is_weight, const Tensor& seq_log_ratio,
                 const PolicyLossParams& p, Context& ctx);

// ---- 6b. GSPO's sequence log-ratio ----------------------------------------------------------------------------------
// For each sequence s of cu_seqlens (the packed micro-batch's, prompt rows included), over its active rows
// (w_t != 0, the completion tokens that carry a loss):
//   out[t] = (1 / |active_s|) sum_{u active in s} (logp_u - old_logp_u)     for every row t of s
// (the log of GSPO's s_i = (pi(y_i) / pi_old(y_i))^(1/|y_i|)); 0 for the rows of a sequence without active rows.
// Overwrites out. out, logp, old_logp, w [T] F32; cu_seqlens [S+1] I32. Sums are fp64 in row order on both devices
// (the CUDA op: one block per sequence, a fixed-order tree), rounded once to F32.
void sequence_log_ratio(const Tensor& out, const Tensor& logp, const Tensor& old_logp, const Tensor& w,
                        const Tensor& cu_seqlens, Context& ctx);

// ---- 6c. rollout correction (importance sampling of the rollout policy) ----------------------------------------------
// With old log-probs recomputed by the trainer's forward, the rollout (sampler) policy pi_roll and the "old" policy
// pi_old differ by float rounding and kernel differences; the policy loss is an expectation under pi_old, the samples
// come from pi_roll, so each unit (a token, or a whole sequence) is reweighted by its ratio
//   token:     rho_t = exp(old_logp_t - rollout_logp_t)
//   sequence:  rho_s = exp(sum_{t of s, mask_t != 0} (old_logp_t - rollout_logp_t))    (the sequence's ratio)
// and the weight is, with cap C > 1:
//   tis  (truncated importance sampling)  weight = min(rho, C)
//   mis  (masked importance sampling)     weight = 1 if 1/C <= rho <= C, else 0
//   none                                  weight = 1
// weight[t] is the weight of t's unit (its sequence's at the sequence level) for tokens with mask_t != 0, and 0 for
// the others. Overwrites weight [T]; old_logp, rollout_logp, mask [T] F32; cu_seqlens [N+1] I32 (completion layout).
// stats [kRolloutCorrectionStats] F32 are OVERWRITTEN (the op runs once per rollout batch) with, over the units that
// hold at least one mask_t != 0 token (rho before truncation or masking):
enum RolloutCorrectionStat : int {
  kRcRatioSum = 0,    // sum of rho over units
  kRcRatioMin = 1,    // min rho (0 when there is no unit)
  kRcRatioMax = 2,    // max rho (0 when there is no unit)
  kRcMasked = 3,      // units whose weight is 0 (mis: rho outside [1/C, C]; tis and none: 0)
  kRcUnits = 4,       // units
  kRcAbsDiffSum = 5,  // sum over mask tokens of |old_logp - rollout_logp|
  kRcAbsDiffMax = 6,  // max over mask tokens of |old_logp - rollout_logp|
  kRcTokens = 7,      // mask tokens
  kRolloutCorrectionStats = 8,
};
// Metrics: sampling/importance_sampling_ratio/mean = [0]/[4], /min = [1], /max = [2]; sampling/masked_fraction =
// [3]/[4]; sampling/logprob_diff/mean = [5]/[7], /max = [6]. Arithmetic is fp64 in a fixed order on both devices.
struct RolloutCorrectionParams {
  RolloutCorrection mode = RolloutCorrection::None;
  CorrectionLevel level = CorrectionLevel::Token;
  float cap = 2.0f;  // C > 1
};
void rollout_correction(const Tensor& weight, const Tensor& stats, const Tensor& old_logp, const Tensor& rollout_logp,
                        const Tensor& mask, const Tensor& cu_seqlens, const RolloutCorrectionParams& p, Context& ctx);

// ---- 7. value loss (PPO critic), fused forward + backward ------------------------------------------------------------
// v_clip = old_v + clamp(v - old_v, -clip, clip) (clip = 0: v_clip = v, unclipped);
// l_t = 0.5 max((v - R)^2, (v_clip - R)^2);  loss = sum_t w_t l_t.
// dv[t] = w_t dl_t/dv_t (overwrite): w (v - R) on the unclipped branch, 0 where the clipped term is strictly larger
// (v is then outside the clip range, where v_clip does not depend on v). v, old_v, returns, w, dv [T].
// Masked tokens (w_t == 0) get dv = 0 and add nothing to the statistics.
// stats [kValueStats] F32 ACCUMULATES over the active tokens (w_t != 0): [0] sum_t w_t l_t, [1] tokens whose clipped
// term is strictly larger, [2] active tokens. Clip fraction = [1]/[2].
enum ValueStat : int { kVsLoss = 0, kVsClipped = 1, kVsTokens = 2, kValueStats = 3 };
struct ValueLossParams {
  float clip = 0.0f;  // >= 0
};
void value_loss(const Tensor& dv, const Tensor& stats, const Tensor& v, const Tensor& old_v, const Tensor& returns,
                const Tensor& w, const ValueLossParams& p, Context& ctx);

// ---- 8. host helpers (plain C++) ------------------------------------------------------------------------------------
// DAPO dynamic sampling: for rewards of N = P * G completions, result[g] = 1 when every reward of group g lies within
// `tol` of the group's first reward (max - min <= tol, so all-equal for tol = 0): the group carries no signal and
// is dropped. Throws rlcu::Error when N is not a multiple of group_size (>= 1).
std::vector<uint8_t> degenerate_groups(const std::vector<float>& rewards, int group_size, float tol = 0.0f);

// Truncation mask: completion i is truncated when it did not stop on its own (stopped[i] == 0) and produced
// lengths[i] >= max_new_tokens tokens; `stopped` may be empty (then length alone decides). keep[i] = 0 for a
// truncated completion when mask_truncated is on, else 1 (use it as loss_weights' seq_scale); kept_seqs / kept_tokens
// count the completions and tokens left, the num_seqs / total_tokens of LossWeightParams.
struct TruncationMask {
  std::vector<float> keep;
  std::vector<uint8_t> truncated;
  int64_t kept_seqs = 0;
  int64_t kept_tokens = 0;
};
TruncationMask truncation_mask(const std::vector<int32_t>& lengths, const std::vector<uint8_t>& stopped,
                               int64_t max_new_tokens, bool mask_truncated);

}  // namespace rlcu::rl
