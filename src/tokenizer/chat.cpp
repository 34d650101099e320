// Chat templates (include/rlcu/chat.h): choosing the template (the model's, a built-in one, a file, or the raw
// `none` format) and rendering conversations through the Jinja interpreter with the variables transformers'
// apply_chat_template passes.
#include "rlcu/chat.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "chat_builtin.h"
#include "jinja.h"
#include "rlcu/error.h"
#include "rlcu/tokenizer.h"

namespace rlcu {

using ojson = nlohmann::ordered_json;

struct ChatTemplate::Impl {
  bool none = false;
  std::string name;    // auto | none | built-in name | file path
  std::string source;  // what errors name
  jinja::Template tmpl;
  ChatSpecialTokens tokens;
};

namespace {

std::string builtin_list() {
  std::string s;
  for (const std::string& n : ChatTemplate::builtin_names()) s += (s.empty() ? "" : ", ") + n;
  return s;
}

const BuiltinChatTemplate* find_builtin(const std::string& name) {
  for (const BuiltinChatTemplate& b : builtin_chat_templates())
    if (name == b.name) return &b;
  return nullptr;
}

// The tokenizer_config.json special tokens, with the tokenizer's BOS/EOS strings where it names none (for
// templates that are not the model's own).
ChatSpecialTokens tokens_with_fallback(const Tokenizer& tok) {
  ChatSpecialTokens t = tok.named_special_tokens();
  auto has = [&](const char* k) {
    for (const auto& [n, v] : t)
      if (n == k) return true;
    return false;
  };
  if (!has("bos_token") && !tok.bos_token().empty()) t.emplace_back("bos_token", tok.bos_token());
  if (!has("eos_token") && !tok.eos_token().empty()) t.emplace_back("eos_token", tok.eos_token());
  return t;
}

std::shared_ptr<ChatTemplate::Impl> jinja_impl(const std::string& text, const std::string& name,
                                               const std::string& source, ChatSpecialTokens tokens) {
  auto impl = std::make_shared<ChatTemplate::Impl>();
  impl->name = name;
  impl->source = source;
  impl->tmpl = jinja::Template::parse(text, source);
  impl->tokens = std::move(tokens);
  return impl;
}

// `none`: one optional system message and one user message, concatenated.
std::string render_none(const ojson& m) {
  auto text_of = [&](size_t i) {
    const ojson& c = m[i].contains("content") ? m[i]["content"] : ojson();
    if (!c.is_string())
      throw Error(fmt::format("message {}: the none chat template renders string contents only", i));
    return c.get<std::string>();
  };
  auto role_of = [&](size_t i) { return m[i].value("role", std::string()); };
  size_t i = 0;
  std::string system;
  const bool has_system = !m.empty() && role_of(0) == "system";
  if (has_system) {
    system = text_of(0);
    i = 1;
  }
  if (m.size() != i + 1 || role_of(i) != "user")
    throw Error(fmt::format("the none chat template renders one user message (after an optional system message); "
                            "this conversation has {} messages — choose a chat template for multi-turn prompts",
                            m.size()));
  const std::string prompt = text_of(i);
  return has_system ? system + "\n\n" + prompt : prompt;
}

}  // namespace

const std::vector<std::string>& ChatTemplate::builtin_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> v;
    for (const BuiltinChatTemplate& b : builtin_chat_templates()) v.emplace_back(b.name);
    return v;
  }();
  return names;
}

const std::string& ChatTemplate::builtin_source(const std::string& name) {
  static const std::vector<std::pair<std::string, std::string>> sources = [] {
    std::vector<std::pair<std::string, std::string>> v;
    for (const BuiltinChatTemplate& b : builtin_chat_templates()) v.emplace_back(b.name, b.source);
    return v;
  }();
  for (const auto& [n, s] : sources)
    if (n == name) return s;
  throw Error(fmt::format("'{}' is not a built-in chat template (they are: {})", name, builtin_list()));
}

ChatTemplate ChatTemplate::none() {
  auto impl = std::make_shared<Impl>();
  impl->none = true;
  impl->name = "none";
  impl->source = "none";
  ChatTemplate t;
  t.impl_ = std::move(impl);
  return t;
}

ChatTemplate ChatTemplate::from_source(const std::string& source, const std::string& name,
                                       const ChatSpecialTokens& tokens) {
  ChatTemplate t;
  t.impl_ = jinja_impl(source, name, name, tokens);
  return t;
}

ChatTemplate ChatTemplate::from_file(const Tokenizer& tok, const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(fmt::format("{}: cannot read the chat template file", path));
  std::ostringstream ss;
  ss << in.rdbuf();
  ChatTemplate t;
  t.impl_ = jinja_impl(ss.str(), path, path, tokens_with_fallback(tok));
  return t;
}

