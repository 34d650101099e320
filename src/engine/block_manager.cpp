// Paged-KV block manager (see block_manager.h for the slot layout, reference counting, copy-on-write and the
// invariants). Host bookkeeping only: the runner performs the reported block copies on the device.
#include "block_manager.h"

#include <algorithm>
#include <limits>

#include <fmt/format.h>

#include "rlcu/error.h"

namespace rlcu::engine {

std::size_t kv_block_bytes(std::int64_t num_layers, std::int64_t num_kv_heads, std::int64_t head_dim,
                           std::int64_t block_size, std::size_t elem_bytes) {
  if (num_layers <= 0 || num_kv_heads <= 0 || head_dim <= 0 || block_size <= 0 || elem_bytes == 0)
    throw Error(fmt::format("KV block size: layers ({}), KV heads ({}), head_dim ({}), block_size ({}) and element "
                            "bytes ({}) must all be positive",
                            num_layers, num_kv_heads, head_dim, block_size, elem_bytes));
  return 2 * static_cast<std::size_t>(num_layers) * static_cast<std::size_t>(num_kv_heads) *
         static_cast<std::size_t>(head_dim) * static_cast<std::size_t>(block_size) * elem_bytes;
}

std::int64_t num_kv_blocks(std::size_t available_bytes, double fraction, std::size_t block_bytes) {
  if (!(fraction > 0.0 && fraction <= 1.0))
    throw Error(fmt::format("KV cache memory fraction must be in (0, 1], got {}", fraction));
  RLCU_CHECK(block_bytes > 0);
  const auto budget = static_cast<std::size_t>(static_cast<double>(available_bytes) * fraction);
  const std::size_t blocks = std::min<std::size_t>(budget / block_bytes,
                                                   static_cast<std::size_t>(std::numeric_limits<BlockId>::max()));
  if (blocks == 0)
    throw Error(fmt::format("KV cache: {} of {} free bytes ({} bytes) do not hold one KV block of {} bytes; raise the "
                            "memory fraction or free memory",
                            fraction, available_bytes, budget, block_bytes));
  return static_cast<std::int64_t>(blocks);
}

BlockManager::BlockManager(const BlockManagerConfig& config)
    : block_size_(config.block_size), watermark_(config.watermark_blocks) {
  if (config.num_blocks <= 0 || config.num_blocks > std::numeric_limits<BlockId>::max())
    throw Error(fmt::format("KV block manager: num_blocks must be in [1, {}], got {}",
                            std::numeric_limits<BlockId>::max(), config.num_blocks));
  if (config.block_size <= 0)
    throw Error(fmt::format("KV block manager: block_size must be positive, got {}", config.block_size));
  if (config.watermark_blocks < 0 || config.watermark_blocks >= config.num_blocks)
    throw Error(fmt::format("KV block manager: watermark_blocks must be in [0, num_blocks = {}), got {}",
                            config.num_blocks, config.watermark_blocks));
  ref_counts_.assign(static_cast<std::size_t>(config.num_blocks), 0);
  clear();
}

void BlockManager::clear() {
  seqs_.clear();
  std::fill(ref_counts_.begin(), ref_counts_.end(), 0);
  // Reversed so that take_block() (pops the back) hands out 0, 1, 2, ... from a fresh pool.
  free_list_.resize(ref_counts_.size());
  for (std::size_t i = 0; i < free_list_.size(); ++i)
    free_list_[i] = static_cast<BlockId>(free_list_.size() - 1 - i);
}

const BlockManager::Sequence& BlockManager::get(SeqId seq) const {
  auto it = seqs_.find(seq);
  RLCU_CHECK(it != seqs_.end(), "unknown sequence id {}", seq);
  return it->second;
}

BlockManager::Sequence& BlockManager::get(SeqId seq) {
  auto it = seqs_.find(seq);
  RLCU_CHECK(it != seqs_.end(), "unknown sequence id {}", seq);
  return it->second;
}

BlockId BlockManager::take_block() {
  RLCU_CHECK(!free_list_.empty());
  const BlockId b = free_list_.back();
  free_list_.pop_back();
  RLCU_CHECK(ref_counts_[static_cast<std::size_t>(b)] == 0, "free block {} has ref count {}", b,
             ref_counts_[static_cast<std::size_t>(b)]);
  ref_counts_[static_cast<std::size_t>(b)] = 1;
  return b;
}

void BlockManager::release_block(BlockId block) {
  int& rc = ref_counts_[static_cast<std::size_t>(block)];
  RLCU_CHECK(rc > 0, "releasing block {} with ref count {}", block, rc);
  if (--rc == 0) free_list_.push_back(block);
}

bool BlockManager::can_allocate(std::int64_t n_tokens) const {
  RLCU_CHECK(n_tokens >= 0, "negative token count {}", n_tokens);
  return blocks_for_tokens(n_tokens) <= num_free() - watermark_;
}

bool BlockManager::allocate(SeqId seq, std::int64_t n_tokens) {
  RLCU_CHECK(!has(seq), "sequence id {} is already allocated", seq);
  if (!can_allocate(n_tokens)) return false;
  Sequence s;
  s.num_tokens = n_tokens;
  const std::int64_t nb = blocks_for_tokens(n_tokens);
  s.table.reserve(static_cast<std::size_t>(nb));
  for (std::int64_t i = 0; i < nb; ++i) s.table.push_back(take_block());
  seqs_.emplace(seq, std::move(s));
  return true;
}

std::int64_t BlockManager::blocks_needed_to_append(SeqId seq) const {
  const Sequence& s = get(seq);
  if (s.num_tokens % block_size_ == 0) return 1;
  return ref_counts_[static_cast<std::size_t>(s.table.back())] > 1 ? 1 : 0;
}

std::optional<AppendResult> BlockManager::append_slot(SeqId seq) {
  Sequence& s = get(seq);
  const std::int64_t offset = s.num_tokens % block_size_;
  AppendResult r;
  if (offset == 0) {
    if (free_list_.empty()) return std::nullopt;
    s.table.push_back(take_block());
  } else {
    const BlockId last = s.table.back();
    if (ref_counts_[static_cast<std::size_t>(last)] > 1) {
      if (free_list_.empty()) return std::nullopt;
      const BlockId fresh = take_block();
      r.copy = BlockCopy{last, fresh, offset};
      release_block(last);  // still referenced by the other sharers: never reaches 0 here
      s.table.back() = fresh;
    }
  }
  r.slot = static_cast<std::int64_t>(s.table.back()) * block_size_ + offset;
  ++s.num_tokens;
  return r;
}

void BlockManager::fork(SeqId parent, SeqId child) {
  RLCU_CHECK(!has(child), "fork: child sequence id {} is already allocated", child);
  Sequence copy = get(parent);
  for (BlockId b : copy.table) ++ref_counts_[static_cast<std::size_t>(b)];
  seqs_.emplace(child, std::move(copy));
}

void BlockManager::free(SeqId seq) {
  auto it = seqs_.find(seq);
  RLCU_CHECK(it != seqs_.end(), "free: unknown sequence id {}", seq);
  // Released last block first so that a LIFO reuse hands a sequence's blocks back in table order.
  for (auto b = it->second.table.rbegin(); b != it->second.table.rend(); ++b) release_block(*b);
  seqs_.erase(it);
}

std::int64_t BlockManager::preempt(SeqId seq) {
  const std::int64_t n = get(seq).num_tokens;
  free(seq);
  return n;
}

std::vector<SeqId> BlockManager::sequences() const {
  std::vector<SeqId> ids;
  ids.reserve(seqs_.size());
  for (const auto& kv : seqs_) ids.push_back(kv.first);
  std::sort(ids.begin(), ids.end());
  return ids;
}

std::int64_t BlockManager::num_tokens(SeqId seq) const { return get(seq).num_tokens; }

const std::vector<BlockId>& BlockManager::block_table(SeqId seq) const { return get(seq).table; }

std::int64_t BlockManager::slot(SeqId seq, std::int64_t pos) const {
  const Sequence& s = get(seq);
  RLCU_CHECK(pos >= 0 && pos < s.num_tokens, "slot: position {} outside [0, {}) of sequence {}", pos, s.num_tokens,
             seq);
  return static_cast<std::int64_t>(s.table[static_cast<std::size_t>(pos / block_size_)]) * block_size_ +
         pos % block_size_;
}

int BlockManager::ref_count(BlockId block) const {
  RLCU_CHECK(block >= 0 && block < num_blocks(), "block id {} outside the pool of {}", block, num_blocks());
  return ref_counts_[static_cast<std::size_t>(block)];
}

void BlockManager::check_invariants() const {
  std::vector<int> counted(ref_counts_.size(), 0);
  for (const auto& kv : seqs_) {
    const Sequence& s = kv.second;
    RLCU_CHECK(static_cast<std::int64_t>(s.table.size()) == blocks_for_tokens(s.num_tokens),
               "sequence {} holds {} blocks for {} tokens", kv.first, s.table.size(), s.num_tokens);
    for (BlockId b : s.table) {
      RLCU_CHECK(b >= 0 && b < num_blocks(), "sequence {} references block {} outside the pool", kv.first, b);
      ++counted[static_cast<std::size_t>(b)];
    }
  }
  std::vector<char> on_free_list(ref_counts_.size(), 0);
  for (BlockId b : free_list_) {
    RLCU_CHECK(b >= 0 && b < num_blocks(), "free list holds block {} outside the pool", b);
    RLCU_CHECK(!on_free_list[static_cast<std::size_t>(b)], "block {} is on the free list twice", b);
    on_free_list[static_cast<std::size_t>(b)] = 1;
  }
  for (std::size_t b = 0; b < ref_counts_.size(); ++b) {
    RLCU_CHECK(ref_counts_[b] == counted[b], "block {} has ref count {} but {} table entries", b, ref_counts_[b],
               counted[b]);
    RLCU_CHECK((ref_counts_[b] == 0) == (on_free_list[b] != 0), "block {} ref count {} vs free-list membership {}", b,
               ref_counts_[b], static_cast<int>(on_free_list[b]));
  }
}

}  // namespace rlcu::engine
