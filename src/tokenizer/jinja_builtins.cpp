// Jinja builtins with jinja2 / Python semantics: attribute and item access (with jinja's fallback from one to the
// other and the sandbox's refusal of list/dict mutators), iteration, operators, the methods of str/dict/list that
// templates call, the filters and tests of jinja2 that chat templates use, and the globals range, namespace, dict,
// raise_exception and strftime_now (transformers' additions). Strings are UTF-8; everything that counts or indexes
// (length, [i], slices, find) counts code points like Python. Case mapping uses Unicode simple case mappings
// (Python's full mappings differ for a few characters such as 'ß'.upper()).
#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>

#include <utf8proc.h>

#include "jinja_ast.h"
#include "unicode.h"

namespace rlcu::jinja {

namespace {

[[noreturn]] void raise(const std::string& msg) { throw ValueError(msg); }

// jinja2's object_type_repr: "None" or "<type> object".
std::string object_type(const Value& v) {
  if (v.is_none()) return "None";
  return std::string(v.type_name()) + " object";
}

bool is_int(const Value& v) { return v.kind() == Value::Kind::Int || v.kind() == Value::Kind::Bool; }

int64_t int_arg(const Value& v, const char* what) {
  if (!is_int(v)) raise(fmt::format("{} must be an integer, not {}", what, v.type_name()));
  return v.integer();
}

std::string str_arg(const Value& v, const char* what) {
  if (!v.is_string()) raise(fmt::format("{} must be a string, not {}", what, v.type_name()));
  return v.str();
}

Value make_str(Renderer& r, std::string s) {
  r.charge(s.size(), r.line, r.col);
  return Value(std::move(s));
}

// ---- code point helpers --------------------------------------------------------------------------------------------
char32_t cp_upper(char32_t c) {
  if (c < 0x80) return c >= 'a' && c <= 'z' ? c - 32 : c;
  return static_cast<char32_t>(utf8proc_toupper(static_cast<utf8proc_int32_t>(c)));
}
char32_t cp_lower(char32_t c) {
  if (c < 0x80) return c >= 'A' && c <= 'Z' ? c + 32 : c;
  return static_cast<char32_t>(utf8proc_tolower(static_cast<utf8proc_int32_t>(c)));
}
char32_t cp_title(char32_t c) {
  if (c < 0x80) return cp_upper(c);
  return static_cast<char32_t>(utf8proc_totitle(static_cast<utf8proc_int32_t>(c)));
}
utf8proc_category_t category(char32_t c) { return utf8proc_category(static_cast<utf8proc_int32_t>(c)); }
bool cp_is_lower(char32_t c) { return category(c) == UTF8PROC_CATEGORY_LL; }
bool cp_is_upper(char32_t c) {
  const auto k = category(c);
  return k == UTF8PROC_CATEGORY_LU || k == UTF8PROC_CATEGORY_LT;
}
bool cp_is_cased(char32_t c) { return cp_is_lower(c) || cp_is_upper(c); }
bool cp_is_alpha(char32_t c) {
  const auto k = category(c);
  return k >= UTF8PROC_CATEGORY_LU && k <= UTF8PROC_CATEGORY_LO;
}
bool cp_is_digit(char32_t c) { return category(c) == UTF8PROC_CATEGORY_ND; }
bool cp_is_numeric(char32_t c) {
  const auto k = category(c);
  return k >= UTF8PROC_CATEGORY_ND && k <= UTF8PROC_CATEGORY_NO;
}

std::string map_cps(const std::string& s, char32_t (*f)(char32_t)) {
  std::u32string u = to_u32(s);
  for (char32_t& c : u) c = f(c);
  return from_u32(u);
}

// Python str.upper(): simple mappings plus the full mapping of U+00DF (ß -> SS).
std::string py_upper(const std::string& s) {
  std::u32string out;
  for (char32_t c : to_u32(s)) {
    if (c == 0xDF) {
      out += U"SS";
    } else {
      out.push_back(cp_upper(c));
    }
  }
  return from_u32(out);
}

// Python str.title(): a cased character after an uncased one is title-cased, the others lower-cased.
std::string py_title(const std::string& s) {
  std::u32string u = to_u32(s);
  bool prev_cased = false;
  for (char32_t& c : u) {
    const bool cased = cp_is_cased(c);
    c = cased ? (prev_cased ? cp_lower(c) : cp_title(c)) : c;
    prev_cased = cased;
  }
  return from_u32(u);
}

std::string py_capitalize(const std::string& s) {
  std::u32string u = to_u32(s);
  for (size_t i = 0; i < u.size(); ++i) u[i] = i == 0 ? cp_title(u[i]) : cp_lower(u[i]);
  return from_u32(u);
}

// jinja2's title filter: words start after whitespace or one of - ( { [ <.
std::string jinja_title(const std::string& s) {
  std::u32string u = to_u32(s);
  bool start = true;
  for (char32_t& c : u) {
    const bool sep = py_space(c) || c == '-' || c == '(' || c == '{' || c == '[' || c == '<';
    if (sep) {
      start = true;
    } else {
      c = start ? cp_upper(c) : cp_lower(c);
      start = false;
    }
  }
  return from_u32(u);
}

// Python str.strip family; chars == nullptr strips whitespace.
std::string py_strip(const std::string& s, const std::string* chars, bool left, bool right) {
  const std::u32string u = to_u32(s);
  const std::u32string set = chars ? to_u32(*chars) : std::u32string();
  auto strip = [&](char32_t c) { return chars ? set.find(c) != std::u32string::npos : py_space(c); };
  size_t b = 0, e = u.size();
  if (left)
    while (b < e && strip(u[b])) ++b;
  if (right)
    while (e > b && strip(u[e - 1])) --e;
  return from_u32(std::u32string_view(u).substr(b, e - b));
}

List py_split(const std::string& s, const Value* sep_v, int64_t maxsplit, bool from_right) {
  List out;
  if (sep_v && !sep_v->is_none()) {
    const std::string sep = str_arg(*sep_v, "the separator");
    if (sep.empty()) raise("empty separator");
    std::vector<std::string> parts;
    if (!from_right) {
      size_t pos = 0;
      while (maxsplit < 0 || static_cast<int64_t>(parts.size()) < maxsplit) {
        const size_t k = s.find(sep, pos);
        if (k == std::string::npos) break;
        parts.push_back(s.substr(pos, k - pos));
        pos = k + sep.size();
      }
      parts.push_back(s.substr(pos));
    } else {
      size_t end = s.size();
      std::vector<std::string> rev;
      while (maxsplit < 0 || static_cast<int64_t>(rev.size()) < maxsplit) {
        if (end < sep.size()) break;
        const size_t k = s.rfind(sep, end - sep.size());
        if (k == std::string::npos) break;
        rev.push_back(s.substr(k + sep.size(), end - k - sep.size()));
        end = k;
      }
      rev.push_back(s.substr(0, end));
      parts.assign(rev.rbegin(), rev.rend());
    }
    for (std::string& p : parts) out.emplace_back(std::move(p));
    return out;
  }
  // Runs of whitespace; no empty strings.
  const std::u32string u = to_u32(s);
  std::vector<std::u32string> parts;
  if (!from_right) {
    size_t i = 0;
    while (true) {
      while (i < u.size() && py_space(u[i])) ++i;
      if (i >= u.size()) break;
      if (maxsplit >= 0 && static_cast<int64_t>(parts.size()) == maxsplit) {
        parts.push_back(u.substr(i));  // the remainder keeps its trailing whitespace
        break;
      }
      size_t j = i;
      while (j < u.size() && !py_space(u[j])) ++j;
      parts.push_back(u.substr(i, j - i));
      i = j;
    }
  } else {
    size_t e = u.size();
    std::vector<std::u32string> rev;
    while (true) {
      while (e > 0 && py_space(u[e - 1])) --e;
      if (e == 0) break;
      if (maxsplit >= 0 && static_cast<int64_t>(rev.size()) == maxsplit) {
        rev.push_back(u.substr(0, e));  // the remainder keeps its leading whitespace
        break;
      }
      size_t b = e;
      while (b > 0 && !py_space(u[b - 1])) --b;
      rev.push_back(u.substr(b, e - b));
      e = b;
    }
    parts.assign(rev.rbegin(), rev.rend());
  }
  for (const auto& p : parts) out.emplace_back(from_u32(p));
  return out;
}

List py_splitlines(const std::string& s, bool keepends) {
  List out;
  const std::u32string u = to_u32(s);
  size_t start = 0;
  for (size_t i = 0; i < u.size(); ++i) {
    const char32_t c = u[i];
    const bool brk = c == '\n' || c == '\r' || c == 0x0B || c == 0x0C || (c >= 0x1C && c <= 0x1E) || c == 0x85 ||
                     c == 0x2028 || c == 0x2029;
    if (!brk) continue;
    size_t end = i + 1;
    if (c == '\r' && i + 1 < u.size() && u[i + 1] == '\n') end = i + 2;
    out.emplace_back(from_u32(u.substr(start, (keepends ? end : i) - start)));
    start = end;
    i = end - 1;
  }
  if (start < u.size()) out.emplace_back(from_u32(u.substr(start)));
  return out;
}

std::string py_replace(Renderer& r, const std::string& s, const std::string& old, const std::string& repl,
                       int64_t count) {
  std::string out;
  if (old.empty()) {  // Python inserts `repl` before every code point and at the end
    const std::u32string u = to_u32(s);
    int64_t n = 0;
    for (char32_t c : u) {
      if (count < 0 || n < count) {
        out += repl;
        ++n;
      }
      tok::append_utf8(out, c);
      r.charge(repl.size(), r.line, r.col);
    }
    if (count < 0 || n < count) out += repl;
    return out;
  }
  size_t pos = 0;
  int64_t n = 0;
  while (count < 0 || n < count) {
    const size_t k = s.find(old, pos);
    if (k == std::string::npos) break;
    out.append(s, pos, k - pos);
    out += repl;
    pos = k + old.size();
    ++n;
    r.charge(repl.size(), r.line, r.col);
  }
  out.append(s, pos);
  return out;
}

// Code-point index of a byte offset.
int64_t cp_index(const std::string& s, size_t byte) { return static_cast<int64_t>(code_points(std::string_view(s).substr(0, byte))); }

// ---- sequences ------------------------------------------------------------------------------------------------------
int64_t py_len(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::Undefined: return 0;
    case Value::Kind::String: return static_cast<int64_t>(code_points(v.str()));
    case Value::Kind::List:
    case Value::Kind::Tuple: return static_cast<int64_t>(v.items().size());
    case Value::Kind::Dict: return static_cast<int64_t>(v.dict().entries.size());
    default: raise(fmt::format("object of type '{}' has no len()", v.type_name()));
  }
}

Value method(const Value& obj, const std::string& name);

bool is_dict_method(const std::string& n) {
  return n == "get" || n == "keys" || n == "values" || n == "items" || n == "copy";
}
bool is_dict_mutator(const std::string& n) {
  return n == "update" || n == "pop" || n == "popitem" || n == "setdefault" || n == "clear";
}
bool is_list_method(const std::string& n) { return n == "index" || n == "count" || n == "copy"; }
bool is_list_mutator(const std::string& n) {
  return n == "append" || n == "extend" || n == "insert" || n == "pop" || n == "remove" || n == "reverse" ||
         n == "sort" || n == "clear";
}
bool is_str_method(const std::string& n) {
  static const char* const names[] = {
      "strip", "lstrip", "rstrip", "split", "rsplit", "splitlines", "startswith", "endswith", "upper", "lower",
      "title", "capitalize", "swapcase", "replace", "find", "rfind", "index", "rindex", "count", "join", "isdigit",
      "isalpha", "isalnum", "isspace", "islower", "isupper", "isnumeric", "removeprefix", "removesuffix"};
  for (const char* k : names)
    if (n == k) return true;
  return false;
}

Value unsafe(const std::string& name, const Value& obj) {
  return Value::undefined(fmt::format("access to attribute '{}' of '{}' object is unsafe.", name, obj.type_name()));
}

Value py_index(const Value& obj, int64_t i) {
  const bool str = obj.is_string();
  std::u32string u;
  if (str) u = to_u32(obj.str());
  const int64_t n = str ? static_cast<int64_t>(u.size()) : static_cast<int64_t>(obj.items().size());
  const int64_t k = i < 0 ? i + n : i;
  if (k < 0 || k >= n) return Value::undefined(fmt::format("{} has no element {}", object_type(obj), i));
  if (str) return Value(from_u32(std::u32string(1, u[static_cast<size_t>(k)])));
  return obj.items()[static_cast<size_t>(k)];
}

}  // namespace

