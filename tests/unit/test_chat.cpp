// Chat templates: Qwen3 against renders of its real template (chat.jsonl from transformers, chat_extra.jsonl from
// the same template through Jinja2), the other families against renders written by hand from their published
// templates, detection from template text, overrides, and the errors that tell how to choose a template.
#include <gtest/gtest.h>

#include <fstream>
#include <functional>

#include <nlohmann/json.hpp>

#include "rlcu/chat.h"
#include "rlcu/error.h"
#include "rlcu/tokenizer.h"

using namespace rlcu;
using json = nlohmann::json;

namespace {

const std::string kQwen3Dir = std::string(RLCU_TEST_FIXTURES) + "/tokenizers/qwen3";

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

// Published templates (as they appear in tokenizer_config.json, with Jinja's \n escapes).
const char* kQwen2Template =
    R"({% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %})";
const char* kQwen25Template =
    R"({%- if tools %}{{- '<|im_start|>system\n' }}{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] }}{%- else %}{{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}{%- endif %}{%- else %}{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}{%- else %}{{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}{%- endif %}{%- endif %}...{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %})";
const char* kLlama3Template =
    R"({% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %})";
const char* kLlama31Template =
    R"({{- bos_token }}{%- if not date_string is defined %}{%- set date_string = "26 Jul 2024" %}{%- endif %}{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}{{- "Cutting Knowledge Date: December 2023\n" }}{{- "Today Date: " + date_string + "\n\n" }}{{- system_message }}{{- "<|eot_id|>" }}...)";
const char* kChatMLTemplate =
    R"({% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %})";

}  // namespace

TEST(ChatQwen3, GoldenRendersFromTransformers) {
  const ChatTemplate t = ChatTemplate::for_tokenizer(qwen3());
  EXPECT_EQ(t.family(), ChatFamily::Qwen3);
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
    o.enable_thinking = c.value("enable_thinking", true);
    EXPECT_EQ(t.render(messages_of(c["messages"]), o), c["rendered"].get<std::string>()) << line;
    ++n;
  }
  EXPECT_EQ(n, 8);
  EXPECT_NE(error_of([&] { t.render(conv({{"narrator", "x"}})); }).find("role 'narrator'"), std::string::npos);
}

TEST(ChatQwen3, RenderedPromptEncodesToTemplateTokens) {
  const ChatTemplate t = ChatTemplate::for_tokenizer(qwen3());
  const auto ids = qwen3().encode(t.render(conv({{"user", "Hi"}})));
  // <|im_start|> user \n Hi <|im_end|> \n <|im_start|> assistant \n
  EXPECT_EQ(ids, (std::vector<int32_t>{151644, 872, 198, 13048, 151645, 198, 151644, 77091, 198}));
}

TEST(ChatQwen25, DefaultSystemPromptAndTools) {
  const ChatTemplate t = ChatTemplate::resolve("auto", kQwen25Template, "");
  EXPECT_EQ(t.family(), ChatFamily::Qwen25);
  EXPECT_EQ(t.render(conv({{"user", "What is 2+3?"}})),
            "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
            "<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(t.render(conv({{"system", "Be brief."}, {"user", "Hi"}, {"assistant", "Hello"}, {"user", "Bye"}})),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
            "<|im_start|>assistant\nHello<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n");
  ChatRenderOptions no_gen;
  no_gen.add_generation_prompt = false;
  EXPECT_EQ(t.render(conv({{"user", "Q"}, {"tool", "1"}, {"tool", "2"}}), no_gen),
            "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
            "<|im_start|>user\nQ<|im_end|>\n<|im_start|>user\n<tool_response>\n1\n</tool_response>\n"
            "<tool_response>\n2\n</tool_response><|im_end|>\n");
}

