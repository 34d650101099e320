// CUDA RL ops (include/rlcu/rl_ops.h) against their CPU twins on fresh random inputs (the seed is printed with any
// failure): group advantages (every normalisation, RLOO, in place), REINFORCE++ returns, GAE, broadcast, loss
// weights, policy loss and value loss. Shapes include N = 1, T = 1, odd sizes, empty sequences and T in the
// thousands (up to 10^5 tokens for the losses); masked loss rows (w = 0) carry NaN/inf inputs. Outputs are guarded device tensors (poisoned with NaN, sentinels after
// the end); the accumulated statistics start from non-zero values; the reductions run twice and must agree bit for
// bit. Tolerances: tol_for(F32).
//
// With RLCU_RL_BENCH=1 the suite also times each op at rollout-batch sizes (CUDA events, median of 5 after a
// warm-up).
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "ops/gpu_test_util.h"
#include "rlcu/cuda_check.h"
#include "rlcu/rl_ops.h"

using namespace rlcu;
using namespace rlcu::rl;
using rlcu::test::expect_close;
using rlcu::test::fresh_seed;
using rlcu::test::GuardedTensor;
using rlcu::test::make_guarded;
using rlcu::test::random_vec;
using rlcu::test::tol_for;
using rlcu::test::gpu;
using rlcu::test::host;
using rlcu::test::settle;

namespace {

Tensor hf(std::vector<float>& v) { return Tensor(v.data(), DType::F32, Device::CPU, {static_cast<int64_t>(v.size())}); }
Tensor hi(std::vector<int32_t>& v) {
  return Tensor(v.data(), DType::I32, Device::CPU, {static_cast<int64_t>(v.size())});
}

GuardedTensor dev(const std::vector<float>& v) {
  GuardedTensor g = make_guarded(DType::F32, Device::CUDA, {static_cast<int64_t>(v.size())});
  if (!v.empty()) from_host_f32(g.t, v);
  return g;
}
GuardedTensor dev_out(size_t n) { return make_guarded(DType::F32, Device::CUDA, {static_cast<int64_t>(n)}); }
GuardedTensor dev_i32(std::vector<int32_t>& v) {
  GuardedTensor g = make_guarded(DType::I32, Device::CUDA, {static_cast<int64_t>(v.size())});
  copy_bytes(g.t, hi(v));
  return g;
}

std::vector<float> download(const GuardedTensor& g) {
  settle();
  if (g.t.numel() == 0) return {};
  return to_host_f32(g.t);
}

void expect_tensor(const GuardedTensor& g, const std::vector<float>& want, const std::string& what) {
  expect_close(download(g), want, tol_for(DType::F32), what);
  g.check_guards(what);
}

void expect_same_bits(const std::vector<float>& a, const std::vector<float>& b, const std::string& what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  EXPECT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * sizeof(float))) << what << ": not bit-reproducible";
}

std::vector<int32_t> random_cu(int n_seqs, int min_len, int max_len, uint64_t seed) {
  std::mt19937_64 g(seed);
  std::uniform_int_distribution<int> d(min_len, max_len);
  std::vector<int32_t> cu{0};
  for (int s = 0; s < n_seqs; ++s) cu.push_back(cu.back() + d(g));
  return cu;
}

// Rewards as a trainer sees them: mostly 0/1 (many all-equal groups) or continuous.
std::vector<float> random_rewards(size_t n, uint64_t seed, bool binary) {
  std::vector<float> r = random_vec(n, seed, -1.0f, 2.0f);
  if (binary)
    for (float& x : r) x = x > 0.5f ? 1.0f : 0.0f;
  return r;
}

std::string tag(uint64_t seed) { return " (seed " + std::to_string(seed) + ")"; }

}  // namespace

