// BPE model of tokenizer.json: a word (one pre-tokenized piece) starts as one symbol per character (the vocabulary
// id of the character, or its <0xXX> byte tokens with byte_fallback, or unk); then the adjacent pair with the lowest
// merge rank is merged, leftmost first, until no pair has a merge. `ignore_merges` takes a word that is itself in
// the vocabulary as one token. Results are cached per word string (bounded; cleared when full).
// Short words use a direct scan (O(n^2), fastest for n <= 64); longer ones a heap over candidate pairs with lazy
// invalidation, which gives the same result in O(n log n).
#include <algorithm>
#include <climits>
#include <queue>

#include "rlcu/error.h"
#include "components.h"
#include "unicode.h"

namespace rlcu::tok {

namespace {

uint64_t hash_bytes(std::string_view s) {
  // FNV-1a, then a final avalanche (splitmix64) so that low bits are usable for power-of-two tables.
  uint64_t h = 1469598103934665603ull;
  for (char c : s) h = (h ^ static_cast<unsigned char>(c)) * 1099511628211ull;
  h ^= h >> 30;
  h *= 0xbf58476d1ce4e5b9ull;
  h ^= h >> 27;
  h *= 0x94d049bb133111ebull;
  return h ^ (h >> 31);
}

uint64_t hash_u64(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ull;
  return x ^ (x >> 33);
}

constexpr size_t kCacheMaxEntries = 1 << 18;
constexpr size_t kCacheMaxWordBytes = 256;
constexpr size_t kScanMaxSymbols = 64;

}  // namespace

// ---- StringIdMap -------------------------------------------------------------------------------------------------

void StringIdMap::reserve(size_t n) {
  keys_.reserve(n);
  ids_.reserve(n);
  size_t cap = 16;
  while (cap < 2 * n) cap <<= 1;
  if (cap > slots_.size()) {
    slots_.assign(cap, -1);
    mask_ = cap - 1;
    for (size_t k = 0; k < keys_.size(); ++k) {
      size_t s = hash_bytes(keys_[k]) & mask_;
      while (slots_[s] >= 0) s = (s + 1) & mask_;
      slots_[s] = static_cast<int32_t>(k);
    }
  }
}

void StringIdMap::grow() { reserve(std::max<size_t>(16, keys_.size() * 2)); }

bool StringIdMap::insert(std::string key, int32_t id) {
  if (2 * (keys_.size() + 1) > slots_.size()) grow();
  size_t s = hash_bytes(key) & mask_;
  while (slots_[s] >= 0) {
    if (keys_[slots_[s]] == key) return false;
    s = (s + 1) & mask_;
  }
  slots_[s] = static_cast<int32_t>(keys_.size());
  keys_.push_back(std::move(key));
  ids_.push_back(id);
  return true;
}

int32_t StringIdMap::find(std::string_view key) const {
  if (slots_.empty()) return -1;
  size_t s = hash_bytes(key) & mask_;
  while (slots_[s] >= 0) {
    if (keys_[slots_[s]] == key) return ids_[slots_[s]];
    s = (s + 1) & mask_;
  }
  return -1;
}

// ---- BpeModel ------------------------------------------------------------------------------------------------------

BpeModel::BpeModel(const json& model, StringIdMap& vocab, std::vector<std::string>& id_to_token) : vocab_(&vocab) {
  const std::string type = model.value("type", std::string("BPE"));
  if (type != "BPE")
    throw Error(fmt::format("tokenizer.json: model type '{}' is not supported (supported: BPE)", type));
  if (model.contains("dropout") && !model["dropout"].is_null() && model["dropout"].get<double>() > 0.0)
    throw Error("tokenizer.json: BPE dropout is not supported (set \"dropout\": null)");
  if (!model.contains("vocab") || !model["vocab"].is_object())
    throw Error("tokenizer.json: model.vocab must be an object {token: id}");
  const json& v = model["vocab"];
  vocab.reserve(v.size() + 1024);
  for (auto it = v.begin(); it != v.end(); ++it) {
    if (!it.value().is_number_integer() || it.value().get<int64_t>() < 0 || it.value().get<int64_t>() > INT32_MAX)
      throw Error(fmt::format("tokenizer.json: model.vocab[\"{}\"] must be a non-negative integer id", it.key()));
    const auto id = it.value().get<int32_t>();
    if (static_cast<size_t>(id) >= id_to_token.size()) id_to_token.resize(static_cast<size_t>(id) + 1);
    id_to_token[id] = it.key();
    vocab.insert(it.key(), id);
  }

  auto opt_string = [&](const char* key) {
    return model.contains(key) && model[key].is_string() ? model[key].get<std::string>() : std::string();
  };
  continuing_subword_prefix_ = opt_string("continuing_subword_prefix");
  end_of_word_suffix_ = opt_string("end_of_word_suffix");
  fuse_unk_ = model.value("fuse_unk", false);
  byte_fallback_ = model.value("byte_fallback", false);
  ignore_merges_ = model.value("ignore_merges", false);
  const std::string unk = opt_string("unk_token");
  if (!unk.empty()) {
    unk_id_ = vocab.find(unk);
    if (unk_id_ < 0) throw Error(fmt::format("tokenizer.json: unk_token '{}' is not in model.vocab", unk));
  }
  for (int b = 0; b < 256; ++b) byte_ids_[b] = vocab.find(fmt::format("<0x{:02X}>", b));

  const json empty = json::array();
  const json& merges = model.contains("merges") ? model["merges"] : empty;
  if (!merges.is_array()) throw Error("tokenizer.json: model.merges must be a list");
  size_t cap = 16;
  while (cap < 2 * merges.size()) cap <<= 1;
  merge_keys_.assign(cap, ~0ull);
  merge_vals_.resize(cap);
  merge_mask_ = cap - 1;
  int32_t rank = 0;
  for (const json& m : merges) {
    std::string a, b;
    if (m.is_string()) {
      const std::string s = m.get<std::string>();
      const size_t sp = s.find(' ');
      if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos)
        throw Error(fmt::format("tokenizer.json: merge #{} \"{}\" is not two tokens separated by one space", rank, s));
      a = s.substr(0, sp);
      b = s.substr(sp + 1);
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      a = m[0].get<std::string>();
      b = m[1].get<std::string>();
    } else {
      throw Error(fmt::format("tokenizer.json: merge #{} must be \"a b\" or [\"a\", \"b\"]", rank));
    }
    const int32_t ia = vocab.find(a), ib = vocab.find(b);
    std::string merged = a;
    if (!continuing_subword_prefix_.empty() && b.compare(0, continuing_subword_prefix_.size(),
                                                          continuing_subword_prefix_) == 0)
      merged += b.substr(continuing_subword_prefix_.size());
    else
      merged += b;
    const int32_t inew = vocab.find(merged);
    if (ia < 0 || ib < 0 || inew < 0)
      throw Error(fmt::format("tokenizer.json: merge #{} (\"{}\", \"{}\") uses a token missing from model.vocab", rank,
                              a, b));
    add_merge(ia, ib, Merge{rank, inew});  // a repeated pair keeps its last rank, as `tokenizers` does
    ++rank;
  }
}

