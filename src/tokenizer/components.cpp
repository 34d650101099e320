// tokenizer.json components: PCRE2 regex wrapper, normalizers, pre-tokenizers and decoders, with the semantics of
// `tokenizers` (see components.h). Split behaviours on the match/non-match segments of a piece:
//   Removed: drop matches · Isolated: every segment apart · MergedWithPrevious: a match joins the segment before it
//   MergedWithNext: a match joins the segment after it · Contiguous: runs of matches/non-matches joined
// Empty pieces are dropped after every split.
#include "components.h"

#include <algorithm>
#include <cstring>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "rlcu/error.h"
#include "unicode.h"

namespace rlcu::tok {

namespace {

std::string type_of(const json& j, const char* what) {
  if (!j.is_object() || !j.contains("type") || !j["type"].is_string())
    throw Error(fmt::format("tokenizer.json: a {} entry has no \"type\" string", what));
  return j["type"].get<std::string>();
}

template <class T>
T get_or(const json& j, const char* key, T def) {
  if (!j.contains(key) || j[key].is_null()) return def;
  return j[key].get<T>();
}

// `where` is a C string: gcc 13 warns about a possibly dangling reference when a temporary std::string is passed.
const json& require(const json& j, const char* key, const char* where) {
  if (!j.contains(key)) throw Error(fmt::format("tokenizer.json: {} has no \"{}\"", where, key));
  return j[key];
}

}  // namespace

// ---- Regex -------------------------------------------------------------------------------------------------

Regex::Regex(const std::string& pattern, const std::string& where) {
  int err = 0;
  PCRE2_SIZE offset = 0;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                   PCRE2_UTF | PCRE2_UCP, &err, &offset, nullptr);
  if (!code) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(err, msg, sizeof msg);
    throw Error(fmt::format("tokenizer.json: {}: regex /{}/ does not compile at offset {}: {}", where, pattern, offset,
                            reinterpret_cast<const char*>(msg)));
  }
  // The JIT is an optimisation only: when it is unavailable pcre2_match interprets the pattern.
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
  code_ = code;
}

Regex::~Regex() { pcre2_code_free(static_cast<pcre2_code*>(code_)); }

void Regex::find_all(std::string_view s, std::vector<std::pair<size_t, size_t>>& out) const {
  auto* code = static_cast<pcre2_code*>(code_);
  pcre2_match_data* md = pcre2_match_data_create_from_pattern(code, nullptr);
  RLCU_CHECK(md != nullptr, "out of memory for PCRE2 match data");
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(s.empty() ? "" : s.data());
  size_t start = 0;
  size_t last_match_end = std::string_view::npos;
  while (start <= s.size()) {
    int rc = pcre2_match(code, subject, s.size(), start, PCRE2_NO_UTF_CHECK, md, nullptr);
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT)
      rc = pcre2_match(code, subject, s.size(), start, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, md, nullptr);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(rc, msg, sizeof msg);
      pcre2_match_data_free(md);
      throw Error(fmt::format("tokenizer regex failed on a {}-byte piece: {}", s.size(),
                              reinterpret_cast<const char*>(msg)));
    }
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
    const size_t b = ov[0], e = ov[1];
    if (b == e) {
      // Like Oniguruma's iterator: an empty match right after the previous match is not reported, and the search
      // resumes one character further.
      if (e != last_match_end) out.emplace_back(b, e);
      last_match_end = e;
      if (e >= s.size()) break;
      start = e + utf8_seq_len(static_cast<unsigned char>(s[e]));
    } else {
      out.emplace_back(b, e);
      last_match_end = e;
      start = e;
    }
  }
  pcre2_match_data_free(md);
}

Pattern::Pattern(const json& j, const std::string& where) {
  if (j.is_object() && j.contains("String") && j["String"].is_string()) {
    literal_ = j["String"].get<std::string>();
    if (literal_.empty()) throw Error(fmt::format("tokenizer.json: {}: empty String pattern", where));
  } else if (j.is_object() && j.contains("Regex") && j["Regex"].is_string()) {
    regex_ = std::make_unique<Regex>(j["Regex"].get<std::string>(), where);
  } else {
    throw Error(fmt::format("tokenizer.json: {}: pattern must be {{\"String\": ...}} or {{\"Regex\": ...}}", where));
  }
}