TEST(RlOpsCuda, GroupAdvantagesMatchCpu) {
  RLCU_REQUIRE_CUDA();
  for (int G : {1, 2, 3, 8, 16, 33, 64, 130})
    for (int P : {1, 7, 40})
      for (int mode = 0; mode < 4; ++mode)
        for (bool binary : {false, true}) {
          if (mode == 3 && G < 2) continue;
          const uint64_t seed = fresh_seed();
          const std::string what = "G=" + std::to_string(G) + " P=" + std::to_string(P) + " mode " +
                                   std::to_string(mode) + (binary ? " binary" : "") + tag(seed);
          std::vector<float> r = random_rewards(static_cast<size_t>(G) * P, seed, binary), want(r.size());
          const GroupAdvantageParams p{G, static_cast<AdvantageNorm>(mode < 3 ? mode : 0), 1e-6f};
          if (mode == 3) rloo_advantages(hf(want), hf(r), G, host());
          else group_advantages(hf(want), hf(r), p, host());
          GuardedTensor dr = dev(r), da = dev_out(r.size());
          if (mode == 3) rloo_advantages(da.t, dr.t, G, gpu());
          else group_advantages(da.t, dr.t, p, gpu());
          expect_tensor(da, want, what);
          if (mode == 3) rloo_advantages(dr.t, dr.t, G, gpu());  // in place
          else group_advantages(dr.t, dr.t, p, gpu());
          expect_tensor(dr, want, what + " in place");
        }
}

TEST(RlOpsCuda, ReinforcePPAndGaeMatchCpu) {
  RLCU_REQUIRE_CUDA();
  struct Shape {
    int n, min_len, max_len;
  };
  const Shape shapes[] = {{1, 1, 1},       {1, 37, 37},  {7, 0, 13},      {64, 1, 200},
                          {3, 2500, 3100}, {257, 0, 40}, {200, 500, 4000}};
  for (const Shape& sh : shapes)
    for (int kl = -1; kl < 3; ++kl)
      for (bool whiten : {false, true}) {
        const uint64_t seed = fresh_seed();
        const std::string what = "N=" + std::to_string(sh.n) + " len " + std::to_string(sh.min_len) + ".." +
                                 std::to_string(sh.max_len) + " kl " + std::to_string(kl) +
                                 (whiten ? " whiten" : "") + tag(seed);
        std::vector<int32_t> cu = random_cu(sh.n, sh.min_len, sh.max_len, seed);
        const size_t T = static_cast<size_t>(cu.back());
        std::vector<float> R = random_vec(sh.n, seed + 1, -1, 2), lp = random_vec(T, seed + 2, -5, 0),
                           rp = random_vec(T, seed + 3, -5, 0), V = random_vec(T, seed + 4, -1, 1);
        const TokenRewardParams trp{kl < 0 ? 0.0f : 0.05f, static_cast<KlEstimator>(kl < 0 ? 0 : kl)};
        GuardedTensor dcu = dev_i32(cu), dR = dev(R), dlp = dev(lp), drp = dev(rp), dV = dev(V);
        const Tensor hlp = kl < 0 ? Tensor() : hf(lp), hrp = kl < 0 ? Tensor() : hf(rp);
        const Tensor glp = kl < 0 ? Tensor() : dlp.t, grp = kl < 0 ? Tensor() : drp.t;

        ReturnsParams rpp;
        rpp.reward = trp;
        rpp.gamma = 0.99f;
        rpp.whiten = whiten;
        std::vector<float> adv(T), ret(T);
        reinforce_pp_advantages(hf(adv), hf(ret), hf(R), hlp, hrp, hi(cu), rpp, host());
        GuardedTensor da = dev_out(T), dret = dev_out(T);
        reinforce_pp_advantages(da.t, dret.t, dR.t, glp, grp, dcu.t, rpp, gpu());
        expect_tensor(da, adv, "reinforce++ adv " + what);
        expect_tensor(dret, ret, "reinforce++ returns " + what);
        GuardedTensor da2 = dev_out(T);
        reinforce_pp_advantages(da2.t, Tensor(), dR.t, glp, grp, dcu.t, rpp, gpu());  // returns not written
        expect_same_bits(download(da2), download(da), "reinforce++ without returns " + what);
        da2.check_guards(what);

        GaeParams gp;
        gp.reward = trp;
        gp.gamma = 0.99f;
        gp.lambda = 0.95f;
        gp.whiten = whiten;
        gae_advantages(hf(adv), hf(ret), hf(V), hf(R), hlp, hrp, hi(cu), gp, host());
        gae_advantages(da.t, dret.t, dV.t, dR.t, glp, grp, dcu.t, gp, gpu());
        expect_tensor(da, adv, "gae adv " + what);
        expect_tensor(dret, ret, "gae returns " + what);
        const std::vector<float> first = download(da);
        gae_advantages(da.t, dret.t, dV.t, dR.t, glp, grp, dcu.t, gp, gpu());
        expect_same_bits(download(da), first, "gae twice " + what);
        for (const GuardedTensor* g : {&dcu, &dR, &dlp, &drp, &dV}) g->check_guards("inputs " + what);
      }
}

