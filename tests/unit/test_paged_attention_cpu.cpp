// The paged KV-cache ops on the CPU (include/rlcu/ops.h, kernels/cpu/paged_attention.cpp):
//   kv_cache_write          rows land in their slots, negative slots are skipped, every other slot is untouched;
//   kv_block_copy           the requested row ranges are copied in every plane and nothing else changes;
//   paged_attention_decode  equals the dense causal attention (ops::attention_fwd) of the same sequences for the
//                           last token of each: the sequences' K/V are scattered into a pool through shuffled
//                           random block tables (unused slots and table entries poisoned), so only a correct
//                           gather reproduces the dense result; a context length of 0 gives a zero row.
// Plus the argument checks (slot outside the pool, overlapping copy, context longer than its block table).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "rlcu/ops.h"

using namespace rlcu;

namespace {

Context& cpu() { return Context::cpu(); }

Tensor f32(std::vector<float>& v, std::initializer_list<int64_t> dims) {
  return Tensor(v.data(), DType::F32, Device::CPU, dims);
}
Tensor i32(std::vector<int32_t>& v, std::initializer_list<int64_t> dims) {
  return Tensor(v.data(), DType::I32, Device::CPU, dims);
}

std::vector<float> random_vec(size_t n, uint64_t seed, float lo = -1.0f, float hi = 1.0f) {
  std::mt19937_64 g(seed);
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = d(g);
  return v;
}

// Distinct values that no written row can hold (inputs are in [-1, 1]).
std::vector<float> marked(size_t n, float base) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = base + static_cast<float>(i);
  return v;
}

const float kNaN = std::numeric_limits<float>::quiet_NaN();

}  // namespace

// ---- kv_cache_write ----------------------------------------------------------------------------------------------

TEST(PagedAttentionCpu, CacheWriteRowsToSlotsAndSkipsNegative) {
  const int64_t S = 11, nkv = 2, hd = 3, row = nkv * hd, T = 5;
  std::vector<float> k = random_vec(T * row, 1), v = random_vec(T * row, 2);
  std::vector<int32_t> slots = {7, -1, 0, 10, -5};
  std::vector<float> kc = marked(S * row, 100.0f), vc = marked(S * row, 1000.0f);
  const std::vector<float> kc0 = kc, vc0 = vc;
  ops::kv_cache_write(f32(kc, {S, nkv, hd}), f32(vc, {S, nkv, hd}), f32(k, {T, nkv, hd}), f32(v, {T, nkv, hd}),
                      i32(slots, {T}), cpu());
  // Expected: slot 7 <- row 0, slot 0 <- row 2, slot 10 <- row 3; all other slots keep their marks.
  std::vector<int64_t> src_of(S, -1);
  src_of[7] = 0;
  src_of[0] = 2;
  src_of[10] = 3;
  for (int64_t s = 0; s < S; ++s)
    for (int64_t e = 0; e < row; ++e) {
      const size_t i = static_cast<size_t>(s * row + e);
      const float want_k = src_of[s] < 0 ? kc0[i] : k[src_of[s] * row + e];
      const float want_v = src_of[s] < 0 ? vc0[i] : v[src_of[s] * row + e];
      EXPECT_EQ(kc[i], want_k) << "slot " << s << " element " << e;
      EXPECT_EQ(vc[i], want_v) << "slot " << s << " element " << e;
    }
}

