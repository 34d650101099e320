// The CPU thread pool (include/rlcu/parallel.h) and the threaded CPU kernels: parallel_for visits every chunk once
// with a partition that does not depend on the thread count, and every threaded op gives bitwise the same outputs
// with 1, 2 and 3 threads. Shapes are chosen so that each op is cut into several chunks (odd sizes, ragged last
// chunk), so a partition that depended on the thread count, or a reduction split across threads, would show.
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <functional>
#include <mutex>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "rlcu/ops.h"
#include "rlcu/parallel.h"

using namespace rlcu;

namespace {

// Restores the process's thread count after a test.
struct ThreadsGuard {
  int saved = cpu_threads();
  ~ThreadsGuard() { set_cpu_threads(saved); }
};

std::vector<float> random_vec(size_t n, uint64_t seed, float lo = -1.0f, float hi = 1.0f) {
  std::mt19937_64 g(seed);
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = d(g);
  return v;
}

Tensor f32(std::vector<float>& v, std::vector<int64_t> dims) { return Tensor(v.data(), DType::F32, Device::CPU, dims); }
Tensor i32(std::vector<int32_t>& v, std::vector<int64_t> dims) {
  return Tensor(v.data(), DType::I32, Device::CPU, dims);
}

// Runs `op` (which fills the float buffers it returns from fresh copies of its inputs) with 1, 2 and 3 threads and
// expects the same bytes from each.
void expect_thread_invariant(const std::string& name, const std::function<std::vector<std::vector<float>>()>& op) {
  ThreadsGuard guard;
  set_cpu_threads(1);
  const std::vector<std::vector<float>> want = op();
  ASSERT_FALSE(want.empty()) << name;
  for (int threads : {2, 3}) {
    set_cpu_threads(threads);
    ASSERT_EQ(cpu_threads(), threads);
    const std::vector<std::vector<float>> got = op();
    ASSERT_EQ(got.size(), want.size()) << name;
    for (size_t i = 0; i < want.size(); ++i) {
      ASSERT_EQ(got[i].size(), want[i].size()) << name << " output " << i;
      bool finite = true;
      for (float x : want[i]) finite = finite && std::isfinite(x);
      EXPECT_TRUE(finite) << name << " output " << i << " has a non-finite value";
      EXPECT_EQ(std::memcmp(got[i].data(), want[i].data(), want[i].size() * sizeof(float)), 0)
          << name << ": output " << i << " differs between 1 and " << threads << " threads";
    }
  }
}

}  // namespace

// ---- the pool --------------------------------------------------------------------------------------------------

TEST(CpuThreads, ParallelForVisitsEachChunkOnceWithAFixedPartition) {
  ThreadsGuard guard;
  for (int threads : {1, 2, 3, 5}) {
    set_cpu_threads(threads);
    for (int64_t n : {int64_t{1}, int64_t{7}, int64_t{100}, int64_t{1001}}) {
      for (int64_t grain : {int64_t{1}, int64_t{3}, int64_t{64}, int64_t{5000}}) {
        std::mutex mu;
        std::set<std::pair<int64_t, int64_t>> chunks;
        std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
        parallel_for(n, grain, [&](int64_t b, int64_t e) {
          for (int64_t i = b; i < e; ++i) hits[i].fetch_add(1);
          std::lock_guard<std::mutex> lock(mu);
          EXPECT_TRUE(chunks.emplace(b, e).second) << "chunk [" << b << ", " << e << ") ran twice";
        });
        for (int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[i].load(), 1) << "n=" << n << " grain=" << grain << " i=" << i;
        std::set<std::pair<int64_t, int64_t>> want;
        for (int64_t b = 0; b < n; b += grain) want.emplace(b, std::min(n, b + grain));
        EXPECT_EQ(chunks, want) << "threads=" << threads << " n=" << n << " grain=" << grain;
      }
    }
  }
}

TEST(CpuThreads, ZeroMeansAllCoresAndNestedCallsRunInline) {
  ThreadsGuard guard;
  set_cpu_threads(0);
  EXPECT_EQ(cpu_threads(), cpu_cores());
  set_cpu_threads(3);
  std::atomic<int64_t> sum{0};
  parallel_for(10, 1, [&](int64_t b, int64_t e) {
    parallel_for(20, 3, [&](int64_t b2, int64_t e2) { sum.fetch_add((e - b) * (e2 - b2)); });
  });
  EXPECT_EQ(sum.load(), 200);
  parallel_for(0, 1, [&](int64_t, int64_t) { FAIL() << "no chunk for n = 0"; });
}

TEST(CpuThreads, AnExceptionOfAChunkReachesTheCaller) {
  ThreadsGuard guard;
  for (int threads : {1, 3}) {
    set_cpu_threads(threads);
    EXPECT_THROW(parallel_for(50, 2,
                              [&](int64_t b, int64_t) {
                                if (b == 20) throw std::runtime_error("chunk 10");
                              }),
                 std::runtime_error);
    // The pool still works afterwards.
    std::atomic<int> n{0};
    parallel_for(50, 2, [&](int64_t, int64_t) { n.fetch_add(1); });
    EXPECT_EQ(n.load(), 25);
  }
}

