// Contracts of the matrix-product ops of include/rlcu/ops.h (kernels/op_table.inc rows with CONTRACT = 1): gemm's
// non-empty operands whose shapes chain (each seen as [rows, last dim]) with one input dtype and an addend shaped and
// typed like out; bias_add / bias_grad's bias of the last dim (dbias F32). The backends keep what is theirs: the CPU
// twin (kernels/cpu/gemm.cpp) takes 2-D F32, the CUDA path (kernels/gemm.cu) its supported dtype pairs and the
// cuBLASLt/fallback choice.
#include "contract/contract.h"

namespace rlcu::contract {

namespace {

void check_2d(const Tensor& t, const char* op, const char* name) {
  RLCU_CHECK(t.ndim >= 1 && !t.empty(), "{}: {} must be a non-empty tensor, got {}", op, name, t.shape_str());
}

}  // namespace

void gemm(const Tensor& out, const Tensor& a, const Tensor& b, const ops::GemmParams& p) {
  check_2d(out, "gemm", "out");
  check_2d(a, "gemm", "a");
  check_2d(b, "gemm", "b");
  const int64_t M = lead_rows(out), N = out.cols();
  const int64_t K = p.trans_a ? lead_rows(a) : a.cols();
  const int64_t am = p.trans_a ? a.cols() : lead_rows(a);
  const int64_t bk = p.trans_b ? b.cols() : lead_rows(b), bn = p.trans_b ? lead_rows(b) : b.cols();
  RLCU_CHECK(am == M && bk == K && bn == N, "gemm: shapes out {} a {}{} b {}{} do not chain", out.shape_str(),
             a.shape_str(), p.trans_a ? "^T" : "", b.shape_str(), p.trans_b ? "^T" : "");
  RLCU_CHECK(a.dtype == b.dtype, "gemm: a ({}) and b ({}) must have the same dtype", dtype_name(a.dtype),
             dtype_name(b.dtype));
  if (p.addend) {
    check_2d(*p.addend, "gemm", "addend");
    RLCU_CHECK(p.addend->dtype == out.dtype && p.addend->numel() == out.numel() && p.addend->cols() == N,
               "gemm: addend {} {} must match out {} {}", dtype_name(p.addend->dtype), p.addend->shape_str(),
               dtype_name(out.dtype), out.shape_str());
  }
}

void bias_add(const Tensor& out, const Tensor& bias) {
  check_2d(out, "bias_add", "out");
  check_2d(bias, "bias_add", "bias");
  RLCU_CHECK(bias.numel() == out.cols(), "bias_add: bias {} does not match the last dim of out {}", bias.shape_str(),
             out.shape_str());
}

void bias_grad(const Tensor& dbias, const Tensor& dy) {
  check_2d(dbias, "bias_grad", "dbias");
  check_2d(dy, "bias_grad", "dy");
  RLCU_CHECK(dbias.dtype == DType::F32, "bias_grad: dbias must be f32 (got {})", dtype_name(dbias.dtype));
  RLCU_CHECK(dbias.numel() == dy.cols(), "bias_grad: dbias {} does not match the last dim of dy {}", dbias.shape_str(),
             dy.shape_str());
}

}  // namespace rlcu::contract