TEST(PagedAttentionCpu, CacheWriteLaterRowWinsAndEmptyBatchIsNoop) {
  // Two rows aimed at one slot: rows are written in order, so the later one stays.
  const int64_t S = 3, nkv = 1, hd = 2, T = 2;
  std::vector<float> k = {1, 2, 3, 4}, v = {5, 6, 7, 8};
  std::vector<int32_t> slots = {1, 1};
  std::vector<float> kc(S * hd, 0.0f), vc(S * hd, 0.0f);
  ops::kv_cache_write(f32(kc, {S, nkv, hd}), f32(vc, {S, nkv, hd}), f32(k, {T, nkv, hd}), f32(v, {T, nkv, hd}),
                      i32(slots, {T}), cpu());
  EXPECT_EQ(kc, (std::vector<float>{0, 0, 3, 4, 0, 0}));
  EXPECT_EQ(vc, (std::vector<float>{0, 0, 7, 8, 0, 0}));
  // Zero rows (views of live buffers: an empty view is a caller bug, a zero-row one is an empty batch).
  ops::kv_cache_write(f32(kc, {S, nkv, hd}), f32(vc, {S, nkv, hd}), f32(k, {0, nkv, hd}), f32(v, {0, nkv, hd}),
                      i32(slots, {0}), cpu());
  EXPECT_EQ(kc, (std::vector<float>{0, 0, 3, 4, 0, 0}));
}

TEST(PagedAttentionCpu, CacheWriteRejectsSlotOutsidePoolAndBadShapes) {
  const int64_t S = 4, nkv = 2, hd = 3, T = 2;
  std::vector<float> k(T * nkv * hd, 0.5f), v(T * nkv * hd, 0.5f), kc(S * nkv * hd), vc(S * nkv * hd);
  std::vector<int32_t> slots = {0, 4};
  EXPECT_THROW(ops::kv_cache_write(f32(kc, {S, nkv, hd}), f32(vc, {S, nkv, hd}), f32(k, {T, nkv, hd}),
                                   f32(v, {T, nkv, hd}), i32(slots, {T}), cpu()),
               Error);
  slots = {0, 1};
  EXPECT_THROW(ops::kv_cache_write(f32(kc, {S, nkv, hd}), f32(vc, {S, nkv, hd}), f32(k, {T, hd, nkv}),
                                   f32(v, {T, hd, nkv}), i32(slots, {T}), cpu()),
               Error);
  EXPECT_THROW(ops::kv_cache_write(f32(kc, {S, nkv, hd}), f32(vc, {S, nkv, hd}), f32(k, {T, nkv, hd}),
                                   f32(v, {T, nkv, hd}), i32(slots, {1}), cpu()),
               Error);
}

// ---- kv_block_copy -----------------------------------------------------------------------------------------------

TEST(PagedAttentionCpu, BlockCopyCopiesRangesInEveryPlaneOnly) {
  const int64_t P = 4, S = 24, W = 5;
  // (src, dst, count); no range is read by one copy and written by another.
  std::vector<int32_t> copies = {0, 10, 3,   // rows 0..2   -> 10..12
                                 5, 16, 4,   // rows 5..8   -> 16..19
                                 21, 3, 2,   // rows 21..22 -> 3..4
                                 13, 20, 0}; // nothing
  const int64_t C = 4;
  std::vector<float> cache = random_vec(P * S * W, 3);
  const std::vector<float> before = cache;
  ops::kv_block_copy(f32(cache, {P, S, W}), i32(copies, {C, 3}), cpu());
  // Source row of each destination row (or -1: unchanged).
  std::vector<int64_t> src_of(S, -1);
  for (int64_t r = 0; r < 3; ++r) src_of[10 + r] = 0 + r;
  for (int64_t r = 0; r < 4; ++r) src_of[16 + r] = 5 + r;
  for (int64_t r = 0; r < 2; ++r) src_of[3 + r] = 21 + r;
  for (int64_t p = 0; p < P; ++p)
    for (int64_t s = 0; s < S; ++s)
      for (int64_t e = 0; e < W; ++e) {
        const int64_t from = src_of[s] < 0 ? s : src_of[s];
        EXPECT_EQ(cache[(p * S + s) * W + e], before[(p * S + from) * W + e])
            << "plane " << p << " row " << s << " element " << e;
      }
}

