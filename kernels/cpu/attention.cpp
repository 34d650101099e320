// CPU causal attention over packed variable-length sequences with grouped-query heads.
//   q[T,nq,hd], k,v[T,nkv,hd], cu_seqlens[S+1] (I32): sequence s owns rows [cu_seqlens[s], cu_seqlens[s+1]).
//   Query head h reads kv head h / (nq/nkv). For token i of sequence s and j in [cu_seqlens[s], i]:
//     s_ij = scale * q_i . k_j,   lse_i = log sum_j exp(s_ij),   P_ij = exp(s_ij - lse_i),   out_i = sum_j P_ij v_j.
//   out[T,nq,hd]; lse[T,nq] saved for backward.
// Backward (all three gradients are activation gradients and OVERWRITE):
//   dP_ij = dout_i . v_j,  D_i = dout_i . out_i,  dS_ij = P_ij (dP_ij - D_i),
//   dq_i = scale sum_j dS_ij k_j,  dk_j = scale sum_i dS_ij q_i,  dv_j = sum_i P_ij dout_i
//   (dk, dv summed over the query heads of the group).
// Dot products and sums run in double; dk/dv accumulate in double buffers before the final store.
// Threads (rlcu/parallel.h): the forward takes fixed chunks of query tokens, the backward whole sequences (a
// sequence's dk/dv sums over its own queries, in the serial order), so results do not depend on the thread count.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "backends.h"
#include "rlcu/parallel.h"
#include "reference.h"

