// fp64 gradient checks of every CPU backward (kernels/cpu/reference.h, double instantiation): for a random linear
// functional L = sum_o r_o * out_o of the forward outputs, the backward run with dout = r must match the central
// difference of L along every input element i. The difference is the fourth-order central stencil
// (-L(x+2h) + 8 L(x+h) - 8 L(x-h) + L(x-2h)) / 12h with h = 1e-4: its truncation error (~h^4) and rounding error
// (~1e-16 |L| / h) both stay near 1e-11, so a 1e-6 relative tolerance holds even for small gradient entries (the
// two-point difference with h = 1e-6 has ~1e-9 of rounding noise, a few 1e-6 relative on entries near 1e-4). Shapes include 1, odd sizes, head dims
// that are not multiples of 8, GQA ratios 1 and > 1, packed sequences of different lengths (1 and 0 included),
// vocabularies that are not multiples of 8 and span several vocabulary blocks, targets of -1, entropy on and off.
// Parameter gradients are checked as the increment over a random initial value (they accumulate); activation
// gradients start as NaN (they overwrite). Each case then runs the Tensor-level float op on the same values and
// compares it with the double result, which checks the argument plumbing of rlcu::ops on the CPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "cpu/reference.h"
#include "rlcu/ops.h"

using namespace rlcu;
namespace ref = rlcu::cpu::ref;
using Vec = std::vector<double>;

