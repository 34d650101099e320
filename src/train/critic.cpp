// The PPO critic (see critic.h for the math).
#include "critic.h"

#include <spdlog/spdlog.h>

#include "rlcu/error.h"
#include "rlcu/ops.h"
#include "rlcu/rl_ops.h"

namespace rlcu {

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
  adam_ = std::make_unique<AdamW>(opt.optimizer, model_->flat_master(), model_->flat_grads(),
                                  dev == Device::CUDA ? model_->flat_weights() : Tensor(), ctx);
  const int64_t H = model_->config().hidden_size, Tm = opt.max_tokens;
  head_master_ = OwnedTensor::make(DType::F32, dev, {H});
  head_grad_ = OwnedTensor::make(DType::F32, dev, {H});
  ops::fill(head_master_.t, 0.0f, ctx);
  ops::fill(head_grad_.t, 0.0f, ctx);
  if (dev == Device::CUDA) {
    head_w_ = OwnedTensor::make(to.act_dtype, dev, {H});
    ops::fill(head_w_.t, 0.0f, ctx);
  }
  head_adam_ = std::make_unique<AdamW>(opt.optimizer, head_master_.t, head_grad_.t,
                                       dev == Device::CUDA ? head_w_.t : Tensor(), ctx);
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
  ops::gemm(rows(vals_.t, T).view({T, 1}), tf_->final_hidden(), w.view({1, H}), ops::GemmParams{false, true}, ctx);
}

std::vector<float> Critic::values(const std::vector<Micro>& micros, const std::vector<int32_t>& comp_cu,
                                  Context& ctx) {
  std::vector<float> out(static_cast<size_t>(comp_cu.back()), 0.0f);
  for (const Micro& mb : micros) {
    const int64_t T = mb.batch.num_tokens();
    forward(mb, ctx);
    ctx.synchronize("critic values");
    const std::vector<float> v = to_host_f32(rows(vals_.t, T));
    for (int64_t r = 0; r < T; ++r) {
      const int32_t s = mb.seq_of_row[static_cast<size_t>(r)];
      if (s >= 0)
        out[static_cast<size_t>(comp_cu[static_cast<size_t>(s)] + mb.tok_of_row[static_cast<size_t>(r)])] =
            v[static_cast<size_t>(r)];
    }
  }
  old_c_ = out;
  return out;
}

nlohmann::ordered_json Critic::update(const std::vector<Micro>& micros, const std::vector<int32_t>& comp_cu,
                                      const std::vector<float>& w_c, int64_t num_iterations, int64_t step,
                                      int64_t total_steps, Context& ctx) {
  RLCU_CHECK(returns_.size() == old_c_.size() && w_c.size() == old_c_.size(),
             "critic update: {} returns, {} old values, {} weights", returns_.size(), old_c_.size(), w_c.size());
  const int64_t H = model_->config().hidden_size;
  const double lr = lr_at(opt_.optimizer, step - 1, total_steps);
  const rl::ValueLossParams vp{static_cast<float>(opt_.value_clip)};
  OptimizerStepStats os;
  std::vector<float> st;
  for (int64_t it = 0; it < num_iterations; ++it) {
    model_->zero_grads(ctx);
    ops::fill(head_grad_.t, 0.0f, ctx);
    ops::fill(stats_.t, 0.0f, ctx);
    for (const Micro& mb : micros) {
      const int64_t T = mb.batch.num_tokens();
      std::vector<float> o(static_cast<size_t>(T), 0.0f), r(static_cast<size_t>(T), 0.0f), w(static_cast<size_t>(T), 0.0f);
      for (int64_t i = 0; i < T; ++i) {
        const int32_t s = mb.seq_of_row[static_cast<size_t>(i)];
        if (s < 0) continue;
        const size_t t = static_cast<size_t>(comp_cu[static_cast<size_t>(s)] + mb.tok_of_row[static_cast<size_t>(i)]);
        o[static_cast<size_t>(i)] = old_c_[t];
        r[static_cast<size_t>(i)] = returns_[t];
        w[static_cast<size_t>(i)] = w_c[t];
      }
      ctx.upload(rows(old_v_.t, T), o.data());
      ctx.upload(rows(ret_.t, T), r.data());
      ctx.upload(rows(w_.t, T), w.data());
      forward(mb, ctx);
      rl::value_loss(rows(dv_.t, T), stats_.t, rows(vals_.t, T), rows(old_v_.t, T), rows(ret_.t, T), rows(w_.t, T),
                     vp, ctx);
      const Tensor dva = rows(dv_act_.t, T).view({T, 1});
      ops::cast(dva, rows(dv_.t, T).view({T, 1}), ctx);
      const Tensor wv = (head_w_.t.empty() ? head_master_.t : head_w_.t).view({1, H});
      // dw_v += dV^T h_f (before the hidden-state gradient buffer is written)
      ops::gemm(head_grad_.t.view({1, H}), dva, tf_->final_hidden(), ops::GemmParams{true, false, 1.0f, 1.0f}, ctx);
      const Tensor dh = tf_->final_hidden_grad_buffer();
      ops::gemm(dh, dva, wv, ops::GemmParams{}, ctx);
      tf_->backward_hidden(dh, ctx);
    }
    os = adam_->step(lr, ctx);
    head_adam_->step(lr, ctx);
    ctx.synchronize("critic stats");
    st = to_host_f32(stats_.t);
  }
  nlohmann::ordered_json m;
  if (!st.empty()) {
    m["value_loss"] = st[rl::kVsLoss];
    m["value_clip_ratio"] = st[rl::kVsTokens] > 0 ? st[rl::kVsClipped] / st[rl::kVsTokens] : 0.0;
  }
  m["critic/grad_norm"] = os.grad_norm;
  m["critic/lr"] = lr;
  return m;
}

void Critic::append_state(std::vector<SafetensorsWriteItem>& items, std::map<std::string, std::string>& metadata) const {
  append_training_state(items, metadata, *model_, adam_.get(), "critic.");
  items.push_back({"critic.value_head.master", head_master_.t, DType::F32, {}});
  items.push_back({"critic.value_head.exp_avg", head_adam_->exp_avg(), DType::F32, {}});
  items.push_back({"critic.value_head.exp_avg_sq", head_adam_->exp_avg_sq(), DType::F32, {}});
  metadata["critic.value_head.optimizer_steps"] = std::to_string(head_adam_->steps_done());
}

void Critic::restore(const CheckpointRead& ck, Context& ctx) {
  restore_training_state(ck, *model_, adam_.get(), ctx, "critic.");
  ck.restore_tensor("critic.value_head.master", head_master_.t);
  ck.restore_tensor("critic.value_head.exp_avg", head_adam_->exp_avg());
  ck.restore_tensor("critic.value_head.exp_avg_sq", head_adam_->exp_avg_sq());
  head_adam_->set_steps_done(std::stoll(ck.metadata("critic.value_head.optimizer_steps")));
  if (!head_w_.t.empty()) ops::cast(head_w_.t, head_master_.t, ctx);
}

}  // namespace rlcu
