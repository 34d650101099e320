// Forward CPU ops through the public op layer (include/rlcu/ops.h on CPU tensors): each op against a hand-checkable
// value or an independent naive formula, plus the argument checks. Gradients are in test_grad_cpu.cpp.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <limits>
#include <random>
#include <utility>
#include <vector>

#include "attention_select.h"
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

const float kNaN = std::numeric_limits<float>::quiet_NaN();

}  // namespace

// ---- gemm ------------------------------------------------------------------------------------------------------

TEST(OpsCpu, GemmSmallAllTransposes) {
  // A = [[1,2,3],[4,5,6]], B = [[1,0],[0,1],[2,-1]] -> A B = [[7,-1],[16,-1]].
  std::vector<float> a = {1, 2, 3, 4, 5, 6}, at = {1, 4, 2, 5, 3, 6};
  std::vector<float> b = {1, 0, 0, 1, 2, -1}, bt = {1, 0, 2, 0, 1, -1};
  const std::vector<float> want = {7, -1, 16, -1};
  for (int ta = 0; ta < 2; ++ta) {
    for (int tb = 0; tb < 2; ++tb) {
      std::vector<float> out(4, kNaN);  // beta = 0 must not read out
      ops::GemmParams p;
      p.trans_a = ta;
      p.trans_b = tb;
      ops::gemm(f32(out, {2, 2}), ta ? f32(at, {3, 2}) : f32(a, {2, 3}), tb ? f32(bt, {2, 3}) : f32(b, {3, 2}), p,
                cpu());
      for (int i = 0; i < 4; ++i) EXPECT_EQ(out[i], want[i]) << "trans_a=" << ta << " trans_b=" << tb << " i=" << i;
    }
  }
}

TEST(OpsCpu, GemmAlphaBeta) {
  std::vector<float> a = {1, 2, 3, 4}, b = {1, 0, 0, 1}, out = {10, 20, 30, 40};
  ops::GemmParams p;
  p.alpha = 2.0f;
  p.beta = 0.5f;
  ops::gemm(f32(out, {2, 2}), f32(a, {2, 2}), f32(b, {2, 2}), p, cpu());
  EXPECT_EQ(out, (std::vector<float>{7, 14, 21, 28}));
}

TEST(OpsCpu, GemmAddendReplacesOutInTheBetaTerm) {
  // out = 2 * A B + 0.5 * addend, with out poisoned (not read) and the addend left untouched; then aliased.
  std::vector<float> a = {1, 2, 3, 4}, b = {1, 0, 0, 1}, add = {10, 20, 30, 40}, out(4, kNaN);
  Tensor ta = f32(add, {2, 2});
  ops::GemmParams p;
  p.alpha = 2.0f;
  p.beta = 0.5f;
  p.addend = &ta;
  ops::gemm(f32(out, {2, 2}), f32(a, {2, 2}), f32(b, {2, 2}), p, cpu());
  EXPECT_EQ(out, (std::vector<float>{7, 14, 21, 28}));
  EXPECT_EQ(add, (std::vector<float>{10, 20, 30, 40}));
  ops::gemm(ta, f32(a, {2, 2}), f32(b, {2, 2}), p, cpu());  // addend aliasing out
  EXPECT_EQ(add, (std::vector<float>{7, 14, 21, 28}));
}

TEST(OpsCpu, GemmShapeMismatchThrows) {
  std::vector<float> a(6), b(6), out(4);
  ops::GemmParams p;
  EXPECT_THROW(ops::gemm(f32(out, {2, 2}), f32(a, {2, 3}), f32(b, {2, 3}), p, cpu()), InternalError);
  std::vector<uint16_t> bf(6);
  Tensor a_bf(bf.data(), DType::BF16, Device::CPU, {2, 3});
  EXPECT_THROW(ops::gemm(f32(out, {2, 2}), a_bf, f32(b, {3, 2}), p, cpu()), InternalError);
}

