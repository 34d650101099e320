// Paged-KV block manager: ref counts, fork, copy-on-write of a partially filled shared last block (full shared
// blocks are never copied), pool exhaustion reported without a crash, preemption, pool sizing, and a randomized
// test of 1,000 alloc/append/fork/free/preempt sequences against a simulated KV pool: after every operation the
// ref counts equal the table entries, no block is both free and referenced, every sequence reads back exactly the
// tokens it wrote (so copy-on-write never lets a write reach another sequence), and at the end nothing leaks.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <numeric>
#include <random>
#include <set>

#include "engine/block_manager.h"
#include "rlcu/error.h"

using namespace rlcu;
using namespace rlcu::engine;

namespace {

BlockManagerConfig make_config(std::int64_t num_blocks, std::int64_t block_size, std::int64_t watermark = 0) {
  BlockManagerConfig c;
  c.num_blocks = num_blocks;
  c.block_size = block_size;
  c.watermark_blocks = watermark;
  return c;
}

// The invariants recomputed from the public accessors only (independent of check_invariants()).
void expect_consistent(const BlockManager& bm) {
  std::int64_t sum_refs = 0;
  for (BlockId b = 0; b < bm.num_blocks(); ++b) sum_refs += bm.ref_count(b);
  std::int64_t entries = 0;
  std::map<BlockId, int> uses;
  for (SeqId s : bm.sequences()) {
    const auto& table = bm.block_table(s);
    ASSERT_EQ(static_cast<std::int64_t>(table.size()), bm.blocks_for_tokens(bm.num_tokens(s))) << "sequence " << s;
    entries += static_cast<std::int64_t>(table.size());
    for (BlockId b : table) ++uses[b];
  }
  ASSERT_EQ(sum_refs, entries);
  const std::set<BlockId> free_set(bm.free_blocks().begin(), bm.free_blocks().end());
  ASSERT_EQ(free_set.size(), bm.free_blocks().size()) << "a block is on the free list twice";
  ASSERT_EQ(static_cast<std::int64_t>(free_set.size()), bm.num_free());
  for (BlockId b = 0; b < bm.num_blocks(); ++b) {
    const bool is_free = free_set.count(b) != 0;
    const int used = uses.count(b) ? uses[b] : 0;
    ASSERT_EQ(bm.ref_count(b), used) << "block " << b;
    ASSERT_NE(is_free, used > 0) << "block " << b << " free=" << is_free << " used by " << used << " tables";
  }
  bm.check_invariants();
}

}  // namespace

TEST(BlockManager, AllocateCountsBlocksAndSlots) {
  BlockManager bm(make_config(8, 4));
  EXPECT_EQ(bm.num_free(), 8);
  ASSERT_TRUE(bm.allocate(1, 10));  // 3 blocks, last one half full
  EXPECT_EQ(bm.num_tokens(1), 10);
  ASSERT_EQ(bm.block_table(1).size(), 3u);
  EXPECT_EQ(bm.num_free(), 5);
  for (BlockId b : bm.block_table(1)) EXPECT_EQ(bm.ref_count(b), 1);
  const auto& t = bm.block_table(1);
  EXPECT_EQ(bm.slot(1, 0), t[0] * 4);
  EXPECT_EQ(bm.slot(1, 5), t[1] * 4 + 1);
  EXPECT_EQ(bm.slot(1, 9), t[2] * 4 + 1);
  EXPECT_THROW(bm.slot(1, 10), InternalError);
  ASSERT_TRUE(bm.allocate(2, 0));  // an empty sequence holds no block
  EXPECT_TRUE(bm.block_table(2).empty());
  EXPECT_EQ(bm.blocks_needed_to_append(2), 1);
  expect_consistent(bm);
  bm.free(1);
  bm.free(2);
  EXPECT_EQ(bm.num_free(), 8);
  expect_consistent(bm);
}

TEST(BlockManager, AppendFillsLastBlockThenStartsANewOne) {
  BlockManager bm(make_config(4, 4));
  ASSERT_TRUE(bm.allocate(7, 3));
  const BlockId b0 = bm.block_table(7)[0];
  EXPECT_EQ(bm.blocks_needed_to_append(7), 0);
  auto r = bm.append_slot(7);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->slot, b0 * 4 + 3);
  EXPECT_FALSE(r->copy.has_value());
  EXPECT_EQ(bm.num_free(), 3);
  EXPECT_EQ(bm.blocks_needed_to_append(7), 1);
  r = bm.append_slot(7);
  ASSERT_TRUE(r.has_value());
  ASSERT_EQ(bm.block_table(7).size(), 2u);
  EXPECT_EQ(r->slot, bm.block_table(7)[1] * 4);
  EXPECT_EQ(bm.num_tokens(7), 5);
  EXPECT_EQ(bm.num_free(), 2);
  expect_consistent(bm);
}