void Pattern::find_all(std::string_view s, std::vector<std::pair<size_t, size_t>>& out) const {
  if (regex_) return regex_->find_all(s, out);
  size_t pos = 0;
  while ((pos = s.find(literal_, pos)) != std::string_view::npos) {
    out.emplace_back(pos, pos + literal_.size());
    pos += literal_.size();
  }
}

// ---- ByteLevel alphabet --------------------------------------------------------------------------------------

namespace {
struct ByteAlphabet {
  std::string chars[256];
  int16_t decode[512];  // code point -> byte; every alphabet code point is < 512
  ByteAlphabet() {
    std::fill(std::begin(decode), std::end(decode), int16_t(-1));
    int n = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      const char32_t cp = printable ? char32_t(b) : char32_t(256 + n++);
      append_utf8(chars[b], cp);
      decode[cp] = int16_t(b);
    }
  }
};
const ByteAlphabet& alphabet() {
  static const ByteAlphabet a;
  return a;
}
}  // namespace

const std::string* byte_level_alphabet() { return alphabet().chars; }

int byte_level_decode(char32_t cp) { return cp < 512 ? alphabet().decode[cp] : -1; }

namespace {

std::string byte_level_encode(std::string_view s) {
  const std::string* chars = byte_level_alphabet();
  std::string out;
  out.reserve(s.size() * 2);
  for (char c : s) out += chars[static_cast<unsigned char>(c)];
  return out;
}

// ---- Normalizers ---------------------------------------------------------------------------------------------

class UnicodeNormalizer : public Normalizer {
 public:
  explicit UnicodeNormalizer(NormForm f) : form_(f) {}
  void apply(std::string& s, bool&) const override { s = unicode_normalize(s, form_); }

 private:
  NormForm form_;
};

class LowercaseNormalizer : public Normalizer {
 public:
  void apply(std::string& s, bool&) const override { s = unicode_lowercase(s); }
};

class StripAccentsNormalizer : public Normalizer {
 public:
  void apply(std::string& s, bool& at_origin) const override {
    size_t i = 0;
    char32_t cp;
    if (utf8_next(s, i, cp) && strip_combining_marks(s.substr(0, i)).empty()) at_origin = false;
    s = strip_combining_marks(s);
  }
};

class StripNormalizer : public Normalizer {
 public:
  StripNormalizer(bool left, bool right) : left_(left), right_(right) {}
  void apply(std::string& s, bool& at_origin) const override {
    size_t b = 0, e = s.size();
    if (left_) {
      size_t i = 0;
      char32_t cp;
      while (i < e) {
        size_t j = i;
        if (!utf8_next(s, j, cp) || !is_whitespace(cp)) break;
        i = j;
      }
      b = i;
    }
    if (right_) {
      while (e > b) {
        size_t k = e - 1;
        while (k > b && (static_cast<unsigned char>(s[k]) & 0xC0) == 0x80) --k;
        size_t j = k;
        char32_t cp;
        if (!utf8_next(s, j, cp) || !is_whitespace(cp)) break;
        e = k;
      }
    }
    if (b > 0) at_origin = false;
    s = s.substr(b, e - b);
  }

 private:
  bool left_, right_;
};

std::string replace_all(std::string_view s, const Pattern& pattern, const std::string& content) {
  std::vector<std::pair<size_t, size_t>> m;
  pattern.find_all(s, m);
  if (m.empty()) return std::string(s);
  std::string out;
  size_t prev = 0;
  for (auto [b, e] : m) {
    out.append(s.data() + prev, b - prev);
    out += content;
    prev = e;
  }
  out.append(s.data() + prev, s.size() - prev);
  return out;
}

class ReplaceNormalizer : public Normalizer {
 public:
  explicit ReplaceNormalizer(const json& j)
      : pattern_(require(j, "pattern", "Replace normalizer"), "Replace normalizer"),
        content_(require(j, "content", "Replace normalizer").get<std::string>()) {}
  void apply(std::string& s, bool& at_origin) const override {
    std::vector<std::pair<size_t, size_t>> m;
    pattern_.find_all(s, m);
    if (!m.empty() && m[0].first == 0 && m[0].second > 0 && content_.empty()) at_origin = false;
    s = replace_all(s, pattern_, content_);
  }

 private:
  Pattern pattern_;
  std::string content_;
};

class PrependNormalizer : public Normalizer {
 public:
  explicit PrependNormalizer(std::string p) : prepend_(std::move(p)) {}
  void apply(std::string& s, bool&) const override {
    if (!s.empty()) s.insert(0, prepend_);
  }