// 512x64x512 as M x K x N and as M x N x K: every entry against a naive double dot product, and the time it takes.
TEST(OpsCpu, GemmMediumMatchesNaiveAndTiming) {
  struct Shape {
    int M, K, N;
  };
  for (Shape s : {Shape{512, 64, 512}, Shape{512, 512, 64}}) {
    const int M = s.M, K = s.K, N = s.N;
    std::vector<float> a = random_vec(M * K, 1), b = random_vec(K * N, 2), bt(N * K), out(M * N);
    for (int k = 0; k < K; ++k)
      for (int j = 0; j < N; ++j) bt[j * K + k] = b[k * N + j];
    for (int tb = 0; tb < 2; ++tb) {
      ops::GemmParams p;
      p.trans_b = tb;
      // Process CPU time as well as wall time: the first is what the product costs on a busy shared machine.
      const auto t0 = std::chrono::steady_clock::now();
      const std::clock_t c0 = std::clock();
      ops::gemm(f32(out, {M, N}), f32(a, {M, K}), tb ? f32(bt, {N, K}) : f32(b, {K, N}), p, cpu());
      const double cpu_ms = 1000.0 * static_cast<double>(std::clock() - c0) / CLOCKS_PER_SEC;
      const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      std::printf("gemm M=%d K=%d N=%d trans_b=%d: %.2f ms wall, %.2f ms cpu\n", M, K, N, tb, ms, cpu_ms);
      RecordProperty("gemm_" + std::to_string(M) + "x" + std::to_string(K) + "x" + std::to_string(N) +
                         (tb ? "_trans_b_ms" : "_ms"),
                     std::to_string(ms));
      double max_err = 0.0;
      for (int i = 0; i < M; ++i)
        for (int j = 0; j < N; ++j) {
          double acc = 0.0;
          for (int k = 0; k < K; ++k) acc += static_cast<double>(a[i * K + k]) * b[k * N + j];
          max_err = std::max(max_err, std::fabs(acc - out[i * N + j]));
        }
      EXPECT_LT(max_err, 1e-5 * std::sqrt(K / 64.0));
#ifdef NDEBUG
      EXPECT_LT(cpu_ms, 500.0) << "gemm far slower than expected";
#endif
    }
  }
}

TEST(OpsCpu, BiasAddAndGrad) {
  std::vector<float> out = {1, 2, 3, 4, 5, 6}, bias = {10, 20, 30};
  ops::bias_add(f32(out, {2, 3}), f32(bias, {3}), cpu());
  EXPECT_EQ(out, (std::vector<float>{11, 22, 33, 14, 25, 36}));
  std::vector<float> dbias = {1, 1, 1}, dy = {1, 2, 3, 4, 5, 6};
  ops::bias_grad(f32(dbias, {3}), f32(dy, {2, 3}), cpu());
  EXPECT_EQ(dbias, (std::vector<float>{6, 8, 10}));  // accumulates
}

// ---- embedding ---------------------------------------------------------------------------------------------------

TEST(OpsCpu, EmbeddingGathersRows) {
  std::vector<float> table = {0, 1, 10, 11, 20, 21}, out(8, kNaN);
  std::vector<int32_t> ids = {2, 0, 2, 1};
  ops::embedding_fwd(f32(out, {4, 2}), f32(table, {3, 2}), i32(ids, {4}), cpu());
  EXPECT_EQ(out, (std::vector<float>{20, 21, 0, 1, 20, 21, 10, 11}));
  std::vector<float> dtable(6, 1.0f), dout = {1, 2, 3, 4, 5, 6, 7, 8};
  ops::embedding_bwd(f32(dtable, {3, 2}), f32(dout, {4, 2}), i32(ids, {4}), cpu());
  EXPECT_EQ(dtable, (std::vector<float>{4, 5, 8, 9, 7, 9}));  // row 2 gets tokens 0 and 2, all accumulate
}

TEST(OpsCpu, EmbeddingRejectsIdOutsideVocab) {
  std::vector<float> table(6), out(2);
  std::vector<int32_t> ids = {3};
  try {
    ops::embedding_fwd(f32(out, {1, 2}), f32(table, {3, 2}), i32(ids, {1}), cpu());
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("outside the vocabulary"), std::string::npos) << e.what();
  }
  ids[0] = -1;
  EXPECT_THROW(ops::embedding_fwd(f32(out, {1, 2}), f32(table, {3, 2}), i32(ids, {1}), cpu()), Error);
}

// ---- RMSNorm -----------------------------------------------------------------------------------------------------