TEST(RlOpsCuda, BroadcastAndLossWeightsMatchCpu) {
  RLCU_REQUIRE_CUDA();
  struct Shape {
    int n, min_len, max_len;
  };
  for (const Shape& sh : {Shape{1, 1, 1}, Shape{5, 0, 9}, Shape{130, 1, 700}}) {
    const uint64_t seed = fresh_seed();
    std::vector<int32_t> cu = random_cu(sh.n, sh.min_len, sh.max_len, seed);
    const size_t T = static_cast<size_t>(cu.back());
    const std::string what = "N=" + std::to_string(sh.n) + " T=" + std::to_string(T) + tag(seed);
    std::vector<float> sv = random_vec(sh.n, seed + 1), scale = random_vec(sh.n, seed + 2, 0, 1), want(T);
    GuardedTensor dcu = dev_i32(cu), dsv = dev(sv), dscale = dev(scale), out = dev_out(T);
    broadcast_to_tokens(hf(want), hf(sv), hi(cu), host());
    broadcast_to_tokens(out.t, dsv.t, dcu.t, gpu());
    expect_tensor(out, want, "broadcast " + what);
    for (int mode = 0; mode < 4; ++mode)
      for (bool scaled : {false, true}) {
        const LossWeightParams p{static_cast<LossAgg>(mode), static_cast<int64_t>(T) * 3 + 1, sh.n * 2 + 1, 512};
        loss_weights(hf(want), hi(cu), scaled ? hf(scale) : Tensor(), p, host());
        GuardedTensor w = dev_out(T);
        loss_weights(w.t, dcu.t, scaled ? dscale.t : Tensor(), p, gpu());
        expect_tensor(w, want, std::string("loss_weights ") + name_of(p.mode) + (scaled ? " scaled " : " ") + what);
      }
  }
}

