// Rule-based rewards on the CPU: every component on hand-written cases (values worked out by hand from the rules in
// include/rlcu/reward.h), detokenisation, the reward.* config keys, validation messages and RewardSet's weighted sum.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "rlcu/config.h"
#include "rlcu/error.h"
#include "rlcu/reward.h"
#include "rlcu/tokenizer.h"

using namespace rlcu;

namespace {

struct HostBatch {
  std::string bytes;
  std::vector<int64_t> offsets{0};
  explicit HostBatch(const std::vector<std::string>& v) {
    for (const std::string& s : v) {
      bytes += s;
      offsets.push_back(static_cast<int64_t>(bytes.size()));
    }
  }
  TextBatch view() const {
    return TextBatch{bytes.empty() ? Tensor()
                                   : Tensor(const_cast<char*>(bytes.data()), DType::U8, Device::CPU,
                                            {static_cast<int64_t>(bytes.size())}),
                     Tensor(const_cast<int64_t*>(offsets.data()), DType::I64, Device::CPU,
                            {static_cast<int64_t>(offsets.size())})};
  }
};

using PairOp = void (*)(const Tensor&, const TextBatch&, const TextBatch&, Context&);

std::vector<float> run_pair(PairOp op, const std::vector<std::string>& a, const std::vector<std::string>& b) {
  HostBatch x(a), y(b);
  std::vector<float> out(a.size(), -7.0f);
  op(Tensor(out.data(), DType::F32, Device::CPU, {static_cast<int64_t>(out.size())}), x.view(), y.view(),
     Context::cpu());
  return out;
}

float math(const std::string& completion, const std::string& answer) {
  return run_pair(reward_math_answer, {completion}, {answer})[0];
}

std::vector<float> format_of(const std::vector<std::string>& texts, const std::vector<std::string>& tags) {
  HostBatch x(texts), t(tags);
  std::vector<float> out(texts.size(), -7.0f);
  reward_format(Tensor(out.data(), DType::F32, Device::CPU, {static_cast<int64_t>(out.size())}), x.view(), t.view(),
                Context::cpu());
  return out;
}

std::vector<float> length_of(const std::vector<int64_t>& lens, int64_t L, int64_t C) {
  std::vector<int32_t> off{0};
  for (int64_t n : lens) off.push_back(off.back() + static_cast<int32_t>(n));
  std::vector<float> out(lens.size(), -7.0f);
  reward_length(Tensor(out.data(), DType::F32, Device::CPU, {static_cast<int64_t>(out.size())}),
                Tensor(off.data(), DType::I32, Device::CPU, {static_cast<int64_t>(off.size())}), LengthPenalty{L, C},
                Context::cpu());
  return out;
}

}  // namespace

TEST(RewardMath, BoxedWithThousandsComma) {
  EXPECT_EQ(math("so the total is \\boxed{1,234}.", "1234"), 1.0f);
  EXPECT_EQ(math("\\boxed{1,234,567}", "1234567"), 1.0f);
  EXPECT_EQ(math("\\boxed{1,234}", "1235"), 0.0f);
  EXPECT_EQ(math("\\boxed{1234}", "1,234"), 1.0f);
}

TEST(RewardMath, FractionsAsRationals) {
  EXPECT_EQ(math("\\boxed{\\frac{1}{2}}", "0.5"), 1.0f);
  EXPECT_EQ(math("\\boxed{\\dfrac{-1}{4}}", "-0.25"), 1.0f);
  EXPECT_EQ(math("\\boxed{-\\tfrac{3}{4}}", "-3/4"), 1.0f);
  EXPECT_EQ(math("\\boxed{2/4}", "\\frac{1}{2}"), 1.0f);
  EXPECT_EQ(math("\\boxed{1/3}", "0.3333333"), 1.0f);  // relative error 1e-7
  EXPECT_EQ(math("\\boxed{1/3}", "0.333"), 0.0f);
  EXPECT_EQ(math("\\boxed{\\frac{1}{0}}", "1/0"), 0.0f);  // division by zero is not numeric; strings differ
}

