// CPU twin of the fused Q/K/V preparation of generation (math and shapes in include/rlcu/ops.h, qkv_prepare).
// It runs the very reference routines of the separate CPU ops on the q, k and v column blocks, so the result is
// exactly (bit for bit) bias_add -> per-head rmsnorm_fwd -> rope_fwd -> kv_cache_write of those blocks:
//   q, k, v = the column blocks of qkv [T, qd + 2 kvd] (+ bias blocks, ref::bias_add_ref)
//   q, k    = ref::rmsnorm_fwd_ref over rows of hd with q_norm / k_norm (when given), then ref::rope_fwd_ref
//   q_out = q; k_out = k and v_out = v when given; k_cache / v_cache rows at slots[t] (slot < 0: skipped).
// F32 only. A slot at or past the pool size is an error, as in kv_cache_write. Without a cache (k_cache and v_cache
// both empty: the training forward) nkv comes from k_out, k_out and v_out are required and slots is ignored.
//
// qkv_prepare_bwd composes the reference routines of the separate backward ops the same way (exact, bit for bit):
//   g = ref::rope_bwd_ref of dq / dk; with QK-norm x = the q / k column blocks of qkv (+ bias, ref::bias_add_ref),
//   rstd from ref::rmsnorm_fwd_ref of x, dx = ref::rmsnorm_bwd_ref(g, x) (dq_norm / dk_norm += sum g x rstd in
//   double, as rmsnorm_bwd); else dx = g. dqkv = [dx of q | dx of k | dv] (overwrite).
#include <algorithm>
#include <vector>

#include "backends.h"
#include "reference.h"

