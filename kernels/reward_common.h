// Per-completion reward logic shared by kernels/cpu/reward.cpp and kernels/reward.cu, so that both give the same
// value for the same bytes (the rules are written out in include/rlcu/reward_ops.h):
//   math_answer_value(text, answer)   final-answer extraction, normalisation and numeric/string comparison
//   exact_match_value(text, answer)   trimmed byte equality
//   contains_value(text, needle)      byte substring search
//   format_value(text, tags, K)       ordered, non-overlapping tag occurrence
//   length_value(n, L, C)             DAPO overlong penalty
//   countdown_value(text, answer)     the countdown expression check (parse, number use, exact integer value)
// All functions read raw byte ranges [b, e) of one buffer, allocate nothing and use only integer arithmetic and
// single correctly rounded fp64 operations (no expression that a compiler could contract into an FMA), so host and
// device results are bit-identical. Plain C++ when not compiled by nvcc.
#pragma once

#include <cstdint>

#include "philox.h"  // RLCU_HD

namespace rlcu::reward_detail {

struct Span {
  int64_t b, e;  // [b, e)
};

// Element i of an I32 or I64 index array.
RLCU_HD int64_t load_index(const void* p, bool is64, int64_t i) {
  return is64 ? static_cast<const int64_t*>(p)[i] : static_cast<int64_t>(static_cast<const int32_t*>(p)[i]);
}

RLCU_HD bool is_space(uint8_t c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }
RLCU_HD bool is_digit(uint8_t c) { return c >= '0' && c <= '9'; }
RLCU_HD bool is_alnum(uint8_t c) { return is_digit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }

RLCU_HD Span trim(const uint8_t* s, Span x) {
  while (x.b < x.e && is_space(s[x.b])) ++x.b;
  while (x.e > x.b && is_space(s[x.e - 1])) --x.e;
  return x;
}

// Does s[pos, e) start with the n bytes of lit?
RLCU_HD bool has_at(const uint8_t* s, int64_t pos, int64_t e, const uint8_t* lit, int64_t n) {
  if (pos < 0 || e - pos < n) return false;
  for (int64_t k = 0; k < n; ++k)
    if (s[pos + k] != lit[k]) return false;
  return true;
}
RLCU_HD bool has_lit(const uint8_t* s, int64_t pos, int64_t e, const char* lit) {
  int64_t n = 0;
  while (lit[n]) ++n;
  return has_at(s, pos, e, reinterpret_cast<const uint8_t*>(lit), n);
}

// First occurrence of needle[0, n) in s[from, e), or -1.
RLCU_HD int64_t find_first(const uint8_t* s, int64_t from, int64_t e, const uint8_t* needle, int64_t n) {
  for (int64_t p = from; p + n <= e; ++p)
    if (has_at(s, p, e, needle, n)) return p;
  return -1;
}

// Last occurrence of the literal in s[b, e), or -1.
RLCU_HD int64_t find_last_lit(const uint8_t* s, int64_t b, int64_t e, const char* lit) {
  int64_t n = 0;
  while (lit[n]) ++n;
  for (int64_t p = e - n; p >= b; --p)
    if (has_at(s, p, e, reinterpret_cast<const uint8_t*>(lit), n)) return p;
  return -1;
}

// Unsigned decimal starting at i: digits with thousands groups `,ddd` (three digits, then a non-digit), then an
// optional `.digits`; or `.digits` alone. Returns the end, or i when none starts at i.
RLCU_HD int64_t scan_decimal(const uint8_t* s, int64_t i, int64_t e) {
  int64_t j = i;
  while (j < e && is_digit(s[j])) ++j;
  const bool int_digits = j > i;
  if (int_digits) {
    while (j + 3 < e && s[j] == ',' && is_digit(s[j + 1]) && is_digit(s[j + 2]) && is_digit(s[j + 3]) &&
           (j + 4 >= e || !is_digit(s[j + 4])))
      j += 4;
  }
  if (j + 1 < e && s[j] == '.' && is_digit(s[j + 1])) {
    j += 1;
    while (j < e && is_digit(s[j])) ++j;
  } else if (!int_digits) {
    return i;
  }
  return j;
}

// A number token at i (i holds a digit, or `.` before a digit): the decimal plus an optional `/decimal`, with a
// preceding `-` included when the byte before it is not a letter or digit. Returns the span; sets *next to the end.
RLCU_HD Span number_token_at(const uint8_t* s, int64_t b, int64_t i, int64_t e, int64_t* next) {
  int64_t k = scan_decimal(s, i, e);
  if (k < e && s[k] == '/') {
    const int64_t k2 = scan_decimal(s, k + 1, e);
    if (k2 > k + 1) k = k2;
  }
  int64_t start = i;
  if (i > b && s[i - 1] == '-' && (i - 1 == b || !is_alnum(s[i - 2]))) start = i - 1;
  *next = k;
  return Span{start, k};
}

RLCU_HD bool number_starts_at(const uint8_t* s, int64_t i, int64_t e) {
  return is_digit(s[i]) || (s[i] == '.' && i + 1 < e && is_digit(s[i + 1]));
}

// The last number token of s[b, e); {-1, -1} when none.
RLCU_HD Span last_number(const uint8_t* s, int64_t b, int64_t e) {
  Span last{-1, -1};
  int64_t i = b;
  while (i < e) {
    if (number_starts_at(s, i, e)) {
      int64_t next = i;
      last = number_token_at(s, b, i, e, &next);
      i = next > i ? next : i + 1;
    } else {
      ++i;
    }
  }
  return last;
}

// The final-answer candidate of a completion: last balanced \boxed{...}, else the number after the last `#### `,
// else the last number. {-1, -1} when none.
RLCU_HD Span extract_answer(const uint8_t* s, int64_t b, int64_t e) {
  for (int64_t p = find_last_lit(s, b, e, "\\boxed{"); p >= 0; p = find_last_lit(s, b, p, "\\boxed{")) {
    const int64_t open = p + 7;
    int depth = 1;
    for (int64_t j = open; j < e; ++j) {
      if (s[j] == '{') {
        ++depth;
      } else if (s[j] == '}') {
        if (--depth == 0) return Span{open, j};
      }
    }
  }
  const int64_t h = find_last_lit(s, b, e, "#### ");
  if (h >= 0) {
    int64_t j = h + 5;
    while (j < e && (s[j] == ' ' || s[j] == '\t' || s[j] == '$')) ++j;
    int64_t sign = -1;
    if (j < e && (s[j] == '-' || s[j] == '+')) sign = j++;
    if (j < e && number_starts_at(s, j, e)) {
      int64_t next = j;
      Span t = number_token_at(s, b, j, e, &next);
      if (sign >= 0) t.b = sign;
      return t;
    }
  }
  return last_number(s, b, e);
}

// ---- numeric normalisation ----------------------------------------------------------------------------------
constexpr int kNumBuf = 64;

struct Numeric {
  bool ok;
  double value;
};

// Decimal digits of buf[b, e) (commas skipped, one optional `.`) as fp64: up to 19 significant digits in a uint64,
// scaled by 10^k computed by repeated multiplication, applied with one multiply or divide.
RLCU_HD double decimal_value(const char* buf, int b, int e) {
  uint64_t m = 0;
  int sig = 0, exp10 = 0;
  bool frac = false;
  for (int i = b; i < e; ++i) {
    const char c = buf[i];
    if (c == ',') continue;
    if (c == '.') {
      frac = true;
      continue;
    }
    const uint64_t d = static_cast<uint64_t>(c - '0');
    if (m == 0 && d == 0) {
      if (frac) --exp10;
      continue;
    }
    if (sig < 19) {
      m = m * 10u + d;
      ++sig;
      if (frac) --exp10;
    } else if (!frac) {
      ++exp10;
    }
  }
  const double v = static_cast<double>(m);
  double p = 1.0;
  const int k = exp10 < 0 ? -exp10 : exp10;
  for (int i = 0; i < k; ++i) p = p * 10.0;
  return exp10 < 0 ? v / p : v * p;
}

// Signed decimal in buf[i, e): optional sign, then a full scan_decimal. Returns the end or -1.
RLCU_HD int scan_signed(const char* buf, int i, int e, double* value) {
  bool neg = false;
  if (i < e && (buf[i] == '-' || buf[i] == '+')) {
    neg = buf[i] == '-';
    ++i;
  }
  const uint8_t* u = reinterpret_cast<const uint8_t*>(buf);
  const int j = static_cast<int>(scan_decimal(u, i, e));
  if (j == i) return -1;
  const double v = decimal_value(buf, i, j);
  *value = neg ? -v : v;
  return j;
}

// Normalises s[x.b, x.e) (see reward.h) into buf and parses it as a number.
RLCU_HD Numeric parse_numeric(const uint8_t* s, Span x) {
  char buf[kNumBuf];
  int n = 0;
  for (int64_t i = x.b; i < x.e; ++i) {
    const uint8_t c = s[i];
    if (is_space(c) || c == '$' || c == '%') continue;
    if (c == '\\' && i + 1 < x.e) {
      const uint8_t d = s[i + 1];
      if (d == '$' || d == '%' || d == '!' || d == ',' || d == ';') {
        ++i;
        continue;
      }
    }
    if (n == kNumBuf - 1) return Numeric{false, 0.0};
    buf[n++] = static_cast<char>(c);
  }
  while (n > 0 && buf[n - 1] == '.') --n;
  int i = 0;
  if (i < n && buf[i] == '+') ++i;
  bool neg = false;
  if (i < n && buf[i] == '-') {
    neg = true;
    ++i;
  }
  if (i >= n) return Numeric{false, 0.0};
  const uint8_t* u = reinterpret_cast<const uint8_t*>(buf);
  double num = 0.0, den = 1.0;
  bool is_frac = false;
  const char* fr[3] = {"\\frac{", "\\dfrac{", "\\tfrac{"};
  for (int f = 0; f < 3 && !is_frac; ++f) {
    if (!has_lit(u, i, n, fr[f])) continue;
    int j = i + (f == 0 ? 6 : 7);
    j = scan_signed(buf, j, n, &num);
    if (j < 0 || j + 1 >= n || buf[j] != '}' || buf[j + 1] != '{') return Numeric{false, 0.0};
    j = scan_signed(buf, j + 2, n, &den);
    if (j < 0 || j + 1 != n || buf[j] != '}') return Numeric{false, 0.0};
    is_frac = true;
  }
  if (!is_frac) {
    int j = static_cast<int>(scan_decimal(u, i, n));
    if (j == i) return Numeric{false, 0.0};
    num = decimal_value(buf, i, j);
    if (j < n && buf[j] == '/') {
      const int k = static_cast<int>(scan_decimal(u, j + 1, n));
      if (k == j + 1) return Numeric{false, 0.0};
      den = decimal_value(buf, j + 1, k);
      j = k;
      is_frac = true;
    }
    if (j != n) return Numeric{false, 0.0};
  }
  if (is_frac) {
    if (den == 0.0) return Numeric{false, 0.0};
    num = num / den;
  }
  return Numeric{true, neg ? -num : num};
}

RLCU_HD bool numbers_close(double a, double b) {
  if (a == b) return true;
  const double da = a < 0 ? -a : a, db = b < 0 ? -b : b;
  const double diff = a - b;
  const double ad = diff < 0 ? -diff : diff;
  const double m = da > db ? da : db;
  const double lim = 1e-6 * m;
  return ad <= lim;
}

RLCU_HD bool bytes_equal(const uint8_t* a, Span x, const uint8_t* b, Span y) {
  if (x.e - x.b != y.e - y.b) return false;
  for (int64_t k = 0; k < x.e - x.b; ++k)
    if (a[x.b + k] != b[y.b + k]) return false;
  return true;
}

// ---- components (one completion each) -------------------------------------------------------------------------
RLCU_HD float math_answer_value(const uint8_t* text, Span t, const uint8_t* ans, Span a) {
  const int64_t h = find_last_lit(ans, a.b, a.e, "#### ");
  if (h >= 0) a.b = h + 5;
  a = trim(ans, a);
  if (a.b >= a.e) return 0.0f;
  Span c = extract_answer(text, t.b, t.e);
  if (c.b < 0) return 0.0f;
  const Numeric x = parse_numeric(text, c);
  const Numeric y = parse_numeric(ans, a);
  if (x.ok && y.ok) return numbers_close(x.value, y.value) ? 1.0f : 0.0f;
  return bytes_equal(text, trim(text, c), ans, a) ? 1.0f : 0.0f;
}

RLCU_HD float exact_match_value(const uint8_t* text, Span t, const uint8_t* ans, Span a) {
  return bytes_equal(text, trim(text, t), ans, trim(ans, a)) ? 1.0f : 0.0f;
}

RLCU_HD float contains_value(const uint8_t* text, Span t, const uint8_t* needle, Span n) {
  if (n.e <= n.b) return 0.0f;
  return find_first(text, t.b, t.e, needle + n.b, n.e - n.b) >= 0 ? 1.0f : 0.0f;
}

// tags: bytes + offsets [K+1].
RLCU_HD float format_value(const uint8_t* text, Span t, const uint8_t* tags, const int64_t* tag_offsets, int64_t K) {
  int64_t pos = t.b;
  for (int64_t k = 0; k < K; ++k) {
    const int64_t len = tag_offsets[k + 1] - tag_offsets[k];
    const int64_t p = find_first(text, pos, t.e, tags + tag_offsets[k], len);
    if (p < 0) return 0.0f;
    pos = p + len;
  }
  return 1.0f;
}

RLCU_HD float length_value(int64_t n, int64_t L, int64_t C) {
  if (n > L) return -1.0f;
  if (n <= L - C) return 0.0f;
  return static_cast<float>(static_cast<double>(L - C - n) / static_cast<double>(C));
}

// ---- countdown --------------------------------------------------------------------------------------------------
constexpr int kCountdownMaxNumbers = 16;              // given numbers in a reference
constexpr int kCountdownMaxStack = 64;                // pending operators / operands of an expression
constexpr int64_t kCountdownLimit = 1000000000000000;  // |value| of every intermediate (10^15)

// Reference "n1 n2 ... nk -> target": k in [1, 16] unsigned integers below 10^9 separated by spaces, tabs or
// commas, `->`, then the target (an optional `-` and digits, below 10^15); whitespace around everything.
RLCU_HD bool countdown_reference(const uint8_t* s, Span a, int64_t* nums, int* count, int64_t* target) {
  a = trim(s, a);
  int64_t i = a.b;
  *count = 0;
  for (;;) {
    while (i < a.e && (is_space(s[i]) || s[i] == ',')) ++i;
    if (i + 1 < a.e && s[i] == '-' && s[i + 1] == '>') break;
    if (i >= a.e || !is_digit(s[i]) || *count == kCountdownMaxNumbers) return false;
    int64_t v = 0;
    int digits = 0;
    while (i < a.e && is_digit(s[i])) {
      if (++digits > 9) return false;
      v = v * 10 + (s[i++] - '0');
    }
    nums[(*count)++] = v;
  }
  if (*count == 0) return false;
  i += 2;
  while (i < a.e && is_space(s[i])) ++i;
  bool neg = false;
  if (i < a.e && s[i] == '-') {
    neg = true;
    ++i;
  }
  if (i >= a.e || !is_digit(s[i])) return false;
  int64_t v = 0;
  int digits = 0;
  while (i < a.e && is_digit(s[i])) {
    if (++digits > 15) return false;
    v = v * 10 + (s[i++] - '0');
  }
  if (i != a.e) return false;
  *target = neg ? -v : v;
  return true;
}

// The operator at s[i]: 1 `+`, 2 `-` or U+2212, 3 `*`, U+00D7, `\times` or `\cdot`, 4 `/`, U+00F7 or `\div`;
// 0 when none. *len receives its byte length.
RLCU_HD int countdown_operator(const uint8_t* s, int64_t i, int64_t e, int64_t* len) {
  *len = 1;
  if (s[i] == '+') return 1;
  if (s[i] == '-') return 2;
  if (s[i] == '*') return 3;
  if (s[i] == '/') return 4;
  *len = 2;
  if (has_lit(s, i, e, "\xC3\x97")) return 3;
  if (has_lit(s, i, e, "\xC3\xB7")) return 4;
  *len = 3;
  if (has_lit(s, i, e, "\xE2\x88\x92")) return 2;
  *len = 6;
  if (has_lit(s, i, e, "\\times")) return 3;
  *len = 5;
  if (has_lit(s, i, e, "\\cdot")) return 3;
  *len = 4;
  if (has_lit(s, i, e, "\\div")) return 4;
  return 0;
}

// a op b with exact integers: false on division by zero, a division with a remainder or |result| > 10^15.
RLCU_HD bool countdown_apply(int op, int64_t a, int64_t b, int64_t* out) {
  const int64_t L = kCountdownLimit;
  if (op == 1) {
    *out = a + b;
  } else if (op == 2) {
    *out = a - b;
  } else if (op == 3) {
    const int64_t ua = a < 0 ? -a : a, ub = b < 0 ? -b : b;
    if (ua != 0 && ub > L / ua) return false;
    *out = a * b;
  } else {
    if (b == 0 || a % b != 0) return false;
    *out = a / b;
  }
  return *out <= L && *out >= -L;
}

// Pops one operator and its two operands and pushes the result.
RLCU_HD bool countdown_reduce(int* ops, int* nops, int64_t* vals, int* nvals) {
  if (*nops == 0 || *nvals < 2 || ops[*nops - 1] == 0) return false;
  const int op = ops[--*nops];
  const int64_t b = vals[--*nvals], a = vals[*nvals - 1];
  return countdown_apply(op, a, b, &vals[*nvals - 1]);
}

// Evaluates the expression s[x.b, x.e) (unsigned integers, + - * / in their usual precedence, left to right, and
// parentheses; whitespace anywhere) with every integer literal taken from `nums` (each at most once: `used` marks
// them). Shunting-yard with fixed stacks (no recursion on the device). False when it does not parse or any step
// fails (countdown_apply).
RLCU_HD bool countdown_eval(const uint8_t* s, Span x, const int64_t* nums, int count, int64_t* value) {
  bool used[kCountdownMaxNumbers] = {};
  int ops[kCountdownMaxStack];  // 0 = `(`, else countdown_operator's code
  int64_t vals[kCountdownMaxStack];
  int nops = 0, nvals = 0;
  bool want_operand = true;
  int64_t i = x.b;
  while (i < x.e) {
    const uint8_t c = s[i];
    int64_t len = 0;
    if (is_space(c)) {
      ++i;
    } else if (is_digit(c)) {
      if (!want_operand || nvals == kCountdownMaxStack) return false;
      int64_t v = 0;
      int digits = 0;
      while (i < x.e && is_digit(s[i])) {
        if (++digits > 9) return false;
        v = v * 10 + (s[i++] - '0');
      }
      int k = 0;
      while (k < count && (used[k] || nums[k] != v)) ++k;
      if (k == count) return false;  // not a given number, or all its copies are used
      used[k] = true;
      vals[nvals++] = v;
      want_operand = false;
    } else if (c == '(') {
      if (!want_operand || nops == kCountdownMaxStack) return false;
      ops[nops++] = 0;
      ++i;
    } else if (c == ')') {
      if (want_operand) return false;
      while (nops > 0 && ops[nops - 1] != 0)
        if (!countdown_reduce(ops, &nops, vals, &nvals)) return false;
      if (nops == 0) return false;
      --nops;
      ++i;
    } else {
      const int op = countdown_operator(s, i, x.e, &len);
      if (op == 0 || want_operand) return false;
      const int prec = op >= 3 ? 2 : 1;
      while (nops > 0 && ops[nops - 1] != 0 && (ops[nops - 1] >= 3 ? 2 : 1) >= prec)
        if (!countdown_reduce(ops, &nops, vals, &nvals)) return false;
      if (nops == kCountdownMaxStack) return false;
      ops[nops++] = op;
      want_operand = true;
      i += len;
    }
  }
  if (want_operand) return false;
  while (nops > 0)
    if (!countdown_reduce(ops, &nops, vals, &nvals)) return false;
  if (nvals != 1) return false;
  *value = vals[0];
  return true;
}

// The expression of a countdown completion: the content of the last balanced `\boxed{...}` when it holds an operator
// (up to a `=` in it), else the text before the first `=` of the last line that has one; trimmed. {-1, -1} if none.
RLCU_HD Span countdown_candidate(const uint8_t* s, Span t) {
  for (int64_t p = find_last_lit(s, t.b, t.e, "\\boxed{"); p >= 0; p = find_last_lit(s, t.b, p, "\\boxed{")) {
    const int64_t open = p + 7;
    int depth = 1;
    int64_t close = -1;
    for (int64_t j = open; j < t.e && close < 0; ++j) {
      if (s[j] == '{') ++depth;
      if (s[j] == '}' && --depth == 0) close = j;
    }
    if (close < 0) continue;
    int64_t end = close;
    bool has_op = false;
    for (int64_t j = open; j < close; ++j) {
      int64_t len = 0;
      if (s[j] == '=') {
        end = j;
        break;
      }
      if (countdown_operator(s, j, close, &len) != 0) has_op = true;
    }
    if (has_op) return trim(s, Span{open, end});
    break;
  }
  for (int64_t line_end = t.e; line_end > t.b;) {
    int64_t line_begin = line_end;
    while (line_begin > t.b && s[line_begin - 1] != '\n') --line_begin;
    for (int64_t j = line_begin; j < line_end; ++j)
      if (s[j] == '=') return trim(s, Span{line_begin, j});
    line_end = line_begin - 1;
  }
  return Span{-1, -1};
}

RLCU_HD float countdown_value(const uint8_t* text, Span t, const uint8_t* ans, Span a) {
  int64_t nums[kCountdownMaxNumbers];
  int count = 0;
  int64_t target = 0, value = 0;
  if (!countdown_reference(ans, a, nums, &count, &target)) return 0.0f;
  const Span c = countdown_candidate(text, t);
  if (c.b < 0 || c.b >= c.e) return 0.0f;
  return countdown_eval(text, c, nums, count, &value) && value == target ? 1.0f : 0.0f;
}

}  // namespace rlcu::reward_detail
