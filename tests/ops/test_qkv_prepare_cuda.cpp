// CUDA ops::qkv_prepare (kernels/qkv_prepare.cu) on fresh random inputs (seed printed with any failure; never zeros):
//   MatchesCpuTwin        F32 and BF16 against the CPU twin (kernels/cpu/qkv_prepare.cpp) on the same (bf16-rounded)
//                         inputs, tolerance tol_for(dtype); vector path (hd 128 / 64 / 32) and generic path (hd 80,
//                         hd 24); with/without bias, QK-norm and the dense k_out / v_out.
//   BitwiseEqualsComposed BF16: memcmp of q_out, both whole caches, k_out and v_out against the composed CUDA ops it
//                         replaces (bias_add -> rmsnorm_fwd -> rope_fwd -> kv_cache_write on contiguous copies of the
//                         column blocks), T in {1, 7, 256, 3000}, positions up to 40000, qwen3-like (16, 8, 128,
//                         QK-norm, no bias) and qwen2-like (14, 2, 64, bias, no norm) plus both-on, f32 parameter and
//                         generic-path (hd 96) variants.
//   NoCacheBitwiseEqualsCacheMode  BF16: q_out / k_out / v_out of the "no KV cache" mode (training forward) memcmp
//                         equal to the cache mode's, vector and generic paths.
//   BackwardMatchesCpuTwin qkv_prepare_bwd, F32 and BF16, against the CPU twin: dqkv within tol_for(dtype), dq_norm /
//                         dk_norm (accumulated onto random non-zero values) within tol_for(F32); vector path (hd 128,
//                         64) and generic path (hd 48, 80); T in {1, 37, 300}; with/without bias and QK-norm; a second
//                         run must give bit-identical norm gradients. For BF16 the CPU sees qkv + bias already rounded
//                         (as the kernel rounds it), so both sides differentiate the same norm input.
//   BackwardMatchesComposedOps BF16, qwen3-like and bias+norm: against rope_bwd -> bias_add / rmsnorm_fwd (rstd) ->
//                         rmsnorm_bwd on the GPU: dqkv within tol_for(BF16); the norm-weight gradients within 2^-7
//                         of the sum of their terms' magnitudes (the composed ops round each g to bf16 before it).
// Every output carries guard values that must stay untouched, and cache slots nobody writes keep their values.
// Skipped without a GPU.
#include <cuda_runtime_api.h>
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "ops/gpu_test_util.h"
#include "rlcu/cuda_check.h"
#include "rlcu/ops.h"

using namespace rlcu;
using rlcu::test::expect_close;
using rlcu::test::expect_tensor;
using rlcu::test::fresh_seed;
using rlcu::test::GuardedTensor;
using rlcu::test::make_guarded;
using rlcu::test::random_vec;
using rlcu::test::tol_for;
using rlcu::test::gpu;
using rlcu::test::host;
using rlcu::test::settle;
using rlcu::test::rounded;
using rlcu::test::dev;
using rlcu::test::dev_i32;
using rlcu::test::hf;
using rlcu::test::hi;

