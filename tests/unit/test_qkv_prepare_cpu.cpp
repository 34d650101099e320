// ops::qkv_prepare on the CPU (kernels/cpu/qkv_prepare.cpp) against the composition of the separate CPU ops it
// replaces in the generation engine: bias_add on the q, k, v column blocks -> per-head rmsnorm_fwd of q and k ->
// rope_fwd of q and k -> kv_cache_write. Exact (F32 bit) equality of q_out, both whole caches (unwritten slots keep
// their marks, negative slots are skipped) and the dense k_out / v_out copies, over: with/without bias, with/without
// QK-norm, with/without k_out/v_out, T in {1, 3, 37}, (nq, nkv) in {(16,8), (14,2), (4,4)}, hd in {64, 128, 32}.
// Plus the argument checks.
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
