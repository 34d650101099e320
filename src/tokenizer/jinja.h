// Jinja interpreter for chat templates: the subset of Jinja2 that Hugging Face chat templates use, with the
// semantics transformers' apply_chat_template gives them (jinja2 ImmutableSandboxedEnvironment, trim_blocks and
// lstrip_blocks on, the loopcontrols extension, transformers' own tojson/raise_exception/strftime_now and its
// {% generation %} tag). Private to the tokenizer module; include/rlcu/chat.h is the public face.
//
//   source ─► lexer (jinja_lexer.cpp: data / tag tokens, whitespace control) ─► parser (jinja_parser.cpp: AST in
//   jinja_ast.h) ─► evaluator (jinja_eval.cpp: statements, expressions, scopes) with the builtins
//   (jinja_builtins.cpp: filters, tests, methods of str/dict/list, globals) over Value (jinja_value.cpp).
//
// Values follow Python's data model as Jinja exposes it: undefined (prints as "", is falsy, iterates as empty;
// attribute access, arithmetic and calls on it raise "'x' is undefined"), None, bool, int (64-bit; overflow is an
// error where Python would grow), float (printed as Python's repr), str (UTF-8; length, indexing and slicing count
// code points), list, tuple, dict (insertion-ordered, string keys), namespace (the one mutable object) and
// callables. str() and repr() print like Python; tojson is json.dumps(ensure_ascii=False, sort_keys=False).
//
// Errors are rlcu::Error "<template name>:<line>:<column>: <what>"; raise_exception(msg) is an rlcu::Error whose
// message is msg. Hostile templates are bounded: nesting depth while parsing and evaluating, evaluation steps,
// string sizes, range() length; exceeding a bound is an error, never a hang or a stack overflow.
#pragma once

#include <cstdint>
#include <ctime>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "rlcu/error.h"

namespace rlcu::jinja {

// Bounds that keep a hostile template from hanging or exhausting memory.
inline constexpr int kMaxParseDepth = 200;               // nested expressions / blocks while parsing
inline constexpr int kMaxEvalDepth = 400;                // nested evaluation frames (macro recursion included)
inline constexpr int64_t kMaxSteps = 2'000'000;          // expression and statement evaluations per render
inline constexpr size_t kMaxString = 64u << 20;          // bytes of one string value or of the output
inline constexpr int64_t kMaxStringWork = int64_t{1} << 31;  // bytes built by string operations per render
inline constexpr int64_t kMaxRange = 100000;             // items of range() (the jinja2 sandbox's MAX_RANGE)

// An error raised while evaluating a builtin, without a position yet: the evaluator adds "<name>:<line>:<col>: "
// where the node that called the builtin is.
class ValueError : public Error {
 public:
  using Error::Error;
};
// raise_exception(msg) from a template: the message is msg as written.
class RaisedError : public Error {
 public:
  using Error::Error;
};

class Value;
struct Dict;
struct Callable;
class Renderer;
using List = std::vector<Value>;

class Value {
 public:
  enum class Kind : uint8_t { Undefined, None, Bool, Int, Float, String, List, Tuple, Dict, Namespace, Callable };

  Value() = default;  // undefined
  Value(bool b) : kind_(Kind::Bool), b_(b) {}
  Value(int64_t i) : kind_(Kind::Int), i_(i) {}
  Value(int i) : kind_(Kind::Int), i_(i) {}
  Value(double f) : kind_(Kind::Float), f_(f) {}
  Value(std::string s) : kind_(Kind::String), s_(std::move(s)) {}
  Value(const char* s) : kind_(Kind::String), s_(s) {}

  // An undefined value; `hint` is the message an operation on it raises ("'x' is undefined").
  static Value undefined(std::string hint);
  static Value none();
  static Value list(List items);
  static Value tuple(List items);
  static Value dict(std::shared_ptr<Dict> d);
  static Value new_dict();
  static Value namespace_(std::shared_ptr<Dict> attrs);
  static Value callable(std::shared_ptr<const Callable> fn);
  static Value from_json(const nlohmann::ordered_json& j);

