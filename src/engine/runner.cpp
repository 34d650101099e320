// The engine's model runner (see runner.h for what it owns, the cache layout and the CUDA-graph scheme; the layer
// math is rlcu/layer.h's).
#include "runner.h"

#include <algorithm>
#include <cstring>
#include <map>

#include "rlcu/error.h"
#include "rlcu/layer.h"

namespace rlcu::engine {

int64_t decode_bucket(int64_t batch, int64_t max_batch) {
  RLCU_CHECK(batch >= 1 && batch <= max_batch, "decode batch {} outside [1, {}]", batch, max_batch);
  int64_t b = 1;
  while (b < batch && b < 16) b *= 2;
  if (b < batch) b = (batch + 15) / 16 * 16;
  return std::min(b, max_batch);
}

namespace {

Tensor rows(const Tensor& t, int64_t n) { return t.slice_rows(0, n); }

// Offsets of the input arrays in the page-locked stage (bytes).
struct StageLayout {
  size_t ids, pos, slots, cu, ctx_lens, tables, logit_rows, seq_ids, spos, copies, out, end;
  StageLayout(int64_t Tm, int64_t MB, int64_t maxblk) {
    size_t o = 0;
    auto take = [&](int64_t n) {
      const size_t r = o;
      o += static_cast<size_t>(n) * 4;
      return r;
    };
    ids = take(Tm);
    pos = take(Tm);
    slots = take(Tm);
    cu = take(Tm + 1);
    ctx_lens = take(MB);
    tables = take(MB * maxblk);
    logit_rows = take(MB);
    seq_ids = take(MB);
    spos = take(MB);
    copies = take(3 * MB);
    out = take(2 * MB);
    end = o;
  }
};

}  // namespace

struct Runner::Impl {
  const Model& m;
  RunnerOptions o;
  Context& ctx;
  Device dev;
  DType ad;
  int64_t L, H, I, V, nq, nkv, hd, qd, kvd, Tm, MB, num_slots;
  float eps;
  int64_t sms = 1;  // multiprocessors of the device (1 on the CPU)

  Buffer kv_buf;
  Tensor kv;  // [2L, num_slots, nkv, hd]
  Arena arena;
  Tensor x, h, q_raw, k_raw, qkv, q, k, v, attn, lse, rstd, gu, act, hsel, hf, logits_, ws;
  LayerBuffers lb;  // the layer's views of the buffers above (see layer_buffers)
  // device-side inputs (I32) and outputs
  Tensor ids, pos, slots, cu, ctx_lens, tables, logit_rows, seq_ids, spos, tokens, logprobs, copies;
  Buffer host;  // page-locked staging (see StageLayout)
  size_t host_bytes = 0;
  std::map<int64_t, CudaGraph> graphs;

  Impl(const Model& model, const RunnerOptions& opt, Context& c) : m(model), o(opt), ctx(c) {}

  // Split-KV chunks for a decode batch of B rows: about two blocks per multiprocessor, at most o.num_splits (a
  // context also never splits below 64 tokens a chunk, see ops.h).
  int splits_for(int64_t B) const {
    const int64_t blocks = B * nkv;
    return static_cast<int>(std::clamp<int64_t>((2 * sms + blocks - 1) / blocks, 1, o.num_splits));
  }

  Tensor kcache(int64_t l) const { return kv.slice_rows(2 * l, 2 * l + 1).view({num_slots, nkv, hd}); }
  Tensor vcache(int64_t l) const { return kv.slice_rows(2 * l + 1, 2 * l + 2).view({num_slots, nkv, hd}); }

