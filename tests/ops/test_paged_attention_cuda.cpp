// CUDA paged KV-cache ops (kernels/paged_attention.cu) against their CPU twins (kernels/cpu/paged_attention.cpp)
// on fresh random inputs (the seed is printed with any failure):
//   kv_cache_write          F32/BF16 caches, rows of 1 to 320 elements (vectorised and scalar paths), T up to 300,
//                           some slots negative; the whole cache must equal the CPU result bit for bit.
//   kv_block_copy           2 to 56 planes, copies of 0 to block_size rows at any offset, none to many copies;
//                           bit-exact over the whole cache.
//   paged_attention_decode  F32/BF16, hd 64/128/80 (and 7/24/256 for the other per-lane widths), GQA groups
//                           1/2/7/12 (12 > 8 heads per block: head chunking), B 1/3/37, context lengths 0..700,
//                           block sizes 16 and 7, num_splits 1/3/16 (more splits than tokens included), shuffled
//                           block tables whose unused entries point outside the pool and unused slots holding NaN;
//                           tolerance tol_for(dtype) against the fp64 CPU result on the same (bf16-rounded) values.
// Every output and the split-KV workspace carry guard values that must stay untouched. Skipped without a GPU.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "ops/gpu_test_util.h"
#include "rlcu/cuda_check.h"
#include "rlcu/ops.h"

using namespace rlcu;
using rlcu::test::expect_close;
using rlcu::test::fresh_seed;
using rlcu::test::GuardedTensor;
using rlcu::test::make_guarded;
using rlcu::test::random_vec;
using rlcu::test::Tol;
using rlcu::test::tol_for;
using rlcu::test::gpu;
using rlcu::test::host;
using rlcu::test::settle;
using rlcu::test::rounded;
using rlcu::test::dev;
using rlcu::test::dev_i32;
using rlcu::test::hf;
using rlcu::test::hi;
using rlcu::test::expect_tensor;

namespace {

const DType kFloatTypes[] = {DType::F32, DType::BF16};
const Tol kExact = {0.0, 0.0};

}  // namespace

// ---- kv_cache_write ----------------------------------------------------------------------------------------------

TEST(PagedAttentionCuda, CacheWriteMatchesCpu) {
  RLCU_REQUIRE_CUDA();
  struct Row {
    int64_t nkv, hd;
  };
  // Rows of 64, 256, 320 elements take the 16-byte path; 6 and 1 (and 3 * 5) the scalar one.
  const Row rows[] = {{1, 64}, {2, 128}, {4, 80}, {2, 3}, {1, 1}, {3, 5}};
  for (DType dt : kFloatTypes)
    for (const Row& r : rows)
      for (int64_t T : {1, 37, 300}) {
        const uint64_t seed = fresh_seed();
        const std::string what = fmt::format("kv_cache_write {} T={} nkv={} hd={} seed={}", dtype_name(dt), T, r.nkv,
                                             r.hd, seed);
        const int64_t S = 2 * T + 5, row = r.nkv * r.hd;
        std::mt19937_64 rng(seed);
        std::vector<int32_t> perm(static_cast<size_t>(S));
        std::iota(perm.begin(), perm.end(), 0);
        std::shuffle(perm.begin(), perm.end(), rng);
        // Distinct slots (the order of two writes to one slot is not specified on the GPU); about 1 in 5 skipped.
        std::vector<int32_t> slots(perm.begin(), perm.begin() + T);
        for (auto& s : slots)
          if (rng() % 5 == 0) s = -1 - static_cast<int32_t>(rng() % 3);
        std::vector<float> k = rounded(random_vec(T * row, seed + 1), dt);
        std::vector<float> v = rounded(random_vec(T * row, seed + 2), dt);
        std::vector<float> kc = rounded(random_vec(S * row, seed + 3, -4.0f, 4.0f), dt);
        std::vector<float> vc = rounded(random_vec(S * row, seed + 4, -4.0f, 4.0f), dt);
        GuardedTensor gkc = dev(dt, {S, r.nkv, r.hd}, kc), gvc = dev(dt, {S, r.nkv, r.hd}, vc);
        GuardedTensor gk = dev(dt, {T, r.nkv, r.hd}, k), gv = dev(dt, {T, r.nkv, r.hd}, v);
        GuardedTensor gs = dev_i32({T}, slots);
        ops::kv_cache_write(hf(kc, {S, r.nkv, r.hd}), hf(vc, {S, r.nkv, r.hd}), hf(k, {T, r.nkv, r.hd}),
                            hf(v, {T, r.nkv, r.hd}), hi(slots, {T}), host());
        settle();
        ops::kv_cache_write(gkc.t, gvc.t, gk.t, gv.t, gs.t, gpu());
        expect_tensor(gkc, kc, kExact, what + " k_cache");
        expect_tensor(gvc, vc, kExact, what + " v_cache");
      }
}

