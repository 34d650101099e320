// Tokenizer: loading tokenizer.json (+ tokenizer_config.json, chat_template.jinja, config.json,
// generation_config.json), added-token matching, encode/decode and streaming decode. See include/rlcu/tokenizer.h.
//
// Added tokens are matched leftmost-longest: tokens with normalized=false on the raw text, tokens with
// normalized=true on each normalized piece between them. lstrip/rstrip widen a match over neighbouring whitespace,
// single_word rejects a match touching a word character; special tokens are skipped when !allow_special. This is
// `tokenizers`' AddedVocabulary behaviour.
#include "rlcu/json_error.h"
#include "rlcu/tokenizer.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "rlcu/error.h"
#include "components.h"
#include "unicode.h"

namespace rlcu {

using json = nlohmann::json;
using namespace tok;

namespace {

struct AddedToken {
  int32_t id = -1;
  std::string content;
  bool special = false, lstrip = false, rstrip = false, normalized = false, single_word = false;
};

struct Span {
  size_t b, e;
  int32_t token;  // index into the added-token list, -1 for text
};

// Byte trie over added-token strings; finds leftmost-longest matches.
class AddedMatcher {
 public:
  void add(const std::string& s, int32_t token) {
    if (s.empty()) return;
    int node = 0;
    for (char ch : s) {
      const auto c = static_cast<unsigned char>(ch);
      int child = -1;
      for (auto [k, n] : nodes_[node].next)
        if (k == c) child = n;
      if (child < 0) {
        child = static_cast<int>(nodes_.size());
        nodes_[node].next.emplace_back(c, child);
        nodes_.emplace_back();
      }
      node = child;
    }
    if (nodes_[node].token < 0) nodes_[node].token = token;
    first_[static_cast<unsigned char>(s[0])] = true;
    empty_ = false;
  }
  bool empty() const { return empty_; }

  // Splits s into text spans and token spans.
  void split(std::string_view s, const std::vector<AddedToken>& tokens, bool allow_special,
             std::vector<Span>& out) const {
    out.clear();
    size_t start_offset = 0;
    size_t i = 0;
    while (i < s.size()) {
      if (!first_[static_cast<unsigned char>(s[i])]) {
        ++i;
        continue;
      }
      int node = 0, best = -1;
      size_t best_end = 0;
      for (size_t k = i; k < s.size(); ++k) {
        int child = -1;
        for (auto [c, n] : nodes_[node].next)
          if (c == static_cast<unsigned char>(s[k])) child = n;
        if (child < 0) break;
        node = child;
        if (nodes_[node].token >= 0) best = nodes_[node].token, best_end = k + 1;
      }
      if (best < 0) {
        ++i;
        continue;
      }
      const AddedToken& t = tokens[best];
      size_t start = i, stop = best_end;
      i = best_end;
      if (t.special && !allow_special) continue;
      if (t.single_word) {
        const bool start_ok = start == 0 || !ends_with_word(s.substr(0, start));
        const bool stop_ok = stop == s.size() || !starts_with_word(s.substr(stop));
        if (!start_ok || !stop_ok) continue;
      }
      if (t.lstrip) {
        size_t k = start;
        while (k > start_offset) {
          size_t c0 = k - 1;
          while (c0 > 0 && (static_cast<unsigned char>(s[c0]) & 0xC0) == 0x80) --c0;
          size_t j = c0;
          char32_t cp;
          if (!utf8_next(s, j, cp) || !is_whitespace(cp)) break;
          k = c0;
        }
        start = std::max(k, start_offset);
      }
      if (t.rstrip) {
        size_t j = stop;
        char32_t cp;
        while (j < s.size()) {
          size_t jj = j;
          if (!utf8_next(s, jj, cp) || !is_whitespace(cp)) break;
          j = jj;
        }
        stop = j;
        i = stop;
      }
      if (start_offset < start) out.push_back({start_offset, start, -1});
      out.push_back({start, stop, best});
      start_offset = stop;
    }
    if (start_offset < s.size() || out.empty()) out.push_back({start_offset, s.size(), -1});
  }

