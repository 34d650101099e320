// The decoder's driver over one packed micro-batch, written against include/rlcu/ops.h only (see
// include/rlcu/model.h for the math): the activation arena, the batch upload, the forward (embedding, each layer by
// rlcu/layer.h's layer_forward with dense attention and no KV cache, final norm, log-prob head) and the backward,
// which this file owns alone. Parameter gradients ACCUMULATE (+=) into Model::grads(); activation
// gradients OVERWRITE (=) and the residual-stream gradient is summed by rmsnorm_bwd_add (dres += the norm's input
// gradient, one rounding).
//
// Memory: one arena allocated in the constructor for options.max_tokens (Tm) rows; a call with T tokens works on
// the first T rows of each buffer, so nothing is allocated per step.
//   inference:              residual ping-pong x2, one shared set of layer activations
//   training:               residual stream x (L+1) [each layer's input, plus the final one], layer activations x L
//   training+checkpointing: residual stream x (L+1), one shared set of layer activations; backward recomputes a
//                           layer (up to gate_up) from its saved input before differentiating it
//   training+save_head_probs: plus the head's saved softmax [Tm, V] (act_dtype) and its statistics, so that the
//                           head's backward needs no second logits product
// With fp32_residual the residual stream (x and x_mid) is F32 while the other activations stay in act_dtype: the
// norms read it in F32 and the o/down products add into it in F32, so it is never rounded to bf16. The residual
// gradient dres stays in act_dtype (it feeds the bf16 weight-gradient products).
// Saved per layer (LayerBuffers): rstd1, h1 = norm1(x), [QK-norm inputs: qkv, or q_raw, k_raw, rstd_q, rstd_k],
// q, k (after rope), v, attn (attention output), lse, x_mid = x + o_proj, rstd2, h2 = norm2(x_mid), gate_up.
// act = swiglu(gate_up) is kept per layer when training without checkpointing, and recomputed in backward otherwise.
//
// Fused q/k/v (when the weights, and for training the gradients, of every layer have the fused views
// LayerWeights::qkv / qkv_bias): one product qkv = h1 Wqkv^T [T, qd + 2 kvd] and one qkv_prepare (bias, QK-norm,
// rope; no KV cache) into q, k, v; backward one qkv_prepare_bwd into dqkv [T, qd + 2 kvd], then dWqkv += dqkv^T h1,
// dbqkv += column sums of dqkv, dh = dqkv Wqkv. The raw qkv is saved per layer only with QK-norm (the norm backward
// recomputes rstd from it); without QK-norm one shared buffer holds it. Otherwise (no fused views) the separate
// products, bias_add, rmsnorm and rope ops run, saving q_raw, k_raw and the norm statistics with QK-norm.
//
// Backward of one layer, with dres = d(layer output):
//   MLP:  dWd += dres^T act;  dact = dres Wd;  dgu = swiglu_bwd;  dWgu += dgu^T h2;  dh = dgu Wgu
//         dres += rmsnorm_bwd(dh)                                    (= d x_mid)
//   attn: dWo += dres^T attn;  dattn = dres Wo;  dq, dk, dv = attention_bwd;  rope_bwd(dq), rope_bwd(dk)
//         [QK-norm: rmsnorm_bwd]; dWq/k/v += d{q,k,v}^T h1 (+ bias grads);  dh = dq Wq + dk Wk + dv Wv
//         (fused: dqkv = qkv_prepare_bwd(dq, dk, dv);  dWqkv += dqkv^T h1 (+ bias grad);  dh = dqkv Wqkv)
//         dres += rmsnorm_bwd(dh)                                    (= d x)
// and finally embedding_bwd(dres) into the embedding gradient (shared with the head when tied).
#include <cmath>
#include <tuple>

#include "rlcu/layer.h"
#include "rlcu/lora.h"
#include "rlcu/model.h"
#include "rlcu/ops.h"

namespace rlcu {

namespace {

// Collects buffer requests, then carves them all out of one arena sized exactly for them.
class ArenaPlan {
 public:
  void add(Tensor& slot, DType dt, std::vector<int64_t> dims) {
    Tensor probe(nullptr, dt, Device::CPU, dims);
    bytes_ += (probe.nbytes() + 255) / 256 * 256;
    slots_.emplace_back(&slot, dt, std::move(dims));
  }
  size_t bytes() const { return bytes_; }
  Arena commit(Device dev) {
    Arena a(bytes_, dev);
    for (auto& [slot, dt, dims] : slots_) *slot = a.alloc(dt, dims);
    return a;
  }