  // Copies n host values into the first n elements of `dst` through the page-locked stage at `off` bytes.
  void stage(const Tensor& dst, const void* src, int64_t n, size_t off) {
    const size_t bytes = static_cast<size_t>(n) * dtype_size(dst.dtype);
    if (bytes == 0) return;
    RLCU_CHECK(n <= dst.numel() && off + bytes <= host_bytes, "staging {} elements into {}", n, dst.shape_str());
    if (dev == Device::CPU) {
      std::memcpy(dst.data, src, bytes);
      return;
    }
    char* h = static_cast<char*>(host.data()) + off;
    std::memcpy(h, src, bytes);
    ctx.upload(dst.view({-1}).slice_rows(0, n), h);
  }

  // One residual buffer updated in place (x_mid = x_out = x), h for both norms' outputs, and one rstd buffer for
  // every statistic the forward writes but inference never reads.
  LayerBuffers layer_buffers() const {
    LayerBuffers b;
    b.rstd1 = rstd;
    b.h1 = h;
    b.qkv = qkv;
    b.q_raw = q_raw;
    b.k_raw = k_raw;
    b.rstd_q = rstd.slice_rows(0, Tm * nq).view({Tm, nq});
    b.rstd_k = rstd.slice_rows(0, Tm * nkv).view({Tm, nkv});
    b.q = q;
    b.k = k;
    b.v = v;
    b.attn = attn;
    b.lse = lse;
    b.x_mid = x;
    b.rstd2 = rstd;
    b.h2 = h;
    b.gate_up = gu;
    b.act = act;
    return b;
  }

  // Layer l on the first T rows of x, in place, with this layer's cache planes added to `attn`.
  void layer(int64_t l, int64_t T, const AttentionSpec& attn) {
    const LayerWeights& W = m.weights().layers[static_cast<size_t>(l)];
    LayerOptions lo;
    lo.fused_qkv = fused_qkv_available(W, m.config());
    const Tensor xt = rows(x, T);
    layer_forward(xt, lb, xt, W, rows(pos, T), m.inv_freq(), m.config(),
                  attn.with_cache(kcache(l), vcache(l), rows(slots, T)), lo, ctx);
  }

  void head(const Tensor& hidden, int64_t R) {
    ops::rmsnorm_fwd(rows(hf, R), rows(rstd, R), hidden, m.weights().final_norm, eps, ctx);
    ops::GemmParams linear;  // logits = hf W_head^T
    linear.trans_b = true;
    ops::gemm(rows(logits_, R), rows(hf, R), m.weights().lm_head, linear, ctx);
  }