// ---- kv_block_copy -----------------------------------------------------------------------------------------------

TEST(PagedAttentionCuda, BlockCopyMatchesCpu) {
  RLCU_REQUIRE_CUDA();
  struct Cache {
    int64_t planes, width;
  };
  const Cache caches[] = {{2, 3}, {6, 128}, {4, 160}, {56, 64}};
  for (DType dt : kFloatTypes)
    for (const Cache& c : caches)
      for (int64_t bs : {16, 7})
        for (int64_t C : {0, 1, 5, 17}) {
          const uint64_t seed = fresh_seed();
          const std::string what = fmt::format("kv_block_copy {} planes={} W={} block_size={} copies={} seed={}",
                                               dtype_name(dt), c.planes, c.width, bs, C, seed);
          const int64_t num_blocks = 40, S = num_blocks * bs;
          std::mt19937_64 rng(seed);
          std::vector<int32_t> blocks(static_cast<size_t>(num_blocks));
          std::iota(blocks.begin(), blocks.end(), 0);
          std::shuffle(blocks.begin(), blocks.end(), rng);
          // Copy i: rows [off, off + count) of block blocks[i] to the same rows of block blocks[C + i]: every source
          // and destination block is distinct, so the copies are independent of their order.
          std::vector<int32_t> copies;
          for (int64_t i = 0; i < C; ++i) {
            const int64_t off = i == 1 ? 0 : static_cast<int64_t>(rng() % bs);
            const int64_t count = i == 0 ? 0 : i == 1 ? bs : static_cast<int64_t>(rng() % (bs - off + 1));
            copies.push_back(static_cast<int32_t>(blocks[i] * bs + off));
            copies.push_back(static_cast<int32_t>(blocks[C + i] * bs + off));
            copies.push_back(static_cast<int32_t>(count));
          }
          std::vector<float> cache = rounded(random_vec(c.planes * S * c.width, seed + 1), dt);
          GuardedTensor gcache = dev(dt, {c.planes, S, c.width}, cache);
          GuardedTensor gcopies = dev_i32({C, 3}, copies);
          if (C > 0) ops::kv_block_copy(hf(cache, {c.planes, S, c.width}), hi(copies, {C, 3}), host());
          settle();
          ops::kv_block_copy(gcache.t, gcopies.t, gpu());
          expect_tensor(gcache, cache, kExact, what);
        }
}

// ---- paged_attention_decode --------------------------------------------------------------------------------------