TEST(RewardMath, HashAnswerAndLastNumber) {
  EXPECT_EQ(math("5 - 8 = -3\n#### -3", "-3"), 1.0f);
  EXPECT_EQ(math("#### $1,200 is it", "1200"), 1.0f);
  EXPECT_EQ(math("#### -3 and then 7", "-3"), 1.0f);  // the number after #### wins over the last number
  EXPECT_EQ(math("She has 3 apples and buys 4 more, so 7.", "7"), 1.0f);
  EXPECT_EQ(math("She has 3 apples and buys 4 more, so 7.", "3"), 0.0f);
  EXPECT_EQ(math("between 5-7", "7"), 1.0f);  // `-` after a digit is not a sign
  EXPECT_EQ(math("x = -4", "-4"), 1.0f);
  EXPECT_EQ(math("x = -4", "4"), 0.0f);
  EXPECT_EQ(math("the list 1,2,3", "3"), 1.0f);  // `,2` is not a thousands group
  EXPECT_EQ(math("about .5 of it", "0.5"), 1.0f);
  // A GSM8K reference solution: only the text after its last `#### ` is the answer.
  EXPECT_EQ(math("... so 72 clips.", "Natalia sold 48/2 = 24 clips in May.\n#### 72"), 1.0f);
}

TEST(RewardMath, NormalisationRules) {
  EXPECT_EQ(math("\\boxed{2.50}", "2.5"), 1.0f);
  EXPECT_EQ(math("\\boxed{\\$1,000}", "1000"), 1.0f);
  EXPECT_EQ(math("\\boxed{$1000$}", "1000"), 1.0f);
  EXPECT_EQ(math("\\boxed{+5}", "5"), 1.0f);
  EXPECT_EQ(math("\\boxed{5.}", "5"), 1.0f);
  EXPECT_EQ(math("\\boxed{50\\%}", "50"), 1.0f);
  EXPECT_EQ(math("\\boxed{ 1 000 }", "1000"), 1.0f);  // spaces are deleted
  EXPECT_EQ(math("\\boxed{-0}", "0"), 1.0f);
  EXPECT_EQ(math("\\boxed{1000000}", "1000000.5"), 1.0f);  // relative difference 5e-7
  EXPECT_EQ(math("\\boxed{1000}", "1000.5"), 0.0f);
  EXPECT_EQ(math("\\boxed{12345678901234567890123}", "12345678901234567890123"), 1.0f);
  EXPECT_EQ(math("\\boxed{0.000001}", "0.000002"), 0.0f);
}

TEST(RewardMath, NestedBracesAndLastBoxed) {
  EXPECT_EQ(math("\\boxed{\\text{x}^{2}}", "\\text{x}^{2}"), 1.0f);  // non-numeric: trimmed strings
  EXPECT_EQ(math("\\boxed{{3}}", "{3}"), 1.0f);
  EXPECT_EQ(math("first \\boxed{3} then \\boxed{4}", "4"), 1.0f);
  EXPECT_EQ(math("first \\boxed{3} then \\boxed{4}", "3"), 0.0f);
  EXPECT_EQ(math("\\boxed{7} and a cut-off \\boxed{8", "7"), 1.0f);  // the unbalanced last one is skipped
  EXPECT_EQ(math("\\boxed{ B }", "B"), 1.0f);
  EXPECT_EQ(math("\\boxed{b}", "B"), 0.0f);
}

TEST(RewardMath, NoAnswer) {
  EXPECT_EQ(math("I do not know.", "5"), 0.0f);
  EXPECT_EQ(math("", "5"), 0.0f);
  EXPECT_EQ(math("\\boxed{5}", ""), 0.0f);
  EXPECT_EQ(math("\\boxed{5}", "  \n"), 0.0f);
  EXPECT_EQ(math("\\boxed{}", "x"), 0.0f);
}

TEST(RewardRules, ExactMatchTrims) {
  const auto v = run_pair(reward_exact_match, {"  hello \n", "hello", "hel lo", "", "Hello"},
                          {"hello", "\thello", "hello", "  ", "hello"});
  EXPECT_EQ(v, (std::vector<float>{1, 1, 0, 1, 0}));
}