  void decode_forward(int64_t B) {
    ops::embedding_fwd(rows(x, B), m.weights().embed, rows(ids, B), ctx);
    const int64_t mbs = o.max_blocks_per_seq;
    const AttentionSpec attn = AttentionSpec::paged(rows(tables, B * mbs).view({B, mbs}), rows(ctx_lens, B), ws,
                                                    static_cast<int>(o.block_size), splits_for(B));
    for (int64_t l = 0; l < L; ++l) layer(l, B, attn);
    head(rows(x, B), B);
  }
};

size_t Runner::activation_bytes(const ModelConfig& c, const RunnerOptions& o, DType act) {
  const int64_t Tm = std::max(o.max_tokens, o.max_batch), MB = o.max_batch, e = dtype_size(act);
  const int64_t rows_elems = Tm * (c.hidden_size + 4 * c.q_dim() + 6 * c.kv_dim() + 3 * c.intermediate_size);
  const int64_t f32 = 4 * (Tm * c.num_heads * 2 + MB * c.vocab_size +
                           ops::paged_attention_workspace_elems(MB, c.num_heads, c.head_dim, o.num_splits));
  const int64_t i32 = 4 * (4 * Tm + 6 * MB + MB * o.max_blocks_per_seq + 3 * MB + 64);
  const int64_t resid = (o.fp32_residual ? 4 : e) * c.hidden_size * (Tm + MB);  // x and the selected rows
  return static_cast<size_t>(rows_elems * e + f32 + i32 + MB * c.hidden_size * e + resid) + (64 << 10);
}

Runner::Runner(const Model& model, const RunnerOptions& opt, Context& ctx)
    : impl_(std::make_unique<Impl>(model, opt, ctx)) {
  Impl& s = *impl_;
  const ModelConfig& c = model.config();
  RLCU_CHECK(ctx.device() == model.device(), "Runner: context and model on different devices");
  RLCU_CHECK(opt.max_tokens >= 1 && opt.max_batch >= 1 && opt.num_blocks >= 1 && opt.block_size >= 1 &&
                 opt.max_blocks_per_seq >= 1 && opt.num_splits >= 1,
             "Runner options");
  s.dev = model.device();
  s.ad = model.weight_dtype();
  s.L = c.num_layers;
  s.H = c.hidden_size;
  s.I = c.intermediate_size;
  s.V = c.vocab_size;
  s.nq = c.num_heads;
  s.nkv = c.num_kv_heads;
  s.hd = c.head_dim;
  s.qd = c.q_dim();
  s.kvd = c.kv_dim();
  s.Tm = std::max(opt.max_tokens, opt.max_batch);
  s.MB = opt.max_batch;
  s.num_slots = opt.num_blocks * opt.block_size;
  s.eps = static_cast<float>(c.rms_norm_eps);
  s.sms = ctx.multiprocessors();

  const size_t kv_bytes = static_cast<size_t>(2 * s.L * s.num_slots * s.kvd) * dtype_size(s.ad);
  s.kv_buf = Buffer::alloc(kv_bytes, s.dev);
  s.kv = Tensor(s.kv_buf.data(), s.ad, s.dev, {2 * s.L, s.num_slots, s.nkv, s.hd});

  s.arena = Arena(activation_bytes(c, opt, s.ad), s.dev);
  const int64_t Tm = s.Tm, MB = s.MB;
  const DType ad = s.ad, f32 = DType::F32, i32 = DType::I32;
  const DType rd = opt.fp32_residual ? f32 : ad;
  s.x = s.arena.alloc(rd, {Tm, s.H});
  s.h = s.arena.alloc(ad, {Tm, s.H});
  if (c.qk_norm) {
    s.q_raw = s.arena.alloc(ad, {Tm, s.qd});
    s.k_raw = s.arena.alloc(ad, {Tm, s.kvd});
  }
  s.qkv = s.arena.alloc(ad, {Tm, s.qd + 2 * s.kvd});
  s.q = s.arena.alloc(ad, {Tm, s.qd});
  s.k = s.arena.alloc(ad, {Tm, s.kvd});
  s.v = s.arena.alloc(ad, {Tm, s.kvd});
  s.attn = s.arena.alloc(ad, {Tm, s.qd});
  s.lse = s.arena.alloc(f32, {Tm, s.nq});
  s.rstd = s.arena.alloc(f32, {Tm * std::max<int64_t>(s.nq, 1)});
  s.gu = s.arena.alloc(ad, {Tm, 2 * s.I});
  s.act = s.arena.alloc(ad, {Tm, s.I});
  s.hsel = s.arena.alloc(rd, {MB, s.H});
  s.hf = s.arena.alloc(ad, {MB, s.H});
  s.logits_ = s.arena.alloc(f32, {MB, s.V});
  s.ws = s.arena.alloc(f32, {ops::paged_attention_workspace_elems(MB, s.nq, s.hd, opt.num_splits)});
  s.ids = s.arena.alloc(i32, {Tm});
  s.pos = s.arena.alloc(i32, {Tm});
  s.slots = s.arena.alloc(i32, {Tm});
  s.cu = s.arena.alloc(i32, {Tm + 1});
  s.ctx_lens = s.arena.alloc(i32, {MB});
  s.tables = s.arena.alloc(i32, {MB * opt.max_blocks_per_seq});
  s.logit_rows = s.arena.alloc(i32, {MB});
  s.seq_ids = s.arena.alloc(i32, {MB});
  s.spos = s.arena.alloc(i32, {MB});
  s.tokens = s.arena.alloc(i32, {MB});
  s.logprobs = s.arena.alloc(f32, {MB});
  s.copies = s.arena.alloc(i32, {MB, 3});
  s.lb = s.layer_buffers();
  // Page-locked mirror: one region per array (so a staged array is never overwritten before its copy ran).
  s.host_bytes = StageLayout(Tm, MB, opt.max_blocks_per_seq).end;
  s.host = Buffer::alloc_pinned(s.host_bytes);
}

Runner::~Runner() = default;

size_t Runner::activation_bytes() const { return impl_->arena.capacity() + impl_->host_bytes; }
size_t Runner::kv_bytes() const { return impl_->kv_buf.size(); }
int64_t Runner::graphs_captured() const { return static_cast<int64_t>(impl_->graphs.size()); }
void Runner::set_cuda_graphs(bool on) { impl_->o.cuda_graphs = on; }
Tensor Runner::logits(int64_t n) const { return rows(impl_->logits_, n); }


void Runner::copy_blocks(const std::vector<BlockCopy>& copies) {
  Impl& s = *impl_;
  if (copies.empty()) return;
  const StageLayout lay(s.Tm, s.MB, s.o.max_blocks_per_seq);
  for (size_t i0 = 0; i0 < copies.size(); i0 += static_cast<size_t>(s.MB)) {
    const size_t n = std::min(copies.size() - i0, static_cast<size_t>(s.MB));
    std::vector<int32_t> c(3 * n);
    for (size_t i = 0; i < n; ++i) {
      const BlockCopy& bc = copies[i0 + i];
      c[3 * i] = static_cast<int32_t>(bc.src * s.o.block_size);
      c[3 * i + 1] = static_cast<int32_t>(bc.dst * s.o.block_size);
      c[3 * i + 2] = static_cast<int32_t>(bc.num_tokens);
    }
    s.stage(s.copies, c.data(), static_cast<int64_t>(3 * n), lay.copies);
    ops::kv_block_copy(s.kv.view({2 * s.L, s.num_slots, s.kvd}), rows(s.copies, static_cast<int64_t>(n)), s.ctx);
    if (i0 + n < copies.size()) s.ctx.synchronize("engine block copies");  // the stage region is reused
  }
}

void Runner::prefill(const PrefillInput& in) {
  Impl& s = *impl_;
  const int64_t T = static_cast<int64_t>(in.ids.size()), R = static_cast<int64_t>(in.logit_rows.size());
  const int S = static_cast<int>(in.cu_seqlens.size()) - 1;
  RLCU_CHECK(T >= 1 && T <= s.o.max_tokens && R >= 1 && R <= s.MB && S >= 1, "prefill of {} tokens, {} rows", T, R);
  RLCU_CHECK(in.positions.size() == in.ids.size() && in.slots.size() == in.ids.size() && in.cu_seqlens.back() == T,
             "inconsistent prefill input");
  const StageLayout lay(s.Tm, s.MB, s.o.max_blocks_per_seq);
  s.stage(s.ids, in.ids.data(), T, lay.ids);
  s.stage(s.pos, in.positions.data(), T, lay.pos);
  s.stage(s.slots, in.slots.data(), T, lay.slots);
  s.stage(s.cu, in.cu_seqlens.data(), S + 1, lay.cu);
  s.stage(s.logit_rows, in.logit_rows.data(), R, lay.logit_rows);
  ops::embedding_fwd(rows(s.x, T), s.m.weights().embed, rows(s.ids, T), s.ctx);
  const AttentionSpec attn = AttentionSpec::dense(rows(s.cu, S + 1), S, in.max_seqlen);
  for (int64_t l = 0; l < s.L; ++l) s.layer(l, T, attn);
  ops::embedding_fwd(rows(s.hsel, R), rows(s.x, T), rows(s.logit_rows, R), s.ctx);
  s.head(rows(s.hsel, R), R);
}

void Runner::decode(const DecodeInput& in) {
  Impl& s = *impl_;
  const int64_t B = static_cast<int64_t>(in.ids.size()), mbs = s.o.max_blocks_per_seq;
  RLCU_CHECK(in.positions.size() == in.ids.size() && in.slots.size() == in.ids.size() &&
                 in.context_lens.size() == in.ids.size() && static_cast<int64_t>(in.block_tables.size()) == B * mbs,
             "inconsistent decode input");
  const int64_t Bk = decode_bucket(B, s.MB);
  const StageLayout lay(s.Tm, s.MB, mbs);
  // Padding rows: token 0 at position 0, no cache write (slot -1), empty context.
  std::vector<int32_t> buf(static_cast<size_t>(Bk * std::max<int64_t>(mbs, 1)));
  auto padded = [&](const std::vector<int32_t>& v, int32_t pad, int64_t width) -> const int32_t* {
    buf.assign(static_cast<size_t>(Bk * width), pad);
    std::copy(v.begin(), v.end(), buf.begin());
    return buf.data();
  };
  s.stage(s.ids, padded(in.ids, 0, 1), Bk, lay.ids);
  s.stage(s.pos, padded(in.positions, 0, 1), Bk, lay.pos);
  s.stage(s.slots, padded(in.slots, -1, 1), Bk, lay.slots);
  s.stage(s.ctx_lens, padded(in.context_lens, 0, 1), Bk, lay.ctx_lens);
  s.stage(s.tables, padded(in.block_tables, 0, mbs), Bk * mbs, lay.tables);
  if (s.dev == Device::CPU || !s.o.cuda_graphs) {
    s.decode_forward(Bk);
    return;
  }
  auto it = s.graphs.find(Bk);
  if (it != s.graphs.end()) {
    it->second.launch(s.ctx);
    return;
  }
  // First use of this bucket: run it eagerly (this computes the step's logits and settles lazily created GEMM plans
  // and scratch), then capture the same launches for replay.
  s.decode_forward(Bk);
  s.graphs.emplace(Bk, CudaGraph::capture(s.ctx, [&] { s.decode_forward(Bk); }));
}

void Runner::sample(std::vector<int32_t>& tokens, std::vector<float>& logprobs, const std::vector<int32_t>& seq_ids,
                    const std::vector<int32_t>& positions, const ops::SampleParams& p) {
  Impl& s = *impl_;
  const int64_t B = static_cast<int64_t>(seq_ids.size());
  RLCU_CHECK(B >= 1 && B <= s.MB && positions.size() == seq_ids.size(), "sample of {} rows", B);
  const StageLayout lay(s.Tm, s.MB, s.o.max_blocks_per_seq);
  s.stage(s.seq_ids, seq_ids.data(), B, lay.seq_ids);
  s.stage(s.spos, positions.data(), B, lay.spos);
  ops::sample(rows(s.tokens, B), rows(s.logprobs, B), rows(s.logits_, B), rows(s.seq_ids, B), rows(s.spos, B), p,
              s.ctx);
  tokens.resize(static_cast<size_t>(B));
  logprobs.resize(static_cast<size_t>(B));
  if (s.dev == Device::CPU) {
    std::memcpy(tokens.data(), s.tokens.data, static_cast<size_t>(B) * 4);
    std::memcpy(logprobs.data(), s.logprobs.data, static_cast<size_t>(B) * 4);
    return;
  }
  char* h = static_cast<char*>(s.host.data()) + lay.out;
  s.ctx.download(h, rows(s.tokens, B));
  s.ctx.download(h + 4 * B, rows(s.logprobs, B));
  s.ctx.synchronize("engine sample");
  std::memcpy(tokens.data(), h, static_cast<size_t>(B) * 4);
  std::memcpy(logprobs.data(), h + 4 * B, static_cast<size_t>(B) * 4);
}

}  // namespace rlcu::engine
