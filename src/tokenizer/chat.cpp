// Chat template rendering per family (see include/rlcu/chat.h), written from the families' published Jinja
// templates; Jinja's `trim` is Python's str.strip() and Qwen3's strip('\n') strips newlines only.
#include "rlcu/chat.h"

#include <nlohmann/json.hpp>

#include "rlcu/error.h"
#include "rlcu/tokenizer.h"
#include "unicode.h"

namespace rlcu {

namespace {

constexpr const char* kQwen25System = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.";
constexpr const char* kQwen2System = "You are a helpful assistant.";
constexpr const char* kLlama31Date = "26 Jul 2024";
constexpr const char* kChoices = "chatml, qwen2, qwen2.5, qwen3, llama3, llama3.1, none, custom";

bool contains(const std::string& s, const char* what) { return s.find(what) != std::string::npos; }

// Python's str.isspace() for one code point.
bool py_space(char32_t c) { return tok::is_whitespace(c) || (c >= 0x1C && c <= 0x1F); }

std::string py_strip(const std::string& s) {
  size_t b = 0, e = s.size();
  while (b < e) {
    size_t j = b;
    char32_t cp;
    if (!tok::utf8_next(s, j, cp) || !py_space(cp)) break;
    b = j;
  }
  while (e > b) {
    size_t k = e - 1;
    while (k > b && (static_cast<unsigned char>(s[k]) & 0xC0) == 0x80) --k;
    size_t j = k;
    char32_t cp;
    if (!tok::utf8_next(s, j, cp) || !py_space(cp)) break;
    e = k;
  }
  return s.substr(b, e - b);
}

std::string lstrip_nl(const std::string& s) {
  const size_t b = s.find_first_not_of('\n');
  return b == std::string::npos ? "" : s.substr(b);
}
std::string rstrip_nl(const std::string& s) {
  const size_t e = s.find_last_not_of('\n');
  return e == std::string::npos ? "" : s.substr(0, e + 1);
}
std::string strip_nl(const std::string& s) { return lstrip_nl(rstrip_nl(s)); }

bool starts_with(const std::string& s, const char* p) { return s.rfind(p, 0) == 0; }
bool ends_with(const std::string& s, const std::string& p) {
  return s.size() >= p.size() && s.compare(s.size() - p.size(), p.size(), p) == 0;
}

void check_roles(const std::vector<ChatMessage>& messages, const char* family,
                 std::initializer_list<const char*> allowed) {
  for (size_t i = 0; i < messages.size(); ++i) {
    bool ok = false;
    for (const char* r : allowed) ok = ok || messages[i].role == r;
    if (!ok) {
      std::string list;
      for (const char* r : allowed) list += std::string(list.empty() ? "" : ", ") + r;
      throw Error(fmt::format("message {}: role '{}' is not rendered by the {} chat template (roles: {})", i,
                              messages[i].role, family, list));
    }
  }
}

// ChatML turns; `tool` messages grouped into one user turn as the Qwen2.5/Qwen3 templates do.
void render_tool(std::string& out, const std::vector<ChatMessage>& m, size_t i) {
  if (i == 0 || m[i - 1].role != "tool") out += "<|im_start|>user";
  out += "\n<tool_response>\n" + m[i].content + "\n</tool_response>";
  if (i + 1 == m.size() || m[i + 1].role != "tool") out += "<|im_end|>\n";
}

std::string render_chatml(const std::vector<ChatMessage>& m, const ChatRenderOptions& opts,
                          const char* default_system) {
  std::string out;
  for (size_t i = 0; i < m.size(); ++i) {
    if (i == 0 && default_system && m[0].role != "system")
      out += std::string("<|im_start|>system\n") + default_system + "<|im_end|>\n";
    out += "<|im_start|>" + m[i].role + "\n" + m[i].content + "<|im_end|>\n";
  }
  if (opts.add_generation_prompt) out += "<|im_start|>assistant\n";
  return out;
}

std::string render_qwen25(const std::vector<ChatMessage>& m, const ChatRenderOptions& opts) {
  check_roles(m, "qwen2.5", {"system", "user", "assistant", "tool"});
  std::string out;
  if (!m.empty() && m[0].role == "system")
    out += "<|im_start|>system\n" + m[0].content + "<|im_end|>\n";
  else
    out += std::string("<|im_start|>system\n") + kQwen25System + "<|im_end|>\n";
  for (size_t i = 0; i < m.size(); ++i) {
    if (m[i].role == "tool") {
      render_tool(out, m, i);
    } else if (!(i == 0 && m[i].role == "system")) {
      out += "<|im_start|>" + m[i].role + "\n" + m[i].content + "<|im_end|>\n";
    }
  }
  if (opts.add_generation_prompt) out += "<|im_start|>assistant\n";
  return out;
}

std::string render_qwen3(const std::vector<ChatMessage>& m, const ChatRenderOptions& opts) {
  check_roles(m, "qwen3", {"system", "user", "assistant", "tool"});
  std::string out;
  if (!m.empty() && m[0].role == "system") out += "<|im_start|>system\n" + m[0].content + "<|im_end|>\n";
  // The last user message that is not a tool response: assistant turns after it keep their thinking.
  size_t last_query = m.empty() ? 0 : m.size() - 1;
  for (size_t k = m.size(); k-- > 0;) {
    const std::string& c = m[k].content;
    if (m[k].role == "user" && !(starts_with(c, "<tool_response>") && ends_with(c, "</tool_response>"))) {
      last_query = k;
      break;
    }
  }
  for (size_t i = 0; i < m.size(); ++i) {
    const ChatMessage& msg = m[i];
    if (msg.role == "user" || (msg.role == "system" && i != 0)) {
      out += "<|im_start|>" + msg.role + "\n" + msg.content + "<|im_end|>\n";
    } else if (msg.role == "assistant") {
      std::string content = msg.content, reasoning;
      if (!msg.reasoning_content.empty()) {
        reasoning = msg.reasoning_content;
      } else if (contains(msg.content, "</think>")) {
        content = lstrip_nl(msg.content.substr(msg.content.rfind("</think>") + 8));
        std::string before = rstrip_nl(msg.content.substr(0, msg.content.find("</think>")));
        const size_t open = before.rfind("<think>");
        if (open != std::string::npos) before = before.substr(open + 7);
        reasoning = lstrip_nl(before);
      }
      const bool last = i + 1 == m.size();
      if (i > last_query && (last || !reasoning.empty()))
        out += "<|im_start|>assistant\n<think>\n" + strip_nl(reasoning) + "\n</think>\n\n" + lstrip_nl(content);
      else
        out += "<|im_start|>assistant\n" + content;
      out += "<|im_end|>\n";
    } else if (msg.role == "tool") {
      render_tool(out, m, i);
    }
  }
  if (opts.add_generation_prompt) {
    out += "<|im_start|>assistant\n";
    if (!opts.enable_thinking) out += "<think>\n\n</think>\n\n";
  }
  return out;
}

std::string render_llama3(const std::vector<ChatMessage>& m, const ChatRenderOptions& opts, const std::string& bos) {
  std::string out;
  for (size_t i = 0; i < m.size(); ++i) {
    if (i == 0) out += bos;
    out += "<|start_header_id|>" + m[i].role + "<|end_header_id|>\n\n" + py_strip(m[i].content) + "<|eot_id|>";
  }
  if (opts.add_generation_prompt) out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
  return out;
}

std::string render_llama31(const std::vector<ChatMessage>& m, const ChatRenderOptions& opts, const std::string& bos) {
  std::string out = bos;
  size_t first = 0;
  std::string system;
  if (!m.empty() && m[0].role == "system") {
    system = py_strip(m[0].content);
    first = 1;
  }
  out += std::string("<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n") +
         "Today Date: " + kLlama31Date + "\n\n" + system + "<|eot_id|>";
  for (size_t i = first; i < m.size(); ++i) {
    if (m[i].role == "tool" || m[i].role == "ipython") {
      // The template JSON-encodes tool output (a string is "iterable" to Jinja), quotes included.
      out += "<|start_header_id|>ipython<|end_header_id|>\n\n" + nlohmann::json(m[i].content).dump() + "<|eot_id|>";
    } else {
      out += "<|start_header_id|>" + m[i].role + "<|end_header_id|>\n\n" + py_strip(m[i].content) + "<|eot_id|>";
    }
  }
  if (opts.add_generation_prompt) out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
  return out;
}

// Splits a conversation into (system, prompt) for the single-turn renderers.
void single_turn(const std::vector<ChatMessage>& m, const char* family, std::string& system, std::string& prompt,
                 bool& has_system) {
  size_t i = 0;
  has_system = false;
  if (!m.empty() && m[0].role == "system") {
    system = m[0].content;
    has_system = true;
    i = 1;
  }
  if (m.size() != i + 1 || m[i].role != "user")
    throw Error(fmt::format("the {} chat template renders one user message (after an optional system message); "
                            "this conversation has {} messages — choose a chat family for multi-turn prompts",
                            family, m.size()));
  prompt = m[i].content;
}

std::string render_custom(const std::string& tmpl, const std::vector<ChatMessage>& m) {
  std::string system, prompt;
  bool has_system;
  single_turn(m, "custom", system, prompt, has_system);
  std::string out;
  bool used_system = false;
  for (size_t i = 0; i < tmpl.size(); ++i) {
    const char c = tmpl[i];
    if ((c == '{' || c == '}') && i + 1 < tmpl.size() && tmpl[i + 1] == c) {
      out.push_back(c);
      ++i;
    } else if (tmpl.compare(i, 8, "{system}") == 0) {
      out += system;
      used_system = true;
      i += 7;
    } else if (tmpl.compare(i, 8, "{prompt}") == 0) {
      out += prompt;
      i += 7;
    } else {
      out.push_back(c);
    }
  }
  if (has_system && !used_system && !system.empty())
    throw Error("the custom chat template has no {system} placeholder but the conversation has a system message");
  return out;
}

void validate_custom(const std::string& tmpl) {
  if (tmpl.empty()) throw Error("chat template 'custom' needs a custom template string with {prompt}");
  for (size_t i = 0; i < tmpl.size(); ++i) {
    const char c = tmpl[i];
    if ((c == '{' || c == '}') && i + 1 < tmpl.size() && tmpl[i + 1] == c) {
      ++i;
    } else if (tmpl.compare(i, 8, "{system}") == 0 || tmpl.compare(i, 8, "{prompt}") == 0) {
      i += 7;
    } else if (c == '{' || c == '}') {
      throw Error(fmt::format("custom chat template: unexpected '{}' at offset {} (placeholders are {{system}} and "
                              "{{prompt}}; write {{{{ or }}}} for a literal brace)",
                              c, i));
    }
  }
  if (tmpl.find("{prompt}") == std::string::npos)
    throw Error("custom chat template: no {prompt} placeholder");
}

}  // namespace

std::string chat_family_name(ChatFamily f) {
  switch (f) {
    case ChatFamily::None: return "none";
    case ChatFamily::ChatML: return "chatml";
    case ChatFamily::Qwen2: return "qwen2";
    case ChatFamily::Qwen25: return "qwen2.5";
    case ChatFamily::Qwen3: return "qwen3";
    case ChatFamily::Llama3: return "llama3";
    case ChatFamily::Llama31: return "llama3.1";
    case ChatFamily::Custom: return "custom";
  }
  return "none";
}

ChatFamily chat_family_from_name(const std::string& name) {
  for (ChatFamily f : {ChatFamily::None, ChatFamily::ChatML, ChatFamily::Qwen2, ChatFamily::Qwen25, ChatFamily::Qwen3,
                       ChatFamily::Llama3, ChatFamily::Llama31, ChatFamily::Custom})
    if (chat_family_name(f) == name) return f;
  throw Error(fmt::format("chat template '{}' is unknown (expected auto or one of {})", name, kChoices));
}

ChatFamily detect_chat_family(const std::string& t) {
  const std::string how = fmt::format(
      "set the chat template explicitly (model.chat_template in the config, --template on the command line) to one "
      "of {}",
      kChoices);
  if (t.empty()) throw Error("the model has no chat template (tokenizer_config.json / chat_template.jinja); " + how);
  if (contains(t, "<|start_header_id|>") && contains(t, "<|eot_id|>"))
    return contains(t, "Cutting Knowledge Date") ? ChatFamily::Llama31 : ChatFamily::Llama3;
  if (contains(t, "<|im_start|>") && contains(t, "<|im_end|>")) {
    // A generation prompt that opens a think block is a thinking-only variant none of the families render.
    if (contains(t, "<|im_start|>assistant\\n<think>") || contains(t, "<|im_start|>assistant\n<think>"))
      throw Error("the model's chat template always opens <think> in the generation prompt, which no built-in "
                  "family renders; " + how);
    if (contains(t, "enable_thinking") || contains(t, "reasoning_content")) return ChatFamily::Qwen3;
    if (contains(t, kQwen25System)) return ChatFamily::Qwen25;
    if (contains(t, "<|im_start|>system\\nYou are a helpful assistant.<|im_end|>") ||
        contains(t, "<|im_start|>system\nYou are a helpful assistant.<|im_end|>"))
      return ChatFamily::Qwen2;
    // Plain ChatML unless the template inserts some other default system prompt.
    for (const char* marker : {"<|im_start|>system\\n", "<|im_start|>system\n"}) {
      const std::string mk = marker;
      for (size_t p = t.find(mk); p != std::string::npos; p = t.find(mk, p + 1)) {
        const size_t q = p + mk.size();
        if (q < t.size() && std::string("'\"{+ ").find(t[q]) == std::string::npos)
          throw Error("the model's ChatML template inserts a default system prompt that no built-in family knows; " +
                      how + " (with a system_prompt in the data section when one is wanted)");
      }
    }
    return ChatFamily::ChatML;
  }
  throw Error("cannot recognise the model's chat template; " + how);
}

ChatTemplate ChatTemplate::resolve(const std::string& name, const std::string& hf_template,
                                   const std::string& bos_token, const std::string& custom_template) {
  ChatTemplate t;
  t.family_ = name == "auto" ? detect_chat_family(hf_template) : chat_family_from_name(name);
  t.bos_token_ = bos_token;
  if (t.renders_bos() && t.bos_token_.empty()) t.bos_token_ = "<|begin_of_text|>";
  if (t.family_ == ChatFamily::Custom) {
    validate_custom(custom_template);
    t.custom_ = custom_template;
  }
  return t;
}

ChatTemplate ChatTemplate::for_tokenizer(const Tokenizer& tok, const std::string& name,
                                         const std::string& custom_template) {
  return resolve(name, tok.chat_template_text(), tok.bos_token(), custom_template);
}

std::string ChatTemplate::name() const { return chat_family_name(family_); }

std::string ChatTemplate::render(const std::vector<ChatMessage>& messages, const ChatRenderOptions& opts) const {
  switch (family_) {
    case ChatFamily::None: {
      std::string system, prompt;
      bool has_system;
      single_turn(messages, "none", system, prompt, has_system);
      return has_system ? system + "\n\n" + prompt : prompt;
    }
    case ChatFamily::ChatML: return render_chatml(messages, opts, nullptr);
    case ChatFamily::Qwen2: return render_chatml(messages, opts, kQwen2System);
    case ChatFamily::Qwen25: return render_qwen25(messages, opts);
    case ChatFamily::Qwen3: return render_qwen3(messages, opts);
    case ChatFamily::Llama3: return render_llama3(messages, opts, bos_token_);
    case ChatFamily::Llama31: return render_llama31(messages, opts, bos_token_);
    case ChatFamily::Custom: return render_custom(custom_, messages);
  }
  return "";
}

}  // namespace rlcu
