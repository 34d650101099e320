// CPU reference of the paged KV-cache ops (math and shapes in include/rlcu/ops.h):
//   kv_cache_write          k_cache[slots[t]] = k[t], v_cache[slots[t]] = v[t]   (slot < 0: skipped)
//   kv_block_copy           per plane: rows [dst, dst+count) = rows [src, src+count)
//   paged_attention_decode  out[b,h] = sum_{p<n_b} softmax_p(scale q[b,h].k_p) v_p, gathering token p from slot
//                           block_tables[b, p/bs]*bs + p%bs of kv head h/(nq/nkv); n_b = 0 gives a zero row.
// Dot products and sums in double; threads (rlcu/parallel.h) take fixed chunks of decode rows. The CPU has no split-KV: num_splits and the workspace are not used here.
// No gradients: generation only. Shapes and dtypes are checked by kernels/contract/paged_attention.cpp; the CPU
// twin takes non-empty F32 tensors (1-D slots and context lengths) and checks the slots, copies and tables it reads.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "backends.h"
#include "rlcu/parallel.h"
#include "reference.h"

namespace rlcu::cpu {

namespace {

void check_cache(const char* op, const Tensor& k_cache, const Tensor& v_cache) {
  check::tensor(op, "k_cache", k_cache, DType::F32, 3);
  check::tensor(op, "v_cache", v_cache, DType::F32, 3);
}

}  // namespace

void kv_cache_write(const Tensor& k_cache, const Tensor& v_cache, const Tensor& k, const Tensor& v,
                    const Tensor& slots, Context&) {
  const char* op = "kv_cache_write";
  check_cache(op, k_cache, v_cache);
  check::tensor(op, "k", k, DType::F32, 3);
  check::tensor(op, "v", v, DType::F32, 3);
  const int64_t T = k.size(0), row = k_cache.size(1) * k_cache.size(2), num_slots = k_cache.size(0);
  check::shape(op, "slots", slots, {T});
  const int32_t* sl = slots.ptr<int32_t>();
  for (int64_t t = 0; t < T; ++t) {
    if (sl[t] < 0) continue;
    RLCU_CHECK(sl[t] < num_slots, "{}: slot {} outside the pool of {} slots", op, sl[t], num_slots);
    std::copy_n(k.ptr<float>() + t * row, row, k_cache.ptr<float>() + sl[t] * row);
    std::copy_n(v.ptr<float>() + t * row, row, v_cache.ptr<float>() + sl[t] * row);
  }
}

void kv_block_copy(const Tensor& cache, const Tensor& copies, Context&) {
  const char* op = "kv_block_copy";
  check::tensor(op, "cache", cache, DType::F32, 3);
  RLCU_CHECK(!copies.empty(), "{}: copies is empty", op);
  const int64_t P = cache.size(0), S = cache.size(1), W = cache.size(2);
  const int32_t* c = copies.ptr<int32_t>();
  for (int64_t i = 0; i < copies.size(0); ++i) {
    const int64_t src = c[3 * i], dst = c[3 * i + 1], n = c[3 * i + 2];
    RLCU_CHECK(src >= 0 && dst >= 0 && n >= 0 && src + n <= S && dst + n <= S,
               "{}: copy {} ({} -> {}, {} rows) outside the pool of {} slots", op, i, src, dst, n, S);
    RLCU_CHECK(src + n <= dst || dst + n <= src, "{}: copy {} overlaps itself", op, i);
    for (int64_t p = 0; p < P; ++p) {
      float* plane = cache.ptr<float>() + p * S * W;
      std::copy_n(plane + src * W, n * W, plane + dst * W);
    }
  }
}

void paged_attention_decode(const Tensor& out, const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                            const Tensor& block_tables, const Tensor& context_lens, const Tensor&,
                            const ops::PagedAttentionParams& p, Context&) {
  const char* op = "paged_attention_decode";
  check_cache(op, k_cache, v_cache);
  check::tensor(op, "q", q, DType::F32, 3);
  RLCU_CHECK(!block_tables.empty(), "{}: block_tables is empty", op);
  const int64_t B = q.size(0), nq = q.size(1), hd = q.size(2), nkv = k_cache.size(1);
  const int64_t num_slots = k_cache.size(0), max_blocks = block_tables.size(1), bs = p.block_size;
  check::shape(op, "context_lens", context_lens, {B});
  const int64_t group = nq / nkv;
  const float* kc = k_cache.ptr<float>();
  const float* vc = v_cache.ptr<float>();
  const int32_t* lens = context_lens.ptr<int32_t>();
  const int32_t* tables = block_tables.ptr<int32_t>();
  parallel_for(B, 1, [&](int64_t b0, int64_t b1) {
  std::vector<double> score, acc(static_cast<size_t>(hd));
  std::vector<int64_t> slot_of;
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t n = lens[b];
    RLCU_CHECK(n >= 0 && n <= max_blocks * bs, "{}: context length {} of row {} exceeds its block table ({} x {})",
               op, n, b, max_blocks, bs);
    slot_of.resize(static_cast<size_t>(n));
    for (int64_t t = 0; t < n; ++t) {
      const int64_t blk = tables[b * max_blocks + t / bs];
      slot_of[t] = blk * bs + t % bs;
      RLCU_CHECK(blk >= 0 && slot_of[t] < num_slots, "{}: row {} token {} maps to slot {} outside the pool", op, b, t,
                 slot_of[t]);
    }
    score.resize(static_cast<size_t>(n));
    for (int64_t h = 0; h < nq; ++h) {
      const float* qh = q.ptr<float>() + (b * nq + h) * hd;
      const int64_t g = h / group;
      float* o = out.ptr<float>() + (b * nq + h) * hd;
      if (n == 0) {
        std::fill_n(o, hd, 0.0f);
        continue;
      }
      double mx = -std::numeric_limits<double>::infinity();
      for (int64_t t = 0; t < n; ++t) {
        const float* kt = kc + (slot_of[t] * nkv + g) * hd;
        double s = 0.0;
        for (int64_t d = 0; d < hd; ++d) s += static_cast<double>(qh[d]) * kt[d];
        score[t] = p.scale * s;
        mx = std::max(mx, score[t]);
      }
      double sum = 0.0;
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t t = 0; t < n; ++t) {
        const double w = std::exp(score[t] - mx);
        sum += w;
        const float* vt = vc + (slot_of[t] * nkv + g) * hd;
        for (int64_t d = 0; d < hd; ++d) acc[d] += w * vt[d];
      }
      for (int64_t d = 0; d < hd; ++d) o[d] = static_cast<float>(acc[d] / sum);
    }
  }
  });
}

}  // namespace rlcu::cpu