 private:
  size_t bytes_ = 0;
  std::vector<std::tuple<Tensor*, DType, std::vector<int64_t>>> slots_;
};

Tensor rows(const Tensor& t, int64_t n) { return t.slice_rows(0, n); }

}  // namespace

DType default_act_dtype(Device d) { return d == Device::CPU ? DType::F32 : DType::BF16; }

void PackedBatch::add_sequence(const std::vector<int32_t>& seq) {
  std::vector<int32_t> tg(seq.size(), -1);
  for (size_t i = 0; i + 1 < seq.size(); ++i) tg[i] = seq[i + 1];
  add_sequence(seq, tg);
}

void PackedBatch::add_sequence(const std::vector<int32_t>& seq, const std::vector<int32_t>& seq_targets) {
  if (seq.empty()) throw Error("packed batch: a sequence must hold at least one token");
  RLCU_CHECK(seq.size() == seq_targets.size(), "add_sequence: {} ids but {} targets", seq.size(), seq_targets.size());
  for (size_t i = 0; i < seq.size(); ++i) {
    ids.push_back(seq[i]);
    positions.push_back(static_cast<int32_t>(i));
    targets.push_back(seq_targets[i]);
  }
  cu_seqlens.push_back(static_cast<int32_t>(ids.size()));
  max_seqlen = std::max(max_seqlen, static_cast<int32_t>(seq.size()));
}

void PackedBatch::clear() {
  ids.clear();
  positions.clear();
  targets.clear();
  cu_seqlens.assign(1, 0);
  max_seqlen = 0;
}

struct Transformer::State {
  Arena arena;
  std::vector<Tensor> resid;
  // Per layer (training without checkpointing) or one shared set. LayerBuffers::qkv is set only with QK-norm (the
  // raw projection the backward reads again), ::act only when training without checkpointing; run_layer fills them
  // in from the shared qkv / act otherwise.
  std::vector<LayerBuffers> acts;
  Tensor act, rstd_f, h_f, lse_head;
  Tensor head_probs, head_stats;  // the head's saved softmax (training with save_head_probs), else empty
  Tensor dres, dh, dgu, dact, dattn, dq, dk, dv, dq_raw, dk_raw;
  Tensor qkv, dqkv;  // fused path: the raw projection when not saved per layer (no QK-norm); its gradient
  // LoRA training: U = X A^T and G = dY B [Tm, r]; the fused-output scratch P [N, r] F32 and Bpad [N, r]; and the
  // sink of the frozen norms' weight gradients (rmsnorm_bwd always writes one; nothing reads it).
  Tensor lora_u, lora_g, lora_p, lora_bpad, norm_sink;
  bool fused_qkv = false;
  Tensor ids, positions, targets, cu_seqlens;
  DeviceBatch last;
  bool have_forward = false;

  Tensor head_probs_T, head_stats_T;  // the first T rows of head_probs / head_stats, for head_params

  Tensor& x_in(int64_t l, bool training) { return resid[training ? l : l % 2]; }
  // The log-prob head's parameters for T tokens: with the saved softmax when it has a buffer and save is set.
  ops::LogprobParams head_params(float inv_temperature, int64_t T, bool save = true) {
    ops::LogprobParams p;
    p.inv_temperature = inv_temperature;
    if (save && !head_probs.empty()) {
      head_probs_T = rows(head_probs, T);
      head_stats_T = rows(head_stats, T);
      p.probs = &head_probs_T;
      p.prob_stats = &head_stats_T;
    }
    return p;
  }
  LayerBuffers& layer(int64_t l, bool shared) { return acts[shared ? 0 : l]; }
  void plan(ArenaPlan& plan, const ModelConfig& c, const TransformerOptions& opt, bool fused);