 private:
  std::string prepend_;
};

class ByteLevelNormalizer : public Normalizer {
 public:
  void apply(std::string& s, bool&) const override { s = byte_level_encode(s); }
};

class SequenceNormalizer : public Normalizer {
 public:
  explicit SequenceNormalizer(const json& j) {
    for (const json& n : require(j, "normalizers", "Sequence normalizer")) items_.push_back(make_normalizer(n));
  }
  void apply(std::string& s, bool& at_origin) const override {
    for (const auto& n : items_) n->apply(s, at_origin);
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> items_;
};

// ---- Pre-tokenizers --------------------------------------------------------------------------------------------

enum class Behavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };

Behavior parse_behavior(const json& j, const char* where) {
  const std::string b = get_or<std::string>(j, "behavior", "Isolated");
  if (b == "Removed") return Behavior::Removed;
  if (b == "Isolated") return Behavior::Isolated;
  if (b == "MergedWithPrevious") return Behavior::MergedWithPrevious;
  if (b == "MergedWithNext") return Behavior::MergedWithNext;
  if (b == "Contiguous") return Behavior::Contiguous;
  throw Error(fmt::format("tokenizer.json: {}: behavior '{}' is not one of Removed, Isolated, MergedWithPrevious, "
                          "MergedWithNext, Contiguous",
                          where, b));
}

struct Segment {
  size_t b, e;
  bool match;
};

// Splits one piece at the given matches (sorted, non-overlapping) according to the behaviour; appends to out.
void split_piece(const Piece& p, const std::vector<std::pair<size_t, size_t>>& matches, Behavior behavior,
                 bool invert, std::vector<Piece>& out) {
  std::vector<Segment> segs;
  segs.reserve(matches.size() * 2 + 1);
  size_t prev = 0;
  for (auto [b, e] : matches) {
    if (prev != b) segs.push_back({prev, b, invert});
    segs.push_back({b, e, !invert});
    prev = e;
  }
  if (prev != p.text.size()) segs.push_back({prev, p.text.size(), invert});

  std::vector<Segment> kept;
  kept.reserve(segs.size());
  switch (behavior) {
    case Behavior::Removed:
      for (const Segment& s : segs)
        if (!s.match) kept.push_back(s);
      break;
    case Behavior::Isolated:
      kept = segs;
      break;
    case Behavior::MergedWithPrevious: {
      bool previous_match = false;
      for (const Segment& s : segs) {
        if (s.match && !previous_match && !kept.empty())
          kept.back().e = s.e;
        else
          kept.push_back(s);
        previous_match = s.match;
      }
      break;
    }
    case Behavior::MergedWithNext: {
      bool previous_match = false;
      for (auto it = segs.rbegin(); it != segs.rend(); ++it) {
        if (it->match && !previous_match && !kept.empty())
          kept.back().b = it->b;
        else
          kept.push_back(*it);
        previous_match = it->match;
      }
      std::reverse(kept.begin(), kept.end());
      break;
    }
    case Behavior::Contiguous: {
      bool previous_match = false;
      for (const Segment& s : segs) {
        if (s.match == previous_match && !kept.empty())
          kept.back().e = s.e;
        else
          kept.push_back(s);
        previous_match = s.match;
      }
      break;
    }
  }
  for (const Segment& s : kept)
    if (s.e > s.b) out.push_back(Piece{p.text.substr(s.b, s.e - s.b), p.at_start && s.b == 0});
}

template <class Pred>
void char_matches(std::string_view s, Pred pred, std::vector<std::pair<size_t, size_t>>& out) {
  size_t i = 0;
  char32_t cp;
  while (i < s.size()) {
    const size_t b = i;
    RLCU_CHECK(utf8_next(s, i, cp), "invalid UTF-8 reached a pre-tokenizer");
    if (pred(cp)) out.emplace_back(b, i);
  }
}

// Pre-tokenizers that split each piece by matches of something.
class SplittingPreTokenizer : public PreTokenizer {
 public:
  void apply(std::vector<Piece>& pieces) const override {
    std::vector<Piece> out;
    out.reserve(pieces.size() * 4);
    std::vector<std::pair<size_t, size_t>> m;
    for (Piece& p : pieces) {
      m.clear();
      matches(p.text, m);
      if (m.empty() && !invert_) {
        if (!p.text.empty()) out.push_back(std::move(p));
        continue;
      }
      split_piece(p, m, behavior_, invert_, out);
    }
    pieces.swap(out);
  }