 private:
  struct Node {
    std::vector<std::pair<unsigned char, int>> next;
    int32_t token = -1;
  };
  std::vector<Node> nodes_ = std::vector<Node>(1);
  bool first_[256] = {};
  bool empty_ = true;

  static bool ends_with_word(std::string_view s) {
    size_t k = s.size();
    if (k == 0) return false;
    --k;
    while (k > 0 && (static_cast<unsigned char>(s[k]) & 0xC0) == 0x80) --k;
    char32_t cp;
    return utf8_next(s, k, cp) && is_word_char(cp);
  }
  static bool starts_with_word(std::string_view s) {
    size_t k = 0;
    char32_t cp;
    return utf8_next(s, k, cp) && is_word_char(cp);
  }
};

std::string read_text_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw Error(fmt::format("cannot read {}", path));
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

bool file_exists(const std::string& path) { return std::ifstream(path).good(); }

json parse_json(const std::string& text, const std::string& source) {
  try {
    return json::parse(text);
  } catch (const json::exception& e) {
    throw Error(json_parse_error(source, text, e));
  }
}

}  // namespace

struct Tokenizer::Impl {
  std::string source;
  StringIdMap vocab;  // model vocabulary and added tokens
  std::vector<std::string> id_to_token;
  std::vector<uint8_t> present;  // id has a token string
  std::vector<uint8_t> special;
  std::vector<std::string> bytes;
  std::vector<AddedToken> added;
  AddedMatcher raw_matcher, normalized_matcher;
  std::unique_ptr<Normalizer> normalizer;
  std::unique_ptr<PreTokenizer> pre_tokenizer;
  std::unique_ptr<BpeModel> model;
  std::unique_ptr<Decoder> decoder;
  std::vector<int32_t> post_prefix, post_suffix;  // what add_special puts around a sequence

  int32_t bos = -1, eos = -1, pad = -1;
  std::vector<int32_t> eos_ids;
  std::string bos_token, eos_token, chat_template;
  std::string chat_template_source;  // where chat_template came from (file, or file:chat_template[name])
  std::vector<std::pair<std::string, std::string>> named_tokens;  // tokenizer_config.json's special token strings

  void encode_into(std::string_view text, bool allow_special, std::vector<int32_t>& ids) const {
    std::vector<Span> spans, inner;
    std::vector<Piece> pieces;
    raw_matcher.split(text, added, allow_special, spans);
    for (const Span& sp : spans) {
      if (sp.token >= 0) {
        ids.push_back(added[sp.token].id);
        continue;
      }
      if (sp.e == sp.b) continue;
      std::string s(text.substr(sp.b, sp.e - sp.b));
      bool at_origin = sp.b == 0;
      if (normalizer) normalizer->apply(s, at_origin);
      if (normalized_matcher.empty()) {
        inner.assign(1, Span{0, s.size(), -1});
      } else {
        normalized_matcher.split(s, added, allow_special, inner);
      }
      for (const Span& in : inner) {
        if (in.token >= 0) {
          ids.push_back(added[in.token].id);
          continue;
        }
        if (in.e == in.b) continue;
        pieces.clear();
        pieces.push_back(Piece{s.substr(in.b, in.e - in.b), at_origin && in.b == 0});
        if (pre_tokenizer) pre_tokenizer->apply(pieces);
        for (const Piece& p : pieces) model->encode_word(p.text, ids);
      }
    }
  }

  std::string decode_tokens(const std::vector<int32_t>& ids, bool skip_special, const DecodeMode& mode) const {
    std::vector<std::string> tokens;
    tokens.reserve(ids.size());
    for (int32_t id : ids) {
      if (id < 0 || static_cast<size_t>(id) >= present.size() || !present[id]) continue;
      if (skip_special && special[id]) continue;
      tokens.push_back(id_to_token[id]);
    }
    std::string out;
    if (decoder) {
      decoder->apply(tokens, mode);
      for (const std::string& t : tokens) out += t;
    } else {
      for (size_t k = 0; k < tokens.size(); ++k) {
        if (k) out.push_back(' ');
        out += tokens[k];
      }
    }
    return mode.raw ? out : utf8_lossy(out);
  }