namespace {

constexpr double kStep = 1e-4;    // central-difference step (fourth-order stencil)
constexpr double kGradTol = 1e-6;  // relative error of analytic vs numeric gradient
constexpr double kFloatTol = 2e-5;  // float Tensor op vs double reference, relative to the largest magnitude (>= 1e-2)
const double kNaN = std::numeric_limits<double>::quiet_NaN();

// Random values representable in float, so the float ops see exactly the same inputs.
Vec rnd(size_t n, uint64_t seed, double lo = -1.0, double hi = 1.0) {
  std::mt19937_64 g(seed);
  std::uniform_real_distribution<double> d(lo, hi);
  Vec v(n);
  for (auto& x : v) x = static_cast<double>(static_cast<float>(d(g)));
  return v;
}

double dot(const Vec& a, const Vec& b) {
  double s = 0.0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

Vec minus(const Vec& a, const Vec& b) {
  Vec d(a.size());
  for (size_t i = 0; i < a.size(); ++i) d[i] = a[i] - b[i];
  return d;
}

struct GradError {
  double worst = 0.0;
  size_t index = 0;
  double analytic = 0.0, numeric = 0.0;
};

// Worst relative error between `analytic` and the central difference of `loss` over every element of `x`.
// Relative to max(|analytic|, |numeric|, 1e-3 * max_i |analytic_i|), so near-zero entries are judged against the
// gradient's own scale.
GradError grad_error(Vec& x, const Vec& analytic, const std::function<double()>& loss) {
  GradError r;
  double gmax = 0.0;
  for (double g : analytic) gmax = std::max(gmax, std::fabs(g));
  for (size_t i = 0; i < x.size(); ++i) {
    const double saved = x[i];
    double l[4];
    const double offsets[4] = {2 * kStep, kStep, -kStep, -2 * kStep};
    for (int s = 0; s < 4; ++s) {
      x[i] = saved + offsets[s];
      l[s] = loss();
    }
    x[i] = saved;
    const double num = (-l[0] + 8 * l[1] - 8 * l[2] + l[3]) / (12 * kStep);
    const double denom = std::max({std::fabs(num), std::fabs(analytic[i]), 1e-3 * gmax, 1e-12});
    const double err = std::isfinite(analytic[i]) ? std::fabs(num - analytic[i]) / denom : INFINITY;
    if (err > r.worst || i == 0) r = {err, i, analytic[i], num};
  }
  return r;
}

void expect_grad(const std::string& what, Vec& x, const Vec& analytic, const std::function<double()>& loss) {
  ASSERT_EQ(x.size(), analytic.size()) << what;
  const GradError e = grad_error(x, analytic, loss);
  EXPECT_LT(e.worst, kGradTol) << what << ": element " << e.index << " analytic " << e.analytic << " numeric "
                               << e.numeric;
}

std::vector<float> to_f(const Vec& v) { return std::vector<float>(v.begin(), v.end()); }

Tensor f32(std::vector<float>& v, std::initializer_list<int64_t> dims) {
  return Tensor(v.data(), DType::F32, Device::CPU, dims);
}
Tensor i32(std::vector<int32_t>& v, std::initializer_list<int64_t> dims) {
  return Tensor(v.data(), DType::I32, Device::CPU, dims);
}

void expect_close_f(const std::string& what, const std::vector<float>& got, const Vec& want) {
  ASSERT_EQ(got.size(), want.size()) << what;
  double scale = 0.0;
  for (double w : want) scale = std::max(scale, std::fabs(w));
  for (size_t i = 0; i < got.size(); ++i)
    ASSERT_NEAR(got[i], want[i], kFloatTol * std::max(scale, 1e-2)) << what << " element " << i;
}

Context& host() { return Context::cpu(); }

}  // namespace

// The checker itself: it accepts a correct gradient and rejects one that is off by 1e-4 in a single element.
TEST(GradCpu, CheckerRejectsWrongGradient) {
  Vec x = rnd(5, 1), r = rnd(5, 2);
  auto loss = [&] {
    double s = 0;
    for (size_t i = 0; i < x.size(); ++i) s += r[i] * std::sin(x[i]) * x[(i + 1) % 5];
    return s;
  };
  Vec g(5);
  for (size_t i = 0; i < 5; ++i) g[i] = r[i] * std::cos(x[i]) * x[(i + 1) % 5] + r[(i + 4) % 5] * std::sin(x[(i + 4) % 5]);
  EXPECT_LT(grad_error(x, g, loss).worst, kGradTol);
  g[3] *= 1.0 + 1e-4;
  EXPECT_GT(grad_error(x, g, loss).worst, 10 * kGradTol);
}

// ---- gemm (linear layers): the backward products dA = alpha dY op(B)^T, dB = alpha op(A)^T dY, dC = beta dY ------

TEST(GradCpu, Gemm) {
  struct Case {
    int M, K, N;
  };
  uint64_t seed = 10;
  for (Case c : {Case{1, 1, 1}, Case{3, 5, 7}, Case{4, 1, 9}, Case{6, 13, 1}}) {
    for (int ta = 0; ta < 2; ++ta) {
      for (int tb = 0; tb < 2; ++tb) {
        const std::string what = "gemm M=" + std::to_string(c.M) + " K=" + std::to_string(c.K) +
                                  " N=" + std::to_string(c.N) + " ta=" + std::to_string(ta) + " tb=" + std::to_string(tb);
        const double alpha = 0.75, beta = -1.5;
        Vec a = rnd(c.M * c.K, ++seed), b = rnd(c.K * c.N, ++seed), c0 = rnd(c.M * c.N, ++seed),
            r = rnd(c.M * c.N, ++seed);
        auto loss = [&] {
          Vec out = c0;
          ref::gemm_ref<double>(out.data(), a.data(), b.data(), c.M, c.N, c.K, ta, tb, alpha, beta);
          return dot(r, out);
        };
        // Stored shapes: a is [M,K] or [K,M]; b is [K,N] or [N,K].
        Vec da(a.size()), db(b.size()), dc(c0.size());
        if (!ta) ref::gemm_ref<double>(da.data(), r.data(), b.data(), c.M, c.K, c.N, false, !tb, alpha, 0.0);
        else ref::gemm_ref<double>(da.data(), b.data(), r.data(), c.K, c.M, c.N, tb, true, alpha, 0.0);
        if (!tb) ref::gemm_ref<double>(db.data(), a.data(), r.data(), c.K, c.N, c.M, !ta, false, alpha, 0.0);
        else ref::gemm_ref<double>(db.data(), r.data(), a.data(), c.N, c.K, c.M, true, ta, alpha, 0.0);
        for (size_t i = 0; i < dc.size(); ++i) dc[i] = beta * r[i];
        expect_grad(what + " da", a, da, loss);
        expect_grad(what + " db", b, db, loss);
        expect_grad(what + " dc", c0, dc, loss);
      }
    }
  }
}

TEST(GradCpu, BiasGrad) {
  const int rows = 5, n = 3;
  Vec x = rnd(rows * n, 20), bias = rnd(n, 21), r = rnd(rows * n, 22), dbias0 = rnd(n, 23);
  auto loss = [&] {
    Vec out = x;
    ref::bias_add_ref<double>(out.data(), bias.data(), rows, n);
    return dot(r, out);
  };
  Vec dbias = dbias0;
  ref::bias_grad_ref<double>(dbias.data(), r.data(), rows, n);
  expect_grad("bias_grad", bias, minus(dbias, dbias0), loss);

  std::vector<float> dbias_f = to_f(dbias0), r_f = to_f(r);
  ops::bias_grad(f32(dbias_f, {n}), f32(r_f, {rows, n}), host());
  expect_close_f("bias_grad f32", dbias_f, dbias);
}

// ---- embedding -------------------------------------------------------------------------------------------------------

TEST(GradCpu, Embedding) {
  struct Case {
    int T, V, H;
    std::vector<int32_t> ids;
  };
  uint64_t seed = 30;
  for (const Case& c : {Case{1, 1, 1, {0}}, Case{7, 5, 3, {4, 0, 4, 2, 4, 0, 1}}}) {
    const std::string what = "embedding T=" + std::to_string(c.T) + " V=" + std::to_string(c.V);
    Vec table = rnd(c.V * c.H, ++seed), r = rnd(c.T * c.H, ++seed), dtable0 = rnd(c.V * c.H, ++seed);
    auto loss = [&] {
      Vec out(c.T * c.H);
      ref::embedding_fwd_ref<double>(out.data(), table.data(), c.ids.data(), c.T, c.V, c.H);
      return dot(r, out);
    };
    Vec dtable = dtable0;
    ref::embedding_bwd_ref<double>(dtable.data(), r.data(), c.ids.data(), c.T, c.V, c.H);
    expect_grad(what + " dtable", table, minus(dtable, dtable0), loss);

    std::vector<float> dt_f = to_f(dtable0), r_f = to_f(r);
    std::vector<int32_t> ids = c.ids;
    ops::embedding_bwd(f32(dt_f, {c.V, c.H}), f32(r_f, {c.T, c.H}), i32(ids, {c.T}), host());
    expect_close_f(what + " f32", dt_f, dtable);
  }
}

// ---- RMSNorm ---------------------------------------------------------------------------------------------------------

TEST(GradCpu, Rmsnorm) {
  struct Case {
    int rows, dim;
    double eps;
  };
  uint64_t seed = 40;
  for (Case c : {Case{1, 1, 0.1}, Case{5, 7, 1e-6}, Case{12, 6, 1e-5}, Case{3, 33, 1e-6}}) {
    const std::string what = "rmsnorm rows=" + std::to_string(c.rows) + " dim=" + std::to_string(c.dim);
    Vec x = rnd(c.rows * c.dim, ++seed, -2, 2), w = rnd(c.dim, ++seed, 0.5, 1.5), r = rnd(c.rows * c.dim, ++seed),
        dw0 = rnd(c.dim, ++seed);
    auto loss = [&] {
      Vec out(x.size()), rstd(c.rows);
      ref::rmsnorm_fwd_ref<double>(out.data(), rstd.data(), x.data(), w.data(), c.rows, c.dim, c.eps);
      return dot(r, out);
    };
    Vec out(x.size()), rstd(c.rows), dx(x.size(), kNaN), dw = dw0;
    ref::rmsnorm_fwd_ref<double>(out.data(), rstd.data(), x.data(), w.data(), c.rows, c.dim, c.eps);
    ref::rmsnorm_bwd_ref<double>(dx.data(), dw.data(), r.data(), x.data(), w.data(), rstd.data(), c.rows, c.dim);
    expect_grad(what + " dx", x, dx, loss);
    expect_grad(what + " dweight", w, minus(dw, dw0), loss);

    std::vector<float> x_f = to_f(x), w_f = to_f(w), r_f = to_f(r), out_f(x.size()), rstd_f(c.rows),
                       dx_f(x.size()), dw_f = to_f(dw0);
    ops::rmsnorm_fwd(f32(out_f, {c.rows, c.dim}), f32(rstd_f, {c.rows}), f32(x_f, {c.rows, c.dim}),
                     f32(w_f, {c.dim}), static_cast<float>(c.eps), host());
    ops::rmsnorm_bwd(f32(dx_f, {c.rows, c.dim}), f32(dw_f, {c.dim}), f32(r_f, {c.rows, c.dim}),
                     f32(x_f, {c.rows, c.dim}), f32(w_f, {c.dim}), f32(rstd_f, {c.rows}), host());
    expect_close_f(what + " f32 out", out_f, out);
    expect_close_f(what + " f32 dx", dx_f, dx);
    expect_close_f(what + " f32 dweight", dw_f, dw);
  }
}

// ---- RoPE ------------------------------------------------------------------------------------------------------------

TEST(GradCpu, Rope) {
  struct Case {
    int T, heads, hd;
  };
  uint64_t seed = 50;
  for (Case c : {Case{1, 1, 2}, Case{4, 3, 6}, Case{5, 2, 10}}) {
    const std::string what = "rope T=" + std::to_string(c.T) + " heads=" + std::to_string(c.heads) +
                             " hd=" + std::to_string(c.hd);
    const int n = c.T * c.heads * c.hd;
    std::vector<int32_t> pos(c.T);
    for (int t = 0; t < c.T; ++t) pos[t] = (t * 977) % 4099;  // 0, 977, 1954, ... : large angles included
    std::vector<float> inv_freq(c.hd / 2);
    for (int i = 0; i < c.hd / 2; ++i) inv_freq[i] = std::pow(10000.0f, -2.0f * i / c.hd);
    Vec x = rnd(n, ++seed), r = rnd(n, ++seed);
    auto loss = [&] {
      Vec out(n);
      ref::rope_fwd_ref<double>(out.data(), x.data(), pos.data(), inv_freq.data(), c.T, c.heads, c.hd);
      return dot(r, out);
    };
    Vec dx(n, kNaN);
    ref::rope_bwd_ref<double>(dx.data(), r.data(), pos.data(), inv_freq.data(), c.T, c.heads, c.hd);
    expect_grad(what + " dx", x, dx, loss);

    std::vector<float> r_f = to_f(r), dx_f(n);
    ops::rope_bwd(f32(dx_f, {c.T, c.heads, c.hd}), f32(r_f, {c.T, c.heads, c.hd}), i32(pos, {c.T}),
                  f32(inv_freq, {c.hd / 2}), host());
    expect_close_f(what + " f32 dx", dx_f, dx);
  }
}

// ---- attention ---------------------------------------------------------------------------------------------------------

TEST(GradCpu, Attention) {
  struct Case {
    std::vector<int> lens;
    int nq, nkv, hd;
  };
  uint64_t seed = 60;
  const std::vector<Case> cases = {
      {{1}, 1, 1, 1},           // one token
      {{3, 1, 5, 2}, 6, 2, 5},  // GQA 3, odd head dim, a length-1 sequence
      {{4, 0, 1}, 3, 3, 6},     // GQA 1 (MHA), an empty sequence
      {{2, 7}, 4, 1, 3},        // MQA
      {{6}, 2, 2, 12},          // head dim not a multiple of 8
  };
  for (const Case& c : cases) {
    std::vector<int32_t> cu = {0};
    int max_len = 0;
    for (int l : c.lens) {
      cu.push_back(cu.back() + l);
      max_len = std::max(max_len, l);
    }
    const int T = cu.back();
    std::string what = "attention lens=";
    for (int l : c.lens) what += std::to_string(l) + ",";
    what += " nq=" + std::to_string(c.nq) + " nkv=" + std::to_string(c.nkv) + " hd=" + std::to_string(c.hd);
    ref::AttentionDims d;
    d.tokens = T;
    d.nq = c.nq;
    d.nkv = c.nkv;
    d.head_dim = c.hd;
    d.num_seqs = static_cast<int64_t>(c.lens.size());
    d.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(c.hd)));
    const size_t nqe = size_t(T) * c.nq * c.hd, nke = size_t(T) * c.nkv * c.hd;
    Vec q = rnd(nqe, ++seed, -2, 2), k = rnd(nke, ++seed, -2, 2), v = rnd(nke, ++seed), r = rnd(nqe, ++seed);
    auto loss = [&] {
      Vec out(nqe), lse(size_t(T) * c.nq);
      ref::attention_fwd_ref<double>(out.data(), lse.data(), q.data(), k.data(), v.data(), cu.data(), d);
      return dot(r, out);
    };
    Vec out(nqe), lse(size_t(T) * c.nq), dq(nqe, kNaN), dk(nke, kNaN), dv(nke, kNaN);
    ref::attention_fwd_ref<double>(out.data(), lse.data(), q.data(), k.data(), v.data(), cu.data(), d);
    ref::attention_bwd_ref<double>(dq.data(), dk.data(), dv.data(), r.data(), q.data(), k.data(), v.data(), out.data(),
                                   lse.data(), cu.data(), d);
    expect_grad(what + " dq", q, dq, loss);
    expect_grad(what + " dk", k, dk, loss);
    expect_grad(what + " dv", v, dv, loss);