namespace {

std::vector<char> bytes_of(const Tensor& t) {
  std::vector<char> b(t.nbytes());
  copy_bytes(Tensor(b.data(), DType::U8, Device::CPU, {static_cast<int64_t>(b.size())}),
             Tensor(t.data, DType::U8, t.device, {static_cast<int64_t>(b.size())}));
  return b;
}
void expect_same_bytes(const GuardedTensor& got, const GuardedTensor& want, const std::string& what) {
  settle();
  const std::vector<char> g = bytes_of(got.t), w = bytes_of(want.t);
  ASSERT_EQ(g.size(), w.size()) << what;
  size_t bad = 0, first = 0;
  const size_t esz = dtype_size(got.t.dtype);
  for (size_t i = 0; i < g.size(); i += esz)
    if (std::memcmp(&g[i], &w[i], esz) != 0 && bad++ == 0) first = i / esz;
  if (bad != 0) {
    const std::vector<float> gf = to_host_f32(got.t), wf = to_host_f32(want.t);
    ADD_FAILURE() << what << ": " << bad << " of " << g.size() / esz << " elements differ bitwise; first at " << first
                  << ": got " << gf[first] << ", want " << wf[first];
  }
  got.check_guards(what);
}

std::vector<float> inv_freq_for(int64_t hd, double theta) {
  std::vector<float> f(static_cast<size_t>(hd / 2));
  for (int64_t i = 0; i < hd / 2; ++i)
    f[i] = static_cast<float>(1.0 / std::pow(theta, static_cast<double>(2 * i) / static_cast<double>(hd)));
  return f;
}

struct Inputs {
  int64_t T, nq, nkv, hd, S, qd, kvd, W;
  std::vector<float> qkv, bias, qn, kn, inv_freq, kc, vc;
  std::vector<int32_t> pos, slots;
};

// Distinct slots (about 1 in 4 negative), positions up to 40000, caches pre-filled with values no row produces.
Inputs make_inputs(int64_t T, int64_t nq, int64_t nkv, int64_t hd, DType dt, float norm_lo, float norm_hi,
                   float bias_mag, uint64_t seed) {
  Inputs in;
  in.T = T, in.nq = nq, in.nkv = nkv, in.hd = hd, in.S = 2 * T + 5;
  in.qd = nq * hd, in.kvd = nkv * hd, in.W = in.qd + 2 * in.kvd;
  std::mt19937_64 rng(seed);
  in.qkv = rounded(random_vec(T * in.W, seed + 1), dt);
  in.bias = rounded(random_vec(in.W, seed + 2, -bias_mag, bias_mag), dt);
  in.qn = rounded(random_vec(hd, seed + 3, norm_lo, norm_hi), dt);
  in.kn = rounded(random_vec(hd, seed + 4, norm_lo, norm_hi), dt);
  in.inv_freq = inv_freq_for(hd, 1e6);
  in.kc = rounded(random_vec(in.S * in.kvd, seed + 5, 10.0f, 20.0f), dt);
  in.vc = rounded(random_vec(in.S * in.kvd, seed + 6, 10.0f, 20.0f), dt);
  in.pos.resize(static_cast<size_t>(T));
  for (auto& p : in.pos) p = static_cast<int32_t>(rng() % 40001);
  std::vector<int32_t> perm(static_cast<size_t>(in.S));
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  in.slots.assign(perm.begin(), perm.begin() + T);
  for (auto& s : in.slots)
    if (rng() % 4 == 0) s = -1 - static_cast<int32_t>(rng() % 3);
  return in;
}

std::vector<float> cols(const std::vector<float>& m, int64_t rows, int64_t width, int64_t c0, int64_t n) {
  std::vector<float> out(static_cast<size_t>(rows * n));
  for (int64_t r = 0; r < rows; ++r) std::copy_n(m.begin() + r * width + c0, n, out.begin() + r * n);
  return out;
}

}  // namespace