  int32_t id_of(const std::string& token, const std::string& where) const {
    const int32_t id = vocab.find(token);
    if (id < 0) throw Error(fmt::format("{}: '{}' is not a token of tokenizer.json", where, token));
    return id;
  }
};

namespace {

void parse_added_tokens(Tokenizer::Impl& t, const json& arr) {
  if (arr.is_null()) return;
  if (!arr.is_array()) throw Error("tokenizer.json: added_tokens must be a list");
  for (const json& a : arr) {
    if (!a.is_object() || !a.contains("id") || !a.contains("content") || !a["content"].is_string() ||
        !a["id"].is_number_integer() || a["id"].get<int64_t>() < 0)
      throw Error("tokenizer.json: every added_tokens entry needs a non-negative \"id\" and a \"content\" string");
    AddedToken tok;
    tok.id = a["id"].get<int32_t>();
    tok.content = a["content"].get<std::string>();
    tok.special = a.value("special", false);
    tok.lstrip = a.value("lstrip", false);
    tok.rstrip = a.value("rstrip", false);
    tok.normalized = a.value("normalized", !tok.special);
    tok.single_word = a.value("single_word", false);
    if (tok.content.empty()) throw Error(fmt::format("tokenizer.json: added token {} has empty content", tok.id));
    if (static_cast<size_t>(tok.id) >= t.id_to_token.size()) t.id_to_token.resize(static_cast<size_t>(tok.id) + 1);
    t.id_to_token[tok.id] = tok.content;
    const int32_t existing = t.vocab.find(tok.content);
    if (existing < 0) t.vocab.insert(tok.content, tok.id);
    t.added.push_back(std::move(tok));
  }
}

void special_ids_of(const json& tokens, const std::string& name, std::vector<int32_t>& out) {
  // TemplateProcessing special_tokens: {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}
  if (!tokens.contains(name) || !tokens[name].contains("ids"))
    throw Error(fmt::format("tokenizer.json: post_processor uses special token '{}' without ids", name));
  for (const json& id : tokens[name]["ids"]) out.push_back(id.get<int32_t>());
}

void parse_post_processor(Tokenizer::Impl& t, const json& pp) {
  if (pp.is_null()) return;
  const std::string type = pp.value("type", std::string());
  if (type == "ByteLevel") return;  // offsets only
  if (type == "Sequence") {
    for (const json& p : pp.at("processors")) parse_post_processor(t, p);
    return;
  }
  if (type == "TemplateProcessing") {
    const json& single = pp.at("single");
    bool seen_sequence = false;
    for (const json& item : single) {
      if (item.contains("Sequence")) {
        seen_sequence = true;
      } else if (item.contains("SpecialToken")) {
        special_ids_of(pp.at("special_tokens"), item["SpecialToken"].at("id").get<std::string>(),
                       seen_sequence ? t.post_suffix : t.post_prefix);
      }
    }
    return;
  }
  if (type == "RobertaProcessing" || type == "BertProcessing") {
    t.post_prefix.push_back(pp.at("cls").at(1).get<int32_t>());
    t.post_suffix.push_back(pp.at("sep").at(1).get<int32_t>());
    return;
  }
  throw Error(fmt::format("tokenizer.json: post_processor type '{}' is not supported (supported: ByteLevel, "
                          "TemplateProcessing, RobertaProcessing, BertProcessing, Sequence)",
                          type));
}

// A special token in tokenizer_config.json: "<s>", {"content": "<s>", ...} or null.
std::string config_token(const json& cfg, const char* key) {
  if (!cfg.contains(key) || cfg[key].is_null()) return "";
  const json& v = cfg[key];
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
  throw Error(fmt::format("tokenizer_config.json: {} must be a string or {{\"content\": ...}}", key));
}

// An id or a list of ids in config.json / generation_config.json.
std::vector<int32_t> config_ids(const json& j, const char* key, const std::string& source, int32_t vocab_size) {
  std::vector<int32_t> ids;
  if (!j.contains(key) || j[key].is_null()) return ids;
  auto take = [&](const json& v) {
    if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() >= vocab_size)
      throw Error(fmt::format("{}: {} must be token ids below the vocabulary size {}", source, key, vocab_size));
    ids.push_back(v.get<int32_t>());
  };
  if (j[key].is_array()) {
    for (const json& v : j[key]) take(v);
  } else {
    take(j[key]);
  }
  return ids;
}

std::shared_ptr<Tokenizer::Impl> build(const std::string& tokenizer_json, const std::string& source) {
  auto t = std::make_shared<Tokenizer::Impl>();
  t->source = source;
  const json j = parse_json(tokenizer_json, source);
  if (!j.is_object() || !j.contains("model") || !j["model"].is_object())
    throw Error(fmt::format("{}: no \"model\" object", source));
  try {
    t->model = std::make_unique<BpeModel>(j["model"], t->vocab, t->id_to_token);
    parse_added_tokens(*t, j.value("added_tokens", json()));
    if (j.contains("normalizer") && !j["normalizer"].is_null()) t->normalizer = make_normalizer(j["normalizer"]);
    if (j.contains("pre_tokenizer") && !j["pre_tokenizer"].is_null())
      t->pre_tokenizer = make_pre_tokenizer(j["pre_tokenizer"]);
    if (j.contains("decoder") && !j["decoder"].is_null()) t->decoder = make_decoder(j["decoder"]);
    parse_post_processor(*t, j.value("post_processor", json()));
  } catch (const json::exception& e) {
    throw Error(fmt::format("{}: unexpected structure: {}", source, json_error_text(e)));
  }

  const size_t n = t->id_to_token.size();
  t->present.assign(n, 0);
  t->special.assign(n, 0);
  for (size_t id = 0; id < n; ++id) t->present[id] = !t->id_to_token[id].empty();
  for (size_t k = 0; k < t->added.size(); ++k) {
    const AddedToken& a = t->added[k];
    t->special[a.id] = a.special;
    if (a.normalized) {
      // Matched on normalized text, and (as in `tokenizers`) its token string is the normalized content.
      std::string norm = a.content;
      bool at_origin = true;
      if (t->normalizer) t->normalizer->apply(norm, at_origin);
      t->normalized_matcher.add(norm, static_cast<int32_t>(k));
      t->id_to_token[a.id] = norm;
      t->vocab.insert(norm, a.id);
    } else {
      t->raw_matcher.add(a.content, static_cast<int32_t>(k));
    }
  }
  t->bytes.assign(n, std::string());
  std::vector<int32_t> one(1);
  for (size_t id = 0; id < n; ++id) {
    if (!t->present[id]) continue;
    one[0] = static_cast<int32_t>(id);
    t->bytes[id] = t->decode_tokens(one, false, DecodeMode{true, true});
  }
  return t;
}

void apply_tokenizer_config(Tokenizer::Impl& t, const std::string& text, const std::string& source) {
  const json cfg = parse_json(text, source);
  if (!cfg.is_object()) throw Error(fmt::format("{}: expected a JSON object", source));
  t.bos_token = config_token(cfg, "bos_token");
  t.eos_token = config_token(cfg, "eos_token");
  const std::string pad = config_token(cfg, "pad_token");
  for (const char* key : {"bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"})
    if (const std::string v = config_token(cfg, key); !v.empty()) t.named_tokens.emplace_back(key, v);
  if (!t.bos_token.empty()) t.bos = t.id_of(t.bos_token, source + ": bos_token");
  if (!t.eos_token.empty()) t.eos = t.id_of(t.eos_token, source + ": eos_token");
  if (!pad.empty()) t.pad = t.id_of(pad, source + ": pad_token");
  if (cfg.contains("chat_template")) {
    const json& ct = cfg["chat_template"];
    if (ct.is_string()) {
      t.chat_template = ct.get<std::string>();
      t.chat_template_source = source + ":chat_template";
    } else if (ct.is_array()) {
      // Several named templates: the "default" one is what apply_chat_template uses.
      for (const json& e : ct)
        if (e.is_object() && e.value("name", std::string()) == "default" && e.contains("template") &&
            e["template"].is_string()) {
          t.chat_template = e["template"].get<std::string>();
          t.chat_template_source = source + ":chat_template[default]";
        }
    } else if (!ct.is_null()) {
      throw Error(fmt::format("{}: chat_template must be a string or a list of {{name, template}}", source));
    }
  }
  if (cfg.value("add_bos_token", false) && t.bos >= 0 &&
      std::find(t.post_prefix.begin(), t.post_prefix.end(), t.bos) == t.post_prefix.end())
    t.post_prefix.insert(t.post_prefix.begin(), t.bos);
}

void apply_model_config(Tokenizer::Impl& t, const std::string& path) {
  const json j = parse_json(read_text_file(path), path);
  if (!j.is_object()) throw Error(fmt::format("{}: expected a JSON object", path));
  const auto vocab_size = static_cast<int32_t>(t.id_to_token.size());
  const auto bos = config_ids(j, "bos_token_id", path, vocab_size);
  const auto eos = config_ids(j, "eos_token_id", path, vocab_size);
  const auto pad = config_ids(j, "pad_token_id", path, vocab_size);
  if (t.bos < 0 && !bos.empty()) t.bos = bos[0];
  if (t.eos < 0 && !eos.empty()) t.eos = eos[0];
  if (t.pad < 0 && !pad.empty()) t.pad = pad[0];
  for (int32_t id : eos)
    if (std::find(t.eos_ids.begin(), t.eos_ids.end(), id) == t.eos_ids.end()) t.eos_ids.push_back(id);
}

void finish_special_ids(Tokenizer::Impl& t) {
  if (t.eos >= 0) {
    t.eos_ids.erase(std::remove(t.eos_ids.begin(), t.eos_ids.end(), t.eos), t.eos_ids.end());
    t.eos_ids.insert(t.eos_ids.begin(), t.eos);
  }
  if (t.pad < 0) t.pad = t.eos;
  if (t.bos_token.empty() && t.bos >= 0) t.bos_token = t.id_to_token[t.bos];
  if (t.eos_token.empty() && t.eos >= 0) t.eos_token = t.id_to_token[t.eos];
}

}  // namespace