float countdown(const std::string& completion, const std::string& answer = "3 5 7 -> 22") {
  return run_pair(reward_countdown, {completion}, {answer})[0];
}

TEST(RewardCountdown, ValidExpressions) {
  EXPECT_EQ(countdown("3*5+7=22 \\boxed{22}"), 1.0f);           // the synth SFT format
  EXPECT_EQ(countdown("Let me think.\n5*3 + 7 = 22\nSo \\boxed{22}"), 1.0f);  // last line with a `=`
  EXPECT_EQ(countdown("\\boxed{(7 + 5) * 3 - 14}", "3 5 7 14 -> 22"), 1.0f);  // boxed expression
  EXPECT_EQ(countdown("\\boxed{3 \\times 5 + 7 = 22}"), 1.0f);
  EXPECT_EQ(countdown("3\u00d75+7=22"), 1.0f);                     // U+00D7
  EXPECT_EQ(countdown("7\u22123=4", "3 5 7 -> 4"), 1.0f);          // U+2212
  EXPECT_EQ(countdown("\\boxed{35 \u00f7 7 \\div 5}", "5, 7, 35 -> 1"), 1.0f);
  EXPECT_EQ(countdown("5+7=12", "3 5 7 -> 12"), 1.0f);             // each number at most once: 3 unused
  EXPECT_EQ(countdown("3+3+5=11", "3 3 5 -> 11"), 1.0f);           // a number given twice may be used twice
  EXPECT_EQ(countdown("7-5-3=-1", "3 5 7 -> -1"), 1.0f);           // left to right; a negative target
  EXPECT_EQ(countdown("7-(5-3)=5", "3 5 7 -> 5"), 1.0f);
  EXPECT_EQ(countdown("5*7/(3+4)", "3 4 5 7 -> 5"), 0.0f);         // no `=` line and no boxed expression
}

TEST(RewardCountdown, InvalidExpressionsScoreZero) {
  EXPECT_EQ(countdown("\\boxed{22}"), 0.0f);              // the target alone uses no given number
  EXPECT_EQ(countdown("22=22 \\boxed{22}"), 0.0f);        // 22 is not a given number
  EXPECT_EQ(countdown("3*5+7+7=29", "3 5 7 -> 29"), 0.0f);  // 7 used twice
  EXPECT_EQ(countdown("3*5+8=23", "3 5 7 -> 23"), 0.0f);    // 8 is not given
  EXPECT_EQ(countdown("3*5+7=23 \\boxed{23}", "3 5 7 -> 23"), 0.0f);  // wrong value for the target
  EXPECT_EQ(countdown("3*5+7=22", "3 5 7 -> 23"), 0.0f);    // wrong target
  EXPECT_EQ(countdown("3^5=243", "3 5 -> 243"), 0.0f);      // other operators
  EXPECT_EQ(countdown("3%5+7=10", "3 5 7 -> 10"), 0.0f);
  EXPECT_EQ(countdown("-3+5+7=9"), 0.0f);                   // no unary minus
  EXPECT_EQ(countdown("3.0*5+7=22"), 0.0f);                 // no decimals
  EXPECT_EQ(countdown("7/(5-5)=0", "5 5 7 -> 0"), 0.0f);    // division by zero
  EXPECT_EQ(countdown("7/3*3=7", "3 3 7 -> 7"), 0.0f);      // 7/3 is not an integer
  EXPECT_EQ(countdown("(3+5=8", "3 5 -> 8"), 0.0f);         // unbalanced parentheses
  EXPECT_EQ(countdown("3+5)=8", "3 5 -> 8"), 0.0f);
  EXPECT_EQ(countdown("3 5=8", "3 5 -> 8"), 0.0f);          // two numbers without an operator
  EXPECT_EQ(countdown("3+=3", "3 -> 3"), 0.0f);
  EXPECT_EQ(countdown("=22"), 0.0f);                        // empty expression
  EXPECT_EQ(countdown(""), 0.0f);
  // Overflow: 999999999^2 exceeds 10^15.
  EXPECT_EQ(countdown("999999999*999999999=0", "999999999 999999999 -> 0"), 0.0f);
  // Malformed references.
  EXPECT_EQ(countdown("3*5+7=22", "22"), 0.0f);
  EXPECT_EQ(countdown("3*5+7=22", "3 5 7 ->"), 0.0f);
  EXPECT_EQ(countdown("3*5+7=22", "-> 22"), 0.0f);
  EXPECT_EQ(countdown("3*5+7=22", "3 5 x -> 22"), 0.0f);
  EXPECT_EQ(countdown("3*5+7=22", "3 5 7 -> 22 extra"), 0.0f);
  // The batch form: one answer per completion.
  EXPECT_EQ(run_pair(reward_countdown, {"1+2=3", "1+2=3", "2*2=4"}, {"1 2 -> 3", "1 2 -> 4", "2 2 -> 4"}),
            (std::vector<float>{1, 0, 1}));
}