namespace rlcu::cpu {
namespace ref {

namespace {
template <class T>
double dot(const T* a, const T* b, int64_t n) {
  double s = 0.0;
  for (int64_t i = 0; i < n; ++i) s += static_cast<double>(a[i]) * static_cast<double>(b[i]);
  return s;
}
}  // namespace

template <class T>
void attention_fwd_ref(T* out, T* lse, const T* q, const T* k, const T* v, const int32_t* cu_seqlens,
                       const AttentionDims& d) {
  const int64_t nq = d.nq, nkv = d.nkv, hd = d.head_dim, group = nq / nkv;
  std::vector<int64_t> seq_begin(static_cast<size_t>(d.tokens));  // first token of each token's sequence
  for (int64_t s = 0; s < d.num_seqs; ++s)
    for (int64_t i = cu_seqlens[s]; i < cu_seqlens[s + 1]; ++i) seq_begin[i] = cu_seqlens[s];
  parallel_for(d.tokens, grain_for(nq * hd * 64), [&](int64_t i0, int64_t i1) {
    std::vector<double> score, acc(static_cast<size_t>(hd));
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t begin = seq_begin[i];
      score.resize(static_cast<size_t>(i + 1 - begin));
      for (int64_t h = 0; h < nq; ++h) {
        const int64_t g = h / group;
        const T* qi = q + (i * nq + h) * hd;
        double mx = -std::numeric_limits<double>::infinity();
        for (int64_t j = begin; j <= i; ++j) {
          score[j - begin] = d.scale * dot(qi, k + (j * nkv + g) * hd, hd);
          mx = std::max(mx, score[j - begin]);
        }
        double sum = 0.0;
        for (int64_t j = begin; j <= i; ++j) sum += std::exp(score[j - begin] - mx);
        const double l = mx + std::log(sum);
        std::fill(acc.begin(), acc.end(), 0.0);
        for (int64_t j = begin; j <= i; ++j) {
          const double p = std::exp(score[j - begin] - l);
          const T* vj = v + (j * nkv + g) * hd;
          for (int64_t e = 0; e < hd; ++e) acc[e] += p * static_cast<double>(vj[e]);
        }
        T* o = out + (i * nq + h) * hd;
        for (int64_t e = 0; e < hd; ++e) o[e] = static_cast<T>(acc[e]);
        lse[i * nq + h] = static_cast<T>(l);
      }
    }
  });
}

template <class T>
void attention_bwd_ref(T* dq, T* dk, T* dv, const T* dout, const T* q, const T* k, const T* v, const T* out,
                       const T* lse, const int32_t* cu_seqlens, const AttentionDims& d) {
  const int64_t nq = d.nq, nkv = d.nkv, hd = d.head_dim, group = nq / nkv;
  const size_t kv_elems = static_cast<size_t>(d.tokens * nkv * hd);
  std::vector<double> dk_acc(kv_elems, 0.0), dv_acc(kv_elems, 0.0);
  parallel_for(d.num_seqs, 1, [&](int64_t s0, int64_t s1) {
  std::vector<double> dq_acc(static_cast<size_t>(hd));
  for (int64_t s = s0; s < s1; ++s) {
    const int64_t begin = cu_seqlens[s], end = cu_seqlens[s + 1];
    for (int64_t i = begin; i < end; ++i) {
      for (int64_t h = 0; h < nq; ++h) {
        const int64_t g = h / group;
        const T* qi = q + (i * nq + h) * hd;
        const T* doi = dout + (i * nq + h) * hd;
        const double l = static_cast<double>(lse[i * nq + h]);
        const double D = dot(doi, out + (i * nq + h) * hd, hd);
        std::fill(dq_acc.begin(), dq_acc.end(), 0.0);
        for (int64_t j = begin; j <= i; ++j) {
          const T* kj = k + (j * nkv + g) * hd;
          const T* vj = v + (j * nkv + g) * hd;
          const double p = std::exp(d.scale * dot(qi, kj, hd) - l);
          const double ds = p * (dot(doi, vj, hd) - D);
          double* dkj = dk_acc.data() + (j * nkv + g) * hd;
          double* dvj = dv_acc.data() + (j * nkv + g) * hd;
          for (int64_t e = 0; e < hd; ++e) {
            dq_acc[e] += d.scale * ds * static_cast<double>(kj[e]);
            dkj[e] += d.scale * ds * static_cast<double>(qi[e]);
            dvj[e] += p * static_cast<double>(doi[e]);
          }
        }
        T* dqi = dq + (i * nq + h) * hd;
        for (int64_t e = 0; e < hd; ++e) dqi[e] = static_cast<T>(dq_acc[e]);
      }
    }
  }
  });
  parallel_for(static_cast<int64_t>(kv_elems), grain_for(1), [&](int64_t e0, int64_t e1) {
    for (int64_t e = e0; e < e1; ++e) {
      dk[e] = static_cast<T>(dk_acc[e]);
      dv[e] = static_cast<T>(dv_acc[e]);
    }
  });
}

#define RLCU_INSTANTIATE(T)                                                                                       \
  template void attention_fwd_ref<T>(T*, T*, const T*, const T*, const T*, const int32_t*, const AttentionDims&); \
  template void attention_bwd_ref<T>(T*, T*, T*, const T*, const T*, const T*, const T*, const T*, const T*,     \
                                     const int32_t*, const AttentionDims&);
RLCU_INSTANTIATE(float)
RLCU_INSTANTIATE(double)
#undef RLCU_INSTANTIATE

}  // namespace ref