Tokenizer::Tokenizer(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}

Tokenizer Tokenizer::from_json(const std::string& tokenizer_json, const std::string& tokenizer_config_json,
                               const std::string& source) {
  auto t = build(tokenizer_json, source);
  if (!tokenizer_config_json.empty()) apply_tokenizer_config(*t, tokenizer_config_json, "tokenizer_config.json");
  finish_special_ids(*t);
  return Tokenizer(std::move(t));
}

Tokenizer Tokenizer::load(const std::string& dir) {
  const std::string base = dir.empty() || dir.back() == '/' ? dir : dir + "/";
  const std::string tj = base + "tokenizer.json";
  std::error_code ec;
  if (!std::filesystem::exists(dir, ec)) throw Error(fmt::format("{}: the tokenizer directory does not exist", dir));
  if (!std::filesystem::is_directory(dir, ec)) throw Error(fmt::format("{}: not a directory (expected a tokenizer directory)", dir));
  if (!file_exists(tj))
    throw Error(fmt::format("{}: no tokenizer.json (rlcu reads the Hugging Face fast-tokenizer file)", dir));
  auto t = build(read_text_file(tj), tj);
  t->source = dir;
  const std::string cfg = base + "tokenizer_config.json";
  if (file_exists(cfg)) apply_tokenizer_config(*t, read_text_file(cfg), cfg);
  const std::string jinja = base + "chat_template.jinja";
  if (file_exists(jinja)) {
    t->chat_template = read_text_file(jinja);
    t->chat_template_source = jinja;
  }
  for (const char* name : {"generation_config.json", "config.json"})
    if (file_exists(base + name)) apply_model_config(*t, base + name);
  finish_special_ids(*t);
  spdlog::debug("tokenizer {}: {} tokens, bos {}, eos {}, pad {}", dir, t->id_to_token.size(), t->bos, t->eos, t->pad);
  return Tokenizer(std::move(t));
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, const EncodeOptions& opts) const {
  const size_t bad = find_invalid_utf8(text);
  if (bad != std::string_view::npos)
    throw Error(fmt::format("text to encode is not valid UTF-8 (byte {} of {})", bad, text.size()));
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  if (opts.add_special) ids = impl_->post_prefix;
  impl_->encode_into(text, opts.allow_special, ids);
  if (opts.add_special) ids.insert(ids.end(), impl_->post_suffix.begin(), impl_->post_suffix.end());
  return ids;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids, const DecodeOptions& opts) const {
  return impl_->decode_tokens(ids, opts.skip_special, DecodeMode{});
}

