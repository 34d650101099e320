// CUDA attention (kernels/attention.cu) against its CPU twin (kernels/cpu/attention.cpp), forward and backward.
// Fresh random inputs per case, rounded to the tested dtype before the CPU reference; shapes cover a length-1
// sequence, odd lengths, lengths that are not multiples of the tiles, S = 1 and S = 5 packed sequences, GQA ratios
// 1, 2, 7 and 8, the tensor-core path (BF16, hd 64 and 128) and the generic path (F32 at any hd; BF16 at hd 16 and
// 80), and a max_seqlen grid hint smaller than the longest sequence. Tolerances come from tol_for(dtype of q);
// every output is guarded and NaN fails. Both sides of the backward take the CUDA forward's out and lse, and the
// CUDA backward runs twice and must be bit-identical (no float atomics). Two timing cases run the Qwen3-0.6B and
// Qwen2.5-0.5B attention shapes (64 sequences x 512 tokens) and print median forward/backward times.
#include <gtest/gtest.h>

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "backends.h"
#include "ops/gpu_test_util.h"
#include "rlcu/cuda_check.h"

namespace rlcu {
namespace {

using test::GuardedTensor;
using test::rounded;

struct Case {
  std::vector<int> lens;
  int nq, nkv, hd;
  DType dtype;
  int grid_hint = 0;  // max_seqlen passed to CUDA; 0 means the longest sequence
};

std::string describe(const Case& c, uint64_t seed) {
  std::string lens;
  for (size_t i = 0; i < c.lens.size(); ++i) lens += (i ? "," : "") + std::to_string(c.lens[i]);
  return fmt::format("attention {} lens [{}] nq {} nkv {} hd {} hint {} seed {}", dtype_name(c.dtype), lens, c.nq,
                     c.nkv, c.hd, c.grid_hint, seed);
}

OwnedTensor to_device(const std::vector<float>& host, DType dt, const std::vector<int64_t>& dims) {
  OwnedTensor t = OwnedTensor::make(dt, Device::CUDA, dims);
  from_host_f32(t.t, host);
  return t;
}

Tensor host_view(std::vector<float>& v, const std::vector<int64_t>& dims) {
  return Tensor(v.data(), DType::F32, Device::CPU, dims);
}

std::vector<uint8_t> bytes_of(const Tensor& t) {
  std::vector<uint8_t> b(t.nbytes());
  copy_bytes(Tensor(b.data(), DType::U8, Device::CPU, {static_cast<int64_t>(b.size())}),
             Tensor(t.data, DType::U8, t.device, {static_cast<int64_t>(b.size())}));
  return b;
}

double rel_l2(const std::vector<float>& got, const std::vector<float>& want) {
  double num = 0, den = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    num += (static_cast<double>(got[i]) - want[i]) * (static_cast<double>(got[i]) - want[i]);
    den += static_cast<double>(want[i]) * want[i];
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

void compare(const GuardedTensor& got, const std::vector<float>& want, test::Tol tol, const std::string& what,
             std::string* report) {
  const std::vector<float> g = to_host_f32(got.t);
  test::expect_close(g, want, tol, what);
  got.check_guards(what);
  *report += fmt::format(" {:.1e}", rel_l2(g, want));
}

void run_case(const Case& c, Context& ctx) {
  const uint64_t seed = test::fresh_seed();
  const std::string what = describe(c, seed);
  SCOPED_TRACE(what);
  const int S = static_cast<int>(c.lens.size());
  std::vector<int32_t> cu(S + 1, 0);
  for (int s = 0; s < S; ++s) cu[s + 1] = cu[s] + c.lens[s];
  const int64_t T = cu[S];
  const std::vector<int64_t> qdims{T, c.nq, c.hd}, kvdims{T, c.nkv, c.hd}, ldims{T, c.nq};
  const size_t qn = static_cast<size_t>(T * c.nq * c.hd), kvn = static_cast<size_t>(T * c.nkv * c.hd);
  std::vector<float> q = rounded(test::random_vec(qn, seed), c.dtype);
  std::vector<float> k = rounded(test::random_vec(kvn, seed + 1), c.dtype);
  std::vector<float> v = rounded(test::random_vec(kvn, seed + 2), c.dtype);
  std::vector<float> dout = rounded(test::random_vec(qn, seed + 3), c.dtype);

  ops::AttentionParams p;
  p.num_seqs = S;
  p.max_seqlen = *std::max_element(c.lens.begin(), c.lens.end());
  p.scale = 1.0f / std::sqrt(static_cast<float>(c.hd));
  ops::AttentionParams pd = p;
  if (c.grid_hint > 0) pd.max_seqlen = c.grid_hint;
  const Tensor cu_host(cu.data(), DType::I32, Device::CPU, {S + 1});
  OwnedTensor cu_dev = OwnedTensor::make(DType::I32, Device::CUDA, {S + 1});
  copy_bytes(cu_dev.t, cu_host);
  OwnedTensor qd = to_device(q, c.dtype, qdims), kd = to_device(k, c.dtype, kvdims);
  OwnedTensor vd = to_device(v, c.dtype, kvdims), dod = to_device(dout, c.dtype, qdims);
  const test::Tol tol = test::tol_for(c.dtype);
  std::string report = "rel-L2 out lse dq dk dv:";

  // Forward.
  std::vector<float> out_ref(qn), lse_ref(static_cast<size_t>(T * c.nq));
  cpu::attention_fwd(host_view(out_ref, qdims), host_view(lse_ref, ldims), host_view(q, qdims), host_view(k, kvdims),
                     host_view(v, kvdims), cu_host, p, Context::cpu());
  GuardedTensor out = test::make_guarded(c.dtype, Device::CUDA, qdims);
  GuardedTensor lse = test::make_guarded(DType::F32, Device::CUDA, ldims);
  cuda::attention_fwd(out.t, lse.t, qd.t, kd.t, vd.t, cu_dev.t, pd, ctx);
  ctx.synchronize("attention_fwd test");
  compare(out, out_ref, tol, what + ": out", &report);
  compare(lse, lse_ref, tol, what + ": lse", &report);

  // Backward: both sides take the CUDA forward's out and lse.
  std::vector<float> out_h = to_host_f32(out.t), lse_h = to_host_f32(lse.t);
  std::vector<float> dq_ref(qn), dk_ref(kvn), dv_ref(kvn);
  cpu::attention_bwd(host_view(dq_ref, qdims), host_view(dk_ref, kvdims), host_view(dv_ref, kvdims),
                     host_view(dout, qdims), host_view(q, qdims), host_view(k, kvdims), host_view(v, kvdims),
                     host_view(out_h, qdims), host_view(lse_h, ldims), cu_host, p, Context::cpu());
  GuardedTensor dq = test::make_guarded(c.dtype, Device::CUDA, qdims);
  GuardedTensor dk = test::make_guarded(c.dtype, Device::CUDA, kvdims);
  GuardedTensor dv = test::make_guarded(c.dtype, Device::CUDA, kvdims);
  cuda::attention_bwd(dq.t, dk.t, dv.t, dod.t, qd.t, kd.t, vd.t, out.t, lse.t, cu_dev.t, pd, ctx);
  ctx.synchronize("attention_bwd test");
  compare(dq, dq_ref, tol, what + ": dq", &report);
  compare(dk, dk_ref, tol, what + ": dk", &report);
  compare(dv, dv_ref, tol, what + ": dv", &report);

  // Determinism: a second backward into fresh (poisoned) buffers gives the same bits.
  GuardedTensor dq2 = test::make_guarded(c.dtype, Device::CUDA, qdims);
  GuardedTensor dk2 = test::make_guarded(c.dtype, Device::CUDA, kvdims);
  GuardedTensor dv2 = test::make_guarded(c.dtype, Device::CUDA, kvdims);
  cuda::attention_bwd(dq2.t, dk2.t, dv2.t, dod.t, qd.t, kd.t, vd.t, out.t, lse.t, cu_dev.t, pd, ctx);
  ctx.synchronize("attention_bwd test (repeat)");
  EXPECT_TRUE(bytes_of(dq.t) == bytes_of(dq2.t)) << what << ": dq differs between two identical backward calls";
  EXPECT_TRUE(bytes_of(dk.t) == bytes_of(dk2.t)) << what << ": dk differs between two identical backward calls";
  EXPECT_TRUE(bytes_of(dv.t) == bytes_of(dv2.t)) << what << ": dv differs between two identical backward calls";
  std::printf("%s\n  %s\n", what.c_str(), report.c_str());
}

void run_cases(const std::vector<Case>& cases) {
  auto ctx = Context::cuda(0);
  for (const Case& c : cases) run_case(c, *ctx);
}

TEST(AttentionCuda, TensorCorePathBf16) {
  RLCU_REQUIRE_CUDA();
  run_cases({
      {{1}, 1, 1, 64, DType::BF16},
      {{37}, 2, 1, 128, DType::BF16},
      {{1, 130, 64, 7, 255}, 8, 1, 64, DType::BF16},
      {{129, 1, 63, 200, 65}, 8, 8, 128, DType::BF16},
      {{517, 3, 256}, 16, 8, 128, DType::BF16},
      {{300, 45}, 14, 2, 64, DType::BF16},
  });
}

TEST(AttentionCuda, GenericPathBf16) {
  RLCU_REQUIRE_CUDA();
  run_cases({
      {{1, 5, 33}, 4, 2, 16, DType::BF16},
      {{70, 1, 9}, 2, 1, 80, DType::BF16},
      {{1, 40, 3, 17, 8}, 8, 1, 16, DType::BF16},
  });
}

TEST(AttentionCuda, GenericPathF32) {
  RLCU_REQUIRE_CUDA();
  run_cases({
      {{1, 50, 17}, 2, 1, 64, DType::F32},
      {{3, 1, 40, 11, 26}, 8, 8, 16, DType::F32},
      {{33}, 8, 1, 128, DType::F32},
      {{20, 7}, 2, 2, 80, DType::F32},
  });
}

// A grid hint below the longest sequence: blocks stride over the remaining tiles.
TEST(AttentionCuda, SmallGridHint) {
  RLCU_REQUIRE_CUDA();
  run_cases({
      {{200, 1, 77}, 4, 2, 128, DType::BF16, 1},
      {{150, 9}, 2, 1, 64, DType::BF16, 1},
      {{1, 40, 3, 17, 8}, 8, 1, 16, DType::BF16, 2},
      {{20, 7}, 2, 2, 80, DType::F32, 3},
  });
}

// Small mixed shapes on every path (quick enough for compute-sanitizer).
TEST(AttentionCuda, SmallMixed) {
  RLCU_REQUIRE_CUDA();
  run_cases({
      {{70, 1, 130}, 4, 2, 64, DType::BF16},
      {{70, 1, 130}, 4, 2, 128, DType::BF16},
      {{9, 1, 21}, 2, 1, 16, DType::BF16},
      {{9, 1, 21}, 2, 1, 64, DType::F32},
  });
}

// ---- timing on real shapes -------------------------------------------------------------------------------------

float median(std::vector<float> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

void bench_shape(const char* name, int seqs, int len, int nq, int nkv, int hd) {
  auto ctx = Context::cuda(0);
  auto stream = static_cast<cudaStream_t>(ctx->stream());
  const int64_t T = static_cast<int64_t>(seqs) * len;
  const std::vector<int64_t> qdims{T, nq, hd}, kvdims{T, nkv, hd};
  const size_t qn = static_cast<size_t>(T * nq * hd), kvn = static_cast<size_t>(T * nkv * hd);
  const uint64_t seed = test::fresh_seed();
  OwnedTensor q = to_device(test::random_vec(qn, seed), DType::BF16, qdims);
  OwnedTensor k = to_device(test::random_vec(kvn, seed + 1), DType::BF16, kvdims);
  OwnedTensor v = to_device(test::random_vec(kvn, seed + 2), DType::BF16, kvdims);
  OwnedTensor dout = to_device(test::random_vec(qn, seed + 3), DType::BF16, qdims);
  std::vector<int32_t> cu(seqs + 1);
  for (int s = 0; s <= seqs; ++s) cu[s] = s * len;
  OwnedTensor cu_dev = OwnedTensor::make(DType::I32, Device::CUDA, {seqs + 1});
  copy_bytes(cu_dev.t, Tensor(cu.data(), DType::I32, Device::CPU, {seqs + 1}));
  GuardedTensor out = test::make_guarded(DType::BF16, Device::CUDA, qdims);
  GuardedTensor lse = test::make_guarded(DType::F32, Device::CUDA, {T, nq});
  GuardedTensor dq = test::make_guarded(DType::BF16, Device::CUDA, qdims);
  GuardedTensor dk = test::make_guarded(DType::BF16, Device::CUDA, kvdims);
  GuardedTensor dv = test::make_guarded(DType::BF16, Device::CUDA, kvdims);
  ops::AttentionParams p;
  p.num_seqs = seqs;
  p.max_seqlen = len;
  p.scale = 1.0f / std::sqrt(static_cast<float>(hd));
  auto fwd = [&] { cuda::attention_fwd(out.t, lse.t, q.t, k.t, v.t, cu_dev.t, p, *ctx); };
  auto bwd = [&] { cuda::attention_bwd(dq.t, dk.t, dv.t, dout.t, q.t, k.t, v.t, out.t, lse.t, cu_dev.t, p, *ctx); };

  fwd();
  bwd();
  ctx->synchronize("attention bench warm-up");
  const std::vector<uint8_t> dq0 = bytes_of(dq.t), dk0 = bytes_of(dk.t), dv0 = bytes_of(dv.t);
  for (const GuardedTensor* t : {&out, &lse, &dq, &dk, &dv}) {
    const std::vector<float> h = to_host_f32(t->t);
    const size_t bad = static_cast<size_t>(std::count_if(h.begin(), h.end(), [](float x) { return !std::isfinite(x); }));
    EXPECT_EQ(bad, 0u) << name << ": non-finite outputs";
    t->check_guards(name);
  }

  cudaEvent_t e0, e1;
  RLCU_CUDA_CHECK(cudaEventCreate(&e0));
  RLCU_CUDA_CHECK(cudaEventCreate(&e1));
  auto time_ms = [&](auto&& f, int reps) {
    std::vector<float> ms;
    for (int r = 0; r < reps; ++r) {
      RLCU_CUDA_CHECK(cudaEventRecord(e0, stream));
      f();
      RLCU_CUDA_CHECK(cudaEventRecord(e1, stream));
      RLCU_CUDA_CHECK(cudaEventSynchronize(e1));
      float t = 0;
      RLCU_CUDA_CHECK(cudaEventElapsedTime(&t, e0, e1));
      ms.push_back(t);
    }
    return median(ms);
  };
  for (int r = 0; r < 3; ++r) {
    fwd();
    bwd();
  }
  const float fwd_ms = time_ms(fwd, 25);
  const float bwd_ms = time_ms(bwd, 25);
  RLCU_CUDA_CHECK(cudaEventDestroy(e0));
  RLCU_CUDA_CHECK(cudaEventDestroy(e1));
  ctx->synchronize("attention bench");
  EXPECT_TRUE(dq0 == bytes_of(dq.t) && dk0 == bytes_of(dk.t) && dv0 == bytes_of(dv.t))
      << name << ": backward results changed between repeated identical calls";

  // Causal FLOPs: two (forward) or five (backward, FlashAttention convention) matrix products over the
  // len*(len+1)/2 visible (query, key) pairs; the backward here recomputes S and dP once more (7 products).
  const double pairs = static_cast<double>(seqs) * len * (len + 1) / 2.0;
  const double fwd_flop = 4.0 * pairs * hd * nq;
  const double bwd_flop = 2.5 * fwd_flop;
  std::printf("attention bench %s: %d x %d tokens, nq %d, nkv %d, hd %d, bf16\n", name, seqs, len, nq, nkv, hd);
  std::printf("  fwd %.3f ms (%.0f TFLOP/s)  bwd %.3f ms (%.0f TFLOP/s at 2.5x fwd FLOPs)  fwd+bwd %.3f ms\n", fwd_ms,
              fwd_flop / fwd_ms * 1e-9, bwd_ms, bwd_flop / bwd_ms * 1e-9, fwd_ms + bwd_ms);
  std::printf("{\"bench\":\"attention\",\"shape\":\"%s\",\"seqs\":%d,\"len\":%d,\"nq\":%d,\"nkv\":%d,\"hd\":%d,"
              "\"fwd_ms\":%.4f,\"bwd_ms\":%.4f,\"fwd_tflops\":%.1f,\"bwd_tflops\":%.1f}\n",
              name, seqs, len, nq, nkv, hd, fwd_ms, bwd_ms, fwd_flop / fwd_ms * 1e-9, bwd_flop / bwd_ms * 1e-9);
}

TEST(AttentionCuda, TimingQwen3Shape) {
  RLCU_REQUIRE_CUDA();
  bench_shape("qwen3-0.6b", 64, 512, 16, 8, 128);
}

TEST(AttentionCuda, TimingQwen25Shape) {
  RLCU_REQUIRE_CUDA();
  bench_shape("qwen2.5-0.5b", 64, 512, 14, 2, 64);
}

}  // namespace
}  // namespace rlcu