    std::vector<float> q_f = to_f(q), k_f = to_f(k), v_f = to_f(v), r_f = to_f(r), out_f(nqe), lse_f(size_t(T) * c.nq),
                       dq_f(nqe), dk_f(nke), dv_f(nke);
    ops::AttentionParams p;
    p.num_seqs = static_cast<int>(c.lens.size());
    p.max_seqlen = max_len;
    p.scale = static_cast<float>(d.scale);
    const int64_t nq = c.nq, nkv = c.nkv, hd = c.hd;
    ops::attention_fwd(f32(out_f, {T, nq, hd}), f32(lse_f, {T, nq}), f32(q_f, {T, nq, hd}), f32(k_f, {T, nkv, hd}),
                       f32(v_f, {T, nkv, hd}), i32(cu, {d.num_seqs + 1}), p, host());
    ops::attention_bwd(f32(dq_f, {T, nq, hd}), f32(dk_f, {T, nkv, hd}), f32(dv_f, {T, nkv, hd}),
                       f32(r_f, {T, nq, hd}), f32(q_f, {T, nq, hd}), f32(k_f, {T, nkv, hd}), f32(v_f, {T, nkv, hd}),
                       f32(out_f, {T, nq, hd}), f32(lse_f, {T, nq}), i32(cu, {d.num_seqs + 1}), p, host());
    expect_close_f(what + " f32 out", out_f, out);
    expect_close_f(what + " f32 lse", lse_f, lse);
    expect_close_f(what + " f32 dq", dq_f, dq);
    expect_close_f(what + " f32 dk", dk_f, dk);
    expect_close_f(what + " f32 dv", dv_f, dv);
  }
}