int32_t Tokenizer::vocab_size() const { return static_cast<int32_t>(impl_->id_to_token.size()); }

std::optional<int32_t> Tokenizer::token_to_id(std::string_view token) const {
  const int32_t id = impl_->vocab.find(token);
  if (id < 0) return std::nullopt;
  return id;
}

const std::string& Tokenizer::id_to_token(int32_t id) const {
  if (id < 0 || id >= vocab_size() || !impl_->present[id])
    throw Error(fmt::format("token id {} is not in the vocabulary of {} ({} ids)", id, impl_->source, vocab_size()));
  return impl_->id_to_token[id];
}

const std::string& Tokenizer::token_bytes(int32_t id) const {
  static const std::string none;
  if (id < 0 || id >= vocab_size()) return none;
  return impl_->bytes[id];
}

bool Tokenizer::is_special(int32_t id) const { return id >= 0 && id < vocab_size() && impl_->special[id]; }
int32_t Tokenizer::bos_id() const { return impl_->bos; }
int32_t Tokenizer::eos_id() const { return impl_->eos; }
const std::vector<int32_t>& Tokenizer::eos_ids() const { return impl_->eos_ids; }
int32_t Tokenizer::pad_id() const { return impl_->pad; }
const std::string& Tokenizer::bos_token() const { return impl_->bos_token; }
const std::string& Tokenizer::eos_token() const { return impl_->eos_token; }
const std::string& Tokenizer::chat_template_text() const { return impl_->chat_template; }
const std::string& Tokenizer::chat_template_source() const { return impl_->chat_template_source; }
const std::vector<std::pair<std::string, std::string>>& Tokenizer::named_special_tokens() const {
  return impl_->named_tokens;
}
const std::string& Tokenizer::source() const { return impl_->source; }