TEST(BlockManager, ForkSharesEveryBlockAndFreeReleasesOnLastReference) {
  BlockManager bm(make_config(16, 4));
  ASSERT_TRUE(bm.allocate(0, 9));  // the prompt: 3 blocks, prefilled once
  const int group = 8;
  for (int g = 1; g < group; ++g) bm.fork(0, g);
  EXPECT_EQ(bm.num_free(), 13);  // forking takes nothing from the pool
  for (BlockId b : bm.block_table(0)) EXPECT_EQ(bm.ref_count(b), group);
  for (int g = 1; g < group; ++g) {
    EXPECT_EQ(bm.block_table(g), bm.block_table(0));
    EXPECT_EQ(bm.num_tokens(g), 9);
  }
  expect_consistent(bm);
  for (int g = 0; g < group - 1; ++g) {
    bm.free(g);
    EXPECT_EQ(bm.num_free(), 13);  // still held by the remaining samples
    for (BlockId b : bm.block_table(group - 1)) EXPECT_EQ(bm.ref_count(b), group - 1 - g);
    expect_consistent(bm);
  }
  bm.free(group - 1);
  EXPECT_EQ(bm.num_free(), 16);
  expect_consistent(bm);
}

TEST(BlockManager, CopyOnWriteOfAPartiallyFilledSharedLastBlock) {
  BlockManager bm(make_config(8, 4));
  ASSERT_TRUE(bm.allocate(1, 6));  // blocks [full, 2 of 4]
  bm.fork(1, 2);
  const std::vector<BlockId> shared = bm.block_table(1);
  EXPECT_EQ(bm.blocks_needed_to_append(2), 1);
  auto r = bm.append_slot(2);
  ASSERT_TRUE(r.has_value());
  ASSERT_TRUE(r->copy.has_value());
  EXPECT_EQ(r->copy->src, shared[1]);
  EXPECT_NE(r->copy->dst, shared[1]);
  EXPECT_EQ(r->copy->num_tokens, 2);
  const auto& child = bm.block_table(2);
  EXPECT_EQ(child[0], shared[0]);  // the full shared block stays shared
  EXPECT_EQ(child[1], r->copy->dst);
  EXPECT_EQ(r->slot, r->copy->dst * 4 + 2);
  EXPECT_EQ(bm.ref_count(shared[0]), 2);
  EXPECT_EQ(bm.ref_count(shared[1]), 1);
  EXPECT_EQ(bm.ref_count(child[1]), 1);
  EXPECT_EQ(bm.block_table(1), shared);  // the parent is untouched
  // The parent's last block is no longer shared: it appends in place.
  r = bm.append_slot(1);
  ASSERT_TRUE(r.has_value());
  EXPECT_FALSE(r->copy.has_value());
  EXPECT_EQ(r->slot, shared[1] * 4 + 2);
  expect_consistent(bm);
}

TEST(BlockManager, FullSharedBlocksAreNeverCopied) {
  BlockManager bm(make_config(8, 4));
  ASSERT_TRUE(bm.allocate(1, 8));  // two full blocks
  bm.fork(1, 2);
  bm.fork(1, 3);
  const std::vector<BlockId> shared = bm.block_table(1);
  for (SeqId s : {1, 2, 3}) {
    auto r = bm.append_slot(s);
    ASSERT_TRUE(r.has_value());
    EXPECT_FALSE(r->copy.has_value()) << "sequence " << s;
    ASSERT_EQ(bm.block_table(s).size(), 3u);
    EXPECT_EQ(bm.block_table(s)[0], shared[0]);
    EXPECT_EQ(bm.block_table(s)[1], shared[1]);
    EXPECT_EQ(r->slot, bm.block_table(s)[2] * 4);
  }
  EXPECT_EQ(bm.ref_count(shared[0]), 3);
  EXPECT_EQ(bm.ref_count(shared[1]), 3);
  EXPECT_EQ(bm.num_free(), 3);
  expect_consistent(bm);
}