// ---- SwiGLU ------------------------------------------------------------------------------------------------------------

TEST(GradCpu, Swiglu) {
  struct Case {
    int T, I;
  };
  uint64_t seed = 70;
  for (Case c : {Case{1, 1}, Case{4, 7}, Case{3, 17}}) {
    const std::string what = "swiglu T=" + std::to_string(c.T) + " I=" + std::to_string(c.I);
    Vec gu = rnd(2 * c.T * c.I, ++seed, -4, 4), r = rnd(c.T * c.I, ++seed);
    auto loss = [&] {
      Vec out(c.T * c.I);
      ref::swiglu_fwd_ref<double>(out.data(), gu.data(), c.T, c.I);
      return dot(r, out);
    };
    Vec dgu(gu.size(), kNaN);
    ref::swiglu_bwd_ref<double>(dgu.data(), r.data(), gu.data(), c.T, c.I);
    expect_grad(what + " dgate_up", gu, dgu, loss);

    std::vector<float> gu_f = to_f(gu), r_f = to_f(r), dgu_f(gu.size());
    ops::swiglu_bwd(f32(dgu_f, {c.T, 2 * c.I}), f32(r_f, {c.T, c.I}), f32(gu_f, {c.T, 2 * c.I}), host());
    expect_close_f(what + " f32", dgu_f, dgu);
  }
}