TEST(QkvPrepareCuda, MatchesCpuTwin) {
  RLCU_REQUIRE_CUDA();
  struct Shape {
    int64_t nq, nkv, hd;
  };
  const Shape shapes[] = {{16, 8, 128}, {14, 2, 64}, {4, 4, 32}, {2, 1, 80}, {3, 1, 24}};
  for (DType dt : {DType::F32, DType::BF16})
    for (const Shape& sh : shapes)
      for (int64_t T : {1, 37, 300})
        for (int variant = 0; variant < 4; ++variant) {
          const bool with_bias = variant & 1, with_norm = variant & 2, dense = (variant + T) % 2 == 0;
          const uint64_t seed = fresh_seed();
          const std::string what = fmt::format("qkv_prepare {} nq={} nkv={} hd={} T={} bias={} norm={} dense={} seed={}",
                                               dtype_name(dt), sh.nq, sh.nkv, sh.hd, T, with_bias, with_norm, dense,
                                               seed);
          // Moderate magnitudes keep the three bf16 roundings of the fused path inside the bf16 tolerance.
          Inputs in = make_inputs(T, sh.nq, sh.nkv, sh.hd, dt, 0.25f, 0.5f, 0.25f, seed);
          const int64_t hd = sh.hd, nq = sh.nq, nkv = sh.nkv, S = in.S, W = in.W;
          std::vector<float> q_ref(static_cast<size_t>(T * in.qd)), k_ref(static_cast<size_t>(T * in.kvd)),
              v_ref(static_cast<size_t>(T * in.kvd));
          std::vector<float> kc_ref = in.kc, vc_ref = in.vc;
          ops::qkv_prepare(hf(q_ref, {T, nq, hd}), hf(k_ref, {T, nkv, hd}), hf(v_ref, {T, nkv, hd}),
                           hf(kc_ref, {S, nkv, hd}), hf(vc_ref, {S, nkv, hd}), hf(in.qkv, {T, W}),
                           with_bias ? hf(in.bias, {W}) : Tensor(), with_norm ? hf(in.qn, {hd}) : Tensor(),
                           with_norm ? hf(in.kn, {hd}) : Tensor(), 1e-6f, hi(in.pos, {T}),
                           hf(in.inv_freq, {hd / 2}), hi(in.slots, {T}), host());
          GuardedTensor q = make_guarded(dt, Device::CUDA, {T, nq, hd});
          GuardedTensor k = make_guarded(dt, Device::CUDA, {T, nkv, hd});
          GuardedTensor v = make_guarded(dt, Device::CUDA, {T, nkv, hd});
          GuardedTensor kc = dev(dt, {S, nkv, hd}, in.kc), vc = dev(dt, {S, nkv, hd}, in.vc);
          GuardedTensor qkv = dev(dt, {T, W}, in.qkv), bias = dev(dt, {W}, in.bias);
          GuardedTensor qn = dev(dt, {hd}, in.qn), kn = dev(dt, {hd}, in.kn);
          GuardedTensor freq = dev(DType::F32, {hd / 2}, in.inv_freq);
          GuardedTensor pos = dev_i32({T}, in.pos), slots = dev_i32({T}, in.slots);
          settle();
          ops::qkv_prepare(q.t, dense ? k.t : Tensor(), dense ? v.t : Tensor(), kc.t, vc.t, qkv.t,
                           with_bias ? bias.t : Tensor(), with_norm ? qn.t : Tensor(), with_norm ? kn.t : Tensor(),
                           1e-6f, pos.t, freq.t, slots.t, gpu());
          settle();
          const auto tol = tol_for(dt);
          expect_close(to_host_f32(q.t), q_ref, tol, what + " q_out");
          expect_close(to_host_f32(kc.t), kc_ref, tol, what + " k_cache");
          expect_close(to_host_f32(vc.t), vc_ref, tol, what + " v_cache");
          if (dense) {
            expect_close(to_host_f32(k.t), k_ref, tol, what + " k_out");
            expect_close(to_host_f32(v.t), v_ref, tol, what + " v_out");
          }
          for (const GuardedTensor* g : {&q, &k, &v, &kc, &vc, &qkv, &bias, &qn, &kn, &freq, &pos, &slots})
            g->check_guards(what);
        }
}