void undefined_error(const Value& v) { raise(v.str().empty() ? "an undefined value was used" : v.str()); }

Value get_attr(const Value& obj, const std::string& name) {
  switch (obj.kind()) {
    case Value::Kind::Undefined: undefined_error(obj);
    case Value::Kind::Dict: {
      if (is_dict_method(name)) return method(obj, name);
      if (is_dict_mutator(name)) return unsafe(name, obj);
      if (const Value* v = obj.dict().find(name)) return *v;
      return Value::undefined(fmt::format("'dict object' has no attribute '{}'", name));
    }
    case Value::Kind::Namespace:
      if (const Value* v = obj.dict().find(name)) return *v;
      return Value::undefined(fmt::format("'Namespace object' has no attribute '{}'", name));
    case Value::Kind::String:
      if (is_str_method(name)) return method(obj, name);
      break;
    case Value::Kind::List:
    case Value::Kind::Tuple:
      if (is_list_method(name)) return method(obj, name);
      if (is_list_mutator(name)) return unsafe(name, obj);
      break;
    default: break;
  }
  return Value::undefined(fmt::format("'{}' has no attribute '{}'", object_type(obj), name));
}

Value get_item(const Value& obj, const Value& key) {
  switch (obj.kind()) {
    case Value::Kind::Undefined: undefined_error(obj);
    case Value::Kind::Dict:
      if (key.is_string()) {
        if (const Value* v = obj.dict().find(key.str())) return *v;
        return get_attr(obj, key.str());
      }
      return Value::undefined(fmt::format("dict object has no element {}", repr(key)));
    case Value::Kind::Namespace:
      if (key.is_string()) return get_attr(obj, key.str());
      break;
    case Value::Kind::String:
    case Value::Kind::List:
    case Value::Kind::Tuple:
      if (is_int(key)) return py_index(obj, key.integer());
      if (key.is_string()) return get_attr(obj, key.str());
      break;
    default:
      if (key.is_string()) return get_attr(obj, key.str());
      break;
  }
  return Value::undefined(fmt::format("{} has no element {}", object_type(obj), repr(key)));
}