// ---- log-prob head ---------------------------------------------------------------------------------------------------

TEST(GradCpu, Logprob) {
  struct Case {
    int T, H, V;
    std::vector<int32_t> targets;
    bool entropy;
    double inv_temperature;
  };
  uint64_t seed = 80;
  const std::vector<Case> cases = {
      {1, 1, 1, {0}, true, 1.0},
      {1, 3, 2, {1}, false, 1.0},
      {7, 5, 13, {3, -1, 12, 0, 0, -1, 7}, true, 1.0},
      {7, 5, 13, {3, -1, 12, 0, 0, -1, 7}, false, 1.0 / 0.7},
      {3, 4, 300, {299, 5, 256}, true, 1.0 / 0.6},  // spans two vocabulary blocks
      {2, 3, 517, {-1, 300}, true, 1.0},
  };
  for (const Case& c : cases) {
    const std::string what = "logprob T=" + std::to_string(c.T) + " H=" + std::to_string(c.H) +
                             " V=" + std::to_string(c.V) + (c.entropy ? " entropy" : " no-entropy");
    ref::LogprobDims d;
    d.tokens = c.T;
    d.hidden = c.H;
    d.vocab = c.V;
    d.inv_temperature = static_cast<float>(c.inv_temperature);
    Vec hidden = rnd(c.T * c.H, ++seed, -2, 2), weight = rnd(c.V * c.H, ++seed), r_lp = rnd(c.T, ++seed),
        r_ent = rnd(c.T, ++seed), dw0 = rnd(c.V * c.H, ++seed);
    auto loss = [&] {
      Vec lp(c.T), ent(c.T), lse(c.T);
      ref::logprob_fwd_ref<double>(lp.data(), c.entropy ? ent.data() : nullptr, lse.data(), hidden.data(),
                                   weight.data(), c.targets.data(), d);
      return dot(r_lp, lp) + (c.entropy ? dot(r_ent, ent) : 0.0);
    };
    Vec lp(c.T), ent(c.T, 0.0), lse(c.T), dh(hidden.size(), kNaN), dw = dw0;
    ref::logprob_fwd_ref<double>(lp.data(), c.entropy ? ent.data() : nullptr, lse.data(), hidden.data(),
                                 weight.data(), c.targets.data(), d);
    ref::logprob_bwd_ref<double>(dh.data(), dw.data(), r_lp.data(), c.entropy ? r_ent.data() : nullptr,
                                 hidden.data(), weight.data(), c.targets.data(), lse.data(), d);
    expect_grad(what + " dhidden", hidden, dh, loss);
    expect_grad(what + " dweight", weight, minus(dw, dw0), loss);
    for (int t = 0; t < c.T; ++t) {
      if (c.targets[t] >= 0) continue;
      EXPECT_EQ(lp[t], 0.0) << what;
      EXPECT_EQ(ent[t], 0.0) << what;
      for (int h = 0; h < c.H; ++h) EXPECT_EQ(dh[t * c.H + h], 0.0) << what << " masked row has a gradient";
    }

    std::vector<float> h_f = to_f(hidden), w_f = to_f(weight), rlp_f = to_f(r_lp), rent_f = to_f(r_ent), lp_f(c.T),
                       ent_f(c.T), lse_f(c.T), dh_f(hidden.size()), dw_f = to_f(dw0);
    std::vector<int32_t> tg = c.targets;
    ops::LogprobParams p;
    p.inv_temperature = static_cast<float>(d.inv_temperature);
    const Tensor ent_t = c.entropy ? f32(ent_f, {c.T}) : Tensor();
    ops::logprob_fwd(f32(lp_f, {c.T}), ent_t, f32(lse_f, {c.T}), f32(h_f, {c.T, c.H}), f32(w_f, {c.V, c.H}),
                     i32(tg, {c.T}), p, host());
    ops::logprob_bwd(f32(dh_f, {c.T, c.H}), f32(dw_f, {c.V, c.H}), f32(rlp_f, {c.T}),
                     c.entropy ? f32(rent_f, {c.T}) : Tensor(), f32(h_f, {c.T, c.H}), f32(w_f, {c.V, c.H}),
                     i32(tg, {c.T}), f32(lse_f, {c.T}), p, host());
    expect_close_f(what + " f32 logprob", lp_f, lp);
    if (c.entropy) expect_close_f(what + " f32 entropy", ent_f, ent);
    expect_close_f(what + " f32 lse", lse_f, lse);
    expect_close_f(what + " f32 dhidden", dh_f, dh);
    expect_close_f(what + " f32 dweight", dw_f, dw);

    // The saved softmax: the forward's outputs are unchanged, and the backward that reads p and z from it (no
    // logits recomputation) gives the same gradients; the op (f32) likewise.
    const int64_t scols = ops::logprob_prob_stats_cols(c.V);
    Vec probs(c.T * c.V, kNaN), stats(c.T * scols, kNaN), lp_s(c.T), ent_s(c.T, 0.0), lse_s(c.T),
        dh_s(hidden.size(), kNaN), dw_s = dw0;
    ref::logprob_fwd_ref<double>(lp_s.data(), c.entropy ? ent_s.data() : nullptr, lse_s.data(), hidden.data(),
                                 weight.data(), c.targets.data(), d, probs.data(), stats.data());
    EXPECT_EQ(lp_s, lp) << what << " saved softmax changes logprob";
    EXPECT_EQ(lse_s, lse) << what << " saved softmax changes lse";
    for (int t = 0; t < c.T; ++t)
      for (int v = 0; v < c.V; ++v) {
        const double pv = probs[t * c.V + v] * std::exp(stats[t * scols + v / ops::kLogprobSegment] - lse[t]);
        EXPECT_GT(pv, 0.0) << what;
        EXPECT_LE(probs[t * c.V + v], 1.0) << what;
        if (c.targets[t] == v) {
          EXPECT_NEAR(std::log(pv), lp[t], 1e-12) << what << " saved target probability";
        }
      }
    ref::logprob_bwd_ref<double>(dh_s.data(), dw_s.data(), r_lp.data(), c.entropy ? r_ent.data() : nullptr,
                                 hidden.data(), weight.data(), c.targets.data(), lse.data(), d, probs.data(),
                                 stats.data());
    for (size_t i = 0; i < dh.size(); ++i) ASSERT_NEAR(dh_s[i], dh[i], 1e-10 * (1 + std::fabs(dh[i]))) << what;
    for (size_t i = 0; i < dw.size(); ++i) ASSERT_NEAR(dw_s[i], dw[i], 1e-10 * (1 + std::fabs(dw[i]))) << what;

    std::vector<float> probs_f(probs.size()), stats_f(stats.size()), lp_sf(c.T), ent_sf(c.T), lse_sf(c.T),
        dh_sf(hidden.size()), dw_sf = to_f(dw0);
    const Tensor probs_t = f32(probs_f, {c.T, c.V}), stats_t = f32(stats_f, {c.T, scols});
    p.probs = &probs_t;
    p.prob_stats = &stats_t;
    ops::logprob_fwd(f32(lp_sf, {c.T}), c.entropy ? f32(ent_sf, {c.T}) : Tensor(), f32(lse_sf, {c.T}),
                     f32(h_f, {c.T, c.H}), f32(w_f, {c.V, c.H}), i32(tg, {c.T}), p, host());
    EXPECT_EQ(lp_sf, lp_f) << what;
    ops::logprob_bwd(f32(dh_sf, {c.T, c.H}), f32(dw_sf, {c.V, c.H}), f32(rlp_f, {c.T}),
                     c.entropy ? f32(rent_f, {c.T}) : Tensor(), f32(h_f, {c.T, c.H}), f32(w_f, {c.V, c.H}),
                     i32(tg, {c.T}), f32(lse_sf, {c.T}), p, host());
    expect_close_f(what + " f32 saved dhidden", dh_sf, dh);
    expect_close_f(what + " f32 saved dweight", dw_sf, dw);
  }
}
