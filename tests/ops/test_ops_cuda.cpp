// CUDA ops against their CPU twins (include/rlcu/ops.h on CUDA vs CPU tensors), all ops except attention.
//
// Every case draws fresh random inputs (the seed is printed with any failure), builds them on the host, runs the
// CPU op on F32 copies (rounded to bf16 first when the CUDA side is bf16, so only arithmetic differences remain),
// runs the CUDA op on guarded device tensors (outputs poisoned with NaN, sentinels after the end) and compares with
// the tolerance of the arithmetic's dtype from tol_for(). Shapes include 1, odd sizes and non-multiples of
// 8/32/128; reductions that must be deterministic are run twice and compared bit for bit.
//
// With RLCU_OPS_BENCH=1 the suite also times the fused log-prob head at T=32768, H=1024, V=151936 (several chunk
// shapes) and the memory-bound ops at model sizes, with CUDA events (warm-up, median of several runs).
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "ops/gpu_test_util.h"
#include "ops_cuda_internal.h"
#include "rlcu/cuda_check.h"
#include "rlcu/ops.h"

using namespace rlcu;
using rlcu::test::expect_close;
using rlcu::test::fresh_seed;
using rlcu::test::GuardedTensor;
using rlcu::test::make_guarded;
using rlcu::test::random_vec;
using rlcu::test::Tol;
using rlcu::test::tol_for;
using rlcu::test::gpu;
using rlcu::test::host;
using rlcu::test::settle;
using rlcu::test::rounded;
using rlcu::test::dev;
using rlcu::test::dev_out;
using rlcu::test::hf;
using rlcu::test::hi;
using rlcu::test::expect_tensor;

namespace {

std::vector<float> as_float(const std::vector<int32_t>& v) { return std::vector<float>(v.begin(), v.end()); }

std::vector<float> download(const GuardedTensor& g) {
  settle();
  return to_host_f32(g.t);
}

std::vector<int32_t> random_ids(size_t n, int64_t lo, int64_t hi_excl, uint64_t seed) {
  std::mt19937_64 g(seed);
  std::uniform_int_distribution<int64_t> d(lo, hi_excl - 1);
  std::vector<int32_t> v(n);
  for (auto& x : v) x = static_cast<int32_t>(d(g));
  return v;
}

const char* dn(DType t) { return dtype_name(t); }

const DType kFloatTypes[] = {DType::F32, DType::BF16};

// bf16 operands go through the tensor cores, whose fp32 accumulation is not IEEE round-to-nearest (products are
// aligned and summed in groups with truncation): bf16 arithmetic takes the bf16 row of the table even when the
// output is stored as f32.
Tol gemm_tol(DType operands, DType out) { return operands == DType::BF16 ? tol_for(DType::BF16) : tol_for(out); }

}  // namespace

// ---- gemm --------------------------------------------------------------------------------------------------------

TEST(OpsCuda, GemmMatchesCpu) {
  RLCU_REQUIRE_CUDA();
  struct Shape {
    int64_t m, n, k;
  };
  const Shape shapes[] = {{1, 1, 1},       {7, 13, 5},  {33, 17, 129}, {128, 96, 64},
                          {257, 130, 300}, {64, 1, 77}, {1, 200, 31}};
  struct Types {
    DType ab, out;
  };
  const Types types[] = {{DType::F32, DType::F32}, {DType::BF16, DType::BF16}, {DType::BF16, DType::F32}};
  for (const Shape& s : shapes)
    for (int ta = 0; ta < 2; ++ta)
      for (int tb = 0; tb < 2; ++tb)
        for (const Types& ty : types)
          for (float beta : {0.0f, 1.0f}) {
            const uint64_t seed = fresh_seed();
            const std::vector<int64_t> ash = ta ? std::vector<int64_t>{s.k, s.m} : std::vector<int64_t>{s.m, s.k};
            const std::vector<int64_t> bsh = tb ? std::vector<int64_t>{s.n, s.k} : std::vector<int64_t>{s.k, s.n};
            std::vector<float> a = rounded(random_vec(s.m * s.k, seed), ty.ab);
            std::vector<float> b = rounded(random_vec(s.k * s.n, seed + 1), ty.ab);
            std::vector<float> out0 = rounded(random_vec(s.m * s.n, seed + 2), ty.out);
            ops::GemmParams p;
            p.trans_a = ta;
            p.trans_b = tb;
            p.alpha = beta == 0.0f ? 1.0f : 0.5f;
            p.beta = beta;
            std::vector<float> want = out0;
            ops::gemm(hf(want, {s.m, s.n}), hf(a, ash), hf(b, bsh), p, host());
            GuardedTensor ga = dev(ty.ab, ash, a), gb = dev(ty.ab, bsh, b);
            for (cuda::GemmPath path : {cuda::GemmPath::Auto, cuda::GemmPath::Fallback}) {
              GuardedTensor go = beta == 0.0f ? dev_out(ty.out, {s.m, s.n}) : dev(ty.out, {s.m, s.n}, out0);
              settle();
              if (path == cuda::GemmPath::Auto) ops::gemm(go.t, ga.t, gb.t, p, gpu());
              else cuda::gemm_with_path(go.t, ga.t, gb.t, p, path, gpu());
              const std::string what = fmt::format("gemm {}x{}x{} ta={} tb={} {}->{} beta={} path={} seed={}", s.m, s.n,
                                                   s.k, ta, tb, dn(ty.ab), dn(ty.out), beta,
                                                   path == cuda::GemmPath::Auto ? "cublaslt" : "fallback", seed);
              expect_tensor(go, want, gemm_tol(ty.ab, ty.out), what);
            }
          }
}

TEST(OpsCuda, GemmWithAddendMatchesCpu) {
  RLCU_REQUIRE_CUDA();
  // out = alpha op(a) op(b) + beta * addend: the residual-add fusion of the model (out poisoned, addend guarded).
  for (const DType ab : {DType::F32, DType::BF16})
    for (int64_t m : {1, 37, 300})
      for (cuda::GemmPath path : {cuda::GemmPath::Auto, cuda::GemmPath::Fallback}) {
        const int64_t n = 72, k = 129;
        const uint64_t seed = fresh_seed();
        std::vector<float> a = rounded(random_vec(m * k, seed), ab), b = rounded(random_vec(n * k, seed + 1), ab);
        std::vector<float> add = rounded(random_vec(m * n, seed + 2), ab);
        ops::GemmParams p;
        p.trans_b = true;
        p.beta = 1.0f;
        std::vector<float> want = add;
        ops::gemm(hf(want, {m, n}), hf(a, {m, k}), hf(b, {n, k}), p, host());
        GuardedTensor ga = dev(ab, {m, k}, a), gb = dev(ab, {n, k}, b), gadd = dev(ab, {m, n}, add);
        GuardedTensor go = dev_out(ab, {m, n});
        p.addend = &gadd.t;
        settle();
        cuda::gemm_with_path(go.t, ga.t, gb.t, p, path, gpu());
        const std::string what = fmt::format("gemm+addend {}x{}x{} {} path={} seed={}", m, n, k, dn(ab),
                                             path == cuda::GemmPath::Auto ? "cublaslt" : "fallback", seed);
        expect_tensor(go, want, gemm_tol(ab, ab), what);
        expect_tensor(gadd, add, tol_for(DType::F32), what + " (addend untouched)");
      }
}