 protected:
  virtual void matches(std::string_view s, std::vector<std::pair<size_t, size_t>>& out) const = 0;
  Behavior behavior_ = Behavior::Isolated;
  bool invert_ = false;
};

class SplitPreTokenizer : public SplittingPreTokenizer {
 public:
  explicit SplitPreTokenizer(const json& j) : pattern_(require(j, "pattern", "Split pre-tokenizer"), "Split") {
    behavior_ = parse_behavior(j, "Split pre-tokenizer");
    invert_ = get_or<bool>(j, "invert", false);
  }

 private:
  void matches(std::string_view s, std::vector<std::pair<size_t, size_t>>& out) const override {
    pattern_.find_all(s, out);
  }
  Pattern pattern_;
};

class DigitsPreTokenizer : public SplittingPreTokenizer {
 public:
  explicit DigitsPreTokenizer(const json& j) {
    behavior_ = get_or<bool>(j, "individual_digits", false) ? Behavior::Isolated : Behavior::Contiguous;
  }

 private:
  void matches(std::string_view s, std::vector<std::pair<size_t, size_t>>& out) const override {
    char_matches(s, is_numeric, out);
  }
};

class PunctuationPreTokenizer : public SplittingPreTokenizer {
 public:
  explicit PunctuationPreTokenizer(const json& j) { behavior_ = parse_behavior(j, "Punctuation pre-tokenizer"); }

 private:
  void matches(std::string_view s, std::vector<std::pair<size_t, size_t>>& out) const override {
    char_matches(s, is_punctuation, out);
  }
};

class WhitespaceSplitPreTokenizer : public SplittingPreTokenizer {
 public:
  WhitespaceSplitPreTokenizer() { behavior_ = Behavior::Removed; }

 private:
  void matches(std::string_view s, std::vector<std::pair<size_t, size_t>>& out) const override {
    char_matches(s, is_whitespace, out);
  }
};

class CharDelimiterPreTokenizer : public SplittingPreTokenizer {
 public:
  explicit CharDelimiterPreTokenizer(const json& j) {
    const std::string d = require(j, "delimiter", "CharDelimiterSplit").get<std::string>();
    size_t i = 0;
    if (!utf8_next(d, i, delimiter_) || i != d.size())
      throw Error("tokenizer.json: CharDelimiterSplit: delimiter must be one character");
    behavior_ = Behavior::Removed;
  }

 private:
  void matches(std::string_view s, std::vector<std::pair<size_t, size_t>>& out) const override {
    char_matches(s, [this](char32_t c) { return c == delimiter_; }, out);
  }
  char32_t delimiter_ = 0;
};

// Keeps the matches of \w+|[^\w\s]+ (Whitespace pre-tokenizer: words and runs of punctuation).
class WhitespacePreTokenizer : public SplittingPreTokenizer {
 public:
  WhitespacePreTokenizer() : re_("\\w+|[^\\w\\s]+", "Whitespace pre-tokenizer") {
    behavior_ = Behavior::Removed;
    invert_ = true;
  }

 private:
  void matches(std::string_view s, std::vector<std::pair<size_t, size_t>>& out) const override {
    re_.find_all(s, out);
  }
  Regex re_;
};

constexpr const char* kGpt2Pattern =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

class ByteLevelPreTokenizer : public PreTokenizer {
 public:
  explicit ByteLevelPreTokenizer(const json& j)
      : add_prefix_space_(get_or<bool>(j, "add_prefix_space", true)), use_regex_(get_or<bool>(j, "use_regex", true)) {
    if (use_regex_) re_ = std::make_unique<Regex>(kGpt2Pattern, "ByteLevel pre-tokenizer");
  }
  void apply(std::vector<Piece>& pieces) const override {
    std::vector<Piece> split;
    std::vector<std::pair<size_t, size_t>> m;
    split.reserve(pieces.size());
    for (Piece& p : pieces) {
      if (add_prefix_space_ && (p.text.empty() || p.text[0] != ' ')) p.text.insert(0, " ");
      if (!use_regex_) {
        split.push_back(std::move(p));
        continue;
      }
      m.clear();
      re_->find_all(p.text, m);
      split_piece(p, m, Behavior::Isolated, false, split);
    }
    for (Piece& p : split) p.text = byte_level_encode(p.text);
    pieces.swap(split);
  }

