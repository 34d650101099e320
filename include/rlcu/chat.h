// Chat templates: a conversation (+ the generation prompt) rendered to the exact text transformers'
// apply_chat_template produces, by the model's own Jinja template through the tokenizer module's Jinja interpreter
// (src/tokenizer/jinja.h: the jinja2 subset Hugging Face templates use, with transformers' settings).
//
// Choices (model.chat_template, `--chat-template` of eval and generate, `tokenize --template`):
//   auto      the model's template: chat_template.jinja in the tokenizer directory, else tokenizer_config.json's
//             "chat_template" (a string, or the entry named "default" of a list of {name, template}). A model
//             without one is an error that names the other choices.
//   none      no template: the user message as is (a system message, when given, then "\n\n"); encoding adds the
//             tokenizer's BOS. One optional system message and one user message.
//   chatml, qwen2, qwen2.5, qwen3, llama3, llama3.1
//             built-in copies of those models' published templates, for models that ship none. Choosing one whose
//             special tokens the tokenizer does not have warns (the prompts would not contain the tokens the model
//             was trained on).
//   a file    a Jinja template file (model.chat_template_file; on the command line, any value that is not a name
//             above and names a file).
//
// Template variables, as transformers passes them: messages (each message's role, content, reasoning_content and
// any other field, e.g. tool_calls), tools (none unless given), documents (none), add_generation_prompt, the
// tokenizer_config.json special tokens (bos_token, eos_token, ...; a built-in template falls back to the tokenizer's
// BOS/EOS strings), enable_thinking when set, and extra variables. strftime_now() formats the current local time
// (ChatRenderOptions::now pins it). Template errors are rlcu::Error naming the template and the line; a template's
// raise_exception(msg) is an rlcu::Error whose message is msg.
#pragma once

#include <ctime>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace rlcu {

class Tokenizer;

struct ChatMessage {
  std::string role;               // system | user | assistant | tool | ...
  std::string content;
  std::string reasoning_content;  // the assistant's thinking when kept apart from content ("" = not given)
  // The message's other fields as the template sees them (tool_calls, name, tool_call_id, ...). A "content" here
  // (null, or a list of parts) replaces `content`.
  nlohmann::ordered_json fields = nlohmann::ordered_json::object();
};

struct ChatRenderOptions {
  bool add_generation_prompt = true;        // end with the assistant header the model continues from
  std::optional<bool> enable_thinking;      // passed as enable_thinking when set (Qwen3, SmolLM3: false = no think)
  nlohmann::ordered_json tools;             // tool schemas (a list) for `tools`; null = none
  nlohmann::ordered_json variables = nlohmann::ordered_json::object();  // extra variables (date_string, ...)
  std::optional<std::tm> now;               // the time strftime_now formats; unset = the current local time
};

struct ChatRender {
  std::string text;
  // Byte ranges [begin, end) of `text` rendered by {% generation %} blocks (the assistant turns of templates that
  // mark them, as transformers' return_assistant_tokens_mask reads them).
  std::vector<std::pair<size_t, size_t>> generation;
};

// The special-token variables of a template (name -> string, e.g. {"bos_token", "<|begin_of_text|>"}).
using ChatSpecialTokens = std::vector<std::pair<std::string, std::string>>;

class ChatTemplate {
 public:
  // choice: auto | none | a built-in name | a path to a Jinja file. Throws rlcu::Error for a model without a
  // template (auto), an unknown name, or a template that does not parse.
  static ChatTemplate for_tokenizer(const Tokenizer& tok, const std::string& choice = "auto");
  static ChatTemplate from_file(const Tokenizer& tok, const std::string& path);
  // A template from its text; `name` names it in errors.
  static ChatTemplate from_source(const std::string& source, const std::string& name,
                                  const ChatSpecialTokens& tokens = {});
  static ChatTemplate none();
  static const std::vector<std::string>& builtin_names();  // chatml, qwen2, qwen2.5, qwen3, llama3, llama3.1
  static const std::string& builtin_source(const std::string& name);  // throws rlcu::Error for an unknown name

  std::string render(const std::vector<ChatMessage>& messages, const ChatRenderOptions& opts = {}) const;
  ChatRender render_spans(const std::vector<ChatMessage>& messages, const ChatRenderOptions& opts = {}) const;
  // The same over messages given as JSON objects ({"role", "content", ...}), passed to the template as they are.
  ChatRender render_json(const nlohmann::ordered_json& messages, const ChatRenderOptions& opts = {}) const;

  bool is_none() const;         // the raw `none` format (the tokenizer's BOS is added when encoding)
  bool has_generation() const;  // the template marks assistant turns with {% generation %}
  const std::string& name() const;    // auto | none | the built-in name | the file path
  const std::string& source() const;  // where the template text came from (as errors name it)

  struct Impl;

 private:
  std::shared_ptr<const Impl> impl_;
};

// The JSON objects a template sees for these messages.
nlohmann::ordered_json chat_messages_json(const std::vector<ChatMessage>& messages);

}  // namespace rlcu