TEST(OpsCpu, RmsnormKnownRow) {
  std::vector<float> x = {3, 4, 0, 0, -2, 0}, w = {1, 2}, out(6), rstd(3);
  const float eps = 1e-6f;
  ops::rmsnorm_fwd(f32(out, {3, 2}), f32(rstd, {3}), f32(x, {3, 2}), f32(w, {2}), eps, cpu());
  const double r0 = 1.0 / std::sqrt(12.5 + 1e-6);  // mean(9, 16) = 12.5
  EXPECT_NEAR(rstd[0], r0, 1e-6 * r0);
  EXPECT_NEAR(out[0], 3 * r0, 1e-6);
  EXPECT_NEAR(out[1], 8 * r0, 1e-6);
  EXPECT_NEAR(rstd[1], 1.0 / std::sqrt(1e-6), 1.0);  // all-zero row: rstd = 1/sqrt(eps), out = 0
  EXPECT_EQ(out[2], 0.0f);
  EXPECT_NEAR(out[4], -2 / std::sqrt(2.0 + 1e-6), 1e-6);
}

TEST(OpsCpu, RmsnormPerHeadRowsAndAliasing) {
  // QK-norm: x[T=2, heads=3, hd=4] normalised per head; out aliases x.
  std::vector<float> x = random_vec(24, 3), x0 = x, w = random_vec(4, 4), rstd(6);
  ops::rmsnorm_fwd(f32(x, {2, 3, 4}), f32(rstd, {2, 3}), f32(x, {2, 3, 4}), f32(w, {4}), 1e-5f, cpu());
  for (int r = 0; r < 6; ++r) {
    double ss = 0;
    for (int d = 0; d < 4; ++d) ss += double(x0[r * 4 + d]) * x0[r * 4 + d];
    const double rs = 1.0 / std::sqrt(ss / 4 + 1e-5);
    for (int d = 0; d < 4; ++d) EXPECT_NEAR(x[r * 4 + d], x0[r * 4 + d] * rs * w[d], 1e-5);
  }
  std::vector<float> bad_rstd(5);
  EXPECT_THROW(ops::rmsnorm_fwd(f32(x, {2, 3, 4}), f32(bad_rstd, {5}), f32(x, {2, 3, 4}), f32(w, {4}), 1e-5f, cpu()),
               InternalError);
}

// ---- RoPE --------------------------------------------------------------------------------------------------------

TEST(OpsCpu, RopePositionZeroIsIdentity) {
  std::vector<float> x = random_vec(2 * 3 * 6, 5), out(x.size());
  std::vector<int32_t> pos = {0, 0};
  std::vector<float> inv_freq = {1.0f, 0.1f, 0.01f};
  ops::rope_fwd(f32(out, {2, 3, 6}), f32(x, {2, 3, 6}), i32(pos, {2}), f32(inv_freq, {3}), cpu());
  EXPECT_EQ(out, x);
}

TEST(OpsCpu, RopeHalfSplitRotation) {
  // hd = 4: pairs (0,2) with inv_freq[0] and (1,3) with inv_freq[1]; position 3.
  std::vector<float> x = {1, 2, 3, 4}, out(4);
  std::vector<int32_t> pos = {3};
  std::vector<float> inv_freq = {0.5f, 0.25f};
  ops::rope_fwd(f32(out, {1, 1, 4}), f32(x, {1, 1, 4}), i32(pos, {1}), f32(inv_freq, {2}), cpu());
  const double a0 = 1.5, a1 = 0.75;
  EXPECT_NEAR(out[0], 1 * std::cos(a0) - 3 * std::sin(a0), 1e-6);
  EXPECT_NEAR(out[2], 3 * std::cos(a0) + 1 * std::sin(a0), 1e-6);
  EXPECT_NEAR(out[1], 2 * std::cos(a1) - 4 * std::sin(a1), 1e-6);
  EXPECT_NEAR(out[3], 4 * std::cos(a1) + 2 * std::sin(a1), 1e-6);
  // In place, then the transpose rotation (rope_bwd) undoes it.
  std::vector<float> y = x;
  ops::rope_fwd(f32(y, {1, 1, 4}), f32(y, {1, 1, 4}), i32(pos, {1}), f32(inv_freq, {2}), cpu());
  EXPECT_EQ(y, out);
  ops::rope_bwd(f32(y, {1, 1, 4}), f32(y, {1, 1, 4}), i32(pos, {1}), f32(inv_freq, {2}), cpu());
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(y[i], x[i], 1e-6);
}

