// Contracts of the paged KV-cache ops of include/rlcu/ops.h (kernels/op_table.inc rows with CONTRACT = 1): equal
// k/v caches [slots, nkv, hd], rows of the cache's dtype and head shape, I32 slots / copies [C, 3] / block tables
// [B, max_blocks] / context lengths [B], q and out [B, nq, hd] with nq a multiple of nkv, block_size and num_splits
// >= 1. The backends keep what is theirs: the CPU twin (kernels/cpu/paged_attention.cpp) takes non-empty F32 and
// reads the slots, copies and tables; the CUDA kernels (kernels/paged_attention.cu) their grid limits (hd <= 256,
// num_splits <= 65535, batch and plane counts) and the split-KV workspace.
#include "contract/contract.h"

namespace rlcu::contract {

namespace {

void check_cache(const char* op, const Tensor& k_cache, const Tensor& v_cache) {
  RLCU_CHECK(k_cache.ndim == 3 && v_cache.ndim == 3 && k_cache.dtype == v_cache.dtype &&
                 v_cache.shape[0] == k_cache.shape[0] && v_cache.shape[1] == k_cache.shape[1] &&
                 v_cache.shape[2] == k_cache.shape[2],
             "{}: k_cache {} {} and v_cache {} {} must be equal [slots, nkv, hd] tensors", op,
             dtype_name(k_cache.dtype), k_cache.shape_str(), dtype_name(v_cache.dtype), v_cache.shape_str());
}

}  // namespace

void kv_cache_write(const Tensor& k_cache, const Tensor& v_cache, const Tensor& k, const Tensor& v,
                    const Tensor& slots) {
  const char* op = "kv_cache_write";
  check_cache(op, k_cache, v_cache);
  RLCU_CHECK(k.dtype == k_cache.dtype && v.dtype == k_cache.dtype && k.ndim == 3 && v.ndim == 3 &&
                 k.shape[1] == k_cache.shape[1] && k.shape[2] == k_cache.shape[2] && v.shape[0] == k.shape[0] &&
                 v.shape[1] == k.shape[1] && v.shape[2] == k.shape[2],
             "{}: k {} {} / v {} {} do not match the cache {} {}", op, dtype_name(k.dtype), k.shape_str(),
             dtype_name(v.dtype), v.shape_str(), dtype_name(k_cache.dtype), k_cache.shape_str());
  RLCU_CHECK(slots.dtype == DType::I32 && slots.numel() == k.shape[0], "{}: slots {} {} for {} rows", op,
             dtype_name(slots.dtype), slots.shape_str(), k.shape[0]);
}

void kv_block_copy(const Tensor& cache, const Tensor& copies) {
  const char* op = "kv_block_copy";
  RLCU_CHECK(cache.ndim == 3, "{}: cache has shape {}, expected [planes, slots, W]", op, cache.shape_str());
  RLCU_CHECK(copies.dtype == DType::I32 && copies.ndim == 2 && copies.shape[1] == 3,
             "{}: copies {} {}, expected i32 [C, 3]", op, dtype_name(copies.dtype), copies.shape_str());
}

void paged_attention_decode(const Tensor& out, const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                            const Tensor& block_tables, const Tensor& context_lens, const Tensor& workspace,
                            const ops::PagedAttentionParams& p) {
  (void)workspace;
  const char* op = "paged_attention_decode";
  check_cache(op, k_cache, v_cache);
  RLCU_CHECK(q.ndim == 3 && out.ndim == 3 && q.dtype == k_cache.dtype && out.dtype == q.dtype &&
                 out.shape[0] == q.shape[0] && out.shape[1] == q.shape[1] && out.shape[2] == q.shape[2],
             "{}: q {} {} / out {} {} must be equal [B, nq, hd] tensors of the cache dtype {}", op,
             dtype_name(q.dtype), q.shape_str(), dtype_name(out.dtype), out.shape_str(), dtype_name(k_cache.dtype));
  const int64_t B = q.shape[0], nq = q.shape[1], hd = q.shape[2], nkv = k_cache.shape[1];
  RLCU_CHECK(k_cache.shape[2] == hd && nkv >= 1 && nq % nkv == 0, "{}: q {} does not match the cache {}", op,
             q.shape_str(), k_cache.shape_str());
  RLCU_CHECK(block_tables.dtype == DType::I32 && block_tables.ndim == 2 && block_tables.shape[0] == B,
             "{}: block_tables {} {}, expected i32 [{}, max_blocks]", op, dtype_name(block_tables.dtype),
             block_tables.shape_str(), B);
  RLCU_CHECK(context_lens.dtype == DType::I32 && context_lens.numel() == B, "{}: context_lens {} {} for {} rows", op,
             dtype_name(context_lens.dtype), context_lens.shape_str(), B);
  RLCU_CHECK(p.block_size >= 1 && p.num_splits >= 1, "{}: block_size {} and num_splits {} must be >= 1", op,
             p.block_size, p.num_splits);
}

}  // namespace rlcu::contract