Value get_slice(const Value& obj, const Value& start_v, const Value& stop_v, const Value& step_v, Renderer& r) {
  if (!obj.is_string() && !obj.is_sequence()) raise(fmt::format("'{}' object is not subscriptable", obj.type_name()));
  auto idx = [](const Value& v) -> std::optional<int64_t> {
    if (v.is_none()) return std::nullopt;
    if (!is_int(v)) raise("slice indices must be integers or None");
    return v.integer();
  };
  const int64_t step = idx(step_v).value_or(1);
  if (step == 0) raise("slice step cannot be zero");
  const bool str = obj.is_string();
  std::u32string u;
  if (str) u = to_u32(obj.str());
  const int64_t n = str ? static_cast<int64_t>(u.size()) : static_cast<int64_t>(obj.items().size());
  auto adjust = [&](std::optional<int64_t> v, int64_t dflt) {
    if (!v) return dflt;
    int64_t x = *v;
    if (x < 0) {
      x += n;
      if (x < 0) x = step < 0 ? -1 : 0;
    } else if (x >= n) {
      x = step < 0 ? n - 1 : n;
    }
    return x;
  };
  const int64_t start = adjust(idx(start_v), step < 0 ? n - 1 : 0);
  const int64_t stop = adjust(idx(stop_v), step < 0 ? -1 : n);
  std::u32string su;
  List items;
  for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
    if (str)
      su.push_back(u[static_cast<size_t>(i)]);
    else
      items.push_back(obj.items()[static_cast<size_t>(i)]);
  }
  if (str) return make_str(r, from_u32(su));
  return obj.kind() == Value::Kind::Tuple ? Value::tuple(std::move(items)) : Value::list(std::move(items));
}

List iterate(const Value& v, Renderer&) {
  switch (v.kind()) {
    case Value::Kind::Undefined: return {};
    case Value::Kind::List:
    case Value::Kind::Tuple: return v.items();
    case Value::Kind::Dict: {
      List keys;
      for (const auto& [k, x] : v.dict().entries) keys.emplace_back(k);
      return keys;
    }
    case Value::Kind::String: {
      List chars;
      for (char32_t c : to_u32(v.str())) chars.emplace_back(from_u32(std::u32string(1, c)));
      return chars;
    }
    default: raise(fmt::format("'{}' object is not iterable", v.type_name()));
  }
}

// ---- operators --------------------------------------------------------------------------------------------------------
namespace {

[[noreturn]] void overflow() { raise("integer overflow (rlcu's template integers are 64-bit)"); }
int64_t add_i(int64_t a, int64_t b) {
  int64_t v;
  if (__builtin_add_overflow(a, b, &v)) overflow();
  return v;
}
int64_t sub_i(int64_t a, int64_t b) {
  int64_t v;
  if (__builtin_sub_overflow(a, b, &v)) overflow();
  return v;
}
int64_t mul_i(int64_t a, int64_t b) {
  int64_t v;
  if (__builtin_mul_overflow(a, b, &v)) overflow();
  return v;
}

[[noreturn]] void bad_operands(const std::string& op, const Value& a, const Value& b) {
  if (op == "+" && a.is_string()) raise(fmt::format("can only concatenate str (not \"{}\") to str", b.type_name()));
  if (op == "+" && a.kind() == Value::Kind::List)
    raise(fmt::format("can only concatenate list (not \"{}\") to list", b.type_name()));
  raise(fmt::format("unsupported operand type(s) for {}: '{}' and '{}'", op, a.type_name(), b.type_name()));
}

Value repeat(Renderer& r, const Value& seq, int64_t n) {
  if (n < 0) n = 0;
  if (seq.is_string()) {
    const size_t len = seq.str().size();
    if (len && static_cast<uint64_t>(n) > kMaxString / len) r.charge(kMaxString + 1, r.line, r.col);
    std::string out;
    out.reserve(len * static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) out += seq.str();
    return make_str(r, std::move(out));
  }
  const size_t len = seq.items().size();
  if (len && static_cast<uint64_t>(n) > static_cast<uint64_t>(kMaxRange) / len)
    raise(fmt::format("a list repeated to more than {} items", kMaxRange));
  List out;
  for (int64_t i = 0; i < n; ++i) out.insert(out.end(), seq.items().begin(), seq.items().end());
  return seq.kind() == Value::Kind::Tuple ? Value::tuple(std::move(out)) : Value::list(std::move(out));
}

int64_t floor_div(int64_t a, int64_t b) {
  if (b == 0) raise("integer division or modulo by zero");
  if (a == INT64_MIN && b == -1) raise("integer overflow (rlcu's template integers are 64-bit)");
  int64_t q = a / b;
  if ((a % b != 0) && ((a < 0) != (b < 0))) --q;
  return q;
}

int64_t floor_mod(int64_t a, int64_t b) {
  if (b == 0) raise("integer division or modulo by zero");
  if (b == -1) return 0;
  int64_t m = a % b;
  if (m != 0 && ((m < 0) != (b < 0))) m += b;
  return m;
}

int64_t int_pow(int64_t base, int64_t exp) {
  int64_t result = 1;
  while (exp > 0) {
    if (exp & 1) result = mul_i(result, base);
    exp >>= 1;
    if (exp) base = mul_i(base, base);
  }
  return result;
}

int order(const Value& a, const Value& b, const std::string& op, int depth = 0) {
  if (depth > 512) raise("a value is nested too deeply to compare");
  if (a.is_number() && b.is_number()) {
    if (a.kind() == Value::Kind::Float || b.kind() == Value::Kind::Float) {
      const double x = a.number(), y = b.number();
      return x < y ? -1 : x > y ? 1 : 0;
    }
    return a.integer() < b.integer() ? -1 : a.integer() > b.integer() ? 1 : 0;
  }
  if (a.is_string() && b.is_string()) return a.str() < b.str() ? -1 : a.str() > b.str() ? 1 : 0;
  if (a.is_sequence() && a.kind() == b.kind()) {
    const List& x = a.items();
    const List& y = b.items();
    for (size_t i = 0; i < x.size() && i < y.size(); ++i) {
      if (py_equal(x[i], y[i])) continue;
      return order(x[i], y[i], op, depth + 1);
    }
    return x.size() < y.size() ? -1 : x.size() > y.size() ? 1 : 0;
  }
  if (a.is_undefined()) undefined_error(a);
  if (b.is_undefined()) undefined_error(b);
  raise(fmt::format("'{}' not supported between instances of '{}' and '{}'", op, a.type_name(), b.type_name()));
}

bool contains(const Value& container, const Value& item) {
  switch (container.kind()) {
    case Value::Kind::Undefined: return false;
    case Value::Kind::String:
      if (!item.is_string())
        raise(fmt::format("'in <string>' requires string as left operand, not {}", item.type_name()));
      return container.str().find(item.str()) != std::string::npos;
    case Value::Kind::List:
    case Value::Kind::Tuple:
      for (const Value& v : container.items())
        if (py_equal(v, item)) return true;
      return false;
    case Value::Kind::Dict: return item.is_string() && container.dict().find(item.str()) != nullptr;
    default: raise(fmt::format("argument of type '{}' is not iterable", container.type_name()));
  }
}

}  // namespace