TEST(OpsCpu, RopeRejectsOddHeadDim) {
  std::vector<float> x(3), inv_freq(1);
  std::vector<int32_t> pos = {0};
  EXPECT_THROW(ops::rope_fwd(f32(x, {1, 1, 3}), f32(x, {1, 1, 3}), i32(pos, {1}), f32(inv_freq, {1}), cpu()),
               InternalError);
}

// ---- attention -----------------------------------------------------------------------------------------------------

namespace {
// Independent formula: full score matrix over all tokens with -inf outside the causal same-sequence mask.
void naive_attention(std::vector<double>& out, std::vector<double>& lse, const std::vector<float>& q,
                     const std::vector<float>& k, const std::vector<float>& v, const std::vector<int32_t>& cu, int T,
                     int nq, int nkv, int hd, double scale) {
  std::vector<int> seq_of(T);
  for (size_t s = 0; s + 1 < cu.size(); ++s)
    for (int t = cu[s]; t < cu[s + 1]; ++t) seq_of[t] = static_cast<int>(s);
  out.assign(size_t(T) * nq * hd, 0.0);
  lse.assign(size_t(T) * nq, 0.0);
  for (int i = 0; i < T; ++i)
    for (int h = 0; h < nq; ++h) {
      const int g = h / (nq / nkv);
      std::vector<double> s(T, -INFINITY);
      for (int j = 0; j < T; ++j) {
        if (seq_of[j] != seq_of[i] || j > i) continue;
        double d = 0;
        for (int e = 0; e < hd; ++e) d += double(q[(i * nq + h) * hd + e]) * k[(j * nkv + g) * hd + e];
        s[j] = d * scale;
      }
      double z = 0;
      for (int j = 0; j < T; ++j) z += std::exp(s[j]);
      lse[i * nq + h] = std::log(z);
      for (int j = 0; j < T; ++j)
        for (int e = 0; e < hd; ++e) out[(i * nq + h) * hd + e] += std::exp(s[j]) / z * v[(j * nkv + g) * hd + e];
    }
}
}  // namespace

TEST(OpsCpu, AttentionSingleTokenReturnsV) {
  // Three sequences of one token each, GQA 4:2: head h of token t returns v[t, h/2].
  const int T = 3, nq = 4, nkv = 2, hd = 3;
  std::vector<float> q = random_vec(T * nq * hd, 6), k = random_vec(T * nkv * hd, 7), v = random_vec(T * nkv * hd, 8);
  std::vector<float> out(T * nq * hd, kNaN), lse(T * nq, kNaN);
  std::vector<int32_t> cu = {0, 1, 2, 3};
  ops::AttentionParams p;
  p.num_seqs = 3;
  p.max_seqlen = 1;
  p.scale = 0.5f;
  ops::attention_fwd(f32(out, {T, nq, hd}), f32(lse, {T, nq}), f32(q, {T, nq, hd}), f32(k, {T, nkv, hd}),
                     f32(v, {T, nkv, hd}), i32(cu, {4}), p, cpu());
  for (int t = 0; t < T; ++t)
    for (int h = 0; h < nq; ++h) {
      for (int e = 0; e < hd; ++e) EXPECT_EQ(out[(t * nq + h) * hd + e], v[(t * nkv + h / 2) * hd + e]);
      double qk = 0;
      for (int e = 0; e < hd; ++e) qk += double(q[(t * nq + h) * hd + e]) * k[(t * nkv + h / 2) * hd + e];
      EXPECT_NEAR(lse[t * nq + h], 0.5 * qk, 1e-6);  // one score: lse is the score itself
    }
}

TEST(OpsCpu, AttentionZeroQueryAveragesPrefix) {
  // q = 0: uniform weights over the causal prefix of the token's own sequence; lse = log(prefix length).
  const int T = 5, hd = 2;
  std::vector<float> q(T * hd, 0.0f), k = random_vec(T * hd, 9), v = {1, 0, 3, 0, 5, 0, 10, 1, 20, 2};
  std::vector<float> out(T * hd), lse(T);
  std::vector<int32_t> cu = {0, 3, 5};
  ops::AttentionParams p;
  p.num_seqs = 2;
  p.max_seqlen = 3;
  p.scale = 1.0f;
  ops::attention_fwd(f32(out, {T, 1, hd}), f32(lse, {T, 1}), f32(q, {T, 1, hd}), f32(k, {T, 1, hd}),
                     f32(v, {T, 1, hd}), i32(cu, {3}), p, cpu());
  const std::vector<float> want = {1, 0, 2, 0, 3, 0, 10, 1, 15, 1.5f};
  for (int i = 0; i < T * hd; ++i) EXPECT_NEAR(out[i], want[i], 1e-6) << i;
  const std::vector<double> want_lse = {0, std::log(2.0), std::log(3.0), 0, std::log(2.0)};
  for (int t = 0; t < T; ++t) EXPECT_NEAR(lse[t], want_lse[t], 1e-6);
}