TEST(OpsCuda, GemmEmptyInnerDimension) {
  RLCU_REQUIRE_CUDA();
  // K = 0: out = beta * out; beta = 0 must not read the (NaN-poisoned) output.
  GuardedTensor a = dev_out(DType::BF16, {4, 0}), b = dev_out(DType::BF16, {0, 3});
  GuardedTensor o = dev_out(DType::F32, {4, 3});
  ops::GemmParams p;
  ops::gemm(o.t, a.t, b.t, p, gpu());
  expect_tensor(o, std::vector<float>(12, 0.0f), tol_for(DType::F32), "gemm K=0 beta=0");
  std::vector<float> init = random_vec(12, fresh_seed()), want = init;
  for (float& x : want) x *= 2.0f;
  GuardedTensor o2 = dev(DType::F32, {4, 3}, init);
  p.beta = 2.0f;
  settle();
  ops::gemm(o2.t, a.t, b.t, p, gpu());
  expect_tensor(o2, want, tol_for(DType::F32), "gemm K=0 beta=2");
}

TEST(OpsCuda, BiasAddAndGradMatchCpu) {
  RLCU_REQUIRE_CUDA();
  const std::pair<int64_t, int64_t> shapes[] = {{1, 1}, {3, 7}, {129, 33}, {1000, 1024}, {5, 130}, {20000, 9}};
  for (auto [rows, cols] : shapes)
    for (DType ot : kFloatTypes)
      for (DType bt : kFloatTypes) {
        const uint64_t seed = fresh_seed();
        std::vector<float> out0 = rounded(random_vec(rows * cols, seed), ot);
        std::vector<float> bias = rounded(random_vec(cols, seed + 1), bt);
        std::vector<float> want = out0;
        ops::bias_add(hf(want, {rows, cols}), hf(bias, {cols}), host());
        GuardedTensor go = dev(ot, {rows, cols}, out0), gbias = dev(bt, {cols}, bias);
        settle();
        ops::bias_add(go.t, gbias.t, gpu());
        expect_tensor(go, want, tol_for(ot),
                      fmt::format("bias_add {}x{} out {} bias {} seed={}", rows, cols, dn(ot), dn(bt), seed));
      }
  for (auto [rows, cols] : shapes)
    for (DType dt : kFloatTypes) {
      const uint64_t seed = fresh_seed();
      std::vector<float> dy = rounded(random_vec(rows * cols, seed), dt);
      std::vector<float> db0 = random_vec(cols, seed + 1), want = db0;
      ops::bias_grad(hf(want, {cols}), hf(dy, {rows, cols}), host());
      GuardedTensor gdy = dev(dt, {rows, cols}, dy);
      GuardedTensor g1 = dev(DType::F32, {cols}, db0), g2 = dev(DType::F32, {cols}, db0);
      settle();
      ops::bias_grad(g1.t, gdy.t, gpu());
      ops::bias_grad(g2.t, gdy.t, gpu());
      const std::string what = fmt::format("bias_grad {}x{} dy {} seed={}", rows, cols, dn(dt), seed);
      // An fp32 sum of `rows` terms of size <= 1 (the CPU twin sums in fp64): the rounding error grows about as
      // sqrt(rows), and a near-zero column has no relative slack.
      const Tol sum_tol{tol_for(DType::F32).rel, tol_for(DType::F32).abs * std::max(1.0, std::sqrt(rows / 100.0))};
      expect_tensor(g1, want, sum_tol, what);
      EXPECT_EQ(download(g1), download(g2)) << what << ": not bit-reproducible";
    }
}

// ---- embedding ---------------------------------------------------------------------------------------------------

TEST(OpsCuda, EmbeddingMatchesCpu) {
  RLCU_REQUIRE_CUDA();
  struct Shape {
    int64_t vocab, hidden, tokens;
  };
  const Shape shapes[] = {{1, 1, 1}, {50, 7, 33}, {1000, 64, 257}, {300, 1024, 513}, {17, 130, 1000}, {3, 8, 4096}};
  for (const Shape& s : shapes) {
    for (DType tt : kFloatTypes)
      for (DType ot : kFloatTypes) {
        const uint64_t seed = fresh_seed();
        std::vector<float> table = rounded(random_vec(s.vocab * s.hidden, seed), tt);
        std::vector<int32_t> ids = random_ids(s.tokens, 0, s.vocab, seed + 1);
        std::vector<float> want(s.tokens * s.hidden);
        ops::embedding_fwd(hf(want, {s.tokens, s.hidden}), hf(table, {s.vocab, s.hidden}), hi(ids, {s.tokens}), host());
        GuardedTensor gt = dev(tt, {s.vocab, s.hidden}, table), gi = dev(DType::I32, {s.tokens}, as_float(ids));
        GuardedTensor go = dev_out(ot, {s.tokens, s.hidden});
        settle();
        ops::embedding_fwd(go.t, gt.t, gi.t, gpu());
        expect_tensor(go, rounded(want, ot), tol_for(ot),
                      fmt::format("embedding_fwd V={} H={} T={} table {} out {} seed={}", s.vocab, s.hidden, s.tokens,
                                  dn(tt), dn(ot), seed));
      }
    for (DType dt : kFloatTypes) {
      const uint64_t seed = fresh_seed();
      // Gradient-sized values: the CPU twin sums repeated ids in fp32, so its own rounding stays under the f32 row.
      std::vector<float> dout = rounded(random_vec(s.tokens * s.hidden, seed, -0.1f, 0.1f), dt);
      std::vector<int32_t> ids = random_ids(s.tokens, 0, s.vocab, seed + 1);
      std::vector<float> dt0 = random_vec(s.vocab * s.hidden, seed + 2), want = dt0;
      ops::embedding_bwd(hf(want, {s.vocab, s.hidden}), hf(dout, {s.tokens, s.hidden}), hi(ids, {s.tokens}), host());
      GuardedTensor gd = dev(dt, {s.tokens, s.hidden}, dout), gi = dev(DType::I32, {s.tokens}, as_float(ids));
      GuardedTensor g1 = dev(DType::F32, {s.vocab, s.hidden}, dt0), g2 = dev(DType::F32, {s.vocab, s.hidden}, dt0);
      settle();
      ops::embedding_bwd(g1.t, gd.t, gi.t, gpu());
      ops::embedding_bwd(g2.t, gd.t, gi.t, gpu());
      const std::string what =
          fmt::format("embedding_bwd V={} H={} T={} dout {} seed={}", s.vocab, s.hidden, s.tokens, dn(dt), seed);
      expect_tensor(g1, want, tol_for(DType::F32), what);
      gi.check_guards(what + " ids");
      EXPECT_EQ(download(g1), download(g2)) << what << ": not bit-reproducible";
    }
  }
}

TEST(OpsCuda, EmbeddingOutOfRangeIdsAreZeroRowsAndNoGradient) {
  RLCU_REQUIRE_CUDA();
  const int64_t V = 5, H = 16;
  std::vector<float> table = random_vec(V * H, fresh_seed());
  std::vector<int32_t> ids = {2, -1, 5, 4};
  GuardedTensor gt = dev(DType::F32, {V, H}, table), gi = dev(DType::I32, {4}, as_float(ids));
  GuardedTensor go = dev_out(DType::F32, {4, H});
  settle();
  ops::embedding_fwd(go.t, gt.t, gi.t, gpu());
  std::vector<float> want(4 * H, 0.0f);
  for (int64_t h = 0; h < H; ++h) {
    want[0 * H + h] = table[2 * H + h];
    want[3 * H + h] = table[4 * H + h];
  }
  expect_tensor(go, want, tol_for(DType::F32), "embedding_fwd out-of-range ids");
  std::vector<float> dout = random_vec(4 * H, fresh_seed()), dtab(V * H, 0.0f), wantd(V * H, 0.0f);
  for (int64_t h = 0; h < H; ++h) {
    wantd[2 * H + h] = dout[0 * H + h];
    wantd[4 * H + h] = dout[3 * H + h];
  }
  GuardedTensor gd = dev(DType::F32, {4, H}, dout), gdt = dev(DType::F32, {V, H}, dtab);
  settle();
  ops::embedding_bwd(gdt.t, gd.t, gi.t, gpu());
  expect_tensor(gdt, wantd, tol_for(DType::F32), "embedding_bwd out-of-range ids");
}

