// Jinja lexer: template text -> tokens, with jinja2's whitespace rules as transformers configures them.
//
//   - Line ends \r\n and \r become \n and one trailing newline is dropped (keep_trailing_newline off), as
//     jinja2 does before lexing.
//   - `{%-`, `{{-`, `{#-` strip all whitespace before the tag; `-%}`, `-}}`, `-#}` all whitespace after it.
//   - lstrip_blocks: spaces and tabs between the start of a line and a `{%` or `{#` are removed (not before `{{`,
//     and not with `{%+`); trim_blocks: the first newline after `%}` or `#}` is removed (not after `+%}`).
//   - Inside a tag, `}}` / `%}` only end it when brackets are balanced (so `{{ {'a': {'b': 1}} }}` works).
//   - String literals decode Python escapes (\n, \t, \\, \', \", \xhh, \uXXXX, \UXXXXXXXX, octal); unknown escapes
//     keep their backslash, as Python's unicode-escape does.
#include <algorithm>

#include "jinja_ast.h"
#include "unicode.h"

namespace rlcu::jinja {

void fail_at(const std::string& name, int line, int col, const std::string& what) {
  throw Error(fmt::format("{}:{}:{}: {}", name, line, col, what));
}

namespace {

bool is_line_break(char32_t c) { return c == '\n' || c == '\r'; }

// jinja2's "\n".join(re.split(r"\r\n|\r|\n", source)) without the last line when it is empty.
std::string normalize_newlines(const std::string& src, const std::string& name) {
  std::string out;
  out.reserve(src.size());
  bool ended_with_break = false;
  for (size_t i = 0; i < src.size();) {
    const size_t start = i;
    char32_t cp;
    if (!tok::utf8_next(src, i, cp)) {
      int line = 1 + static_cast<int>(std::count(src.begin(), src.begin() + static_cast<std::ptrdiff_t>(i), '\n'));
      fail_at(name, line, 1, fmt::format("the template is not valid UTF-8 (byte {})", i));
    }
    if (is_line_break(cp)) {
      if (cp == '\r' && i < src.size() && src[i] == '\n') ++i;
      out.push_back('\n');
      ended_with_break = true;
    } else {
      out.append(src, start, i - start);
      ended_with_break = false;
    }
  }
  if (ended_with_break) out.pop_back();
  return out;
}

bool is_space_at(const std::string& s, size_t i, size_t& next) {
  next = i;
  char32_t cp;
  return tok::utf8_next(s, next, cp) && py_space(cp);
}

size_t skip_spaces(const std::string& s, size_t i) {
  size_t next;
  while (i < s.size() && is_space_at(s, i, next)) i = next;
  return i;
}

std::string rstrip_spaces(const std::string& s) {
  size_t e = s.size();
  while (e > 0) {
    size_t k = e - 1;
    while (k > 0 && (static_cast<unsigned char>(s[k]) & 0xC0) == 0x80) --k;
    size_t next;
    if (!is_space_at(s, k, next) || next != e) break;
    e = k;
  }
  return s.substr(0, e);
}

bool all_spaces(const std::string& s, size_t from) {
  if (from >= s.size()) return false;  // jinja2's \s+ needs at least one character
  return skip_spaces(s, from) == s.size();
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

class Lexer {
 public:
  Lexer(std::string src, const std::string& name) : s_(std::move(src)), name_(name) {
    line_starts_.push_back(0);
    for (size_t i = 0; i < s_.size(); ++i)
      if (s_[i] == '\n') line_starts_.push_back(i + 1);
  }

  std::vector<Token> run() {
    size_t pos = 0;
    bool line_starting = true;
    while (pos < s_.size()) {
      size_t tag = std::string::npos;
      for (size_t p = s_.find('{', pos); p != std::string::npos; p = s_.find('{', p + 1)) {
        if (p + 1 < s_.size() && (s_[p + 1] == '{' || s_[p + 1] == '%' || s_[p + 1] == '#')) {
          tag = p;
          break;
        }
      }
      if (tag == std::string::npos) {
        data(s_.substr(pos), pos);
        break;
      }
      const char kind = s_[tag + 1];
      const char sign = tag + 2 < s_.size() && (s_[tag + 2] == '-' || s_[tag + 2] == '+') ? s_[tag + 2] : 0;
      std::string text = s_.substr(pos, tag - pos);
      if (sign == '-') {
        text = rstrip_spaces(text);
      } else if (sign != '+' && kind != '{') {
        // lstrip_blocks: only whitespace between the line start and the tag.
        const size_t l_pos = text.rfind('\n') == std::string::npos ? 0 : text.rfind('\n') + 1;
        if ((l_pos > 0 || line_starting) && all_spaces(text, l_pos)) text.resize(l_pos);
      }
      data(text, pos);
      size_t p = tag + 2 + (sign ? 1 : 0);
      if (kind == '#') {
        pos = comment(tag, p, line_starting);
      } else if (kind == '%' && raw_begin(p)) {
        pos = raw(tag, p, line_starting);
      } else {
        pos = tag_tokens(kind, tag, p, line_starting);
      }
    }
    Token eof;
    eof.type = Tok::Eof;
    position(s_.size(), eof);
    out_.push_back(eof);
    return std::move(out_);
  }

 private:
  void position(size_t pos, Token& t) const {
    const auto it = std::upper_bound(line_starts_.begin(), line_starts_.end(), pos);
    const size_t line = static_cast<size_t>(it - line_starts_.begin());
    t.line = static_cast<int>(line);
    t.col = static_cast<int>(pos - line_starts_[line - 1]) + 1;
  }
  [[noreturn]] void fail(size_t pos, const std::string& what) const {
    Token t;
    position(pos, t);
    fail_at(name_, t.line, t.col, what);
  }
  void push(Tok type, size_t pos, std::string text = "") {
    Token t;
    t.type = type;
    t.text = std::move(text);
    position(pos, t);
    out_.push_back(std::move(t));
  }
  void data(const std::string& text, size_t pos) {
    if (!text.empty()) push(Tok::Data, pos, text);
  }

  size_t comment(size_t tag, size_t p, bool& line_starting) {
    const size_t k = s_.find("#}", p);
    if (k == std::string::npos) fail(tag, "missing end of comment tag");
    const bool minus = k > p && s_[k - 1] == '-';
    const bool plus = k > p && s_[k - 1] == '+';
    return after_end(k + 2, minus, !plus, line_starting);
  }

  // Consumes what follows an end delimiter: all whitespace after `-`, one newline with trim_blocks.
  size_t after_end(size_t end, bool minus, bool trim, bool& line_starting) {
    const size_t start = end;
    if (minus) {
      end = skip_spaces(s_, end);
    } else if (trim && end < s_.size() && s_[end] == '\n') {
      ++end;
    }
    line_starting = end > start ? s_[end - 1] == '\n' : false;
    return end;
  }

  bool raw_begin(size_t p) const {
    size_t q = skip_spaces(s_, p);
    if (s_.compare(q, 3, "raw") != 0) return false;
    q = skip_spaces(s_, q + 3);
    return s_.compare(q, 2, "%}") == 0 || s_.compare(q, 3, "-%}") == 0;
  }

  // {% raw %}...{% endraw %}: the body is data, whitespace control applies at both tags.
  size_t raw(size_t tag, size_t p, bool& line_starting) {
    size_t q = skip_spaces(s_, skip_spaces(s_, p) + 3);
    size_t body = s_[q] == '-' ? skip_spaces(s_, q + 3) : q + 2;
    for (size_t k = s_.find("{%", body); k != std::string::npos; k = s_.find("{%", k + 1)) {
      size_t r = k + 2;
      const char sign = r < s_.size() && (s_[r] == '-' || s_[r] == '+') ? s_[r] : 0;
      if (sign) ++r;
      r = skip_spaces(s_, r);
      if (s_.compare(r, 6, "endraw") != 0) continue;
      r = skip_spaces(s_, r + 6);
      bool minus = false, plus = false;
      if (s_.compare(r, 3, "-%}") == 0) {
        minus = true;
        r += 3;
      } else if (s_.compare(r, 3, "+%}") == 0) {
        plus = true;
        r += 3;
      } else if (s_.compare(r, 2, "%}") == 0) {
        r += 2;
      } else {
        continue;
      }
      std::string text = s_.substr(body, k - body);
      if (sign == '-') text = rstrip_spaces(text);
      data(text, body);
      return after_end(r, minus, !plus, line_starting);
    }
    fail(tag, "missing end of raw directive");
  }

  size_t tag_tokens(char kind, size_t tag, size_t p, bool& line_starting) {
    const bool block = kind == '%';
    push(block ? Tok::BlockBegin : Tok::VarBegin, tag);
    std::vector<char> balance;
    while (true) {
      p = skip_spaces(s_, p);
      if (p >= s_.size()) fail(tag, block ? "unexpected end of template: the tag is not closed with %}"
                                          : "unexpected end of template: the expression is not closed with }}");
      if (balance.empty()) {
        const char* close = block ? "%}" : "}}";
        if (s_.compare(p, 2, close) == 0) {
          push(block ? Tok::BlockEnd : Tok::VarEnd, p);
          return after_end(p + 2, false, block, line_starting);
        }
        if (s_[p] == '-' && s_.compare(p + 1, 2, close) == 0) {
          push(block ? Tok::BlockEnd : Tok::VarEnd, p);
          return after_end(p + 3, true, block, line_starting);
        }
        if (block && s_.compare(p, 3, "+%}") == 0) {
          push(Tok::BlockEnd, p);
          return after_end(p + 3, false, false, line_starting);
        }
      }
      p = inner_token(p, balance);
    }
  }

  size_t inner_token(size_t p, std::vector<char>& balance) {
    const char c = s_[p];
    if (c >= '0' && c <= '9') return number(p);
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_') {
      size_t q = p;
      while (q < s_.size() && (std::isalnum(static_cast<unsigned char>(s_[q])) || s_[q] == '_')) ++q;
      push(Tok::Name, p, s_.substr(p, q - p));
      return q;
    }
    if (c == '\'' || c == '"') return string_literal(p);
    static const char* const two[] = {"//", "**", "==", "!=", ">=", "<="};
    for (const char* op : two)
      if (s_.compare(p, 2, op) == 0) {
        push(Tok::Op, p, op);
        return p + 2;
      }
    if (std::string("+-/*%~[](){}<>=.:|,;").find(c) == std::string::npos)
      fail(p, fmt::format("unexpected character '{}'", s_.substr(p, tok::utf8_seq_len(static_cast<unsigned char>(c)))));
    if (c == '(' || c == '[' || c == '{') {
      balance.push_back(c == '(' ? ')' : c == '[' ? ']' : '}');
      if (balance.size() > static_cast<size_t>(kMaxParseDepth)) fail(p, "brackets nested too deeply");
    } else if (c == ')' || c == ']' || c == '}') {
      if (balance.empty()) fail(p, fmt::format("unexpected '{}'", c));
      if (balance.back() != c) fail(p, fmt::format("unexpected '{}', expected '{}'", c, balance.back()));
      balance.pop_back();
    }
    push(Tok::Op, p, std::string(1, c));
    return p + 1;
  }

  size_t digits(size_t q) const {  // (\d+_)*\d+
    while (q < s_.size() && (std::isdigit(static_cast<unsigned char>(s_[q])) ||
                             (s_[q] == '_' && q + 1 < s_.size() && std::isdigit(static_cast<unsigned char>(s_[q + 1])))))
      ++q;
    return q;
  }

  size_t number(size_t p) {
    size_t q = digits(p);
    bool is_float = false;
    if (q + 1 < s_.size() && s_[q] == '.' && std::isdigit(static_cast<unsigned char>(s_[q + 1])) &&
        !(p > 0 && s_[p - 1] == '.')) {
      q = digits(q + 1);
      is_float = true;
    }
    if (q < s_.size() && (s_[q] == 'e' || s_[q] == 'E')) {
      size_t r = q + 1;
      if (r < s_.size() && (s_[r] == '+' || s_[r] == '-')) ++r;
      if (r < s_.size() && std::isdigit(static_cast<unsigned char>(s_[r]))) {
        q = digits(r);
        is_float = true;
      }
    }
    std::string text = s_.substr(p, q - p);
    text.erase(std::remove(text.begin(), text.end(), '_'), text.end());
    Token t;
    position(p, t);
    t.text = text;
    if (is_float) {
      t.type = Tok::Float;
      t.fval = std::strtod(text.c_str(), nullptr);
    } else {
      t.type = Tok::Int;
      errno = 0;
      const unsigned long long v = std::strtoull(text.c_str(), nullptr, 10);
      if (errno == ERANGE || v > static_cast<unsigned long long>(INT64_MAX))
        fail(p, fmt::format("integer literal {} is larger than 64 bits", text));
      t.ival = static_cast<int64_t>(v);
    }
    out_.push_back(std::move(t));
    return q;
  }

  size_t string_literal(size_t p) {
    const char quote = s_[p];
    std::string v;
    size_t q = p + 1;
    while (true) {
      if (q >= s_.size()) fail(p, "unterminated string literal");
      const char c = s_[q];
      if (c == quote) break;
      if (c != '\\') {
        v.push_back(c);
        ++q;
        continue;
      }
      if (q + 1 >= s_.size()) fail(p, "unterminated string literal");
      q = escape(q, v);
    }
    push(Tok::String, p, std::move(v));
    return q + 1;
  }

  // Decodes the escape at s_[q] == '\\' into v; returns the position after it.
  size_t escape(size_t q, std::string& v) {
    const char e = s_[q + 1];
    switch (e) {
      case '\\': v.push_back('\\'); return q + 2;
      case '\'': v.push_back('\''); return q + 2;
      case '"': v.push_back('"'); return q + 2;
      case 'a': v.push_back('\a'); return q + 2;
      case 'b': v.push_back('\b'); return q + 2;
      case 'f': v.push_back('\f'); return q + 2;
      case 'n': v.push_back('\n'); return q + 2;
      case 'r': v.push_back('\r'); return q + 2;
      case 't': v.push_back('\t'); return q + 2;
      case 'v': v.push_back('\v'); return q + 2;
      case '\n': return q + 2;  // line continuation
      default: break;
    }
    if (e >= '0' && e <= '7') {
      size_t r = q + 1;
      uint32_t cp = 0;
      for (int k = 0; k < 3 && r < s_.size() && s_[r] >= '0' && s_[r] <= '7'; ++k, ++r) cp = cp * 8 + (s_[r] - '0');
      tok::append_utf8(v, cp);
      return r;
    }
    const int width = e == 'x' ? 2 : e == 'u' ? 4 : e == 'U' ? 8 : 0;
    if (width == 0) {  // unknown escape: kept as written
      v.push_back('\\');
      return q + 1;
    }
    uint32_t cp = 0;
    for (int k = 0; k < width; ++k) {
      const size_t r = q + 2 + static_cast<size_t>(k);
      const int h = r < s_.size() ? hex_value(s_[r]) : -1;
      if (h < 0) fail(q, fmt::format("truncated \\{} escape in a string literal", e));
      cp = cp * 16 + static_cast<uint32_t>(h);
    }
    if (cp > 0x10FFFF) fail(q, "escape outside the Unicode range in a string literal");
    if (cp >= 0xD800 && cp <= 0xDFFF) cp = 0xFFFD;  // a lone surrogate cannot be UTF-8
    tok::append_utf8(v, cp);
    return q + 2 + static_cast<size_t>(width);
  }

  std::string s_;
  const std::string& name_;
  std::vector<size_t> line_starts_;
  std::vector<Token> out_;
};

}  // namespace

std::vector<Token> lex(const std::string& source, const std::string& name) {
  return Lexer(normalize_newlines(source, name), name).run();
}

}  // namespace rlcu::jinja
