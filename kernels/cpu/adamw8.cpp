// CPU 8-bit AdamW (ops::adamw8_update): for each block of kernels/adamw8_common.h's kBlock elements, dequantise the
// moments, update them and the F32 master in fp32 (adamw8::update_one), then requantise with the block's new absmax.
// The math is the header's, shared with kernels/adamw8.cu, so both give the same bits. master, the codes and the
// absmax scales are updated in place; grad is read only; `weights`, when not empty, receives the new master (BF16
// rounded to nearest even, or an F32 copy). Shapes, dtypes and the step are checked by
// kernels/contract/optimizer.cpp; the CPU twin takes a non-empty master.
#include <algorithm>
#include <cmath>

#include "adamw8_common.h"
#include "backends.h"
#include "reference.h"

namespace rlcu::cpu {

void adamw8_update(const Tensor& master, const Tensor& m_codes, const Tensor& m_absmax, const Tensor& v_codes,
                   const Tensor& v_absmax, const Tensor& weights, const Tensor& grad, const ops::AdamWParams& p,
                   Context& ctx) {
  const char* op = "adamw8_update";
  RLCU_CHECK(!master.empty(), "{}: master is empty", op);
  const int64_t n = master.numel();
  const int64_t nb = adamw8::num_blocks(n);
  uint16_t* w_bf16 = nullptr;
  float* w_f32 = nullptr;
  if (!weights.empty()) {
    if (weights.dtype == DType::BF16) w_bf16 = weights.ptr<uint16_t>();
    else w_f32 = weights.ptr<float>();
  }
  const adamw8::Tables& tb = adamw8::tables();
  const adamw8::Consts c = adamw8::make_consts(p);
  float* w = master.ptr<float>();
  const float* g = grad.ptr<float>();
  uint8_t* mc = m_codes.ptr<uint8_t>();
  uint8_t* vc = v_codes.ptr<uint8_t>();
  float* ma = m_absmax.ptr<float>();
  float* va = v_absmax.ptr<float>();
  float mb[adamw8::kBlock], vb[adamw8::kBlock];
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t i0 = b * adamw8::kBlock;
    const int len = static_cast<int>(std::min<int64_t>(adamw8::kBlock, n - i0));
    float mmax = 0.0f, vmax = 0.0f;
    for (int j = 0; j < len; ++j) {
      const int64_t i = i0 + j;
      float m = adamw8::dequantise(tb.sgn, mc[i], ma[b]);
      float v = adamw8::dequantise(tb.uns, vc[i], va[b]);
      const float nw = adamw8::update_one(w[i], m, v, g[i], c);
      if (w_bf16) w_bf16[i] = adamw8::bf16_bits(nw);
      if (w_f32) w_f32[i] = nw;
      mb[j] = m;
      vb[j] = v;
      mmax = std::max(mmax, std::fabs(m));
      vmax = std::max(vmax, v);
    }
    ma[b] = mmax;
    va[b] = vmax;
    for (int j = 0; j < len; ++j) {
      mc[i0 + j] = adamw8::quantise_scaled(tb.sgn, mb[j], mmax, adamw8::kSignedZero);
      vc[i0 + j] = adamw8::quantise_scaled(tb.uns, vb[j], vmax, adamw8::kUnsignedZero);
    }
  }
  (void)ctx;
}

}  // namespace rlcu::cpu
