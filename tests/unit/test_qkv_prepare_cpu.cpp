// ops::qkv_prepare on the CPU (kernels/cpu/qkv_prepare.cpp) against the composition of the separate CPU ops it
// replaces in the generation engine: bias_add on the q, k, v column blocks -> per-head rmsnorm_fwd of q and k ->
// rope_fwd of q and k -> kv_cache_write. Exact (F32 bit) equality of q_out, both whole caches (unwritten slots keep
// their marks, negative slots are skipped) and the dense k_out / v_out copies, over: with/without bias, with/without
// QK-norm, with/without k_out/v_out, T in {1, 3, 37}, (nq, nkv) in {(16,8), (14,2), (4,4)}, hd in {64, 128, 32}.
// Plus the argument checks.
// The "no KV cache" mode (k_cache, v_cache empty) gives q_out / k_out / v_out bitwise equal to the cache mode's.
// qkv_prepare_bwd against the composed CPU backward ops (rope_bwd -> [bias_add, rmsnorm_fwd for rstd, rmsnorm_bwd]
// -> copies into [dq | dk | dv]): exact equality of dqkv and of the accumulated dq_norm / dk_norm (which start
// non-zero), T in {1, 3, 37}, hd in {64, 128, 48}, with/without bias and QK-norm; outputs must be finite and dqkv
// starts as NaN so every element is written.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "rlcu/ops.h"

using namespace rlcu;

namespace {

Context& cpu() { return Context::cpu(); }

Tensor f32(std::vector<float>& v, std::initializer_list<int64_t> dims) {
  return Tensor(v.data(), DType::F32, Device::CPU, dims);
}
Tensor i32(std::vector<int32_t>& v, std::initializer_list<int64_t> dims) {
  return Tensor(v.data(), DType::I32, Device::CPU, dims);
}

std::vector<float> random_vec(size_t n, uint64_t seed, float lo = -1.0f, float hi = 1.0f) {
  std::mt19937_64 g(seed);
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = d(g);
  return v;
}

std::vector<float> inv_freq_for(int64_t hd, double theta) {
  std::vector<float> f(static_cast<size_t>(hd / 2));
  for (int64_t i = 0; i < hd / 2; ++i)
    f[i] = static_cast<float>(1.0 / std::pow(theta, static_cast<double>(2 * i) / static_cast<double>(hd)));
  return f;
}

// Bitwise equality (NaN never expected here).
void expect_same(const std::vector<float>& got, const std::vector<float>& want, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  size_t bad = 0, first = 0;
  for (size_t i = 0; i < got.size(); ++i)
    if (std::memcmp(&got[i], &want[i], sizeof(float)) != 0 && bad++ == 0) first = i;
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << got.size() << " differ; first at " << first << ": got "
                     << got[first] << ", want " << want[first];
}

}  // namespace

