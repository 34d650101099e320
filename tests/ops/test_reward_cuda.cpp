// CUDA reward ops against their CPU twins (include/rlcu/reward.h) on fresh random inputs: detokenisation of random
// id batches (I32/I64 ids and offsets, ids outside the vocabulary, empty tokens and completions, completions longer
// than one thread block's chunk) and every rule-based component on random byte strings built from the pieces the
// rules look at (\boxed{, braces, `#### `, signs, commas, fractions, tags, arbitrary bytes). Results must be
// bit-identical; outputs are guarded (poisoned body, sentinels after the end). Batch sizes include 1 and odd sizes.
// RLCU_OPS_BENCH=1 adds a timing of the device path against the CPU twin.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "ops/gpu_test_util.h"
#include "rlcu/config.h"
#include "rlcu/reward.h"
#include "rlcu/tokenizer.h"

using namespace rlcu;
using rlcu::test::fresh_seed;
using rlcu::test::GuardedTensor;
using rlcu::test::make_guarded;
using rlcu::test::gpu;

namespace {

template <class T>
Tensor host_view(std::vector<T>& v, DType dt) {
  return Tensor(v.data(), dt, Device::CPU, {static_cast<int64_t>(v.size())});
}

// A device copy of host data (plain buffer, inputs only).
struct DevCopy {
  OwnedTensor o;
  template <class T>
  DevCopy(const std::vector<T>& v, DType dt) {
    o = OwnedTensor::make(dt, Device::CUDA, {std::max<int64_t>(1, static_cast<int64_t>(v.size()))});
    if (!v.empty())
      copy_bytes(Tensor(o.t.data, dt, Device::CUDA, {static_cast<int64_t>(v.size())}),
                 Tensor(const_cast<T*>(v.data()), dt, Device::CPU, {static_cast<int64_t>(v.size())}));
    o.t = Tensor(o.t.data, dt, Device::CUDA, {static_cast<int64_t>(v.size())});
  }
};

struct HostText {
  std::vector<uint8_t> bytes;
  std::vector<int64_t> offsets{0};
  void add(const std::string& s) {
    bytes.insert(bytes.end(), s.begin(), s.end());
    offsets.push_back(static_cast<int64_t>(bytes.size()));
  }
  TextBatch host() {
    return TextBatch{bytes.empty() ? Tensor() : host_view(bytes, DType::U8), host_view(offsets, DType::I64)};
  }
};

struct DevText {
  DevCopy bytes, offsets;
  bool empty;
  explicit DevText(const HostText& h)
      : bytes(h.bytes, DType::U8), offsets(h.offsets, DType::I64), empty(h.bytes.empty()) {}
  TextBatch view() const { return TextBatch{empty ? Tensor() : bytes.o.t, offsets.o.t}; }
};

std::string random_piece(std::mt19937_64& g) {
  static const std::vector<std::string> pieces{
      "\\boxed{", "}", "{", "#### ", "-", "+", ",", ".", "/", "$", "\\$", "\\frac{", "\\dfrac{", "\\tfrac{", " ",
      "\n", "\t", "<think>", "</think>", "<answer>", "</answer>", "%", "\\%", "\\!", "abc", "x", "0", "00"};
  std::uniform_int_distribution<int> kind(0, 9);
  const int k = kind(g);
  if (k < 5) return pieces[g() % pieces.size()];
  if (k < 8) {  // a number-like run
    std::string s = std::to_string(g() % (k == 5 ? 10 : k == 6 ? 1000 : 100000000));
    if (g() % 3 == 0) s += "," + std::to_string(100 + g() % 900);
    if (g() % 3 == 0) s += "." + std::to_string(g() % 100);
    return s;
  }
  if (k == 8) return std::string(1, static_cast<char>(g() % 256));  // any byte, NUL and invalid UTF-8 included
  return std::string(1 + g() % 3, ' ');
}

std::string random_text(std::mt19937_64& g, int max_pieces) {
  std::string s;
  const int n = static_cast<int>(g() % (max_pieces + 1));
  for (int i = 0; i < n; ++i) s += random_piece(g);
  return s;
}

// Bit-exact comparison of a guarded F32 device output with the CPU result.
void expect_same_bits(const GuardedTensor& d, const std::vector<float>& want, const std::string& what) {
  gpu().synchronize("test");
  std::vector<float> got(want.size());
  if (!got.empty()) copy_bytes(host_view(got, DType::F32), d.t);
  EXPECT_EQ(0, want.empty() ? 0 : std::memcmp(got.data(), want.data(), want.size() * 4)) << what;
  size_t bad = 0;
  for (size_t i = 0; i < want.size(); ++i) bad += std::memcmp(&got[i], &want[i], 4) != 0;
  EXPECT_EQ(bad, 0u) << what;
  d.check_guards(what);
}

}  // namespace