TEST(QkvPrepareCuda, BitwiseEqualsComposedOps) {
  RLCU_REQUIRE_CUDA();
  struct Case {
    const char* name;
    int64_t nq, nkv, hd;
    bool bias, norm;
    DType param;  // dtype of bias / norm weights
  };
  const Case cases[] = {
      {"qwen3-like", 16, 8, 128, false, true, DType::BF16},
      {"qwen2-like", 14, 2, 64, true, false, DType::BF16},
      {"bias+norm", 16, 8, 128, true, true, DType::BF16},
      {"bias+norm hd64", 14, 2, 64, true, true, DType::BF16},
      {"f32 params", 16, 8, 128, true, true, DType::F32},
      {"generic hd96", 4, 2, 96, true, true, DType::BF16},
  };
  const DType dt = DType::BF16;
  for (const Case& cs : cases)
    for (int64_t T : {1, 7, 256, 3000})
      for (bool dense : {true, false}) {
        const uint64_t seed = fresh_seed();
        const std::string what = fmt::format("qkv_prepare bitwise {} T={} dense={} seed={}", cs.name, T, dense, seed);
        Inputs in = make_inputs(T, cs.nq, cs.nkv, cs.hd, DType::BF16, 0.5f, 1.5f, 0.5f, seed);
        if (cs.param == DType::F32) {  // unrounded f32 parameters
          in.bias = random_vec(in.W, seed + 12, -0.5f, 0.5f);
          in.qn = random_vec(cs.hd, seed + 13, 0.5f, 1.5f);
          in.kn = random_vec(cs.hd, seed + 14, 0.5f, 1.5f);
        }
        const int64_t hd = cs.hd, nq = cs.nq, nkv = cs.nkv, S = in.S, W = in.W, qd = in.qd, kvd = in.kvd;
        const float eps = 1e-6f;
        GuardedTensor pos = dev_i32({T}, in.pos), slots = dev_i32({T}, in.slots);
        GuardedTensor freq = dev(DType::F32, {hd / 2}, in.inv_freq);
        GuardedTensor qn = dev(cs.param, {hd}, in.qn), kn = dev(cs.param, {hd}, in.kn);
        // Composed: contiguous copies of the column blocks, as the engine's separate projections produce them.
        GuardedTensor q_raw = dev(dt, {T, qd}, cols(in.qkv, T, W, 0, qd));
        GuardedTensor k_raw = dev(dt, {T, kvd}, cols(in.qkv, T, W, qd, kvd));
        GuardedTensor v_ref = dev(dt, {T, kvd}, cols(in.qkv, T, W, qd + kvd, kvd));
        GuardedTensor bq = dev(cs.param, {qd}, cols(in.bias, 1, W, 0, qd));
        GuardedTensor bk = dev(cs.param, {kvd}, cols(in.bias, 1, W, qd, kvd));
        GuardedTensor bv = dev(cs.param, {kvd}, cols(in.bias, 1, W, qd + kvd, kvd));
        GuardedTensor q_ref = make_guarded(dt, Device::CUDA, {T, nq, hd});
        GuardedTensor k_ref = make_guarded(dt, Device::CUDA, {T, nkv, hd});
        GuardedTensor rstd = make_guarded(DType::F32, Device::CUDA, {T * nq});
        GuardedTensor kc_ref = dev(dt, {S, nkv, hd}, in.kc), vc_ref = dev(dt, {S, nkv, hd}, in.vc);
        settle();
        if (cs.bias) {
          ops::bias_add(q_raw.t, bq.t, gpu());
          ops::bias_add(k_raw.t, bk.t, gpu());
          ops::bias_add(v_ref.t, bv.t, gpu());
        }
        if (cs.norm) {
          ops::rmsnorm_fwd(q_ref.t.view({T * nq, hd}), rstd.t, q_raw.t.view({T * nq, hd}), qn.t, eps, gpu());
          ops::rmsnorm_fwd(k_ref.t.view({T * nkv, hd}), rstd.t.view({T * nq}).slice_rows(0, T * nkv),
                           k_raw.t.view({T * nkv, hd}), kn.t, eps, gpu());
        } else {
          copy_bytes(q_ref.t.view({T, qd}), q_raw.t);
          copy_bytes(k_ref.t.view({T, kvd}), k_raw.t);
        }
        ops::rope_fwd(q_ref.t, q_ref.t, pos.t, freq.t, gpu());
        ops::rope_fwd(k_ref.t, k_ref.t, pos.t, freq.t, gpu());
        ops::kv_cache_write(kc_ref.t, vc_ref.t, k_ref.t, v_ref.t.view({T, nkv, hd}), slots.t, gpu());
        // Fused.
        GuardedTensor qkv = dev(dt, {T, W}, in.qkv), bias = dev(cs.param, {W}, in.bias);
        GuardedTensor q = make_guarded(dt, Device::CUDA, {T, nq, hd});
        GuardedTensor k = make_guarded(dt, Device::CUDA, {T, nkv, hd});
        GuardedTensor v = make_guarded(dt, Device::CUDA, {T, nkv, hd});
        GuardedTensor kc = dev(dt, {S, nkv, hd}, in.kc), vc = dev(dt, {S, nkv, hd}, in.vc);
        settle();
        ops::qkv_prepare(q.t, dense ? k.t : Tensor(), dense ? v.t : Tensor(), kc.t, vc.t, qkv.t,
                         cs.bias ? bias.t : Tensor(), cs.norm ? qn.t : Tensor(), cs.norm ? kn.t : Tensor(), eps,
                         pos.t, freq.t, slots.t, gpu());
        expect_same_bytes(q, q_ref, what + " q_out");
        expect_same_bytes(kc, kc_ref, what + " k_cache");
        expect_same_bytes(vc, vc_ref, what + " v_cache");
        if (dense) {
          expect_same_bytes(k, k_ref, what + " k_out");
          GuardedTensor v3 = make_guarded(dt, Device::CUDA, {T, nkv, hd});
          copy_bytes(v3.t, v_ref.t.view({T, nkv, hd}));
          expect_same_bytes(v, v3, what + " v_out");
        } else {
          k.check_guards(what + " k_out (unused)");
          v.check_guards(what + " v_out (unused)");
        }
        // Slots nobody writes keep their initial values.
        const std::vector<float> kc_got = to_host_f32(kc.t), vc_got = to_host_f32(vc.t);
        const std::vector<float> kc0 = rounded(in.kc, dt), vc0 = rounded(in.vc, dt);
        std::vector<bool> written(static_cast<size_t>(S), false);
        for (int32_t s : in.slots)
          if (s >= 0) written[static_cast<size_t>(s)] = true;
        for (int64_t s = 0; s < S; ++s) {
          if (written[static_cast<size_t>(s)]) continue;
          ASSERT_TRUE(std::equal(kc_got.begin() + s * kvd, kc_got.begin() + (s + 1) * kvd, kc0.begin() + s * kvd) &&
                      std::equal(vc_got.begin() + s * kvd, vc_got.begin() + (s + 1) * kvd, vc0.begin() + s * kvd))
              << what << " untouched slot " << s;
        }
        for (const GuardedTensor* g : {&qkv, &bias, &qn, &kn, &freq, &pos, &slots}) g->check_guards(what + " input");
      }
}