namespace {

// One batch in a paged pool: block tables over shuffled blocks (entries past a sequence's last block point
// outside the pool), K/V of every token at its slot, NaN in all other slots.
struct PagedBatch {
  int64_t B = 0, nkv = 0, hd = 0, bs = 0, num_slots = 0, max_blocks = 0;
  std::vector<int32_t> lens, tables;
  std::vector<float> kc, vc;
};

PagedBatch make_batch(const std::vector<int32_t>& lens, int64_t nkv, int64_t hd, int64_t bs, DType dt,
                      uint64_t seed) {
  PagedBatch pb;
  pb.B = static_cast<int64_t>(lens.size());
  pb.nkv = nkv;
  pb.hd = hd;
  pb.bs = bs;
  pb.lens = lens;
  std::mt19937_64 rng(seed);
  int64_t used = 0;
  pb.max_blocks = 1;
  for (int32_t n : lens) {
    used += (n + bs - 1) / bs;
    pb.max_blocks = std::max<int64_t>(pb.max_blocks, (n + bs - 1) / bs + 1);
  }
  const int64_t num_blocks = used + 3;
  pb.num_slots = num_blocks * bs;
  std::vector<int32_t> order(static_cast<size_t>(num_blocks));
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), rng);
  pb.tables.assign(pb.B * pb.max_blocks, static_cast<int32_t>(num_blocks + 1000));
  size_t next = 0;
  for (int64_t b = 0; b < pb.B; ++b) {
    const int64_t nb = (lens[b] + bs - 1) / bs;
    for (int64_t j = 0; j < nb; ++j) pb.tables[b * pb.max_blocks + j] = order[next++];
    pb.tables[b * pb.max_blocks + nb] = -1;
  }
  const int64_t row = nkv * hd;
  pb.kc.assign(pb.num_slots * row, std::numeric_limits<float>::quiet_NaN());
  pb.vc.assign(pb.num_slots * row, std::numeric_limits<float>::quiet_NaN());
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  auto val = [&] { return dt == DType::BF16 ? round_to_bf16(u(rng)) : u(rng); };
  for (int64_t b = 0; b < pb.B; ++b)
    for (int64_t p = 0; p < lens[b]; ++p) {
      const int64_t slot = static_cast<int64_t>(pb.tables[b * pb.max_blocks + p / bs]) * bs + p % bs;
      for (int64_t e = 0; e < row; ++e) {
        pb.kc[slot * row + e] = val();
        pb.vc[slot * row + e] = val();
      }
    }
  return pb;
}

// Runs the CPU twin once and the CUDA op for each num_splits, comparing every output with tol_for(dt).
void check_decode(DType dt, int64_t nq, int64_t nkv, int64_t hd, int64_t bs, const std::vector<int32_t>& lens,
                  const std::vector<int>& splits) {
  const uint64_t seed = fresh_seed();
  const int64_t B = static_cast<int64_t>(lens.size());
  int32_t longest = 0;
  for (int32_t n : lens) longest = std::max(longest, n);
  const std::string what = fmt::format("paged_attention_decode {} B={} nq={} nkv={} hd={} block_size={} longest={} "
                                       "seed={}",
                                       dtype_name(dt), B, nq, nkv, hd, bs, longest, seed);
  SCOPED_TRACE(what);
  PagedBatch pb = make_batch(lens, nkv, hd, bs, dt, seed);
  std::vector<float> q = rounded(random_vec(B * nq * hd, seed + 1, -3.0f, 3.0f), dt);
  ops::PagedAttentionParams p;
  p.block_size = static_cast<int>(bs);
  p.scale = 1.0f / std::sqrt(static_cast<float>(hd));

  std::vector<float> want(B * nq * hd, std::numeric_limits<float>::quiet_NaN());
  ops::paged_attention_decode(hf(want, {B, nq, hd}), hf(q, {B, nq, hd}), hf(pb.kc, {pb.num_slots, nkv, hd}),
                              hf(pb.vc, {pb.num_slots, nkv, hd}), hi(pb.tables, {B, pb.max_blocks}),
                              hi(pb.lens, {B}), Tensor(), p, host());

  GuardedTensor gq = dev(dt, {B, nq, hd}, q);
  GuardedTensor gkc = dev(dt, {pb.num_slots, nkv, hd}, pb.kc), gvc = dev(dt, {pb.num_slots, nkv, hd}, pb.vc);
  GuardedTensor gt = dev_i32({B, pb.max_blocks}, pb.tables), gl = dev_i32({B}, pb.lens);
  for (int ns : splits) {
    p.num_splits = ns;
    GuardedTensor out = make_guarded(dt, Device::CUDA, {B, nq, hd});
    GuardedTensor ws;
    if (ns > 1) ws = make_guarded(DType::F32, Device::CUDA, {ops::paged_attention_workspace_elems(B, nq, hd, ns)});
    settle();
    ops::paged_attention_decode(out.t, gq.t, gkc.t, gvc.t, gt.t, gl.t, ns > 1 ? ws.t : Tensor(), p, gpu());
    const std::string w = fmt::format("{} num_splits={}", what, ns);
    expect_tensor(out, want, tol_for(dt), w + " out");
    if (ns > 1) ws.check_guards(w + " workspace");
    // Padding rows are exactly zero whatever the splits.
    settle();
    const std::vector<float> got = to_host_f32(out.t);
    for (int64_t b = 0; b < B; ++b) {
      if (lens[b] != 0) continue;
      for (int64_t i = 0; i < nq * hd; ++i) ASSERT_EQ(got[b * nq * hd + i], 0.0f) << w << " padding row " << b;
    }
  }
}