ChatTemplate ChatTemplate::for_tokenizer(const Tokenizer& tok, const std::string& choice) {
  if (choice == "none") return none();
  ChatTemplate t;
  if (choice == "auto") {
    if (tok.chat_template_text().empty())
      throw Error(fmt::format(
          "{}: the model has no chat template (no chat_template in tokenizer_config.json, no chat_template.jinja); "
          "set model.chat_template (--chat-template, --template) to none for raw prompts or to one of {}, or "
          "model.chat_template_file to a Jinja file",
          tok.source(), builtin_list()));
    t.impl_ = jinja_impl(tok.chat_template_text(), "auto", tok.chat_template_source(), tok.named_special_tokens());
    return t;
  }
  if (const BuiltinChatTemplate* b = find_builtin(choice)) {
    std::string missing;
    for (const std::string& token : b->tokens)
      if (!tok.token_to_id(token)) missing += (missing.empty() ? "" : ", ") + token;
    if (!missing.empty())
      spdlog::warn("chat template {} writes {}, which the tokenizer {} does not have as tokens: the prompts will not "
                   "contain the tokens the model was trained on (the model's own template: --chat-template auto)",
                   choice, missing, tok.source());
    ChatSpecialTokens tokens = tokens_with_fallback(tok);
    if (choice.rfind("llama", 0) == 0 && std::none_of(tokens.begin(), tokens.end(), [](const auto& p) {
          return p.first == "bos_token";
        }))
      tokens.emplace_back("bos_token", "<|begin_of_text|>");
    t.impl_ = jinja_impl(b->source, choice, "built-in chat template " + choice, std::move(tokens));
    return t;
  }
  std::error_code ec;
  if (std::filesystem::is_regular_file(choice, ec)) return from_file(tok, choice);
  throw Error(fmt::format("chat template '{}' is unknown: expected auto, none, one of {} or the path of a Jinja file",
                          choice, builtin_list()));
}

ojson chat_messages_json(const std::vector<ChatMessage>& messages) {
  ojson out = ojson::array();
  for (const ChatMessage& m : messages) {
    ojson o = ojson::object();
    o["role"] = m.role;
    o["content"] = m.content;
    if (!m.reasoning_content.empty()) o["reasoning_content"] = m.reasoning_content;
    if (m.fields.is_object())
      for (auto it = m.fields.begin(); it != m.fields.end(); ++it) o[it.key()] = it.value();
    out.push_back(std::move(o));
  }
  return out;
}

ChatRender ChatTemplate::render_json(const ojson& messages, const ChatRenderOptions& opts) const {
  RLCU_CHECK(impl_ != nullptr, "ChatTemplate used before it was resolved");
  RLCU_CHECK(messages.is_array(), "chat messages must be a JSON array");
  if (impl_->none) return ChatRender{render_none(messages), {}};
  std::vector<std::pair<std::string, jinja::Value>> vars;
  for (const auto& [k, v] : impl_->tokens) vars.emplace_back(k, jinja::Value(v));
  vars.emplace_back("messages", jinja::Value::from_json(messages));
  vars.emplace_back("tools", opts.tools.is_null() ? jinja::Value::none() : jinja::Value::from_json(opts.tools));
  vars.emplace_back("documents", jinja::Value::none());
  vars.emplace_back("add_generation_prompt", jinja::Value(opts.add_generation_prompt));
  if (opts.enable_thinking) vars.emplace_back("enable_thinking", jinja::Value(*opts.enable_thinking));
  if (opts.variables.is_object())
    for (auto it = opts.variables.begin(); it != opts.variables.end(); ++it)
      vars.emplace_back(it.key(), jinja::Value::from_json(it.value()));
  jinja::RenderOptions ro;
  ro.now = opts.now;
  jinja::RenderResult r = impl_->tmpl.render(vars, ro);
  return ChatRender{std::move(r.text), std::move(r.generation)};
}

ChatRender ChatTemplate::render_spans(const std::vector<ChatMessage>& messages, const ChatRenderOptions& opts) const {
  return render_json(chat_messages_json(messages), opts);
}

std::string ChatTemplate::render(const std::vector<ChatMessage>& messages, const ChatRenderOptions& opts) const {
  return render_spans(messages, opts).text;
}

bool ChatTemplate::is_none() const { return impl_ && impl_->none; }
bool ChatTemplate::has_generation() const { return impl_ && !impl_->none && impl_->tmpl.has_generation(); }
const std::string& ChatTemplate::name() const { return impl_->name; }
const std::string& ChatTemplate::source() const { return impl_->source; }

}  // namespace rlcu
