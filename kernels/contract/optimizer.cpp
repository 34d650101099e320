// Contracts of the optimizer ops of include/rlcu/ops.h (kernels/op_table.inc rows with CONTRACT = 1): sum_squares'
// F32 output, AdamW's F32 state of one element count (8-bit AdamW: U8 codes and F32 absmax per block), the optional
// bf16/f32 weights and the 1-based step. The backends keep what is theirs: the CPU twins (kernels/cpu/optimizer.cpp,
// adamw8.cpp) take non-empty F32 inputs only, the CUDA kernels (kernels/optimizer.cu, adamw8.cu) also BF16 for
// sum_squares' x, and their vector-width paths.
#include "adamw8_common.h"
#include "contract/contract.h"

namespace rlcu::contract {

void sum_squares(const Tensor& out, const Tensor& x) {
  (void)x;
  RLCU_CHECK(out.dtype == DType::F32 && out.numel() >= 1, "sum_squares: out must be f32 with at least 1 element");
}

void adamw_update(const Tensor& master, const Tensor& m, const Tensor& v, const Tensor& weights, const Tensor& grad,
                  const ops::AdamWParams& p) {
  const int64_t n = master.numel();
  for (const Tensor* t : {&master, &m, &v, &grad})
    RLCU_CHECK(t->dtype == DType::F32 && t->numel() == n,
               "adamw_update: master, m, v and grad must be f32 of {} elements (got {} {})", n, dtype_name(t->dtype),
               t->shape_str());
  if (!weights.empty())
    RLCU_CHECK((weights.dtype == DType::BF16 || weights.dtype == DType::F32) && weights.numel() == n,
               "adamw_update: weights must be bf16 or f32 of {} elements (got {} {})", n, dtype_name(weights.dtype),
               weights.shape_str());
  RLCU_CHECK(p.step >= 1, "adamw_update: step must be >= 1 (got {})", p.step);
}

void adamw8_update(const Tensor& master, const Tensor& m_codes, const Tensor& m_absmax, const Tensor& v_codes,
                   const Tensor& v_absmax, const Tensor& weights, const Tensor& grad, const ops::AdamWParams& p) {
  const int64_t n = master.numel();
  const int64_t nb = adamw8::num_blocks(n);
  RLCU_CHECK(master.dtype == DType::F32 && grad.dtype == DType::F32 && grad.numel() == n,
             "adamw8_update: master and grad must be f32 of {} elements (got {} {})", n, dtype_name(grad.dtype),
             grad.shape_str());
  RLCU_CHECK(m_codes.dtype == DType::U8 && v_codes.dtype == DType::U8 && m_codes.numel() == n && v_codes.numel() == n,
             "adamw8_update: the codes must be u8 of {} elements", n);
  RLCU_CHECK(m_absmax.dtype == DType::F32 && v_absmax.dtype == DType::F32 && m_absmax.numel() == nb &&
                 v_absmax.numel() == nb,
             "adamw8_update: the absmax scales must be f32 of {} blocks", nb);
  if (!weights.empty())
    RLCU_CHECK((weights.dtype == DType::BF16 || weights.dtype == DType::F32) && weights.numel() == n,
               "adamw8_update: weights must be bf16 or f32 of {} elements (got {} {})", n, dtype_name(weights.dtype),
               weights.shape_str());
  RLCU_CHECK(p.step >= 1, "adamw8_update: step must be >= 1 (got {})", p.step);
}

}  // namespace rlcu::contract
