// CPU optimizer ops over flat F32 tensors.
//   sum_squares: out[0] = sum_i x_i^2, accumulated in double in index order (deterministic), stored as F32.
//   adamw_update: AdamW with decoupled weight decay and bias correction, per element in double:
//     g = grad * grad_scale
//     m = beta1 m + (1 - beta1) g,   v = beta2 v + (1 - beta2) g^2
//     mhat = m / (1 - beta1^step),   vhat = v / (1 - beta2^step)           (step is 1-based)
//     master -= lr * (mhat / (sqrt(vhat) + eps) + weight_decay * master)  (decay uses the pre-update master)
//   master, m, v are updated in place; `weights`, when not empty, receives the new master: BF16 rounded to
//   nearest even (the GPU layout), or F32 (a plain copy, for a CPU model that keeps separate weights).
// Shapes, dtypes and the step are checked by kernels/contract/optimizer.cpp; the CPU twin adds its own rule
// (non-empty F32 inputs).
// adamw_update runs on threads (rlcu/parallel.h) over fixed chunks of elements; sum_squares stays one ordered sum.
// These ops consume gradients and produce none; master, m and v are optimizer state updated in place.
#include <cmath>

#include "backends.h"
#include "rlcu/parallel.h"
#include "reference.h"

namespace rlcu::cpu {
namespace ref {

template <class T>
void sum_squares_ref(T* out, const T* x, int64_t n) {
  double s = 0.0;
  for (int64_t i = 0; i < n; ++i) s += static_cast<double>(x[i]) * static_cast<double>(x[i]);
  out[0] = static_cast<T>(s);
}

template <class T>
void adamw_update_ref(T* master, T* m, T* v, uint16_t* weights_bf16, float* weights_f32, const T* grad, int64_t n,
                      const ops::AdamWParams& p) {
  const double b1 = p.beta1, b2 = p.beta2, lr = p.lr, eps = p.eps, wd = p.weight_decay, gs = p.grad_scale;
  const double bc1 = 1.0 - std::pow(b1, static_cast<double>(p.step));
  const double bc2 = 1.0 - std::pow(b2, static_cast<double>(p.step));
  parallel_for(n, grain_for(16), [&](int64_t i0, int64_t i1) {
  for (int64_t i = i0; i < i1; ++i) {
    const double g = static_cast<double>(grad[i]) * gs;
    const double mi = b1 * static_cast<double>(m[i]) + (1.0 - b1) * g;
    const double vi = b2 * static_cast<double>(v[i]) + (1.0 - b2) * g * g;
    const double w = static_cast<double>(master[i]);
    const double w_new = w - lr * ((mi / bc1) / (std::sqrt(vi / bc2) + eps) + wd * w);
    m[i] = static_cast<T>(mi);
    v[i] = static_cast<T>(vi);
    master[i] = static_cast<T>(w_new);
    if (weights_bf16) weights_bf16[i] = f32_to_bf16(static_cast<float>(master[i]));
    if (weights_f32) weights_f32[i] = static_cast<float>(master[i]);
  }
  });
}

#define RLCU_INSTANTIATE(T)                                                                                         \
  template void sum_squares_ref<T>(T*, const T*, int64_t);                                                         \
  template void adamw_update_ref<T>(T*, T*, T*, uint16_t*, float*, const T*, int64_t, const ops::AdamWParams&);
RLCU_INSTANTIATE(float)
RLCU_INSTANTIATE(double)
#undef RLCU_INSTANTIATE

}  // namespace ref

void sum_squares(const Tensor& out, const Tensor& x, Context& ctx) {
  check::tensor("sum_squares", "x", x, DType::F32);
  ref::sum_squares_ref<float>(out.ptr<float>(), x.ptr<float>(), x.numel());
}

void adamw_update(const Tensor& master, const Tensor& m, const Tensor& v, const Tensor& weights, const Tensor& grad,
                  const ops::AdamWParams& p, Context& ctx) {
  const char* op = "adamw_update";
  RLCU_CHECK(!master.empty(), "{}: master is empty", op);
  const int64_t n = master.numel();
  uint16_t* w_bf16 = nullptr;
  float* w_f32 = nullptr;
  if (!weights.empty()) {
    if (weights.dtype == DType::BF16) w_bf16 = weights.ptr<uint16_t>();
    else w_f32 = weights.ptr<float>();
  }
  ref::adamw_update_ref<float>(master.ptr<float>(), m.ptr<float>(), v.ptr<float>(), w_bf16, w_f32, grad.ptr<float>(), n,
                               p);
}

}  // namespace rlcu::cpu