Value binary_op(const std::string& op, const Value& a, const Value& b, Renderer& r) {
  using K = Value::Kind;
  if (op == "~") return make_str(r, to_str(a) + to_str(b));
  if (a.is_undefined()) undefined_error(a);
  if (b.is_undefined()) undefined_error(b);
  const bool nums = a.is_number() && b.is_number();
  const bool floats = nums && (a.kind() == K::Float || b.kind() == K::Float);
  if (op == "+") {
    if (nums) {
      if (floats) return Value(a.number() + b.number());
      return Value(add_i(a.integer(), b.integer()));
    }
    if (a.is_string() && b.is_string()) return make_str(r, a.str() + b.str());
    if (a.is_sequence() && a.kind() == b.kind()) {
      if (a.items().size() + b.items().size() > static_cast<size_t>(kMaxRange) * 10)
        raise("a list grew too long");
      List out = a.items();
      out.insert(out.end(), b.items().begin(), b.items().end());
      return a.kind() == K::Tuple ? Value::tuple(std::move(out)) : Value::list(std::move(out));
    }
    bad_operands(op, a, b);
  }
  if (op == "-") {
    if (!nums) bad_operands(op, a, b);
    if (floats) return Value(a.number() - b.number());
    return Value(sub_i(a.integer(), b.integer()));
  }
  if (op == "*") {
    if (nums) {
      if (floats) return Value(a.number() * b.number());
      return Value(mul_i(a.integer(), b.integer()));
    }
    if ((a.is_string() || a.is_sequence()) && is_int(b)) return repeat(r, a, b.integer());
    if (is_int(a) && (b.is_string() || b.is_sequence())) return repeat(r, b, a.integer());
    bad_operands(op, a, b);
  }
  if (!nums) {
    if (op == "%" && a.is_string()) raise("printf-style string formatting (str % value) is not supported");
    bad_operands(op, a, b);
  }
  if (op == "/") {
    if (b.number() == 0) raise("division by zero");
    return Value(a.number() / b.number());
  }
  if (op == "//") {
    if (!floats) return Value(floor_div(a.integer(), b.integer()));
    if (b.number() == 0) raise("float floor division by zero");
    return Value(std::floor(a.number() / b.number()));
  }
  if (op == "%") {
    if (!floats) return Value(floor_mod(a.integer(), b.integer()));
    if (b.number() == 0) raise("float modulo");
    double m = std::fmod(a.number(), b.number());
    if (m != 0 && ((m < 0) != (b.number() < 0))) m += b.number();
    return Value(m);
  }
  if (op == "**") {
    if (!floats && b.integer() >= 0) return Value(int_pow(a.integer(), b.integer()));
    if (a.number() == 0 && b.number() < 0) raise("0.0 cannot be raised to a negative power");
    return Value(std::pow(a.number(), b.number()));
  }
  raise("unknown operator " + op);
}

bool compare_op(const std::string& op, const Value& a, const Value& b, Renderer&) {
  if (op == "==") return py_equal(a, b);
  if (op == "!=") return !py_equal(a, b);
  if (op == "in") return contains(b, a);
  if (op == "not in") return !contains(b, a);
  const int c = order(a, b, op);
  if (op == "<") return c < 0;
  if (op == "<=") return c <= 0;
  if (op == ">") return c > 0;
  if (op == ">=") return c >= 0;
  raise("unknown comparison " + op);
}

// ---- methods -----------------------------------------------------------------------------------------------------------
namespace {

void max_args(const CallArgs& a, size_t n, const std::string& name) {
  if (a.pos.size() + a.kw.size() > n) raise(fmt::format("{}() takes at most {} argument(s)", name, n));
}

Value str_method(const std::string& s, const std::string& name, CallArgs& a, Renderer& r) {
  const Value* a0 = a.pos.size() > 0 ? &a.pos[0] : nullptr;
  const Value* a1 = a.pos.size() > 1 ? &a.pos[1] : nullptr;
  if (name == "strip" || name == "lstrip" || name == "rstrip") {
    max_args(a, 1, name);
    std::string chars;
    if (a0 && !a0->is_none()) chars = str_arg(*a0, "strip characters");
    return Value(py_strip(s, a0 && !a0->is_none() ? &chars : nullptr, name != "rstrip", name != "lstrip"));
  }
  if (name == "split" || name == "rsplit") {
    const Value* sep = a.get("sep", 0);
    const Value* maxsplit = a.get("maxsplit", 1);
    return Value::list(py_split(s, sep, maxsplit ? int_arg(*maxsplit, "maxsplit") : -1, name == "rsplit"));
  }
  if (name == "splitlines") {
    const Value* keep = a.get("keepends", 0);
    return Value::list(py_splitlines(s, keep && keep->truthy()));
  }
  if (name == "startswith" || name == "endswith") {
    if (!a0) raise(name + "() takes at least 1 argument");
    List prefixes = a0->is_sequence() ? a0->items() : List{*a0};
    for (const Value& p : prefixes) {
      const std::string x = str_arg(p, "the prefix");
      const bool hit = name == "startswith" ? s.compare(0, x.size(), x) == 0
                                            : s.size() >= x.size() && s.compare(s.size() - x.size(), x.size(), x) == 0;
      if (hit) return Value(true);
    }
    return Value(false);
  }
  if (name == "upper") return Value(py_upper(s));
  if (name == "lower") return Value(map_cps(s, cp_lower));
  if (name == "title") return Value(py_title(s));
  if (name == "capitalize") return Value(py_capitalize(s));
  if (name == "swapcase")
    return Value(map_cps(s, [](char32_t c) { return cp_is_upper(c) ? cp_lower(c) : cp_is_lower(c) ? cp_upper(c) : c; }));
  if (name == "replace") {
    if (!a0 || !a1) raise("replace() takes at least 2 arguments");
    const Value* count = a.get("count", 2);
    return make_str(r, py_replace(r, s, str_arg(*a0, "old"), str_arg(*a1, "new"), count ? int_arg(*count, "count") : -1));
  }
  if (name == "find" || name == "rfind" || name == "index" || name == "rindex") {
    if (!a0) raise(name + "() takes at least 1 argument");
    const std::string sub = str_arg(*a0, "the substring");
    const size_t k = name[0] == 'r' ? s.rfind(sub) : s.find(sub);
    if (k == std::string::npos) {
      if (name == "index" || name == "rindex") raise("substring not found");
      return Value(int64_t{-1});
    }
    return Value(cp_index(s, k));
  }
  if (name == "count") {
    if (!a0) raise("count() takes at least 1 argument");
    const std::string sub = str_arg(*a0, "the substring");
    if (sub.empty()) return Value(static_cast<int64_t>(code_points(s)) + 1);
    int64_t n = 0;
    for (size_t k = s.find(sub); k != std::string::npos; k = s.find(sub, k + sub.size())) ++n;
    return Value(n);
  }
  if (name == "join") {
    if (!a0) raise("join() takes exactly one argument");
    std::string out;
    const List items = iterate(*a0, r);
    for (size_t i = 0; i < items.size(); ++i) {
      if (!items[i].is_string())
        raise(fmt::format("sequence item {}: expected str instance, {} found", i, items[i].type_name()));
      if (i) out += s;
      out += items[i].str();
      r.charge(out.size(), r.line, r.col);
    }
    return Value(std::move(out));
  }
  if (name == "removeprefix" || name == "removesuffix") {
    if (!a0) raise(name + "() takes exactly one argument");
    const std::string x = str_arg(*a0, "the affix");
    if (name == "removeprefix") return Value(s.compare(0, x.size(), x) == 0 ? s.substr(x.size()) : s);
    const bool ends = s.size() >= x.size() && s.compare(s.size() - x.size(), x.size(), x) == 0;
    return Value(ends ? s.substr(0, s.size() - x.size()) : s);
  }
  // Character-class predicates.
  const std::u32string u = to_u32(s);
  auto all = [&](bool (*f)(char32_t)) {
    if (u.empty()) return false;
    for (char32_t c : u)
      if (!f(c)) return false;
    return true;
  };
  if (name == "isdigit") return Value(all(cp_is_digit));
  if (name == "isnumeric") return Value(all(cp_is_numeric));
  if (name == "isalpha") return Value(all(cp_is_alpha));
  if (name == "isalnum") return Value(all([](char32_t c) { return cp_is_alpha(c) || cp_is_numeric(c); }));
  if (name == "isspace") return Value(all(py_space));
  if (name == "islower" || name == "isupper") {
    bool any = false;
    for (char32_t c : u) {
      if (name == "islower" ? cp_is_upper(c) : cp_is_lower(c)) return Value(false);
      any = any || cp_is_cased(c);
    }
    return Value(any);
  }
  raise(fmt::format("'str' object has no attribute '{}'", name));
}

Value dict_method(const Value& obj, const std::string& name, CallArgs& a) {
  const Dict& d = obj.dict();
  if (name == "get") {
    if (a.pos.empty()) raise("get() takes at least 1 argument");
    max_args(a, 2, "get");
    const Value* v = a.pos[0].is_string() ? d.find(a.pos[0].str()) : nullptr;
    if (v) return *v;
    return a.pos.size() > 1 ? a.pos[1] : Value::none();
  }
  max_args(a, 0, name);
  List out;
  if (name == "copy") return Value::dict(std::make_shared<Dict>(d));
  for (const auto& [k, v] : d.entries) {
    if (name == "keys") out.emplace_back(k);
    if (name == "values") out.push_back(v);
    if (name == "items") out.push_back(Value::tuple({Value(k), v}));
  }
  return Value::list(std::move(out));
}

Value list_method(const Value& obj, const std::string& name, CallArgs& a) {
  if (name == "copy") return Value::list(obj.items());
  if (a.pos.empty()) raise(name + "() takes exactly one argument");
  int64_t n = 0;
  for (size_t i = 0; i < obj.items().size(); ++i) {
    if (!py_equal(obj.items()[i], a.pos[0])) continue;
    if (name == "index") return Value(static_cast<int64_t>(i));
    ++n;
  }
  if (name == "index") raise(fmt::format("{} is not in list", repr(a.pos[0])));
  return Value(n);
}

Value method(const Value& obj, const std::string& name) {
  auto fn = std::make_shared<Callable>();
  fn->name = name;
  fn->call = [obj, name](CallArgs& a, Renderer& r) -> Value {
    if (obj.is_string()) return str_method(obj.str(), name, a, r);
    if (obj.is_dict()) return dict_method(obj, name, a);
    return list_method(obj, name, a);
  };
  return Value::callable(std::move(fn));
}

}  // namespace

