// Prompt datasets: field mapping (prompt string/list, messages, prompt_template with {field} and dotted paths,
// answers of any JSON type, system prompt), JSON arrays, the length filter, malformed records (error with file and
// line, or skipped and counted), deterministic per-epoch shuffling and the cursor round trip.
#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <functional>
#include <numeric>
#include <set>

#include "rlcu/data.h"
#include "rlcu/error.h"
#include "rlcu/tokenizer.h"

using namespace rlcu;

namespace {

const std::string kFixtures = RLCU_TEST_FIXTURES;

const Tokenizer& qwen3() {
  static const Tokenizer tok = Tokenizer::load(kFixtures + "/tokenizers/qwen3");
  return tok;
}

PromptFormat format(const std::string& chat = "auto") { return make_prompt_format(qwen3(), chat); }

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

PromptDataset numbers(int n) {
  std::string text;
  for (int i = 0; i < n; ++i) text += "{\"prompt\": \"q" + std::to_string(i) + "\", \"answer\": " + std::to_string(i) + "}\n";
  DataConfig cfg;
  return PromptDataset::parse(text, "numbers.jsonl", cfg, format("none"));
}

}  // namespace

TEST(DataFields, JsonlFileWithTemplateMessagesAndAnswers) {
  DataConfig cfg;
  cfg.path = kFixtures + "/data/math.jsonl";
  cfg.prompt_template = "{question}\nPut the final answer in \\boxed{{}}.";
  // The template needs "question"; the messages/prompt records lack it: malformed, skipped and counted.
  cfg.skip_malformed = true;
  const PromptDataset ds = PromptDataset::load(cfg, format());
  ASSERT_EQ(ds.size(), 3);
  EXPECT_EQ(ds.stats().malformed, 2);
  EXPECT_EQ(ds.stats().records, 5);
  EXPECT_EQ(ds[0].text, "<|im_start|>user\nWhat is 2+3?\nPut the final answer in \\boxed{}.<|im_end|>\n"
                        "<|im_start|>assistant\n");
  EXPECT_EQ(ds[0].ids, qwen3().encode(ds[0].text));
  EXPECT_EQ(ds[0].answer, "5");   // a number becomes its JSON text
  EXPECT_EQ(ds[1].answer, "42");  // a string is taken as is
  EXPECT_EQ(ds[1].line, 2);
  EXPECT_EQ(ds[2].line, 5);  // blank line 3 is not a record but still counts as a line
  EXPECT_EQ(ds[2].record, 3);
  EXPECT_EQ(ds[1].fields["level"], 2);
}

TEST(DataFields, MessagesPromptListsAndSystemPrompt) {
  DataConfig cfg;
  cfg.path = kFixtures + "/data/math.jsonl";
  cfg.prompt_field = "question";
  cfg.system_prompt = "You are a careful math tutor.";
  cfg.skip_malformed = true;
  const PromptDataset ds = PromptDataset::load(cfg, format());
  ASSERT_EQ(ds.size(), 4);
  EXPECT_EQ(ds.stats().malformed, 1);  // line 6 has a "prompt" list but no "question"
  EXPECT_EQ(ds[0].text, "<|im_start|>system\nYou are a careful math tutor.<|im_end|>\n<|im_start|>user\nWhat is "
                        "2+3?<|im_end|>\n<|im_start|>assistant\n");
  // A conversation with its own system message keeps it.
  EXPECT_EQ(ds[2].text, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 10-4?<|im_end|>\n"
                        "<|im_start|>assistant\n");
  EXPECT_EQ(ds[2].answer, "6");
}

TEST(DataFields, PromptFieldAsMessageList) {
  DataConfig cfg;
  cfg.messages_field = "";
  const PromptDataset ds = PromptDataset::parse(
      R"({"prompt": [{"role": "user", "content": "What is 9/3?"}], "answer": 3})", "x.jsonl", cfg, format());
  ASSERT_EQ(ds.size(), 1);
  EXPECT_EQ(ds[0].text, "<|im_start|>user\nWhat is 9/3?<|im_end|>\n<|im_start|>assistant\n");
}

TEST(DataFields, JsonArrayWithDottedAnswerPath) {
  DataConfig cfg;
  cfg.path = kFixtures + "/data/math.json";
  cfg.answer_field = "reward_model.ground_truth";
  const std::string err = error_of([&] { PromptDataset::load(cfg, format()); });
  EXPECT_NE(err.find("math.json: element 3"), std::string::npos) << err;  // "prompt": 17 is not a prompt
  EXPECT_NE(err.find("\"prompt\" must be a string"), std::string::npos) << err;
  cfg.skip_malformed = true;
  const PromptDataset ds = PromptDataset::load(cfg, format());
  ASSERT_EQ(ds.size(), 2);
  EXPECT_EQ(ds[1].answer, "2");
  EXPECT_EQ(ds[1].line, 2);
}

TEST(DataFields, RawPromptsGetTheTokenizersSpecialTokens) {
  DataConfig cfg;
  const PromptDataset ds = PromptDataset::parse(R"({"prompt": "2+2=", "answer": "4"})", "x.jsonl", cfg,
                                                format("none"));
  EXPECT_EQ(ds[0].text, "2+2=");
  EXPECT_EQ(ds[0].ids, qwen3().encode("2+2="));  // Qwen adds no BOS
}