TEST(RewardCuda, DetokenizeMatchesCpu) {
  RLCU_REQUIRE_CUDA();
  const uint64_t seed = fresh_seed();
  std::mt19937_64 g(seed);
  std::vector<std::string> tokens(301);
  for (auto& t : tokens) {
    const int len = g() % 10 == 0 ? 0 : g() % 20 == 0 ? 40 : 1 + static_cast<int>(g() % 6);
    for (int k = 0; k < len; ++k) t += static_cast<char>(g() % 256);
  }
  TokenBytesTable table = TokenBytesTable::from_strings(tokens);
  table.upload(gpu());
  for (int64_t N : {1, 7, 300, 1001}) {
    for (bool ids64 : {false, true}) {
      const std::string what = "seed " + std::to_string(seed) + " N " + std::to_string(N) + (ids64 ? " I64" : " I32");
      std::vector<int64_t> ids, off{0};
      for (int64_t i = 0; i < N; ++i) {
        const int64_t len = g() % 8 == 0 ? 0 : static_cast<int64_t>(g() % (g() % 4 == 0 ? 700 : 40));
        for (int64_t t = 0; t < len; ++t) ids.push_back(static_cast<int64_t>(g() % 311) - 5);  // some outside [0, V)
        off.push_back(static_cast<int64_t>(ids.size()));
      }
      std::vector<int32_t> ids32(ids.begin(), ids.end()), off32(off.begin(), off.end());
      // CPU twin.
      const Tensor h_ids = ids64 ? host_view(ids, DType::I64) : host_view(ids32, DType::I32);
      const Tensor h_off = ids64 ? host_view(off32, DType::I32) : host_view(off, DType::I64);  // mixed index types
      std::vector<int64_t> want_off(static_cast<size_t>(N + 1));
      detokenize_offsets(host_view(want_off, DType::I64), h_ids, h_off, table.bytes(Device::CPU), table.offsets(Device::CPU), Context::cpu());
      std::vector<uint8_t> want(static_cast<size_t>(want_off.back()));
      detokenize_bytes(host_view(want, DType::U8), host_view(want_off, DType::I64), h_ids, h_off, table.bytes(Device::CPU), table.offsets(Device::CPU),
                       Context::cpu());
      // CUDA.
      DevCopy d_ids64(ids, DType::I64), d_ids32(ids32, DType::I32), d_off64(off, DType::I64), d_off32(off32, DType::I32);
      const Tensor d_ids = ids64 ? d_ids64.o.t : d_ids32.o.t;
      const Tensor d_off = ids64 ? d_off32.o.t : d_off64.o.t;
      GuardedTensor boff = make_guarded(DType::I64, Device::CUDA, {N + 1});
      detokenize_offsets(boff.t, d_ids, d_off, table.bytes(Device::CUDA), table.offsets(Device::CUDA), gpu());
      gpu().synchronize("test");
      std::vector<int64_t> got_off(static_cast<size_t>(N + 1));
      copy_bytes(host_view(got_off, DType::I64), boff.t);
      EXPECT_EQ(got_off, want_off) << what;
      boff.check_guards(what + " byte_offsets");
      const int64_t nb = want_off.back();
      GuardedTensor bytes = make_guarded(DType::U8, Device::CUDA, {std::max<int64_t>(nb, 1)});
      detokenize_bytes(bytes.t, boff.t, d_ids, d_off, table.bytes(Device::CUDA), table.offsets(Device::CUDA), gpu());
      gpu().synchronize("test");
      std::vector<uint8_t> got(static_cast<size_t>(std::max<int64_t>(nb, 1)));
      copy_bytes(host_view(got, DType::U8), bytes.t);
      got.resize(static_cast<size_t>(nb));
      EXPECT_EQ(got, want) << what;
      bytes.check_guards(what + " bytes");
    }
  }
}