// ---- filters -----------------------------------------------------------------------------------------------------------
namespace {

using FilterFn = Value (*)(const Value& v, CallArgs& a, Renderer& r);
using TestFn = bool (*)(const Value& v, CallArgs& a, Renderer& r);

// "a.b.0": item lookups through a path, as jinja's attribute= arguments do.
Value attr_path(const Value& v, const std::string& path) {
  Value cur = v;
  size_t start = 0;
  while (true) {
    const size_t dot = path.find('.', start);
    const std::string part = path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    if (cur.is_undefined()) return cur;
    const bool digits = !part.empty() && std::all_of(part.begin(), part.end(), [](char c) { return c >= '0' && c <= '9'; });
    cur = get_item(cur, digits ? Value(static_cast<int64_t>(std::stoll(part))) : Value(part));
    if (dot == std::string::npos) return cur;
    start = dot + 1;
  }
}

Value sort_key(const Value& v, bool case_sensitive) {
  if (!case_sensitive && v.is_string()) return Value(map_cps(v.str(), cp_lower));
  return v;
}

bool flag(CallArgs& a, const char* name, size_t index, bool dflt = false) {
  const Value* v = a.get(name, index);
  return v ? v->truthy() : dflt;
}

Value f_default(const Value& v, CallArgs& a, Renderer&) {
  const Value* d = a.get("default_value", 0);
  const bool boolean = flag(a, "boolean", 1);
  if (v.is_undefined() || (boolean && !v.truthy())) return d ? *d : Value("");
  return v;
}

Value f_trim(const Value& v, CallArgs& a, Renderer&) {
  const Value* chars = a.get("chars", 0);
  std::string c;
  if (chars && !chars->is_none()) c = to_str(*chars);
  return Value(py_strip(to_str(v), chars && !chars->is_none() ? &c : nullptr, true, true));
}

Value f_length(const Value& v, CallArgs&, Renderer&) { return Value(py_len(v)); }
Value f_upper(const Value& v, CallArgs&, Renderer&) { return Value(py_upper(to_str(v))); }
Value f_lower(const Value& v, CallArgs&, Renderer&) { return Value(map_cps(to_str(v), cp_lower)); }
Value f_capitalize(const Value& v, CallArgs&, Renderer&) { return Value(py_capitalize(to_str(v))); }
Value f_title(const Value& v, CallArgs&, Renderer&) { return Value(jinja_title(to_str(v))); }
Value f_string(const Value& v, CallArgs&, Renderer& r) { return make_str(r, to_str(v)); }

Value f_tojson(const Value& v, CallArgs& a, Renderer& r) {
  // transformers' tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)
  JsonOptions o;
  o.ensure_ascii = flag(a, "ensure_ascii", 0);
  if (const Value* ind = a.get("indent", 1); ind && !ind->is_none()) {
    if (is_int(*ind))
      o.indent = std::string(static_cast<size_t>(std::max<int64_t>(0, std::min<int64_t>(ind->integer(), 1000))), ' ');
    else
      o.indent = to_str(*ind);
  }
  if (const Value* sep = a.get("separators", 2); sep && !sep->is_none()) {
    if (!sep->is_sequence() || sep->items().size() != 2) raise("tojson separators must be a pair of strings");
    o.item_separator = str_arg(sep->items()[0], "the item separator");
    o.key_separator = str_arg(sep->items()[1], "the key separator");
  }
  o.sort_keys = flag(a, "sort_keys", 3);
  return make_str(r, to_json(v, o));
}

Value f_join(const Value& v, CallArgs& a, Renderer& r) {
  const Value* d = a.get("d", 0);
  const Value* attr = a.get("attribute", 1);
  const std::string sep = d ? to_str(*d) : "";
  std::string out;
  bool first = true;
  for (const Value& x : iterate(v, r)) {
    if (!first) out += sep;
    first = false;
    out += to_str(attr && !attr->is_none() ? attr_path(x, to_str(*attr)) : x);
    r.charge(out.size(), r.line, r.col);
  }
  return Value(std::move(out));
}

Value f_list(const Value& v, CallArgs&, Renderer& r) { return Value::list(iterate(v, r)); }

Value f_first(const Value& v, CallArgs&, Renderer& r) {
  if (v.is_sequence()) return v.items().empty() ? Value::undefined("No first item, sequence was empty.") : v.items()[0];
  List items = iterate(v, r);
  return items.empty() ? Value::undefined("No first item, sequence was empty.") : items.front();
}

Value f_last(const Value& v, CallArgs&, Renderer& r) {
  if (v.is_sequence()) return v.items().empty() ? Value::undefined("No last item, sequence was empty.") : v.items().back();
  List items = iterate(v, r);
  return items.empty() ? Value::undefined("No last item, sequence was empty.") : items.back();
}

Value f_reverse(const Value& v, CallArgs&, Renderer& r) {
  if (v.is_string()) {
    std::u32string u = to_u32(v.str());
    std::reverse(u.begin(), u.end());
    return Value(from_u32(u));
  }
  List items = iterate(v, r);
  std::reverse(items.begin(), items.end());
  return Value::list(std::move(items));
}

Value f_replace(const Value& v, CallArgs& a, Renderer& r) {
  const Value* old = a.get("old", 0);
  const Value* repl = a.get("new", 1);
  if (!old || !repl) raise("replace needs the old and the new string");
  const Value* count = a.get("count", 2);
  return make_str(r, py_replace(r, to_str(v), to_str(*old), to_str(*repl),
                                count && !count->is_none() ? int_arg(*count, "count") : -1));
}

Value f_items(const Value& v, CallArgs&, Renderer&) {
  if (v.is_undefined()) return Value::list({});
  if (!v.is_dict()) raise("Can only get item pairs from a mapping.");
  List out;
  for (const auto& [k, x] : v.dict().entries) out.push_back(Value::tuple({Value(k), x}));
  return Value::list(std::move(out));
}

Value f_dictsort(const Value& v, CallArgs& a, Renderer&) {
  if (!v.is_dict()) raise("dictsort needs a mapping");
  const bool cs = flag(a, "case_sensitive", 0);
  const Value* by = a.get("by", 1);
  const bool by_value = by && to_str(*by) == "value";
  const bool rev = flag(a, "reverse", 2);
  List out;
  for (const auto& [k, x] : v.dict().entries) out.push_back(Value::tuple({Value(k), x}));
  std::stable_sort(out.begin(), out.end(), [&](const Value& p, const Value& q) {
    const size_t i = by_value ? 1 : 0;
    const int c = order(sort_key(p.items()[i], cs), sort_key(q.items()[i], cs), "<");
    return rev ? c > 0 : c < 0;
  });
  return Value::list(std::move(out));
}

Value f_sort(const Value& v, CallArgs& a, Renderer& r) {
  const bool rev = flag(a, "reverse", 0);
  const bool cs = flag(a, "case_sensitive", 1);
  const Value* attr = a.get("attribute", 2);
  List items = iterate(v, r);
  auto key = [&](const Value& x) { return sort_key(attr && !attr->is_none() ? attr_path(x, to_str(*attr)) : x, cs); };
  std::stable_sort(items.begin(), items.end(), [&](const Value& p, const Value& q) {
    const int c = order(key(p), key(q), "<");
    return rev ? c > 0 : c < 0;
  });
  return Value::list(std::move(items));
}

Value f_unique(const Value& v, CallArgs& a, Renderer& r) {
  const bool cs = flag(a, "case_sensitive", 0);
  const Value* attr = a.get("attribute", 1);
  List out, keys;
  for (const Value& x : iterate(v, r)) {
    Value k = sort_key(attr && !attr->is_none() ? attr_path(x, to_str(*attr)) : x, cs);
    if (std::any_of(keys.begin(), keys.end(), [&](const Value& y) { return py_equal(y, k); })) continue;
    keys.push_back(std::move(k));
    out.push_back(x);
  }
  return Value::list(std::move(out));
}

Value min_max(const Value& v, CallArgs& a, Renderer& r, bool want_max) {
  const bool cs = flag(a, "case_sensitive", 0);
  const Value* attr = a.get("attribute", 1);
  List items = iterate(v, r);
  if (items.empty()) return Value::undefined(want_max ? "No largest item, sequence was empty." : "No smallest item, sequence was empty.");
  auto key = [&](const Value& x) { return sort_key(attr && !attr->is_none() ? attr_path(x, to_str(*attr)) : x, cs); };
  size_t best = 0;
  for (size_t i = 1; i < items.size(); ++i) {
    const int c = order(key(items[i]), key(items[best]), want_max ? ">" : "<");
    if (want_max ? c > 0 : c < 0) best = i;
  }
  return items[best];
}
Value f_min(const Value& v, CallArgs& a, Renderer& r) { return min_max(v, a, r, false); }
Value f_max(const Value& v, CallArgs& a, Renderer& r) { return min_max(v, a, r, true); }

Value f_sum(const Value& v, CallArgs& a, Renderer& r) {
  const Value* attr = a.get("attribute", 0);
  const Value* start = a.get("start", 1);
  Value total = start ? *start : Value(int64_t{0});
  for (const Value& x : iterate(v, r))
    total = binary_op("+", total, attr && !attr->is_none() ? attr_path(x, to_str(*attr)) : x, r);
  return total;
}

Value f_map(const Value& v, CallArgs& a, Renderer& r) {
  List out;
  const Value* attr = nullptr;
  const Value* dflt = nullptr;
  for (const auto& [k, x] : a.kw) {
    if (k == "attribute") attr = &x;
    if (k == "default") dflt = &x;
  }
  if (attr) {
    for (const Value& x : iterate(v, r)) {
      Value y = attr_path(x, to_str(*attr));
      out.push_back(y.is_undefined() && dflt ? *dflt : y);
    }
    return Value::list(std::move(out));
  }
  if (a.pos.empty()) raise("map needs a filter name or attribute=");
  const std::string name = to_str(a.pos[0]);
  CallArgs rest;
  rest.pos.assign(a.pos.begin() + 1, a.pos.end());
  rest.kw = a.kw;
  for (const Value& x : iterate(v, r)) {
    CallArgs copy = rest;
    out.push_back(apply_filter(name, x, copy, r));
  }
  return Value::list(std::move(out));
}

Value select_impl(const Value& v, CallArgs& a, Renderer& r, bool by_attr, bool keep) {
  size_t next = 0;
  std::string attr;
  if (by_attr) {
    if (a.pos.empty()) raise("selectattr/rejectattr need an attribute name");
    attr = to_str(a.pos[next++]);
  }
  std::string test;
  if (next < a.pos.size()) test = to_str(a.pos[next++]);
  CallArgs rest;
  rest.pos.assign(a.pos.begin() + static_cast<std::ptrdiff_t>(next), a.pos.end());
  rest.kw = a.kw;
  List out;
  for (const Value& x : iterate(v, r)) {
    const Value y = by_attr ? attr_path(x, attr) : x;
    CallArgs copy = rest;
    const bool pass = test.empty() ? y.truthy() : apply_test(test, y, copy, r);
    if (pass == keep) out.push_back(x);
  }
  return Value::list(std::move(out));
}
Value f_select(const Value& v, CallArgs& a, Renderer& r) { return select_impl(v, a, r, false, true); }
Value f_reject(const Value& v, CallArgs& a, Renderer& r) { return select_impl(v, a, r, false, false); }
Value f_selectattr(const Value& v, CallArgs& a, Renderer& r) { return select_impl(v, a, r, true, true); }
Value f_rejectattr(const Value& v, CallArgs& a, Renderer& r) { return select_impl(v, a, r, true, false); }

bool parse_int(const std::string& text, int64_t& out) {
  std::string t = py_strip(text, nullptr, true, true);
  t.erase(std::remove(t.begin(), t.end(), '_'), t.end());
  if (t.empty()) return false;
  size_t i = t[0] == '+' || t[0] == '-' ? 1 : 0;
  if (i >= t.size() || !std::all_of(t.begin() + static_cast<std::ptrdiff_t>(i), t.end(), [](char c) { return c >= '0' && c <= '9'; }))
    return false;
  errno = 0;
  const long long v = std::strtoll(t.c_str(), nullptr, 10);
  if (errno == ERANGE) return false;
  out = v;
  return true;
}

bool parse_float(const std::string& text, double& out) {
  const std::string t = py_strip(text, nullptr, true, true);
  if (t.empty()) return false;
  char* end = nullptr;
  out = std::strtod(t.c_str(), &end);
  return end && *end == 0;
}

Value f_int(const Value& v, CallArgs& a, Renderer&) {
  const Value* d = a.get("default", 0);
  const Value dflt = d ? *d : Value(int64_t{0});
  if (is_int(v)) return Value(v.integer());
  if (v.kind() == Value::Kind::Float) {
    const double x = v.number();
    if (!std::isfinite(x) || std::fabs(x) >= 9.2e18) return dflt;
    return Value(static_cast<int64_t>(x));
  }
  if (v.is_string()) {
    int64_t i;
    if (parse_int(v.str(), i)) return Value(i);
    double x;
    if (parse_float(v.str(), x) && std::isfinite(x) && std::fabs(x) < 9.2e18) return Value(static_cast<int64_t>(x));
  }
  return dflt;
}

Value f_float(const Value& v, CallArgs& a, Renderer&) {
  const Value* d = a.get("default", 0);
  if (v.is_number()) return Value(v.number());
  double x;
  if (v.is_string() && parse_float(v.str(), x)) return Value(x);
  return d ? *d : Value(0.0);
}

Value f_abs(const Value& v, CallArgs&, Renderer&) {
  if (v.kind() == Value::Kind::Float) return Value(std::fabs(v.number()));
  if (is_int(v)) {
    if (v.integer() == INT64_MIN) raise("integer overflow (rlcu's template integers are 64-bit)");
    return Value(v.integer() < 0 ? -v.integer() : v.integer());
  }
  raise(fmt::format("bad operand type for abs(): '{}'", v.type_name()));
}

Value f_round(const Value& v, CallArgs& a, Renderer&) {
  const Value* p = a.get("precision", 0);
  const Value* m = a.get("method", 1);
  const int64_t prec = p ? int_arg(*p, "precision") : 0;
  const std::string method = m ? to_str(*m) : "common";
  if (!v.is_number()) raise(fmt::format("round needs a number, not {}", v.type_name()));
  if (method == "common" && is_int(v) && prec >= 0) return Value(v.integer());
  const double x = v.number();
  if (method == "common" && prec >= 0 && prec <= 300 && std::isfinite(x)) {
    // Python rounds the exact binary value half to even (2.675 -> 2.67), which is what %.Nf prints.
    char buf[512];
    std::snprintf(buf, sizeof buf, "%.*f", static_cast<int>(prec), x);
    return Value(std::strtod(buf, nullptr));
  }
  const double scale = std::pow(10.0, static_cast<double>(prec));
  double y;
  if (method == "common") {
    y = std::nearbyint(x * scale);
  } else if (method == "ceil") {
    y = std::ceil(x * scale);
  } else if (method == "floor") {
    y = std::floor(x * scale);
  } else {
    raise("method must be common, ceil or floor");
  }
  return Value(y / scale);
}

Value f_escape(const Value& v, CallArgs&, Renderer& r) {
  std::string out;
  for (char c : to_str(v)) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&#34;"; break;
      case '\'': out += "&#39;"; break;
      default: out.push_back(c);
    }
  }
  return make_str(r, std::move(out));
}