TEST(QkvPrepareCpu, MatchesComposedOpsExactly) {
  struct Heads {
    int64_t nq, nkv;
  };
  const Heads heads[] = {{16, 8}, {14, 2}, {4, 4}};
  uint64_t seed = 1000;
  for (const Heads& hh : heads)
    for (int64_t hd : {64, 128, 32})
      for (int64_t T : {1, 3, 37})
        for (bool with_bias : {false, true})
          for (bool with_norm : {false, true})
            for (bool dense : {false, true}) {
              ++seed;
              const int64_t nq = hh.nq, nkv = hh.nkv, qd = nq * hd, kvd = nkv * hd, W = qd + 2 * kvd;
              const int64_t S = 2 * T + 5;
              const float eps = 1e-6f;
              const std::string what = fmt::format("nq={} nkv={} hd={} T={} bias={} norm={} dense={} seed={}", nq,
                                                   nkv, hd, T, with_bias, with_norm, dense, seed);
              std::mt19937_64 rng(seed);
              std::vector<float> qkv = random_vec(T * W, seed + 1);
              std::vector<float> bias = random_vec(W, seed + 2, -0.5f, 0.5f);
              std::vector<float> qn = random_vec(hd, seed + 3, 0.5f, 1.5f), kn = random_vec(hd, seed + 4, 0.5f, 1.5f);
              std::vector<float> inv_freq = inv_freq_for(hd, 1e6);
              std::vector<int32_t> pos(static_cast<size_t>(T)), perm(static_cast<size_t>(S));
              for (auto& p : pos) p = static_cast<int32_t>(rng() % 40001);
              std::iota(perm.begin(), perm.end(), 0);
              std::shuffle(perm.begin(), perm.end(), rng);
              std::vector<int32_t> slots(perm.begin(), perm.begin() + T);
              for (auto& s : slots)
                if (rng() % 4 == 0) s = -1 - static_cast<int32_t>(rng() % 3);
              std::vector<float> kc0 = random_vec(S * kvd, seed + 5, 10.0f, 20.0f);
              std::vector<float> vc0 = random_vec(S * kvd, seed + 6, 10.0f, 20.0f);

              // Reference: the separate ops on contiguous copies of the column blocks.
              std::vector<float> qb(static_cast<size_t>(T * qd)), kb(static_cast<size_t>(T * kvd)),
                  vb(static_cast<size_t>(T * kvd));
              for (int64_t t = 0; t < T; ++t) {
                std::copy_n(qkv.begin() + t * W, qd, qb.begin() + t * qd);
                std::copy_n(qkv.begin() + t * W + qd, kvd, kb.begin() + t * kvd);
                std::copy_n(qkv.begin() + t * W + qd + kvd, kvd, vb.begin() + t * kvd);
              }
              if (with_bias) {
                std::vector<float> bq(bias.begin(), bias.begin() + qd), bk(bias.begin() + qd, bias.begin() + qd + kvd),
                    bv(bias.begin() + qd + kvd, bias.end());
                ops::bias_add(f32(qb, {T, qd}), f32(bq, {qd}), cpu());
                ops::bias_add(f32(kb, {T, kvd}), f32(bk, {kvd}), cpu());
                ops::bias_add(f32(vb, {T, kvd}), f32(bv, {kvd}), cpu());
              }
              if (with_norm) {
                std::vector<float> qo(qb.size()), ko(kb.size()), rq(static_cast<size_t>(T * nq)),
                    rk(static_cast<size_t>(T * nkv));
                ops::rmsnorm_fwd(f32(qo, {T * nq, hd}), f32(rq, {T * nq}), f32(qb, {T * nq, hd}), f32(qn, {hd}), eps,
                                 cpu());
                ops::rmsnorm_fwd(f32(ko, {T * nkv, hd}), f32(rk, {T * nkv}), f32(kb, {T * nkv, hd}), f32(kn, {hd}),
                                 eps, cpu());
                qb = qo;
                kb = ko;
              }
              ops::rope_fwd(f32(qb, {T, nq, hd}), f32(qb, {T, nq, hd}), i32(pos, {T}), f32(inv_freq, {hd / 2}),
                            cpu());
              ops::rope_fwd(f32(kb, {T, nkv, hd}), f32(kb, {T, nkv, hd}), i32(pos, {T}), f32(inv_freq, {hd / 2}),
                            cpu());
              std::vector<float> kc_ref = kc0, vc_ref = vc0;
              ops::kv_cache_write(f32(kc_ref, {S, nkv, hd}), f32(vc_ref, {S, nkv, hd}), f32(kb, {T, nkv, hd}),
                                  f32(vb, {T, nkv, hd}), i32(slots, {T}), cpu());

              // Fused.
              std::vector<float> q_out(qb.size(), -7.0f), k_out(kb.size(), -7.0f), v_out(vb.size(), -7.0f);
              std::vector<float> kc = kc0, vc = vc0;
              ops::qkv_prepare(f32(q_out, {T, nq, hd}), dense ? f32(k_out, {T, nkv, hd}) : Tensor(),
                               dense ? f32(v_out, {T, nkv, hd}) : Tensor(), f32(kc, {S, nkv, hd}),
                               f32(vc, {S, nkv, hd}), f32(qkv, {T, W}), with_bias ? f32(bias, {W}) : Tensor(),
                               with_norm ? f32(qn, {hd}) : Tensor(), with_norm ? f32(kn, {hd}) : Tensor(), eps,
                               i32(pos, {T}), f32(inv_freq, {hd / 2}), i32(slots, {T}), cpu());
              expect_same(q_out, qb, what + " q_out");
              expect_same(kc, kc_ref, what + " k_cache");
              expect_same(vc, vc_ref, what + " v_cache");
              if (dense) {
                expect_same(k_out, kb, what + " k_out");
                expect_same(v_out, vb, what + " v_out");
              } else {
                EXPECT_TRUE(std::all_of(k_out.begin(), k_out.end(), [](float x) { return x == -7.0f; })) << what;
                EXPECT_TRUE(std::all_of(v_out.begin(), v_out.end(), [](float x) { return x == -7.0f; })) << what;
              }
              // Slots nobody wrote keep their values.
              std::vector<bool> written(static_cast<size_t>(S), false);
              for (int32_t s : slots)
                if (s >= 0) written[static_cast<size_t>(s)] = true;
              for (int64_t s = 0; s < S; ++s) {
                if (written[static_cast<size_t>(s)]) continue;
                ASSERT_TRUE(std::equal(kc.begin() + s * kvd, kc.begin() + (s + 1) * kvd, kc0.begin() + s * kvd) &&
                            std::equal(vc.begin() + s * kvd, vc.begin() + (s + 1) * kvd, vc0.begin() + s * kvd))
                    << what << " slot " << s;
              }
            }
}