// A countdown case: 1-5 numbers and a left-nested expression over them, ((n1 op n2) op n3)..., whose value (exact
// integers) is the target most of the time; now and then a foreign number, a decimal point, an operator that is not
// allowed or a missing parenthesis; in the `=` line form or boxed.
std::pair<std::string, std::string> random_countdown(std::mt19937_64& g) {
  const int k = 1 + static_cast<int>(g() % 5);
  std::vector<int64_t> nums;
  std::string ref;
  for (int i = 0; i < k; ++i) {
    nums.push_back(static_cast<int64_t>(g() % (g() % 8 == 0 ? 1000000000 : 30)));
    ref += std::to_string(nums.back()) + (g() % 3 ? " " : ", ");
  }
  static const char* kOps[] = {"+", "-", "*", "/", "\\times", "\u00f7", "\u2212", "^", "%"};
  static const int kCode[] = {1, 2, 3, 4, 3, 4, 2, 0, 0};
  std::string expr = std::to_string(nums[0]);
  int64_t value = nums[0];
  bool ok = true;
  for (int i = 1; i < k; ++i) {
    const size_t o = g() % (g() % 10 == 0 ? 9 : 7);
    const int64_t x = g() % 12 == 0 ? static_cast<int64_t>(g() % 30) : nums[static_cast<size_t>(i)];
    expr = (i > 1 ? "(" + expr + ")" : expr) + kOps[o] + std::to_string(x);
    const int c = kCode[o];
    if (c == 1) value += x;
    if (c == 2) value -= x;
    if (c == 3 && __builtin_mul_overflow(value, x, &value)) ok = false;
    if (c == 4) {
      if (x == 0 || value % x != 0) ok = false;
      value = x == 0 ? 0 : value / x;
    }
    if (c == 0) ok = false;
  }
  if (g() % 20 == 0) expr += ".5";
  if (g() % 20 == 0) expr = "(" + expr;
  const int64_t target = ok && g() % 5 != 0 ? value : static_cast<int64_t>(g() % 50);
  const std::string t = std::to_string(target);
  const std::string text = g() % 2 ? expr + "=" + t + " \\boxed{" + t + "}" : "so \\boxed{" + expr + "}";
  return {text, ref + "-> " + t};
}

