// CPU rotary position embedding, NeoX half-split layout (Hugging Face rotate_half), x[T, heads, hd], hd even,
// positions[T] (I32), inv_freq[hd/2] (F32, default or llama3-scaled frequencies computed by the model):
//   a = float(positions[t]) * inv_freq[i]   (float product, as the model computes it in fp32), cos/sin in double;
//   out[i] = x[i] cos a - x[i+hd/2] sin a,   out[i+hd/2] = x[i+hd/2] cos a + x[i] sin a,   i < hd/2.
// Backward is the transpose rotation (angle -a). Both are pure activation maps (dx OVERWRITES); there are no
// parameters. out may alias x and dx may alias dout: each pair (i, i+hd/2) is read before it is written.
// Sizes, dtypes and the even hd are checked by kernels/contract/rope.cpp; the CPU twin takes non-empty 3-D F32
// with out shaped like x.
#include <cmath>
#include <vector>

#include "backends.h"
#include "reference.h"

namespace rlcu::cpu {
namespace ref {

namespace {
// Rotates every head of every token by +angle (sign = 1) or -angle (sign = -1).
template <class T>
void rotate(T* out, const T* x, const int32_t* positions, const float* inv_freq, int64_t tokens, int64_t heads,
            int64_t head_dim, double sign) {
  const int64_t half = head_dim / 2;
  std::vector<double> c(static_cast<size_t>(half)), s(static_cast<size_t>(half));
  for (int64_t t = 0; t < tokens; ++t) {
    const float pos = static_cast<float>(positions[t]);
    for (int64_t i = 0; i < half; ++i) {
      const float angle = pos * inv_freq[i];
      c[i] = std::cos(static_cast<double>(angle));
      s[i] = sign * std::sin(static_cast<double>(angle));
    }
    for (int64_t h = 0; h < heads; ++h) {
      const T* xr = x + (t * heads + h) * head_dim;
      T* o = out + (t * heads + h) * head_dim;
      for (int64_t i = 0; i < half; ++i) {
        const double x0 = static_cast<double>(xr[i]), x1 = static_cast<double>(xr[i + half]);
        o[i] = static_cast<T>(x0 * c[i] - x1 * s[i]);
        o[i + half] = static_cast<T>(x1 * c[i] + x0 * s[i]);
      }
    }
  }
}
}  // namespace

template <class T>
void rope_fwd_ref(T* out, const T* x, const int32_t* positions, const float* inv_freq, int64_t tokens,
                  int64_t heads, int64_t head_dim) {
  rotate(out, x, positions, inv_freq, tokens, heads, head_dim, 1.0);
}

template <class T>
void rope_bwd_ref(T* dx, const T* dout, const int32_t* positions, const float* inv_freq, int64_t tokens,
                  int64_t heads, int64_t head_dim) {
  rotate(dx, dout, positions, inv_freq, tokens, heads, head_dim, -1.0);
}

#define RLCU_INSTANTIATE(T)                                                                                  \
  template void rope_fwd_ref<T>(T*, const T*, const int32_t*, const float*, int64_t, int64_t, int64_t);    \
  template void rope_bwd_ref<T>(T*, const T*, const int32_t*, const float*, int64_t, int64_t, int64_t);
RLCU_INSTANTIATE(float)
RLCU_INSTANTIATE(double)
#undef RLCU_INSTANTIATE

}  // namespace ref

namespace {
void check_rope(const char* op, const Tensor& out, const Tensor& x, const Tensor& positions, const Tensor& inv_freq) {
  check::tensor(op, "output", out, DType::F32, 3);
  check::tensor(op, "input", x, DType::F32, 3);
  check::shape(op, "output", out, {x.shape[0], x.shape[1], x.shape[2]});
}
}  // namespace

void rope_fwd(const Tensor& out, const Tensor& x, const Tensor& positions, const Tensor& inv_freq, Context& ctx) {
  check_rope("rope_fwd", out, x, positions, inv_freq);
  ref::rope_fwd_ref<float>(out.ptr<float>(), x.ptr<float>(), positions.ptr<int32_t>(), inv_freq.ptr<float>(),
                           x.shape[0], x.shape[1], x.shape[2]);
}

void rope_bwd(const Tensor& dx, const Tensor& dout, const Tensor& positions, const Tensor& inv_freq, Context& ctx) {
  check_rope("rope_bwd", dx, dout, positions, inv_freq);
  ref::rope_bwd_ref<float>(dx.ptr<float>(), dout.ptr<float>(), positions.ptr<int32_t>(), inv_freq.ptr<float>(),
                           dout.shape[0], dout.shape[1], dout.shape[2]);
}

}  // namespace rlcu::cpu
