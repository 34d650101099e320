// Every op family through the CUDA-vs-CPU harness (tests/ops/op_harness.h): one small case description per op and
// dtype, odd shapes, fresh random inputs per run (the seed is in every failure message). The op-specific CUDA
// tests (test_ops_cuda, test_attention_cuda, test_rl_ops_cuda, test_reward_cuda, ...) keep the shape sweeps, the
// aliasing and determinism checks and the benchmarks; this file is where a new op first joins. GPU only: skips
// visibly without a CUDA device.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "ops/op_harness.h"
#include "rlcu/ops.h"
#include "rlcu/reward_ops.h"
#include "rlcu/rl_ops.h"

namespace rlcu {
namespace {

using test::in;
using test::ints;
using test::inout;
using test::none;
using test::OpCase;
using test::out;

constexpr DType kF32 = DType::F32, kBF16 = DType::BF16;
const DType kFloatTypes[] = {kF32, kBF16};

// bf16 operands go through the tensor cores (fp32 accumulation that is not IEEE round-to-nearest).
test::Tol operand_tol(DType operands) { return test::tol_for(operands); }

void run_all(const std::vector<OpCase>& cases) {
  for (const OpCase& c : cases) {
    SCOPED_TRACE(c.name);
    test::run_case(c, test::fresh_seed());
  }
}

// Packed sequences of the given lengths: cu_seqlens values [N+1].
std::vector<int64_t> cu_of(const std::vector<int64_t>& lens) {
  std::vector<int64_t> cu = {0};
  for (int64_t l : lens) cu.push_back(cu.back() + l);
  return cu;
}

TEST(BackendOps, Gemm) {
  RLCU_REQUIRE_CUDA();
  std::vector<OpCase> cases;
  for (DType ab : kFloatTypes)
    for (int tb = 0; tb < 2; ++tb) {
      const int64_t M = 7, N = 13, K = 33;
      ops::GemmParams p;
      p.trans_b = tb == 1;
      p.alpha = 0.5f;
      p.beta = 1.0f;
      cases.push_back({fmt::format("gemm {} trans_b={}", dtype_name(ab), tb),
                       {inout("out", {M, N}, kF32), in("a", {M, K}, ab),
                        in("b", tb ? std::vector<int64_t>{N, K} : std::vector<int64_t>{K, N}, ab)},
                       [p](const std::vector<Tensor>& t, Context& ctx) { ops::gemm(t[0], t[1], t[2], p, ctx); }});
      cases.back().args[0].tol = operand_tol(ab);
    }
  run_all(cases);
}

TEST(BackendOps, BiasAndEmbedding) {
  RLCU_REQUIRE_CUDA();
  const int64_t T = 9, H = 40, V = 11;
  std::vector<OpCase> cases;
  for (DType dt : kFloatTypes) {
    cases.push_back({fmt::format("bias_add {}", dtype_name(dt)), {inout("out", {T, H}, dt), in("bias", {H}, dt)},
                     [](const std::vector<Tensor>& t, Context& ctx) { ops::bias_add(t[0], t[1], ctx); }});
    cases.push_back({fmt::format("embedding_fwd {}", dtype_name(dt)),
                     {out("out", {T, H}, dt), in("table", {V, H}, dt),
                      ints("ids", {T}, DType::I32, {0, 3, 10, 3, 7, 1, 0, 9, 5})},
                     [](const std::vector<Tensor>& t, Context& ctx) { ops::embedding_fwd(t[0], t[1], t[2], ctx); }});
  }
  cases.push_back({"bias_grad f32", {inout("dbias", {H}, kF32), in("dy", {T, H}, kF32)},
                   [](const std::vector<Tensor>& t, Context& ctx) { ops::bias_grad(t[0], t[1], ctx); }});
  run_all(cases);
}

TEST(BackendOps, RmsnormRopeSwiglu) {
  RLCU_REQUIRE_CUDA();
  const int64_t T = 5, heads = 3, hd = 64, I = 37;
  std::vector<OpCase> cases;
  for (DType dt : kFloatTypes) {
    const std::string d = dtype_name(dt);
    cases.push_back({"rmsnorm_fwd " + d,
                     {out("out", {T * heads, hd}, dt), out("rstd", {T * heads}, kF32),
                      in("x", {T * heads, hd}, dt, -2, 2),
                      in("weight", {hd}, dt, 0.5f, 1.5f)},
                     [](const std::vector<Tensor>& t, Context& ctx) {
                       ops::rmsnorm_fwd(t[0], t[1], t[2], t[3], 1e-6f, ctx);
                     }});
    cases.push_back({"rmsnorm_bwd " + d,
                     {out("dx", {T, hd}, dt), inout("dweight", {hd}, kF32), in("dout", {T, hd}, dt),
                      in("x", {T, hd}, dt, -2, 2), in("weight", {hd}, dt, 0.5f, 1.5f), in("rstd", {T}, kF32, 0.5f, 2)},
                     [](const std::vector<Tensor>& t, Context& ctx) {
                       ops::rmsnorm_bwd(t[0], t[1], t[2], t[3], t[4], t[5], ctx);
                     }});
    cases.push_back({"rope_fwd " + d,
                     {out("out", {T, heads, hd}, dt), in("x", {T, heads, hd}, dt),
                      ints("positions", {T}, DType::I32, {0, 1, 2, 17, 300}), in("inv_freq", {hd / 2}, kF32, 0, 1)},
                     [](const std::vector<Tensor>& t, Context& ctx) { ops::rope_fwd(t[0], t[1], t[2], t[3], ctx); }});
    cases.push_back({"rope_bwd " + d,
                     {out("dx", {T, heads, hd}, dt), in("dout", {T, heads, hd}, dt),
                      ints("positions", {T}, DType::I32, {4, 0, 9, 1, 2}), in("inv_freq", {hd / 2}, kF32, 0, 1)},
                     [](const std::vector<Tensor>& t, Context& ctx) { ops::rope_bwd(t[0], t[1], t[2], t[3], ctx); }});
    cases.push_back({"swiglu_fwd " + d, {out("out", {T, I}, dt), in("gate_up", {T, 2 * I}, dt, -4, 4)},
                     [](const std::vector<Tensor>& t, Context& ctx) { ops::swiglu_fwd(t[0], t[1], ctx); }});
    cases.push_back({"swiglu_bwd " + d,
                     {out("dgate_up", {T, 2 * I}, dt), in("dout", {T, I}, dt), in("gate_up", {T, 2 * I}, dt, -4, 4)},
                     [](const std::vector<Tensor>& t, Context& ctx) { ops::swiglu_bwd(t[0], t[1], t[2], ctx); }});
  }
  run_all(cases);
}

TEST(BackendOps, Elementwise) {
  RLCU_REQUIRE_CUDA();
  const int64_t n = 1001;
  std::vector<OpCase> cases;
  cases.push_back({"add f32", {out("out", {n}, kF32), in("a", {n}, kF32), in("b", {n}, kF32)},
                   [](const std::vector<Tensor>& t, Context& ctx) { ops::add(t[0], t[1], t[2], ctx); }});
  cases.push_back({"scale f32", {out("out", {n}, kF32), in("x", {n}, kF32)},
                   [](const std::vector<Tensor>& t, Context& ctx) { ops::scale(t[0], t[1], -0.75f, ctx); }});
  cases.push_back({"cast f32 -> bf16", {out("out", {n}, kBF16), in("x", {n}, kF32)},
                   [](const std::vector<Tensor>& t, Context& ctx) { ops::cast(t[0], t[1], ctx); }});
  cases.push_back({"fill f32", {out("out", {n}, kF32)},
                   [](const std::vector<Tensor>& t, Context& ctx) { ops::fill(t[0], 0.25f, ctx); }});
  cases.push_back({"sum_squares f32", {out("out", {1}, kF32, test::Tol{1e-5, 1e-4}), in("x", {n}, kF32)},
                   [](const std::vector<Tensor>& t, Context& ctx) { ops::sum_squares(t[0], t[1], ctx); }});
  run_all(cases);
}

TEST(BackendOps, Attention) {
  RLCU_REQUIRE_CUDA();
  const std::vector<int64_t> lens = {5, 1, 12};
  const int64_t T = 18, nq = 4, nkv = 2;
  std::vector<OpCase> cases;
  for (DType dt : kFloatTypes)
    for (int64_t hd : {64, 40}) {  // 64 in bf16: the tensor-core path; the rest: the generic path
      ops::AttentionParams p;
      p.num_seqs = static_cast<int>(lens.size());
      p.max_seqlen = 12;
      p.scale = 1.0f / std::sqrt(static_cast<float>(hd));
      cases.push_back({fmt::format("attention_fwd {} hd={}", dtype_name(dt), hd),
                       {out("out", {T, nq, hd}, dt), out("lse", {T, nq}, kF32, test::tol_for(dt)),
                        in("q", {T, nq, hd}, dt), in("k", {T, nkv, hd}, dt), in("v", {T, nkv, hd}, dt),
                        ints("cu_seqlens", {4}, DType::I32, cu_of(lens))},
                       [p](const std::vector<Tensor>& t, Context& ctx) {
                         ops::attention_fwd(t[0], t[1], t[2], t[3], t[4], t[5], p, ctx);
                       }});
    }
  run_all(cases);
}

TEST(BackendOps, Advantages) {
  RLCU_REQUIRE_CUDA();
  const int G = 4, P = 3;
  std::vector<OpCase> cases;
  for (rl::AdvantageNorm norm : {rl::AdvantageNorm::Group, rl::AdvantageNorm::Batch, rl::AdvantageNorm::None}) {
    rl::GroupAdvantageParams p;
    p.group_size = G;
    p.norm = norm;
    cases.push_back({std::string("group_advantages ") + rl::name_of(norm),
                     {out("adv", {G * P}, kF32), in("rewards", {G * P}, kF32, 0, 1)},
                     [p](const std::vector<Tensor>& t, Context& ctx) { rl::group_advantages(t[0], t[1], p, ctx); }});
  }
  cases.push_back({"rloo_advantages", {out("adv", {G * P}, kF32), in("rewards", {G * P}, kF32, 0, 1)},
                   [](const std::vector<Tensor>& t, Context& ctx) { rl::rloo_advantages(t[0], t[1], G, ctx); }});
  const std::vector<int64_t> lens = {3, 0, 7, 1};
  cases.push_back({"broadcast_to_tokens",
                   {out("out", {11}, kF32), in("seq_values", {4}, kF32),
                    ints("cu_seqlens", {5}, DType::I32, cu_of(lens))},
                   [](const std::vector<Tensor>& t, Context& ctx) { rl::broadcast_to_tokens(t[0], t[1], t[2], ctx); }});
  for (rl::LossAgg mode : {rl::LossAgg::TokenMean, rl::LossAgg::SeqMeanTokenMean, rl::LossAgg::SeqMeanTokenSum,
                           rl::LossAgg::SeqMeanTokenSumNorm}) {
    rl::LossWeightParams p;
    p.mode = mode;
    p.total_tokens = 23;
    p.num_seqs = 9;
    p.norm_len = 16;
    cases.push_back({std::string("loss_weights ") + rl::name_of(mode),
                     {out("w", {11}, kF32), ints("cu_seqlens", {5}, DType::I32, cu_of(lens)),
                      in("seq_scale", {4}, kF32, 0, 1)},
                     [p](const std::vector<Tensor>& t, Context& ctx) { rl::loss_weights(t[0], t[1], t[2], p, ctx); }});
  }
  rl::ReturnsParams rp;
  rp.gamma = 0.9f;
  cases.push_back({"reinforce_pp_advantages",
                   {out("adv", {11}, kF32), out("returns", {11}, kF32), in("seq_rewards", {4}, kF32), none("old_logp"),
                    none("ref_logp"), ints("cu_seqlens", {5}, DType::I32, cu_of(lens))},
                   [rp](const std::vector<Tensor>& t, Context& ctx) {
                     rl::reinforce_pp_advantages(t[0], t[1], t[2], t[3], t[4], t[5], rp, ctx);
                   }});
  run_all(cases);
}

// Reward ops: bytes and offsets as integer arguments; the results are exact on both backends.
TEST(BackendOps, Rewards) {
  RLCU_REQUIRE_CUDA();
  const std::string text = "The answer is 42.  yes", answers = "42 yes";
  auto bytes_of = [](const std::string& s) { return std::vector<int64_t>(s.begin(), s.end()); };
  const test::Tol exact{0, 0};
  std::vector<OpCase> cases;
  // completions "The answer is 42." and "  yes"; answers "42" and " yes"
  const std::vector<test::Arg> pair_args = {
      out("out", {2}, kF32, exact),
      ints("text.bytes", {static_cast<int64_t>(text.size())}, DType::U8, bytes_of(text)),
      ints("text.offsets", {3}, DType::I64, {0, 17, static_cast<int64_t>(text.size())}),
      ints("other.bytes", {static_cast<int64_t>(answers.size())}, DType::U8, bytes_of(answers)),
      ints("other.offsets", {3}, DType::I64, {0, 2, static_cast<int64_t>(answers.size())})};
  auto pairwise = [&](const std::string& name,
                      void (*op)(const Tensor&, const TextBatch&, const TextBatch&, Context&)) {
    cases.push_back({name, pair_args, [op](const std::vector<Tensor>& t, Context& ctx) {
                       op(t[0], TextBatch{t[1], t[2]}, TextBatch{t[3], t[4]}, ctx);
                     }});
  };
  pairwise("reward_math_answer", &reward_math_answer);
  pairwise("reward_exact_match", &reward_exact_match);
  pairwise("reward_contains", &reward_contains);
  pairwise("reward_format (answers as tags)", &reward_format);
  LengthPenalty lp;
  lp.max_len = 10;
  lp.buffer = 4;
  cases.push_back({"reward_length",
                   {out("out", {4}, kF32, exact), ints("id_offsets", {5}, DType::I64, {0, 3, 9, 17, 30})},
                   [lp](const std::vector<Tensor>& t, Context& ctx) { reward_length(t[0], t[1], lp, ctx); }});
  run_all(cases);
}

}  // namespace
}  // namespace rlcu