  // Layer l on x (dense attention over the batch's sequences); full = false stops after gate_up.
  void run_layer(const ModelWeights& w, const Model& m, int64_t l, const Tensor& x, const Tensor& x_out,
                 const LayerBuffers& a, const DeviceBatch& b, bool full, Context& ctx);
  // LoRA: dB, dA of target t in layer l from its input x [T, in] and the gradient dy [T, N] of the product whose
  // rows [r0, r0 + out) are the target's (N = out, r0 = 0 for an unfused one).
  void lora_grads(LoraAdapters& lo, int64_t l, LoraTarget t, const Tensor& x, const Tensor& dy, int64_t r0,
                  Context& ctx);
};

// Requests every buffer of the driver for options `opt` (see the file comment for what each mode keeps).
void Transformer::State::plan(ArenaPlan& plan, const ModelConfig& c, const TransformerOptions& opt, bool fused) {
  const int64_t Tm = opt.max_tokens, H = c.hidden_size, I = c.intermediate_size, qd = c.q_dim(), kvd = c.kv_dim();
  const int64_t L = c.num_layers;
  const DType ad = opt.act_dtype, f32 = DType::F32, i32 = DType::I32;
  const bool shared_acts = !opt.training || opt.checkpointing;
  fused_qkv = fused;
  const int64_t Wqkv = qd + 2 * kvd;
  resid.resize(opt.training ? L + 1 : 2);
  const DType rd = opt.fp32_residual ? f32 : ad;
  for (Tensor& r : resid) plan.add(r, rd, {Tm, H});
  acts.resize(shared_acts ? 1 : L);
  for (LayerBuffers& a : acts) {
    plan.add(a.rstd1, f32, {Tm});
    plan.add(a.h1, ad, {Tm, H});
    if (fused) {
      if (c.qk_norm) plan.add(a.qkv, ad, {Tm, Wqkv});
    } else if (c.qk_norm) {
      plan.add(a.q_raw, ad, {Tm, qd});
      plan.add(a.k_raw, ad, {Tm, kvd});
      plan.add(a.rstd_q, f32, {Tm, c.num_heads});
      plan.add(a.rstd_k, f32, {Tm, c.num_kv_heads});
    }
    plan.add(a.q, ad, {Tm, qd});
    plan.add(a.k, ad, {Tm, kvd});
    plan.add(a.v, ad, {Tm, kvd});
    plan.add(a.attn, ad, {Tm, qd});
    plan.add(a.lse, f32, {Tm, c.num_heads});
    plan.add(a.x_mid, rd, {Tm, H});
    plan.add(a.rstd2, f32, {Tm});
    plan.add(a.h2, ad, {Tm, H});
    plan.add(a.gate_up, ad, {Tm, 2 * I});
    if (!shared_acts) plan.add(a.act, ad, {Tm, I});
  }
  plan.add(act, ad, {Tm, I});
  if (fused && !c.qk_norm) plan.add(qkv, ad, {Tm, Wqkv});
  plan.add(rstd_f, f32, {Tm});
  plan.add(h_f, ad, {Tm, H});
  plan.add(lse_head, f32, {Tm});
  if (opt.training && opt.save_head_probs) {
    plan.add(head_probs, ad, {Tm, c.vocab_size});
    plan.add(head_stats, f32, {Tm, ops::logprob_prob_stats_cols(c.vocab_size)});
  }
  if (opt.training) {
    plan.add(dres, ad, {Tm, H});
    plan.add(dh, ad, {Tm, H});
    plan.add(dgu, ad, {Tm, 2 * I});
    plan.add(dact, ad, {Tm, I});
    plan.add(dattn, ad, {Tm, qd});
    plan.add(dq, ad, {Tm, qd});
    plan.add(dk, ad, {Tm, kvd});
    plan.add(dv, ad, {Tm, kvd});
    if (fused) {
      plan.add(dqkv, ad, {Tm, Wqkv});
    } else if (c.qk_norm) {
      plan.add(dq_raw, ad, {Tm, qd});
      plan.add(dk_raw, ad, {Tm, kvd});
    }
  }
  if (opt.training && opt.lora_rank > 0) {
    const int64_t r = opt.lora_rank, N = std::max({Wqkv, 2 * I, H});
    plan.add(lora_u, ad, {Tm, r});
    plan.add(lora_g, ad, {Tm, r});
    plan.add(lora_p, f32, {N, r});
    plan.add(lora_bpad, ad, {N, r});
    plan.add(norm_sink, f32, {std::max(H, c.head_dim)});
  }
  plan.add(ids, i32, {Tm});
  plan.add(positions, i32, {Tm});
  plan.add(targets, i32, {Tm});
  plan.add(cu_seqlens, i32, {Tm + 1});
}

size_t Transformer::plan_bytes(const ModelConfig& c, const TransformerOptions& opt, bool fused_qkv) {
  State s;
  ArenaPlan plan;
  s.plan(plan, c, opt, fused_qkv);
  return plan.bytes();
}

Transformer::Transformer(Model& model, const TransformerOptions& opt, Context& ctx)
    : s_(std::make_unique<State>()), model_(model), opt_(opt) {
  const ModelConfig& c = model.config();
  RLCU_CHECK(ctx.device() == model.device(), "Transformer: context on {} but model on {}", device_name(ctx.device()),
             device_name(model.device()));
  if (opt.max_tokens < 1) throw Error(fmt::format("token budget must be >= 1, got {}", opt.max_tokens));
  if (opt.training && !opt.lora && !model.has_grads())
    throw Error("training needs a model loaded with gradients (ModelOptions.training)");
  if (opt.lora) {
    RLCU_CHECK(opt.training && !model.has_grads() && &opt.lora->model() == &model && !opt.base_weights,
               "Transformer: LoRA trains adapters of this model's frozen base");
    RLCU_CHECK(opt.lora_rank == opt.lora->spec().rank, "Transformer: lora_rank {} but the adapters have rank {}",
               opt.lora_rank, opt.lora->spec().rank);
  }
  RLCU_CHECK(!opt.base_weights || !opt.training, "Transformer: the base weights are only read for inference");
  RLCU_CHECK(opt.act_dtype == DType::F32 || opt.act_dtype == DType::BF16, "activation dtype {}",
             dtype_name(opt.act_dtype));
  const int64_t Tm = opt.max_tokens, L = c.num_layers;
  const DType ad = opt.act_dtype;
  // Fused q/k/v only when every layer has the fused views (in the weights and, for training, the gradients).
  bool fused = true;
  for (int64_t l = 0; l < L; ++l) {
    const ModelWeights& w = opt.base_weights ? model.base_weights() : model.weights();
    fused = fused && fused_qkv_available(w.layers[static_cast<size_t>(l)], c);
    if (opt.training && !opt.lora) fused = fused && fused_qkv_available(model.grads().layers[static_cast<size_t>(l)], c);
  }
  s_->fused_qkv = fused;
  ArenaPlan plan;
  s_->plan(plan, c, opt, fused);
  try {
    s_->arena = plan.commit(model.device());
  } catch (const Error& e) {
    const double gib = 1024.0 * 1024.0 * 1024.0;
    const double head = !(opt.training && opt.save_head_probs) ? 0.0
                        : double(Tm) * (double(c.vocab_size) * dtype_size(ad) +
                                        double(ops::logprob_prob_stats_cols(c.vocab_size)) * 4.0);
    throw Error(fmt::format(
        "{}: the {} activations for {} tokens need {:.2f} GiB{}; use fewer tokens per micro-batch{}{}", e.what(),
        opt.training ? "training" : "inference", Tm, plan.bytes() / gib,
        head > 0 ? fmt::format(" ({:.2f} GiB of them the log-prob head's saved softmax)", head / gib) : "",
        opt.training && !opt.checkpointing ? ", activation checkpointing" : "",
        head > 0 ? " or do not keep the head's softmax (train.save_head_probs = false)" : ""));
  }
}

Transformer::~Transformer() = default;

size_t Transformer::activation_bytes() const { return s_->arena.capacity(); }

Tensor Transformer::final_hidden() const {
  RLCU_CHECK(s_->have_forward, "final_hidden before forward");
  return rows(s_->h_f, s_->last.num_tokens);
}

DeviceBatch Transformer::upload(const PackedBatch& b, Context& ctx) {
  const int64_t T = b.num_tokens();
  const int64_t V = model_.config().vocab_size;
  if (T < 1) throw Error("packed batch is empty");
  if (T > opt_.max_tokens)
    throw Error(fmt::format("packed batch of {} tokens exceeds the token budget of {}", T, opt_.max_tokens));
  RLCU_CHECK(b.positions.size() == b.ids.size() && b.targets.size() == b.ids.size() && b.cu_seqlens.size() >= 2 &&
                 b.cu_seqlens.front() == 0 && b.cu_seqlens.back() == T,
             "inconsistent packed batch");
  DeviceBatch d;
  d.num_tokens = T;
  d.num_seqs = b.num_seqs();
  for (int s = 0; s < d.num_seqs; ++s) {
    RLCU_CHECK(b.cu_seqlens[s + 1] >= b.cu_seqlens[s], "cu_seqlens decreases at {}", s);
    d.max_seqlen = std::max(d.max_seqlen, b.cu_seqlens[s + 1] - b.cu_seqlens[s]);
  }
  for (int64_t t = 0; t < T; ++t) {
    if (b.ids[t] < 0 || b.ids[t] >= V)
      throw Error(fmt::format("token id {} at position {} is outside the vocabulary [0, {})", b.ids[t], t, V));
    if (b.targets[t] < -1 || b.targets[t] >= V)
      throw Error(fmt::format("target id {} at position {} is outside the vocabulary [0, {})", b.targets[t], t, V));
    RLCU_CHECK(b.positions[t] >= 0, "negative position at {}", t);
  }
  d.ids = rows(s_->ids, T);
  d.positions = rows(s_->positions, T);
  d.targets = rows(s_->targets, T);
  d.cu_seqlens = rows(s_->cu_seqlens, d.num_seqs + 1);
  ctx.upload(d.ids, b.ids.data());
  ctx.upload(d.positions, b.positions.data());
  ctx.upload(d.targets, b.targets.data());
  ctx.upload(d.cu_seqlens, b.cu_seqlens.data());
  return d;
}

void Transformer::State::run_layer(const ModelWeights& w, const Model& m, int64_t l, const Tensor& x,
                                   const Tensor& x_out, const LayerBuffers& a, const DeviceBatch& b, bool full,
                                   Context& ctx) {
  // The buffers shared by all layers (act without a per-layer copy, the fused raw qkv without QK-norm).
  LayerBuffers buf = a;
  if (buf.act.empty()) buf.act = act;
  if (buf.qkv.empty()) buf.qkv = qkv;
  LayerOptions opt;
  opt.fused_qkv = fused_qkv;
  opt.full = full;
  layer_forward(x_out, buf, x, w.layers[static_cast<size_t>(l)], b.positions, m.inv_freq(), m.config(),
                AttentionSpec::dense(b.cu_seqlens, b.num_seqs, b.max_seqlen), opt, ctx);
}

void Transformer::forward(const Tensor& logprob, const Tensor& entropy, const DeviceBatch& b, Context& ctx,
                          ForwardUse use) {
  const ModelConfig& c = model_.config();
  const ModelWeights& W = opt_.base_weights ? model_.base_weights() : model_.weights();
  const int64_t T = b.num_tokens, L = c.num_layers;
  RLCU_CHECK(T >= 1 && T <= opt_.max_tokens, "forward: {} tokens, budget {}", T, opt_.max_tokens);
  RLCU_CHECK(logprob.numel() == T && logprob.dtype == DType::F32, "forward: logprob must be F32 [{}], got {} {}", T,
             dtype_name(logprob.dtype), logprob.shape_str());
  RLCU_CHECK(entropy.empty() || (entropy.numel() == T && entropy.dtype == DType::F32),
             "forward: entropy must be empty or F32 [{}]", T);
  s_->have_forward = false;
  const bool shared = !opt_.training || opt_.checkpointing;
  ops::embedding_fwd(rows(s_->x_in(0, opt_.training), T), W.embed, b.ids, ctx);
  for (int64_t l = 0; l < L; ++l)
    s_->run_layer(W, model_, l, rows(s_->x_in(l, opt_.training), T), rows(s_->x_in(l + 1, opt_.training), T),
                  s_->layer(l, shared), b, true, ctx);
  ops::rmsnorm_fwd(rows(s_->h_f, T), rows(s_->rstd_f, T), rows(s_->x_in(L, opt_.training), T), W.final_norm,
                   static_cast<float>(c.rms_norm_eps), ctx);
  ops::logprob_fwd(logprob, entropy, rows(s_->lse_head, T), rows(s_->h_f, T), W.lm_head, b.targets,
                   s_->head_params(opt_.inv_temperature, T, use == ForwardUse::ForBackward), ctx);
  s_->last = b;
  s_->have_forward = use == ForwardUse::ForBackward;
}

void Transformer::backward(const Tensor& dlogprob, const Tensor& dentropy, Context& ctx) {
  RLCU_CHECK(opt_.training, "backward on a Transformer built without training");
  RLCU_CHECK(s_->have_forward, "backward without a preceding forward");
  const DeviceBatch& b = s_->last;
  const ModelWeights& W = model_.weights();
  const int64_t T = b.num_tokens;
  RLCU_CHECK(dlogprob.numel() == T && dlogprob.dtype == DType::F32, "backward: dlogprob must be F32 [{}]", T);
  RLCU_CHECK(dentropy.empty() || (dentropy.numel() == T && dentropy.dtype == DType::F32),
             "backward: dentropy must be empty or F32 [{}]", T);
  const Tensor dh = rows(s_->dh, T);
  ops::logprob_bwd(dh, opt_.lora ? Tensor() : model_.grads().lm_head, dlogprob, dentropy, rows(s_->h_f, T), W.lm_head, b.targets, rows(s_->lse_head, T),
                   s_->head_params(opt_.inv_temperature, T), ctx);
  backward_from_final(dh, ctx);
}

Tensor Transformer::final_hidden_grad_buffer() const {
  RLCU_CHECK(opt_.training && s_->have_forward, "final_hidden_grad_buffer: needs a training forward");
  return rows(s_->dh, s_->last.num_tokens);
}

void Transformer::backward_hidden(const Tensor& dhidden, Context& ctx) {
  RLCU_CHECK(opt_.training, "backward on a Transformer built without training");
  RLCU_CHECK(s_->have_forward, "backward without a preceding forward");
  const int64_t T = s_->last.num_tokens;
  RLCU_CHECK(dhidden.numel() == T * model_.config().hidden_size && dhidden.dtype == opt_.act_dtype &&
                 dhidden.data == s_->dh.data,
             "backward_hidden: dhidden must be final_hidden_grad_buffer()");
  backward_from_final(dhidden, ctx);
}

void Transformer::State::lora_grads(LoraAdapters& lo, int64_t l, LoraTarget t, const Tensor& x, const Tensor& dy,
                                    int64_t r0, Context& ctx) {
  if (!lo.has(t)) return;
  const LoraViews& w = lo.weights(l, t);
  const LoraViews& g = lo.grads(l, t);
  const int64_t T = x.rows(), out = w.b.size(0), N = dy.cols();
  const float s = lo.scaling();
  const Tensor U = rows(lora_u, T), G = rows(lora_g, T);
  ops::GemmParams lin;  // U = X A^T
  lin.trans_b = true;
  ops::gemm(U, x, w.a, lin, ctx);
  ops::GemmParams acc;  // d += s a^T b
  acc.trans_a = true;
  acc.alpha = s;
  acc.beta = 1.0f;
  if (N == out) {
    ops::gemm(g.b, dy, U, acc, ctx);            // dB += s dY^T U
    ops::gemm(G, dy, w.b, ops::GemmParams{}, ctx);  // G = dY B
  } else {
    // The target's rows of the fused product: dB += rows [r0, r0 + out) of s dY^T U; G = dY Bpad.
    const Tensor P = lora_p.slice_rows(0, N), Bp = lora_bpad.slice_rows(0, N);
    ops::GemmParams prod;
    prod.trans_a = true;
    prod.alpha = s;
    ops::gemm(P, dy, U, prod, ctx);
    ops::add(g.b, g.b, P.slice_rows(r0, r0 + out), ctx);
    ops::fill(Bp, 0.0f, ctx);
    const Tensor Bt = Bp.slice_rows(r0, r0 + out);
    if (Bt.dtype == w.b.dtype)
      ctx.copy(Bt, w.b);
    else
      ops::cast(Bt, w.b, ctx);
    ops::gemm(G, dy, Bp, ops::GemmParams{}, ctx);
  }
  ops::gemm(g.a, G, x, acc, ctx);  // dA += s G^T X
}

void Transformer::backward_from_final(const Tensor& dh, Context& ctx) {
  const DeviceBatch& b = s_->last;
  const ModelConfig& c = model_.config();
  const ModelWeights& W = model_.weights();
  LoraAdapters* lo = opt_.lora;
  const int64_t T = b.num_tokens, L = c.num_layers, nq = c.num_heads, nkv = c.num_kv_heads, hd = c.head_dim;
  const int64_t H = c.hidden_size, I = c.intermediate_size, qd = c.q_dim(), kvd = c.kv_dim();
  // With LoRA the base is frozen: no parameter gradient of it, and the norms' weight gradients go to a sink.
  LayerWeights sink;
  if (lo) {
    sink.input_norm = sink.post_norm = s_->norm_sink.slice_rows(0, H);
    if (c.qk_norm) sink.q_norm = sink.k_norm = s_->norm_sink.slice_rows(0, hd);
  }
  const ModelWeights& G = model_.grads();
  const float eps = static_cast<float>(c.rms_norm_eps);
  const ops::GemmParams dx;  // dx = dy W
  ops::GemmParams dx_acc;    // dx += dy W
  dx_acc.beta = 1.0f;
  ops::GemmParams dw;  // dW += dy^T x
  dw.trans_a = true;
  dw.beta = 1.0f;
  auto wgrad = [&](const Tensor& dW, const Tensor& dy, const Tensor& x) {
    if (!lo) ops::gemm(dW, dy, x, dw, ctx);
  };
  auto bgrad = [&](const Tensor& db, const Tensor& dy) {
    if (!lo) ops::bias_grad(db, dy, ctx);
  };
  ops::AttentionParams ap;
  ap.num_seqs = b.num_seqs;
  ap.max_seqlen = b.max_seqlen;
  ap.scale = 1.0f / std::sqrt(static_cast<float>(hd));
  const Tensor dres = rows(s_->dres, T);
  ops::rmsnorm_bwd(dres, lo ? sink.input_norm : G.final_norm, dh, rows(s_->x_in(L, true), T), W.final_norm,
                   rows(s_->rstd_f, T), ctx);

  for (int64_t l = L - 1; l >= 0; --l) {
    const LayerWeights& Wl = W.layers[static_cast<size_t>(l)];
    const LayerWeights& Gl = lo ? sink : G.layers[static_cast<size_t>(l)];
    const Tensor x = rows(s_->x_in(l, true), T);
    LayerBuffers& a = s_->layer(l, opt_.checkpointing);
    if (opt_.checkpointing) s_->run_layer(W, model_, l, x, Tensor(), a, b, false, ctx);

    // MLP branch: dres = d(layer output).
    const Tensor gu = rows(a.gate_up, T), dact = rows(s_->dact, T), dgu = rows(s_->dgu, T);
    const Tensor ac = rows(a.act.empty() ? s_->act : a.act, T);
    const Tensor h2 = rows(a.h2, T);
    if (a.act.empty()) ops::swiglu_fwd(ac, gu, ctx);
    wgrad(Gl.down, dres, ac);
    if (lo) s_->lora_grads(*lo, l, LoraTarget::Down, ac, dres, 0, ctx);
    ops::gemm(dact, dres, Wl.down, dx, ctx);
    ops::swiglu_bwd(dgu, dact, gu, ctx);
    wgrad(Gl.gate_up, dgu, h2);
    if (lo) {
      s_->lora_grads(*lo, l, LoraTarget::Gate, h2, dgu, 0, ctx);
      s_->lora_grads(*lo, l, LoraTarget::Up, h2, dgu, I, ctx);
    }
    ops::gemm(dh, dgu, Wl.gate_up, dx, ctx);
    ops::rmsnorm_bwd_add(dres, Gl.post_norm, dh, rows(a.x_mid, T), Wl.post_norm, rows(a.rstd2, T), ctx);

    // Attention branch: dres = d(x_mid).
    const Tensor attn = rows(a.attn, T), dattn = rows(s_->dattn, T);
    wgrad(Gl.o, dres, attn);
    if (c.o_bias) bgrad(Gl.o_bias, dres);
    if (lo) s_->lora_grads(*lo, l, LoraTarget::O, attn, dres, 0, ctx);
    ops::gemm(dattn, dres, Wl.o, dx, ctx);
    const Tensor dq = rows(s_->dq, T), dk = rows(s_->dk, T), dv = rows(s_->dv, T);
    const Tensor dq3 = dq.view({T, nq, hd}), dk3 = dk.view({T, nkv, hd});
    ops::attention_bwd(dq3, dk3, dv.view({T, nkv, hd}), dattn.view({T, nq, hd}), rows(a.q, T).view({T, nq, hd}),
                       rows(a.k, T).view({T, nkv, hd}), rows(a.v, T).view({T, nkv, hd}), attn.view({T, nq, hd}),
                       rows(a.lse, T), b.cu_seqlens, ap, ctx);
    const Tensor h1 = rows(a.h1, T);
    if (s_->fused_qkv) {
      // qkv_prepare's backward, then one product each for dWqkv and dh; the raw qkv is read only with QK-norm.
      const Tensor dqkv = rows(s_->dqkv, T);
      ops::qkv_prepare_bwd(dqkv, Gl.q_norm, Gl.k_norm, dq3, dk3, dv.view({T, nkv, hd}),
                           c.qk_norm ? rows(a.qkv, T) : Tensor(), Wl.qkv_bias, Wl.q_norm, Wl.k_norm, eps, b.positions,
                           model_.inv_freq(), ctx);
      wgrad(Gl.qkv, dqkv, h1);
      if (c.qkv_bias) bgrad(Gl.qkv_bias, dqkv);
      if (lo) {
        s_->lora_grads(*lo, l, LoraTarget::Q, h1, dqkv, 0, ctx);
        s_->lora_grads(*lo, l, LoraTarget::K, h1, dqkv, qd, ctx);
        s_->lora_grads(*lo, l, LoraTarget::V, h1, dqkv, qd + kvd, ctx);
      }
      ops::gemm(dh, dqkv, Wl.qkv, dx, ctx);
      ops::rmsnorm_bwd_add(dres, Gl.input_norm, dh, x, Wl.input_norm, rows(a.rstd1, T), ctx);
      continue;
    }
    ops::rope_bwd(dq3, dq3, b.positions, model_.inv_freq(), ctx);
    ops::rope_bwd(dk3, dk3, b.positions, model_.inv_freq(), ctx);
    Tensor dq_lin = dq, dk_lin = dk;
    if (c.qk_norm) {
      dq_lin = rows(s_->dq_raw, T);
      dk_lin = rows(s_->dk_raw, T);
      ops::rmsnorm_bwd(dq_lin.view({T * nq, hd}), Gl.q_norm, dq.view({T * nq, hd}), rows(a.q_raw, T).view({T * nq, hd}),
                       Wl.q_norm, rows(a.rstd_q, T).view({T * nq}), ctx);
      ops::rmsnorm_bwd(dk_lin.view({T * nkv, hd}), Gl.k_norm, dk.view({T * nkv, hd}),
                       rows(a.k_raw, T).view({T * nkv, hd}), Wl.k_norm, rows(a.rstd_k, T).view({T * nkv}), ctx);
    }
    wgrad(Gl.q, dq_lin, h1);
    wgrad(Gl.k, dk_lin, h1);
    wgrad(Gl.v, dv, h1);
    if (c.qkv_bias) {
      bgrad(Gl.q_bias, dq_lin);
      bgrad(Gl.k_bias, dk_lin);
      bgrad(Gl.v_bias, dv);
    }
    if (lo) {
      s_->lora_grads(*lo, l, LoraTarget::Q, h1, dq_lin, 0, ctx);
      s_->lora_grads(*lo, l, LoraTarget::K, h1, dk_lin, 0, ctx);
      s_->lora_grads(*lo, l, LoraTarget::V, h1, dv, 0, ctx);
    }
    ops::gemm(dh, dq_lin, Wl.q, dx, ctx);
    ops::gemm(dh, dk_lin, Wl.k, dx_acc, ctx);
    ops::gemm(dh, dv, Wl.v, dx_acc, ctx);
    ops::rmsnorm_bwd_add(dres, Gl.input_norm, dh, x, Wl.input_norm, rows(a.rstd1, T), ctx);
  }
  if (!lo) ops::embedding_bwd(G.embed, dres, b.ids, ctx);
}

}  // namespace rlcu