TEST(OpsCpu, AttentionMatchesMaskedSoftmax) {
  const int T = 9, nq = 6, nkv = 2, hd = 5;
  std::vector<int32_t> cu = {0, 4, 5, 9};
  std::vector<float> q = random_vec(T * nq * hd, 10), k = random_vec(T * nkv * hd, 11),
                     v = random_vec(T * nkv * hd, 12), out(T * nq * hd), lse(T * nq);
  ops::AttentionParams p;
  p.num_seqs = 3;
  p.max_seqlen = 4;
  p.scale = 1.0f / std::sqrt(5.0f);
  ops::attention_fwd(f32(out, {T, nq, hd}), f32(lse, {T, nq}), f32(q, {T, nq, hd}), f32(k, {T, nkv, hd}),
                     f32(v, {T, nkv, hd}), i32(cu, {4}), p, cpu());
  std::vector<double> want, want_lse;
  naive_attention(want, want_lse, q, k, v, cu, T, nq, nkv, hd, p.scale);
  for (size_t i = 0; i < want.size(); ++i) EXPECT_NEAR(out[i], want[i], 1e-6) << i;
  for (size_t i = 0; i < want_lse.size(); ++i) EXPECT_NEAR(lse[i], want_lse[i], 1e-6) << i;
}

// The CUDA attention op's path choice (kernels/attention_select.cpp): plain C++, so it is checked here.
TEST(OpsCpu, AttentionPathSelection) {
  using cuda::AttentionPath;
  EXPECT_EQ(cuda::select_attention_path(DType::BF16, 64, true), AttentionPath::Fast);
  EXPECT_EQ(cuda::select_attention_path(DType::BF16, 128, true), AttentionPath::Fast);
  EXPECT_EQ(cuda::select_attention_path(DType::BF16, 128, false), AttentionPath::Generic);  // misaligned
  for (int hd : {1, 32, 63, 65, 96, 127, 129, 256, 512})
    EXPECT_EQ(cuda::select_attention_path(DType::BF16, hd, true), AttentionPath::Generic) << hd;
  EXPECT_EQ(cuda::select_attention_path(DType::F32, 64, true), AttentionPath::Generic);
  EXPECT_EQ(cuda::select_attention_path(DType::F32, 128, true), AttentionPath::Generic);
  // elements per lane: the smallest of 1, 2, 4, 8, 16 with 32 lanes covering the head dim
  const std::vector<std::pair<int, int>> per_lane = {{1, 1},   {32, 1},   {33, 2},   {64, 2},   {65, 4},  {128, 4},
                                                     {129, 8}, {256, 8}, {257, 16}, {512, 16}};
  for (const auto& [hd, n] : per_lane) EXPECT_EQ(cuda::generic_per_lane(hd), n) << hd;
  EXPECT_EQ(cuda::kMaxGenericHeadDim, 32 * cuda::generic_per_lane(cuda::kMaxGenericHeadDim));
}

TEST(OpsCpu, AttentionRejectsBadPacking) {
  const int T = 4;
  std::vector<float> q(T * 2), out(T * 2), lse(T);
  std::vector<int32_t> cu = {0, 3, 3};  // does not cover T
  ops::AttentionParams p;
  p.num_seqs = 2;
  p.max_seqlen = 4;
  p.scale = 1.0f;
  auto run = [&] {
    ops::attention_fwd(f32(out, {T, 1, 2}), f32(lse, {T, 1}), f32(q, {T, 1, 2}), f32(q, {T, 1, 2}),
                       f32(q, {T, 1, 2}), i32(cu, {3}), p, cpu());
  };
  EXPECT_THROW(run(), InternalError);
  cu = {0, 3, 4};
  p.max_seqlen = 2;  // sequence 0 is longer
  EXPECT_THROW(run(), InternalError);
  p.max_seqlen = 3;
  EXPECT_NO_THROW(run());
  p.scale = 0.0f;  // unset scale
  EXPECT_THROW(run(), InternalError);
}