TEST(QkvPrepareCuda, NoCacheBitwiseEqualsCacheMode) {
  RLCU_REQUIRE_CUDA();
  struct Case {
    int64_t nq, nkv, hd;
    bool bias, norm;
  };
  const Case cases[] = {{16, 8, 128, false, true}, {14, 2, 64, true, false}, {4, 2, 96, true, true},
                        {3, 1, 48, true, true}};
  const DType dt = DType::BF16;
  for (const Case& cs : cases)
    for (int64_t T : {1, 37, 1000}) {
      const uint64_t seed = fresh_seed();
      const std::string what = fmt::format("qkv_prepare no-cache nq={} nkv={} hd={} T={} seed={}", cs.nq, cs.nkv, cs.hd,
                                           T, seed);
      Inputs in = make_inputs(T, cs.nq, cs.nkv, cs.hd, dt, 0.5f, 1.5f, 0.5f, seed);
      const int64_t hd = cs.hd, nq = cs.nq, nkv = cs.nkv, S = in.S, W = in.W;
      GuardedTensor pos = dev_i32({T}, in.pos), slots = dev_i32({T}, in.slots);
      GuardedTensor freq = dev(DType::F32, {hd / 2}, in.inv_freq);
      GuardedTensor qn = dev(dt, {hd}, in.qn), kn = dev(dt, {hd}, in.kn);
      GuardedTensor qkv = dev(dt, {T, W}, in.qkv), bias = dev(dt, {W}, in.bias);
      GuardedTensor kc = dev(dt, {S, nkv, hd}, in.kc), vc = dev(dt, {S, nkv, hd}, in.vc);
      GuardedTensor q1 = make_guarded(dt, Device::CUDA, {T, nq, hd}), q2 = make_guarded(dt, Device::CUDA, {T, nq, hd});
      GuardedTensor k1 = make_guarded(dt, Device::CUDA, {T, nkv, hd}), k2 = make_guarded(dt, Device::CUDA, {T, nkv, hd});
      GuardedTensor v1 = make_guarded(dt, Device::CUDA, {T, nkv, hd}), v2 = make_guarded(dt, Device::CUDA, {T, nkv, hd});
      settle();
      const Tensor b = cs.bias ? bias.t : Tensor(), wq = cs.norm ? qn.t : Tensor(), wk = cs.norm ? kn.t : Tensor();
      ops::qkv_prepare(q1.t, k1.t, v1.t, kc.t, vc.t, qkv.t, b, wq, wk, 1e-6f, pos.t, freq.t, slots.t, gpu());
      ops::qkv_prepare(q2.t, k2.t, v2.t, Tensor(), Tensor(), qkv.t, b, wq, wk, 1e-6f, pos.t, freq.t, Tensor(), gpu());
      expect_same_bytes(q2, q1, what + " q_out");
      expect_same_bytes(k2, k1, what + " k_out");
      expect_same_bytes(v2, v1, what + " v_out");
      for (const GuardedTensor* g : {&qkv, &bias, &qn, &kn, &freq, &pos}) g->check_guards(what + " input");
    }
  // Without a cache the dense outputs are required.
  GuardedTensor q = make_guarded(dt, Device::CUDA, {2, 2, 8}), v = make_guarded(dt, Device::CUDA, {2, 1, 8});
  GuardedTensor qkv = make_guarded(dt, Device::CUDA, {2, 32}), freq = dev(DType::F32, {4}, {1, 1, 1, 1});
  GuardedTensor pos = dev_i32({2}, {0, 1});
  EXPECT_ANY_THROW(ops::qkv_prepare(q.t, Tensor(), v.t, Tensor(), Tensor(), qkv.t, Tensor(), Tensor(), Tensor(), 1e-6f,
                                    pos.t, freq.t, Tensor(), gpu()));
}

