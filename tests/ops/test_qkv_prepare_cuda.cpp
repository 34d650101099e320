// CUDA ops::qkv_prepare (kernels/qkv_prepare.cu) on fresh random inputs (seed printed with any failure; never zeros):
//   MatchesCpuTwin        F32 and BF16 against the CPU twin (kernels/cpu/qkv_prepare.cpp) on the same (bf16-rounded)
//                         inputs, tolerance tol_for(dtype); vector path (hd 128 / 64 / 32) and generic path (hd 80,
//                         hd 24); with/without bias, QK-norm and the dense k_out / v_out.
//   BitwiseEqualsComposed BF16: memcmp of q_out, both whole caches, k_out and v_out against the composed CUDA ops it
//                         replaces (bias_add -> rmsnorm_fwd -> rope_fwd -> kv_cache_write on contiguous copies of the
//                         column blocks), T in {1, 7, 256, 3000}, positions up to 40000, qwen3-like (16, 8, 128,
//                         QK-norm, no bias) and qwen2-like (14, 2, 64, bias, no norm) plus both-on, f32 parameter and
//                         generic-path (hd 96) variants.
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