TEST(OpsCpu, AttentionBackwardRejectsWrongGradShape) {
  const int T = 2;
  std::vector<float> q(T * 4, 0.5f), kv(T * 2, 0.5f), out(T * 4), lse(T * 2), dq(T * 4), dk(T * 2), dv(T * 4);
  std::vector<int32_t> cu = {0, 2};
  ops::AttentionParams p;
  p.num_seqs = 1;
  p.max_seqlen = 2;
  p.scale = 1.0f;
  // q[T,2,2], k/v[T,1,2]; dv is given the query shape.
  EXPECT_THROW(ops::attention_bwd(f32(dq, {T, 2, 2}), f32(dk, {T, 1, 2}), f32(dv, {T, 2, 2}), f32(q, {T, 2, 2}),
                                  f32(q, {T, 2, 2}), f32(kv, {T, 1, 2}), f32(kv, {T, 1, 2}), f32(out, {T, 2, 2}),
                                  f32(lse, {T, 2}), i32(cu, {2}), p, cpu()),
               InternalError);
}

// ---- SwiGLU ------------------------------------------------------------------------------------------------------

TEST(OpsCpu, SwigluKnownValues) {
  // One token, I = 3: gate = (0, 1, -2), up = (5, 2, 3).
  std::vector<float> gu = {0, 1, -2, 5, 2, 3}, out(3, kNaN);
  ops::swiglu_fwd(f32(out, {1, 3}), f32(gu, {1, 6}), cpu());
  EXPECT_EQ(out[0], 0.0f);
  EXPECT_NEAR(out[1], 2.0 / (1.0 + std::exp(-1.0)), 1e-6);
  EXPECT_NEAR(out[2], 3.0 * -2.0 / (1.0 + std::exp(2.0)), 1e-6);
  std::vector<float> bad(5);
  EXPECT_THROW(ops::swiglu_fwd(f32(out, {1, 3}), f32(bad, {1, 5}), cpu()), InternalError);
}

// ---- elementwise -------------------------------------------------------------------------------------------------

TEST(OpsCpu, ElementwiseOps) {
  std::vector<float> a = {1, 2, 3}, b = {10, 20, 30};
  ops::add(f32(a, {3}), f32(a, {3}), f32(b, {1, 3}), cpu());  // aliasing, different shapes, same numel
  EXPECT_EQ(a, (std::vector<float>{11, 22, 33}));
  ops::scale(f32(a, {3}), f32(a, {3}), -0.5f, cpu());
  EXPECT_EQ(a, (std::vector<float>{-5.5f, -11, -16.5f}));
  ops::fill(f32(b, {3}), 2.5f, cpu());
  EXPECT_EQ(b, (std::vector<float>{2.5f, 2.5f, 2.5f}));

  std::vector<float> src = {1.0f, 1.0f + std::ldexp(1.0f, -8) * 3, -7.25f};
  std::vector<uint16_t> bf(3);
  Tensor tb(bf.data(), DType::BF16, Device::CPU, {3});
  ops::cast(tb, f32(src, {3}), cpu());
  EXPECT_EQ(bf16_to_f32(bf[0]), 1.0f);
  EXPECT_EQ(bf16_to_f32(bf[1]), 1.0f + std::ldexp(1.0f, -6));  // rounded to nearest even
  EXPECT_EQ(bf16_to_f32(bf[2]), -7.25f);
  std::vector<float> back(3, kNaN);
  ops::cast(f32(back, {3}), tb, cpu());
  EXPECT_EQ(back, (std::vector<float>{1.0f, 1.0f + std::ldexp(1.0f, -6), -7.25f}));
  std::vector<uint16_t> half = {0x3c00, 0xc000};  // f16 1.0, -2.0
  ops::cast(f32(back, {2}), Tensor(half.data(), DType::F16, Device::CPU, {2}), cpu());
  EXPECT_EQ(back[0], 1.0f);
  EXPECT_EQ(back[1], -2.0f);
  ops::fill(tb, 3.0f, cpu());
  EXPECT_EQ(bf16_to_f32(bf[1]), 3.0f);
  std::vector<int32_t> ids(2);
  ops::fill(i32(ids, {2}), -1.0f, cpu());
  EXPECT_EQ(ids, (std::vector<int32_t>{-1, -1}));
  EXPECT_THROW(ops::fill(i32(ids, {2}), 0.5f, cpu()), InternalError);
  EXPECT_THROW(ops::add(f32(a, {3}), f32(a, {3}), f32(src, {2}), cpu()), InternalError);
}

