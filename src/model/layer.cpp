// One decoder layer's forward for training, scoring and the engine (see include/rlcu/layer.h for the math, the
// attention interface and the buffer rules). Activations overwrite; nothing is allocated.
#include "rlcu/layer.h"

#include <cmath>

#include "rlcu/error.h"
#include "rlcu/ops.h"

namespace rlcu {

namespace {

Tensor rows(const Tensor& t, int64_t n) { return t.slice_rows(0, n); }

// y = x W^T
ops::GemmParams linear() {
  ops::GemmParams p;
  p.trans_b = true;
  return p;
}

// out = addend + x W^T: the residual add fused into the product
ops::GemmParams linear_add(const Tensor& addend) {
  ops::GemmParams p = linear();
  p.beta = 1.0f;
  p.addend = &addend;
  return p;
}

struct Dims {
  int64_t T, nq, nkv, hd;
  float eps;
};

// q, k, v [T, *] from h1, with bias, QK-norm and rope, and the cache write when the spec has a cache.
void project_qkv(const LayerBuffers& buf, const Tensor& h1, const LayerWeights& w, const Tensor& positions,
                 const Tensor& inv_freq, const ModelConfig& c, const AttentionSpec& attn, bool fused, const Dims& d,
                 Context& ctx) {
  const int64_t T = d.T, nq = d.nq, nkv = d.nkv, hd = d.hd;
  const Tensor q = rows(buf.q, T), k = rows(buf.k, T), v = rows(buf.v, T);
  const Tensor q3 = q.view({T, nq, hd}), k3 = k.view({T, nkv, hd}), v3 = v.view({T, nkv, hd});
  if (fused) {
    // One product, then bias / QK-norm / rope / cache write in one kernel: the same values as the ops below.
    // Paged attention reads K/V from the cache only, so no dense copies are written then.
    const Tensor qkv = rows(buf.qkv, T);
    const bool dense_kv = attn.kind == AttentionKind::Dense;
    ops::gemm(qkv, h1, w.qkv, linear(), ctx);
    ops::qkv_prepare(q3, dense_kv ? k3 : Tensor(), dense_kv ? v3 : Tensor(), attn.k_cache, attn.v_cache, qkv,
                     w.qkv_bias, w.q_norm, w.k_norm, d.eps, positions, inv_freq, attn.slots, ctx);
    return;
  }
  const Tensor q_lin = c.qk_norm ? rows(buf.q_raw, T) : q;
  const Tensor k_lin = c.qk_norm ? rows(buf.k_raw, T) : k;
  ops::gemm(q_lin, h1, w.q, linear(), ctx);
  ops::gemm(k_lin, h1, w.k, linear(), ctx);
  ops::gemm(v, h1, w.v, linear(), ctx);
  if (c.qkv_bias) {
    ops::bias_add(q_lin, w.q_bias, ctx);
    ops::bias_add(k_lin, w.k_bias, ctx);
    ops::bias_add(v, w.v_bias, ctx);
  }
  if (c.qk_norm) {
    ops::rmsnorm_fwd(q.view({T * nq, hd}), rows(buf.rstd_q, T).view({T * nq}), q_lin.view({T * nq, hd}), w.q_norm,
                     d.eps, ctx);
    ops::rmsnorm_fwd(k.view({T * nkv, hd}), rows(buf.rstd_k, T).view({T * nkv}), k_lin.view({T * nkv, hd}),
                     w.k_norm, d.eps, ctx);
  }
  ops::rope_fwd(q3, q3, positions, inv_freq, ctx);
  ops::rope_fwd(k3, k3, positions, inv_freq, ctx);
  if (attn.writes_cache()) ops::kv_cache_write(attn.k_cache, attn.v_cache, k3, v3, attn.slots, ctx);
}

// attn [T, qd] from q (and k, v or the cache).
void attend(const LayerBuffers& buf, const AttentionSpec& attn, const Dims& d, Context& ctx) {
  const int64_t T = d.T;
  const Tensor a3 = rows(buf.attn, T).view({T, d.nq, d.hd}), q3 = rows(buf.q, T).view({T, d.nq, d.hd});
  const float scale = 1.0f / std::sqrt(static_cast<float>(d.hd));
  if (attn.kind == AttentionKind::Paged) {
    ops::PagedAttentionParams pp;
    pp.block_size = attn.block_size;
    pp.num_splits = attn.num_splits;
    pp.scale = scale;
    ops::paged_attention_decode(a3, q3, attn.k_cache, attn.v_cache, attn.block_tables, attn.context_lens,
                                attn.workspace, pp, ctx);
    return;
  }
  ops::AttentionParams ap;
  ap.num_seqs = attn.num_seqs;
  ap.max_seqlen = attn.max_seqlen;
  ap.scale = scale;
  ops::attention_fwd(a3, rows(buf.lse, T), q3, rows(buf.k, T).view({T, d.nkv, d.hd}),
                     rows(buf.v, T).view({T, d.nkv, d.hd}), attn.cu_seqlens, ap, ctx);
}

}  // namespace

AttentionSpec AttentionSpec::dense(const Tensor& cu_seqlens, int num_seqs, int max_seqlen) {
  AttentionSpec s;
  s.kind = AttentionKind::Dense;
  s.cu_seqlens = cu_seqlens;
  s.num_seqs = num_seqs;
  s.max_seqlen = max_seqlen;
  return s;
}

AttentionSpec AttentionSpec::paged(const Tensor& block_tables, const Tensor& context_lens, const Tensor& workspace,
                                   int block_size, int num_splits) {
  AttentionSpec s;
  s.kind = AttentionKind::Paged;
  s.block_tables = block_tables;
  s.context_lens = context_lens;
  s.workspace = workspace;
  s.block_size = block_size;
  s.num_splits = num_splits;
  return s;
}

AttentionSpec AttentionSpec::with_cache(const Tensor& k_cache, const Tensor& v_cache, const Tensor& slots) const {
  AttentionSpec s = *this;
  s.k_cache = k_cache;
  s.v_cache = v_cache;
  s.slots = slots;
  return s;
}

bool fused_qkv_available(const LayerWeights& w, const ModelConfig& c) {
  return !w.qkv.empty() && (!c.qkv_bias || !w.qkv_bias.empty());
}

void layer_forward(const Tensor& x_out, const LayerBuffers& buf, const Tensor& x, const LayerWeights& w,
                   const Tensor& positions, const Tensor& inv_freq, const ModelConfig& c, const AttentionSpec& attn,
                   const LayerOptions& opt, Context& ctx) {
  const Dims d{x.size(0), c.num_heads, c.num_kv_heads, c.head_dim, static_cast<float>(c.rms_norm_eps)};
  const int64_t T = d.T;
  RLCU_CHECK(x.ndim == 2 && x.size(1) == c.hidden_size && positions.numel() == T, "layer_forward: x {}, positions {}",
             x.shape_str(), positions.shape_str());
  RLCU_CHECK(!opt.fused_qkv || fused_qkv_available(w, c), "layer_forward: fused q/k/v without the fused weights");
  RLCU_CHECK(attn.kind == AttentionKind::Dense || attn.writes_cache(), "layer_forward: paged attention needs a cache");
  RLCU_CHECK(!opt.full || x_out.numel() == x.numel(), "layer_forward: x_out {} for x {}", x_out.shape_str(),
             x.shape_str());

  const Tensor h1 = rows(buf.h1, T);
  ops::rmsnorm_fwd(h1, rows(buf.rstd1, T), x, w.input_norm, d.eps, ctx);
  project_qkv(buf, h1, w, positions, inv_freq, c, attn, opt.fused_qkv, d, ctx);
  attend(buf, attn, d, ctx);
  const Tensor x_mid = rows(buf.x_mid, T);
  ops::gemm(x_mid, rows(buf.attn, T), w.o, linear_add(x), ctx);
  if (c.o_bias) ops::bias_add(x_mid, w.o_bias, ctx);
  const Tensor h2 = rows(buf.h2, T), gu = rows(buf.gate_up, T);
  ops::rmsnorm_fwd(h2, rows(buf.rstd2, T), x_mid, w.post_norm, d.eps, ctx);
  ops::gemm(gu, h2, w.gate_up, linear(), ctx);
  if (!opt.full) return;
  const Tensor act = rows(buf.act, T);
  ops::swiglu_fwd(act, gu, ctx);
  ops::gemm(x_out, act, w.down, linear_add(x_mid), ctx);
}

}  // namespace rlcu