TEST(RlOpsCuda, PolicyLossMatchesCpu) {
  RLCU_REQUIRE_CUDA();
  for (int T : {1, 7, 1000, 4097, 100003})
    for (int variant = 0; variant < 10; ++variant) {
      const uint64_t seed = fresh_seed();
      const std::string what = "T=" + std::to_string(T) + " variant " + std::to_string(variant) + tag(seed);
      // variants 0-5: clip (KL estimators, dual clip, entropy); 6-7: gspo; 8-9: cispo; odd ones >= 6 with IS weights.
      PolicyLossParams p;
      p.kind = variant < 6 ? PolicyLossKind::Clip : (variant < 8 ? PolicyLossKind::Gspo : PolicyLossKind::Cispo);
      p.clip_low = p.kind == PolicyLossKind::Gspo ? 3e-4f : 0.2f;
      p.clip_high = p.kind == PolicyLossKind::Gspo ? 4e-4f : 0.28f;
      p.dual_clip = variant % 2 && p.kind != PolicyLossKind::Cispo ? 3.0f : 0.0f;
      p.kl_coef = variant < 3 || variant >= 6 ? 0.1f : 0.0f;
      p.kl = static_cast<KlEstimator>(variant % 3);
      p.ent_coef = variant >= 4 ? 0.01f : 0.0f;
      const bool with_ent = variant != 3, with_is = variant >= 6 && variant % 2 == 1;
      const bool gspo = p.kind == PolicyLossKind::Gspo;
      std::vector<float> old_lp = random_vec(T, seed, -6, 0), d = random_vec(T, seed + 1, -1.5f, 1.5f), lp(T);
      for (int t = 0; t < T; ++t) lp[t] = old_lp[t] + d[t];  // ratios from 0.22 to 4.5: every branch
      std::vector<float> rp = random_vec(T, seed + 2, -6, 0), adv = random_vec(T, seed + 3, -2, 2),
                         w = random_vec(T, seed + 4, -0.5f, 1.0f), ent = random_vec(T, seed + 5, 0, 4),
                         isw = random_vec(T, seed + 7, 0, 2), slr = random_vec(T, seed + 8, -1e-3f, 1e-3f);
      for (float& x : w) x = x < 0 ? 0.0f : x / T;  // about a third masked
      for (int t = 0; t < T; t += 3)  // masked rows may hold garbage: it must not reach gradients or statistics
        if (w[t] == 0.0f) lp[t] = t % 2 ? std::numeric_limits<float>::quiet_NaN() : std::numeric_limits<float>::infinity();
      std::vector<float> stats0 = random_vec(kPolicyStats, seed + 6, 0, 3);
      std::vector<float> dl(T), de(T), st = stats0;
      const Tensor h_rp = p.kl_coef != 0 ? hf(rp) : Tensor(), h_ent = with_ent ? hf(ent) : Tensor();
      policy_loss(hf(dl), with_ent ? hf(de) : Tensor(), hf(st), hf(lp), hf(old_lp), h_rp, hf(adv), hf(w), h_ent,
                  with_is ? hf(isw) : Tensor(), gspo ? hf(slr) : Tensor(), p, host());
      GuardedTensor glp = dev(lp), gold = dev(old_lp), grp = dev(rp), gadv = dev(adv), gw = dev(w), gent = dev(ent);
      GuardedTensor gisw = dev(isw), gslr = dev(slr);
      GuardedTensor gdl = dev_out(T), gde = dev_out(T), gst = dev(stats0);
      const Tensor g_rp = p.kl_coef != 0 ? grp.t : Tensor(), g_ent = with_ent ? gent.t : Tensor();
      const Tensor g_is = with_is ? gisw.t : Tensor(), g_slr = gspo ? gslr.t : Tensor();
      policy_loss(gdl.t, with_ent ? gde.t : Tensor(), gst.t, glp.t, gold.t, g_rp, gadv.t, gw.t, g_ent, g_is, g_slr, p,
                  gpu());
      expect_tensor(gdl, dl, "dlogp " + what);
      if (with_ent) expect_tensor(gde, de, "dentropy " + what);
      expect_tensor(gst, st, "stats " + what);
      // Determinism: the same call again from the same starting stats gives the same bits.
      const std::vector<float> dl1 = download(gdl), st1 = download(gst);
      from_host_f32(gst.t, stats0);
      settle();
      policy_loss(gdl.t, with_ent ? gde.t : Tensor(), gst.t, glp.t, gold.t, g_rp, gadv.t, gw.t, g_ent, g_is, g_slr, p,
                  gpu());
      expect_same_bits(download(gdl), dl1, "dlogp twice " + what);
      expect_same_bits(download(gst), st1, "stats twice " + what);
      gst.check_guards(what);
      for (const GuardedTensor* g : {&glp, &gold, &grp, &gadv, &gw, &gent, &gisw, &gslr}) g->check_guards("inputs " + what);
    }
}

TEST(RlOpsCuda, SequenceLogRatioMatchesCpu) {
  RLCU_REQUIRE_CUDA();
  for (auto [n, len] : {std::pair<int, int>{1, 1}, std::pair<int, int>{7, 300}, std::pair<int, int>{64, 2000}}) {
    const uint64_t seed = fresh_seed();
    std::vector<int32_t> cu = random_cu(n, 0, len, seed);
    const size_t T = static_cast<size_t>(cu.back());
    const std::string what = "N=" + std::to_string(n) + " T=" + std::to_string(T) + tag(seed);
    std::vector<float> lp = random_vec(T, seed + 1, -6, 0), old = random_vec(T, seed + 2, -6, 0),
                       w = random_vec(T, seed + 3, -0.5f, 1.0f), want(T);
    for (float& x : w) x = x < 0 ? 0.0f : x;
    for (size_t t = 0; t < T; t += 5)
      if (w[t] == 0.0f) lp[t] = std::numeric_limits<float>::quiet_NaN();
    sequence_log_ratio(hf(want), hf(lp), hf(old), hf(w), hi(cu), host());
    GuardedTensor glp = dev(lp), gold = dev(old), gw = dev(w), gcu = dev_i32(cu), out = dev_out(T);
    sequence_log_ratio(out.t, glp.t, gold.t, gw.t, gcu.t, gpu());
    expect_tensor(out, want, "sequence_log_ratio " + what);
  }
}

