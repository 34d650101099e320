// SFT data preparation and schedule (include/rlcu/sft.h), with the byte-level tokenizer: prompt/completion records
// under the `none` and `chatml` templates and multi-turn chat records give the exact ids written out by hand, with
// the loss mask on the completion (assistant) tokens only; malformed records are errors naming file:line; the
// held-out choice and the step schedule are deterministic, cover every example once per epoch and respect the
// token budget.
#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <numeric>
#include <set>

#include "parity/model_test_util.h"
#include "rlcu/error.h"
#include "rlcu/init_model.h"
#include "rlcu/sft.h"
#include "rlcu/tokenizer.h"

using namespace rlcu;
using namespace rlcu::test;
using nlohmann::json;

namespace {

const Tokenizer& byte_tok() {
  static const Tokenizer t = Tokenizer::from_json(byte_tokenizer_json(), byte_tokenizer_config_json(4096));
  return t;
}

// Ids of ASCII text in the byte tokenizer, written out independently: one token per byte, id = byte value.
std::vector<int32_t> bytes_of(const std::string& s) {
  std::vector<int32_t> v;
  for (unsigned char c : s) v.push_back(c);
  return v;
}

int32_t special(const std::string& s) { return *byte_tok().token_to_id(s); }

std::vector<int32_t> cat(std::initializer_list<std::vector<int32_t>> parts) {
  std::vector<int32_t> out;
  for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

struct Expect {
  std::vector<int32_t> ids;
  std::vector<uint8_t> loss;
  void add(const std::vector<int32_t>& ids_, uint8_t l) {
    ids.insert(ids.end(), ids_.begin(), ids_.end());
    loss.insert(loss.end(), ids_.size(), l);
  }
};

SftExample from(const json& rec, const std::string& tmpl) {
  const PromptFormat f = make_prompt_format(byte_tok(), tmpl);
  return sft_example_from_record(rec, DataConfig{}, "completion", f, special("<|im_end|>"));
}

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace

TEST(SftData, ByteTokenizerIsOneTokenPerByte) {
  EXPECT_EQ(byte_tok().encode("12+7=19 \\boxed{19}"), bytes_of("12+7=19 \\boxed{19}"));
}

TEST(SftData, PromptCompletionNoneTemplate) {
  const SftExample ex = from(json{{"prompt", "12+7="}, {"completion", "19"}}, "none");
  Expect e;
  EncodeOptions bos;
  bos.add_special = true;
  e.add(byte_tok().encode("12+7=", bos), 0);  // the tokenizer's own BOS handling (none here), as rlcu train does
  e.add(bytes_of("19"), 1);
  e.add({special("<|im_end|>")}, 1);
  EXPECT_EQ(ex.ids, e.ids);
  EXPECT_EQ(ex.loss, e.loss);
  EXPECT_EQ(ex.completion_tokens(), 3);
}

TEST(SftData, PromptCompletionChatml) {
  const SftExample ex = from(json{{"prompt", "2+2="}, {"completion", "4 \\boxed{4}"}}, "chatml");
  Expect e;
  e.add(cat({{special("<|im_start|>")}, bytes_of("user\n2+2="), {special("<|im_end|>")}, bytes_of("\n"),
             {special("<|im_start|>")}, bytes_of("assistant\n")}),
        0);
  e.add(bytes_of("4 \\boxed{4}"), 1);
  e.add({special("<|im_end|>")}, 1);
  EXPECT_EQ(ex.ids, e.ids);
  EXPECT_EQ(ex.loss, e.loss);
}

TEST(SftData, MessagesLossOnAssistantTurnsOnly) {
  const json rec = {{"messages", json::array({{{"role", "system"}, {"content", "S"}},
                                              {{"role", "user"}, {"content", "a"}},
                                              {{"role", "assistant"}, {"content", "b"}},
                                              {{"role", "user"}, {"content", "c"}},
                                              {{"role", "assistant"}, {"content", "d"}}})}};
  const SftExample ex = from(rec, "chatml");
  const int32_t st = special("<|im_start|>"), en = special("<|im_end|>");
  Expect e;
  e.add(cat({{st}, bytes_of("system\nS"), {en}, bytes_of("\n"), {st}, bytes_of("user\na"), {en}, bytes_of("\n"), {st},
             bytes_of("assistant\n")}),
        0);
  e.add(cat({bytes_of("b"), {en}, bytes_of("\n")}), 1);
  e.add(cat({{st}, bytes_of("user\nc"), {en}, bytes_of("\n"), {st}, bytes_of("assistant\n")}), 0);
  e.add(cat({bytes_of("d"), {en}, bytes_of("\n")}), 1);
  EXPECT_EQ(ex.ids, e.ids);
  EXPECT_EQ(ex.loss, e.loss);
}

// Multi-turn masks for templates the code knows nothing about, from files: Gemma 2's (no generation tags: turn by
// turn prefix differences) and a ChatML template with {% generation %} blocks (their text is the loss).
TEST(SftData, MessagesWithAnyTemplate) {
  const std::string dir = std::string(RLCU_TEST_FIXTURES) + "/chat_templates/";
  const json rec = {{"messages", json::array({{{"role", "user"}, {"content", "q"}},
                                              {{"role", "assistant"}, {"content", "a"}},
                                              {{"role", "user"}, {"content", "c"}},
                                              {{"role", "assistant"}, {"content", "d"}}})}};
  const PromptFormat gemma = make_prompt_format(byte_tok(), "auto", dir + "gemma2.jinja");
  EXPECT_FALSE(gemma.chat.has_generation());
  SftExample ex = sft_example_from_record(rec, DataConfig{}, "completion", gemma, special("<|im_end|>"));
  Expect e;
  e.add(bytes_of("<start_of_turn>user\nq<end_of_turn>\n<start_of_turn>model\n"), 0);
  e.add(bytes_of("a<end_of_turn>\n"), 1);
  e.add(bytes_of("<start_of_turn>user\nc<end_of_turn>\n<start_of_turn>model\n"), 0);
  e.add(bytes_of("d<end_of_turn>\n"), 1);
  EXPECT_EQ(ex.ids, e.ids);
  EXPECT_EQ(ex.loss, e.loss);

  const PromptFormat gen = make_prompt_format(byte_tok(), "auto", dir + "edge_generation.jinja");
  EXPECT_TRUE(gen.chat.has_generation());
  json with_system = rec;
  with_system["messages"].insert(with_system["messages"].begin(), json{{"role", "system"}, {"content", "S"}});
  ex = sft_example_from_record(with_system, DataConfig{}, "completion", gen, special("<|im_end|>"));
  const int32_t st = special("<|im_start|>"), en = special("<|im_end|>");
  Expect g;
  g.add(cat({{st}, bytes_of("system\nS"), {en}, bytes_of("\n"), {st}, bytes_of("user\nq"), {en}, bytes_of("\n"), {st},
             bytes_of("assistant\n")}),
        0);
  g.add(cat({bytes_of("a"), {en}}), 1);
  g.add(cat({bytes_of("\n"), {st}, bytes_of("user\nc"), {en}, bytes_of("\n"), {st}, bytes_of("assistant\n")}), 0);
  g.add(cat({bytes_of("d"), {en}}), 1);
  g.add(bytes_of("\n"), 0);
  EXPECT_EQ(ex.ids, g.ids);
  EXPECT_EQ(ex.loss, g.loss);

  // Gemma 2 refuses a system message with raise_exception: its message is the error.
  json sys = rec;
  sys["messages"].insert(sys["messages"].begin(), json{{"role", "system"}, {"content", "S"}});
  EXPECT_EQ(error_of([&] { sft_example_from_record(sys, DataConfig{}, "completion", gemma, 0); }),
            "System role not supported");
}

TEST(SftData, CompletionFieldWinsOverMessagesAsPrompt) {
  // With a completion, the messages are the prompt (all of them context).
  const json rec = {{"messages", json::array({{{"role", "user"}, {"content", "q"}}})}, {"completion", "r"}};
  const SftExample ex = from(rec, "chatml");
  EXPECT_EQ(ex.completion_tokens(), 2);  // "r" + <|im_end|>
  EXPECT_EQ(ex.ids.back(), special("<|im_end|>"));
  EXPECT_EQ(ex.ids[ex.ids.size() - 2], 'r');
}

TEST(SftData, RecordErrors) {
  EXPECT_NE(error_of([] { from(json{{"prompt", "x"}}, "chatml"); }).find("no \"completion\" field"),
            std::string::npos);
  EXPECT_NE(error_of([] { from(json{{"prompt", "x"}, {"completion", 3}}, "chatml"); }).find("must be a string"),
            std::string::npos);
  const json no_assistant = {{"messages", json::array({{{"role", "user"}, {"content", "q"}}})}};
  EXPECT_NE(error_of([&] { from(no_assistant, "chatml"); }).find("no assistant turn"), std::string::npos);
  EXPECT_NE(error_of([] { from(json::array({1}), "chatml"); }).find("not a JSON object"), std::string::npos);
}

TEST(SftData, FileErrorsNameFileAndLine) {
  TempDir d("sft");
  const PromptFormat f = make_prompt_format(byte_tok(), "chatml");
  const int32_t eos = special("<|im_end|>");
  const std::string p = d.file("data.jsonl");
  write_text(p, "{\"prompt\": \"a\", \"completion\": \"b\"}\n\n{\"prompt\": \"c\"}\n");
  std::string e = error_of([&] { load_sft_examples(p, DataConfig{}, "completion", f, eos, 0); });
  EXPECT_NE(e.find(p + ":3:"), std::string::npos) << e;
  EXPECT_NE(e.find("completion"), std::string::npos) << e;
  write_text(p, "{\"prompt\": \"a\", \"completion\": \"b\"}\n{oops\n");
  e = error_of([&] { load_sft_examples(p, DataConfig{}, "completion", f, eos, 0); });
  EXPECT_NE(e.find(p + ":2: not valid JSON"), std::string::npos) << e;
  e = error_of([&] { load_sft_examples(d.file("missing.jsonl"), DataConfig{}, "completion", f, eos, 0); });
  EXPECT_NE(e.find("missing.jsonl: cannot open"), std::string::npos) << e;
}

TEST(SftData, LongSequencesDroppedAndCounted) {
  TempDir d("sft");
  const PromptFormat f = make_prompt_format(byte_tok(), "none");
  const std::string p = d.file("data.jsonl");
  // none template: prompt bytes + completion bytes + EOS.
  write_text(p,
             "{\"prompt\": \"ab\", \"completion\": \"c\"}\n"          // 4 tokens
             "{\"prompt\": \"abcdef\", \"completion\": \"ghij\"}\n"   // 11 tokens
             "{\"prompt\": \"a\", \"completion\": \"bcd\"}\n");       // 5 tokens
  SftDataStats st;
  const auto ex = load_sft_examples(p, DataConfig{}, "completion", f, special("<|im_end|>"), 5, &st);
  ASSERT_EQ(ex.size(), 2u);
  EXPECT_EQ(ex[0].line, 1);
  EXPECT_EQ(ex[1].line, 3);
  EXPECT_EQ(ex[0].ids.size(), 4u);
  EXPECT_EQ(ex[1].ids.size(), 5u);
  EXPECT_EQ(st.records, 3);
  EXPECT_EQ(st.too_long, 1);
  EXPECT_EQ(st.kept, 2);
  const std::string e = error_of([&] { load_sft_examples(p, DataConfig{}, "completion", f, 0, 3); });
  EXPECT_NE(e.find("no usable SFT records"), std::string::npos) << e;
}

TEST(SftSchedule, HoldoutIsDeterministicAndSized) {
  const auto a = sft_holdout_indices(100, 0.1, 7);
  EXPECT_EQ(a.size(), 10u);
  EXPECT_TRUE(std::is_sorted(a.begin(), a.end()));
  EXPECT_EQ(std::set<int64_t>(a.begin(), a.end()).size(), 10u);
  for (int64_t i : a) EXPECT_TRUE(i >= 0 && i < 100);
  EXPECT_EQ(a, sft_holdout_indices(100, 0.1, 7));
  EXPECT_NE(a, sft_holdout_indices(100, 0.1, 8));
  EXPECT_TRUE(sft_holdout_indices(100, 0.0, 7).empty());
  EXPECT_EQ(sft_holdout_indices(3, 0.01, 7).size(), 1u);  // at least one
  EXPECT_EQ(sft_holdout_indices(2, 0.9, 7).size(), 1u);   // never all
  EXPECT_TRUE(sft_holdout_indices(1, 0.5, 7).empty());
}

TEST(SftSchedule, EpochsCoverEveryExampleOnceWithinBudget) {
  std::vector<int64_t> len;
  for (int i = 0; i < 37; ++i) len.push_back(5 + (i * 7) % 23);
  const int64_t budget = 60;
  const auto sched = sft_schedule(len, 3, true, 3, 0, budget);
  std::vector<std::vector<int64_t>> per_epoch(3);
  int64_t last_epoch = 0;
  for (const SftStep& s : sched) {
    ASSERT_FALSE(s.examples.empty());
    ASSERT_GE(s.epoch, last_epoch);
    last_epoch = s.epoch;
    int64_t tok = 0;
    for (int64_t i : s.examples) tok += len[static_cast<size_t>(i)];
    EXPECT_TRUE(tok <= budget || s.examples.size() == 1u) << tok;
    per_epoch[static_cast<size_t>(s.epoch)].insert(per_epoch[static_cast<size_t>(s.epoch)].end(), s.examples.begin(),
                                                   s.examples.end());
    EXPECT_EQ(s.position, static_cast<int64_t>(per_epoch[static_cast<size_t>(s.epoch)].size()));
  }
  for (int e = 0; e < 3; ++e) {
    EXPECT_EQ(per_epoch[static_cast<size_t>(e)], sft_epoch_order(37, 3, e, true));
    std::vector<int64_t> sorted = per_epoch[static_cast<size_t>(e)];
    std::sort(sorted.begin(), sorted.end());
    std::vector<int64_t> want(37);
    std::iota(want.begin(), want.end(), 0);
    EXPECT_EQ(sorted, want) << "epoch " << e;
  }
  EXPECT_NE(per_epoch[0], per_epoch[1]);  // a new order each epoch
  // Greedy packing: a step ends only when the next example would overflow the budget (or at the epoch's end).
  for (size_t k = 0; k + 1 < sched.size(); ++k) {
    if (sched[k + 1].epoch != sched[k].epoch) continue;
    int64_t tok = 0;
    for (int64_t i : sched[k].examples) tok += len[static_cast<size_t>(i)];
    EXPECT_GT(tok + len[static_cast<size_t>(sched[k + 1].examples.front())], budget);
  }
  EXPECT_EQ(sched.size(), sft_schedule(len, 3, true, 3, 0, budget).size());
}

TEST(SftSchedule, StepsOverrideEpochsAndFileOrderWithoutShuffle) {
  const std::vector<int64_t> len = {10, 10, 10, 10, 10};
  const auto s = sft_schedule(len, 0, false, 1, 7, 20);
  ASSERT_EQ(s.size(), 7u);
  // Epoch 0: {0,1} {2,3} {4}; epoch 1: {0,1} {2,3} {4}; epoch 2: {0,1}.
  const std::vector<std::vector<int64_t>> want = {{0, 1}, {2, 3}, {4}, {0, 1}, {2, 3}, {4}, {0, 1}};
  const std::vector<int64_t> epochs = {0, 0, 0, 1, 1, 1, 2};
  for (size_t i = 0; i < 7; ++i) {
    EXPECT_EQ(s[i].examples, want[i]) << i;
    EXPECT_EQ(s[i].epoch, epochs[i]) << i;
  }
  // An example longer than the budget is a step of its own.
  const auto big = sft_schedule({50, 5, 5}, 0, false, 1, 0, 20);
  ASSERT_EQ(big.size(), 2u);
  EXPECT_EQ(big[0].examples, std::vector<int64_t>{0});
  EXPECT_EQ(big[1].examples, (std::vector<int64_t>{1, 2}));
}