// ---- RMSNorm -----------------------------------------------------------------------------------------------------

TEST(OpsCuda, RmsnormMatchesCpu) {
  RLCU_REQUIRE_CUDA();
  // Covers 4..32 lanes per row, 1..4 vectors per lane (fused backward), wider rows (two-pass dweight) and the
  // element-wise path (odd widths).
  const std::pair<int64_t, int64_t> shapes[] = {{1, 1},    {3, 7},      {17, 128}, {33, 1024}, {5, 1000},
                                                {1000, 64}, {2, 4099},  {4096, 128}, {50, 24}, {9, 40},
                                                {300, 512}, {7, 2048}};
  const float eps = 1e-6f;
  for (auto [rows, dim] : shapes)
    for (DType xt : kFloatTypes)
      for (DType wt : kFloatTypes) {
        const uint64_t seed = fresh_seed();
        std::vector<float> x = rounded(random_vec(rows * dim, seed, -2.0f, 2.0f), xt);
        std::vector<float> w = rounded(random_vec(dim, seed + 1, 0.5f, 1.5f), wt);
        std::vector<float> out(rows * dim), rstd(rows);
        ops::rmsnorm_fwd(hf(out, {rows, dim}), hf(rstd, {rows}), hf(x, {rows, dim}), hf(w, {dim}), eps, host());
        const std::string tag = fmt::format("rmsnorm {}x{} x {} w {} seed={}", rows, dim, dn(xt), dn(wt), seed);
        GuardedTensor gx = dev(xt, {rows, dim}, x), gw = dev(wt, {dim}, w);
        GuardedTensor go = dev_out(xt, {rows, dim}), gr = dev_out(DType::F32, {rows});
        settle();
        ops::rmsnorm_fwd(go.t, gr.t, gx.t, gw.t, eps, gpu());
        expect_tensor(go, out, tol_for(xt), tag + " out");
        expect_tensor(gr, rstd, tol_for(DType::F32), tag + " rstd");

        std::vector<float> dout = rounded(random_vec(rows * dim, seed + 2), xt);
        std::vector<float> dx(rows * dim), dw0 = random_vec(dim, seed + 3), dw = dw0;
        ops::rmsnorm_bwd(hf(dx, {rows, dim}), hf(dw, {dim}), hf(dout, {rows, dim}), hf(x, {rows, dim}), hf(w, {dim}),
                         hf(rstd, {rows}), host());
        GuardedTensor gdo = dev(xt, {rows, dim}, dout), grs = dev(DType::F32, {rows}, rstd);
        GuardedTensor gdx = dev_out(xt, {rows, dim});
        GuardedTensor gdw1 = dev(DType::F32, {dim}, dw0), gdw2 = dev(DType::F32, {dim}, dw0);
        settle();
        ops::rmsnorm_bwd(gdx.t, gdw1.t, gdo.t, gx.t, gw.t, grs.t, gpu());
        expect_tensor(gdx, dx, tol_for(xt), tag + " dx");
        expect_tensor(gdw1, dw, tol_for(DType::F32), tag + " dweight");
        GuardedTensor gdx2 = dev_out(xt, {rows, dim});
        settle();
        ops::rmsnorm_bwd(gdx2.t, gdw2.t, gdo.t, gx.t, gw.t, grs.t, gpu());
        EXPECT_EQ(download(gdw1), download(gdw2)) << tag << ": dweight not bit-reproducible";
        // dx may alias dout.
        GuardedTensor gio = dev(xt, {rows, dim}, dout), gdw3 = dev(DType::F32, {dim}, dw0);
        settle();
        ops::rmsnorm_bwd(gio.t, gdw3.t, gio.t, gx.t, gw.t, grs.t, gpu());
        expect_tensor(gio, dx, tol_for(xt), tag + " dx in place");
        expect_tensor(gdw3, dw, tol_for(DType::F32), tag + " dweight (dx in place)");
      }
}

// The F32 residual stream: x F32 with BF16 out / dout / dx, and rmsnorm_bwd_add (dx += the input gradient).
TEST(OpsCuda, RmsnormF32ResidualAndBwdAddMatchCpu) {
  RLCU_REQUIRE_CUDA();
  const std::pair<int64_t, int64_t> shapes[] = {{1, 1}, {3, 7}, {17, 128}, {33, 1024}, {5, 1000}, {2, 4099},
                                                {300, 512}, {7, 2048}, {9, 40}};
  const float eps = 1e-6f;
  for (auto [rows, dim] : shapes)
    for (DType xt : kFloatTypes)
      for (DType gt : kFloatTypes) {
        if (xt == DType::BF16 && gt == DType::F32) continue;  // only an F32 x may feed a narrower activation
        const uint64_t seed = fresh_seed();
        const std::string tag = fmt::format("rmsnorm {}x{} x {} act {} seed={}", rows, dim, dn(xt), dn(gt), seed);
        std::vector<float> x = rounded(random_vec(rows * dim, seed, -2.0f, 2.0f), xt);
        std::vector<float> w = rounded(random_vec(dim, seed + 1, 0.5f, 1.5f), DType::BF16);
        std::vector<float> out(rows * dim), rstd(rows);
        ops::rmsnorm_fwd(hf(out, {rows, dim}), hf(rstd, {rows}), hf(x, {rows, dim}), hf(w, {dim}), eps, host());
        GuardedTensor gx = dev(xt, {rows, dim}, x), gw = dev(DType::BF16, {dim}, w);
        GuardedTensor go = dev_out(gt, {rows, dim}), gr = dev_out(DType::F32, {rows});
        settle();
        ops::rmsnorm_fwd(go.t, gr.t, gx.t, gw.t, eps, gpu());
        expect_tensor(go, out, tol_for(gt), tag + " out");
        expect_tensor(gr, rstd, tol_for(DType::F32), tag + " rstd");

        // dx = dx0 + rmsnorm_bwd(dout): the CPU twin against the CUDA op.
        std::vector<float> dout = rounded(random_vec(rows * dim, seed + 2), gt);
        std::vector<float> dx0 = rounded(random_vec(rows * dim, seed + 4), gt), dx = dx0;
        std::vector<float> dw0 = random_vec(dim, seed + 3), dw = dw0;
        ops::rmsnorm_bwd_add(hf(dx, {rows, dim}), hf(dw, {dim}), hf(dout, {rows, dim}), hf(x, {rows, dim}),
                             hf(w, {dim}), hf(rstd, {rows}), host());
        GuardedTensor gdo = dev(gt, {rows, dim}, dout), grs = dev(DType::F32, {rows}, rstd);
        GuardedTensor gdx = dev(gt, {rows, dim}, dx0), gdw = dev(DType::F32, {dim}, dw0);
        settle();
        ops::rmsnorm_bwd_add(gdx.t, gdw.t, gdo.t, gx.t, gw.t, grs.t, gpu());
        expect_tensor(gdx, dx, tol_for(gt), tag + " dx (add)");
        expect_tensor(gdw, dw, tol_for(DType::F32), tag + " dweight (add)");
        if (gt != xt) {
          // plain rmsnorm_bwd with the mixed dtypes
          std::vector<float> dxp(rows * dim), dwp = dw0;
          ops::rmsnorm_bwd(hf(dxp, {rows, dim}), hf(dwp, {dim}), hf(dout, {rows, dim}), hf(x, {rows, dim}),
                           hf(w, {dim}), hf(rstd, {rows}), host());
          GuardedTensor gdxp = dev_out(gt, {rows, dim}), gdwp = dev(DType::F32, {dim}, dw0);
          settle();
          ops::rmsnorm_bwd(gdxp.t, gdwp.t, gdo.t, gx.t, gw.t, grs.t, gpu());
          expect_tensor(gdxp, dxp, tol_for(gt), tag + " dx");
          expect_tensor(gdwp, dwp, tol_for(DType::F32), tag + " dweight");
        }
      }
  // A BF16 out for a BF16 x is the ordinary case; an F32 out for a BF16 x is rejected.
  GuardedTensor bx = dev(DType::BF16, {2, 8}, random_vec(16, fresh_seed())), bw = dev(DType::BF16, {8}, random_vec(8, 1));
  GuardedTensor fo = dev_out(DType::F32, {2, 8}), fr = dev_out(DType::F32, {2});
  EXPECT_THROW(ops::rmsnorm_fwd(fo.t, fr.t, bx.t, bw.t, 1e-6f, gpu()), Error);
}

