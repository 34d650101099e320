// Contracts of the optimizer ops of include/rlcu/ops.h (kernels/op_table.inc rows with CONTRACT = 1): sum_squares'
// F32 output, AdamW's F32 state of one element count, its optional bf16/f32 weights and its 1-based step. The
// backends keep what is theirs: the CPU twin (kernels/cpu/optimizer.cpp) takes non-empty F32 inputs only, the CUDA
// kernels (kernels/optimizer.cu) also BF16 for sum_squares' x, and their vector-width paths.
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

}  // namespace rlcu::contract