TEST(BlockManager, ExhaustionIsReportedAndChangesNothing) {
  BlockManager bm(make_config(4, 2, 1));  // one block kept for decode growth
  EXPECT_TRUE(bm.can_allocate(6));
  EXPECT_FALSE(bm.can_allocate(7));  // 4 blocks would eat the watermark
  EXPECT_FALSE(bm.allocate(1, 7));
  EXPECT_FALSE(bm.has(1));
  EXPECT_EQ(bm.num_free(), 4);
  ASSERT_TRUE(bm.allocate(1, 5));  // 3 blocks, last half full
  bm.fork(1, 2);
  EXPECT_FALSE(bm.can_allocate(1));  // only the watermark block is left
  EXPECT_FALSE(bm.allocate(3, 1));
  // Decode growth may use the watermark block: the child's CoW takes it.
  auto r = bm.append_slot(2);
  ASSERT_TRUE(r.has_value());
  ASSERT_TRUE(r->copy.has_value());
  EXPECT_EQ(bm.num_free(), 0);
  // The parent's last block is now its own and has room; one more token needs a block that is not there.
  ASSERT_TRUE(bm.append_slot(1).has_value());
  const std::vector<BlockId> before = bm.block_table(1);
  EXPECT_EQ(bm.blocks_needed_to_append(1), 1);
  EXPECT_FALSE(bm.append_slot(1).has_value());
  EXPECT_EQ(bm.block_table(1), before);
  EXPECT_EQ(bm.num_tokens(1), 6);
  expect_consistent(bm);
  // Preempt the child: its own block returns to the pool, and the parent's next token fits again.
  EXPECT_EQ(bm.preempt(2), 6);
  EXPECT_FALSE(bm.has(2));
  EXPECT_EQ(bm.num_free(), 1);
  ASSERT_TRUE(bm.append_slot(1).has_value());
  EXPECT_EQ(bm.num_tokens(1), 7);
  expect_consistent(bm);
  bm.clear();
  EXPECT_EQ(bm.num_free(), 4);
  EXPECT_EQ(bm.num_sequences(), 0);
  expect_consistent(bm);
}

TEST(BlockManager, MisuseAndBadShapesAreClearErrors) {
  EXPECT_THROW(BlockManager(make_config(0, 16)), Error);
  EXPECT_THROW(BlockManager(make_config(8, 0)), Error);
  EXPECT_THROW(BlockManager(make_config(8, 16, 8)), Error);
  EXPECT_THROW(BlockManager(make_config(8, 16, -1)), Error);
  BlockManager bm(make_config(8, 4));
  ASSERT_TRUE(bm.allocate(1, 3));
  EXPECT_THROW(bm.allocate(1, 3), InternalError);   // id already live
  EXPECT_THROW(bm.fork(1, 1), InternalError);       // child id already live
  EXPECT_THROW(bm.fork(5, 6), InternalError);       // unknown parent
  EXPECT_THROW(bm.free(5), InternalError);
  EXPECT_THROW(bm.append_slot(5), InternalError);
  EXPECT_THROW(bm.preempt(5), InternalError);
  EXPECT_THROW(bm.ref_count(8), InternalError);
  EXPECT_THROW(bm.can_allocate(-1), InternalError);
  bm.free(1);
  EXPECT_THROW(bm.free(1), InternalError);  // double free
  expect_consistent(bm);
}

TEST(BlockManager, PoolSizingFromFreeMemory) {
  // Qwen3-0.6B shape: 28 layers, 8 KV heads, head_dim 128, bf16, 16-token blocks: 2*28*8*128*16*2 bytes.
  const std::size_t bb = kv_block_bytes(28, 8, 128, 16, 2);
  EXPECT_EQ(bb, 1835008u);
  EXPECT_EQ(num_kv_blocks(10 * bb + 5, 1.0, bb), 10);
  EXPECT_EQ(num_kv_blocks(10 * bb, 0.5, bb), 5);
  EXPECT_THROW(num_kv_blocks(10 * bb, 0.0, bb), Error);
  EXPECT_THROW(num_kv_blocks(10 * bb, 1.5, bb), Error);
  EXPECT_THROW(num_kv_blocks(bb - 1, 1.0, bb), Error);
  EXPECT_THROW(kv_block_bytes(0, 8, 128, 16, 2), Error);
}