namespace {

struct BwdInputs {
  Inputs in;
  std::vector<float> dq, dk, dv, dqn0, dkn0;
};

BwdInputs make_bwd_inputs(int64_t T, int64_t nq, int64_t nkv, int64_t hd, DType dt, uint64_t seed) {
  BwdInputs b;
  b.in = make_inputs(T, nq, nkv, hd, dt, 0.25f, 0.5f, 0.25f, seed);
  b.dq = rounded(random_vec(T * nq * hd, seed + 21), dt);
  b.dk = rounded(random_vec(T * nkv * hd, seed + 22), dt);
  b.dv = rounded(random_vec(T * nkv * hd, seed + 23), dt);
  b.dqn0 = random_vec(hd, seed + 24);
  b.dkn0 = random_vec(hd, seed + 25);
  return b;
}

}  // namespace

TEST(QkvPrepareCuda, BackwardMatchesCpuTwin) {
  RLCU_REQUIRE_CUDA();
  struct Shape {
    int64_t nq, nkv, hd;
  };
  const Shape shapes[] = {{16, 8, 128}, {14, 2, 64}, {3, 1, 48}, {2, 1, 80}};
  for (DType dt : {DType::F32, DType::BF16})
    for (const Shape& sh : shapes)
      for (int64_t T : {1, 37, 300})
        for (int variant = 0; variant < 4; ++variant) {
          const bool with_bias = variant & 1, with_norm = variant & 2;
          const uint64_t seed = fresh_seed();
          const std::string what = fmt::format("qkv_prepare_bwd {} nq={} nkv={} hd={} T={} bias={} norm={} seed={}",
                                               dtype_name(dt), sh.nq, sh.nkv, sh.hd, T, with_bias, with_norm, seed);
          BwdInputs bi = make_bwd_inputs(T, sh.nq, sh.nkv, sh.hd, dt, seed);
          Inputs& in = bi.in;
          const int64_t hd = sh.hd, nq = sh.nq, nkv = sh.nkv, W = in.W;
          // CPU twin. In BF16 the kernel rounds qkv + bias to bf16 before the norm: hand the CPU that rounded sum.
          std::vector<float> qkv_cpu = in.qkv;
          const bool fold_bias = with_bias && dt == DType::BF16;
          if (fold_bias) {
            for (int64_t t = 0; t < T; ++t)
              for (int64_t c = 0; c < W; ++c) qkv_cpu[t * W + c] += in.bias[c];
            qkv_cpu = rounded(qkv_cpu, dt);
          }
          std::vector<float> want(static_cast<size_t>(T * W)), dqn = bi.dqn0, dkn = bi.dkn0;
          ops::qkv_prepare_bwd(hf(want, {T, W}), with_norm ? hf(dqn, {hd}) : Tensor(),
                               with_norm ? hf(dkn, {hd}) : Tensor(), hf(bi.dq, {T, nq, hd}), hf(bi.dk, {T, nkv, hd}),
                               hf(bi.dv, {T, nkv, hd}), hf(qkv_cpu, {T, W}),
                               with_bias && !fold_bias ? hf(in.bias, {W}) : Tensor(),
                               with_norm ? hf(in.qn, {hd}) : Tensor(), with_norm ? hf(in.kn, {hd}) : Tensor(), 1e-6f,
                               hi(in.pos, {T}), hf(in.inv_freq, {hd / 2}), host());
          GuardedTensor dqkv = make_guarded(dt, Device::CUDA, {T, W});
          GuardedTensor gdqn = dev(DType::F32, {hd}, bi.dqn0), gdkn = dev(DType::F32, {hd}, bi.dkn0);
          GuardedTensor gdqn2 = dev(DType::F32, {hd}, bi.dqn0), gdkn2 = dev(DType::F32, {hd}, bi.dkn0);
          GuardedTensor dq = dev(dt, {T, nq, hd}, bi.dq), dk = dev(dt, {T, nkv, hd}, bi.dk);
          GuardedTensor dv = dev(dt, {T, nkv, hd}, bi.dv);
          GuardedTensor qkv = dev(dt, {T, W}, in.qkv), bias = dev(dt, {W}, in.bias);
          GuardedTensor qn = dev(dt, {hd}, in.qn), kn = dev(dt, {hd}, in.kn);
          GuardedTensor freq = dev(DType::F32, {hd / 2}, in.inv_freq);
          GuardedTensor pos = dev_i32({T}, in.pos);
          settle();
          auto run = [&](GuardedTensor& gq, GuardedTensor& gk) {
            ops::qkv_prepare_bwd(dqkv.t, with_norm ? gq.t : Tensor(), with_norm ? gk.t : Tensor(), dq.t, dk.t, dv.t,
                                 qkv.t, with_bias ? bias.t : Tensor(), with_norm ? qn.t : Tensor(),
                                 with_norm ? kn.t : Tensor(), 1e-6f, pos.t, freq.t, gpu());
          };
          run(gdqn, gdkn);
          expect_tensor(dqkv, want, tol_for(dt), what + " dqkv");
          if (with_norm) {
            expect_tensor(gdqn, dqn, tol_for(DType::F32), what + " dq_norm");
            expect_tensor(gdkn, dkn, tol_for(DType::F32), what + " dk_norm");
            run(gdqn2, gdkn2);
            settle();
            EXPECT_EQ(to_host_f32(gdqn.t), to_host_f32(gdqn2.t)) << what << ": dq_norm not bit-reproducible";
            EXPECT_EQ(to_host_f32(gdkn.t), to_host_f32(gdkn2.t)) << what << ": dk_norm not bit-reproducible";
          } else {
            expect_tensor(gdqn, bi.dqn0, rlcu::test::Tol{0, 0}, what + " dq_norm untouched");
          }
          for (const GuardedTensor* g : {&dq, &dk, &dv, &qkv, &bias, &qn, &kn, &freq, &pos, &gdkn, &gdqn2, &gdkn2})
            g->check_guards(what);
        }
}