// ---- RoPE --------------------------------------------------------------------------------------------------------

TEST(OpsCuda, RopeMatchesCpu) {
  RLCU_REQUIRE_CUDA();
  struct Shape {
    int64_t tokens, heads, hd;
  };
  const Shape shapes[] = {{1, 1, 2}, {7, 3, 64}, {33, 2, 128}, {5, 4, 6}, {300, 16, 128}, {3, 1, 130}, {65, 2, 80}};
  for (const Shape& s : shapes)
    for (DType xt : kFloatTypes)
      for (int in_place = 0; in_place < 2; ++in_place) {
        const uint64_t seed = fresh_seed();
        const int64_t half = s.hd / 2, n = s.tokens * s.heads * s.hd;
        std::vector<float> x = rounded(random_vec(n, seed), xt);
        std::vector<int32_t> pos = random_ids(s.tokens, 0, 32768, seed + 1);
        pos[0] = 0;
        std::vector<float> inv(half);
        for (int64_t i = 0; i < half; ++i)
          inv[i] = static_cast<float>(1.0 / std::pow(1e6, 2.0 * static_cast<double>(i) / static_cast<double>(s.hd)));
        const std::vector<int64_t> sh = {s.tokens, s.heads, s.hd};
        std::vector<float> fwd(n), bwd(n);
        ops::rope_fwd(hf(fwd, sh), hf(x, sh), hi(pos, {s.tokens}), hf(inv, {half}), host());
        ops::rope_bwd(hf(bwd, sh), hf(x, sh), hi(pos, {s.tokens}), hf(inv, {half}), host());
        const std::string tag = fmt::format("rope {}x{}x{} {} in_place={} seed={}", s.tokens, s.heads, s.hd, dn(xt),
                                            in_place, seed);
        GuardedTensor gp = dev(DType::I32, {s.tokens}, as_float(pos)), gf = dev(DType::F32, {half}, inv);
        for (int dir = 0; dir < 2; ++dir) {
          GuardedTensor gx = dev(xt, sh, x);
          GuardedTensor go = in_place ? GuardedTensor() : dev_out(xt, sh);
          const Tensor& out = in_place ? gx.t : go.t;
          settle();
          if (dir == 0) ops::rope_fwd(out, gx.t, gp.t, gf.t, gpu());
          else ops::rope_bwd(out, gx.t, gp.t, gf.t, gpu());
          expect_tensor(in_place ? gx : go, dir == 0 ? fwd : bwd, tol_for(xt), tag + (dir == 0 ? " fwd" : " bwd"));
        }
      }
}

// ---- SwiGLU ------------------------------------------------------------------------------------------------------

TEST(OpsCuda, SwigluMatchesCpu) {
  RLCU_REQUIRE_CUDA();
  const std::pair<int64_t, int64_t> shapes[] = {{1, 1}, {3, 7}, {33, 128}, {100, 1000}, {7, 4097}, {64, 3072}};
  for (auto [tokens, inter] : shapes)
    for (DType dt : kFloatTypes) {
      const uint64_t seed = fresh_seed();
      std::vector<float> gu = rounded(random_vec(tokens * 2 * inter, seed, -4.0f, 4.0f), dt);
      std::vector<float> dout = rounded(random_vec(tokens * inter, seed + 1), dt);
      std::vector<float> out(tokens * inter), dgu(tokens * 2 * inter);
      ops::swiglu_fwd(hf(out, {tokens, inter}), hf(gu, {tokens, 2 * inter}), host());
      ops::swiglu_bwd(hf(dgu, {tokens, 2 * inter}), hf(dout, {tokens, inter}), hf(gu, {tokens, 2 * inter}), host());
      const std::string tag = fmt::format("swiglu {}x{} {} seed={}", tokens, inter, dn(dt), seed);
      GuardedTensor ggu = dev(dt, {tokens, 2 * inter}, gu), gdo = dev(dt, {tokens, inter}, dout);
      GuardedTensor go = dev_out(dt, {tokens, inter}), gdgu = dev_out(dt, {tokens, 2 * inter});
      settle();
      ops::swiglu_fwd(go.t, ggu.t, gpu());
      ops::swiglu_bwd(gdgu.t, gdo.t, ggu.t, gpu());
      expect_tensor(go, out, tol_for(dt), tag + " fwd");
      expect_tensor(gdgu, dgu, tol_for(dt), tag + " bwd");
      // In place: dgate_up overwrites gate_up.
      settle();
      ops::swiglu_bwd(ggu.t, gdo.t, ggu.t, gpu());
      expect_tensor(ggu, dgu, tol_for(dt), tag + " bwd in place");
    }
}

// ---- elementwise -------------------------------------------------------------------------------------------------