TEST(QkvPrepareCpu, RejectsBadArguments) {
  const int64_t T = 2, nq = 4, nkv = 2, hd = 8, W = (nq + 2 * nkv) * hd, S = 6;
  std::vector<float> q(T * nq * hd), kc(S * nkv * hd), vc(S * nkv * hd), qkv(T * W), bias(W), qn(hd), kn(hd),
      freq(hd / 2), small(3);
  std::vector<int32_t> pos = {0, 1}, slots = {0, 1}, far = {0, 6};
  auto call = [&](const Tensor& qkv_t, const Tensor& b, const Tensor& qn_t, const Tensor& kn_t, const Tensor& f,
                  std::vector<int32_t>& sl) {
    ops::qkv_prepare(f32(q, {T, nq, hd}), Tensor(), Tensor(), f32(kc, {S, nkv, hd}), f32(vc, {S, nkv, hd}), qkv_t, b,
                     qn_t, kn_t, 1e-6f, i32(pos, {T}), f, i32(sl, {T}), cpu());
  };
  EXPECT_NO_THROW(call(f32(qkv, {T, W}), f32(bias, {W}), f32(qn, {hd}), f32(kn, {hd}), f32(freq, {hd / 2}), slots));
  EXPECT_ANY_THROW(call(f32(qkv, {T, W - 1}), Tensor(), Tensor(), Tensor(), f32(freq, {hd / 2}), slots));
  EXPECT_ANY_THROW(call(f32(qkv, {T, W}), f32(small, {3}), Tensor(), Tensor(), f32(freq, {hd / 2}), slots));
  EXPECT_ANY_THROW(call(f32(qkv, {T, W}), Tensor(), f32(qn, {hd}), Tensor(), f32(freq, {hd / 2}), slots));
  EXPECT_ANY_THROW(call(f32(qkv, {T, W}), Tensor(), f32(small, {3}), f32(small, {3}), f32(freq, {hd / 2}), slots));
  EXPECT_ANY_THROW(call(f32(qkv, {T, W}), Tensor(), Tensor(), Tensor(), f32(small, {3}), slots));
  EXPECT_ANY_THROW(call(f32(qkv, {T, W}), Tensor(), Tensor(), Tensor(), f32(freq, {hd / 2}), far));
}

namespace {

void expect_same_finite(const std::vector<float>& got, const std::vector<float>& want, const std::string& what) {
  expect_same(got, want, what);
  EXPECT_TRUE(std::all_of(got.begin(), got.end(), [](float x) { return std::isfinite(x); })) << what << ": not finite";
}

}  // namespace

