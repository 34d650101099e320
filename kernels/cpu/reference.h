// Scalar-generic CPU reference kernels behind kernels/cpu/*.cpp. Each op of include/rlcu/ops.h is a template over
// the scalar type T on raw row-major pointers and sizes, explicitly instantiated for float and double in its .cpp:
// the Tensor-level functions in namespace rlcu::cpu validate their arguments and call the float instantiation; the
// gradient tests call the double instantiation and compare every backward with central differences.
//
// Semantics (math, shapes) are those of include/rlcu/ops.h. Reductions accumulate in double whatever T is.
// Parameter gradients ACCUMULATE (+=); activation gradients OVERWRITE (=).
// Token ids, targets and positions are int32; frequencies (inv_freq) are float in both instantiations because the
// model produces them in float.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>

#include "rlcu/ops.h"

namespace rlcu::cpu::ref {

// ---- matrix products ---------------------------------------------------------------------------------------
// acc[M,N] = op(a) @ op(b) in double: op(a)[M,K] is a[M,K] or a[K,M]^T, op(b)[K,N] is b[K,N] or b[N,K]^T.
template <class T>
void matmul_f64(double* acc, const T* a, const T* b, int64_t M, int64_t N, int64_t K, bool trans_a, bool trans_b);
// out[M,N] = alpha * op(a) @ op(b) + beta * out; with beta == 0 `out` is not read (NaN in it does not propagate).
template <class T>
void gemm_ref(T* out, const T* a, const T* b, int64_t M, int64_t N, int64_t K, bool trans_a, bool trans_b,
              double alpha, double beta);
// out[rows,n] += bias[n].   dbias[n] += sum over rows of dy[rows,n].
template <class T>
void bias_add_ref(T* out, const T* bias, int64_t rows, int64_t n);
template <class T>
void bias_grad_ref(T* dbias, const T* dy, int64_t rows, int64_t n);

// ---- embedding ---------------------------------------------------------------------------------------------
// out[tokens,H] = table[ids[t],:]; dtable[V,H] += scatter-add of dout rows. Throws rlcu::Error for an id outside
// [0, V).
template <class T>
void embedding_fwd_ref(T* out, const T* table, const int32_t* ids, int64_t tokens, int64_t vocab, int64_t hidden);
template <class T>
void embedding_bwd_ref(T* dtable, const T* dout, const int32_t* ids, int64_t tokens, int64_t vocab, int64_t hidden);

// ---- RMSNorm over rows of width D ----------------------------------------------------------------------------
// rstd[n] = 1/sqrt(mean_d x[n,d]^2 + eps); out = x * rstd * weight. Backward uses the saved rstd:
// dx = rstd * (dout*w) - x * rstd^3 / D * sum_d(dout*w*x)  (overwrite);  dweight[d] += sum_n dout*x*rstd.
template <class T>
void rmsnorm_fwd_ref(T* out, T* rstd, const T* x, const T* weight, int64_t rows, int64_t dim, double eps);
template <class T>
void rmsnorm_bwd_ref(T* dx, T* dweight, const T* dout, const T* x, const T* weight, const T* rstd, int64_t rows,
                     int64_t dim);

// ---- rotary embedding, NeoX half-split layout over x[tokens, heads, head_dim] ------------------------------
// angle = float(positions[t]) * inv_freq[i] (float product), cos/sin in double. out/dx may alias x/dout.
template <class T>
void rope_fwd_ref(T* out, const T* x, const int32_t* positions, const float* inv_freq, int64_t tokens,
                  int64_t heads, int64_t head_dim);
template <class T>
void rope_bwd_ref(T* dx, const T* dout, const int32_t* positions, const float* inv_freq, int64_t tokens,
                  int64_t heads, int64_t head_dim);

// ---- causal GQA attention over packed sequences ----------------------------------------------------------------
// q/out[tokens,nq,hd], k/v[tokens,nkv,hd], lse[tokens,nq], cu_seqlens[num_seqs+1] with cu_seqlens[0] = 0 and
// cu_seqlens[num_seqs] = tokens, non-decreasing (validated by the caller).
struct AttentionDims {
  int64_t tokens = 0;
  int64_t nq = 0;
  int64_t nkv = 0;
  int64_t head_dim = 0;
  int64_t num_seqs = 0;
  double scale = 0.0;
};
template <class T>
void attention_fwd_ref(T* out, T* lse, const T* q, const T* k, const T* v, const int32_t* cu_seqlens,
                       const AttentionDims& d);
// dq, dk, dv overwrite; uses the saved out and lse (D_i = dout_i . out_i).
template <class T>
void attention_bwd_ref(T* dq, T* dk, T* dv, const T* dout, const T* q, const T* k, const T* v, const T* out,
                       const T* lse, const int32_t* cu_seqlens, const AttentionDims& d);

// ---- SwiGLU: gate_up[tokens, 2I] = [gate | up]; out[tokens, I] = silu(gate) * up ---------------------------
template <class T>
void swiglu_fwd_ref(T* out, const T* gate_up, int64_t tokens, int64_t inter);
template <class T>
void swiglu_bwd_ref(T* dgate_up, const T* dout, const T* gate_up, int64_t tokens, int64_t inter);

// ---- elementwise (out may alias the inputs) ----------------------------------------------------------------
template <class T>
void add_ref(T* out, const T* a, const T* b, int64_t n);
template <class T>
void scale_ref(T* out, const T* x, double s, int64_t n);
template <class T>
void fill_ref(T* out, double value, int64_t n);

// ---- fused log-prob head -------------------------------------------------------------------------------------
// z[t,v] = (hidden[t,:] . weight[v,:]) * inv_temperature in double; lse[t] = logsumexp_v z[t,v];
// logprob[t] = z[t,targets[t]] - lse[t]; entropy[t] = lse[t] - sum_v softmax(z)_v z_v (entropy may be null).
// Rows with targets[t] < 0 get logprob = entropy = 0 (lse is still written). Throws rlcu::Error for a target >= V.
// The vocabulary is processed in blocks, so no [tokens, V] buffer is held.
struct LogprobDims {
  int64_t tokens = 0;
  int64_t hidden = 0;
  int64_t vocab = 0;
  double inv_temperature = 1.0;
};
// probs [T,V] / stats [T, ops::logprob_prob_stats_cols(V)] (both null or both set): the saved softmax of
// include/rlcu/ops.h (LogprobParams::probs / prob_stats), written by the forward and read by the backward.
template <class T>
void logprob_fwd_ref(T* logprob, T* entropy, T* lse, const T* hidden, const T* weight, const int32_t* targets,
                     const LogprobDims& d, T* probs = nullptr, T* stats = nullptr);
// dz = dlogprob*(onehot - p) - dentropy*p*(z - E_p[z]), times inv_temperature; dhidden = dz @ weight (overwrite);
// dweight += dz^T @ hidden (accumulate). dentropy may be null (zero). Rows with targets < 0 contribute nothing.
template <class T>
void logprob_bwd_ref(T* dhidden, T* dweight, const T* dlogprob, const T* dentropy, const T* hidden, const T* weight,
                     const int32_t* targets, const T* lse, const LogprobDims& d, const T* probs = nullptr,
                     const T* stats = nullptr);

// ---- optimizer -------------------------------------------------------------------------------------------------
// out[0] = sum x^2, accumulated in double in index order.
template <class T>
void sum_squares_ref(T* out, const T* x, int64_t n);
// AdamW with decoupled weight decay and bias correction, computed in double per element (see ops.h).
// weights_bf16 / weights_f32, when not null, receive the updated master (bf16 rounded to nearest even).
template <class T>
void adamw_update_ref(T* master, T* m, T* v, uint16_t* weights_bf16, float* weights_f32, const T* grad, int64_t n,
                      const ops::AdamWParams& p);

}  // namespace rlcu::cpu::ref