// 1,000 random operation sequences on a small pool, with the pool's contents simulated: every written slot gets a
// unique value, reported copies are applied, and each sequence must read back exactly what it wrote.
TEST(BlockManager, RandomizedOperationSequencesKeepInvariantsAndNeverLeak) {
  std::mt19937_64 rng(20261126);
  std::int64_t total_ops = 0, total_copies = 0, total_exhausted = 0, total_forks = 0;
  for (int trial = 0; trial < 1000; ++trial) {
    const std::int64_t block_size = 1 + static_cast<std::int64_t>(rng() % 6);
    const std::int64_t num_blocks = 4 + static_cast<std::int64_t>(rng() % 28);
    const std::int64_t watermark = static_cast<std::int64_t>(rng() % 3);
    BlockManager bm(make_config(num_blocks, block_size, watermark));
    std::vector<std::int64_t> pool(static_cast<std::size_t>(num_blocks * block_size), -1);
    std::map<SeqId, std::vector<std::int64_t>> expected;  // the tokens each sequence wrote, in order
    std::int64_t next_value = 0;
    SeqId next_id = 0;

    auto check_contents = [&]() {
      for (const auto& kv : expected) {
        ASSERT_EQ(bm.num_tokens(kv.first), static_cast<std::int64_t>(kv.second.size()));
        for (std::int64_t p = 0; p < static_cast<std::int64_t>(kv.second.size()); ++p)
          ASSERT_EQ(pool[static_cast<std::size_t>(bm.slot(kv.first, p))], kv.second[static_cast<std::size_t>(p)])
              << "trial " << trial << " sequence " << kv.first << " position " << p;
      }
    };
    auto random_live = [&]() {
      auto it = expected.begin();
      std::advance(it, static_cast<long>(rng() % expected.size()));
      return it->first;
    };

    const int n_ops = 20 + static_cast<int>(rng() % 60);
    for (int op = 0; op < n_ops; ++op) {
      const unsigned kind = expected.empty() ? 0u : static_cast<unsigned>(rng() % 10);
      if (kind <= 1) {  // allocate a prompt and "prefill" it
        const std::int64_t n = static_cast<std::int64_t>(rng() % (3 * block_size + 2));
        const bool expect_ok = bm.can_allocate(n);
        const std::int64_t free_before = bm.num_free();
        const SeqId id = next_id++;
        ASSERT_EQ(bm.allocate(id, n), expect_ok);
        if (expect_ok) {
          ASSERT_EQ(bm.num_free(), free_before - bm.blocks_for_tokens(n));
          std::vector<std::int64_t> toks;
          for (std::int64_t p = 0; p < n; ++p) {
            toks.push_back(next_value);
            pool[static_cast<std::size_t>(bm.slot(id, p))] = next_value++;
          }
          expected[id] = toks;
        } else {
          ++total_exhausted;
          ASSERT_EQ(bm.num_free(), free_before);
          ASSERT_FALSE(bm.has(id));
        }
      } else if (kind <= 5) {  // decode one token
        const SeqId s = random_live();
        const std::int64_t need = bm.blocks_needed_to_append(s);
        const std::int64_t free_before = bm.num_free();
        auto r = bm.append_slot(s);
        if (need > free_before) {
          ++total_exhausted;
          ASSERT_FALSE(r.has_value());
          ASSERT_EQ(bm.num_free(), free_before);
        } else {
          ASSERT_TRUE(r.has_value());
          ASSERT_EQ(bm.num_free(), free_before - need);
          if (r->copy) {
            ++total_copies;
            ASSERT_GT(r->copy->num_tokens, 0);
            ASSERT_LT(r->copy->num_tokens, block_size);  // only a partially filled block is ever copied
            std::copy_n(pool.begin() + r->copy->src * block_size, r->copy->num_tokens,
                        pool.begin() + r->copy->dst * block_size);
          }
          ASSERT_EQ(r->slot, bm.slot(s, bm.num_tokens(s) - 1));
          pool[static_cast<std::size_t>(r->slot)] = next_value;
          expected[s].push_back(next_value++);
        }
      } else if (kind <= 7) {  // sample a group member from a live sequence
        const SeqId parent = random_live();
        const std::int64_t free_before = bm.num_free();
        const SeqId id = next_id++;
        bm.fork(parent, id);
        ++total_forks;
        ASSERT_EQ(bm.num_free(), free_before);
        expected[id] = expected[parent];
      } else if (kind == 8) {
        const SeqId s = random_live();
        bm.free(s);
        expected.erase(s);
      } else {
        const SeqId s = random_live();
        ASSERT_EQ(bm.preempt(s), static_cast<std::int64_t>(expected[s].size()));
        expected.erase(s);
      }
      ++total_ops;
      ASSERT_NO_FATAL_FAILURE(expect_consistent(bm));
      ASSERT_NO_FATAL_FAILURE(check_contents());
    }
    // Free everything left (in random order) and the whole pool must be back.
    std::vector<SeqId> live;
    for (const auto& kv : expected) live.push_back(kv.first);
    std::shuffle(live.begin(), live.end(), rng);
    for (SeqId s : live) {
      bm.free(s);
      ASSERT_NO_FATAL_FAILURE(expect_consistent(bm));
    }
    ASSERT_EQ(bm.num_sequences(), 0);
    ASSERT_EQ(bm.num_free(), num_blocks) << "trial " << trial << " leaked blocks";
    for (BlockId b = 0; b < num_blocks; ++b) ASSERT_EQ(bm.ref_count(b), 0);
  }
  // The random walk must actually have exercised sharing, copy-on-write and exhaustion.
  EXPECT_GT(total_forks, 1000);
  EXPECT_GT(total_copies, 100);
  EXPECT_GT(total_exhausted, 100);
  EXPECT_GT(total_ops, 20000);
}