TEST(PagedAttentionCpu, BlockCopyRejectsOverlapAndOutOfRange) {
  const int64_t P = 2, S = 8, W = 3;
  std::vector<float> cache(P * S * W, 1.0f);
  std::vector<int32_t> overlap = {0, 2, 4};
  EXPECT_THROW(ops::kv_block_copy(f32(cache, {P, S, W}), i32(overlap, {1, 3}), cpu()), Error);
  std::vector<int32_t> past_end = {0, 6, 3};
  EXPECT_THROW(ops::kv_block_copy(f32(cache, {P, S, W}), i32(past_end, {1, 3}), cpu()), Error);
  std::vector<int32_t> negative = {-1, 4, 1};
  EXPECT_THROW(ops::kv_block_copy(f32(cache, {P, S, W}), i32(negative, {1, 3}), cpu()), Error);
  std::vector<int32_t> two_cols = {0, 4};
  EXPECT_THROW(ops::kv_block_copy(f32(cache, {P, S, W}), i32(two_cols, {1, 2}), cpu()), Error);
}

// ---- paged_attention_decode vs dense causal attention ---------------------------------------------------------

namespace {

struct DecodeCase {
  int64_t nq, nkv, hd, block_size;
  std::vector<int32_t> lens;  // per sequence; 0 = a padding row (no tokens)
  uint64_t seed;
};

// Builds the sequences, runs dense attention on the packed non-empty ones and paged decode on the pool, and
// compares the last token's output row of every sequence. Returns nothing; failures are reported through gtest.
void check_decode_matches_dense(const DecodeCase& c) {
  const int64_t nq = c.nq, nkv = c.nkv, hd = c.hd, bs = c.block_size;
  const int64_t B = static_cast<int64_t>(c.lens.size());
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  const std::string what = "nq=" + std::to_string(nq) + " nkv=" + std::to_string(nkv) + " hd=" + std::to_string(hd) +
                           " block_size=" + std::to_string(bs);
  std::mt19937_64 rng(c.seed);

  // Dense packing of the non-empty sequences.
  std::vector<int32_t> cu = {0};
  int max_len = 0;
  for (int32_t n : c.lens)
    if (n > 0) {
      cu.push_back(cu.back() + n);
      max_len = std::max(max_len, n);
    }
  const int64_t S = static_cast<int64_t>(cu.size()) - 1, T = cu.back();
  std::vector<float> q = random_vec(T * nq * hd, c.seed + 1, -2.0f, 2.0f);
  std::vector<float> k = random_vec(T * nkv * hd, c.seed + 2), v = random_vec(T * nkv * hd, c.seed + 3);
  std::vector<float> dense(T * nq * hd, kNaN), lse(T * nq, kNaN);
  ops::AttentionParams ap;
  ap.num_seqs = static_cast<int>(S);
  ap.max_seqlen = max_len;
  ap.scale = scale;
  if (S > 0)
    ops::attention_fwd(f32(dense, {T, nq, hd}), f32(lse, {T, nq}), f32(q, {T, nq, hd}), f32(k, {T, nkv, hd}),
                       f32(v, {T, nkv, hd}), i32(cu, {S + 1}), ap, cpu());

  // Pool: the sequences' blocks plus spare blocks, handed out in a shuffled order.
  int64_t used_blocks = 0, max_blocks = 1;
  for (int32_t n : c.lens) {
    used_blocks += (n + bs - 1) / bs;
    max_blocks = std::max<int64_t>(max_blocks, (n + bs - 1) / bs + 2);  // room for ignored trailing entries
  }
  const int64_t num_blocks = used_blocks + 5, num_slots = num_blocks * bs;
  std::vector<int32_t> order(static_cast<size_t>(num_blocks));
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), rng);
  // Entries past a sequence's last block must be ignored: poison them with blocks outside the pool.
  std::vector<int32_t> tables(B * max_blocks, std::numeric_limits<int32_t>::max() / 2);
  size_t next = 0;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = 0; j < (c.lens[b] + bs - 1) / bs; ++j) tables[b * max_blocks + j] = order[next++];
  for (int64_t b = 0; b < B; ++b) tables[b * max_blocks + (c.lens[b] + bs - 1) / bs] = -7;

  // Scatter every token's K/V through kv_cache_write; slots never written stay NaN and must never be read.
  std::vector<float> kc(num_slots * nkv * hd, kNaN), vc(num_slots * nkv * hd, kNaN);
  std::vector<int32_t> slots(static_cast<size_t>(T));
  std::vector<int32_t> last_row(static_cast<size_t>(B), -1);
  {
    int64_t s = 0;
    for (int64_t b = 0; b < B; ++b) {
      if (c.lens[b] == 0) continue;
      for (int32_t p = 0; p < c.lens[b]; ++p)
        slots[cu[s] + p] = tables[b * max_blocks + p / bs] * static_cast<int32_t>(bs) + p % static_cast<int32_t>(bs);
      last_row[b] = cu[s + 1] - 1;
      ++s;
    }
  }
  if (T > 0)
    ops::kv_cache_write(f32(kc, {num_slots, nkv, hd}), f32(vc, {num_slots, nkv, hd}), f32(k, {T, nkv, hd}),
                        f32(v, {T, nkv, hd}), i32(slots, {T}), cpu());

  // Decode queries: the last token of each sequence (random for padding rows, which must still give zeros).
  std::vector<float> dq = random_vec(B * nq * hd, c.seed + 4);
  for (int64_t b = 0; b < B; ++b)
    if (last_row[b] >= 0) std::copy_n(q.begin() + last_row[b] * nq * hd, nq * hd, dq.begin() + b * nq * hd);
  std::vector<int32_t> lens = c.lens;
  for (int num_splits : {1, 3}) {
    std::vector<float> out(B * nq * hd, kNaN);
    ops::PagedAttentionParams pp;
    pp.block_size = static_cast<int>(bs);
    pp.num_splits = num_splits;
    pp.scale = scale;
    ops::paged_attention_decode(f32(out, {B, nq, hd}), f32(dq, {B, nq, hd}), f32(kc, {num_slots, nkv, hd}),
                                f32(vc, {num_slots, nkv, hd}), i32(tables, {B, max_blocks}), i32(lens, {B}),
                                Tensor(), pp, cpu());
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < nq; ++h)
        for (int64_t d = 0; d < hd; ++d) {
          const float got = out[(b * nq + h) * hd + d];
          const float want = last_row[b] < 0 ? 0.0f : dense[(last_row[b] * nq + h) * hd + d];
          ASSERT_TRUE(std::isfinite(got)) << what << " row " << b << " head " << h << " dim " << d;
          if (last_row[b] < 0)
            ASSERT_EQ(got, 0.0f) << what << " empty row " << b << " head " << h << " dim " << d;
          else
            ASSERT_NEAR(got, want, 1e-5) << what << " splits " << num_splits << " row " << b << " (len "
                                         << c.lens[b] << ") head " << h << " dim " << d;
        }
  }
}