TEST(RewardRules, Contains) {
  const auto v = run_pair(reward_contains, {"a foo b", "f o o", "foo", "anything", "fofoo"},
                          {"foo", "foo", "foo", "", "foo"});
  EXPECT_EQ(v, (std::vector<float>{1, 0, 1, 0, 1}));
}

TEST(RewardRules, FormatOrderAndOverlap) {
  const std::vector<std::string> tags{"<think>", "</think>", "<answer>", "</answer>"};
  EXPECT_EQ(format_of({"<think>x</think> <answer>1</answer>", "<answer>1</answer><think>x</think>",
                       "<think>x</think><answer>1", "pre <think></think><answer></answer> post", ""},
                      tags),
            (std::vector<float>{1, 0, 0, 1, 0}));
  EXPECT_EQ(format_of({"aba", "abba", "ab"}, {"ab", "ba"}), (std::vector<float>{0, 1, 0}));
  EXPECT_EQ(format_of({"<t>", "<t><t>"}, {"<t>", "<t>"}), (std::vector<float>{0, 1}));
  EXPECT_EQ(format_of({"anything", ""}, {}), (std::vector<float>{1, 1}));
}

TEST(RewardRules, LengthBoundaries) {
  // L = 10, C = 4: 0 up to 6 tokens, then (6 - n) / 4, -1 beyond 10.
  EXPECT_EQ(length_of({0, 6, 7, 8, 9, 10, 11, 1000}, 10, 4),
            (std::vector<float>{0, 0, -0.25f, -0.5f, -0.75f, -1.0f, -1.0f, -1.0f}));
  EXPECT_EQ(length_of({9, 10, 11}, 10, 0), (std::vector<float>{0, 0, -1}));
  EXPECT_EQ(length_of({0, 1, 3}, 3, 3), (std::vector<float>{0, -1.0f / 3.0f, -1}));
  EXPECT_EQ(length_of({}, 3, 1), std::vector<float>{});
}

TEST(RewardDetokenize, BytesAndOffsetsI32AndI64) {
  const TokenBytesTable table = TokenBytesTable::from_strings({"a", "bc", "", "def", "\xff\xfe"});
  EXPECT_EQ(table.vocab_size(), 5);
  EXPECT_EQ(table.max_token_bytes(), 3);
  const std::vector<int64_t> ids64{0, 1, 3, 2, 1, 99, -1, 4, 0};
  const std::vector<int64_t> off64{0, 3, 3, 7, 9};
  const std::string want = std::string("abcdef") + "bc" + "\xff\xfe" "a";
  const std::vector<int64_t> want_off{0, 6, 6, 8, 11};
  for (bool use64 : {false, true}) {
    std::vector<int32_t> ids32(ids64.begin(), ids64.end()), off32(off64.begin(), off64.end());
    const Tensor ids = use64 ? Tensor(const_cast<int64_t*>(ids64.data()), DType::I64, Device::CPU, {9})
                             : Tensor(ids32.data(), DType::I32, Device::CPU, {9});
    const Tensor off = use64 ? Tensor(const_cast<int64_t*>(off64.data()), DType::I64, Device::CPU, {5})
                             : Tensor(off32.data(), DType::I32, Device::CPU, {5});
    std::vector<int64_t> boff(5, -1);
    detokenize_offsets(Tensor(boff.data(), DType::I64, Device::CPU, {5}), ids, off, table.bytes(Device::CPU), table.offsets(Device::CPU), Context::cpu());
    EXPECT_EQ(boff, want_off);
    std::string bytes(11, '?');
    detokenize_bytes(Tensor(bytes.data(), DType::U8, Device::CPU, {11}), Tensor(boff.data(), DType::I64, Device::CPU, {5}),
                     ids, off, table.bytes(Device::CPU), table.offsets(Device::CPU), Context::cpu());
    EXPECT_EQ(bytes, want);
  }
}

