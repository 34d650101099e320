// One decoder layer's forward, written once against include/rlcu/ops.h and called by the training / scoring forward
// (Transformer, src/model/transformer.cpp) and by the engine's runner (prefill and decode), so that rollout and
// training run the same ops with the same arguments in the same order. The math is model.h's, per layer:
//   h1 = rmsnorm(x) * w_in;  q, k, v = projections of h1 (+ bias) -> [QK-norm] -> rope
//   [KV cache: k, v written at their slots];  a = attention(q, k, v)
//   x_mid = x + a Wo^T (+ bo);  h2 = rmsnorm(x_mid) * w_post;  gate_up = h2 Wgu^T
//   x_out = x_mid + swiglu(gate_up) Wd^T                      (the residual adds are fused into the products)
//
// q/k/v come from one of two paths, chosen by LayerOptions::fused_qkv (fused_qkv_available says when the weights
// allow it): one product qkv = h1 Wqkv^T and one ops::qkv_prepare (bias, QK-norm, rope and the cache write in one
// kernel), or the separate products, bias_add, per-head rmsnorm_fwd, rope_fwd and kv_cache_write.
//
// Attention sits behind AttentionSpec:
//   dense: causal attention within each packed sequence (ops::attention_fwd; writes lse) — training, scoring and the
//          engine's prefill (a prefill always starts at position 0, so no cached context is read);
//   paged: one query token per sequence over the paged KV cache (ops::paged_attention_decode) — decode; the dense
//          k / v copies are then not written on the fused path;
//   with_cache(k_cache, v_cache, slots): this layer's K/V rows are also written into its cache planes at `slots`
//          (prefill and decode; paged attention requires it). Without a cache nothing but the buffers is written.
//
// Buffers: each caller carves LayerBuffers out of its own arena with at least T rows; a call with x [T, H] works on
// the first T rows of each. Inference may alias them (the runner keeps one residual buffer updated in place):
// x_mid may be x and x_out may be x_mid, since an addend product reads its addend where it writes (see ops::gemm);
// h2 may share h1's storage, rstd2 / rstd_q / rstd_k rstd1's (statistics are written, never read, by the forward).
// The residual (x, x_mid, x_out) may be F32 while the other activations are in the activation dtype.
#pragma once

#include <cstdint>

#include "rlcu/context.h"
#include "rlcu/model.h"
#include "rlcu/tensor.h"

namespace rlcu {

// Views of what one layer writes, each with >= T rows (shapes for Tm rows; qd = nq*hd, kvd = nkv*hd).
struct LayerBuffers {
  Tensor rstd1, h1;       // [Tm] F32, [Tm, H]
  Tensor qkv;             // fused path: the raw projection [Tm, qd + 2 kvd]
  Tensor q_raw, k_raw;    // separate path with QK-norm: the projections before the norm [Tm, qd], [Tm, kvd]
  Tensor rstd_q, rstd_k;  // separate path with QK-norm: [Tm, nq], [Tm, nkv] F32
  Tensor q, k, v;         // after bias / QK-norm / rope: [Tm, qd], [Tm, kvd], [Tm, kvd]
  Tensor attn, lse;       // attention output [Tm, qd]; dense attention's log-sum-exp [Tm, nq] F32
  Tensor x_mid;           // x + attn Wo^T (+ bo) [Tm, H], the residual dtype
  Tensor rstd2, h2;       // [Tm] F32, [Tm, H]
  Tensor gate_up, act;    // [Tm, 2I]; swiglu(gate_up) [Tm, I] (only with LayerOptions::full)
};

enum class AttentionKind { Dense, Paged };

struct AttentionSpec {
  AttentionKind kind = AttentionKind::Dense;
  // dense
  Tensor cu_seqlens;  // [S+1] I32
  int num_seqs = 0;
  int max_seqlen = 0;
  // paged (one query row per sequence, B rows)
  Tensor block_tables;  // [B, max_blocks] I32
  Tensor context_lens;  // [B] I32
  Tensor workspace;     // F32, >= ops::paged_attention_workspace_elems(B, nq, hd, num_splits)
  int block_size = 16;
  int num_splits = 1;
  // this layer's KV cache planes [num_slots, nkv, hd] and the token slots [T] I32; empty: no cache
  Tensor k_cache, v_cache, slots;

  static AttentionSpec dense(const Tensor& cu_seqlens, int num_seqs, int max_seqlen);
  static AttentionSpec paged(const Tensor& block_tables, const Tensor& context_lens, const Tensor& workspace,
                             int block_size, int num_splits);
  // The same attention, also writing K/V into the given cache planes at `slots`.
  AttentionSpec with_cache(const Tensor& k_cache, const Tensor& v_cache, const Tensor& slots) const;
  bool writes_cache() const { return !k_cache.empty(); }
};

struct LayerOptions {
  bool fused_qkv = false;  // the fused q/k/v path (needs fused_qkv_available for the layer's weights)
  // false: stop after the gate_up product (the backward's recompute of a checkpointed layer); act and x_out are
  // then not written and x_out may be empty.
  bool full = true;
};

// Whether `w` has the fused q/k/v views (LayerWeights::qkv, and qkv_bias when the model has q/k/v biases).
bool fused_qkv_available(const LayerWeights& w, const ModelConfig& c);

// x_out [T, H] = the layer applied to x [T, H]; positions [T] I32, inv_freq [hd/2] F32 (Model::inv_freq()).
void layer_forward(const Tensor& x_out, const LayerBuffers& buf, const Tensor& x, const LayerWeights& w,
                   const Tensor& positions, const Tensor& inv_freq, const ModelConfig& c, const AttentionSpec& attn,
                   const LayerOptions& opt, Context& ctx);

}  // namespace rlcu
