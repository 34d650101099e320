// Epoch order and resumable cursor over a PromptDataset (see include/rlcu/data.h). The permutation of epoch e is
// Fisher-Yates where step i draws j = floor(u * (i + 1)) from u = hash(seed, e, i) / 2^64: counter-based, so any
// epoch's order is computed directly from (seed, e) and does not depend on the platform's std:: distributions.
#include <numeric>

#include "rlcu/data.h"
#include "rlcu/error.h"
#include "rlcu/rng.h"

namespace rlcu {

namespace {

uint64_t shuffle_key(uint64_t seed, uint64_t epoch, uint64_t i) {
  return splitmix64(splitmix64(splitmix64(seed ^ 0x5DA7A5E7ull) ^ epoch) ^ i);
}

}  // namespace

nlohmann::json DataCursor::to_json() const {
  return nlohmann::json{{"epoch", epoch},     {"position", position}, {"dataset_size", dataset_size},
                        {"seed", seed},       {"shuffle", shuffle}};
}

DataCursor DataCursor::from_json(const nlohmann::json& j) {
  auto need = [&](const char* key, bool boolean) -> const nlohmann::json& {
    if (!j.is_object() || !j.contains(key) || (boolean ? !j[key].is_boolean() : !j[key].is_number_integer()))
      throw Error(fmt::format("data cursor: \"{}\" missing or not {}", key, boolean ? "a boolean" : "an integer"));
    return j[key];
  };
  DataCursor c;
  c.epoch = need("epoch", false).get<int64_t>();
  c.position = need("position", false).get<int64_t>();
  c.dataset_size = need("dataset_size", false).get<int64_t>();
  c.seed = need("seed", false).get<uint64_t>();
  c.shuffle = need("shuffle", true).get<bool>();
  if (c.epoch < 0 || c.position < 0 || c.dataset_size < 0)
    throw Error("data cursor: epoch, position and dataset_size must be >= 0");
  return c;
}

PromptLoader::PromptLoader(const PromptDataset& dataset, uint64_t seed, bool shuffle)
    : dataset_(&dataset), seed_(seed), shuffle_(shuffle) {
  RLCU_CHECK(dataset.size() > 0, "PromptLoader over an empty dataset");
  order_ = epoch_order(0);
}

std::vector<int64_t> PromptLoader::epoch_order(int64_t epoch) const {
  std::vector<int64_t> order(static_cast<size_t>(dataset_->size()));
  std::iota(order.begin(), order.end(), int64_t(0));
  if (!shuffle_) return order;
  keyed_shuffle(
      order, [&](uint64_t i) { return shuffle_key(seed_, static_cast<uint64_t>(epoch), i); }, ShuffleIndex::Scale);
  return order;
}

const PromptSample& PromptLoader::next() {
  const PromptSample& s = (*dataset_)[order_[static_cast<size_t>(position_)]];
  if (++position_ == dataset_->size()) {
    ++epoch_;
    position_ = 0;
    order_ = epoch_order(epoch_);
  }
  return s;
}

std::vector<const PromptSample*> PromptLoader::next_batch(int64_t n) {
  std::vector<const PromptSample*> out;
  out.reserve(static_cast<size_t>(std::max<int64_t>(n, 0)));
  for (int64_t k = 0; k < n; ++k) out.push_back(&next());
  return out;
}

DataCursor PromptLoader::cursor() const {
  DataCursor c;
  c.epoch = epoch_;
  c.position = position_;
  c.dataset_size = dataset_->size();
  c.seed = seed_;
  c.shuffle = shuffle_;
  return c;
}

void PromptLoader::restore(const DataCursor& c) {
  if (c.dataset_size != dataset_->size())
    throw Error(fmt::format("data cursor was saved for {} prompts but the dataset now has {} (same file and data "
                            "settings needed to resume)",
                            c.dataset_size, dataset_->size()));
  if (c.seed != seed_ || c.shuffle != shuffle_)
    throw Error(fmt::format("data cursor was saved with seed {} shuffle {}, the run has seed {} shuffle {}", c.seed,
                            c.shuffle, seed_, shuffle_));
  if (c.position >= dataset_->size())
    throw Error(fmt::format("data cursor position {} is outside the dataset ({} prompts)", c.position,
                            dataset_->size()));
  epoch_ = c.epoch;
  position_ = c.position;
  order_ = epoch_order(epoch_);
}

}  // namespace rlcu