TEST(RlOpsCuda, RolloutCorrectionMatchesCpu) {
  RLCU_REQUIRE_CUDA();
  for (auto [n, len] : {std::pair<int, int>{1, 1}, std::pair<int, int>{9, 300}, std::pair<int, int>{64, 2000}})
    for (int mode = 0; mode < 3; ++mode)
      for (int level = 0; level < 2; ++level) {
        const uint64_t seed = fresh_seed();
        std::vector<int32_t> cu = random_cu(n, 0, len, seed);
        const size_t T = static_cast<size_t>(cu.back());
        const std::string what = "N=" + std::to_string(n) + " T=" + std::to_string(T) + " mode " +
                                 std::to_string(mode) + " level " + std::to_string(level) + tag(seed);
        RolloutCorrectionParams p;
        p.mode = static_cast<RolloutCorrection>(mode);
        p.level = static_cast<CorrectionLevel>(level);
        p.cap = 1.5f;
        std::vector<float> old = random_vec(T, seed + 1, -6, 0), d = random_vec(T, seed + 2, -0.02f, 0.02f),
                           roll(T), mask = random_vec(T, seed + 3, -0.3f, 1.0f), want(T), st(kRolloutCorrectionStats);
        for (size_t t = 0; t < T; ++t) {
          roll[t] = old[t] + (t % 17 == 0 ? 10 * d[t] : d[t]);  // a few far-off tokens: masked / truncated
          mask[t] = mask[t] < 0 ? 0.0f : 1.0f;
          if (mask[t] == 0.0f && t % 2) old[t] = std::numeric_limits<float>::quiet_NaN();
        }
        rollout_correction(hf(want), hf(st), hf(old), hf(roll), hf(mask), hi(cu), p, host());
        GuardedTensor gold = dev(old), groll = dev(roll), gmask = dev(mask), gcu = dev_i32(cu), out = dev_out(T),
                      gst = dev(random_vec(kRolloutCorrectionStats, seed + 4, 0, 1));
        rollout_correction(out.t, gst.t, gold.t, groll.t, gmask.t, gcu.t, p, gpu());
        expect_tensor(out, want, "rollout_correction weights " + what);
        expect_tensor(gst, st, "rollout_correction stats " + what);
      }
}

TEST(RlOpsCuda, ValueLossMatchesCpu) {
  RLCU_REQUIRE_CUDA();
  for (int T : {1, 9, 1000, 65537})
    for (float clip : {0.0f, 0.2f}) {
      const uint64_t seed = fresh_seed();
      const std::string what = "T=" + std::to_string(T) + " clip " + std::to_string(clip) + tag(seed);
      std::vector<float> v = random_vec(T, seed, -1, 1), ov = random_vec(T, seed + 1, -1, 1),
                         R = random_vec(T, seed + 2, -2, 2), w = random_vec(T, seed + 3, -0.3f, 1.0f);
      for (float& x : w) x = x < 0 ? 0.0f : x;
      for (int t = 0; t < T; t += 3)
        if (w[t] == 0.0f) v[t] = std::numeric_limits<float>::quiet_NaN();
      std::vector<float> stats0 = random_vec(kValueStats, seed + 4, 0, 2), dv(T), st = stats0;
      value_loss(hf(dv), hf(st), hf(v), hf(ov), hf(R), hf(w), {clip}, host());
      GuardedTensor gv = dev(v), gov = dev(ov), gR = dev(R), gw = dev(w), gdv = dev_out(T), gst = dev(stats0);
      value_loss(gdv.t, gst.t, gv.t, gov.t, gR.t, gw.t, {clip}, gpu());
      expect_tensor(gdv, dv, "dv " + what);
      expect_tensor(gst, st, "value stats " + what);
      const std::vector<float> st1 = download(gst);
      from_host_f32(gst.t, stats0);
      settle();
      value_loss(gdv.t, gst.t, gv.t, gov.t, gR.t, gw.t, {clip}, gpu());
      expect_same_bits(download(gst), st1, "value stats twice " + what);
      for (const GuardedTensor* g : {&gv, &gov, &gR, &gw}) g->check_guards("inputs " + what);
    }
}

