// Causal grouped-query attention over packed variable-length sequences, forward and backward (CUDA), the twin of
// kernels/cpu/attention.cpp.
//
// Shapes: q[T,nq,hd], k,v[T,nkv,hd], out/dout/dq[T,nq,hd], dk/dv[T,nkv,hd], lse[T,nq] (F32), cu_seqlens[S+1] (I32,
// on the device; cu_seqlens[0] = 0 and cu_seqlens[S] = T). Query head h reads kv head h / (nq/nkv). Within
// sequence s (rows [cu[s], cu[s+1])), local query i attends to local keys j <= i:
//   x_ij = scale * q_i . k_j,   lse_i = log sum_j exp(x_ij),   P_ij = exp(x_ij - lse_i),   out_i = sum_j P_ij v_j.
// Backward, with D_i = dout_i . out_i:
//   dv_j = sum_{h in group} sum_i P_ij dout_i,   dP_ij = dout_i . v_j,   dS_ij = P_ij (dP_ij - D_i),
//   dq_i = scale sum_j dS_ij k_j,   dk_j = scale sum_{h in group} sum_i dS_ij q_i.
// dq, dk and dv are activation gradients: they are overwritten. No float atomics: every output element is reduced
// by exactly one thread in a fixed order, so results are bit-reproducible.
//
// Paths (chosen by select_attention_path, kernels/attention_select.cpp): the tensor-core path for BF16 with hd 64
// or 128 and 16-byte aligned tensors (kernels/attention_fwd_fast.cu, kernels/attention_bwd_fast.cu), else the
// generic warp-per-row path (kernels/attention_generic.cu). Blocks map to (tile, head, sequence); the grid's tile
// extent comes from params.max_seqlen and each block strides over tiles, so a hint that is too small costs speed,
// never correctness. This file checks the arguments and calls the chosen path.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "attention_common.cuh"
#include "attention_select.h"
#include "backends.h"