// ---- log-prob head -------------------------------------------------------------------------------------------------

namespace {
// Independent formula: full [T,V] logits, log-softmax, gather, entropy = -sum p log p.
void naive_logprob(std::vector<double>& logprob, std::vector<double>& entropy, std::vector<double>& lse,
                   const std::vector<float>& hidden, const std::vector<float>& weight,
                   const std::vector<int32_t>& targets, int T, int H, int V, double inv_temp) {
  logprob.assign(T, 0.0);
  entropy.assign(T, 0.0);
  lse.assign(T, 0.0);
  for (int t = 0; t < T; ++t) {
    std::vector<double> z(V);
    double mx = -INFINITY;
    for (int v = 0; v < V; ++v) {
      double d = 0;
      for (int h = 0; h < H; ++h) d += double(hidden[t * H + h]) * weight[v * H + h];
      z[v] = d * inv_temp;
      mx = std::max(mx, z[v]);
    }
    double s = 0;
    for (int v = 0; v < V; ++v) s += std::exp(z[v] - mx);
    lse[t] = mx + std::log(s);
    if (targets[t] < 0) continue;
    logprob[t] = z[targets[t]] - lse[t];
    for (int v = 0; v < V; ++v) {
      const double lp = z[v] - lse[t];
      entropy[t] -= std::exp(lp) * lp;
    }
  }
}
}  // namespace

TEST(OpsCpu, LogprobZeroWeightIsUniform) {
  // All logits equal: logprob = -log V, entropy = log V.
  const int T = 2, H = 3, V = 7;
  std::vector<float> hidden = random_vec(T * H, 13), weight(V * H, 0.0f), lp(T), ent(T), lse(T);
  std::vector<int32_t> tg = {6, 0};
  ops::LogprobParams p;
  ops::logprob_fwd(f32(lp, {T}), f32(ent, {T}), f32(lse, {T}), f32(hidden, {T, H}), f32(weight, {V, H}),
                   i32(tg, {T}), p, cpu());
  for (int t = 0; t < T; ++t) {
    EXPECT_NEAR(lp[t], -std::log(7.0), 1e-6);
    EXPECT_NEAR(ent[t], std::log(7.0), 1e-6);
    EXPECT_NEAR(lse[t], std::log(7.0), 1e-6);
  }
}

TEST(OpsCpu, LogprobSoftmaxSumsToOne) {
  // The same hidden row with every vocabulary entry as target: the probabilities sum to 1.
  const int H = 4, V = 300;  // V spans more than one vocabulary block
  std::vector<float> row = random_vec(H, 14, -2, 2), weight = random_vec(V * H, 15), hidden(V * H);
  for (int t = 0; t < V; ++t)
    for (int h = 0; h < H; ++h) hidden[t * H + h] = row[h];
  std::vector<int32_t> tg(V);
  for (int t = 0; t < V; ++t) tg[t] = t;
  std::vector<float> lp(V), lse(V);
  ops::LogprobParams p;
  p.inv_temperature = 1.0f / 0.7f;
  ops::logprob_fwd(f32(lp, {V}), Tensor(), f32(lse, {V}), f32(hidden, {V, H}), f32(weight, {V, H}), i32(tg, {V}), p,
                   cpu());
  double s = 0;
  for (int t = 0; t < V; ++t) s += std::exp(double(lp[t]));
  EXPECT_NEAR(s, 1.0, 1e-5);
}