 private:
  bool add_prefix_space_, use_regex_;
  std::unique_ptr<Regex> re_;
};

enum class PrependScheme { Always, Never, First };

PrependScheme parse_prepend_scheme(const json& j, const char* where) {
  if (j.contains("prepend_scheme") && !j["prepend_scheme"].is_null()) {
    const std::string s = j["prepend_scheme"].get<std::string>();
    if (s == "always") return PrependScheme::Always;
    if (s == "never") return PrependScheme::Never;
    if (s == "first") return PrependScheme::First;
    throw Error(fmt::format("tokenizer.json: {}: prepend_scheme '{}' is not one of always, never, first", where, s));
  }
  return get_or<bool>(j, "add_prefix_space", true) ? PrependScheme::Always : PrependScheme::Never;
}

std::string replacement_of(const json& j, const char* where, char32_t* cp_out) {
  const std::string r = get_or<std::string>(j, "replacement", "\xE2\x96\x81");
  size_t i = 0;
  char32_t cp;
  if (!utf8_next(r, i, cp) || i != r.size())
    throw Error(fmt::format("tokenizer.json: {}: replacement must be one character", where));
  if (cp_out) *cp_out = cp;
  return r;
}

class MetaspacePreTokenizer : public PreTokenizer {
 public:
  explicit MetaspacePreTokenizer(const json& j)
      : replacement_(replacement_of(j, "Metaspace pre-tokenizer", nullptr)),
        scheme_(parse_prepend_scheme(j, "Metaspace pre-tokenizer")),
        split_(get_or<bool>(j, "split", true)) {}
  void apply(std::vector<Piece>& pieces) const override {
    std::vector<Piece> out;
    std::vector<std::pair<size_t, size_t>> m;
    out.reserve(pieces.size() * 4);
    for (Piece& p : pieces) {
      std::string t;
      t.reserve(p.text.size() + 3);
      for (char c : p.text) {
        if (c == ' ')
          t += replacement_;
        else
          t.push_back(c);
      }
      const bool starts = t.compare(0, replacement_.size(), replacement_) == 0;
      if (!starts && (scheme_ == PrependScheme::Always || (scheme_ == PrependScheme::First && p.at_start)))
        t.insert(0, replacement_);
      Piece q{std::move(t), p.at_start};
      if (!split_) {
        if (!q.text.empty()) out.push_back(std::move(q));
        continue;
      }
      m.clear();
      size_t pos = 0;
      while ((pos = q.text.find(replacement_, pos)) != std::string::npos) {
        m.emplace_back(pos, pos + replacement_.size());
        pos += replacement_.size();
      }
      split_piece(q, m, Behavior::MergedWithNext, false, out);
    }
    pieces.swap(out);
  }

 private:
  std::string replacement_;
  PrependScheme scheme_;
  bool split_;
};

class SequencePreTokenizer : public PreTokenizer {
 public:
  explicit SequencePreTokenizer(const json& j) {
    for (const json& p : require(j, "pretokenizers", "Sequence pre-tokenizer")) items_.push_back(make_pre_tokenizer(p));
  }
  void apply(std::vector<Piece>& pieces) const override {
    for (const auto& p : items_) p->apply(pieces);
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> items_;
};

// ---- Decoders --------------------------------------------------------------------------------------------------

class ByteLevelDecoder : public Decoder {
 public:
  void apply(std::vector<std::string>& tokens, const DecodeMode& mode) const override {
    std::string bytes;
    for (const std::string& t : tokens) {
      const size_t mark = bytes.size();
      size_t i = 0;
      char32_t cp;
      bool all_mapped = true;
      while (i < t.size()) {
        int b = -1;
        if (utf8_next(t, i, cp)) b = byte_level_decode(cp);
        if (b < 0) {
          all_mapped = false;
          break;
        }
        bytes.push_back(static_cast<char>(b));
      }
      if (!all_mapped) {
        // A token outside the byte alphabet (e.g. an added token) stands for its own UTF-8 text.
        bytes.resize(mark);
        bytes += t;
      }
    }
    tokens.assign(1, mode.raw ? std::move(bytes) : utf8_lossy(bytes));
  }
};

class MetaspaceDecoder : public Decoder {
 public:
  explicit MetaspaceDecoder(const json& j)
      : replacement_(replacement_of(j, "Metaspace decoder", nullptr)),
        scheme_(parse_prepend_scheme(j, "Metaspace decoder")) {}
  void apply(std::vector<std::string>& tokens, const DecodeMode& mode) const override {
    for (size_t i = 0; i < tokens.size(); ++i) {
      const bool drop = i == 0 && scheme_ != PrependScheme::Never && !mode.mid_sequence;
      std::string out;
      const std::string& t = tokens[i];
      size_t pos = 0, prev = 0;
      while ((pos = t.find(replacement_, prev)) != std::string::npos) {
        out.append(t, prev, pos - prev);
        if (!drop) out.push_back(' ');
        prev = pos + replacement_.size();
      }
      out.append(t, prev, std::string::npos);
      tokens[i] = std::move(out);
    }
  }

