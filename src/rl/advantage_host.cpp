// Host helpers of include/rlcu/rl_ops.h: option names <-> enums (errors name the config field), the DAPO dynamic
// sampling filter (groups whose rewards are all equal carry no signal) and the truncation mask (completions cut at
// max_new_tokens get no loss when mask_truncated is on). Plain C++ on host vectors; no tensors, no gradients.
#include <algorithm>

#include "rlcu/error.h"
#include "rlcu/rl_ops.h"
#include "enum_names.h"

namespace rlcu::rl {

namespace {

constexpr std::pair<const char*, AdvantageNorm> kNorms[] = {
    {"group", AdvantageNorm::Group}, {"batch", AdvantageNorm::Batch}, {"none", AdvantageNorm::None}};
constexpr std::pair<const char*, KlEstimator> kKls[] = {
    {"k1", KlEstimator::K1}, {"k2", KlEstimator::K2}, {"k3", KlEstimator::K3}};
constexpr std::pair<const char*, LossAgg> kAggs[] = {{"token-mean", LossAgg::TokenMean},
                                                     {"seq-mean-token-mean", LossAgg::SeqMeanTokenMean},
                                                     {"seq-mean-token-sum", LossAgg::SeqMeanTokenSum},
                                                     {"seq-mean-token-sum-norm", LossAgg::SeqMeanTokenSumNorm}};
constexpr std::pair<const char*, PolicyLossKind> kLossKinds[] = {
    {"clip", PolicyLossKind::Clip}, {"gspo", PolicyLossKind::Gspo}, {"cispo", PolicyLossKind::Cispo}};
constexpr std::pair<const char*, RolloutCorrection> kCorrections[] = {
    {"none", RolloutCorrection::None}, {"tis", RolloutCorrection::Tis}, {"mis", RolloutCorrection::Mis}};
constexpr std::pair<const char*, CorrectionLevel> kLevels[] = {{"token", CorrectionLevel::Token},
                                                               {"sequence", CorrectionLevel::Sequence}};

}  // namespace

AdvantageNorm parse_advantage_norm(const std::string& s, const std::string& field) { return parse_enum(s, field, kNorms); }
KlEstimator parse_kl_estimator(const std::string& s, const std::string& field) { return parse_enum(s, field, kKls); }
LossAgg parse_loss_agg(const std::string& s, const std::string& field) { return parse_enum(s, field, kAggs); }
const char* name_of(AdvantageNorm m) { return enum_name(m, kNorms); }
const char* name_of(KlEstimator k) { return enum_name(k, kKls); }
const char* name_of(LossAgg m) { return enum_name(m, kAggs); }
PolicyLossKind parse_policy_loss_kind(const std::string& s, const std::string& field) {
  return parse_enum(s, field, kLossKinds);
}
RolloutCorrection parse_rollout_correction(const std::string& s, const std::string& field) {
  return parse_enum(s, field, kCorrections);
}
CorrectionLevel parse_correction_level(const std::string& s, const std::string& field) {
  return parse_enum(s, field, kLevels);
}
const char* name_of(PolicyLossKind k) { return enum_name(k, kLossKinds); }
const char* name_of(RolloutCorrection c) { return enum_name(c, kCorrections); }
const char* name_of(CorrectionLevel l) { return enum_name(l, kLevels); }

std::vector<uint8_t> degenerate_groups(const std::vector<float>& rewards, int group_size, float tol) {
  if (group_size < 1 || rewards.size() % static_cast<size_t>(group_size) != 0)
    throw Error(fmt::format("dynamic sampling: {} rewards do not form groups of {} samples", rewards.size(),
                            group_size));
  const size_t G = static_cast<size_t>(group_size);
  std::vector<uint8_t> drop(rewards.size() / G, 0);
  for (size_t g = 0; g < drop.size(); ++g) {
    const auto [lo, hi] = std::minmax_element(rewards.begin() + g * G, rewards.begin() + (g + 1) * G);
    drop[g] = (*hi - *lo <= tol) ? 1 : 0;
  }
  return drop;
}

TruncationMask truncation_mask(const std::vector<int32_t>& lengths, const std::vector<uint8_t>& stopped,
                               int64_t max_new_tokens, bool mask_truncated) {
  if (!stopped.empty() && stopped.size() != lengths.size())
    throw Error(fmt::format("truncation mask: {} stop flags for {} completions", stopped.size(), lengths.size()));
  TruncationMask m;
  m.keep.resize(lengths.size());
  m.truncated.resize(lengths.size());
  for (size_t i = 0; i < lengths.size(); ++i) {
    const bool stop = !stopped.empty() && stopped[i] != 0;
    m.truncated[i] = (!stop && lengths[i] >= max_new_tokens) ? 1 : 0;
    const bool keep = !(mask_truncated && m.truncated[i]);
    m.keep[i] = keep ? 1.0f : 0.0f;
    if (keep) {
      m.kept_seqs += 1;
      m.kept_tokens += lengths[i];
    }
  }
  return m;
}

}  // namespace rlcu::rl