TEST(RewardDetokenize, TableFromTokenizerMatchesDecode) {
  const Tokenizer tok = Tokenizer::load(std::string(RLCU_TEST_FIXTURES) + "/tokenizers/qwen3");
  const TokenBytesTable table = TokenBytesTable::build(tok);
  EXPECT_EQ(table.vocab_size(), tok.vocab_size());
  const std::string text = "Let x = 3.\n\\boxed{1,234} — café";
  const std::vector<int32_t> ids = tok.encode(text);
  const std::vector<int32_t> off{0, static_cast<int32_t>(ids.size())};
  std::vector<int64_t> boff(2);
  detokenize_offsets(Tensor(boff.data(), DType::I64, Device::CPU, {2}),
                     Tensor(const_cast<int32_t*>(ids.data()), DType::I32, Device::CPU, {static_cast<int64_t>(ids.size())}),
                     Tensor(const_cast<int32_t*>(off.data()), DType::I32, Device::CPU, {2}), table.bytes(Device::CPU), table.offsets(Device::CPU), Context::cpu());
  std::string bytes(static_cast<size_t>(boff[1]), '?');
  detokenize_bytes(Tensor(bytes.data(), DType::U8, Device::CPU, {boff[1]}), Tensor(boff.data(), DType::I64, Device::CPU, {2}),
                   Tensor(const_cast<int32_t*>(ids.data()), DType::I32, Device::CPU, {static_cast<int64_t>(ids.size())}),
                   Tensor(const_cast<int32_t*>(off.data()), DType::I32, Device::CPU, {2}), table.bytes(Device::CPU), table.offsets(Device::CPU), Context::cpu());
  EXPECT_EQ(bytes, text);
}

// ---- config and validation ---------------------------------------------------------------------------------------
namespace {
std::string validation_error(const RewardSection& s) {
  try {
    validate_reward_section(s);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}
}  // namespace

TEST(RewardConfig, KeysDefaultsAndOverrides) {
  const RunConfig d = parse_config("{}", "cfg.json");
  EXPECT_EQ(d.reward.math_answer, 1.0);
  EXPECT_EQ(d.reward.exact_match, 0.0);
  EXPECT_EQ(d.reward.model, 0.0);
  EXPECT_EQ(d.reward.command_timeout_s, 60.0);
  const RunConfig c = parse_config(
      R"({"reward": {"format": 0.5, "format_tags": "<a>,</a>", "length": 1, "length_max": 100, "length_buffer": 20}})",
      "cfg.json", {"reward.contains_text=yes", "reward.math_answer=0"});
  EXPECT_EQ(c.reward.format, 0.5);
  EXPECT_EQ(c.reward.format_tags, "<a>,</a>");
  EXPECT_EQ(c.reward.length_max, 100);
  EXPECT_EQ(c.reward.length_buffer, 20);
  EXPECT_EQ(c.reward.contains_text, "yes");
  EXPECT_EQ(c.reward.math_answer, 0.0);
  EXPECT_EQ(split_format_tags("<a>,</a>"), (std::vector<std::string>{"<a>", "</a>"}));
  EXPECT_NE(std::string(config_to_json(c).dump()).find("\"length_buffer\":20"), std::string::npos);
  try {
    parse_config(R"({"reward": {"command_timeout_s": 0}})", "cfg.json");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("reward.command_timeout_s"), std::string::npos) << e.what();
  }
}