TEST(RewardCuda, ComponentsMatchCpuBitForBit) {
  RLCU_REQUIRE_CUDA();
  const uint64_t seed = fresh_seed();
  std::mt19937_64 g(seed);
  for (int64_t N : {1, 2, 37, 1000, 4097}) {
    const std::string what = "seed " + std::to_string(seed) + " N " + std::to_string(N);
    HostText text, answers, needles, cd_text, cd_answers;
    std::vector<int64_t> id_off{0};
    for (int64_t i = 0; i < N; ++i) {
      const auto [cd_t, cd_a] = random_countdown(g);
      cd_text.add(cd_t);
      cd_answers.add(cd_a);
      std::string t = random_text(g, g() % 5 == 0 ? 400 : 30);
      std::string a = random_text(g, 4);
      if (g() % 2 == 0) {  // a well-formed answer the completion may match
        a = std::to_string(g() % 2000);
        t += (g() % 2 ? "\\boxed{" + a + "}" : "#### " + a) + random_text(g, 2);
      }
      text.add(t);
      answers.add(a);
      needles.add(g() % 4 == 0 ? std::string() : random_text(g, 2));
      id_off.push_back(id_off.back() + static_cast<int64_t>(g() % 50));
    }
    HostText tags;
    const int K = static_cast<int>(g() % 4);
    for (int k = 0; k < K; ++k) tags.add(random_piece(g));

    DevText d_text(text), d_ans(answers), d_needles(needles), d_tags(tags), d_cd_text(cd_text), d_cd_ans(cd_answers);
    DevCopy d_id_off(id_off, DType::I64);
    std::vector<float> want(static_cast<size_t>(N));
    const Tensor h_out = host_view(want, DType::F32);

    reward_math_answer(h_out, text.host(), answers.host(), Context::cpu());
    size_t ones = 0;
    for (float v : want) ones += v == 1.0f;
    if (N >= 37) {
      EXPECT_GT(ones, 0u) << what << ": the random cases never match (test inputs too weak)";
    }
    GuardedTensor o1 = make_guarded(DType::F32, Device::CUDA, {N});
    reward_math_answer(o1.t, d_text.view(), d_ans.view(), gpu());
    expect_same_bits(o1, want, what + " math_answer");

    reward_exact_match(h_out, text.host(), answers.host(), Context::cpu());
    GuardedTensor o2 = make_guarded(DType::F32, Device::CUDA, {N});
    reward_exact_match(o2.t, d_text.view(), d_ans.view(), gpu());
    expect_same_bits(o2, want, what + " exact_match");

    reward_countdown(h_out, cd_text.host(), cd_answers.host(), Context::cpu());
    size_t cd_ones = 0;
    for (float v : want) cd_ones += v == 1.0f;
    if (N >= 37) {
      EXPECT_GT(cd_ones, 0u) << what << ": no countdown case scores 1 (test inputs too weak)";
    }
    GuardedTensor o6 = make_guarded(DType::F32, Device::CUDA, {N});
    reward_countdown(o6.t, d_cd_text.view(), d_cd_ans.view(), gpu());
    expect_same_bits(o6, want, what + " countdown");

    reward_contains(h_out, text.host(), needles.host(), Context::cpu());
    GuardedTensor o3 = make_guarded(DType::F32, Device::CUDA, {N});
    reward_contains(o3.t, d_text.view(), d_needles.view(), gpu());
    expect_same_bits(o3, want, what + " contains");

    reward_format(h_out, text.host(), tags.host(), Context::cpu());
    GuardedTensor o4 = make_guarded(DType::F32, Device::CUDA, {N});
    reward_format(o4.t, d_text.view(), d_tags.view(), gpu());
    expect_same_bits(o4, want, what + " format");

    const LengthPenalty lp{30, static_cast<int64_t>(g() % 31)};
    reward_length(h_out, host_view(id_off, DType::I64), lp, Context::cpu());
    GuardedTensor o5 = make_guarded(DType::F32, Device::CUDA, {N});
    reward_length(o5.t, d_id_off.o.t, lp, gpu());
    expect_same_bits(o5, want, what + " length");
  }
}

TEST(RewardCuda, RewardSetMatchesCpu) {
  RLCU_REQUIRE_CUDA();
  const uint64_t seed = fresh_seed();
  std::mt19937_64 g(seed);
  const Tokenizer tok = Tokenizer::load(std::string(RLCU_TEST_FIXTURES) + "/tokenizers/qwen3");
  RewardSection cfg;
  cfg.math_answer = 1.0;
  cfg.exact_match = 0.5;
  cfg.contains = 0.25;
  cfg.format = 0.125;
  cfg.format_tags = "<think>,</think>";
  cfg.length = 1.0;
  cfg.length_max = 40;
  cfg.length_buffer = 10;
  RewardSet cpu_set(cfg, &tok, Context::cpu());
  RewardSet gpu_set(cfg, &tok, gpu());
  for (int n : {1, 5, 333}) {
    RewardBatch b;
    for (int i = 0; i < n; ++i) {
      RewardItem it;
      const std::string a = std::to_string(g() % 100);
      std::string t = random_text(g, 20);
      if (g() % 2) t = "<think>" + t + "</think> \\boxed{" + a + "}";
      for (char& c : t)
        if (static_cast<unsigned char>(c) >= 0x80) c = '?';  // encode() takes valid UTF-8 only
      it.completion = tok.encode(t);
      // Arbitrary ids too: their bytes need not be valid UTF-8 on their own.
      for (int k = static_cast<int>(g() % 4); k > 0; --k)
        it.completion.push_back(static_cast<int32_t>(g() % static_cast<uint64_t>(tok.vocab_size())));
      it.answer = g() % 3 ? a : random_text(g, 3);
      b.items.push_back(it);
    }
    const RewardResult want = cpu_set.score(b), got = gpu_set.score(b);
    EXPECT_EQ(got.total, want.total) << "seed " << seed << " n " << n;
    EXPECT_EQ(got.components, want.components) << "seed " << seed << " n " << n;
  }
}