// Context lengths for a batch of B rows: edge lengths first (0, 1, fewer than 16 tokens, one block, one past,
// the longest), the rest random up to 700; shuffled.
std::vector<int32_t> batch_lens(int64_t B, int64_t bs, int variant, std::mt19937_64& rng) {
  std::vector<int32_t> lens;
  if (B == 1) {
    const int32_t singles[] = {1, 700, 0, 5, static_cast<int32_t>(bs) + 1, 333};
    lens.push_back(singles[variant % 6]);
    return lens;
  }
  if (B == 3) {
    lens = {0, static_cast<int32_t>(1 + rng() % 14), static_cast<int32_t>(600 + rng() % 101)};
  } else {
    lens = {0, 1, 2, 15, static_cast<int32_t>(bs), static_cast<int32_t>(bs) + 1, 700};
    while (static_cast<int64_t>(lens.size()) < B) lens.push_back(static_cast<int32_t>(rng() % 701));
  }
  std::shuffle(lens.begin(), lens.end(), rng);
  return lens;
}

struct Gqa {
  int64_t group, nkv;
};

}  // namespace

TEST(PagedAttentionCuda, DecodeMatchesCpu) {
  RLCU_REQUIRE_CUDA();
  const Gqa gqas[] = {{1, 4}, {2, 2}, {7, 1}, {12, 2}};
  std::mt19937_64 rng(fresh_seed());
  int variant = 0;
  for (DType dt : kFloatTypes)
    for (int64_t hd : {64, 128, 80})
      for (const Gqa& g : gqas)
        for (int64_t bs : {16, 7})
          for (int64_t B : {1, 3, 37}) {
            check_decode(dt, g.group * g.nkv, g.nkv, hd, bs, batch_lens(B, bs, variant++, rng), {1, 3, 16});
            if (HasFatalFailure()) return;
          }
}

TEST(PagedAttentionCuda, DecodeOtherHeadDims) {
  // The per-lane widths not taken by hd 64/80/128: hd <= 32 (one element a lane) and hd up to 256 (eight).
  RLCU_REQUIRE_CUDA();
  const Gqa gqas[] = {{2, 2}, {12, 1}};
  std::mt19937_64 rng(fresh_seed());
  int variant = 0;
  for (DType dt : kFloatTypes)
    for (int64_t hd : {7, 24, 256})
      for (const Gqa& g : gqas)
        for (int64_t B : {1, 3, 37}) {
          check_decode(dt, g.group * g.nkv, g.nkv, hd, 16, batch_lens(B, 16, variant++, rng), {1, 16});
          if (HasFatalFailure()) return;
        }
}

