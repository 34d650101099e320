// The PPO critic (see include/rlcu/critic.h for the math).
#include "rlcu/critic.h"

#include <spdlog/spdlog.h>

#include "rlcu/error.h"
#include "rlcu/ops.h"
#include "rlcu/rl_ops.h"

namespace rlcu::rl {

namespace {
Tensor rows(const Tensor& t, int64_t n) { return t.slice_rows(0, n); }
}  // namespace

Critic::Critic(const CriticOptions& opt, Context& ctx) : opt_(opt) {
  ModelOptions mo;
  mo.training = true;
  model_ = Model::load(opt.init, mo, ctx);
  const Device dev = model_->device();
  TransformerOptions to;
  to.max_tokens = opt.max_tokens;
  to.act_dtype = default_act_dtype(dev);
  to.training = true;
  to.checkpointing = opt.checkpointing;
  tf_ = std::make_unique<Transformer>(*model_, to, ctx);
  const int64_t H = model_->config().hidden_size, Tm = opt.max_tokens;
  head_master_ = OwnedTensor::make(DType::F32, dev, {H});
  head_grad_ = OwnedTensor::make(DType::F32, dev, {H});
  ops::fill(head_master_.t, 0.0f, ctx);
  ops::fill(head_grad_.t, 0.0f, ctx);
  if (dev == Device::CUDA) {
    head_w_ = OwnedTensor::make(to.act_dtype, dev, {H});
    ops::fill(head_w_.t, 0.0f, ctx);
  }
  for (OwnedTensor* t : {&vals_, &dv_, &old_v_, &ret_, &w_, &lp_}) *t = OwnedTensor::make(DType::F32, dev, {Tm});
  dv_act_ = OwnedTensor::make(to.act_dtype, dev, {Tm});
  stats_ = OwnedTensor::make(DType::F32, dev, {rl::kValueStats});
  spdlog::info("critic {} ({} parameters) with a zero-initialised value head", opt.init, model_->num_parameters());
}

Critic::~Critic() = default;

void Critic::forward(const Micro& mb, Context& ctx) {
  const int64_t T = mb.batch.num_tokens(), H = model_->config().hidden_size;
  const DeviceBatch db = tf_->upload(mb.batch, ctx);
  tf_->forward(rows(lp_.t, T), Tensor(), db, ctx);
  const Tensor w = head_w_.t.empty() ? head_master_.t : head_w_.t;
  ops::GemmParams head;  // values = h_f w_v^T
  head.trans_b = true;
  ops::gemm(rows(vals_.t, T).view({T, 1}), tf_->final_hidden(), w.view({1, H}), head, ctx);
}

void Critic::score(RolloutBatch& batch, const std::vector<Micro>& micros, Context& ctx) {
  batch.values.assign(static_cast<size_t>(batch.num_tokens()), 0.0f);
  for (const Micro& mb : micros) {
    const int64_t T = mb.batch.num_tokens();
    forward(mb, ctx);
    ctx.synchronize("critic values");
    scatter_rows(batch.values, mb, batch.offsets, to_host_f32(rows(vals_.t, T)));
  }
}

void Critic::accumulate_gradients(const RolloutBatch& batch, const std::vector<Micro>& micros, Context& ctx) {
  const size_t T_all = static_cast<size_t>(batch.num_tokens());
  RLCU_CHECK(batch.returns.size() == T_all && batch.values.size() == T_all && batch.loss_weights.size() == T_all,
             "critic update: {} returns, {} old values, {} weights for {} tokens", batch.returns.size(),
             batch.values.size(), batch.loss_weights.size(), T_all);
  const int64_t H = model_->config().hidden_size;
  ValueLossParams vp;
  vp.clip = static_cast<float>(opt_.value_clip);
  model_->zero_grads(ctx);
  ops::fill(head_grad_.t, 0.0f, ctx);
  ops::fill(stats_.t, 0.0f, ctx);
  for (const Micro& mb : micros) {
    const int64_t T = mb.batch.num_tokens();
    const std::vector<float> o = gather_rows(mb, batch.offsets, batch.values);
    const std::vector<float> r = gather_rows(mb, batch.offsets, batch.returns);
    const std::vector<float> w = gather_rows(mb, batch.offsets, batch.loss_weights);
    ctx.upload(rows(old_v_.t, T), o.data());
    ctx.upload(rows(ret_.t, T), r.data());
    ctx.upload(rows(w_.t, T), w.data());
    forward(mb, ctx);
    value_loss(rows(dv_.t, T), stats_.t, rows(vals_.t, T), rows(old_v_.t, T), rows(ret_.t, T), rows(w_.t, T), vp,
               ctx);
    const Tensor dva = rows(dv_act_.t, T).view({T, 1});
    ops::cast(dva, rows(dv_.t, T).view({T, 1}), ctx);
    const Tensor wv = (head_w_.t.empty() ? head_master_.t : head_w_.t).view({1, H});
    // dw_v += dV^T h_f (before the hidden-state gradient buffer is written)
    ops::GemmParams head_grad;
    head_grad.trans_a = true;
    head_grad.beta = 1.0f;
    ops::gemm(head_grad_.t.view({1, H}), dva, tf_->final_hidden(), head_grad, ctx);
    const Tensor dh = tf_->final_hidden_grad_buffer();
    ops::gemm(dh, dva, wv, ops::GemmParams{}, ctx);
    tf_->backward_hidden(dh, ctx);
  }
}

std::vector<float> Critic::read_stats(Context& ctx) const {
  ctx.synchronize("critic stats");
  return to_host_f32(stats_.t);
}

Critic::Head Critic::head() const {
  Head h;
  h.master = head_master_.t;
  h.grad = head_grad_.t;
  h.weights = head_w_.t;
  return h;
}

void Critic::refresh_head_weights(Context& ctx) {
  if (!head_w_.t.empty()) ops::cast(head_w_.t, head_master_.t, ctx);
}

}  // namespace rlcu::rl