TEST(QkvPrepareCpu, NoCacheModeEqualsCacheMode) {
  uint64_t seed = 5000;
  for (int64_t hd : {64, 48})
    for (int64_t T : {1, 5})
      for (bool with_bias : {false, true})
        for (bool with_norm : {false, true}) {
          ++seed;
          const int64_t nq = 6, nkv = 2, qd = nq * hd, kvd = nkv * hd, W = qd + 2 * kvd, S = T + 3;
          const std::string what = fmt::format("hd={} T={} bias={} norm={}", hd, T, with_bias, with_norm);
          std::vector<float> qkv = random_vec(T * W, seed + 1), bias = random_vec(W, seed + 2, -0.5f, 0.5f);
          std::vector<float> qn = random_vec(hd, seed + 3, 0.5f, 1.5f), kn = random_vec(hd, seed + 4, 0.5f, 1.5f);
          std::vector<float> inv_freq = inv_freq_for(hd, 1e4);
          std::vector<int32_t> pos(static_cast<size_t>(T)), slots(static_cast<size_t>(T));
          for (int64_t t = 0; t < T; ++t) pos[t] = static_cast<int32_t>(7 * t + 3), slots[t] = static_cast<int32_t>(t);
          std::vector<float> kc(S * kvd), vc(S * kvd);
          std::vector<float> q1(T * qd), k1(T * kvd), v1(T * kvd), q2(T * qd, NAN), k2(T * kvd, NAN), v2(T * kvd, NAN);
          auto call = [&](std::vector<float>& q, std::vector<float>& k, std::vector<float>& v, bool cache) {
            ops::qkv_prepare(f32(q, {T, nq, hd}), f32(k, {T, nkv, hd}), f32(v, {T, nkv, hd}),
                             cache ? f32(kc, {S, nkv, hd}) : Tensor(), cache ? f32(vc, {S, nkv, hd}) : Tensor(),
                             f32(qkv, {T, W}), with_bias ? f32(bias, {W}) : Tensor(),
                             with_norm ? f32(qn, {hd}) : Tensor(), with_norm ? f32(kn, {hd}) : Tensor(), 1e-6f,
                             i32(pos, {T}), f32(inv_freq, {hd / 2}), cache ? i32(slots, {T}) : Tensor(), cpu());
          };
          call(q1, k1, v1, true);
          call(q2, k2, v2, false);
          expect_same_finite(q2, q1, what + " q_out");
          expect_same_finite(k2, k1, what + " k_out");
          expect_same_finite(v2, v1, what + " v_out");
        }
  // Without a cache the dense outputs are required; a cache needs both halves.
  const int64_t T = 2, nq = 2, nkv = 1, hd = 8, W = (nq + 2 * nkv) * hd;
  std::vector<float> q(T * nq * hd), k(T * nkv * hd), v(T * nkv * hd), qkv(T * W), freq(hd / 2), kc(4 * nkv * hd);
  std::vector<int32_t> pos = {0, 1}, slots = {0, 1};
  EXPECT_ANY_THROW(ops::qkv_prepare(f32(q, {T, nq, hd}), Tensor(), f32(v, {T, nkv, hd}), Tensor(), Tensor(),
                                    f32(qkv, {T, W}), Tensor(), Tensor(), Tensor(), 1e-6f, i32(pos, {T}),
                                    f32(freq, {hd / 2}), Tensor(), cpu()));
  EXPECT_ANY_THROW(ops::qkv_prepare(f32(q, {T, nq, hd}), f32(k, {T, nkv, hd}), f32(v, {T, nkv, hd}),
                                    f32(kc, {4, nkv, hd}), Tensor(), f32(qkv, {T, W}), Tensor(), Tensor(), Tensor(),
                                    1e-6f, i32(pos, {T}), f32(freq, {hd / 2}), i32(slots, {T}), cpu()));
}

