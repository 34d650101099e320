// Prompt datasets: JSONL / JSON-array records -> chat messages -> rendered prompt text -> ids, with the length
// filter and malformed-record handling described in include/rlcu/data.h.
#include <cctype>
#include <fstream>
#include <sstream>

#include <spdlog/spdlog.h>

#include "rlcu/data.h"
#include "rlcu/error.h"
#include "rlcu/input_file.h"
#include "rlcu/json_error.h"
#include "rlcu/tokenizer.h"

namespace rlcu {

using json = nlohmann::json;
using ojson = nlohmann::ordered_json;

namespace {

constexpr int kMalformedWarnings = 5;  // malformed records reported one by one before only counting

// A field by name, or by dotted path into nested objects when no key has the full name.
template <typename Json>
const Json* field_at(const Json& rec, const std::string& path) {
  if (!rec.is_object()) return nullptr;
  auto it = rec.find(path);
  if (it != rec.end()) return &*it;
  const Json* cur = &rec;
  size_t start = 0;
  while (true) {
    const size_t dot = path.find('.', start);
    const std::string key = path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    if (!cur->is_object()) return nullptr;
    auto f = cur->find(key);
    if (f == cur->end()) return nullptr;
    cur = &*f;
    if (dot == std::string::npos) return cur;
    start = dot + 1;
  }
}

template <typename Json>
std::string field_text(const Json& v) {
  return v.is_string() ? v.template get<std::string>() : v.dump();
}

std::string fill_template(const std::string& tmpl, const ojson& rec) {
  std::string out;
  for (size_t i = 0; i < tmpl.size(); ++i) {
    const char c = tmpl[i];
    if ((c == '{' || c == '}') && i + 1 < tmpl.size() && tmpl[i + 1] == c) {
      out.push_back(c);
      ++i;
    } else if (c == '{') {
      const size_t close = tmpl.find('}', i + 1);
      if (close == std::string::npos)
        throw Error(fmt::format("data.prompt_template: '{{' at offset {} is not closed (write {{{{ for a literal "
                                "brace)",
                                i));
      const std::string name = tmpl.substr(i + 1, close - i - 1);
      const ojson* v = field_at(rec, name);
      if (!v || v->is_null())
        throw Error(fmt::format("no \"{}\" field, which data.prompt_template uses", name));
      out += field_text(*v);
      i = close;
    } else if (c == '}') {
      throw Error(fmt::format("data.prompt_template: unmatched '}}' at offset {} (write }}}} for a literal brace)", i));
    } else {
      out.push_back(c);
    }
  }
  return out;
}

std::vector<ChatMessage> parse_messages(const ojson& arr, const std::string& field) {
  if (!arr.is_array()) throw Error(fmt::format("\"{}\" must be a list of {{role, content}} messages", field));
  std::vector<ChatMessage> out;
  for (size_t i = 0; i < arr.size(); ++i) {
    const ojson& m = arr[i];
    if (!m.is_object() || !m.contains("role") || !m["role"].is_string())
      throw Error(fmt::format("\"{}\"[{}] must be an object with a \"role\" string", field, i));
    ChatMessage msg;
    for (auto it = m.begin(); it != m.end(); ++it) {
      const std::string& key = it.key();
      if (key == "role") {
        msg.role = it->get<std::string>();
      } else if (key == "content" && it->is_string()) {
        msg.content = it->get<std::string>();
      } else if (key == "reasoning_content" && it->is_string()) {
        msg.reasoning_content = it->get<std::string>();
      } else {
        msg.fields[key] = *it;  // tool_calls, name, a null or list content, ...: the template sees them as given
      }
    }
    out.push_back(std::move(msg));
  }
  if (out.empty()) throw Error(fmt::format("\"{}\" is an empty list", field));
  return out;
}

std::string read_file(const std::string& path) {
  require_not_directory(path, "a JSONL or JSON data file (data.path)");
  std::ifstream f(path, std::ios::binary);
  if (!f) throw Error(fmt::format("data.path: cannot read {}", path));
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

void validate(const DataConfig& cfg, const PromptFormat& format) {
  RLCU_CHECK(format.tokenizer != nullptr, "PromptFormat without a tokenizer");
  if (cfg.format != "auto" && cfg.format != "jsonl" && cfg.format != "json")
    throw Error(fmt::format("data.format: '{}' is not one of auto, jsonl, json", cfg.format));
  if (cfg.max_prompt_tokens < 0) throw Error("data.max_prompt_tokens: expected a number >= 0 (0 = no limit)");
  if (cfg.max_samples < 0) throw Error("data.max_samples: expected a number >= 0 (0 = all)");
  if (cfg.prompt_template.empty() && cfg.prompt_field.empty() && cfg.messages_field.empty())
    throw Error("data: set data.prompt_field, data.messages_field or data.prompt_template");
}

}  // namespace

std::vector<ChatMessage> record_messages(const ojson& record, const DataConfig& cfg) {
  if (!record.is_object()) throw Error("the record is not a JSON object");
  std::vector<ChatMessage> msgs;
  if (!cfg.prompt_template.empty()) {
    msgs.push_back(ChatMessage{"user", fill_template(cfg.prompt_template, record), ""});
  } else {
    const ojson* m = cfg.messages_field.empty() ? nullptr : field_at(record, cfg.messages_field);
    const ojson* p = cfg.prompt_field.empty() ? nullptr : field_at(record, cfg.prompt_field);
    if (m && !m->is_null()) {
      msgs = parse_messages(*m, cfg.messages_field);
    } else if (p && p->is_string()) {
      msgs.push_back(ChatMessage{"user", p->get<std::string>(), ""});
    } else if (p && p->is_array()) {
      msgs = parse_messages(*p, cfg.prompt_field);
    } else if (p) {
      throw Error(fmt::format("\"{}\" must be a string or a list of messages", cfg.prompt_field));
    } else {
      throw Error(fmt::format("no \"{}\" field (data.prompt_field) and no \"{}\" list (data.messages_field)",
                              cfg.prompt_field, cfg.messages_field));
    }
  }
  if (!cfg.system_prompt.empty() && msgs.front().role != "system")
    msgs.insert(msgs.begin(), ChatMessage{"system", cfg.system_prompt, ""});
  return msgs;
}

ojson record_tools(const ojson& record, const DataConfig& cfg) {
  if (cfg.tools_field.empty() || !record.is_object()) return nullptr;
  const ojson* t = field_at(record, cfg.tools_field);
  if (!t || t->is_null()) return nullptr;
  if (!t->is_array()) throw Error(fmt::format("\"{}\" must be a list of tool schemas (data.tools_field)", cfg.tools_field));
  return *t;
}

void build_prompt(std::string& text, std::vector<int32_t>& ids, const std::vector<ChatMessage>& messages,
                  const PromptFormat& format, const ojson& tools) {
  RLCU_CHECK(format.tokenizer != nullptr, "PromptFormat without a tokenizer");
  ChatRenderOptions opts = format.render;
  opts.tools = tools;
  text = format.chat.render(messages, opts);
  EncodeOptions eo;
  eo.allow_special = true;
  // Templates put the BOS they want into the text; raw prompts get the tokenizer's own (e.g. Llama's BOS).
  eo.add_special = format.chat.is_none();
  ids = format.tokenizer->encode(text, eo);
}

PromptFormat make_prompt_format(const Tokenizer& tok, const std::string& chat_template,
                                const std::string& chat_template_file, bool enable_thinking) {
  PromptFormat f;
  f.tokenizer = &tok;
  if (chat_template_file.empty()) {
    f.chat = ChatTemplate::for_tokenizer(tok, chat_template);
  } else {
    if (chat_template != "auto")
      throw Error(fmt::format("model.chat_template_file is set ({}), so model.chat_template must stay auto, not '{}'",
                              chat_template_file, chat_template));
    f.chat = ChatTemplate::from_file(tok, chat_template_file);
  }
  f.render.enable_thinking = enable_thinking;
  return f;
}

PromptDataset PromptDataset::load(const DataConfig& cfg, const PromptFormat& format) {
  if (cfg.path.empty()) throw Error("data.path: no prompt file given");
  return parse(read_file(cfg.path), cfg.path, cfg, format);
}

PromptDataset PromptDataset::parse(const std::string& text, const std::string& source, const DataConfig& cfg,
                                   const PromptFormat& format) {
  validate(cfg, format);
  PromptDataset ds;
  ds.source_ = source;
  std::string fmt_name = cfg.format;
  if (fmt_name == "auto") {
    const size_t first = text.find_first_not_of(" \t\r\n");
    fmt_name = first != std::string::npos && text[first] == '[' ? "json" : "jsonl";
  }
  const bool jsonl = fmt_name == "jsonl";

  auto where = [&](int64_t line) {
    return jsonl ? fmt::format("{}:{}", source, line) : fmt::format("{}: element {}", source, line);
  };
  auto malformed = [&](int64_t line, const std::string& what) {
    if (!cfg.skip_malformed)
      throw Error(fmt::format("{}: {} (set data.skip_malformed to skip such records)", where(line), what));
    if (ds.stats_.malformed < kMalformedWarnings) spdlog::warn("{}: skipped: {}", where(line), what);
    ++ds.stats_.malformed;
  };
  auto add = [&](const ojson& rec, int64_t line) {
    const int64_t index = ds.stats_.records++;
    PromptSample s;
    s.record = index;
    s.line = line;
    try {
      const std::vector<ChatMessage> msgs = record_messages(rec, cfg);
      if (!cfg.answer_field.empty()) {
        const ojson* a = field_at(rec, cfg.answer_field);
        if (!a || a->is_null())
          throw Error(fmt::format("no \"{}\" field (data.answer_field; set it to \"\" when records have no answer)",
                                  cfg.answer_field));
        s.answer = field_text(*a);
      }
      build_prompt(s.text, s.ids, msgs, format, record_tools(rec, cfg));
    } catch (const InternalError&) {
      throw;
    } catch (const Error& e) {
      malformed(line, e.what());
      return;
    }
    if (cfg.max_prompt_tokens > 0 && static_cast<int64_t>(s.ids.size()) > cfg.max_prompt_tokens) {
      ++ds.stats_.too_long;
      return;
    }
    s.fields = json(rec);
    ds.samples_.push_back(std::move(s));
  };
  auto full = [&] { return cfg.max_samples > 0 && ds.size() >= cfg.max_samples; };

  if (jsonl) {
    size_t pos = 0;
    int64_t line = 0;
    while (pos < text.size() && !full()) {
      size_t end = text.find('\n', pos);
      if (end == std::string::npos) end = text.size();
      ++line;
      const std::string_view l(text.data() + pos, end - pos);
      pos = end + 1;
      if (l.find_first_not_of(" \t\r") == std::string_view::npos) continue;
      ojson rec;
      try {
        rec = ojson::parse(l);
      } catch (const ojson::exception& e) {
        ++ds.stats_.records;
        malformed(line, fmt::format("invalid JSON: {}", json_error_text(e)));
        continue;
      }
      add(rec, line);
    }
  } else {
    ojson arr;
    try {
      arr = ojson::parse(text);
    } catch (const ojson::exception& e) {
      throw Error(json_parse_error(source, text, e));
    }
    if (!arr.is_array()) throw Error(fmt::format("{}: expected a JSON array of records (data.format = json)", source));
    for (size_t i = 0; i < arr.size() && !full(); ++i) add(arr[i], static_cast<int64_t>(i) + 1);
  }
  ds.stats_.kept = ds.size();
  spdlog::info("data {}: {} prompts from {} records ({} longer than {} tokens dropped, {} malformed skipped)", source,
               ds.stats_.kept, ds.stats_.records, ds.stats_.too_long, cfg.max_prompt_tokens, ds.stats_.malformed);
  if (ds.samples_.empty())
    throw Error(fmt::format("{}: no usable prompts ({} records, {} longer than data.max_prompt_tokens = {}, {} "
                            "malformed)",
                            source, ds.stats_.records, ds.stats_.too_long, cfg.max_prompt_tokens,
                            ds.stats_.malformed));
  return ds;
}

}  // namespace rlcu