// ---- the threaded ops ------------------------------------------------------------------------------------------

TEST(CpuThreads, GemmAndBiasAreBitwiseTheSameOnAnyThreadCount) {
  const int64_t M = 67, N = 301, K = 45;
  for (int ta = 0; ta < 2; ++ta) {
    for (int tb = 0; tb < 2; ++tb) {
      for (float beta : {0.0f, 1.0f}) {
        expect_thread_invariant(fmt::format("gemm ta={} tb={} beta={}", ta, tb, beta), [&] {
          std::vector<float> a = random_vec(M * K, 1), b = random_vec(K * N, 2), out = random_vec(M * N, 3);
          ops::GemmParams p;
          p.trans_a = ta;
          p.trans_b = tb;
          p.alpha = 0.75f;
          p.beta = beta;
          ops::gemm(f32(out, {M, N}), ta ? f32(a, {K, M}) : f32(a, {M, K}), tb ? f32(b, {N, K}) : f32(b, {K, N}), p,
                    Context::cpu());
          return std::vector<std::vector<float>>{out};
        });
      }
    }
  }
  expect_thread_invariant("bias_add", [&] {
    std::vector<float> out = random_vec(M * N, 4), bias = random_vec(N, 5);
    ops::bias_add(f32(out, {M, N}), f32(bias, {N}), Context::cpu());
    return std::vector<std::vector<float>>{out};
  });
}

TEST(CpuThreads, LogprobHeadIsBitwiseTheSameOnAnyThreadCount) {
  const int64_t T = 83, H = 40, V = 600;  // three vocabulary segments, the last ragged
  std::vector<int32_t> targets(T);
  for (int64_t t = 0; t < T; ++t) targets[t] = t % 11 == 5 ? -1 : static_cast<int32_t>((t * 37) % V);
  for (int saved = 0; saved < 2; ++saved) {
    expect_thread_invariant(fmt::format("logprob fwd+bwd saved_softmax={}", saved), [&] {
      std::vector<float> hidden = random_vec(T * H, 6, -2, 2), weight = random_vec(V * H, 7, -0.5f, 0.5f);
      std::vector<float> logprob(T), entropy(T), lse(T), dlogprob = random_vec(T, 8), dentropy = random_vec(T, 9);
      std::vector<float> dhidden(T * H), dweight = random_vec(V * H, 10);
      const int64_t scols = ops::logprob_prob_stats_cols(V);
      std::vector<float> probs(saved ? T * V : 0), stats(saved ? T * scols : 0);
      Tensor probs_t = f32(probs, {T, V}), stats_t = f32(stats, {T, scols});
      ops::LogprobParams p;
      p.inv_temperature = 1.3f;
      if (saved) {
        p.probs = &probs_t;
        p.prob_stats = &stats_t;
      }
      ops::logprob_fwd(f32(logprob, {T}), f32(entropy, {T}), f32(lse, {T}), f32(hidden, {T, H}), f32(weight, {V, H}),
                       i32(targets, {T}), p, Context::cpu());
      ops::logprob_bwd(f32(dhidden, {T, H}), f32(dweight, {V, H}), f32(dlogprob, {T}), f32(dentropy, {T}),
                       f32(hidden, {T, H}), f32(weight, {V, H}), i32(targets, {T}), f32(lse, {T}), p, Context::cpu());
      std::vector<std::vector<float>> outs{logprob, entropy, lse, dhidden, dweight};
      if (saved) {
        outs.push_back(probs);
        outs.push_back(stats);
      }
      return outs;
    });
  }
}

TEST(CpuThreads, AttentionIsBitwiseTheSameOnAnyThreadCount) {
  const int64_t nq = 4, nkv = 2, hd = 16;
  std::vector<int32_t> cu = {0, 37, 38, 90, 131, 200};  // five sequences, one of a single token
  const int64_t T = cu.back();
  const int S = static_cast<int>(cu.size()) - 1;
  expect_thread_invariant("attention fwd+bwd", [&] {
    std::vector<float> q = random_vec(T * nq * hd, 11), k = random_vec(T * nkv * hd, 12),
                       v = random_vec(T * nkv * hd, 13), dout = random_vec(T * nq * hd, 14);
    std::vector<float> out(T * nq * hd), lse(T * nq), dq(T * nq * hd), dk(T * nkv * hd), dv(T * nkv * hd);
    ops::AttentionParams p;
    p.num_seqs = S;
    p.max_seqlen = 69;
    p.scale = 0.25f;
    ops::attention_fwd(f32(out, {T, nq, hd}), f32(lse, {T, nq}), f32(q, {T, nq, hd}), f32(k, {T, nkv, hd}),
                       f32(v, {T, nkv, hd}), i32(cu, {S + 1}), p, Context::cpu());
    ops::attention_bwd(f32(dq, {T, nq, hd}), f32(dk, {T, nkv, hd}), f32(dv, {T, nkv, hd}), f32(dout, {T, nq, hd}),
                       f32(q, {T, nq, hd}), f32(k, {T, nkv, hd}), f32(v, {T, nkv, hd}), f32(out, {T, nq, hd}),
                       f32(lse, {T, nq}), i32(cu, {S + 1}), p, Context::cpu());
    return std::vector<std::vector<float>>{out, lse, dq, dk, dv};
  });
}