TEST(OpsCuda, ElementwiseMatchesCpu) {
  RLCU_REQUIRE_CUDA();
  const int64_t sizes[] = {1, 7, 8, 9, 1000, 100003};
  for (int64_t n : sizes)
    for (int64_t offset : {0, 1}) {  // offset 1: misaligned views take the scalar path
      const int64_t total = n + offset;
      for (DType ot : kFloatTypes)
        for (DType at : kFloatTypes)
          for (DType bt : kFloatTypes) {
            const uint64_t seed = fresh_seed();
            std::vector<float> a = rounded(random_vec(total, seed), at), b = rounded(random_vec(total, seed + 1), bt);
            std::vector<float> want(n);
            for (int64_t i = 0; i < n; ++i) want[i] = a[offset + i] + b[offset + i];
            GuardedTensor ga = dev(at, {total}, a), gb = dev(bt, {total}, b), go = dev_out(ot, {total});
            settle();
            auto sub = [&](const GuardedTensor& g) {
              return Tensor(static_cast<char*>(g.t.data) + offset * dtype_size(g.t.dtype), g.t.dtype, Device::CUDA,
                            {n});
            };
            ops::add(sub(go), sub(ga), sub(gb), gpu());
            settle();
            std::vector<float> got = to_host_f32(go.t);
            got.erase(got.begin(), got.begin() + offset);
            expect_close(got, rounded(want, ot), tol_for(ot),
                         fmt::format("add n={} off={} {}={}+{} seed={}", n, offset, dn(ot), dn(at), dn(bt), seed));
            go.check_guards("add");
          }
      for (DType dt : kFloatTypes) {
        const uint64_t seed = fresh_seed();
        std::vector<float> x = rounded(random_vec(n, seed), dt), want(n);
        ops::scale(hf(want, {n}), hf(x, {n}), -1.75f, host());
        GuardedTensor gx = dev(dt, {n}, x), go = dev_out(dt, {n});
        settle();
        ops::scale(go.t, gx.t, -1.75f, gpu());
        expect_tensor(go, rounded(want, dt), tol_for(dt), fmt::format("scale n={} {} seed={}", n, dn(dt), seed));
        ops::scale(gx.t, gx.t, -1.75f, gpu());  // in place
        expect_tensor(gx, rounded(want, dt), tol_for(dt), fmt::format("scale in place n={} {}", n, dn(dt)));

        std::vector<float> fwant(n);
        ops::fill(hf(fwant, {n}), 0.3f, host());
        GuardedTensor gfill = dev_out(dt, {n});
        ops::fill(gfill.t, 0.3f, gpu());
        expect_tensor(gfill, rounded(fwant, dt), tol_for(dt), fmt::format("fill n={} {}", n, dn(dt)));
      }
      std::vector<int32_t> iwant(n);
      ops::fill(hi(iwant, {n}), -7.0f, host());
      GuardedTensor gi = dev_out(DType::I32, {n});
      ops::fill(gi.t, -7.0f, gpu());
      expect_tensor(gi, as_float(iwant), {0, 0}, fmt::format("fill i32 n={}", n));
      // cast: every supported pair (F16 inputs as raw bit patterns of finite halves).
      for (DType it : {DType::F32, DType::BF16, DType::F16})
        for (DType ot : kFloatTypes) {
          const uint64_t seed = fresh_seed();
          OwnedTensor hx = OwnedTensor::make(it, Device::CPU, {n});
          if (it == DType::F16) {
            std::mt19937 g(static_cast<uint32_t>(seed));
            for (int64_t i = 0; i < n; ++i) {
              uint16_t h;
              do h = static_cast<uint16_t>(g()); while (((h >> 10) & 0x1f) == 0x1f);
              hx.t.ptr<uint16_t>()[i] = h;
            }
          } else {
            from_host_f32(hx.t, random_vec(n, seed, -300.0f, 300.0f));
          }
          OwnedTensor hy = OwnedTensor::make(ot, Device::CPU, {n});
          ops::cast(hy.t, hx.t, host());
          GuardedTensor gx = make_guarded(it, Device::CUDA, {n}), go = dev_out(ot, {n});
          copy_bytes(gx.t, hx.t);
          settle();
          ops::cast(go.t, gx.t, gpu());
          settle();
          EXPECT_EQ(to_host_f32(go.t), to_host_f32(hy.t)) << "cast " << dn(it) << "->" << dn(ot) << " n=" << n;
          go.check_guards("cast");
        }
    }
}

// ---- optimizer ---------------------------------------------------------------------------------------------------

TEST(OpsCuda, SumSquaresMatchesCpuAndIsDeterministic) {
  RLCU_REQUIRE_CUDA();
  for (int64_t n : {int64_t(1), int64_t(3), int64_t(4), int64_t(1000), int64_t(1000003), int64_t(33554441)})
    for (DType dt : kFloatTypes) {
      const uint64_t seed = fresh_seed();
      std::vector<float> x = rounded(random_vec(n, seed), dt), want(1);
      ops::sum_squares(hf(want, {1}), hf(x, {n}), host());
      GuardedTensor gx = dev(dt, {n}, x), go = dev_out(DType::F32, {1}), go2 = dev_out(DType::F32, {1});
      settle();
      ops::sum_squares(go.t, gx.t, gpu());
      ops::sum_squares(go2.t, gx.t, gpu());
      const std::string what = fmt::format("sum_squares n={} {} seed={}", n, dn(dt), seed);
      expect_tensor(go, want, tol_for(DType::F32), what);
      EXPECT_EQ(download(go), download(go2)) << what << ": not bit-reproducible";
    }
}

TEST(OpsCuda, AdamwMatchesCpu) {
  RLCU_REQUIRE_CUDA();
  for (int64_t n : {int64_t(1), int64_t(5), int64_t(1000), int64_t(100001)})
    for (int64_t step : {int64_t(1), int64_t(7)})
      for (float wd : {0.0f, 0.1f})
        for (int wkind = 0; wkind < 3; ++wkind) {  // 0: no weights, 1: bf16, 2: f32
          const uint64_t seed = fresh_seed();
          std::vector<float> master = random_vec(n, seed), grad = random_vec(n, seed + 1, -3.0f, 3.0f);
          std::vector<float> m = random_vec(n, seed + 2, -0.1f, 0.1f), v = random_vec(n, seed + 3, 0.0f, 0.05f);
          ops::AdamWParams p;
          p.lr = 1e-3f;
          p.weight_decay = wd;
          p.grad_scale = 0.5f;
          p.step = step;
          const DType wt = wkind == 2 ? DType::F32 : DType::BF16;
          std::vector<float> hm = master, hmm = m, hv = v, hw(n, 0.0f);
          OwnedTensor hwt = OwnedTensor::make(wt, Device::CPU, {n});
          ops::adamw_update(hf(hm, {n}), hf(hmm, {n}), hf(hv, {n}), wkind ? hwt.t : Tensor(), hf(grad, {n}), p,
                            host());
          GuardedTensor gm = dev(DType::F32, {n}, master), gmm = dev(DType::F32, {n}, m), gv = dev(DType::F32, {n}, v);
          GuardedTensor gg = dev(DType::F32, {n}, grad), gw = dev_out(wt, {n});
          settle();
          ops::adamw_update(gm.t, gmm.t, gv.t, wkind ? gw.t : Tensor(), gg.t, p, gpu());
          const std::string tag = fmt::format("adamw n={} step={} wd={} weights={} seed={}", n, step, wd, wkind, seed);
          expect_tensor(gm, hm, tol_for(DType::F32), tag + " master");
          expect_tensor(gmm, hmm, tol_for(DType::F32), tag + " m");
          expect_tensor(gv, hv, tol_for(DType::F32), tag + " v");
          expect_tensor(gg, grad, {0, 0}, tag + " grad untouched");
          if (wkind) expect_tensor(gw, to_host_f32(hwt.t), tol_for(wt), tag + " weights");
        }
}

// ---- fused log-prob head -----------------------------------------------------------------------------------------

