// The op layer: every numerical operation the model, engine and trainer use. Each op dispatches on the device of
// its first (output) tensor to `rlcu::cpu::<op>` (kernels/cpu, fp32 plain loops, the test oracle) or
// `rlcu::cuda::<op>` (kernels/*.cu). All tensors of one call must live on the same device.
//
// Conventions
//   * Outputs first, then inputs, then a params struct, then the context.
//   * Parameter gradients ACCUMULATE (+=) into fp32 buffers; activation gradients OVERWRITE (=).
//   * Activations are F32 on the CPU and F32 or BF16 on CUDA; statistics saved for backward (rstd, lse) are F32;
//     token ids / positions / cu_seqlens are I32.
//   * Shapes below use T = tokens in the packed micro-batch, H = hidden size, nq/nkv = query/key-value heads,
//     hd = head dim, I = intermediate size, V = vocabulary, S = sequences (cu_seqlens has S+1 entries).
#pragma once

#include <cstdint>

#include "rlcu/context.h"
#include "rlcu/tensor.h"

namespace rlcu::ops {

// ---- matrix products -------------------------------------------------------------------------------------
// out[M,N] = alpha * op(a) @ op(b) + beta * out, with op(x) = x or x^T; 2-D row-major views.
// Linear forward y = x W^T is gemm(y, x, W, {.trans_b = true}); dx = dy W is gemm(dx, dy, W, {});
// dW += dy^T x is gemm(dW, dy, x, {.trans_a = true, .beta = 1}). `out` may be F32 while a/b are BF16.
// With `addend` set, the beta term reads it instead of out: out = alpha * op(a) @ op(b) + beta * addend (same shape
// and dtype as out, may alias it), which fuses a residual add: x_mid = x + attn Wo^T in one product.
struct GemmParams {
  bool trans_a = false;
  bool trans_b = false;
  float alpha = 1.0f;
  float beta = 0.0f;
  const Tensor* addend = nullptr;
};
void gemm(const Tensor& out, const Tensor& a, const Tensor& b, const GemmParams& p, Context& ctx);

// out[T,N] += bias[N] (broadcast over rows).            dbias[N] += sum over rows of dy[T,N].
void bias_add(const Tensor& out, const Tensor& bias, Context& ctx);
void bias_grad(const Tensor& dbias, const Tensor& dy, Context& ctx);

// ---- embedding ---------------------------------------------------------------------------------------------
// out[T,H] = table[ids[t], :].                           dtable[V,H] += scatter of dout rows at ids.
void embedding_fwd(const Tensor& out, const Tensor& table, const Tensor& ids, Context& ctx);
void embedding_bwd(const Tensor& dtable, const Tensor& dout, const Tensor& ids, Context& ctx);

// ---- RMSNorm over the last dim (rows of any width; per-head QK-norm is rows = T*heads, D = hd) -------------
// out = x * rstd * weight, rstd[N] = 1/sqrt(mean(x^2) + eps) saved for backward. On CUDA, x may be F32 with a
// BF16 out (and, in backward, BF16 dout/dx): the F32 residual stream feeding bf16 activations.
void rmsnorm_fwd(const Tensor& out, const Tensor& rstd, const Tensor& x, const Tensor& weight, float eps,
                 Context& ctx);
// dx[N,D] = ..., dweight[D] += sum_n dout * x * rstd.
void rmsnorm_bwd(const Tensor& dx, const Tensor& dweight, const Tensor& dout, const Tensor& x,
                 const Tensor& weight, const Tensor& rstd, Context& ctx);
// The same with dx += (instead of =) the input gradient: fuses the residual-gradient add. dx must not alias dout.
void rmsnorm_bwd_add(const Tensor& dx, const Tensor& dweight, const Tensor& dout, const Tensor& x,
                     const Tensor& weight, const Tensor& rstd, Context& ctx);

// ---- rotary position embedding (NeoX half-split layout, as Hugging Face rotate_half) ------------------------
// x[T,nh,hd]; for i < hd/2 with angle a = positions[t] * inv_freq[i]:
//   out[i] = x[i] cos a - x[i+hd/2] sin a,  out[i+hd/2] = x[i+hd/2] cos a + x[i] sin a.
// inv_freq[hd/2] (F32) already holds the default or llama3-scaled frequencies; out may alias x.
void rope_fwd(const Tensor& out, const Tensor& x, const Tensor& positions, const Tensor& inv_freq, Context& ctx);
// The transpose rotation (angle -a): dx from dout. dx may alias dout.
void rope_bwd(const Tensor& dx, const Tensor& dout, const Tensor& positions, const Tensor& inv_freq, Context& ctx);

// ---- causal attention over packed variable-length sequences, grouped-query -----------------------------------
// q[T,nq,hd], k,v[T,nkv,hd], query head h reads kv head h / (nq/nkv). Sequence s spans rows
// [cu_seqlens[s], cu_seqlens[s+1]); token i attends to tokens j <= i of its own sequence.
// out[T,nq,hd]; lse[T,nq] (F32) = log-sum-exp of the scaled scores, saved for backward.
struct AttentionParams {
  int num_seqs = 0;    // S
  int max_seqlen = 0;  // longest sequence (a hint for the CUDA grid)
  float scale = 0.0f;  // usually 1/sqrt(hd)
};
void attention_fwd(const Tensor& out, const Tensor& lse, const Tensor& q, const Tensor& k, const Tensor& v,
                   const Tensor& cu_seqlens, const AttentionParams& p, Context& ctx);
// dq, dk, dv overwrite.
void attention_bwd(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dout, const Tensor& q,
                   const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse,
                   const Tensor& cu_seqlens, const AttentionParams& p, Context& ctx);

// ---- paged KV cache (generation) -------------------------------------------------------------------------------
// The KV cache of one layer is a pair k_cache, v_cache [num_slots, nkv, hd] (BF16 on CUDA, F32 on the CPU); the pool
// slot of token offset o in block b is b * block_size + o (see src/engine/block_manager.h).
// kv_cache_write: k_cache[slots[t]] = k[t], v_cache[slots[t]] = v[t] for k, v [T,nkv,hd] (same dtype as the cache);
// slots [T] I32, a negative slot skips the row.
void kv_cache_write(const Tensor& k_cache, const Tensor& v_cache, const Tensor& k, const Tensor& v,
                    const Tensor& slots, Context& ctx);
// ---- fused Q/K/V preparation (generation) ----
// qkv [T, qd + 2 kvd]: rows [q | k | v] of one fused projection (qd = nq*hd, kvd = nkv*hd; nq, nkv, hd come
// from q_out [T, nq, hd] and k_cache [num_slots, nkv, hd]). For every token t this does exactly what these
// separate ops do on the q, k and v column blocks, with the same roundings to the activation dtype:
//   bias_add (bias [qd + 2 kvd], may be empty) -> per-head rmsnorm_fwd of q and k (q_norm, k_norm [hd] with eps;
//   both empty = no QK-norm) -> rope_fwd of q and k at positions[t] with inv_freq [hd/2] -> q_out[t] = q,
//   k_cache[slots[t]] = k, v_cache[slots[t]] = v (negative slot: no cache write, as kv_cache_write), and when
//   k_out / v_out ([T, nkv, hd]) are non-empty also k_out[t] = k, v_out[t] = v (dense copies for prefill attention).
// Everything has the dtype of the cache (BF16 on CUDA, F32 on the CPU); positions and slots I32 [T]. On CUDA bias,
// q_norm and k_norm may also be F32 (as bias_add / rmsnorm_fwd accept), and the result is bit-identical to the
// composed CUDA ops on 16-byte-aligned buffers (the norm's reduction order included); inv_freq is F32.
void qkv_prepare(const Tensor& q_out, const Tensor& k_out, const Tensor& v_out, const Tensor& k_cache,
                 const Tensor& v_cache, const Tensor& qkv, const Tensor& bias, const Tensor& q_norm,
                 const Tensor& k_norm, float eps, const Tensor& positions, const Tensor& inv_freq,
                 const Tensor& slots, Context& ctx);
// "No KV cache" mode (the training / scoring forward): k_cache and v_cache both empty; nq, nkv and hd then come from
// q_out [T, nq, hd] and k_out [T, nkv, hd], k_out and v_out are required, and slots is ignored (may be empty).
//
// Backward of qkv_prepare's q_out / k_out / v_out with respect to its input qkv (the raw projection, before the bias).
// dq [T,nq,hd], dk, dv [T,nkv,hd] are the gradients of q_out, k_out, v_out (after rope). Per q / k head row:
//   g = rope_bwd(dq row) (transpose rotation, may stay fp32); with QK-norm, x = qkv row + bias (rounded to the
//   activation dtype as bias_add stores it), rstd recomputed from x as rmsnorm_fwd does (fp32), dx = the
//   rmsnorm_bwd of g, and dq_norm / dk_norm [hd] (F32) += sum over rows of g * x * rstd (ACCUMULATE, deterministic);
//   without QK-norm dx = g.
// dqkv [T, qd + 2 kvd] (activation dtype) = [dx of the q heads | dx of the k heads | dv] (OVERWRITE). bias, q_norm /
// k_norm (and then dq_norm / dk_norm) may be empty; qkv and bias are only read with QK-norm (qkv may be empty
// without it). The bias gradient is not part of this op: bias_grad(dbias, dqkv). dtypes as qkv_prepare (norm
// weights F32 or the activation dtype on CUDA); positions I32, inv_freq F32.
void qkv_prepare_bwd(const Tensor& dqkv, const Tensor& dq_norm, const Tensor& dk_norm, const Tensor& dq,
                     const Tensor& dk, const Tensor& dv, const Tensor& qkv, const Tensor& bias, const Tensor& q_norm,
                     const Tensor& k_norm, float eps, const Tensor& positions, const Tensor& inv_freq, Context& ctx);
// Copy-on-write of partially filled blocks across the whole model. cache [P, num_slots, W]: every plane (P = 2 *
// layers: each layer's K and V) viewed as rows of W = nkv * hd elements. copies [C, 3] I32 rows (src_slot,
// dst_slot, count): rows [dst_slot, dst_slot + count) of every plane receive rows [src_slot, src_slot + count).
// Source and destination ranges never overlap.
void kv_block_copy(const Tensor& cache, const Tensor& copies, Context& ctx);
// Decode attention over the paged cache: one query token per sequence, q [B,nq,hd] (its own K/V already written
// to the cache). For sequence b, with n = context_lens[b] and token p at slot
// block_tables[b, p / block_size] * block_size + p % block_size:
//   out[b,h] = sum_{p<n} softmax_p(scale * q[b,h] . k_p) v_p        over kv head h / (nq/nkv) (GQA)
// n = 0 gives an all-zero row (padding rows of a bucketed batch). block_tables [B, max_blocks] I32 (row stride
// max_blocks; entries past ceil(n / block_size) are ignored). out [B,nq,hd] has the dtype of q.
// Split-KV ("flash-decoding"): the CUDA kernel splits a context of n tokens into min(num_splits, ceil(n / 64))
// equal chunks that run in parallel and merges their partial results by log-sum-exp; the grid depends only on B and
// num_splits, never on the context lengths, so a decode step can be captured in a CUDA graph. `workspace` F32 holds the partials, at
// least paged_attention_workspace_elems(B, nq, hd, num_splits) elements (unused on the CPU, may be empty there).
struct PagedAttentionParams {
  int block_size = 16;
  int num_splits = 1;  // >= 1
  float scale = 0.0f;
};
inline int64_t paged_attention_workspace_elems(int64_t B, int64_t nq, int64_t hd, int64_t num_splits) {
  return B * nq * num_splits * (hd + 2);
}
void paged_attention_decode(const Tensor& out, const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                            const Tensor& block_tables, const Tensor& context_lens, const Tensor& workspace,
                            const PagedAttentionParams& p, Context& ctx);

// ---- SwiGLU --------------------------------------------------------------------------------------------------
// gate_up[T,2I] holds gate in columns [0,I) and up in [I,2I); out[T,I] = silu(gate) * up.
void swiglu_fwd(const Tensor& out, const Tensor& gate_up, Context& ctx);
// dgate_up[T,2I] overwrite.
void swiglu_bwd(const Tensor& dgate_up, const Tensor& dout, const Tensor& gate_up, Context& ctx);

// ---- elementwise -------------------------------------------------------------------------------------------
void add(const Tensor& out, const Tensor& a, const Tensor& b, Context& ctx);  // out = a + b; out may alias a or b
void scale(const Tensor& out, const Tensor& x, float s, Context& ctx);      // out = s * x; may alias
void cast(const Tensor& out, const Tensor& x, Context& ctx);                // dtype conversion, same shape
void fill(const Tensor& out, float value, Context& ctx);

// ---- fused log-prob head ---------------------------------------------------------------------------------------
// z[t,:] = (hidden[t,:] @ weight^T) * inv_temperature (logits of the next token, V wide);
// logprob[t] = z[t, targets[t]] - lse[t];   entropy[t] = lse[t] - sum_j softmax(z)_j z_j.
// targets[t] < 0 marks a position without a target: logprob = entropy = 0 there and it gets no gradient.
// The CUDA version never stores a [T,V] F32 tensor. `entropy` may be an empty Tensor (not computed).
//
// Saved softmax (optional: trades [T,V] elements of memory for the backward's logits product). With
// LogprobParams::probs [T,V] (the dtype of hidden) and ::prob_stats [T, logprob_prob_stats_cols(V)] (F32) set,
// logprob_fwd also writes, for the vocabulary split into S = ceil(V / kLogprobSegment) segments of
// kLogprobSegment columns:
//   prob_stats[t, s] = max of z[t, j] over segment s (s < S),   prob_stats[t, S] = z[t, targets[t]] (0 without a
//   target),   prob_stats[t, S+1] = sum_j softmax(z)_j z_j,   probs[t, j] = exp(z[t, j] - prob_stats[t, j / seg]).
// logprob_bwd given the same two tensors (with the forward's lse) takes p[t, j] = probs[t, j] exp(prob_stats[t, s] -
// lse[t]) (the target's exp(prob_stats[t, S] - lse[t]), exact) and z[t, j] = prob_stats[t, s] + log probs[t, j]
// instead of recomputing the logits. Both null: nothing is saved and the backward recomputes.
constexpr int64_t kLogprobSegment = 256;
inline int64_t logprob_prob_stats_cols(int64_t vocab) { return (vocab + kLogprobSegment - 1) / kLogprobSegment + 2; }
struct LogprobParams {
  float inv_temperature = 1.0f;
  const Tensor* probs = nullptr;       // [T, V], dtype of hidden
  const Tensor* prob_stats = nullptr;  // [T, logprob_prob_stats_cols(V)] F32
};
void logprob_fwd(const Tensor& logprob, const Tensor& entropy, const Tensor& lse, const Tensor& hidden,
                 const Tensor& weight, const Tensor& targets, const LogprobParams& p, Context& ctx);
// dhidden[T,H] overwrite; dweight[V,H] (F32) accumulate, or empty: no head gradient (a frozen head, LoRA).
// dentropy may be empty (treated as zero).
void logprob_bwd(const Tensor& dhidden, const Tensor& dweight, const Tensor& dlogprob, const Tensor& dentropy,
                 const Tensor& hidden, const Tensor& weight, const Tensor& targets, const Tensor& lse,
                 const LogprobParams& p, Context& ctx);

// ---- optimizer -----------------------------------------------------------------------------------------------
// out[0] (F32) = sum of squares of x (F32), deterministic (fixed reduction order for a given size).
void sum_squares(const Tensor& out, const Tensor& x, Context& ctx);
// Fused AdamW over flat F32 master weights, with decoupled weight decay; g = grad * grad_scale (clipping);
// m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; master -= lr * (mhat / (sqrt(vhat) + eps) + wd * master)
// with bias corrections for `step` (1-based). When `weights` (BF16) is not empty it receives the rounded master.
struct AdamWParams {
  float lr = 1e-6f;
  float beta1 = 0.9f;
  float beta2 = 0.999f;
  float eps = 1e-8f;
  float weight_decay = 0.0f;
  float grad_scale = 1.0f;
  int64_t step = 1;
};
void adamw_update(const Tensor& master, const Tensor& m, const Tensor& v, const Tensor& weights,
                  const Tensor& grad, const AdamWParams& p, Context& ctx);
// 8-bit AdamW (kernels/adamw8_common.h): the same update as adamw_update in fp32 arithmetic, with both moments
// stored blockwise-quantised, kAdamw8Block elements per block: m as U8 codes [n] of the signed dynamic table and F32
// absmax [ceil(n / kAdamw8Block)], v as U8 codes [n] of the unsigned dynamic table and F32 absmax. Each block is
// dequantised, updated (the master uses the fresh fp32 moments) and requantised with its new absmax. CPU and CUDA
// give bit-identical results. `weights` as in adamw_update (BF16 rounded to nearest even, or F32).
constexpr int64_t kAdamw8Block = 256;
void adamw8_update(const Tensor& master, const Tensor& m_codes, const Tensor& m_absmax, const Tensor& v_codes,
                   const Tensor& v_absmax, const Tensor& weights, const Tensor& grad, const AdamWParams& p,
                   Context& ctx);

// ---- sampler ---------------------------------------------------------------------------------------------------
// One next token per row of logits[B,V] (F32 or BF16). With z = logits / temperature (fp32; NaN counts as -inf):
//   greedy: tokens[b] = argmax_j z_j (lowest index on ties).
//   otherwise a draw from the parent distribution softmax(z) restricted to the kept set and renormalised, where
//   token j is kept iff z_j >= max(kth, pth, m + log(min_p)) with m = max z:
//     kth  (top_k > 0)  the top_k-th largest z (every token tied with it is kept too);
//     pth  (top_p < 1)  the largest z value whose tokens with z >= it, among those kept by top-k, hold at least
//                       top_p of that set's mass;
//     min_p (> 0)       keeps tokens with probability >= min_p * the largest probability.
// logprobs[b] = z_tok - logsumexp(z): the chosen token's log-prob under the temperature-scaled FULL distribution
// (the parent, before top-k/top-p/min-p), which is what the trainer's log-prob head computes.
// Randomness is a Gumbel race, tok = argmax_{j kept} z_j - log(-log u_j), with u_j from counter-based Philox4x32-10
// keyed by (seed, seq_ids[b], positions[b]) and the vocabulary index: a row's token does not depend on the batch
// it is in or on the device (CPU and CUDA draw the same words; they pick the same token except where two
// candidates' scores, or a token and a top-p/min-p bound, lie within float rounding). A caller that samples the
// same (sequence, position) again, e.g. in a later RL step, folds the step into `seed`. A row without a finite maximum (all -inf/NaN, or a +inf) gets token -1, logprob -inf.
// tokens[B] I32, logprobs[B] F32 (may be empty), seq_ids[B] and positions[B] I32.
struct SampleParams {
  uint64_t seed = 0;
  float temperature = 1.0f;  // > 0; also scales the returned log-prob under greedy
  int top_k = 0;             // 0 = off
  float top_p = 1.0f;        // in (0, 1]; 1 = off
  float min_p = 0.0f;        // in [0, 1]; 0 = off
  bool greedy = false;
};
void sample(const Tensor& tokens, const Tensor& logprobs, const Tensor& logits, const Tensor& seq_ids,
            const Tensor& positions, const SampleParams& p, Context& ctx);

}  // namespace rlcu::ops