 private:
  std::string replacement_;
  PrependScheme scheme_;
};

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

class ByteFallbackDecoder : public Decoder {
 public:
  void apply(std::vector<std::string>& tokens, const DecodeMode& mode) const override {
    std::vector<std::string> out;
    out.reserve(tokens.size());
    std::string pending;
    auto flush = [&] {
      if (pending.empty()) return;
      if (mode.raw || find_invalid_utf8(pending) == std::string_view::npos) {
        out.push_back(pending);
      } else {
        for (size_t k = 0; k < pending.size(); ++k) out.emplace_back("\xEF\xBF\xBD");
      }
      pending.clear();
    };
    for (std::string& t : tokens) {
      int hi, lo;
      if (t.size() == 6 && t.compare(0, 3, "<0x") == 0 && t[5] == '>' && (hi = hex_value(t[3])) >= 0 &&
          (lo = hex_value(t[4])) >= 0) {
        pending.push_back(static_cast<char>(hi * 16 + lo));
      } else {
        flush();
        out.push_back(std::move(t));
      }
    }
    flush();
    tokens.swap(out);
  }
};

class FuseDecoder : public Decoder {
 public:
  void apply(std::vector<std::string>& tokens, const DecodeMode&) const override {
    std::string all;
    for (const std::string& t : tokens) all += t;
    tokens.assign(1, std::move(all));
  }
};

class StripDecoder : public Decoder {
 public:
  explicit StripDecoder(const json& j)
      : content_(require(j, "content", "Strip decoder").get<std::string>()),
        start_(get_or<size_t>(j, "start", 0)),
        stop_(get_or<size_t>(j, "stop", 0)) {}
  void apply(std::vector<std::string>& tokens, const DecodeMode& mode) const override {
    if (mode.mid_sequence) return;
    for (std::string& t : tokens) {
      size_t b = 0, e = t.size();
      for (size_t k = 0; k < start_ && t.compare(b, content_.size(), content_) == 0 && b < e; ++k)
        b += content_.size();
      for (size_t k = 0; k < stop_ && e >= b + content_.size() &&
                         t.compare(e - content_.size(), content_.size(), content_) == 0;
           ++k)
        e -= content_.size();
      t = t.substr(b, e - b);
    }
  }

 private:
  std::string content_;
  size_t start_, stop_;
};

class ReplaceDecoder : public Decoder {
 public:
  explicit ReplaceDecoder(const json& j)
      : pattern_(require(j, "pattern", "Replace decoder"), "Replace decoder"),
        content_(require(j, "content", "Replace decoder").get<std::string>()) {}
  void apply(std::vector<std::string>& tokens, const DecodeMode&) const override {
    for (std::string& t : tokens) t = replace_all(t, pattern_, content_);
  }

 private:
  Pattern pattern_;
  std::string content_;
};

class BpeDecoder : public Decoder {
 public:
  explicit BpeDecoder(const json& j) : suffix_(get_or<std::string>(j, "suffix", "</w>")) {}
  void apply(std::vector<std::string>& tokens, const DecodeMode&) const override {
    for (size_t i = 0; i < tokens.size(); ++i) {
      std::string& t = tokens[i];
      const std::string with = i + 1 == tokens.size() ? "" : " ";
      std::string out;
      size_t pos = 0, prev = 0;
      while (!suffix_.empty() && (pos = t.find(suffix_, prev)) != std::string::npos) {
        out.append(t, prev, pos - prev);
        out += with;
        prev = pos + suffix_.size();
      }
      out.append(t, prev, std::string::npos);
      t = std::move(out);
    }
  }