TEST(RewardConfig, EnabledComponentWithoutParametersNamesTheKey) {
  RewardSection s;
  EXPECT_EQ(validation_error(s), "");
  s.format = 1;
  EXPECT_NE(validation_error(s).find("reward.format_tags"), std::string::npos);
  s.format_tags = "<a>,,</a>";
  EXPECT_NE(validation_error(s).find("reward.format_tags"), std::string::npos);
  s.format_tags = "<a>,</a>";
  s.length = 1;
  EXPECT_NE(validation_error(s).find("reward.length_max"), std::string::npos);
  s.length_max = 10;
  s.length_buffer = 11;
  EXPECT_NE(validation_error(s).find("reward.length_buffer"), std::string::npos);
  s.length_buffer = 10;
  s.command = 1;
  EXPECT_NE(validation_error(s).find("reward.command_line"), std::string::npos);
  s.command_line = "cat";
  s.model = 0.5;
  EXPECT_NE(validation_error(s).find("reward.model_path"), std::string::npos);
  s.model_path = "/nonexistent";
  EXPECT_EQ(validation_error(s), "");
  RewardSection off;
  off.math_answer = 0;
  EXPECT_NE(validation_error(off).find("every component weight is 0"), std::string::npos);
}

TEST(RewardSet, WeightedSumOnTheCpu) {
  const Tokenizer tok = Tokenizer::load(std::string(RLCU_TEST_FIXTURES) + "/tokenizers/qwen3");
  RewardSection cfg;
  cfg.math_answer = 1.0;
  cfg.format = 0.5;
  cfg.format_tags = "<think>,</think>";
  cfg.length = 2.0;
  cfg.length_max = 8;
  cfg.length_buffer = 4;
  cfg.contains = 0.25;  // empty contains_text: the trimmed answer
  RewardSet set(cfg, &tok, Context::cpu());
  EXPECT_EQ(set.enabled(), (std::vector<std::string>{"math_answer", "contains", "format", "length"}));

  RewardBatch b;
  const std::vector<std::pair<std::string, std::string>> cases{
      {"<think>6*7</think> \\boxed{42}", " 42 "}, {"no idea", "42"}, {"<think>", "7"}, {"", "3"}};
  for (const auto& [text, ans] : cases) {
    RewardItem it;
    it.prompt = "q";
    it.completion = tok.encode(text);
    it.answer = ans;
    b.items.push_back(it);
  }
  const RewardResult r = set.score(b);
  ASSERT_EQ(r.components.size(), 4u);
  EXPECT_EQ(r.components.at("math_answer"), (std::vector<float>{1, 0, 0, 0}));
  EXPECT_EQ(r.components.at("contains"), (std::vector<float>{1, 0, 0, 0}));
  EXPECT_EQ(r.components.at("format"), (std::vector<float>{1, 0, 0, 0}));
  std::vector<float> want_len;
  for (const RewardItem& it : b.items) {
    const double n = static_cast<double>(it.completion.size());
    want_len.push_back(n > 8 ? -1.0f : n <= 4 ? 0.0f : static_cast<float>((4.0 - n) / 4.0));
  }
  EXPECT_EQ(r.components.at("length"), want_len);
  for (size_t i = 0; i < b.items.size(); ++i) {
    const double want = 1.0 * r.components.at("math_answer")[i] + 0.25 * r.components.at("contains")[i] +
                        0.5 * r.components.at("format")[i] + 2.0 * want_len[i];
    EXPECT_FLOAT_EQ(r.total[i], static_cast<float>(want)) << i;
  }
  EXPECT_GT(b.items[0].completion.size(), 4u);  // the first case exercises the ramp or the cap
  EXPECT_TRUE(set.score(RewardBatch{}).total.empty());
}

TEST(RewardSet, InvalidConfigThrows) {
  const Tokenizer tok = Tokenizer::load(std::string(RLCU_TEST_FIXTURES) + "/tokenizers/qwen3");
  RewardSection cfg;
  cfg.command = 1;
  try {
    RewardSet set(cfg, &tok, Context::cpu());
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("reward.command_line"), std::string::npos) << e.what();
  }
}
