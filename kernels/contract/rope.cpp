// Contracts of the rotary embedding ops of include/rlcu/ops.h (kernels/op_table.inc rows with CONTRACT = 1): x
// [T, heads, hd] with an even hd, out of x's size and dtype, positions I32 [T], inv_freq F32 [hd/2]. The backends
// keep what is theirs: the CPU twin (kernels/cpu/rope.cpp) takes non-empty 3-D F32 with out shaped like x, the CUDA
// kernel (kernels/rope.cu) its dtype dispatch and vector widths.
#include "contract/contract.h"

namespace rlcu::contract {

namespace {

void check_rope(const Tensor& out, const Tensor& x, const Tensor& positions, const Tensor& inv_freq, const char* op) {
  RLCU_CHECK(x.ndim >= 2, "{}: x must be [T, heads, hd], got {}", op, x.shape_str());
  const int64_t tokens = x.size(0), hd = x.cols();
  RLCU_CHECK(hd % 2 == 0, "{}: head dim {} must be even", op, hd);
  const int64_t half = hd / 2;
  RLCU_CHECK(out.numel() == x.numel() && out.dtype == x.dtype, "{}: out {} {} must match x {} {}", op,
             dtype_name(out.dtype), out.shape_str(), dtype_name(x.dtype), x.shape_str());
  RLCU_CHECK(positions.dtype == DType::I32 && positions.numel() == tokens,
             "{}: positions must be i32 with {} elements, got {} {}", op, tokens, dtype_name(positions.dtype),
             positions.shape_str());
  RLCU_CHECK(inv_freq.dtype == DType::F32 && inv_freq.numel() == half,
             "{}: inv_freq must be f32 with {} elements, got {} {}", op, half, dtype_name(inv_freq.dtype),
             inv_freq.shape_str());
}

}  // namespace

void rope_fwd(const Tensor& out, const Tensor& x, const Tensor& positions, const Tensor& inv_freq) {
  check_rope(out, x, positions, inv_freq, "rope_fwd");
}

void rope_bwd(const Tensor& dx, const Tensor& dout, const Tensor& positions, const Tensor& inv_freq) {
  check_rope(dx, dout, positions, inv_freq, "rope_bwd");
}

}  // namespace rlcu::contract