TEST(PagedAttentionCuda, DecodeIsDeterministicAndBatchInvariant) {
  // The same row gives the same bits on a rerun and alone vs inside a batch (the grid is per row).
  RLCU_REQUIRE_CUDA();
  for (DType dt : kFloatTypes) {
    const uint64_t seed = fresh_seed();
    const int64_t nq = 8, nkv = 2, hd = 128, bs = 16, B = 5;
    const std::string what = fmt::format("{} seed={}", dtype_name(dt), seed);
    const std::vector<int32_t> lens = {300, 0, 17, 699, 1};
    PagedBatch pb = make_batch(lens, nkv, hd, bs, dt, seed);
    std::vector<float> q = rounded(random_vec(B * nq * hd, seed + 1, -3.0f, 3.0f), dt);
    GuardedTensor gq = dev(dt, {B, nq, hd}, q);
    GuardedTensor gkc = dev(dt, {pb.num_slots, nkv, hd}, pb.kc), gvc = dev(dt, {pb.num_slots, nkv, hd}, pb.vc);
    GuardedTensor gt = dev_i32({B, pb.max_blocks}, pb.tables), gl = dev_i32({B}, pb.lens);
    for (int ns : {1, 3}) {
      ops::PagedAttentionParams p;
      p.block_size = static_cast<int>(bs);
      p.num_splits = ns;
      p.scale = 1.0f / std::sqrt(static_cast<float>(hd));
      OwnedTensor ws =
          OwnedTensor::make(DType::F32, Device::CUDA, {ops::paged_attention_workspace_elems(B, nq, hd, ns)});
      std::vector<std::vector<float>> runs;
      for (int rep = 0; rep < 2; ++rep) {
        GuardedTensor out = make_guarded(dt, Device::CUDA, {B, nq, hd});
        settle();
        ops::paged_attention_decode(out.t, gq.t, gkc.t, gvc.t, gt.t, gl.t, ws.t, p, gpu());
        settle();
        runs.push_back(to_host_f32(out.t));
      }
      ASSERT_EQ(runs[0], runs[1]) << what << " num_splits=" << ns << ": reruns differ";
      // Row 3 alone: its q row, its table row, its length.
      const int64_t r = 3;
      GuardedTensor q1 =
          dev(dt, {1, nq, hd}, std::vector<float>(q.begin() + r * nq * hd, q.begin() + (r + 1) * nq * hd));
      const auto table_row = pb.tables.begin() + r * pb.max_blocks;
      GuardedTensor t1 = dev_i32({1, pb.max_blocks}, std::vector<int32_t>(table_row, table_row + pb.max_blocks));
      GuardedTensor l1 = dev_i32({1}, {lens[r]});
      GuardedTensor out1 = make_guarded(dt, Device::CUDA, {1, nq, hd});
      settle();
      ops::paged_attention_decode(out1.t, q1.t, gkc.t, gvc.t, t1.t, l1.t, ws.t, p, gpu());
      settle();
      const std::vector<float> alone = to_host_f32(out1.t);
      const std::vector<float> in_batch(runs[0].begin() + r * nq * hd, runs[0].begin() + (r + 1) * nq * hd);
      ASSERT_EQ(alone, in_batch) << what << " num_splits=" << ns << ": row differs alone vs in a batch";
    }
  }
}

TEST(PagedAttentionCuda, DecodeRejectsSmallWorkspace) {
  RLCU_REQUIRE_CUDA();
  const int64_t B = 2, nq = 4, nkv = 2, hd = 64, bs = 16;
  PagedBatch pb = make_batch({5, 40}, nkv, hd, bs, DType::F32, 1);
  GuardedTensor gq = dev(DType::F32, {B, nq, hd}, random_vec(B * nq * hd, 2));
  GuardedTensor gkc = dev(DType::F32, {pb.num_slots, nkv, hd}, pb.kc);
  GuardedTensor gvc = dev(DType::F32, {pb.num_slots, nkv, hd}, pb.vc);
  GuardedTensor gt = dev_i32({B, pb.max_blocks}, pb.tables), gl = dev_i32({B}, pb.lens);
  GuardedTensor out = make_guarded(DType::F32, Device::CUDA, {B, nq, hd});
  ops::PagedAttentionParams p;
  p.block_size = static_cast<int>(bs);
  p.num_splits = 4;
  p.scale = 0.125f;
  OwnedTensor ws =
      OwnedTensor::make(DType::F32, Device::CUDA, {ops::paged_attention_workspace_elems(B, nq, hd, 4) - 1});
  EXPECT_THROW(ops::paged_attention_decode(out.t, gq.t, gkc.t, gvc.t, gt.t, gl.t, ws.t, p, gpu()), Error);
  EXPECT_THROW(ops::paged_attention_decode(out.t, gq.t, gkc.t, gvc.t, gt.t, gl.t, Tensor(), p, gpu()), Error);
}