Value f_indent(const Value& v, CallArgs& a, Renderer& r) {
  const Value* w = a.get("width", 0);
  std::string ind = w ? (is_int(*w) ? std::string(static_cast<size_t>(std::clamp<int64_t>(w->integer(), 0, 1000)), ' ')
                                    : to_str(*w))
                      : std::string(4, ' ');
  const bool first = flag(a, "first", 1);
  const bool blank = flag(a, "blank", 2);
  const List lines = py_splitlines(to_str(v) + "\n", false);
  std::string out;
  for (size_t i = 0; i < lines.size(); ++i) {
    const std::string& line = lines[i].str();
    if (i > 0) out += "\n";
    if ((i > 0 || first) && (blank || !line.empty())) out += ind;
    out += line;
    r.charge(out.size(), r.line, r.col);
  }
  return Value(std::move(out));
}

Value f_wordcount(const Value& v, CallArgs&, Renderer&) {
  int64_t n = 0;
  bool in_word = false;
  for (char32_t c : to_u32(to_str(v))) {
    const bool w = tok::is_word_char(c);
    if (w && !in_word) ++n;
    in_word = w;
  }
  return Value(n);
}

Value f_attr(const Value& v, CallArgs& a, Renderer&) {
  const Value* n = a.get("name", 0);
  if (!n) raise("attr needs a name");
  const std::string name = to_str(*n);
  if (v.is_dict() && !is_dict_method(name)) return Value::undefined(fmt::format("'dict object' has no attribute '{}'", name));
  return get_attr(v, name);
}