TEST(DataFilter, LongPromptsAreDroppedAndCounted) {
  DataConfig cfg;
  cfg.path = kFixtures + "/data/math.jsonl";
  cfg.prompt_field = "question";
  cfg.skip_malformed = true;
  cfg.max_prompt_tokens = 20;
  const PromptDataset ds = PromptDataset::load(cfg, format("none"));
  EXPECT_EQ(ds.stats().too_long, 1);  // the 100-integers question
  for (int64_t i = 0; i < ds.size(); ++i) EXPECT_LE(ds[i].ids.size(), 20u);
  EXPECT_EQ(ds.size(), 3);
  cfg.max_prompt_tokens = 2;
  const std::string err = error_of([&] { PromptDataset::load(cfg, format("none")); });
  EXPECT_NE(err.find("no usable prompts"), std::string::npos) << err;
  cfg.max_prompt_tokens = 0;
  cfg.max_samples = 2;
  EXPECT_EQ(PromptDataset::load(cfg, format("none")).size(), 2);
}

TEST(DataMalformed, ErrorsNameFileAndLine) {
  DataConfig cfg;
  const std::string text = "{\"prompt\": \"a\", \"answer\": 1}\n{\"prompt\": \"b\", \"answer\": 2\n[1, 2]\n"
                           "{\"answer\": 3}\n{\"prompt\": \"c\"}\n";
  const std::string err = error_of([&] { PromptDataset::parse(text, "bad.jsonl", cfg, format()); });
  EXPECT_NE(err.find("bad.jsonl:2: invalid JSON"), std::string::npos) << err;
  EXPECT_NE(err.find("skip_malformed"), std::string::npos) << err;
  cfg.skip_malformed = true;
  const PromptDataset ds = PromptDataset::parse(text, "bad.jsonl", cfg, format());
  EXPECT_EQ(ds.size(), 1);
  EXPECT_EQ(ds.stats().malformed, 4);  // bad JSON, not an object, no prompt, no answer

  DataConfig strict;
  EXPECT_NE(error_of([&] { PromptDataset::parse("\"text\"\n", "a.jsonl", strict, format()); })
                .find("a.jsonl:1: the record is not a JSON object"),
            std::string::npos);
  EXPECT_NE(error_of([&] { PromptDataset::parse("[1, 2]\n", "a.json", strict, format()); })
                .find("a.json: element 1: the record is not a JSON object"),
            std::string::npos);
  EXPECT_NE(error_of([&] { PromptDataset::parse("{\"prompt\": \"q\"}\n", "a.jsonl", strict, format()); })
                .find("a.jsonl:1: no \"answer\" field"),
            std::string::npos);
  // A content list reaches the template, and Qwen3's calls str methods on it: the template's error, with the record.
  const std::string list_content = error_of([&] {
    PromptDataset::parse(R"({"messages": [{"role": "user", "content": [{"type": "image"}]}], "answer": 1})", "m.jsonl",
                         strict, format());
  });
  EXPECT_NE(list_content.find("m.jsonl:1: "), std::string::npos) << list_content;
  EXPECT_NE(list_content.find("tokenizer_config.json:chat_template:"), std::string::npos) << list_content;
  EXPECT_NE(list_content.find("'list object' has no attribute 'startswith'"), std::string::npos) << list_content;
  EXPECT_NE(error_of([&] { PromptDataset::parse("[{\"prompt\": 1}", "a.json", strict, format()); }).find("invalid JSON"),
            std::string::npos);
  DataConfig bad = strict;
  bad.format = "csv";
  EXPECT_NE(error_of([&] { PromptDataset::parse("", "a", bad, format()); }).find("data.format"), std::string::npos);
  bad = strict;
  bad.prompt_template = "{question";
  EXPECT_NE(error_of([&] { PromptDataset::parse("{\"question\": \"q\", \"answer\": 1}", "a", bad, format()); })
                .find("not closed"),
            std::string::npos);
  DataConfig missing;
  missing.path = kFixtures + "/data/no_such_file.jsonl";
  EXPECT_NE(error_of([&] { PromptDataset::load(missing, format()); }).find("cannot read"), std::string::npos);
}