// With RLCU_OPS_BENCH=1: time the device path (detokenise + math_answer + format) on 4096 completions of 512 tokens
// against the CPU twin, with CUDA events (median of 10 runs after a warm-up).
TEST(RewardCuda, BenchDetokenizeAndRules) {
  RLCU_REQUIRE_CUDA();
  if (!std::getenv("RLCU_OPS_BENCH")) GTEST_SKIP() << "set RLCU_OPS_BENCH=1 to time the reward ops";
  std::mt19937_64 g(1234);
  const Tokenizer tok = Tokenizer::load(std::string(RLCU_TEST_FIXTURES) + "/tokenizers/qwen3");
  TokenBytesTable table = TokenBytesTable::build(tok);
  table.upload(gpu());
  const int64_t N = 4096, L = 512;
  std::vector<int32_t> ids;
  std::vector<int64_t> off{0};
  HostText answers, tags;
  tags.add("<think>");
  tags.add("</think>");
  for (int64_t i = 0; i < N; ++i) {
    std::string t = "<think>";
    while (static_cast<int64_t>(t.size()) < 3 * L) t += random_piece(g);
    for (char& c : t)
      if (static_cast<unsigned char>(c) >= 0x80) c = '?';
    std::vector<int32_t> e = tok.encode(t + "</think> \\boxed{42}");
    e.resize(static_cast<size_t>(L));
    ids.insert(ids.end(), e.begin(), e.end());
    off.push_back(static_cast<int64_t>(ids.size()));
    answers.add("42");
  }
  DevCopy d_ids(ids, DType::I32), d_off(off, DType::I64);
  DevText d_ans(answers), d_tags(tags);
  OwnedTensor boff = OwnedTensor::make(DType::I64, Device::CUDA, {N + 1});
  OwnedTensor bytes = OwnedTensor::make(DType::U8, Device::CUDA, {N * L * table.max_token_bytes()});
  OwnedTensor out = OwnedTensor::make(DType::F32, Device::CUDA, {N});
  const auto device_pass = [&] {
    detokenize_offsets(boff.t, d_ids.o.t, d_off.o.t, table.bytes(Device::CUDA), table.offsets(Device::CUDA), gpu());
    detokenize_bytes(bytes.t, boff.t, d_ids.o.t, d_off.o.t, table.bytes(Device::CUDA), table.offsets(Device::CUDA), gpu());
    const TextBatch text{bytes.t, boff.t};
    reward_math_answer(out.t, text, d_ans.view(), gpu());
    reward_format(out.t, text, d_tags.view(), gpu());
  };
  device_pass();
  gpu().synchronize("bench");
  std::vector<float> ms;
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  for (int r = 0; r < 10; ++r) {
    cudaEventRecord(a, static_cast<cudaStream_t>(gpu().stream()));
    device_pass();
    cudaEventRecord(b, static_cast<cudaStream_t>(gpu().stream()));
    cudaEventSynchronize(b);
    float t = 0;
    cudaEventElapsedTime(&t, a, b);
    ms.push_back(t);
  }
  std::sort(ms.begin(), ms.end());
  // CPU twin on the same batch.
  std::vector<int64_t> h_boff(static_cast<size_t>(N + 1));
  const auto t0 = std::chrono::steady_clock::now();
  detokenize_offsets(host_view(h_boff, DType::I64), host_view(ids, DType::I32), host_view(off, DType::I64), table.bytes(Device::CPU), table.offsets(Device::CPU),
                     Context::cpu());
  std::vector<uint8_t> h_bytes(static_cast<size_t>(h_boff.back()));
  detokenize_bytes(host_view(h_bytes, DType::U8), host_view(h_boff, DType::I64), host_view(ids, DType::I32),
                   host_view(off, DType::I64), table.bytes(Device::CPU), table.offsets(Device::CPU), Context::cpu());
  std::vector<float> h_out(static_cast<size_t>(N));
  const TextBatch h_text{host_view(h_bytes, DType::U8), host_view(h_boff, DType::I64)};
  reward_math_answer(host_view(h_out, DType::F32), h_text, answers.host(), Context::cpu());
  reward_format(host_view(h_out, DType::F32), h_text, tags.host(), Context::cpu());
  const double cpu_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  std::printf("reward ops, %lld completions x %lld tokens (%lld bytes): CUDA %.3f ms (median of 10), CPU twin %.1f ms\n",
              static_cast<long long>(N), static_cast<long long>(L), static_cast<long long>(h_boff.back()), ms[5],
              cpu_ms);
  cudaEventDestroy(a);
  cudaEventDestroy(b);
}