 private:
  std::string suffix_;
};

class SequenceDecoder : public Decoder {
 public:
  explicit SequenceDecoder(const json& j) {
    for (const json& d : require(j, "decoders", "Sequence decoder")) items_.push_back(make_decoder(d));
  }
  void apply(std::vector<std::string>& tokens, const DecodeMode& mode) const override {
    for (const auto& d : items_) d->apply(tokens, mode);
  }

 private:
  std::vector<std::unique_ptr<Decoder>> items_;
};

}  // namespace

std::unique_ptr<Normalizer> make_normalizer(const json& j) {
  const std::string t = type_of(j, "normalizer");
  if (t == "NFC") return std::make_unique<UnicodeNormalizer>(NormForm::NFC);
  if (t == "NFD") return std::make_unique<UnicodeNormalizer>(NormForm::NFD);
  if (t == "NFKC") return std::make_unique<UnicodeNormalizer>(NormForm::NFKC);
  if (t == "NFKD") return std::make_unique<UnicodeNormalizer>(NormForm::NFKD);
  if (t == "Lowercase") return std::make_unique<LowercaseNormalizer>();
  if (t == "StripAccents") return std::make_unique<StripAccentsNormalizer>();
  if (t == "Strip") return std::make_unique<StripNormalizer>(get_or<bool>(j, "strip_left", true),
                                                            get_or<bool>(j, "strip_right", true));
  if (t == "Replace") return std::make_unique<ReplaceNormalizer>(j);
  if (t == "Prepend") return std::make_unique<PrependNormalizer>(require(j, "prepend", "Prepend").get<std::string>());
  if (t == "ByteLevel") return std::make_unique<ByteLevelNormalizer>();
  if (t == "Sequence") return std::make_unique<SequenceNormalizer>(j);
  throw Error(fmt::format("tokenizer.json: normalizer type '{}' is not supported (supported: NFC, NFD, NFKC, NFKD, "
                          "Lowercase, Strip, StripAccents, Replace, Prepend, ByteLevel, Sequence)",
                          t));
}

std::unique_ptr<PreTokenizer> make_pre_tokenizer(const json& j) {
  const std::string t = type_of(j, "pre_tokenizer");
  if (t == "Split") return std::make_unique<SplitPreTokenizer>(j);
  if (t == "ByteLevel") return std::make_unique<ByteLevelPreTokenizer>(j);
  if (t == "Metaspace") return std::make_unique<MetaspacePreTokenizer>(j);
  if (t == "Digits") return std::make_unique<DigitsPreTokenizer>(j);
  if (t == "Punctuation") return std::make_unique<PunctuationPreTokenizer>(j);
  if (t == "Whitespace") return std::make_unique<WhitespacePreTokenizer>();
  if (t == "WhitespaceSplit") return std::make_unique<WhitespaceSplitPreTokenizer>();
  if (t == "CharDelimiterSplit") return std::make_unique<CharDelimiterPreTokenizer>(j);
  if (t == "Sequence") return std::make_unique<SequencePreTokenizer>(j);
  throw Error(fmt::format("tokenizer.json: pre_tokenizer type '{}' is not supported (supported: Split, ByteLevel, "
                          "Metaspace, Digits, Punctuation, Whitespace, WhitespaceSplit, CharDelimiterSplit, Sequence)",
                          t));
}

std::unique_ptr<Decoder> make_decoder(const json& j) {
  const std::string t = type_of(j, "decoder");
  if (t == "ByteLevel") return std::make_unique<ByteLevelDecoder>();
  if (t == "Metaspace") return std::make_unique<MetaspaceDecoder>(j);
  if (t == "ByteFallback") return std::make_unique<ByteFallbackDecoder>();
  if (t == "Fuse") return std::make_unique<FuseDecoder>();
  if (t == "Strip") return std::make_unique<StripDecoder>(j);
  if (t == "Replace") return std::make_unique<ReplaceDecoder>(j);
  if (t == "BPEDecoder") return std::make_unique<BpeDecoder>(j);
  if (t == "Sequence") return std::make_unique<SequenceDecoder>(j);
  throw Error(fmt::format("tokenizer.json: decoder type '{}' is not supported (supported: ByteLevel, Metaspace, "
                          "ByteFallback, Fuse, Strip, Replace, BPEDecoder, Sequence)",
                          t));
}

}  // namespace rlcu::tok
