// The rollout batch's construction and its micro-batch packing (include/rlcu/rollout_batch.h).
#include "rlcu/rollout_batch.h"

#include "rlcu/error.h"

namespace rlcu::rl {

RolloutBatch make_rollout_batch(std::vector<RolloutPrompt> prompts, std::vector<engine::Completion> completions,
                                int group_size) {
  RLCU_CHECK(group_size >= 1 && completions.size() == prompts.size() * static_cast<size_t>(group_size),
             "rollout batch: {} completions for {} prompts x {} samples", completions.size(), prompts.size(),
             group_size);
  RolloutBatch b;
  b.group_size = group_size;
  b.prompts = std::move(prompts);
  const size_t N = completions.size();
  b.prompt_of.reserve(N);
  b.sample_of.reserve(N);
  b.completions.reserve(N);
  for (size_t i = 0; i < N; ++i) {
    engine::Completion& c = completions[i];
    RLCU_CHECK(c.request == static_cast<int>(i) / group_size && c.sample == static_cast<int>(i) % group_size,
               "rollout batch: completion {} is sample {} of request {}", i, c.sample, c.request);
    RLCU_CHECK(c.logprobs.size() == c.ids.size(), "rollout batch: {} log-probs for {} tokens", c.logprobs.size(),
               c.ids.size());
    b.prompt_of.push_back(c.request);
    b.sample_of.push_back(c.sample);
    b.rollout_logprobs.insert(b.rollout_logprobs.end(), c.logprobs.begin(), c.logprobs.end());
    b.offsets.push_back(b.offsets.back() + static_cast<int32_t>(c.ids.size()));
    b.lengths.push_back(static_cast<int32_t>(c.ids.size()));
    b.stopped.push_back(c.finish != engine::FinishReason::Length ? 1 : 0);
    b.finish.push_back(c.finish);
    b.completions.push_back(std::move(c.ids));
  }
  b.loss_mask.assign(b.rollout_logprobs.size(), 1.0f);
  return b;
}

std::vector<Micro> pack_micro_batches(const RolloutBatch& batch, int64_t budget) {
  return pack_micro_batches(batch, budget, 0, batch.num_seqs());
}

std::vector<Micro> pack_micro_batches(const RolloutBatch& batch, int64_t budget, int64_t first, int64_t end) {
  RLCU_CHECK(first >= 0 && first <= end && end <= batch.num_seqs(), "pack: sequences [{}, {}) of {}", first, end,
             batch.num_seqs());
  std::vector<Micro> out;
  for (size_t i = static_cast<size_t>(first); i < static_cast<size_t>(end); ++i) {
    const std::vector<int32_t>& c = batch.completions[i];
    const std::vector<int32_t>& p = batch.prompts[static_cast<size_t>(batch.prompt_of[i])].ids;
    std::vector<int32_t> seq(p);
    seq.insert(seq.end(), c.begin(), c.end());
    const int64_t n = static_cast<int64_t>(seq.size());
    if (out.empty() || out.back().batch.num_tokens() + n > budget) out.emplace_back();
    Micro& m = out.back();
    std::vector<int32_t> targets(seq.size(), -1);
    const size_t P = p.size();
    for (size_t k = 0; k < c.size(); ++k) targets[P + k - 1] = c[k];
    m.batch.add_sequence(seq, targets);
    for (size_t r = 0; r < seq.size(); ++r) {
      const bool is_target = r + 1 >= P && r + 1 < seq.size();
      m.seq_of_row.push_back(is_target ? static_cast<int32_t>(i) : -1);
      m.tok_of_row.push_back(is_target ? static_cast<int32_t>(r + 1 - P) : -1);
    }
    m.seqs.push_back(static_cast<int32_t>(i));
  }
  return out;
}

std::vector<float> gather_rows(const Micro& mb, const std::vector<int32_t>& offsets,
                               const std::vector<float>& per_token) {
  const size_t T = static_cast<size_t>(mb.batch.num_tokens());
  std::vector<float> out(T, 0.0f);
  if (per_token.empty()) return out;
  for (size_t r = 0; r < T; ++r) {
    const int32_t s = mb.seq_of_row[r];
    if (s >= 0) out[r] = per_token[static_cast<size_t>(offsets[static_cast<size_t>(s)] + mb.tok_of_row[r])];
  }
  return out;
}

void scatter_rows(std::vector<float>& per_token, const Micro& mb, const std::vector<int32_t>& offsets,
                  const std::vector<float>& rows) {
  RLCU_CHECK(rows.size() == static_cast<size_t>(mb.batch.num_tokens()), "scatter_rows: {} rows for {} tokens",
             rows.size(), mb.batch.num_tokens());
  for (size_t r = 0; r < rows.size(); ++r) {
    const int32_t s = mb.seq_of_row[r];
    if (s >= 0) per_token[static_cast<size_t>(offsets[static_cast<size_t>(s)] + mb.tok_of_row[r])] = rows[r];
  }
}

}  // namespace rlcu::rl