namespace rlcu::cpu {

namespace {
// The QK-norm weights of both ops: both given ([hd] F32, eps >= 0) or both empty. Returns whether they are given.
bool check_qk_norm(const char* op, const Tensor& q_norm, const Tensor& k_norm, int64_t hd, float eps) {
  RLCU_CHECK(q_norm.empty() == k_norm.empty(), "{}: q_norm and k_norm must be both given or both empty", op);
  if (q_norm.empty()) return false;
  check::tensor(op, "q_norm", q_norm, DType::F32);
  check::tensor(op, "k_norm", k_norm, DType::F32);
  check::numel(op, "q_norm", q_norm, hd);
  check::numel(op, "k_norm", k_norm, hd);
  RLCU_CHECK(eps >= 0.0f, "{}: eps {} is negative", op, eps);
  return true;
}
}  // namespace

void qkv_prepare(const Tensor& q_out, const Tensor& k_out, const Tensor& v_out, const Tensor& k_cache,
                 const Tensor& v_cache, const Tensor& qkv, const Tensor& bias, const Tensor& q_norm,
                 const Tensor& k_norm, float eps, const Tensor& positions, const Tensor& inv_freq,
                 const Tensor& slots, Context&) {
  const char* op = "qkv_prepare";
  RLCU_CHECK(k_cache.empty() == v_cache.empty(), "{}: k_cache and v_cache must be both given or both empty", op);
  const bool cache = !k_cache.empty();
  if (cache) {
    check::tensor(op, "k_cache", k_cache, DType::F32, 3);
    check::tensor(op, "v_cache", v_cache, DType::F32, 3);
    check::shape(op, "v_cache", v_cache, {k_cache.size(0), k_cache.size(1), k_cache.size(2)});
  } else {
    RLCU_CHECK(!k_out.empty() && !v_out.empty(), "{}: without a KV cache k_out and v_out are required", op);
    check::tensor(op, "k_out", k_out, DType::F32, 3);
  }
  RLCU_CHECK(q_out.device == Device::CPU && q_out.dtype == DType::F32 && q_out.ndim == 3,
             "{}: q_out must be an f32 cpu tensor [T, nq, hd], got {} {} on {}", op, dtype_name(q_out.dtype),
             q_out.shape_str(), device_name(q_out.device));
  const int64_t T = q_out.size(0), nq = q_out.size(1), hd = q_out.size(2);
  const Tensor& kv_shape = cache ? k_cache : k_out;
  const int64_t num_slots = cache ? k_cache.size(0) : 0, nkv = kv_shape.size(1);
  RLCU_CHECK(kv_shape.size(2) == hd, "{}: {} and q_out {} disagree on the head dim", op, kv_shape.shape_str(),
             q_out.shape_str());
  RLCU_CHECK(hd % 2 == 0, "{}: head dim {} is odd; rotary embedding needs an even head dim", op, hd);
  const int64_t qd = nq * hd, kvd = nkv * hd, W = qd + 2 * kvd;
  RLCU_CHECK(qkv.device == Device::CPU && qkv.dtype == DType::F32 && qkv.ndim == 2 && qkv.size(0) == T &&
                 qkv.size(1) == W,
             "{}: qkv must be an f32 cpu tensor [{}, {}], got {} {}", op, T, W, dtype_name(qkv.dtype),
             qkv.shape_str());
  for (const auto& [name, t] : {std::pair<const char*, const Tensor*>{"k_out", &k_out}, {"v_out", &v_out}}) {
    if (t->empty()) continue;
    check::tensor(op, name, *t, DType::F32, 3);
    check::shape(op, name, *t, {T, nkv, hd});
  }
  if (!bias.empty()) {
    check::tensor(op, "bias", bias, DType::F32);
    check::numel(op, "bias", bias, W);
  }
  const bool norm = check_qk_norm(op, q_norm, k_norm, hd, eps);
  check::tensor(op, "inv_freq", inv_freq, DType::F32);
  check::numel(op, "inv_freq", inv_freq, hd / 2);
  if (T == 0) return;
  check::tensor(op, "positions", positions, DType::I32);
  check::numel(op, "positions", positions, T);
  const int32_t* sl = nullptr;
  if (cache) {
    check::tensor(op, "slots", slots, DType::I32);
    check::numel(op, "slots", slots, T);
    sl = slots.ptr<int32_t>();
    for (int64_t t = 0; t < T; ++t)
      RLCU_CHECK(sl[t] < num_slots, "{}: slot {} outside the pool of {} slots", op, sl[t], num_slots);
  }

  // The column blocks as contiguous [T, heads, hd] tensors: q straight into q_out, k and v into k_out / v_out when
  // given (else scratch).
  const float* src = qkv.ptr<float>();
  float* q = q_out.ptr<float>();
  std::vector<float> k_tmp, v_tmp;
  float* k = k_out.empty() ? (k_tmp.resize(static_cast<size_t>(T * kvd)), k_tmp.data()) : k_out.ptr<float>();
  float* v = v_out.empty() ? (v_tmp.resize(static_cast<size_t>(T * kvd)), v_tmp.data()) : v_out.ptr<float>();
  for (int64_t t = 0; t < T; ++t) {
    const float* r = src + t * W;
    std::copy_n(r, qd, q + t * qd);
    std::copy_n(r + qd, kvd, k + t * kvd);
    std::copy_n(r + qd + kvd, kvd, v + t * kvd);
  }
  if (!bias.empty()) {
    const float* b = bias.ptr<float>();
    ref::bias_add_ref<float>(q, b, T, qd);
    ref::bias_add_ref<float>(k, b + qd, T, kvd);
    ref::bias_add_ref<float>(v, b + qd + kvd, T, kvd);
  }
  if (norm) {
    std::vector<float> rstd(static_cast<size_t>(T * std::max(nq, nkv)));
    ref::rmsnorm_fwd_ref<float>(q, rstd.data(), q, q_norm.ptr<float>(), T * nq, hd, eps);
    ref::rmsnorm_fwd_ref<float>(k, rstd.data(), k, k_norm.ptr<float>(), T * nkv, hd, eps);
  }
  const int32_t* pos = positions.ptr<int32_t>();
  ref::rope_fwd_ref<float>(q, q, pos, inv_freq.ptr<float>(), T, nq, hd);
  ref::rope_fwd_ref<float>(k, k, pos, inv_freq.ptr<float>(), T, nkv, hd);
  if (!cache) return;
  float* kc = k_cache.ptr<float>();
  float* vc = v_cache.ptr<float>();
  for (int64_t t = 0; t < T; ++t) {
    if (sl[t] < 0) continue;
    std::copy_n(k + t * kvd, kvd, kc + sl[t] * kvd);
    std::copy_n(v + t * kvd, kvd, vc + sl[t] * kvd);
  }
}

void qkv_prepare_bwd(const Tensor& dqkv, const Tensor& dq_norm, const Tensor& dk_norm, const Tensor& dq,
                     const Tensor& dk, const Tensor& dv, const Tensor& qkv, const Tensor& bias, const Tensor& q_norm,
                     const Tensor& k_norm, float eps, const Tensor& positions, const Tensor& inv_freq, Context&) {
  const char* op = "qkv_prepare_bwd";
  check::tensor(op, "dq", dq, DType::F32, 3);
  check::tensor(op, "dk", dk, DType::F32, 3);
  const int64_t T = dq.size(0), nq = dq.size(1), hd = dq.size(2), nkv = dk.size(1);
  check::shape(op, "dk", dk, {T, nkv, hd});
  check::tensor(op, "dv", dv, DType::F32, 3);
  check::shape(op, "dv", dv, {T, nkv, hd});
  RLCU_CHECK(hd % 2 == 0, "{}: head dim {} is odd; rotary embedding needs an even head dim", op, hd);
  const int64_t qd = nq * hd, kvd = nkv * hd, W = qd + 2 * kvd;
  check::tensor(op, "dqkv", dqkv, DType::F32, 2);
  check::shape(op, "dqkv", dqkv, {T, W});
  const bool norm = check_qk_norm(op, q_norm, k_norm, hd, eps);
  if (norm) {
    check::tensor(op, "dq_norm", dq_norm, DType::F32);
    check::tensor(op, "dk_norm", dk_norm, DType::F32);
    check::numel(op, "dq_norm", dq_norm, hd);
    check::numel(op, "dk_norm", dk_norm, hd);
    check::tensor(op, "qkv", qkv, DType::F32, 2);
    check::shape(op, "qkv", qkv, {T, W});
    if (!bias.empty()) {
      check::tensor(op, "bias", bias, DType::F32);
      check::numel(op, "bias", bias, W);
    }
  } else {
    RLCU_CHECK(dq_norm.empty() && dk_norm.empty(), "{}: dq_norm / dk_norm given without QK-norm weights", op);
  }
  check::tensor(op, "inv_freq", inv_freq, DType::F32);
  check::numel(op, "inv_freq", inv_freq, hd / 2);
  if (T == 0) return;
  check::tensor(op, "positions", positions, DType::I32);
  check::numel(op, "positions", positions, T);

  const int32_t* pos = positions.ptr<int32_t>();
  std::vector<float> gq(static_cast<size_t>(T * qd)), gk(static_cast<size_t>(T * kvd));
  ref::rope_bwd_ref<float>(gq.data(), dq.ptr<float>(), pos, inv_freq.ptr<float>(), T, nq, hd);
  ref::rope_bwd_ref<float>(gk.data(), dk.ptr<float>(), pos, inv_freq.ptr<float>(), T, nkv, hd);
  std::vector<float> xq, xk;
  if (norm) {
    // The norm inputs as the forward stored them: the column blocks of qkv plus the bias, then rstd as rmsnorm_fwd.
    xq.resize(gq.size());
    xk.resize(gk.size());
    const float* src = qkv.ptr<float>();
    for (int64_t t = 0; t < T; ++t) {
      std::copy_n(src + t * W, qd, xq.data() + t * qd);
      std::copy_n(src + t * W + qd, kvd, xk.data() + t * kvd);
    }
    if (!bias.empty()) {
      ref::bias_add_ref<float>(xq.data(), bias.ptr<float>(), T, qd);
      ref::bias_add_ref<float>(xk.data(), bias.ptr<float>() + qd, T, kvd);
    }
    std::vector<float> rq(static_cast<size_t>(T * nq)), rk(static_cast<size_t>(T * nkv));
    std::vector<float> scratch(std::max(gq.size(), gk.size()));
    ref::rmsnorm_fwd_ref<float>(scratch.data(), rq.data(), xq.data(), q_norm.ptr<float>(), T * nq, hd, eps);
    ref::rmsnorm_fwd_ref<float>(scratch.data(), rk.data(), xk.data(), k_norm.ptr<float>(), T * nkv, hd, eps);
    ref::rmsnorm_bwd_ref<float>(scratch.data(), dq_norm.ptr<float>(), gq.data(), xq.data(), q_norm.ptr<float>(),
                                rq.data(), T * nq, hd);
    gq.assign(scratch.begin(), scratch.begin() + T * qd);
    ref::rmsnorm_bwd_ref<float>(scratch.data(), dk_norm.ptr<float>(), gk.data(), xk.data(), k_norm.ptr<float>(),
                                rk.data(), T * nkv, hd);
    gk.assign(scratch.begin(), scratch.begin() + T * kvd);
  }
  float* out = dqkv.ptr<float>();
  const float* dvp = dv.ptr<float>();
  for (int64_t t = 0; t < T; ++t) {
    std::copy_n(gq.data() + t * qd, qd, out + t * W);
    std::copy_n(gk.data() + t * kvd, kvd, out + t * W + qd);
    std::copy_n(dvp + t * kvd, kvd, out + t * W + qd + kvd);
  }
}

}  // namespace rlcu::cpu