Value f_safe(const Value& v, CallArgs&, Renderer&) { return Value(to_str(v)); }

const std::map<std::string, FilterFn>& filters() {
  static const std::map<std::string, FilterFn> m = {
      {"abs", f_abs}, {"attr", f_attr}, {"capitalize", f_capitalize}, {"count", f_length}, {"d", f_default},
      {"default", f_default}, {"dictsort", f_dictsort}, {"e", f_escape}, {"escape", f_escape}, {"first", f_first},
      {"float", f_float}, {"indent", f_indent}, {"int", f_int}, {"items", f_items}, {"join", f_join},
      {"last", f_last}, {"length", f_length}, {"list", f_list}, {"lower", f_lower}, {"map", f_map}, {"max", f_max},
      {"min", f_min}, {"reject", f_reject}, {"rejectattr", f_rejectattr}, {"replace", f_replace},
      {"reverse", f_reverse}, {"round", f_round}, {"safe", f_safe}, {"select", f_select},
      {"selectattr", f_selectattr}, {"sort", f_sort}, {"string", f_string}, {"sum", f_sum}, {"title", f_title},
      {"tojson", f_tojson}, {"trim", f_trim}, {"unique", f_unique}, {"upper", f_upper}, {"wordcount", f_wordcount},
  };
  return m;
}

// ---- tests ---------------------------------------------------------------------------------------------------------------
const Value& test_arg(CallArgs& a, const char* test) {
  if (a.pos.empty()) raise(fmt::format("the test '{}' needs an argument", test));
  return a.pos[0];
}