namespace rlcu::cuda {

namespace {

using attention::Dims;

constexpr int kMaxGridYZ = 65535;

void check_same_shape(const char* op, const char* name, const Tensor& t, const Tensor& ref) {
  RLCU_CHECK(t.ndim == ref.ndim && t.numel() == ref.numel() && t.shape[0] == ref.shape[0] &&
                 t.shape[t.ndim - 1] == ref.shape[ref.ndim - 1],
             "{}: {} has shape {}, expected {}", op, name, t.shape_str(), ref.shape_str());
  RLCU_CHECK(t.dtype == ref.dtype, "{}: {} is {}, expected {}", op, name, dtype_name(t.dtype), dtype_name(ref.dtype));
  RLCU_CHECK(t.device == Device::CUDA && !t.empty(), "{}: {} must be a CUDA tensor", op, name);
}

Dims check_inputs(const char* op, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& lse,
                  const Tensor& cu_seqlens, const ops::AttentionParams& p) {
  RLCU_CHECK(q.ndim == 3 && k.ndim == 3, "{}: q [T,nq,hd] and k [T,nkv,hd] expected, got {} and {}", op,
             q.shape_str(), k.shape_str());
  RLCU_CHECK(q.dtype == DType::F32 || q.dtype == DType::BF16, "{}: dtype {} not supported (F32 or BF16)", op,
             dtype_name(q.dtype));
  RLCU_CHECK(q.device == Device::CUDA && k.device == Device::CUDA && v.device == Device::CUDA,
             "{}: q, k, v must be CUDA tensors", op);
  Dims d{q.shape[0], static_cast<int>(q.shape[1]), static_cast<int>(k.shape[1]), static_cast<int>(q.shape[2])};
  RLCU_CHECK(k.shape[0] == d.tokens && k.shape[2] == d.hd && k.dtype == q.dtype,
             "{}: k has shape {} ({}), expected [{},nkv,{}] ({})", op, k.shape_str(), dtype_name(k.dtype), d.tokens,
             d.hd, dtype_name(q.dtype));
  check_same_shape(op, "v", v, k);
  RLCU_CHECK(d.nq > 0 && d.nkv > 0 && d.nq % d.nkv == 0, "{}: nq ({}) must be a positive multiple of nkv ({})", op,
             d.nq, d.nkv);
  RLCU_CHECK(d.hd > 0 && d.hd <= kMaxGenericHeadDim, "{}: head dim {} outside [1, {}]", op, d.hd, kMaxGenericHeadDim);
  RLCU_CHECK(lse.dtype == DType::F32 && lse.numel() == d.tokens * d.nq && lse.device == Device::CUDA,
             "{}: lse must be F32 [{},{}] on CUDA, got {} {}", op, d.tokens, d.nq, dtype_name(lse.dtype),
             lse.shape_str());
  RLCU_CHECK(cu_seqlens.dtype == DType::I32 && cu_seqlens.device == Device::CUDA &&
                 cu_seqlens.numel() == static_cast<int64_t>(p.num_seqs) + 1,
             "{}: cu_seqlens must be I32 [num_seqs+1 = {}] on CUDA, got {} {}", op, p.num_seqs + 1,
             dtype_name(cu_seqlens.dtype), cu_seqlens.shape_str());
  RLCU_CHECK(p.num_seqs >= 0 && p.num_seqs <= kMaxGridYZ, "{}: num_seqs {} outside [0, {}]", op, p.num_seqs,
             kMaxGridYZ);
  RLCU_CHECK(p.max_seqlen >= 0, "{}: max_seqlen {} is negative", op, p.max_seqlen);
  RLCU_CHECK(p.scale > 0.0f && std::isfinite(p.scale), "{}: scale {} must be positive and finite", op, p.scale);
  return d;
}

bool aligned16(const Tensor& t) { return (reinterpret_cast<uintptr_t>(t.data) & 15u) == 0; }

}  // namespace

void attention_fwd(const Tensor& out, const Tensor& lse, const Tensor& q, const Tensor& k, const Tensor& v,
                   const Tensor& cu_seqlens, const ops::AttentionParams& p, Context& ctx) {
  const Dims d = check_inputs("attention_fwd", q, k, v, lse, cu_seqlens, p);
  check_same_shape("attention_fwd", "out", out, q);
  if (d.tokens == 0 || p.num_seqs == 0) return;
  auto stream = static_cast<cudaStream_t>(ctx.stream());
  const bool aligned = aligned16(q) && aligned16(k) && aligned16(v) && aligned16(out);
  if (select_attention_path(q.dtype, d.hd, aligned) == AttentionPath::Fast)
    attention::fwd_fast(d.hd, out, lse, q, k, v, cu_seqlens, p, d, stream);
  else
    attention::fwd_generic(out, lse, q, k, v, cu_seqlens, p, d, stream);
}

void attention_bwd(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dout, const Tensor& q,
                   const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse,
                   const Tensor& cu_seqlens, const ops::AttentionParams& p, Context& ctx) {
  const char* op = "attention_bwd";
  const Dims d = check_inputs(op, q, k, v, lse, cu_seqlens, p);
  check_same_shape(op, "out", out, q);
  check_same_shape(op, "dout", dout, q);
  check_same_shape(op, "dq", dq, q);
  check_same_shape(op, "dk", dk, k);
  check_same_shape(op, "dv", dv, k);
  if (d.tokens == 0 || p.num_seqs == 0) return;
  auto stream = static_cast<cudaStream_t>(ctx.stream());
  const bool aligned = aligned16(q) && aligned16(k) && aligned16(v) && aligned16(out) && aligned16(dout) &&
                       aligned16(dq) && aligned16(dk) && aligned16(dv);
  if (select_attention_path(q.dtype, d.hd, aligned) == AttentionPath::Fast)
    attention::bwd_fast(d.hd, dq, dk, dv, dout, q, k, v, out, lse, cu_seqlens, p, d, stream);
  else
    attention::bwd_generic(dq, dk, dv, dout, q, k, v, out, lse, cu_seqlens, p, d, stream);
}

}  // namespace rlcu::cuda
