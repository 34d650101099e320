// Chat templates through the Jinja interpreter: every template of tests/fixtures/chat_templates/ (real ones of
// Qwen2/2.5/3, Llama 3/3.1/3.2, Gemma 2/3, Mistral, Phi-3, DeepSeek-R1 and its distills, SmolLM2/3, plus edge-case
// templates) against goldens.jsonl rendered by Python's jinja2 as transformers configures it, byte for byte; the
// Qwen3 tokenizer's own template against transformers' renders (chat.jsonl) and Jinja2's (chat_extra.jsonl); the
// built-in templates against those files; and how a template is chosen (auto, none, built-in names, files) with the
// errors that name the template and the line.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>

#include <nlohmann/json.hpp>

#include "parity/model_test_util.h"
#include "rlcu/chat.h"
#include "rlcu/error.h"
#include "rlcu/init_model.h"
#include "rlcu/tokenizer.h"

using namespace rlcu;
using json = nlohmann::json;
using ojson = nlohmann::ordered_json;

namespace {

const std::string kQwen3Dir = std::string(RLCU_TEST_FIXTURES) + "/tokenizers/qwen3";
const std::string kTemplates = std::string(RLCU_TEST_FIXTURES) + "/chat_templates";

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::vector<ChatMessage> messages_of(const json& arr) {
  std::vector<ChatMessage> out;
  for (const json& m : arr)
    out.push_back(ChatMessage{m["role"], m["content"], m.value("reasoning_content", std::string())});
  return out;
}

const Tokenizer& qwen3() {
  static const Tokenizer tok = Tokenizer::load(kQwen3Dir);
  return tok;
}

std::vector<ChatMessage> conv(std::initializer_list<std::pair<const char*, const char*>> turns) {
  std::vector<ChatMessage> out;
  for (auto [r, c] : turns) out.push_back(ChatMessage{r, c, ""});
  return out;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// The goldens' pinned strftime_now time: 2025-03-14 09:26:53.
std::tm golden_time() {
  std::tm tm{};
  tm.tm_year = 125;
  tm.tm_mon = 2;
  tm.tm_mday = 14;
  tm.tm_hour = 9;
  tm.tm_min = 26;
  tm.tm_sec = 53;
  tm.tm_wday = 5;
  tm.tm_yday = 72;
  return tm;
}

std::vector<std::string> span_texts(const ChatRender& r) {
  std::vector<std::string> out;
  for (const auto& [b, e] : r.generation) out.push_back(r.text.substr(b, e - b));
  return out;
}

}  // namespace

TEST(ChatGoldens, EveryTemplateMatchesJinja2ByteForByte) {
  std::ifstream f(kTemplates + "/goldens.jsonl");
  ASSERT_TRUE(f) << "missing goldens";
  std::map<std::string, ChatTemplate> compiled;
  std::map<std::string, int> per_template;
  std::string line;
  int n = 0, raised = 0, errors = 0;
  while (std::getline(f, line)) {
    const ojson c = ojson::parse(line);
    const std::string file = c["template"];
    ChatSpecialTokens tokens;
    if (c["bos_token"].is_string()) tokens.emplace_back("bos_token", c["bos_token"].get<std::string>());
    if (c["eos_token"].is_string()) tokens.emplace_back("eos_token", c["eos_token"].get<std::string>());
    const std::string key = file + "|" + c["bos_token"].dump() + "|" + c["eos_token"].dump();
    if (!compiled.count(key)) compiled.emplace(key, ChatTemplate::from_source(read_file(kTemplates + "/" + file), file, tokens));
    const ChatTemplate& t = compiled.at(key);
    ChatRenderOptions o;
    o.add_generation_prompt = c["add_generation_prompt"];
    o.tools = c["tools"];
    o.variables = c["variables"];
    o.now = golden_time();
    const std::string what = file + " / " + c["case"].get<std::string>() + " / gen=" + c["add_generation_prompt"].dump() +
                             " / " + c["variables"].dump();
    if (c.contains("rendered")) {
      ChatRender r;
      ASSERT_NO_THROW(r = t.render_json(c["messages"], o)) << what << ": " << error_of([&] { t.render_json(c["messages"], o); });
      EXPECT_EQ(r.text, c["rendered"].get<std::string>()) << what;
      if (c.contains("generation")) {
        EXPECT_EQ(span_texts(r), c["generation"].get<std::vector<std::string>>()) << what;
      }
    } else if (c.contains("raised")) {
      EXPECT_EQ(error_of([&] { t.render_json(c["messages"], o); }), c["raised"].get<std::string>()) << what;
      ++raised;
    } else {
      const std::string e = error_of([&] { t.render_json(c["messages"], o); });
      EXPECT_NE(e.find(file + ":"), std::string::npos) << what << " (jinja2: " << c["error"] << ") got: " << e;
      ++errors;
    }
    ++per_template[file];
    ++n;
  }
  EXPECT_EQ(n, 416);
  EXPECT_EQ(per_template.size(), 21u);
  EXPECT_GT(raised, 0);
  EXPECT_GT(errors, 0);
}

TEST(ChatGoldens, BuiltinTemplatesAreThePublishedOnes) {
  const std::map<std::string, std::string> files = {{"chatml", "chatml.jinja"}, {"qwen2", "qwen2.jinja"},
                                                    {"qwen2.5", "qwen2.5.jinja"}, {"qwen3", "qwen3.jinja"},
                                                    {"llama3", "llama3.jinja"}, {"llama3.1", "llama3.1.jinja"}};
  ASSERT_EQ(ChatTemplate::builtin_names().size(), files.size());
  for (const std::string& name : ChatTemplate::builtin_names())
    EXPECT_EQ(ChatTemplate::builtin_source(name), read_file(kTemplates + "/" + files.at(name))) << name;
  EXPECT_EQ(ChatTemplate::builtin_source("qwen3"), qwen3().chat_template_text());
  EXPECT_NE(error_of([] { ChatTemplate::builtin_source("vicuna"); }).find("'vicuna'"), std::string::npos);
}

TEST(ChatQwen3, GoldenRendersFromTransformers) {
  const ChatTemplate t = ChatTemplate::for_tokenizer(qwen3());
  EXPECT_EQ(t.name(), "auto");
  EXPECT_EQ(t.source(), kQwen3Dir + "/tokenizer_config.json:chat_template");
  std::ifstream f(kQwen3Dir + "/chat.jsonl");
  std::string line;
  int n = 0;
  while (std::getline(f, line)) {
    const json c = json::parse(line);
    EXPECT_EQ(t.render(messages_of(c["messages"])), c["rendered"].get<std::string>()) << line;
    ++n;
  }
  EXPECT_EQ(n, 3);
}

TEST(ChatQwen3, ThinkingSwitchHistoryAndTools) {
  const ChatTemplate t = ChatTemplate::for_tokenizer(qwen3());
  std::ifstream f(kQwen3Dir + "/chat_extra.jsonl");
  std::string line;
  int n = 0;
  while (std::getline(f, line)) {
    const json c = json::parse(line);
    ChatRenderOptions o;
    o.add_generation_prompt = c["add_generation_prompt"];
    if (c.contains("enable_thinking")) o.enable_thinking = c["enable_thinking"].get<bool>();
    EXPECT_EQ(t.render(messages_of(c["messages"]), o), c["rendered"].get<std::string>()) << line;
    ++n;
  }
  EXPECT_EQ(n, 8);
}

TEST(ChatQwen3, RenderedPromptEncodesToTemplateTokens) {
  const ChatTemplate t = ChatTemplate::for_tokenizer(qwen3());
  const auto ids = qwen3().encode(t.render(conv({{"user", "Hi"}})));
  // <|im_start|> user \n Hi <|im_end|> \n <|im_start|> assistant \n
  EXPECT_EQ(ids, (std::vector<int32_t>{151644, 872, 198, 13048, 151645, 198, 151644, 77091, 198}));
}

TEST(ChatTemplates, MessageFieldsToolsAndVariablesReachTheTemplate) {
  const ChatTemplate t = ChatTemplate::for_tokenizer(qwen3());
  ChatMessage call{"assistant", "", ""};
  call.fields["tool_calls"] = ojson::parse(R"([{"function": {"name": "add", "arguments": {"b": 2, "a": 1}}}])");
  ChatMessage result{"tool", "3", ""};
  ChatRenderOptions o;
  o.tools = ojson::parse(R"([{"name": "add", "parameters": {"type": "object"}}])");
  o.enable_thinking = false;
  const std::string text = t.render({ChatMessage{"user", "1+2?", ""}, call, result}, o);
  EXPECT_EQ(text,
            "<|im_start|>system\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are "
            "provided with function signatures within <tools></tools> XML tags:\n<tools>\n{\"name\": \"add\", "
            "\"parameters\": {\"type\": \"object\"}}\n</tools>\n\nFor each function call, return a json object with "
            "function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": "
            "<function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n<|im_start|>user\n1+2?"
            "<|im_end|>\n<|im_start|>assistant\n<tool_call>\n{\"name\": \"add\", \"arguments\": {\"b\": 2, \"a\": 1}}\n"
            "</tool_call><|im_end|>\n<|im_start|>user\n<tool_response>\n3\n</tool_response><|im_end|>\n"
            "<|im_start|>assistant\n<think>\n\n</think>\n\n");
  const ojson j = chat_messages_json({call});
  EXPECT_EQ(j.dump(), R"([{"role":"assistant","content":"","tool_calls":[{"function":{"name":"add","arguments":{"b":2,"a":1}}}]}])");
  ChatMessage null_content{"assistant", "", ""};
  null_content.fields["content"] = nullptr;
  EXPECT_EQ(chat_messages_json({null_content})[0]["content"], nullptr);
  const ChatTemplate v = ChatTemplate::from_source("{{ date_string }}|{{ bos_token }}|{{ tools }}|{{ documents }}", "v",
                                                   {{"bos_token", "<s>"}});
  ChatRenderOptions vo;
  vo.variables["date_string"] = "01 Jan 2025";
  EXPECT_EQ(v.render({}, vo), "01 Jan 2025|<s>|None|None");
}

TEST(ChatTemplates, NoneBuiltinFileAndUnknownChoices) {
  const ChatTemplate none = ChatTemplate::for_tokenizer(qwen3(), "none");
  EXPECT_TRUE(none.is_none());
  EXPECT_EQ(none.render(conv({{"user", "2+2="}})), "2+2=");
  EXPECT_EQ(none.render(conv({{"system", "Math."}, {"user", "2+2="}})), "Math.\n\n2+2=");
  EXPECT_NE(error_of([&] { none.render(conv({{"user", "a"}, {"assistant", "b"}, {"user", "c"}})); }).find("one user"),
            std::string::npos);

  const ChatTemplate q25 = ChatTemplate::for_tokenizer(qwen3(), "qwen2.5");
  EXPECT_EQ(q25.name(), "qwen2.5");
  EXPECT_EQ(q25.render(conv({{"user", "What is 2+3?"}})),
            "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
            "<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n");
  // A built-in Llama template on a tokenizer that names no BOS writes Llama's.
  EXPECT_EQ(ChatTemplate::for_tokenizer(qwen3(), "llama3").render(conv({{"user", " Hi "}})),
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");

  test::TempDir d("chat-file");
  const std::string path = d.file("my.jinja");
  test::write_text(path, "{% for m in messages %}[{{ m.role | upper }}] {{ m.content }}\n{% endfor %}"
                         "{% if add_generation_prompt %}[ASSISTANT] {% endif %}");
  const ChatTemplate file = ChatTemplate::for_tokenizer(qwen3(), path);
  EXPECT_EQ(file.name(), path);
  EXPECT_EQ(file.render(conv({{"user", "Hi"}})), "[USER] Hi\n[ASSISTANT] ");
  EXPECT_EQ(ChatTemplate::from_file(qwen3(), path).render(conv({{"user", "Hi"}})), "[USER] Hi\n[ASSISTANT] ");

  const std::string unknown = error_of([] { ChatTemplate::for_tokenizer(qwen3(), "vicuna"); });
  EXPECT_NE(unknown.find("'vicuna'"), std::string::npos);
  EXPECT_NE(unknown.find("llama3.1"), std::string::npos);
  EXPECT_NE(error_of([&] { ChatTemplate::from_file(qwen3(), d.file("missing.jinja")); }).find("missing.jinja"),
            std::string::npos);
}

TEST(ChatTemplates, ModelsWithoutOrWithSeveralTemplates) {
  const std::string tj = byte_tokenizer_json();
  const Tokenizer bare = Tokenizer::from_json(tj, R"({"eos_token": "<|im_end|>"})");
  const std::string e = error_of([&] { ChatTemplate::for_tokenizer(bare); });
  EXPECT_NE(e.find("no chat template"), std::string::npos) << e;
  EXPECT_NE(e.find("none"), std::string::npos) << e;
  EXPECT_NE(e.find("model.chat_template_file"), std::string::npos) << e;
  EXPECT_TRUE(ChatTemplate::for_tokenizer(bare, "none").is_none());

  const Tokenizer named = Tokenizer::from_json(
      tj, R"({"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D{{ 1 }}"}]})");
  const ChatTemplate t = ChatTemplate::for_tokenizer(named);
  EXPECT_EQ(t.source(), "tokenizer_config.json:chat_template[default]");
  EXPECT_EQ(t.render(conv({{"user", "x"}})), "D1");
}

TEST(ChatTemplates, ErrorsNameTheTemplateAndLine) {
  const std::string tj = byte_tokenizer_json();
  const Tokenizer broken =
      Tokenizer::from_json(tj, R"({"chat_template": "{% for m in messages %}\n{{ m.content + }}\n{% endfor %}"})");
  EXPECT_EQ(error_of([&] { ChatTemplate::for_tokenizer(broken); }),
            "tokenizer_config.json:chat_template:2:16: unexpected end of print statement");
  const ChatTemplate t = ChatTemplate::from_source("line 1\n{{ messages[0].content.strip().nope }}{{ 1 + none }}", "t.jinja");
  EXPECT_EQ(error_of([&] { t.render(conv({{"user", "x"}})); }),
            "t.jinja:2:44: unsupported operand type(s) for +: 'int' and 'NoneType'");
  // raise_exception's message is the error.
  const ChatTemplate gemma =
      ChatTemplate::from_source(read_file(kTemplates + "/gemma2.jinja"), "gemma2.jinja", {{"bos_token", "<bos>"}});
  EXPECT_EQ(error_of([&] { gemma.render(conv({{"system", "S"}, {"user", "Q"}})); }), "System role not supported");
  EXPECT_EQ(gemma.render(conv({{"user", "Q"}})), "<bos><start_of_turn>user\nQ<end_of_turn>\n<start_of_turn>model\n");
}
