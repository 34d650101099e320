// Paged-KV block manager: host-side bookkeeping of a pool of fixed-size KV blocks (no device memory here).
//
// The KV cache is a pool of `num_blocks` blocks of `block_size` token slots each; every layer's K and V live at
// the same slot index, so one block table per sequence serves all layers. Slot s of the pool is token offset
// s % block_size of block s / block_size.
//
// A sequence owns a block table (block ids in token order) and a token count n; its table always holds exactly
// ceil(n / block_size) blocks and token position p lives at slot table[p / block_size] * block_size + p % block_size.
// Blocks are reference-counted: fork(parent, child) gives the child the parent's table (every block's count + 1),
// so the G samples of one prompt share the prompt's blocks after one prefill. Writes go only to a sequence's own
// last block: append_slot() on a partially filled last block that is shared (count > 1) first copies it to a fresh
// block (copy-on-write) and reports the (src, dst) copy, which the runner must perform before writing the new
// token. A full shared block is never copied: the next token starts a new block.
//
// Invariants (check_invariants() verifies them): a block is on the free list iff its count is 0; the sum of the
// counts equals the total number of block-table entries over all sequences; free list + referenced = the pool.
//
// Capacity: allocate() keeps `watermark_blocks` blocks in reserve so running sequences can still grow (decode),
// while append_slot() may use every free block. Running out is reported (false / std::nullopt, state unchanged),
// never a crash; the scheduler then preempts a sequence with preempt(), which frees its blocks and returns how many
// tokens must be recomputed (prefilled again) when it is rescheduled. Using an unknown sequence id, reusing a live
// one, or other misuse by the engine is an internal error (RLCU_CHECK); a bad pool shape is an rlcu::Error.
// clear() returns every block to the pool without reallocating, so rollout phases reuse one pool across steps.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <unordered_map>
#include <vector>

namespace rlcu::engine {

using SeqId = std::int64_t;
using BlockId = std::int32_t;

struct BlockManagerConfig {
  std::int64_t num_blocks = 0;        // blocks in the pool (> 0)
  std::int64_t block_size = 16;       // token slots per block (> 0)
  std::int64_t watermark_blocks = 0;  // blocks allocate() leaves free for decode growth (0 <= w < num_blocks)
};

// Copy the first `num_tokens` slots of block `src` to block `dst` (every layer, K and V).
struct BlockCopy {
  BlockId src = -1;
  BlockId dst = -1;
  std::int64_t num_tokens = 0;
};

struct AppendResult {
  std::int64_t slot = -1;           // pool slot of the appended token: block * block_size + offset
  std::optional<BlockCopy> copy;    // set when the shared last block was copied on write
};

// Bytes of one block across the whole model: K and V, every layer, every KV head.
std::size_t kv_block_bytes(std::int64_t num_layers, std::int64_t num_kv_heads, std::int64_t head_dim,
                           std::int64_t block_size, std::size_t elem_bytes);
// Blocks that fit in `fraction` (0 < fraction <= 1) of `available_bytes` (memory left after weights and
// training state); throws rlcu::Error when the fraction is out of range or not one block fits.
std::int64_t num_kv_blocks(std::size_t available_bytes, double fraction, std::size_t block_bytes);

class BlockManager {
 public:
  explicit BlockManager(const BlockManagerConfig& config);

  std::int64_t num_blocks() const { return static_cast<std::int64_t>(ref_counts_.size()); }
  std::int64_t block_size() const { return block_size_; }
  std::int64_t watermark_blocks() const { return watermark_; }
  std::int64_t num_free() const { return static_cast<std::int64_t>(free_list_.size()); }

  // Blocks needed to hold n tokens.
  std::int64_t blocks_for_tokens(std::int64_t n_tokens) const { return (n_tokens + block_size_ - 1) / block_size_; }
  // Whether allocate() of n tokens would succeed now (keeps the watermark in reserve).
  bool can_allocate(std::int64_t n_tokens) const;
  // A new sequence `seq` holding n_tokens (e.g. a prompt to prefill). False (nothing changed) when the pool minus
  // the watermark has too few free blocks.
  bool allocate(SeqId seq, std::int64_t n_tokens);

  // Blocks append_slot(seq) would take from the pool: 1 when the next token starts a block or the partially
  // filled last block is shared, else 0.
  std::int64_t blocks_needed_to_append(SeqId seq) const;
  // Reserves the slot of token position num_tokens(seq) and counts it. std::nullopt (nothing changed) when a block
  // is needed and the pool is empty.
  std::optional<AppendResult> append_slot(SeqId seq);

  // `child` (a new id) shares all of `parent`'s blocks and its token count; never takes a block from the pool.
  void fork(SeqId parent, SeqId child);
  // Drops `seq`; blocks whose count reaches 0 return to the pool.
  void free(SeqId seq);
  // Preemption with recompute: frees `seq` and returns the number of tokens to prefill again on rescheduling.
  std::int64_t preempt(SeqId seq);
  // Drops every sequence: the whole pool is free again (no reallocation).
  void clear();

  bool has(SeqId seq) const { return seqs_.count(seq) != 0; }
  std::int64_t num_sequences() const { return static_cast<std::int64_t>(seqs_.size()); }
  std::vector<SeqId> sequences() const;  // ascending ids
  std::int64_t num_tokens(SeqId seq) const;
  const std::vector<BlockId>& block_table(SeqId seq) const;
  // Pool slot of token position `pos` (0 <= pos < num_tokens(seq)) of `seq`.
  std::int64_t slot(SeqId seq, std::int64_t pos) const;
  int ref_count(BlockId block) const;
  const std::vector<BlockId>& free_blocks() const { return free_list_; }

  // Verifies every invariant listed above (RLCU_CHECK); O(pool + table entries).
  void check_invariants() const;

 private:
  struct Sequence {
    std::vector<BlockId> table;
    std::int64_t num_tokens = 0;
  };
  const Sequence& get(SeqId seq) const;
  Sequence& get(SeqId seq);
  BlockId take_block();
  void release_block(BlockId block);

  std::int64_t block_size_;
  std::int64_t watermark_;
  std::vector<int> ref_counts_;
  std::vector<BlockId> free_list_;  // LIFO: a just-freed block is reused first
  std::unordered_map<SeqId, Sequence> seqs_;
};

}  // namespace rlcu::engine