// ---- StreamDecoder ---------------------------------------------------------------------------------------------

StreamDecoder::StreamDecoder(const Tokenizer& tokenizer, const DecodeOptions& opts)
    : tok_(&tokenizer), opts_(opts) {}

std::string StreamDecoder::push(int32_t id) {
  // The window ids_ = [context ids already emitted | pending ids]; the text of the pending ids is
  // decode(window) minus decode(context), so decoders' first-token rules see the same start both times.
  if (prefix_.empty() && !ids_.empty()) {
    std::string p = tok_->decode(ids_, opts_);
    if (!ends_with_replacement_char(p)) {
      prefix_ = std::move(p);
      prefix_index_ = ids_.size();
    }
  }
  ids_.push_back(id);
  std::string text = tok_->decode(ids_, opts_);
  if (text.size() <= prefix_.size() || ends_with_replacement_char(text)) return "";
  if (text.compare(0, prefix_.size(), prefix_) != 0)
    throw Error("stream decoding: the decoder rewrote text already emitted; decode the whole sequence instead");
  std::string new_text = text.substr(prefix_.size());
  const size_t new_prefix_index = ids_.size() - prefix_index_;
  ids_.erase(ids_.begin(), ids_.begin() + static_cast<std::ptrdiff_t>(prefix_index_));
  prefix_ = tok_->decode(ids_, opts_);
  prefix_index_ = new_prefix_index;
  return new_text;
}

std::string StreamDecoder::finish() {
  const std::string text = tok_->decode(ids_, opts_);
  std::string rest = text.size() > prefix_.size() && text.compare(0, prefix_.size(), prefix_) == 0
                         ? text.substr(prefix_.size())
                         : std::string();
  ids_.clear();
  prefix_.clear();
  prefix_index_ = 0;
  return rest;
}

}  // namespace rlcu