namespace {

struct HeadCase {
  int64_t tokens, hidden, vocab;
  int64_t chunk_tokens, chunk_vocab;  // 0: default chunking
  float inv_temperature;
};

// One CPU reference per (case, dtype, entropy); the CUDA side runs with both dhidden dtypes.
void run_head_case(const HeadCase& c, DType dt, bool with_entropy) {
  const uint64_t seed = fresh_seed();
  const int64_t T = c.tokens, H = c.hidden, V = c.vocab;
  const std::string tag = fmt::format("logprob T={} H={} V={} chunks={}x{} tau={} {} entropy={} seed={}", T, H, V,
                                      c.chunk_tokens, c.chunk_vocab, c.inv_temperature, dn(dt), with_entropy, seed);
  // Logits at an LM head's scale (|z| up to about 10): with |z| near 20 the fp32 rounding of the gradient chain
  // (logits GEMM -> exp -> dz -> GEMM) alone reaches the f32 tolerance on a few elements, on either side.
  std::vector<float> hidden = rounded(random_vec(T * H, seed), dt);
  std::vector<float> weight = rounded(random_vec(V * H, seed + 1, -0.5f, 0.5f), dt);
  std::vector<int32_t> targets = random_ids(T, -1, V, seed + 2);
  if (T > 1) targets[1] = -1;
  targets[0] = static_cast<int32_t>(V - 1);
  ops::LogprobParams p;
  p.inv_temperature = c.inv_temperature;

  std::vector<float> lp(T), ent(T), lse(T);
  ops::logprob_fwd(hf(lp, {T}), with_entropy ? hf(ent, {T}) : Tensor(), hf(lse, {T}), hf(hidden, {T, H}),
                   hf(weight, {V, H}), hi(targets, {T}), p, host());
  std::vector<float> dlp = random_vec(T, seed + 3), dent = random_vec(T, seed + 4);
  std::vector<float> dh(T * H), dw0 = random_vec(V * H, seed + 5), dw = dw0;
  ops::logprob_bwd(hf(dh, {T, H}), hf(dw, {V, H}), hf(dlp, {T}), with_entropy ? hf(dent, {T}) : Tensor(),
                   hf(hidden, {T, H}), hf(weight, {V, H}), hi(targets, {T}), hf(lse, {T}), p, host());

  cuda::set_logprob_chunking({c.chunk_tokens, c.chunk_vocab});
  GuardedTensor gh = dev(dt, {T, H}, hidden), gw = dev(dt, {V, H}, weight);
  GuardedTensor gt = dev(DType::I32, {T}, as_float(targets));
  GuardedTensor glp = dev_out(DType::F32, {T}), gent = dev_out(DType::F32, {T}), glse = dev_out(DType::F32, {T});
  settle();
  ops::logprob_fwd(glp.t, with_entropy ? gent.t : Tensor(), glse.t, gh.t, gw.t, gt.t, p, gpu());
  expect_tensor(glp, lp, tol_for(DType::F32), tag + " logprob");
  expect_tensor(glse, lse, tol_for(DType::F32), tag + " lse");
  if (with_entropy) expect_tensor(gent, ent, tol_for(DType::F32), tag + " entropy");

  // The saved softmax: the forward also writes probs / prob_stats (as the CPU twin does) and leaves its outputs
  // unchanged; the backward that reads them instead of recomputing the logits must give the CPU gradients too.
  const int64_t scols = ops::logprob_prob_stats_cols(V);
  std::vector<float> probs(T * V), stats(T * scols), lp_s(T), ent_s(T), lse_s(T);
  ops::LogprobParams ph = p;
  const Tensor probs_h = hf(probs, {T, V}), stats_h = hf(stats, {T, scols});
  ph.probs = &probs_h;
  ph.prob_stats = &stats_h;
  ops::logprob_fwd(hf(lp_s, {T}), with_entropy ? hf(ent_s, {T}) : Tensor(), hf(lse_s, {T}), hf(hidden, {T, H}),
                   hf(weight, {V, H}), hi(targets, {T}), ph, host());
  GuardedTensor gprobs = dev_out(dt, {T, V}), gstats = dev_out(DType::F32, {T, scols});
  GuardedTensor glp_s = dev_out(DType::F32, {T}), gent_s = dev_out(DType::F32, {T}), glse_s = dev_out(DType::F32, {T});
  ops::LogprobParams pg = p;
  pg.probs = &gprobs.t;
  pg.prob_stats = &gstats.t;
  settle();
  ops::logprob_fwd(glp_s.t, with_entropy ? gent_s.t : Tensor(), glse_s.t, gh.t, gw.t, gt.t, pg, gpu());
  expect_tensor(glp_s, lp, tol_for(DType::F32), tag + " saved: logprob");
  expect_tensor(glse_s, lse, tol_for(DType::F32), tag + " saved: lse");
  if (with_entropy) expect_tensor(gent_s, ent, tol_for(DType::F32), tag + " saved: entropy");
  expect_tensor(gprobs, rounded(probs, dt), tol_for(dt), tag + " saved: probs");
  expect_tensor(gstats, stats, tol_for(DType::F32), tag + " saved: prob_stats");

  // The backward reads the CPU's lse so that both sides differentiate at the same point; each path runs twice and
  // must be bit-reproducible.
  GuardedTensor glse_in = dev(DType::F32, {T}, lse), gdlp = dev(DType::F32, {T}, dlp);
  GuardedTensor gdent = dev(DType::F32, {T}, dent);
  for (const auto& [pp, path] : {std::pair<const ops::LogprobParams*, const char*>{&p, ""}, {&pg, " saved:"}})
    for (DType dht : kFloatTypes) {
      std::vector<float> first_dh, first_dw;
      for (int run = 0; run < 2; ++run) {
        GuardedTensor gdh = dev_out(dht, {T, H}), gdw = dev(DType::F32, {V, H}, dw0);
        settle();
        ops::logprob_bwd(gdh.t, gdw.t, gdlp.t, with_entropy ? gdent.t : Tensor(), gh.t, gw.t, gt.t, glse_in.t, *pp,
                         gpu());
        if (run == 1) {
          EXPECT_EQ(download(gdh), first_dh) << tag << path << " dhidden not bit-reproducible";
          EXPECT_EQ(download(gdw), first_dw) << tag << path << " dweight not bit-reproducible";
          continue;
        }
        // bf16 inputs: dz is rounded to bf16 before the two GEMMs, so the gradients carry bf16 arithmetic.
        const Tol gtol = dt == DType::BF16 ? tol_for(DType::BF16) : tol_for(dht);
        expect_tensor(gdh, rounded(dh, dht), gtol, fmt::format("{}{} dhidden({})", tag, path, dn(dht)));
        expect_tensor(gdw, dw, gtol, fmt::format("{}{} dweight (dhidden {})", tag, path, dn(dht)));
        first_dh = download(gdh);
        first_dw = download(gdw);
        // No head gradient (an empty dweight: a frozen head under LoRA): the same dhidden bits.
        GuardedTensor gdh0 = dev_out(dht, {T, H});
        settle();
        ops::logprob_bwd(gdh0.t, Tensor(), gdlp.t, with_entropy ? gdent.t : Tensor(), gh.t, gw.t, gt.t, glse_in.t,
                         *pp, gpu());
        EXPECT_EQ(download(gdh0), first_dh) << tag << path << " dhidden without dweight";
      }
    }
  cuda::set_logprob_chunking({});
}

}  // namespace

TEST(OpsCuda, LogprobHeadMatchesCpu) {
  RLCU_REQUIRE_CUDA();
  const HeadCase cases[] = {
      {1, 1, 1, 0, 0, 1.0f},          {3, 7, 5, 0, 0, 1.0f},
      {33, 64, 1000, 0, 0, 0.7f},     {130, 96, 4099, 64, 1024, 1.0f},
      {257, 128, 9001, 0, 0, 1.0f},   {77, 40, 515, 16, 128, 1.3f},
      {200, 72, 3001, 48, 1000, 1.0f},
  };
  for (const HeadCase& c : cases)
    for (DType dt : kFloatTypes)
      for (bool ent : {false, true}) run_head_case(c, dt, ent);
}

// ---- timings (RLCU_OPS_BENCH=1) ----------------------------------------------------------------------------------