TEST(ChatQwen2, DefaultSystemPrompt) {
  const ChatTemplate t = ChatTemplate::resolve("auto", kQwen2Template, "");
  EXPECT_EQ(t.family(), ChatFamily::Qwen2);
  EXPECT_EQ(t.render(conv({{"user", "Hi"}})),
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
            "<|im_start|>assistant\n");
  EXPECT_EQ(t.render(conv({{"system", "S"}, {"user", "Hi"}})),
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
}

TEST(ChatChatML, NoDefaultSystem) {
  const ChatTemplate t = ChatTemplate::resolve("auto", kChatMLTemplate, "");
  EXPECT_EQ(t.family(), ChatFamily::ChatML);
  EXPECT_EQ(t.render(conv({{"user", "Hi"}})), "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
}

TEST(ChatLlama3, BosHeadersAndTrim) {
  const ChatTemplate t = ChatTemplate::resolve("auto", kLlama3Template, "<|begin_of_text|>");
  EXPECT_EQ(t.family(), ChatFamily::Llama3);
  EXPECT_TRUE(t.renders_bos());
  EXPECT_EQ(t.render(conv({{"system", "  You are terse.\n"}, {"user", "Hi there \n\n"}})),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
  ChatRenderOptions no_gen;
  no_gen.add_generation_prompt = false;
  EXPECT_EQ(t.render(conv({{"user", "Q"}, {"assistant", " A "}}), no_gen),
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nQ<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\nA<|eot_id|>");
}

TEST(ChatLlama31, AlwaysSystemTurnWithDates) {
  const ChatTemplate t = ChatTemplate::resolve("auto", kLlama31Template, "<|begin_of_text|>");
  EXPECT_EQ(t.family(), ChatFamily::Llama31);
  EXPECT_EQ(t.render(conv({{"user", "Hi"}})),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n"
            "Today Date: 26 Jul 2024\n\n<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
  EXPECT_EQ(t.render(conv({{"system", " Be nice. "}, {"user", "Hi"}, {"assistant", "call"}, {"tool", "42"}})),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n"
            "Today Date: 26 Jul 2024\n\nBe nice.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\ncall<|eot_id|>"
            "<|start_header_id|>ipython<|end_header_id|>\n\n\"42\"<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

TEST(ChatTemplates, OverrideNoneAndCustom) {
  // An explicit name wins over detection.
  EXPECT_EQ(ChatTemplate::resolve("chatml", kQwen2Template, "").family(), ChatFamily::ChatML);
  const ChatTemplate none = ChatTemplate::for_tokenizer(qwen3(), "none");
  EXPECT_EQ(none.render(conv({{"user", "2+2="}})), "2+2=");
  EXPECT_EQ(none.render(conv({{"system", "Math."}, {"user", "2+2="}})), "Math.\n\n2+2=");
  EXPECT_NE(error_of([&] { none.render(conv({{"user", "a"}, {"assistant", "b"}, {"user", "c"}})); }).find("one user"),
            std::string::npos);

  const ChatTemplate custom =
      ChatTemplate::resolve("custom", "", "", "<|system|>{system}<|end|><|user|>{prompt}<|end|><|assistant|>{{x}}");
  EXPECT_EQ(custom.family(), ChatFamily::Custom);
  EXPECT_EQ(custom.render(conv({{"system", "S"}, {"user", "Q"}})), "<|system|>S<|end|><|user|>Q<|end|><|assistant|>{x}");
  EXPECT_EQ(custom.render(conv({{"user", "Q"}})), "<|system|><|end|><|user|>Q<|end|><|assistant|>{x}");
  const ChatTemplate prompt_only = ChatTemplate::resolve("custom", "", "", "Q: {prompt}\nA:");
  EXPECT_NE(error_of([&] { prompt_only.render(conv({{"system", "S"}, {"user", "Q"}})); }).find("{system}"),
            std::string::npos);
  EXPECT_NE(error_of([] { ChatTemplate::resolve("custom", "", "", ""); }).find("{prompt}"), std::string::npos);
  EXPECT_NE(error_of([] { ChatTemplate::resolve("custom", "", "", "no placeholder"); }).find("{prompt}"),
            std::string::npos);
  EXPECT_NE(error_of([] { ChatTemplate::resolve("custom", "", "", "{prompt} {answer}"); }).find("offset 9"),
            std::string::npos);
}

TEST(ChatTemplates, UnrecognisedTemplatesSayHowToChoose) {
  const std::string unknown = error_of([] { detect_chat_family("{{ '[INST] ' + messages[0]['content'] }}"); });
  EXPECT_NE(unknown.find("chat_template"), std::string::npos);
  EXPECT_NE(unknown.find("llama3.1"), std::string::npos);
  EXPECT_NE(error_of([] { detect_chat_family(""); }).find("no chat template"), std::string::npos);
  // ChatML with a default system prompt no family knows (e.g. a math model's) is not silently rendered without it.
  EXPECT_NE(error_of([] {
              detect_chat_family(R"({{ '<|im_start|>system\nPlease reason step by step.<|im_end|>\n' }}<|im_end|>)");
            }).find("default system prompt"),
            std::string::npos);
  // A thinking-only variant whose generation prompt always opens <think>.
  EXPECT_NE(error_of([] {
              detect_chat_family(R"({{- '<|im_start|>assistant\n<think>\n' }}reasoning_content<|im_end|>)");
            }).find("<think>"),
            std::string::npos);
  EXPECT_NE(error_of([] { chat_family_from_name("vicuna"); }).find("'vicuna'"), std::string::npos);
  EXPECT_EQ(chat_family_from_name("qwen2.5"), ChatFamily::Qwen25);
  EXPECT_EQ(chat_family_name(ChatFamily::Llama31), "llama3.1");
}