TEST(QkvPrepareCpu, BackwardMatchesComposedOpsExactly) {
  struct Heads {
    int64_t nq, nkv;
  };
  const Heads heads[] = {{16, 8}, {14, 2}, {4, 4}};
  uint64_t seed = 9000;
  for (const Heads& hh : heads)
    for (int64_t hd : {64, 128, 48})
      for (int64_t T : {1, 3, 37})
        for (bool with_bias : {false, true})
          for (bool with_norm : {false, true}) {
            ++seed;
            const int64_t nq = hh.nq, nkv = hh.nkv, qd = nq * hd, kvd = nkv * hd, W = qd + 2 * kvd;
            const float eps = 1e-6f;
            const std::string what = fmt::format("nq={} nkv={} hd={} T={} bias={} norm={} seed={}", nq, nkv, hd, T,
                                                 with_bias, with_norm, seed);
            std::mt19937_64 rng(seed);
            std::vector<float> qkv = random_vec(T * W, seed + 1), bias = random_vec(W, seed + 2, -0.5f, 0.5f);
            std::vector<float> qn = random_vec(hd, seed + 3, 0.5f, 1.5f), kn = random_vec(hd, seed + 4, 0.5f, 1.5f);
            std::vector<float> dq = random_vec(T * qd, seed + 5), dk = random_vec(T * kvd, seed + 6),
                               dv = random_vec(T * kvd, seed + 7);
            const std::vector<float> dqn0 = random_vec(hd, seed + 8), dkn0 = random_vec(hd, seed + 9);
            std::vector<float> inv_freq = inv_freq_for(hd, 1e6);
            std::vector<int32_t> pos(static_cast<size_t>(T));
            for (auto& p : pos) p = static_cast<int32_t>(rng() % 40001);

            // Reference: the separate backward ops on contiguous blocks.
            std::vector<float> gq(dq.size()), gk(dk.size());
            ops::rope_bwd(f32(gq, {T, nq, hd}), f32(dq, {T, nq, hd}), i32(pos, {T}), f32(inv_freq, {hd / 2}), cpu());
            ops::rope_bwd(f32(gk, {T, nkv, hd}), f32(dk, {T, nkv, hd}), i32(pos, {T}), f32(inv_freq, {hd / 2}),
                          cpu());
            std::vector<float> dqn_ref = dqn0, dkn_ref = dkn0;
            if (with_norm) {
              std::vector<float> xq(static_cast<size_t>(T * qd)), xk(static_cast<size_t>(T * kvd));
              for (int64_t t = 0; t < T; ++t) {
                std::copy_n(qkv.begin() + t * W, qd, xq.begin() + t * qd);
                std::copy_n(qkv.begin() + t * W + qd, kvd, xk.begin() + t * kvd);
              }
              if (with_bias) {
                std::vector<float> bq(bias.begin(), bias.begin() + qd), bk(bias.begin() + qd, bias.begin() + qd + kvd);
                ops::bias_add(f32(xq, {T, qd}), f32(bq, {qd}), cpu());
                ops::bias_add(f32(xk, {T, kvd}), f32(bk, {kvd}), cpu());
              }
              std::vector<float> yq(xq.size()), yk(xk.size()), rq(static_cast<size_t>(T * nq)),
                  rk(static_cast<size_t>(T * nkv));
              ops::rmsnorm_fwd(f32(yq, {T * nq, hd}), f32(rq, {T * nq}), f32(xq, {T * nq, hd}), f32(qn, {hd}), eps,
                               cpu());
              ops::rmsnorm_fwd(f32(yk, {T * nkv, hd}), f32(rk, {T * nkv}), f32(xk, {T * nkv, hd}), f32(kn, {hd}),
                               eps, cpu());
              std::vector<float> dxq(gq.size()), dxk(gk.size());
              ops::rmsnorm_bwd(f32(dxq, {T * nq, hd}), f32(dqn_ref, {hd}), f32(gq, {T * nq, hd}),
                               f32(xq, {T * nq, hd}), f32(qn, {hd}), f32(rq, {T * nq}), cpu());
              ops::rmsnorm_bwd(f32(dxk, {T * nkv, hd}), f32(dkn_ref, {hd}), f32(gk, {T * nkv, hd}),
                               f32(xk, {T * nkv, hd}), f32(kn, {hd}), f32(rk, {T * nkv}), cpu());
              gq = dxq;
              gk = dxk;
            }
            std::vector<float> want(static_cast<size_t>(T * W));
            for (int64_t t = 0; t < T; ++t) {
              std::copy_n(gq.begin() + t * qd, qd, want.begin() + t * W);
              std::copy_n(gk.begin() + t * kvd, kvd, want.begin() + t * W + qd);
              std::copy_n(dv.begin() + t * kvd, kvd, want.begin() + t * W + qd + kvd);
            }

            // Fused; qkv is passed even without QK-norm (unused then).
            std::vector<float> got(want.size(), NAN), dqn = dqn0, dkn = dkn0;
            ops::qkv_prepare_bwd(f32(got, {T, W}), with_norm ? f32(dqn, {hd}) : Tensor(),
                                 with_norm ? f32(dkn, {hd}) : Tensor(), f32(dq, {T, nq, hd}), f32(dk, {T, nkv, hd}),
                                 f32(dv, {T, nkv, hd}), f32(qkv, {T, W}), with_bias ? f32(bias, {W}) : Tensor(),
                                 with_norm ? f32(qn, {hd}) : Tensor(), with_norm ? f32(kn, {hd}) : Tensor(), eps,
                                 i32(pos, {T}), f32(inv_freq, {hd / 2}), cpu());
            expect_same_finite(got, want, what + " dqkv");
            expect_same_finite(dqn, dqn_ref, what + " dq_norm");
            expect_same_finite(dkn, dkn_ref, what + " dk_norm");
            if (!with_norm) {  // qkv may be empty without QK-norm
              std::vector<float> got2(want.size(), NAN);
              ops::qkv_prepare_bwd(f32(got2, {T, W}), Tensor(), Tensor(), f32(dq, {T, nq, hd}),
                                   f32(dk, {T, nkv, hd}), f32(dv, {T, nkv, hd}), Tensor(), Tensor(), Tensor(),
                                   Tensor(), eps, i32(pos, {T}), f32(inv_freq, {hd / 2}), cpu());
              expect_same_finite(got2, want, what + " dqkv (no qkv)");
            }
          }
}