TEST(DataOrder, ShuffleIsDeterministicPerEpochPermutation) {
  const PromptDataset ds = numbers(50);
  PromptLoader a(ds, 1234, true), b(ds, 1234, true), c(ds, 99, true), plain(ds, 1234, false);
  const auto e0 = a.epoch_order(0), e1 = a.epoch_order(1);
  EXPECT_EQ(e0, b.epoch_order(0));
  EXPECT_NE(e0, e1);
  EXPECT_NE(e0, c.epoch_order(0));
  std::vector<int64_t> sorted = e1, iota(50);
  std::iota(iota.begin(), iota.end(), 0);
  std::sort(sorted.begin(), sorted.end());
  EXPECT_EQ(sorted, iota);
  EXPECT_EQ(plain.epoch_order(3), iota);
  // The loader serves epoch 0's order, then epoch 1's.
  std::vector<int64_t> served;
  for (int k = 0; k < 60; ++k) served.push_back(a.next().record);
  EXPECT_TRUE(std::equal(e0.begin(), e0.end(), served.begin()));
  EXPECT_TRUE(std::equal(e1.begin(), e1.begin() + 10, served.begin() + 50));
  EXPECT_EQ(a.epoch(), 1);
  EXPECT_EQ(a.position(), 10);
  // Fixed values (the documented splitmix64 Fisher-Yates): the order must not change across platforms or releases,
  // since resumed runs depend on it.
  EXPECT_EQ(std::vector<int64_t>(e0.begin(), e0.begin() + 8), (std::vector<int64_t>{46, 15, 26, 30, 14, 10, 44, 20}));
  EXPECT_EQ(std::vector<int64_t>(e1.begin(), e1.begin() + 8), (std::vector<int64_t>{47, 28, 25, 38, 33, 35, 45, 27}));
  std::set<int64_t> first_epoch(served.begin(), served.begin() + 50);
  EXPECT_EQ(first_epoch.size(), 50u);
}

TEST(DataOrder, CursorRoundTripResumesTheSameStream) {
  const PromptDataset ds = numbers(7);
  PromptLoader run(ds, 42, true);
  for (int k = 0; k < 17; ++k) run.next();
  const nlohmann::json saved = run.cursor().to_json();
  std::vector<int64_t> expect;
  for (const PromptSample* s : run.next_batch(20)) expect.push_back(s->record);

  PromptLoader resumed(ds, 42, true);
  resumed.restore(DataCursor::from_json(nlohmann::json::parse(saved.dump())));
  EXPECT_EQ(resumed.epoch(), 2);
  EXPECT_EQ(resumed.position(), 3);
  std::vector<int64_t> got;
  for (const PromptSample* s : resumed.next_batch(20)) got.push_back(s->record);
  EXPECT_EQ(got, expect);

  PromptLoader other_seed(ds, 43, true);
  EXPECT_NE(error_of([&] { other_seed.restore(DataCursor::from_json(saved)); }).find("seed"), std::string::npos);
  const PromptDataset bigger = numbers(8);
  PromptLoader other_data(bigger, 42, true);
  EXPECT_NE(error_of([&] { other_data.restore(DataCursor::from_json(saved)); }).find("7 prompts"), std::string::npos);
  EXPECT_NE(error_of([] { DataCursor::from_json(nlohmann::json{{"epoch", 1}}); }).find("position"), std::string::npos);
}

TEST(DataFields, ToolsAndMessageFieldsReachAnyTemplate) {
  const std::string path = ::testing::TempDir() + "/show_fields.jinja";
  {
    std::ofstream f(path);
    f << "{% for m in messages %}{{ m.role }}:{{ m | tojson }}\n{% endfor %}tools={{ tools | tojson }}";
  }
  const PromptFormat f = make_prompt_format(qwen3(), "auto", path);
  EXPECT_EQ(f.chat.name(), path);
  const std::string rec =
      R"({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": null, "tool_calls": )"
      R"([{"function": {"name": "f", "arguments": {"z": 1, "a": 2}}}]}], "tools": [{"name": "f", "b": 1, "a": 2}], )"
      R"("answer": 1})";
  DataConfig cfg;
  const PromptDataset ds = PromptDataset::parse(rec, "t.jsonl", cfg, f);
  ASSERT_EQ(ds.size(), 1);
  // Key order is the record's, as transformers sees it.
  EXPECT_EQ(ds[0].text,
            "user:{\"role\": \"user\", \"content\": \"q\"}\nassistant:{\"role\": \"assistant\", \"content\": null, "
            "\"tool_calls\": [{\"function\": {\"name\": \"f\", \"arguments\": {\"z\": 1, \"a\": 2}}}]}\n"
            "tools=[{\"name\": \"f\", \"b\": 1, \"a\": 2}]");
  cfg.tools_field.clear();
  EXPECT_NE(PromptDataset::parse(rec, "t.jsonl", cfg, f)[0].text.find("tools=null"), std::string::npos);
  cfg.tools_field = "answer";
  EXPECT_NE(error_of([&] { PromptDataset::parse(rec, "t.jsonl", cfg, f); }).find("list of tool schemas"),
            std::string::npos);
  EXPECT_NE(error_of([&] { make_prompt_format(qwen3(), "qwen3", path); }).find("must stay auto"), std::string::npos);
}

TEST(DataFields, PromptFormatFromModelSettings) {
  const PromptFormat f = make_prompt_format(qwen3(), "auto", "", false);
  EXPECT_EQ(f.chat.name(), "auto");
  EXPECT_FALSE(f.chat.is_none());
  std::string text;
  std::vector<int32_t> ids;
  build_prompt(text, ids, {ChatMessage{"user", "Hi", ""}}, f);
  EXPECT_EQ(text, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n");
  EXPECT_EQ(ids, qwen3().encode(text));
  EXPECT_THROW(make_prompt_format(qwen3(), "vicuna"), Error);
}
