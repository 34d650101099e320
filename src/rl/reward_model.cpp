// Reward model (include/rlcu/reward.h): a Hugging Face *ForSequenceClassification directory scored with the policy's
// transformer code. score(seq) = sum_h final_hidden[last token of seq, h] * score.weight[0, h], accumulated in fp64 on
// the host from the final hidden row (F32 on the CPU, the activation dtype on CUDA).
//
// Loading: Model::load accepts exactly the decoder tensors of a causal LM (plus lm_head unless tied). A sequence-
// classification checkpoint adds `score.weight` (rejected as an unexpected tensor) and usually has no
// `lm_head.weight` (rejected as missing when the config says the embeddings are untied). When the first load fails
// and the directory holds `score.weight`, a loadable copy is staged in a temporary directory: config.json with
// `tie_word_embeddings` set to true when there is no lm_head (the head's logits are not used), and model.safetensors
// with every tensor except `score.weight`, in its stored dtype. The copy is removed when the RewardModel is destroyed.
#include <spdlog/spdlog.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "rlcu/error.h"
#include "rlcu/model.h"
#include "rlcu/reward.h"
#include "rlcu/safetensors.h"

namespace rlcu {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

DType stored_dtype(const SafetensorsEntry& e, const std::string& file) {
  if (e.dtype == "F32") return DType::F32;
  if (e.dtype == "BF16") return DType::BF16;
  if (e.dtype == "F16") return DType::F16;
  throw Error(fmt::format("{}: tensor `{}` has dtype {}; expected F32, BF16 or F16", file, e.name, e.dtype));
}

// Writes a directory Model::load accepts; returns its path.
std::string stage_loadable_copy(const std::string& dir, const SafetensorsSet& set) {
  std::string tmpl = (fs::temp_directory_path() / "rlcu-reward-model-XXXXXX").string();
  if (!mkdtemp(tmpl.data())) throw Error(fmt::format("{}: cannot create a temporary directory", tmpl));
  const fs::path out(tmpl);
  try {
    const fs::path cfg_path = fs::path(dir) / "config.json";
    std::ifstream in(cfg_path);
    if (!in) throw Error(fmt::format("{}: cannot open", cfg_path.string()));
    json cfg;
    try {
      cfg = json::parse(in);
    } catch (const json::parse_error& e) {
      throw Error(fmt::format("{}: not valid JSON: {}", cfg_path.string(), e.what()));
    }
    const bool has_head = set.find("lm_head.weight").entry != nullptr;
    if (!has_head && cfg.is_object()) cfg["tie_word_embeddings"] = true;
    std::ofstream(out / "config.json") << cfg.dump(2);
    const fs::path gen = fs::path(dir) / "generation_config.json";
    if (fs::exists(gen)) fs::copy_file(gen, out / "generation_config.json");

    std::vector<SafetensorsWriteItem> items;
    for (const std::string& name : set.names()) {
      if (name == "score.weight") continue;
      const SafetensorsSet::Located loc = set.find(name);
      const DType dt = stored_dtype(*loc.entry, loc.file->path());
      SafetensorsWriteItem it;
      it.name = name;
      it.tensor = Tensor(const_cast<uint8_t*>(loc.file->data(*loc.entry)), dt, Device::CPU, {loc.entry->numel()});
      it.file_dtype = dt;
      it.shape = loc.entry->shape;
      items.push_back(std::move(it));
    }
    write_safetensors((out / "model.safetensors").string(), items, {{"format", "pt"}});
  } catch (...) {
    std::error_code ec;
    fs::remove_all(out, ec);
    throw;
  }
  return out.string();
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
  try {
    model_ = Model::load(dir, ModelOptions{}, ctx);
  } catch (const Error& e) {
    spdlog::info("reward model {}: the causal-LM loader rejects it ({}); loading a copy without `score.weight`", dir,
                 e.what());
    staged_dir_ = stage_loadable_copy(dir, set);
    try {
      model_ = Model::load(staged_dir_, ModelOptions{}, ctx);
    } catch (...) {
      std::error_code ec;
      fs::remove_all(staged_dir_, ec);
      throw;
    }
  }
  TransformerOptions topt;
  topt.max_tokens = max_tokens_;
  topt.act_dtype = default_act_dtype(ctx.device());
  try {
    tf_ = std::make_unique<Transformer>(*model_, topt, ctx);
  } catch (...) {
    model_.reset();
    std::error_code ec;
    if (!staged_dir_.empty()) fs::remove_all(staged_dir_, ec);
    throw;
  }
}

RewardModel::~RewardModel() {
  tf_.reset();
  model_.reset();
  if (!staged_dir_.empty()) {
    std::error_code ec;
    fs::remove_all(staged_dir_, ec);
  }
}

std::vector<float> RewardModel::score(const std::vector<std::vector<int32_t>>& sequences) {
  std::vector<float> out(sequences.size(), 0.0f);
  const int64_t H = model_->config().hidden_size;
  const OwnedTensor logprob = OwnedTensor::make(DType::F32, ctx_.device(), {max_tokens_});
  PackedBatch batch;
  size_t first = 0;
  const auto flush = [&](size_t end) {
    if (batch.num_tokens() == 0) return;
    const DeviceBatch db = tf_->upload(batch, ctx_);
    tf_->forward(logprob.t.slice_rows(0, batch.num_tokens()), Tensor(), db, ctx_);
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