// ---- timings (RLCU_RL_BENCH=1) -------------------------------------------------------------------------------------

namespace {

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

TEST(RlOpsCudaBench, RolloutBatchSizes) {
  RLCU_REQUIRE_CUDA();
  const char* env = std::getenv("RLCU_RL_BENCH");
  if (!env || std::strcmp(env, "1") != 0) GTEST_SKIP() << "set RLCU_RL_BENCH=1 to time the RL ops";
  const uint64_t seed = fresh_seed();
  std::printf("\n%-44s %10s\n", "op (shape)", "ms");
  for (auto [n, len] : {std::pair<int, int>{64, 256}, std::pair<int, int>{512, 2048}, std::pair<int, int>{64, 8192}}) {
    std::vector<int32_t> cu = random_cu(n, len, len, seed);
    const size_t T = static_cast<size_t>(cu.back());
    GuardedTensor dcu = dev_i32(cu), R = dev(random_vec(n, seed + 1)), lp = dev(random_vec(T, seed + 2, -5, 0)),
                  rp = dev(random_vec(T, seed + 3, -5, 0)), V = dev(random_vec(T, seed + 4)), adv = dev_out(T),
                  ret = dev_out(T), w = dev_out(T), dl = dev_out(T), st = dev(std::vector<float>(kPolicyStats, 0.0f));
    GaeParams gp;
    gp.reward = {0.05f, KlEstimator::K1};
    ReturnsParams rpp;
    rpp.reward = gp.reward;
    const std::string shape = std::to_string(n) + " x " + std::to_string(len);
    std::printf("%-44s %10.3f\n", ("gae_advantages, whiten (" + shape + ")").c_str(),
                time_ms([&] { gae_advantages(adv.t, ret.t, V.t, R.t, lp.t, rp.t, dcu.t, gp, gpu()); }));
    std::printf("%-44s %10.3f\n", ("reinforce_pp_advantages, whiten (" + shape + ")").c_str(),
                time_ms([&] { reinforce_pp_advantages(adv.t, ret.t, R.t, lp.t, rp.t, dcu.t, rpp, gpu()); }));
    std::printf("%-44s %10.3f\n", ("loss_weights seq-mean-token-mean (" + shape + ")").c_str(),
                time_ms([&] {
                  loss_weights(w.t, dcu.t, Tensor(), {LossAgg::SeqMeanTokenMean, static_cast<int64_t>(T), n, 0},
                               gpu());
                }));
    PolicyLossParams pp;
    pp.kl_coef = 0.01f;
    pp.dual_clip = 3.0f;
    std::printf("%-44s %10.3f\n", ("policy_loss k3, dual clip (" + shape + ")").c_str(),
                time_ms([&] {
                  policy_loss(dl.t, Tensor(), st.t, lp.t, rp.t, V.t, ret.t, w.t, Tensor(), Tensor(), Tensor(), pp,
                              gpu());
                }));
    GuardedTensor st2 = dev(std::vector<float>(kValueStats, 0.0f));
    std::printf("%-44s %10.3f\n", ("value_loss clip 0.2 (" + shape + ")").c_str(),
                time_ms([&] { value_loss(dl.t, st2.t, V.t, lp.t, ret.t, w.t, {0.2f}, gpu()); }));
  }
  for (int G : {8, 64}) {
    const int N = 4096;
    GuardedTensor r = dev(random_rewards(N, seed + 7, true)), a = dev_out(N);
    std::printf("%-44s %10.3f\n", ("group_advantages group (N=4096, G=" + std::to_string(G) + ")").c_str(),
                time_ms([&] { group_advantages(a.t, r.t, {G, AdvantageNorm::Group, 1e-6f}, gpu()); }));
  }
}