  Kind kind() const { return kind_; }
  bool is_undefined() const { return kind_ == Kind::Undefined; }
  bool is_none() const { return kind_ == Kind::None; }
  bool is_string() const { return kind_ == Kind::String; }
  bool is_number() const { return kind_ == Kind::Int || kind_ == Kind::Float || kind_ == Kind::Bool; }
  bool is_sequence() const { return kind_ == Kind::List || kind_ == Kind::Tuple; }
  bool is_dict() const { return kind_ == Kind::Dict; }

  bool boolean() const { return b_; }
  int64_t integer() const { return kind_ == Kind::Bool ? (b_ ? 1 : 0) : i_; }  // Int or Bool
  double number() const;                                                      // Int, Bool or Float
  const std::string& str() const { return s_; }   // String; the hint of Undefined
  const List& items() const { return *list_; }    // List or Tuple
  const Dict& dict() const { return *dict_; }     // Dict or Namespace
  Dict& namespace_attrs() const { return *dict_; }
  const Callable& fn() const { return *fn_; }
  const void* identity() const;  // shared object behind a container value (for `is sameas`)

  bool truthy() const;  // Python truth value
  const char* type_name() const;  // Python's type name: "str", "dict", "NoneType", ...

 private:
  Kind kind_ = Kind::Undefined;
  bool b_ = false;
  int64_t i_ = 0;
  double f_ = 0;
  std::string s_;
  std::shared_ptr<List> list_;
  std::shared_ptr<Dict> dict_;
  std::shared_ptr<const Callable> fn_;
};

// Insertion-ordered string-keyed map (Python dict as JSON data and templates use it).
struct Dict {
  std::vector<std::pair<std::string, Value>> entries;
  const Value* find(std::string_view key) const;
  void set(const std::string& key, Value v);
};

struct CallArgs {
  std::vector<Value> pos;
  std::vector<std::pair<std::string, Value>> kw;
  // The keyword argument `name`, else positional argument `index` (when given), else nullptr.
  const Value* get(const char* name, size_t index = SIZE_MAX) const;
};

struct Callable {
  std::string name;
  std::function<Value(CallArgs& args, Renderer& r)> call;
};

// Python str() (what {{ x }} prints), repr() and json.dumps().
std::string to_str(const Value& v);
std::string repr(const Value& v);
struct JsonOptions {
  std::optional<std::string> indent;  // json.dumps indent (an int n means n spaces); none: one line
  bool sort_keys = false;
  bool ensure_ascii = false;
  std::string item_separator;  // "" = json.dumps' default (", " on one line, "," with indent)
  std::string key_separator = ": ";
};
std::string to_json(const Value& v, const JsonOptions& opts);  // throws rlcu::Error for a non-JSON value
std::string py_float_repr(double d);
bool py_equal(const Value& a, const Value& b);  // Python ==

// Python str.isspace() for one code point; code-point helpers for UTF-8 strings.
bool py_space(char32_t c);
std::u32string to_u32(std::string_view s);
std::string from_u32(std::u32string_view s);
size_t code_points(std::string_view s);

struct RenderOptions {
  std::optional<std::tm> now;  // what strftime_now formats; unset: the current local time
};

struct RenderResult {
  std::string text;
  // Byte ranges [begin, end) of the text that {% generation %} blocks produced (transformers' assistant masks).
  std::vector<std::pair<size_t, size_t>> generation;
};

struct TemplateImpl;

class Template {
 public:
  // Parses `source`; syntax errors are rlcu::Error "<name>:<line>:<column>: <what>".
  static Template parse(const std::string& source, const std::string& name);
  // Renders with the given top-level variables (plus the globals range, namespace, dict, raise_exception and
  // strftime_now).
  RenderResult render(const std::vector<std::pair<std::string, Value>>& vars, const RenderOptions& opts = {}) const;
  const std::string& name() const;
  bool has_generation() const;  // the template contains a {% generation %} block

 private:
  std::shared_ptr<const TemplateImpl> impl_;
};

}  // namespace rlcu::jinja
