// Reward model (include/rlcu/reward.h): a Hugging Face *ForSequenceClassification directory scored with the policy's
// transformer code. score(seq) = sum_h final_hidden[last token of seq, h] * score.weight[0, h], accumulated in fp64 on
// the host from the final hidden row (F32 on the CPU, the activation dtype on CUDA).
//
// Loading: Model::load with ModelOptions::sequence_classification leaves `score.weight` to this class (read here in
// F32) and accepts a directory without `lm_head.weight` (the head's logits are not used).

#include "rlcu/error.h"
#include "rlcu/model.h"
#include "rlcu/reward.h"
#include "rlcu/safetensors.h"

namespace rlcu {

namespace {

DType stored_dtype(const SafetensorsEntry& e, const std::string& file) {
  if (e.dtype == "F32") return DType::F32;
  if (e.dtype == "BF16") return DType::BF16;
  if (e.dtype == "F16") return DType::F16;
  throw Error(fmt::format("{}: tensor `{}` has dtype {}; expected F32, BF16 or F16", file, e.name, e.dtype));
}

}  // namespace

RewardModel::RewardModel(const std::string& dir, int64_t max_tokens, Context& ctx) : ctx_(ctx), max_tokens_(max_tokens) {
  if (max_tokens_ < 1) throw Error("reward model: max_tokens must be >= 1");
  const SafetensorsSet set = SafetensorsSet::open_dir(dir);
  const SafetensorsSet::Located sw = set.find("score.weight");
  if (!sw.entry)
    throw Error(fmt::format("{}: tensor `score.weight` is missing (a reward model is a Hugging Face "
                            "*ForSequenceClassification directory with one label)",
                            set.description()));
  const int64_t H = ModelConfig::load(dir).hidden_size;
  const std::vector<int64_t> want{1, H};
  if (sw.entry->shape != want)
    throw Error(fmt::format("{}: tensor `score.weight` has shape {}; a reward model needs [1, {}] (num_labels = 1, "
                            "hidden_size {})",
                            sw.file->path(), sw.entry->shape_str(), H, H));
  stored_dtype(*sw.entry, sw.file->path());
  score_weight_.resize(static_cast<size_t>(H));
  sw.file->read_converted(*sw.entry, score_weight_.data(), DType::F32);
  ModelOptions mo;
  mo.sequence_classification = true;
  model_ = Model::load(dir, mo, ctx);
  TransformerOptions topt;
  topt.max_tokens = max_tokens_;
  topt.act_dtype = default_act_dtype(ctx.device());
  tf_ = std::make_unique<Transformer>(*model_, topt, ctx);
  logprob_ = OwnedTensor::make(DType::F32, ctx.device(), {max_tokens_});
}

RewardModel::~RewardModel() = default;

std::vector<float> RewardModel::score(const std::vector<std::vector<int32_t>>& sequences) {
  std::vector<float> out(sequences.size(), 0.0f);
  const int64_t H = model_->config().hidden_size;
  PackedBatch batch;
  size_t first = 0;
  const auto flush = [&](size_t end) {
    if (batch.num_tokens() == 0) return;
    const DeviceBatch db = tf_->upload(batch, ctx_);
    tf_->forward(logprob_.t.slice_rows(0, batch.num_tokens()), Tensor(), db, ctx_);
    const Tensor hidden = tf_->final_hidden();
    ctx_.synchronize("reward model: final hidden states ready");
    for (size_t i = first; i < end; ++i) {
      const int64_t last = batch.cu_seqlens[i - first + 1] - 1;
      const std::vector<float> row = to_host_f32(hidden.slice_rows(last, last + 1));
      double acc = 0.0;
      for (int64_t h = 0; h < H; ++h) acc += static_cast<double>(row[h]) * static_cast<double>(score_weight_[h]);
      out[i] = static_cast<float>(acc);
    }
    batch.clear();
    first = end;
  };
  for (size_t i = 0; i < sequences.size(); ++i) {
    const int64_t n = static_cast<int64_t>(sequences[i].size());
    if (n < 1 || n > max_tokens_)
      throw Error(fmt::format("reward model: sequence {} has {} tokens; expected 1 to {}", i, n, max_tokens_));
    if (batch.num_tokens() + n > max_tokens_) flush(i);
    batch.add_sequence(sequences[i]);
  }
  flush(sequences.size());
  return out;
}

}  // namespace rlcu
