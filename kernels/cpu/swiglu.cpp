// CPU SwiGLU: gate_up[T, 2I] holds gate in columns [0, I) and up in [I, 2I);
//   out[t,i] = silu(g) * u,  silu(g) = g * sigmoid(g).
// Backward (activation gradient, dgate_up[T, 2I] OVERWRITES), with sg = sigmoid(g):
//   dg = dout * u * sg * (1 + g * (1 - sg)),   du = dout * silu(g).
// Computed in double per element; threads (rlcu/parallel.h) take fixed chunks of tokens. Shapes are checked by kernels/contract/elementwise.cpp; the CPU twin takes 2-D F32.
#include <cmath>

#include "backends.h"
#include "rlcu/parallel.h"
#include "reference.h"

namespace rlcu::cpu {
namespace ref {

namespace {
double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }
}  // namespace

template <class T>
void swiglu_fwd_ref(T* out, const T* gate_up, int64_t tokens, int64_t inter) {
  parallel_for(tokens, grain_for(8 * inter), [&](int64_t t0, int64_t t1) {
  for (int64_t t = t0; t < t1; ++t) {
    const T* gate = gate_up + t * 2 * inter;
    const T* up = gate + inter;
    T* o = out + t * inter;
    for (int64_t i = 0; i < inter; ++i) {
      const double g = static_cast<double>(gate[i]);
      o[i] = static_cast<T>(g * sigmoid(g) * static_cast<double>(up[i]));
    }
  }
  });
}

template <class T>
void swiglu_bwd_ref(T* dgate_up, const T* dout, const T* gate_up, int64_t tokens, int64_t inter) {
  parallel_for(tokens, grain_for(8 * inter), [&](int64_t t0, int64_t t1) {
  for (int64_t t = t0; t < t1; ++t) {
    const T* gate = gate_up + t * 2 * inter;
    const T* up = gate + inter;
    const T* dor = dout + t * inter;
    T* dgate = dgate_up + t * 2 * inter;
    T* dup = dgate + inter;
    for (int64_t i = 0; i < inter; ++i) {
      const double g = static_cast<double>(gate[i]), u = static_cast<double>(up[i]), d = static_cast<double>(dor[i]);
      const double sg = sigmoid(g);
      dgate[i] = static_cast<T>(d * u * sg * (1.0 + g * (1.0 - sg)));
      dup[i] = static_cast<T>(d * g * sg);
    }
  }
  });
}

#define RLCU_INSTANTIATE(T)                                                   \
  template void swiglu_fwd_ref<T>(T*, const T*, int64_t, int64_t);           \
  template void swiglu_bwd_ref<T>(T*, const T*, const T*, int64_t, int64_t);
RLCU_INSTANTIATE(float)
RLCU_INSTANTIATE(double)
#undef RLCU_INSTANTIATE

}  // namespace ref

void swiglu_fwd(const Tensor& out, const Tensor& gate_up, Context& ctx) {
  check::tensor("swiglu_fwd", "out", out, DType::F32, 2);
  check::tensor("swiglu_fwd", "gate_up", gate_up, DType::F32, 2);
  ref::swiglu_fwd_ref<float>(out.ptr<float>(), gate_up.ptr<float>(), out.shape[0], out.shape[1]);
}

void swiglu_bwd(const Tensor& dgate_up, const Tensor& dout, const Tensor& gate_up, Context& ctx) {
  check::tensor("swiglu_bwd", "dgate_up", dgate_up, DType::F32, 2);
  check::tensor("swiglu_bwd", "dout", dout, DType::F32, 2);
  check::tensor("swiglu_bwd", "gate_up", gate_up, DType::F32, 2);
  ref::swiglu_bwd_ref<float>(dgate_up.ptr<float>(), dout.ptr<float>(), gate_up.ptr<float>(), dout.shape[0],
                             dout.shape[1]);
}

}  // namespace rlcu::cpu