TEST(QkvPrepareCuda, BackwardMatchesComposedOps) {
  RLCU_REQUIRE_CUDA();
  struct Case {
    const char* name;
    int64_t nq, nkv, hd;
    bool bias;
  };
  const Case cases[] = {{"qwen3-like", 16, 8, 128, false}, {"bias+norm hd64", 14, 2, 64, true},
                        {"generic hd48", 3, 1, 48, true}};
  const DType dt = DType::BF16;
  const float eps = 1e-6f;
  for (const Case& cs : cases)
    for (int64_t T : {1, 7, 1000}) {
      const uint64_t seed = fresh_seed();
      const std::string what = fmt::format("qkv_prepare_bwd composed {} T={} seed={}", cs.name, T, seed);
      BwdInputs bi = make_bwd_inputs(T, cs.nq, cs.nkv, cs.hd, dt, seed);
      Inputs& in = bi.in;
      const int64_t hd = cs.hd, nq = cs.nq, nkv = cs.nkv, W = in.W, qd = in.qd, kvd = in.kvd;
      GuardedTensor pos = dev_i32({T}, in.pos), freq = dev(DType::F32, {hd / 2}, in.inv_freq);
      GuardedTensor qn = dev(dt, {hd}, in.qn), kn = dev(dt, {hd}, in.kn);
      // Composed.
      GuardedTensor gq = dev(dt, {T, nq, hd}, bi.dq), gk = dev(dt, {T, nkv, hd}, bi.dk);
      GuardedTensor xq = dev(dt, {T, qd}, cols(in.qkv, T, W, 0, qd)), xk = dev(dt, {T, kvd}, cols(in.qkv, T, W, qd, kvd));
      GuardedTensor bq = dev(dt, {qd}, cols(in.bias, 1, W, 0, qd)), bk = dev(dt, {kvd}, cols(in.bias, 1, W, qd, kvd));
      GuardedTensor yq = make_guarded(dt, Device::CUDA, {T * nq, hd}), yk = make_guarded(dt, Device::CUDA, {T * nkv, hd});
      GuardedTensor rq = make_guarded(DType::F32, Device::CUDA, {T * nq}), rk = make_guarded(DType::F32, Device::CUDA, {T * nkv});
      GuardedTensor dxq = make_guarded(dt, Device::CUDA, {T * nq, hd}), dxk = make_guarded(dt, Device::CUDA, {T * nkv, hd});
      GuardedTensor cdqn = dev(DType::F32, {hd}, bi.dqn0), cdkn = dev(DType::F32, {hd}, bi.dkn0);
      settle();
      ops::rope_bwd(gq.t, gq.t, pos.t, freq.t, gpu());
      ops::rope_bwd(gk.t, gk.t, pos.t, freq.t, gpu());
      if (cs.bias) {
        ops::bias_add(xq.t, bq.t, gpu());
        ops::bias_add(xk.t, bk.t, gpu());
      }
      ops::rmsnorm_fwd(yq.t, rq.t, xq.t.view({T * nq, hd}), qn.t, eps, gpu());
      ops::rmsnorm_fwd(yk.t, rk.t, xk.t.view({T * nkv, hd}), kn.t, eps, gpu());
      ops::rmsnorm_bwd(dxq.t, cdqn.t, gq.t.view({T * nq, hd}), xq.t.view({T * nq, hd}), qn.t, rq.t, gpu());
      ops::rmsnorm_bwd(dxk.t, cdkn.t, gk.t.view({T * nkv, hd}), xk.t.view({T * nkv, hd}), kn.t, rk.t, gpu());
      settle();
      const std::vector<float> hxq = to_host_f32(dxq.t), hxk = to_host_f32(dxk.t);
      std::vector<float> want(static_cast<size_t>(T * W));
      for (int64_t t = 0; t < T; ++t) {
        std::copy_n(hxq.begin() + t * qd, qd, want.begin() + t * W);
        std::copy_n(hxk.begin() + t * kvd, kvd, want.begin() + t * W + qd);
        std::copy_n(bi.dv.begin() + t * kvd, kvd, want.begin() + t * W + qd + kvd);  // already bf16 values
      }
      // Fused.
      GuardedTensor dqkv = make_guarded(dt, Device::CUDA, {T, W});
      GuardedTensor dq = dev(dt, {T, nq, hd}, bi.dq), dk = dev(dt, {T, nkv, hd}, bi.dk), dv = dev(dt, {T, nkv, hd}, bi.dv);
      GuardedTensor qkv = dev(dt, {T, W}, in.qkv), bias = dev(dt, {W}, in.bias);
      GuardedTensor fdqn = dev(DType::F32, {hd}, bi.dqn0), fdkn = dev(DType::F32, {hd}, bi.dkn0);
      settle();
      ops::qkv_prepare_bwd(dqkv.t, fdqn.t, fdkn.t, dq.t, dk.t, dv.t, qkv.t, cs.bias ? bias.t : Tensor(), qn.t, kn.t, eps,
                           pos.t, freq.t, gpu());
      expect_tensor(dqkv, want, tol_for(dt), what + " dqkv");
      // The norm-weight gradients sum g * x * rstd over rows, and the composed ops round every g to bf16 first:
      // their difference is bounded by bf16 rounding of each term, 2^-8 * sum |g x rstd| per element (with margin),
      // not by a tolerance relative to the (possibly cancelling) sum itself.
      auto expect_norm_grad = [&](const GuardedTensor& fused, const GuardedTensor& composed, const GuardedTensor& g,
                                  const GuardedTensor& x, const GuardedTensor& rstd, int64_t rows, const char* name) {
        const std::vector<float> f = to_host_f32(fused.t), c = to_host_f32(composed.t), hg = to_host_f32(g.t),
                                 hx = to_host_f32(x.t), hr = to_host_f32(rstd.t);
        for (int64_t d = 0; d < hd; ++d) {
          double mag = 0;
          for (int64_t r = 0; r < rows; ++r) mag += std::fabs(double(hg[r * hd + d]) * hx[r * hd + d] * hr[r]);
          ASSERT_TRUE(std::isfinite(f[d])) << what << " " << name << "[" << d << "]";
          EXPECT_LE(std::fabs(double(f[d]) - c[d]), std::ldexp(mag, -7) + 1e-5)
              << what << " " << name << "[" << d << "]: fused " << f[d] << ", composed " << c[d] << ", sum |terms| "
              << mag;
        }
        fused.check_guards(what + " " + name);
      };
      expect_norm_grad(fdqn, cdqn, gq, xq, rq, T * nq, "dq_norm");
      expect_norm_grad(fdkn, cdkn, gk, xk, rk, T * nkv, "dk_norm");
    }
}