std::vector<int32_t> random_lens(int64_t B, int32_t max_len, std::mt19937_64& rng) {
  std::uniform_int_distribution<int32_t> d(2, max_len);
  std::vector<int32_t> lens(static_cast<size_t>(B));
  for (auto& n : lens) n = d(rng);
  return lens;
}

}  // namespace

TEST(PagedAttentionCpu, DecodeEqualsDenseCausalAttention) {
  struct Heads {
    int64_t nq, nkv;
  };
  const Heads heads[] = {{6, 2}, {2, 2}, {6, 6}, {5, 1}};
  std::mt19937_64 rng(20240611);
  for (const Heads& hs : heads)
    for (int64_t hd : {64, 24, 7})
      for (int64_t bs : {16, 7, 1}) {
        // Fixed edge lengths (1, exactly one block, one past a block) and random ones, in shuffled order.
        std::vector<int32_t> lens = random_lens(4, 90, rng);
        lens.push_back(1);
        lens.push_back(static_cast<int32_t>(bs));
        lens.push_back(static_cast<int32_t>(bs) + 1);
        lens.push_back(static_cast<int32_t>(3 * bs - 1));
        std::shuffle(lens.begin(), lens.end(), rng);
        check_decode_matches_dense({hs.nq, hs.nkv, hd, bs, lens, rng()});
        if (HasFatalFailure()) return;
      }
}