const BpeModel::Merge* BpeModel::find_merge(int32_t a, int32_t b) const {
  const uint64_t key = (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  size_t s = hash_u64(key) & merge_mask_;
  while (merge_keys_[s] != ~0ull) {
    if (merge_keys_[s] == key) return &merge_vals_[s];
    s = (s + 1) & merge_mask_;
  }
  return nullptr;
}

void BpeModel::add_merge(int32_t a, int32_t b, Merge m) {
  const uint64_t key = (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  size_t s = hash_u64(key) & merge_mask_;
  while (merge_keys_[s] != ~0ull && merge_keys_[s] != key) s = (s + 1) & merge_mask_;
  merge_keys_[s] = key;
  merge_vals_[s] = m;
}

void BpeModel::initial_symbols(std::string_view word, std::vector<int32_t>& symbols) const {
  symbols.clear();
  bool last_unk = false;
  std::string buf;
  size_t i = 0;
  while (i < word.size()) {
    const size_t b = i;
    char32_t cp;
    RLCU_CHECK(utf8_next(word, i, cp), "invalid UTF-8 reached the BPE model");
    const bool first = b == 0, last = i == word.size();
    int32_t id;
    if ((first || continuing_subword_prefix_.empty()) && (!last || end_of_word_suffix_.empty())) {
      id = vocab_->find(word.substr(b, i - b));
    } else {
      buf.clear();
      if (!first) buf += continuing_subword_prefix_;
      buf.append(word.data() + b, i - b);
      if (last) buf += end_of_word_suffix_;
      id = vocab_->find(buf);
    }
    if (id >= 0) {
      symbols.push_back(id);
      last_unk = false;
      continue;
    }
    if (byte_fallback_) {
      bool all = true;
      for (size_t k = b; k < i; ++k) all = all && byte_ids_[static_cast<unsigned char>(word[k])] >= 0;
      if (all) {
        for (size_t k = b; k < i; ++k) symbols.push_back(byte_ids_[static_cast<unsigned char>(word[k])]);
        last_unk = false;
        continue;
      }
    }
    // No unk token: the character is dropped, as `tokenizers` does.
    if (unk_id_ >= 0 && !(fuse_unk_ && last_unk)) symbols.push_back(unk_id_);
    last_unk = unk_id_ >= 0;
  }
}

void BpeModel::merge_word(std::vector<int32_t>& sym) const {
  if (sym.size() <= kScanMaxSymbols) {
    while (sym.size() > 1) {
      int32_t best_rank = INT32_MAX, best_id = -1;
      size_t best_pos = 0;
      for (size_t k = 0; k + 1 < sym.size(); ++k) {
        const Merge* m = find_merge(sym[k], sym[k + 1]);
        if (m && m->rank < best_rank) best_rank = m->rank, best_id = m->new_id, best_pos = k;
      }
      if (best_id < 0) break;
      sym[best_pos] = best_id;
      sym.erase(sym.begin() + static_cast<std::ptrdiff_t>(best_pos) + 1);
    }
    return;
  }
  const int n = static_cast<int>(sym.size());
  std::vector<int> prev(n), next(n);
  std::vector<char> alive(n, 1);
  for (int k = 0; k < n; ++k) prev[k] = k - 1, next[k] = k + 1 < n ? k + 1 : -1;
  struct Cand {
    int32_t rank;
    int pos;
    int32_t new_id;
    bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> heap;
  auto push = [&](int l) {
    if (l < 0 || next[l] < 0) return;
    if (const Merge* m = find_merge(sym[l], sym[next[l]])) heap.push(Cand{m->rank, l, m->new_id});
  };
  for (int k = 0; k + 1 < n; ++k) push(k);
  while (!heap.empty()) {
    const Cand c = heap.top();
    heap.pop();
    if (!alive[c.pos] || next[c.pos] < 0) continue;
    const Merge* m = find_merge(sym[c.pos], sym[next[c.pos]]);
    if (!m || m->new_id != c.new_id || m->rank != c.rank) continue;  // stale: a neighbour changed
    const int r = next[c.pos];
    sym[c.pos] = c.new_id;
    alive[r] = 0;
    next[c.pos] = next[r];
    if (next[r] >= 0) prev[next[r]] = c.pos;
    push(prev[c.pos]);
    push(c.pos);
  }
  std::vector<int32_t> out;
  for (int k = 0; k >= 0; k = next[k]) out.push_back(sym[k]);
  sym.swap(out);
}

void BpeModel::encode_word(std::string_view word, std::vector<int32_t>& out) const {
  if (word.empty()) return;
  if (ignore_merges_) {
    const int32_t id = vocab_->find(word);
    if (id >= 0) {
      out.push_back(id);
      return;
    }
  }
  const bool cacheable = word.size() <= kCacheMaxWordBytes;
  std::string key;
  if (cacheable) {
    key.assign(word);
    std::lock_guard<std::mutex> lock(cache_mutex_);
    auto it = cache_.find(key);
    if (it != cache_.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<int32_t> sym;
  initial_symbols(word, sym);
  merge_word(sym);
  out.insert(out.end(), sym.begin(), sym.end());
  if (cacheable) {
    std::lock_guard<std::mutex> lock(cache_mutex_);
    if (cache_.size() >= kCacheMaxEntries) cache_.clear();
    cache_.emplace(std::move(key), std::move(sym));
  }
}

}  // namespace rlcu::tok