TEST(QkvPrepareCpu, BackwardRejectsBadArguments) {
  const int64_t T = 2, nq = 4, nkv = 2, hd = 8, W = (nq + 2 * nkv) * hd;
  std::vector<float> dqkv(T * W), dq(T * nq * hd), dk(T * nkv * hd), dv(T * nkv * hd), qkv(T * W), qn(hd), kn(hd),
      dqn(hd), dkn(hd), freq(hd / 2), small(3);
  std::vector<int32_t> pos = {0, 1};
  auto call = [&](const Tensor& out, const Tensor& dqn_t, const Tensor& qn_t, const Tensor& kn_t,
                  const Tensor& qkv_t) {
    ops::qkv_prepare_bwd(out, dqn_t, dqn_t.empty() ? Tensor() : f32(dkn, {hd}), f32(dq, {T, nq, hd}),
                         f32(dk, {T, nkv, hd}), f32(dv, {T, nkv, hd}), qkv_t, Tensor(), qn_t, kn_t, 1e-6f,
                         i32(pos, {T}), f32(freq, {hd / 2}), cpu());
  };
  EXPECT_NO_THROW(call(f32(dqkv, {T, W}), f32(dqn, {hd}), f32(qn, {hd}), f32(kn, {hd}), f32(qkv, {T, W})));
  EXPECT_NO_THROW(call(f32(dqkv, {T, W}), Tensor(), Tensor(), Tensor(), Tensor()));
  EXPECT_ANY_THROW(call(f32(dqkv, {T, W - 8}), Tensor(), Tensor(), Tensor(), Tensor()));
  EXPECT_ANY_THROW(call(f32(dqkv, {T, W}), f32(dqn, {hd}), Tensor(), Tensor(), Tensor()));
  EXPECT_ANY_THROW(call(f32(dqkv, {T, W}), f32(dqn, {hd}), f32(qn, {hd}), Tensor(), f32(qkv, {T, W})));
  EXPECT_ANY_THROW(call(f32(dqkv, {T, W}), f32(dqn, {hd}), f32(qn, {hd}), f32(kn, {hd}), Tensor()));
  EXPECT_ANY_THROW(call(f32(dqkv, {T, W}), f32(small, {3}), f32(qn, {hd}), f32(kn, {hd}), f32(qkv, {T, W})));
}