TEST(PagedAttentionCpu, DecodeSingleSequenceOfOneToken) {
  // One token: the output of head h is v of its kv head exactly (softmax over one score).
  check_decode_matches_dense({6, 2, 64, 16, {1}, 77});
  const int64_t nq = 4, nkv = 2, hd = 3, bs = 4, slots_n = 8;
  std::vector<float> kc = random_vec(slots_n * nkv * hd, 5), vc = random_vec(slots_n * nkv * hd, 6);
  std::vector<float> q = random_vec(nq * hd, 7), out(nq * hd, kNaN);
  std::vector<int32_t> table = {1}, lens = {1};
  ops::PagedAttentionParams pp;
  pp.block_size = static_cast<int>(bs);
  pp.scale = 0.3f;
  ops::paged_attention_decode(f32(out, {1, nq, hd}), f32(q, {1, nq, hd}), f32(kc, {slots_n, nkv, hd}),
                              f32(vc, {slots_n, nkv, hd}), i32(table, {1, 1}), i32(lens, {1}), Tensor(), pp, cpu());
  for (int64_t h = 0; h < nq; ++h)
    for (int64_t d = 0; d < hd; ++d) EXPECT_EQ(out[h * hd + d], vc[(4 * nkv + h / 2) * hd + d]) << h << " " << d;
}

TEST(PagedAttentionCpu, DecodeZeroContextGivesZeros) {
  // Padding rows (context length 0) between real ones, and a batch made only of padding rows.
  check_decode_matches_dense({6, 2, 24, 7, {0, 13, 0, 1, 0}, 91});
  check_decode_matches_dense({2, 2, 64, 16, {0, 0}, 92});
}

TEST(PagedAttentionCpu, DecodeRejectsContextLongerThanTable) {
  const int64_t nq = 2, nkv = 1, hd = 4, bs = 4, slots_n = 16;
  std::vector<float> kc(slots_n * nkv * hd, 0.1f), vc(slots_n * nkv * hd, 0.2f), q(nq * hd, 0.3f), out(nq * hd);
  std::vector<int32_t> table = {0, 1}, lens = {9};  // 2 blocks of 4 hold at most 8 tokens
  ops::PagedAttentionParams pp;
  pp.block_size = static_cast<int>(bs);
  pp.scale = 0.5f;
  EXPECT_THROW(ops::paged_attention_decode(f32(out, {1, nq, hd}), f32(q, {1, nq, hd}), f32(kc, {slots_n, nkv, hd}),
                                           f32(vc, {slots_n, nkv, hd}), i32(table, {1, 2}), i32(lens, {1}), Tensor(),
                                           pp, cpu()),
               Error);
  lens = {8};
  table = {0, 4};  // block 4 is past the 16-slot pool
  EXPECT_THROW(ops::paged_attention_decode(f32(out, {1, nq, hd}), f32(q, {1, nq, hd}), f32(kc, {slots_n, nkv, hd}),
                                           f32(vc, {slots_n, nkv, hd}), i32(table, {1, 2}), i32(lens, {1}), Tensor(),
                                           pp, cpu()),
               Error);
  table = {0, 1};
  std::vector<float> q3(3 * hd, 0.3f), out3(3 * hd);  // 3 query heads over 2 kv heads: not a GQA grouping
  std::vector<float> kc2(slots_n * 2 * hd, 0.1f), vc2(slots_n * 2 * hd, 0.2f);
  EXPECT_THROW(ops::paged_attention_decode(f32(out3, {1, 3, hd}), f32(q3, {1, 3, hd}), f32(kc2, {slots_n, 2, hd}),
                                           f32(vc2, {slots_n, 2, hd}), i32(table, {1, 2}), i32(lens, {1}), Tensor(),
                                           pp, cpu()),
               Error);
}