namespace {

bool bench_enabled() {
  const char* v = std::getenv("RLCU_OPS_BENCH");
  return v && std::strcmp(v, "1") == 0;
}

// Median milliseconds of `reps` runs of f after one warm-up, timed with events on the op stream.
template <class F>
double time_ms(F&& f, int reps = 5) {
  auto s = static_cast<cudaStream_t>(gpu().stream());
  f();
  settle();
  cudaEvent_t a, b;
  RLCU_CUDA_CHECK(cudaEventCreate(&a));
  RLCU_CUDA_CHECK(cudaEventCreate(&b));
  std::vector<double> ms;
  for (int i = 0; i < reps; ++i) {
    RLCU_CUDA_CHECK(cudaEventRecord(a, s));
    f();
    RLCU_CUDA_CHECK(cudaEventRecord(b, s));
    RLCU_CUDA_CHECK(cudaEventSynchronize(b));
    float t = 0;
    RLCU_CUDA_CHECK(cudaEventElapsedTime(&t, a, b));
    ms.push_back(t);
  }
  RLCU_CUDA_CHECK(cudaEventDestroy(a));
  RLCU_CUDA_CHECK(cudaEventDestroy(b));
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

}  // namespace

TEST(OpsCudaBench, LogprobHeadQwen3Shape) {
  RLCU_REQUIRE_CUDA();
  if (!bench_enabled()) GTEST_SKIP() << "set RLCU_OPS_BENCH=1 to time the log-prob head";
  const int64_t T = 32768, H = 1024, V = 151936;
  const uint64_t seed = fresh_seed();
  std::vector<float> hidden = rounded(random_vec(T * H, seed, -1.7f, 1.7f), DType::BF16);
  std::vector<float> weight = rounded(random_vec(V * H, seed + 1, -0.035f, 0.035f), DType::BF16);
  std::vector<int32_t> targets = random_ids(T, 0, V, seed + 2);
  GuardedTensor gh = dev(DType::BF16, {T, H}, hidden), gw = dev(DType::BF16, {V, H}, weight);
  GuardedTensor gt = dev(DType::I32, {T}, as_float(targets));
  GuardedTensor glp = dev_out(DType::F32, {T}), gent = dev_out(DType::F32, {T}), glse = dev_out(DType::F32, {T});
  GuardedTensor gdlp = dev(DType::F32, {T}, random_vec(T, seed + 3)), gdh = dev_out(DType::BF16, {T, H});
  GuardedTensor gdw = dev(DType::F32, {V, H}, std::vector<float>(V * H, 0.0f));
  settle();
  ops::LogprobParams p;
  const double flop_fwd = 2.0 * T * V * H, flop_bwd = 6.0 * T * V * H;
  std::printf("\nlog-prob head, T=%lld H=%lld V=%lld, bf16 (fwd = logits + stats; bwd = logits + dz + 2 GEMMs)\n",
              static_cast<long long>(T), static_cast<long long>(H), static_cast<long long>(V));
  std::printf("%-14s %10s %10s %10s %12s %12s\n", "chunk TcxVc", "fwd ms", "bwd ms", "total ms", "fwd TFLOP/s",
              "bwd TFLOP/s");
  const std::pair<int64_t, int64_t> chunks[] = {{4096, 8192}, {8192, 8192}, {16384, 4096}, {8192, 16384},
                                                 {16384, 8192}, {16384, 16384}, {32768, 4096}};
  for (auto [tc, vc] : chunks) {
    cuda::set_logprob_chunking({tc, vc});
    const double fwd = time_ms([&] { ops::logprob_fwd(glp.t, gent.t, glse.t, gh.t, gw.t, gt.t, p, gpu()); });
    const double bwd =
        time_ms([&] { ops::logprob_bwd(gdh.t, gdw.t, gdlp.t, Tensor(), gh.t, gw.t, gt.t, glse.t, p, gpu()); });
    std::printf("%6lldx%-7lld %10.2f %10.2f %10.2f %12.0f %12.0f\n", static_cast<long long>(tc),
                static_cast<long long>(vc), fwd, bwd, fwd + bwd, flop_fwd / fwd / 1e9, flop_bwd / bwd / 1e9);
  }
  cuda::set_logprob_chunking({});
  {
    // With the saved softmax: the forward also writes probs, the backward reads them (no logits product). The two
    // directions may prefer different chunkings (the forward's tile can stay in L2 when small).
    const int64_t scols = ops::logprob_prob_stats_cols(V);
    OwnedTensor probs = OwnedTensor::make(DType::BF16, Device::CUDA, {T, V});
    OwnedTensor stats = OwnedTensor::make(DType::F32, Device::CUDA, {T, scols});
    ops::LogprobParams ps = p;
    ps.probs = &probs.t;
    ps.prob_stats = &stats.t;
    std::printf("saved softmax:\n%-14s %10s %10s %10s\n", "chunk TcxVc", "fwd ms", "bwd ms", "total ms");
    const std::pair<int64_t, int64_t> saved_chunks[] = {{1024, 4096}, {1024, 8192}, {2048, 4096}, {2048, 8192},
                                                        {4096, 4096}, {4096, 8192}, {8192, 8192}, {8192, 16384},
                                                        {16384, 8192}, {32768, 8192}};
    for (auto [tc, vc] : saved_chunks) {
      cuda::set_logprob_chunking({tc, vc});
      const double fwd = time_ms([&] { ops::logprob_fwd(glp.t, gent.t, glse.t, gh.t, gw.t, gt.t, ps, gpu()); });
      const double bwd =
          time_ms([&] { ops::logprob_bwd(gdh.t, gdw.t, gdlp.t, Tensor(), gh.t, gw.t, gt.t, glse.t, ps, gpu()); });
      std::printf("%6lldx%-7lld %10.2f %10.2f %10.2f\n", static_cast<long long>(tc), static_cast<long long>(vc), fwd,
                  bwd, fwd + bwd);
    }
    cuda::set_logprob_chunking({});
  }
  {
    // Where the time goes at the default chunking: the same GEMMs alone (logits; logits + dhidden + dweight).
    const cuda::LogprobChunking ch = cuda::logprob_chunking();
    const int64_t tc = std::min(T, ch.tokens), vc = std::min(V, ch.vocab);
    OwnedTensor logits = OwnedTensor::make(DType::F32, Device::CUDA, {tc * vc});
    OwnedTensor dz = OwnedTensor::make(DType::BF16, Device::CUDA, {tc * vc});
    OwnedTensor acc = OwnedTensor::make(DType::F32, Device::CUDA, {tc * H});
    from_host_f32(dz.t, random_vec(tc * vc, seed + 9, -1e-3f, 1e-3f));
    auto tiles = [&](bool backward) {
      for (int64_t t0 = 0; t0 < T; t0 += tc) {
        const int64_t n = std::min(tc, T - t0);
        const Tensor hc = gh.t.slice_rows(t0, t0 + n);
        for (int64_t v0 = 0; v0 < V; v0 += vc) {
          const int64_t w = std::min(vc, V - v0);
          const Tensor wc = gw.t.slice_rows(v0, v0 + w);
          ops::GemmParams lp;
          lp.trans_b = true;
          ops::gemm(Tensor(logits.t.data, DType::F32, Device::CUDA, {n, w}), hc, wc, lp, gpu());
          if (!backward) continue;
          const Tensor dzc(dz.t.data, DType::BF16, Device::CUDA, {n, w});
          ops::GemmParams hp;
          hp.beta = v0 == 0 ? 0.0f : 1.0f;
          ops::gemm(Tensor(acc.t.data, DType::F32, Device::CUDA, {n, H}), dzc, wc, hp, gpu());
          ops::GemmParams wp;
          wp.trans_a = true;
          wp.beta = 1.0f;
          ops::gemm(gdw.t.slice_rows(v0, v0 + w), dzc, hc, wp, gpu());
        }
      }
    };
    const double gf = time_ms([&] { tiles(false); }), gb = time_ms([&] { tiles(true); });
    const double fwd = time_ms([&] { ops::logprob_fwd(glp.t, gent.t, glse.t, gh.t, gw.t, gt.t, p, gpu()); });
    const double bwd =
        time_ms([&] { ops::logprob_bwd(gdh.t, gdw.t, gdlp.t, Tensor(), gh.t, gw.t, gt.t, glse.t, p, gpu()); });
    std::printf("default %lldx%lld: fwd %.2f ms = GEMM %.2f (%.0f TFLOP/s) + rest %.2f; bwd %.2f ms = GEMMs %.2f "
                "(%.0f TFLOP/s) + rest %.2f\n",
                static_cast<long long>(tc), static_cast<long long>(vc), fwd, gf, flop_fwd / gf / 1e9, fwd - gf, bwd, gb,
                flop_bwd / gb / 1e9, bwd - gb);
  }
  // Full-size spot check: a few tokens' lse / logprob / entropy against a host fp64 computation.
  ops::logprob_fwd(glp.t, gent.t, glse.t, gh.t, gw.t, gt.t, p, gpu());
  const std::vector<float> lp = download(glp), ent = download(gent), lse = download(glse);
  for (int64_t t : {int64_t(0), int64_t(1), T / 2, T - 1}) {
    std::vector<double> z(V);
    double mx = -1e300;
    for (int64_t v = 0; v < V; ++v) {
      double acc = 0;
      for (int64_t h = 0; h < H; ++h) acc += double(hidden[t * H + h]) * weight[v * H + h];
      z[v] = acc;
      mx = std::max(mx, acc);
    }
    double se = 0, sez = 0;
    for (int64_t v = 0; v < V; ++v) {
      const double e = std::exp(z[v] - mx);
      se += e;
      sez += e * z[v];
    }
    const double l = mx + std::log(se);
    const Tol tol = tol_for(DType::F32);
    EXPECT_NEAR(lse[t], l, tol.abs + tol.rel * std::fabs(l)) << "lse t=" << t;
    EXPECT_NEAR(lp[t], z[targets[t]] - l, tol.abs + tol.rel * std::fabs(z[targets[t]] - l)) << "logprob t=" << t;
    EXPECT_NEAR(ent[t], l - sez / se, tol.abs + tol.rel * std::fabs(l - sez / se)) << "entropy t=" << t;
  }
  glp.check_guards("bench logprob");
  gdh.check_guards("bench dhidden");
  gdw.check_guards("bench dweight");
}

TEST(OpsCudaBench, MemoryBoundOpsAtModelSizes) {
  RLCU_REQUIRE_CUDA();
  if (!bench_enabled()) GTEST_SKIP() << "set RLCU_OPS_BENCH=1 to time the memory-bound ops";
  const int64_t T = 32768, H = 1024, I = 3072, NQ = 16, HD = 128, P = 596049920;  // Qwen3-0.6B: 0.6B parameters
  auto buf = [](DType dt, std::vector<int64_t> shape) {
    GuardedTensor g = make_guarded(dt, Device::CUDA, shape);
    ops::fill(g.t, 0.5f, gpu());
    return g;
  };
  GuardedTensor x = buf(DType::BF16, {T, H}), y = buf(DType::BF16, {T, H}), dy = buf(DType::BF16, {T, H});
  GuardedTensor w = buf(DType::BF16, {H}), rstd = buf(DType::F32, {T}), dw = buf(DType::F32, {H});
  GuardedTensor gu = buf(DType::BF16, {T, 2 * I}), act = buf(DType::BF16, {T, I}), dgu = buf(DType::BF16, {T, 2 * I});
  GuardedTensor q = buf(DType::BF16, {T, NQ, HD}), inv = buf(DType::F32, {HD / 2}), qn = buf(DType::BF16, {T, NQ, HD});
  GuardedTensor rq = buf(DType::F32, {T * NQ}), qw = buf(DType::BF16, {HD}), dqw = buf(DType::F32, {HD});
  GuardedTensor pos = make_guarded(DType::I32, Device::CUDA, {T});
  ops::fill(pos.t, 7.0f, gpu());
  GuardedTensor ids = make_guarded(DType::I32, Device::CUDA, {T});
  from_host_f32(ids.t, as_float(random_ids(T, 0, 151936, fresh_seed())));
  GuardedTensor table = buf(DType::BF16, {151936, H}), dtable = buf(DType::F32, {151936, H});
  GuardedTensor master = buf(DType::F32, {P}), m = buf(DType::F32, {P}), v = buf(DType::F32, {P});
  GuardedTensor grad = buf(DType::F32, {P}), wts = buf(DType::BF16, {P}), ss = buf(DType::F32, {1});
  settle();
  struct Row {
    const char* name;
    double bytes;
    double ms;
  };
  std::vector<Row> rows;
  const double a2 = 2.0 * T * H;  // bytes of one [T, H] bf16 activation
  rows.push_back(
      {"rmsnorm_fwd [T,H]", 2 * a2, time_ms([&] { ops::rmsnorm_fwd(y.t, rstd.t, x.t, w.t, 1e-6f, gpu()); })});
  rows.push_back(
      {"rmsnorm_bwd [T,H]", 3 * a2, time_ms([&] { ops::rmsnorm_bwd(y.t, dw.t, dy.t, x.t, w.t, rstd.t, gpu()); })});
  const double aq = 2.0 * T * NQ * HD;
  rows.push_back({"qk rmsnorm_fwd [T*16,128]", 2 * aq,
                  time_ms([&] { ops::rmsnorm_fwd(qn.t, rq.t, q.t, qw.t, 1e-6f, gpu()); })});
  rows.push_back({"qk rmsnorm_bwd [T*16,128]", 3 * aq,
                  time_ms([&] { ops::rmsnorm_bwd(qn.t, dqw.t, q.t, q.t, qw.t, rq.t, gpu()); })});
  rows.push_back({"rope_fwd [T,16,128]", 2 * aq, time_ms([&] { ops::rope_fwd(q.t, q.t, pos.t, inv.t, gpu()); })});
  const double ai = 2.0 * T * I;
  rows.push_back({"swiglu_fwd [T,3072]", 3 * ai, time_ms([&] { ops::swiglu_fwd(act.t, gu.t, gpu()); })});
  rows.push_back({"swiglu_bwd [T,3072]", 5 * ai, time_ms([&] { ops::swiglu_bwd(dgu.t, act.t, gu.t, gpu()); })});
  rows.push_back({"add [T,H] bf16", 3 * a2, time_ms([&] { ops::add(y.t, x.t, dy.t, gpu()); })});
  rows.push_back({"embedding_fwd [T,H]", 2 * a2, time_ms([&] { ops::embedding_fwd(y.t, table.t, ids.t, gpu()); })});
  rows.push_back({"embedding_bwd [T,H]", a2 + 8.0 * T * H,
                  time_ms([&] { ops::embedding_bwd(dtable.t, dy.t, ids.t, gpu()); })});
  rows.push_back({"sum_squares 0.6B f32", 4.0 * P, time_ms([&] { ops::sum_squares(ss.t, grad.t, gpu()); })});
  ops::AdamWParams ap;
  rows.push_back({"adamw_update 0.6B", (16.0 + 12.0 + 2.0) * P,
                  time_ms([&] { ops::adamw_update(master.t, m.t, v.t, wts.t, grad.t, ap, gpu()); })});
  std::printf("\n%-28s %10s %10s\n", "op (T=32768)", "ms", "GB/s");
  for (const Row& r : rows) std::printf("%-28s %10.3f %10.0f\n", r.name, r.ms, r.bytes / r.ms / 1e6);
  x.check_guards("bench x");
  wts.check_guards("bench weights");
}
