// Contracts of the elementwise ops (add, scale, cast) and SwiGLU of include/rlcu/ops.h (kernels/op_table.inc rows
// with CONTRACT = 1): matching element counts, shared dtypes and the gate/up split. The backends keep what is theirs:
// the CPU twins (kernels/cpu/elementwise.cpp, swiglu.cpp) take non-empty F32 (2-D for SwiGLU), the CUDA kernels
// (kernels/elementwise.cu, swiglu.cu) their dtype dispatch and vector-width paths.
#include "contract/contract.h"

namespace rlcu::contract {

namespace {

void check_same_numel(const Tensor& out, const Tensor& x, const char* op) {
  RLCU_CHECK(out.numel() == x.numel(), "{}: out {} and input {} differ in size", op, out.shape_str(), x.shape_str());
}

// gate_up [.., 2I] against out [.., I] of the same rows and dtype.
void check_gate_up(const Tensor& out, const Tensor& gate_up, const char* op) {
  const int64_t tokens = lead_rows(gate_up), inter = gate_up.cols() / 2;
  RLCU_CHECK(gate_up.cols() % 2 == 0, "{}: gate_up {} must have an even last dim", op, gate_up.shape_str());
  RLCU_CHECK(lead_rows(out) == tokens && out.cols() == inter && out.dtype == gate_up.dtype,
             "{}: {} {} does not match gate_up {} {}", op, dtype_name(out.dtype), out.shape_str(),
             dtype_name(gate_up.dtype), gate_up.shape_str());
}

}  // namespace

void add(const Tensor& out, const Tensor& a, const Tensor& b) {
  check_same_numel(out, a, "add");
  check_same_numel(out, b, "add");
}

void scale(const Tensor& out, const Tensor& x, float s) {
  (void)s;
  check_same_numel(out, x, "scale");
  RLCU_CHECK(out.dtype == x.dtype, "scale: out ({}) and x ({}) must have the same dtype", dtype_name(out.dtype),
             dtype_name(x.dtype));
}

void cast(const Tensor& out, const Tensor& x) { check_same_numel(out, x, "cast"); }

void swiglu_fwd(const Tensor& out, const Tensor& gate_up) { check_gate_up(out, gate_up, "swiglu_fwd"); }

void swiglu_bwd(const Tensor& dgate_up, const Tensor& dout, const Tensor& gate_up) {
  check_gate_up(dout, gate_up, "swiglu_bwd");
  RLCU_CHECK(dgate_up.numel() == gate_up.numel() && dgate_up.dtype == gate_up.dtype,
             "swiglu_bwd: dgate_up {} {} must match gate_up {} {}", dtype_name(dgate_up.dtype), dgate_up.shape_str(),
             dtype_name(gate_up.dtype), gate_up.shape_str());
}

}  // namespace rlcu::contract