namespace {
// Validates shapes and the packing, returns the dims for the reference kernels.
ref::AttentionDims attention_dims(const char* op, const Tensor& q, const Tensor& k, const Tensor& v,
                                  const Tensor& cu_seqlens, const ops::AttentionParams& p) {
  check::tensor(op, "q", q, DType::F32, 3);
  check::tensor(op, "k", k, DType::F32, 3);
  check::tensor(op, "v", v, DType::F32, 3);
  check::tensor(op, "cu_seqlens", cu_seqlens, DType::I32, 1);
  ref::AttentionDims d;
  d.tokens = q.shape[0];
  d.nq = q.shape[1];
  d.head_dim = q.shape[2];
  d.nkv = k.shape[1];
  d.num_seqs = p.num_seqs;
  d.scale = p.scale;
  check::shape(op, "k", k, {d.tokens, d.nkv, d.head_dim});
  check::shape(op, "v", v, {d.tokens, d.nkv, d.head_dim});
  RLCU_CHECK(d.nkv > 0 && d.nq % d.nkv == 0, "{}: {} query heads (q {}) are not a multiple of {} kv heads (k {})", op,
             d.nq, q.shape_str(), d.nkv, k.shape_str());
  RLCU_CHECK(p.scale > 0.0f && std::isfinite(p.scale), "{}: scale {} must be positive (usually 1/sqrt(hd))", op,
             p.scale);
  RLCU_CHECK(p.num_seqs >= 1, "{}: num_seqs is {}", op, p.num_seqs);
  check::shape(op, "cu_seqlens", cu_seqlens, {static_cast<int64_t>(p.num_seqs) + 1});
  const int32_t* cu = cu_seqlens.ptr<int32_t>();
  RLCU_CHECK(cu[0] == 0 && cu[p.num_seqs] == d.tokens, "{}: cu_seqlens must run from 0 to {} tokens, got {} .. {}",
             op, d.tokens, cu[0], cu[p.num_seqs]);
  for (int s = 0; s < p.num_seqs; ++s) {
    RLCU_CHECK(cu[s + 1] >= cu[s], "{}: cu_seqlens decreases at sequence {} ({} -> {})", op, s, cu[s], cu[s + 1]);
    RLCU_CHECK(cu[s + 1] - cu[s] <= p.max_seqlen, "{}: sequence {} has {} tokens, more than max_seqlen {}", op, s,
               cu[s + 1] - cu[s], p.max_seqlen);
  }
  return d;
}
}  // namespace

void attention_fwd(const Tensor& out, const Tensor& lse, const Tensor& q, const Tensor& k, const Tensor& v,
                   const Tensor& cu_seqlens, const ops::AttentionParams& p, Context& ctx) {
  const ref::AttentionDims d = attention_dims("attention_fwd", q, k, v, cu_seqlens, p);
  check::tensor("attention_fwd", "out", out, DType::F32, 3);
  check::tensor("attention_fwd", "lse", lse, DType::F32);
  check::shape("attention_fwd", "out", out, {d.tokens, d.nq, d.head_dim});
  check::numel("attention_fwd", "lse", lse, d.tokens * d.nq);
  ref::attention_fwd_ref<float>(out.ptr<float>(), lse.ptr<float>(), q.ptr<float>(), k.ptr<float>(), v.ptr<float>(),
                                cu_seqlens.ptr<int32_t>(), d);
}

void attention_bwd(const Tensor& dq, const Tensor& dk, const Tensor& dv, const Tensor& dout, const Tensor& q,
                   const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse, const Tensor& cu_seqlens,
                   const ops::AttentionParams& p, Context& ctx) {
  const char* op = "attention_bwd";
  const ref::AttentionDims d = attention_dims(op, q, k, v, cu_seqlens, p);
  check::tensor(op, "dq", dq, DType::F32, 3);
  check::tensor(op, "dk", dk, DType::F32, 3);
  check::tensor(op, "dv", dv, DType::F32, 3);
  check::tensor(op, "dout", dout, DType::F32, 3);
  check::tensor(op, "out", out, DType::F32, 3);
  check::tensor(op, "lse", lse, DType::F32);
  check::shape(op, "dq", dq, {d.tokens, d.nq, d.head_dim});
  check::shape(op, "dout", dout, {d.tokens, d.nq, d.head_dim});
  check::shape(op, "out", out, {d.tokens, d.nq, d.head_dim});
  check::shape(op, "dk", dk, {d.tokens, d.nkv, d.head_dim});
  check::shape(op, "dv", dv, {d.tokens, d.nkv, d.head_dim});
  check::numel(op, "lse", lse, d.tokens * d.nq);
  ref::attention_bwd_ref<float>(dq.ptr<float>(), dk.ptr<float>(), dv.ptr<float>(), dout.ptr<float>(), q.ptr<float>(),
                                k.ptr<float>(), v.ptr<float>(), out.ptr<float>(), lse.ptr<float>(),
                                cu_seqlens.ptr<int32_t>(), d);
}

}  // namespace rlcu::cpu