// ---- argument checks shared by the Tensor-level CPU ops --------------------------------------------------------
// Broken op arguments are caller bugs, reported through RLCU_CHECK with the op, the argument and its shape.
namespace rlcu::cpu::check {

// `t` must be a non-empty CPU tensor of dtype `dt`; `ndim` < 0 accepts any rank.
inline void tensor(const char* op, const char* name, const Tensor& t, DType dt, int ndim = -1) {
  RLCU_CHECK(!t.empty(), "{}: {} is empty", op, name);
  RLCU_CHECK(t.device == Device::CPU, "{}: {} is on {}, expected cpu", op, name, device_name(t.device));
  RLCU_CHECK(t.dtype == dt, "{}: {} is {}, expected {}", op, name, dtype_name(t.dtype), dtype_name(dt));
  RLCU_CHECK(ndim < 0 || t.ndim == ndim, "{}: {} has shape {}, expected {} dims", op, name, t.shape_str(), ndim);
}

// `t` must have exactly the shape `dims`.
inline void shape(const char* op, const char* name, const Tensor& t, std::initializer_list<int64_t> dims) {
  bool same = t.ndim == static_cast<int>(dims.size());
  int i = 0;
  for (int64_t d : dims) same = same && t.shape[i++] == d;
  if (!same) {
    std::string want = "[";
    i = 0;
    for (int64_t d : dims) want += (i++ ? ", " : "") + std::to_string(d);
    RLCU_CHECK(same, "{}: {} has shape {}, expected {}]", op, name, t.shape_str(), want);
  }
}

// `t` must hold exactly `n` elements (any shape).
inline void numel(const char* op, const char* name, const Tensor& t, int64_t n) {
  RLCU_CHECK(t.numel() == n, "{}: {} has shape {} ({} elements), expected {} elements", op, name, t.shape_str(),
             t.numel(), n);
}

}  // namespace rlcu::cpu::check