TEST(OpsCpu, LogprobMatchesNaiveWithMaskedTargets) {
  const int T = 6, H = 5, V = 517;
  std::vector<float> hidden = random_vec(T * H, 16, -2, 2), weight = random_vec(V * H, 17), lp(T, kNaN),
                     ent(T, kNaN), lse(T, kNaN);
  std::vector<int32_t> tg = {3, -1, 516, 0, -1, 257};
  ops::LogprobParams p;
  p.inv_temperature = 1.25f;
  ops::logprob_fwd(f32(lp, {T}), f32(ent, {T}), f32(lse, {T}), f32(hidden, {T, H}), f32(weight, {V, H}),
                   i32(tg, {T}), p, cpu());
  std::vector<double> wlp, went, wlse;
  naive_logprob(wlp, went, wlse, hidden, weight, tg, T, H, V, 1.25);
  for (int t = 0; t < T; ++t) {
    EXPECT_NEAR(lp[t], wlp[t], 1e-5) << t;
    EXPECT_NEAR(ent[t], went[t], 1e-5) << t;
    EXPECT_NEAR(lse[t], wlse[t], 1e-5) << t;
  }
  EXPECT_EQ(lp[1], 0.0f);
  EXPECT_EQ(ent[4], 0.0f);
  tg[0] = V;
  EXPECT_THROW(ops::logprob_fwd(f32(lp, {T}), f32(ent, {T}), f32(lse, {T}), f32(hidden, {T, H}),
                                f32(weight, {V, H}), i32(tg, {T}), p, cpu()),
               Error);
}

// ---- optimizer -----------------------------------------------------------------------------------------------------

TEST(OpsCpu, SumSquares) {
  std::vector<float> x = {1, -2, 3, 0.5f}, out = {kNaN};
  ops::sum_squares(f32(out, {1}), f32(x, {4}), cpu());
  EXPECT_EQ(out[0], 14.25f);
  std::vector<float> big = random_vec(100001, 18);
  double want = 0;
  for (float v : big) want += double(v) * v;
  ops::sum_squares(f32(out, {1}), f32(big, {100001}), cpu());
  EXPECT_NEAR(out[0], want, 1e-6 * want);
}

TEST(OpsCpu, AdamwMatchesDoubleReference) {
  const int n = 37;
  std::vector<float> master = random_vec(n, 19), m(n, 0.0f), v(n, 0.0f);
  std::vector<uint16_t> wbf(n);
  std::vector<double> rw(master.begin(), master.end()), rm(n, 0.0), rv(n, 0.0);
  ops::AdamWParams p;
  p.lr = 1e-2f;
  p.beta1 = 0.9f;
  p.beta2 = 0.95f;
  p.eps = 1e-8f;
  p.weight_decay = 0.1f;
  p.grad_scale = 0.5f;
  for (int step = 1; step <= 5; ++step) {
    std::vector<float> grad = random_vec(n, 100 + step, -3, 3);
    p.step = step;
    ops::adamw_update(f32(master, {n}), f32(m, {n}), f32(v, {n}), Tensor(wbf.data(), DType::BF16, Device::CPU, {n}),
                      f32(grad, {n}), p, cpu());
    const double b1 = p.beta1, b2 = p.beta2;
    for (int i = 0; i < n; ++i) {
      const double g = double(grad[i]) * 0.5;
      rm[i] = b1 * rm[i] + (1 - b1) * g;
      rv[i] = b2 * rv[i] + (1 - b2) * g * g;
      const double mhat = rm[i] / (1 - std::pow(b1, step)), vhat = rv[i] / (1 - std::pow(b2, step));
      rw[i] -= double(p.lr) * (mhat / (std::sqrt(vhat) + double(p.eps)) + double(p.weight_decay) * rw[i]);
    }
    for (int i = 0; i < n; ++i) {
      EXPECT_NEAR(master[i], rw[i], 1e-6) << "step " << step << " i " << i;
      EXPECT_NEAR(m[i], rm[i], 1e-6);
      EXPECT_NEAR(v[i], rv[i], 1e-6);
      EXPECT_EQ(wbf[i], f32_to_bf16(master[i]));
    }
  }
  // First step moves every weight by about lr (|mhat / sqrt(vhat)| = 1) plus the decay.
  std::vector<float> w1 = {1.0f}, m1 = {0}, v1 = {0}, g1 = {-4.0f};
  p.step = 1;
  ops::adamw_update(f32(w1, {1}), f32(m1, {1}), f32(v1, {1}), Tensor(), f32(g1, {1}), p, cpu());
  EXPECT_NEAR(w1[0], 1.0 + 1e-2 - 1e-2 * 0.1, 1e-6);
  p.step = 0;
  EXPECT_THROW(ops::adamw_update(f32(w1, {1}), f32(m1, {1}), f32(v1, {1}), Tensor(), f32(g1, {1}), p, cpu()),
               InternalError);
}