TEST(CpuThreads, PagedAttentionDecodeIsBitwiseTheSameOnAnyThreadCount) {
  const int64_t B = 9, nq = 4, nkv = 2, hd = 16, bs = 16, max_blocks = 4, slots = 48 * bs;
  std::vector<int32_t> lens = {0, 1, 17, 33, 64, 5, 40, 2, 63};
  std::vector<int32_t> tables(B * max_blocks);
  for (int64_t i = 0; i < B * max_blocks; ++i) tables[i] = static_cast<int32_t>((i * 7) % 48);
  expect_thread_invariant("paged_attention_decode", [&] {
    std::vector<float> q = random_vec(B * nq * hd, 15), kc = random_vec(slots * nkv * hd, 16),
                       vc = random_vec(slots * nkv * hd, 17), out(B * nq * hd);
    std::vector<float> ws;
    ops::PagedAttentionParams p;
    p.block_size = static_cast<int>(bs);
    p.scale = 0.25f;
    ops::paged_attention_decode(f32(out, {B, nq, hd}), f32(q, {B, nq, hd}), f32(kc, {slots, nkv, hd}),
                                f32(vc, {slots, nkv, hd}), i32(tables, {B, max_blocks}), i32(lens, {B}), Tensor(), p,
                                Context::cpu());
    return std::vector<std::vector<float>>{out};
  });
}

TEST(CpuThreads, RmsnormSwigluElementwiseAndAdamwAreBitwiseTheSameOnAnyThreadCount) {
  const int64_t rows = 1031, dim = 72, inter = 56, n = 70001;
  expect_thread_invariant("rmsnorm fwd+bwd", [&] {
    std::vector<float> x = random_vec(rows * dim, 18, -3, 3), w = random_vec(dim, 19), out(rows * dim), rstd(rows);
    std::vector<float> dout = random_vec(rows * dim, 20), dx(rows * dim), dw = random_vec(dim, 21);
    ops::rmsnorm_fwd(f32(out, {rows, dim}), f32(rstd, {rows}), f32(x, {rows, dim}), f32(w, {dim}), 1e-6f,
                     Context::cpu());
    ops::rmsnorm_bwd(f32(dx, {rows, dim}), f32(dw, {dim}), f32(dout, {rows, dim}), f32(x, {rows, dim}),
                     f32(w, {dim}), f32(rstd, {rows}), Context::cpu());
    return std::vector<std::vector<float>>{out, rstd, dx, dw};
  });
  expect_thread_invariant("swiglu fwd+bwd", [&] {
    std::vector<float> gu = random_vec(rows * 2 * inter, 22, -4, 4), out(rows * inter);
    std::vector<float> dout = random_vec(rows * inter, 23), dgu(rows * 2 * inter);
    ops::swiglu_fwd(f32(out, {rows, inter}), f32(gu, {rows, 2 * inter}), Context::cpu());
    ops::swiglu_bwd(f32(dgu, {rows, 2 * inter}), f32(dout, {rows, inter}), f32(gu, {rows, 2 * inter}),
                    Context::cpu());
    return std::vector<std::vector<float>>{out, dgu};
  });
  expect_thread_invariant("add, scale", [&] {
    std::vector<float> a = random_vec(n, 24), b = random_vec(n, 25), sum(n), scaled(n);
    ops::add(f32(sum, {n}), f32(a, {n}), f32(b, {n}), Context::cpu());
    ops::scale(f32(scaled, {n}), f32(a, {n}), 0.3f, Context::cpu());
    return std::vector<std::vector<float>>{sum, scaled};
  });
  expect_thread_invariant("adamw_update", [&] {
    std::vector<float> master = random_vec(n, 26), m = random_vec(n, 27, -0.1f, 0.1f),
                       v = random_vec(n, 28, 0.0f, 0.01f), grad = random_vec(n, 29), weights(n);
    ops::AdamWParams p;
    p.lr = 1e-3f;
    p.weight_decay = 0.01f;
    p.grad_scale = 0.5f;
    p.step = 3;
    ops::adamw_update(f32(master, {n}), f32(m, {n}), f32(v, {n}), f32(weights, {n}), f32(grad, {n}), p,
                      Context::cpu());
    return std::vector<std::vector<float>>{master, m, v, weights};
  });
}
