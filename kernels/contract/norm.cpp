// Contracts of the embedding and RMSNorm ops of include/rlcu/ops.h (kernels/op_table.inc rows with CONTRACT = 1):
// table and id shapes and dtypes, RMSNorm's weight/rstd sizes, the output dtypes either backend may write, eps and
// the no-alias rule of rmsnorm_bwd_add. The backends keep what is theirs: the CPU twins (kernels/cpu/embedding.cpp,
// rmsnorm.cpp) take non-empty F32 (2-D for embeddings, out shaped like x for RMSNorm), the CUDA kernels
// (kernels/embedding.cu, rmsnorm.cu) their dtype dispatch, vector widths and embedding_bwd's i32 sort range.
#include "contract/contract.h"

namespace rlcu::contract {

namespace {

void check_ids(const Tensor& ids, int64_t tokens, const char* op) {
  RLCU_CHECK(ids.dtype == DType::I32, "{}: ids must be i32 (got {})", op, dtype_name(ids.dtype));
  RLCU_CHECK(ids.numel() == tokens, "{}: ids {} do not match {} tokens", op, ids.shape_str(), tokens);
}

void check_norm(const Tensor& x, const Tensor& weight, const Tensor& rstd, const char* op) {
  RLCU_CHECK(x.ndim >= 1, "{}: x must have at least one dim", op);
  RLCU_CHECK(weight.numel() == x.cols(), "{}: weight {} does not match the last dim of x {}", op, weight.shape_str(),
             x.shape_str());
  RLCU_CHECK(rstd.dtype == DType::F32 && rstd.numel() == lead_rows(x),
             "{}: rstd must be f32 with {} elements, got {} {}", op, lead_rows(x), dtype_name(rstd.dtype),
             rstd.shape_str());
}

void check_norm_bwd(const Tensor& dx, const Tensor& dweight, const Tensor& dout, const Tensor& x,
                    const Tensor& weight, const Tensor& rstd, bool acc, const char* op) {
  check_norm(x, weight, rstd, op);
  RLCU_CHECK(dx.numel() == x.numel() && dout.numel() == x.numel() && dx.dtype == dout.dtype &&
                 (dout.dtype == x.dtype || (x.dtype == DType::F32 && dout.dtype == DType::BF16)),
             "{}: dx {} {} and dout {} {} must match x {} {} (or be bf16 for an f32 x)", op, dtype_name(dx.dtype),
             dx.shape_str(), dtype_name(dout.dtype), dout.shape_str(), dtype_name(x.dtype), x.shape_str());
  RLCU_CHECK(!acc || dx.data != dout.data, "{}: dx must not alias dout", op);
  RLCU_CHECK(dweight.dtype == DType::F32 && dweight.numel() == x.cols(), "{}: dweight must be f32 [{}], got {} {}",
             op, x.cols(), dtype_name(dweight.dtype), dweight.shape_str());
}

}  // namespace

void embedding_fwd(const Tensor& out, const Tensor& table, const Tensor& ids) {
  RLCU_CHECK(table.ndim == 2, "embedding_fwd: table must be [V, H], got {}", table.shape_str());
  RLCU_CHECK(out.cols() == table.size(1), "embedding_fwd: out {} does not match table {}", out.shape_str(),
             table.shape_str());
  check_ids(ids, lead_rows(out), "embedding_fwd");
}

void embedding_bwd(const Tensor& dtable, const Tensor& dout, const Tensor& ids) {
  RLCU_CHECK(dtable.ndim == 2 && dtable.dtype == DType::F32, "embedding_bwd: dtable must be f32 [V, H], got {} {}",
             dtype_name(dtable.dtype), dtable.shape_str());
  RLCU_CHECK(dout.cols() == dtable.size(1), "embedding_bwd: dout {} does not match dtable {}", dout.shape_str(),
             dtable.shape_str());
  check_ids(ids, lead_rows(dout), "embedding_bwd");
}

void rmsnorm_fwd(const Tensor& out, const Tensor& rstd, const Tensor& x, const Tensor& weight, float eps) {
  check_norm(x, weight, rstd, "rmsnorm_fwd");
  RLCU_CHECK(out.numel() == x.numel() && (out.dtype == x.dtype || (x.dtype == DType::F32 && out.dtype == DType::BF16)),
             "rmsnorm_fwd: out {} {} must match x {} {} (or be bf16 for an f32 x)", dtype_name(out.dtype),
             out.shape_str(), dtype_name(x.dtype), x.shape_str());
  RLCU_CHECK(eps >= 0.0f, "rmsnorm_fwd: eps {} is negative", eps);
}

void rmsnorm_bwd(const Tensor& dx, const Tensor& dweight, const Tensor& dout, const Tensor& x, const Tensor& weight,
                 const Tensor& rstd) {
  check_norm_bwd(dx, dweight, dout, x, weight, rstd, false, "rmsnorm_bwd");
}

void rmsnorm_bwd_add(const Tensor& dx, const Tensor& dweight, const Tensor& dout, const Tensor& x,
                     const Tensor& weight, const Tensor& rstd) {
  check_norm_bwd(dx, dweight, dout, x, weight, rstd, true, "rmsnorm_bwd_add");
}

}  // namespace rlcu::contract