bool t_defined(const Value& v, CallArgs&, Renderer&) { return !v.is_undefined(); }
bool t_undefined(const Value& v, CallArgs&, Renderer&) { return v.is_undefined(); }
bool t_none(const Value& v, CallArgs&, Renderer&) { return v.is_none(); }
bool t_boolean(const Value& v, CallArgs&, Renderer&) { return v.kind() == Value::Kind::Bool; }
bool t_false(const Value& v, CallArgs&, Renderer&) { return v.kind() == Value::Kind::Bool && !v.boolean(); }
bool t_true(const Value& v, CallArgs&, Renderer&) { return v.kind() == Value::Kind::Bool && v.boolean(); }
bool t_integer(const Value& v, CallArgs&, Renderer&) { return v.kind() == Value::Kind::Int; }
bool t_float(const Value& v, CallArgs&, Renderer&) { return v.kind() == Value::Kind::Float; }
bool t_number(const Value& v, CallArgs&, Renderer&) { return v.is_number(); }
bool t_string(const Value& v, CallArgs&, Renderer&) { return v.is_string(); }
bool t_mapping(const Value& v, CallArgs&, Renderer&) { return v.is_dict(); }
bool t_iterable(const Value& v, CallArgs&, Renderer&) {
  return v.is_undefined() || v.is_string() || v.is_sequence() || v.is_dict();
}
bool t_callable(const Value& v, CallArgs&, Renderer&) {
  return v.kind() == Value::Kind::Callable || v.is_undefined();
}
bool t_escaped(const Value&, CallArgs&, Renderer&) { return false; }
bool t_sameas(const Value& v, CallArgs& a, Renderer&) {
  const Value& o = test_arg(a, "sameas");
  if (v.kind() != o.kind()) return false;
  if (v.identity() || o.identity()) return v.identity() == o.identity();
  return py_equal(v, o);
}
bool t_eq(const Value& v, CallArgs& a, Renderer&) { return py_equal(v, test_arg(a, "eq")); }
bool t_ne(const Value& v, CallArgs& a, Renderer&) { return !py_equal(v, test_arg(a, "ne")); }
bool t_lt(const Value& v, CallArgs& a, Renderer&) { return order(v, test_arg(a, "lt"), "<") < 0; }
bool t_le(const Value& v, CallArgs& a, Renderer&) { return order(v, test_arg(a, "le"), "<=") <= 0; }
bool t_gt(const Value& v, CallArgs& a, Renderer&) { return order(v, test_arg(a, "gt"), ">") > 0; }
bool t_ge(const Value& v, CallArgs& a, Renderer&) { return order(v, test_arg(a, "ge"), ">=") >= 0; }
bool t_in(const Value& v, CallArgs& a, Renderer&) { return contains(test_arg(a, "in"), v); }
bool t_odd(const Value& v, CallArgs&, Renderer&) { return floor_mod(int_arg(v, "odd's value"), 2) == 1; }
bool t_even(const Value& v, CallArgs&, Renderer&) { return floor_mod(int_arg(v, "even's value"), 2) == 0; }
bool t_divisibleby(const Value& v, CallArgs& a, Renderer&) {
  return floor_mod(int_arg(v, "divisibleby's value"), int_arg(test_arg(a, "divisibleby"), "the divisor")) == 0;
}
bool t_lower(const Value& v, CallArgs& a, Renderer& r) {
  CallArgs none;
  return str_method(to_str(v), "islower", none, r).truthy();
}
bool t_upper(const Value& v, CallArgs& a, Renderer& r) {
  CallArgs none;
  return str_method(to_str(v), "isupper", none, r).truthy();
}
bool t_filter(const Value& v, CallArgs&, Renderer&) { return v.is_string() && filters().count(v.str()) > 0; }
bool t_test(const Value& v, CallArgs&, Renderer&);

const std::map<std::string, TestFn>& tests() {
  static const std::map<std::string, TestFn> m = {
      {"defined", t_defined}, {"undefined", t_undefined}, {"none", t_none}, {"boolean", t_boolean},
      {"false", t_false}, {"true", t_true}, {"integer", t_integer}, {"float", t_float}, {"number", t_number},
      {"string", t_string}, {"mapping", t_mapping}, {"iterable", t_iterable}, {"sequence", t_iterable},
      {"callable", t_callable}, {"sameas", t_sameas}, {"escaped", t_escaped}, {"eq", t_eq}, {"equalto", t_eq},
      {"==", t_eq}, {"ne", t_ne}, {"!=", t_ne}, {"lt", t_lt}, {"lessthan", t_lt}, {"<", t_lt}, {"le", t_le},
      {"<=", t_le}, {"gt", t_gt}, {"greaterthan", t_gt}, {">", t_gt}, {"ge", t_ge}, {">=", t_ge}, {"in", t_in},
      {"odd", t_odd}, {"even", t_even}, {"divisibleby", t_divisibleby}, {"lower", t_lower}, {"upper", t_upper},
      {"filter", t_filter}, {"test", t_test},
  };
  return m;
}
bool t_test(const Value& v, CallArgs&, Renderer&) { return v.is_string() && tests().count(v.str()) > 0; }

}  // namespace

Value apply_filter(const std::string& name, const Value& operand, CallArgs& args, Renderer& r) {
  const auto it = filters().find(name);
  if (it == filters().end()) raise(fmt::format("No filter named '{}' found.", name));
  return it->second(operand, args, r);
}

bool apply_test(const std::string& name, const Value& operand, CallArgs& args, Renderer& r) {
  const auto it = tests().find(name);
  if (it == tests().end()) raise(fmt::format("No test named '{}' found.", name));
  return it->second(operand, args, r);
}

// ---- globals -------------------------------------------------------------------------------------------------------------
namespace {

Value g_range(CallArgs& a, Renderer&) {
  if (!a.kw.empty() || a.pos.empty() || a.pos.size() > 3) raise("range() takes 1 to 3 integer arguments");
  int64_t start = 0, stop, step = 1;
  if (a.pos.size() == 1) {
    stop = int_arg(a.pos[0], "range()'s argument");
  } else {
    start = int_arg(a.pos[0], "range()'s start");
    stop = int_arg(a.pos[1], "range()'s stop");
    if (a.pos.size() == 3) step = int_arg(a.pos[2], "range()'s step");
  }
  if (step == 0) raise("range() arg 3 must not be zero");
  const double count = std::ceil((static_cast<double>(stop) - static_cast<double>(start)) / static_cast<double>(step));
  if (count > static_cast<double>(kMaxRange))
    raise(fmt::format("Range too big. The sandbox blocks ranges larger than MAX_RANGE ({}).", kMaxRange));
  List out;
  for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) out.emplace_back(i);
  return Value::list(std::move(out));
}

std::shared_ptr<Dict> kwargs_dict(CallArgs& a, const char* fn) {
  auto d = std::make_shared<Dict>();
  if (a.pos.size() > 1) raise(fmt::format("{}() takes at most one positional argument", fn));
  if (!a.pos.empty()) {
    if (!a.pos[0].is_dict()) raise(fmt::format("{}()'s positional argument must be a mapping", fn));
    *d = a.pos[0].dict();
  }
  for (const auto& [k, v] : a.kw) d->set(k, v);
  return d;
}

Value g_namespace(CallArgs& a, Renderer&) { return Value::namespace_(kwargs_dict(a, "namespace")); }
Value g_dict(CallArgs& a, Renderer&) { return Value::dict(kwargs_dict(a, "dict")); }

Value g_raise_exception(CallArgs& a, Renderer&) {
  throw RaisedError(a.pos.empty() ? std::string() : to_str(a.pos[0]));
}

Value g_strftime_now(CallArgs& a, Renderer& r) {
  if (a.pos.size() != 1) raise("strftime_now() takes one format argument");
  const std::string fmt_str = to_str(a.pos[0]);
  std::tm tm{};
  if (r.options().now) {
    tm = *r.options().now;
  } else {
    const std::time_t t = std::time(nullptr);
    localtime_r(&t, &tm);
  }
  if (fmt_str.empty()) return Value("");
  for (size_t cap = 256; cap <= 65536; cap *= 4) {
    std::string buf(cap, '\0');
    const size_t n = std::strftime(buf.data(), buf.size(), fmt_str.c_str(), &tm);
    if (n > 0) {
      buf.resize(n);
      return Value(std::move(buf));
    }
  }
  return Value("");
}

void add(Scope& s, const char* name, Value (*f)(CallArgs&, Renderer&)) {
  auto fn = std::make_shared<Callable>();
  fn->name = name;
  fn->call = f;
  s.set(name, Value::callable(std::move(fn)));
}

}  // namespace

void add_globals(Scope& s) {
  add(s, "range", g_range);
  add(s, "namespace", g_namespace);
  add(s, "dict", g_dict);
  add(s, "raise_exception", g_raise_exception);
  add(s, "strftime_now", g_strftime_now);
}

}  // namespace rlcu::jinja
