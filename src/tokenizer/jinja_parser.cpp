// Jinja parser: tokens -> syntax tree (jinja_ast.h), following jinja2's grammar and precedence:
//
//   expression := or ('if' or ('else' expression)?)*          (a missing else gives undefined)
//   or := and ('or' and)*      and := not ('and' not)*        not := 'not' not | compare
//   compare := math1 (('=='|'!='|'<'|'<='|'>'|'>='|'in'|'not' 'in') math1)*     (chains like Python)
//   math1 := concat (('+'|'-') concat)*     concat := math2 ('~' math2)*
//   math2 := pow (('*'|'/'|'//'|'%') pow)*  pow := unary ('**' unary)*
//   unary := ('-'|'+') unary | primary postfix* (filter | test | call)*
//
// so filters and tests bind tighter than every binary operator (`a + b | trim` trims b). Statements: if / elif /
// else, for (tuple targets, `if` filter, else), set (names, tuples, namespace attributes, blocks), macro,
// filter blocks, with, break / continue (loopcontrols) and transformers' generation tag.
#include <algorithm>

#include "jinja_ast.h"

namespace rlcu::jinja {

namespace {

class Parser {
 public:
  Parser(const std::vector<Token>& toks, TemplateImpl& out) : t_(toks), out_(out) {}

  void run() {
    std::string end;
    out_.body = body({}, &end);
  }

 private:
  // ---- token helpers -------------------------------------------------------------------------------------------
  const Token& cur() const { return t_[i_]; }
  const Token& peek(size_t k = 1) const { return t_[std::min(i_ + k, t_.size() - 1)]; }
  const Token& next() {
    const Token& t = t_[i_];
    if (i_ + 1 < t_.size()) ++i_;
    return t;
  }
  bool is_op(const char* op) const { return cur().type == Tok::Op && cur().text == op; }
  bool is_name(const char* n) const { return cur().type == Tok::Name && cur().text == n; }
  bool skip_op(const char* op) {
    if (!is_op(op)) return false;
    next();
    return true;
  }
  bool skip_name(const char* n) {
    if (!is_name(n)) return false;
    next();
    return true;
  }
  [[noreturn]] void fail(const Token& t, const std::string& what) const { fail_at(out_.name, t.line, t.col, what); }
  static std::string describe(const Token& t) {
    switch (t.type) {
      case Tok::Eof: return "end of template";
      case Tok::BlockEnd: return "end of statement block";
      case Tok::VarEnd: return "end of print statement";
      case Tok::String: return "string literal";
      case Tok::Data: return "template data";
      default: return "'" + t.text + "'";
    }
  }
  void expect_op(const char* op) {
    if (!skip_op(op)) fail(cur(), fmt::format("expected '{}', got {}", op, describe(cur())));
  }
  std::string expect_name() {
    if (cur().type != Tok::Name) fail(cur(), fmt::format("expected a name, got {}", describe(cur())));
    return next().text;
  }
  void expect_block_end() {
    if (cur().type != Tok::BlockEnd) fail(cur(), fmt::format("expected end of statement block, got {}", describe(cur())));
    next();
  }

  struct DepthGuard {
    DepthGuard(Parser& p) : p_(p) {
      if (++p_.depth_ > kMaxParseDepth) p_.fail(p_.cur(), "the template is nested too deeply");
    }
    ~DepthGuard() { --p_.depth_; }
    Parser& p_;
  };

  ExprPtr node(ExprKind k, const Token& at) {
    auto e = std::make_unique<Expr>();
    e->kind = k;
    e->line = at.line;
    e->col = at.col;
    return e;
  }
  ExprPtr node2(ExprKind k, const Token& at, ExprPtr a, ExprPtr b) {
    ExprPtr e = node(k, at);
    e->args.push_back(std::move(a));
    e->args.push_back(std::move(b));
    return e;
  }
  StmtPtr stmt(StmtKind k, const Token& at) {
    auto s = std::make_unique<Stmt>();
    s->kind = k;
    s->line = at.line;
    s->col = at.col;
    return s;
  }

  // ---- statements ----------------------------------------------------------------------------------------------
  // Parses until a block tag named in `ends` (consuming `{%` and the name; the caller parses the rest of that tag).
  Body body(const std::vector<std::string>& ends, std::string* which, const char* innermost = nullptr) {
    DepthGuard g(*this);
    Body out;
    while (true) {
      const Token& t = cur();
      if (t.type == Tok::Eof) {
        if (ends.empty()) return out;
        std::string list;
        for (size_t k = 0; k < ends.size(); ++k)
          list += (k ? (k + 1 == ends.size() ? " or '" : ", '") : "'") + ends[k] + "'";
        fail(t, fmt::format("unexpected end of template: looking for the tag {} to close the '{}' block", list,
                            innermost ? innermost : "?"));
      }
      if (t.type == Tok::Data) {
        StmtPtr s = stmt(StmtKind::Text, t);
        s->text = t.text;
        out.push_back(std::move(s));
        next();
      } else if (t.type == Tok::VarBegin) {
        next();
        StmtPtr s = stmt(StmtKind::Print, t);
        s->exprs.push_back(tuple_expr(true, {}));
        if (cur().type != Tok::VarEnd) fail(cur(), fmt::format("expected end of print statement, got {}", describe(cur())));
        next();
        out.push_back(std::move(s));
      } else if (t.type == Tok::BlockBegin) {
        const Token& name = peek();
        if (name.type == Tok::Name && std::find(ends.begin(), ends.end(), name.text) != ends.end()) {
          next();
          *which = next().text;
          return out;
        }
        next();
        out.push_back(statement());
      } else {
        fail(t, fmt::format("unexpected {}", describe(t)));
      }
    }
  }

  StmtPtr statement() {
    const Token& t = cur();
    if (t.type != Tok::Name) fail(t, fmt::format("expected a tag name, got {}", describe(t)));
    const std::string n = t.text;
    if (n == "if") return if_stmt();
    if (n == "for") return for_stmt();
    if (n == "set") return set_stmt();
    if (n == "macro") return macro_stmt();
    if (n == "filter") return filter_stmt();
    if (n == "with") return with_stmt();
    if (n == "generation") {
      next();
      expect_block_end();
      StmtPtr s = stmt(StmtKind::Generation, t);
      std::string end;
      s->bodies.push_back(body({"endgeneration"}, &end, "generation"));
      expect_block_end();
      out_.has_generation = true;
      return s;
    }
    if (n == "break" || n == "continue") {
      if (loops_ == 0) fail(t, fmt::format("'{}' outside a for loop", n));
      next();
      expect_block_end();
      return stmt(n == "break" ? StmtKind::Break : StmtKind::Continue, t);
    }
    fail(t, fmt::format("unknown or unsupported tag '{}'", n));
  }

  StmtPtr if_stmt() {
    StmtPtr s = stmt(StmtKind::If, cur());
    next();
    while (true) {
      s->exprs.push_back(tuple_expr(false, {}));
      expect_block_end();
      std::string which;
      s->bodies.push_back(body({"elif", "else", "endif"}, &which, "if"));
      if (which == "elif") continue;
      if (which == "else") {
        expect_block_end();
        s->bodies.push_back(body({"endif"}, &which, "if"));
      }
      expect_block_end();
      return s;
    }
  }

  // Assignment targets: a name, or names separated by commas (optionally in parentheses).
  std::vector<std::string> targets() {
    std::vector<std::string> names;
    const bool paren = skip_op("(");
    do {
      if (paren && is_op(")")) break;
      names.push_back(expect_name());
    } while (skip_op(","));
    if (paren) expect_op(")");
    return names;
  }

  StmtPtr for_stmt() {
    StmtPtr s = stmt(StmtKind::For, cur());
    next();
    s->names = targets();
    if (!skip_name("in")) fail(cur(), fmt::format("expected 'in', got {}", describe(cur())));
    s->exprs.push_back(tuple_expr(false, {"recursive"}));
    s->exprs.push_back(skip_name("if") ? expression(true) : nullptr);
    if (is_name("recursive")) fail(cur(), "recursive for loops are not supported");
    expect_block_end();
    ++loops_;
    const int refs = loop_refs_;
    std::string which;
    s->bodies.push_back(body({"endfor", "else"}, &which, "for"));
    if (loop_refs_ > refs) s->attr = "loop";
    --loops_;
    Body else_body;
    if (which == "else") {
      expect_block_end();
      else_body = body({"endfor"}, &which, "for");  // break/continue here belong to an enclosing loop
    }
    s->bodies.push_back(std::move(else_body));
    expect_block_end();
    return s;
  }

  StmtPtr set_stmt() {
    const Token& at = cur();
    next();
    if (cur().type == Tok::Name && peek().type == Tok::Op && peek().text == ".") {
      StmtPtr s = stmt(StmtKind::Set, at);
      s->names.push_back(next().text);
      next();
      s->attr = expect_name();
      expect_op("=");
      s->exprs.push_back(tuple_expr(true, {}));
      expect_block_end();
      return s;
    }
    std::vector<std::string> names = targets();
    if (skip_op("=")) {
      StmtPtr s = stmt(StmtKind::Set, at);
      s->names = std::move(names);
      s->exprs.push_back(tuple_expr(true, {}));
      expect_block_end();
      return s;
    }
    if (names.size() != 1) fail(cur(), "a block set assigns one name");
    StmtPtr s = stmt(StmtKind::SetBlock, at);
    s->names = std::move(names);
    s->exprs.push_back(is_op("|") ? filter_chain(nullptr, false) : nullptr);
    expect_block_end();
    std::string which;
    s->bodies.push_back(body({"endset"}, &which, "set"));
    expect_block_end();
    return s;
  }

  StmtPtr macro_stmt() {
    StmtPtr s = stmt(StmtKind::Macro, cur());
    next();
    s->names.push_back(expect_name());
    expect_op("(");
    while (!is_op(")")) {
      if (!s->params.empty()) expect_op(",");
      if (is_op(")")) break;
      s->params.push_back(expect_name());
      s->exprs.push_back(skip_op("=") ? expression(true) : nullptr);
    }
    expect_op(")");
    expect_block_end();
    const int saved = loops_;
    loops_ = 0;
    std::string which;
    s->bodies.push_back(body({"endmacro"}, &which, "macro"));
    loops_ = saved;
    expect_block_end();
    return s;
  }

  StmtPtr filter_stmt() {
    StmtPtr s = stmt(StmtKind::FilterBlock, cur());
    next();
    s->exprs.push_back(filter_chain(nullptr, true));
    expect_block_end();
    std::string which;
    s->bodies.push_back(body({"endfilter"}, &which, "filter"));
    expect_block_end();
    return s;
  }

  StmtPtr with_stmt() {
    StmtPtr s = stmt(StmtKind::With, cur());
    next();
    while (cur().type != Tok::BlockEnd) {
      if (!s->names.empty()) expect_op(",");
      s->names.push_back(expect_name());
      expect_op("=");
      s->exprs.push_back(expression(true));
    }
    expect_block_end();
    std::string which;
    s->bodies.push_back(body({"endwith"}, &which, "with"));
    expect_block_end();
    return s;
  }

  // ---- expressions ---------------------------------------------------------------------------------------------
  bool tuple_end(const std::vector<std::string>& extra) const {
    const Token& t = cur();
    if (t.type == Tok::VarEnd || t.type == Tok::BlockEnd || t.type == Tok::Eof) return true;
    if (t.type == Tok::Op && t.text == ")") return true;
    return t.type == Tok::Name && std::find(extra.begin(), extra.end(), t.text) != extra.end();
  }

  ExprPtr tuple_expr(bool with_condexpr, const std::vector<std::string>& extra, bool explicit_parens = false) {
    const Token& at = cur();
    std::vector<ExprPtr> items;
    bool is_tuple = false;
    while (true) {
      if (!items.empty()) expect_op(",");
      if (tuple_end(extra)) break;
      items.push_back(expression(with_condexpr));
      if (is_op(",")) {
        is_tuple = true;
      } else {
        break;
      }
    }
    if (!is_tuple) {
      if (!items.empty()) return std::move(items[0]);
      if (!explicit_parens) fail(cur(), fmt::format("expected an expression, got {}", describe(cur())));
    }
    ExprPtr e = node(ExprKind::Tuple, at);
    e->args = std::move(items);
    return e;
  }

  ExprPtr expression(bool with_condexpr) {
    DepthGuard g(*this);
    if (!with_condexpr) return or_expr();
    ExprPtr e = or_expr();
    while (is_name("if")) {
      const Token& at = next();
      ExprPtr cond = or_expr();
      ExprPtr other = skip_name("else") ? expression(true) : nullptr;
      ExprPtr c = node(ExprKind::Cond, at);
      c->args.push_back(std::move(e));
      c->args.push_back(std::move(cond));
      c->args.push_back(std::move(other));
      e = std::move(c);
    }
    return e;
  }

  ExprPtr or_expr() {
    ExprPtr l = and_expr();
    while (is_name("or")) {
      const Token& at = next();
      l = node2(ExprKind::Or, at, std::move(l), and_expr());
    }
    return l;
  }
  ExprPtr and_expr() {
    ExprPtr l = not_expr();
    while (is_name("and")) {
      const Token& at = next();
      l = node2(ExprKind::And, at, std::move(l), not_expr());
    }
    return l;
  }
  ExprPtr not_expr() {
    if (is_name("not")) {
      DepthGuard g(*this);
      ExprPtr e = node(ExprKind::Not, next());
      e->args.push_back(not_expr());
      return e;
    }
    return compare();
  }
  ExprPtr compare() {
    const Token& at = cur();
    ExprPtr first = math1();
    ExprPtr c;
    while (true) {
      std::string op;
      if (cur().type == Tok::Op &&
          (cur().text == "==" || cur().text == "!=" || cur().text == "<" || cur().text == "<=" ||
           cur().text == ">" || cur().text == ">=")) {
        op = next().text;
      } else if (is_name("in")) {
        next();
        op = "in";
      } else if (is_name("not") && peek().type == Tok::Name && peek().text == "in") {
        next();
        next();
        op = "not in";
      } else {
        break;
      }
      if (!c) {
        c = node(ExprKind::Compare, at);
        c->args.push_back(std::move(first));
      }
      c->ops.push_back(op);
      c->args.push_back(math1());
    }
    return c ? std::move(c) : std::move(first);
  }
  ExprPtr math1() {
    ExprPtr l = concat();
    while (is_op("+") || is_op("-")) {
      const Token& at = next();
      ExprPtr b = node2(ExprKind::Binary, at, std::move(l), concat());
      b->name = at.text;
      l = std::move(b);
    }
    return l;
  }
  ExprPtr concat() {
    ExprPtr l = math2();
    while (is_op("~")) {
      const Token& at = next();
      ExprPtr b = node2(ExprKind::Binary, at, std::move(l), math2());
      b->name = "~";
      l = std::move(b);
    }
    return l;
  }
  ExprPtr math2() {
    ExprPtr l = pow_expr();
    while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
      const Token& at = next();
      ExprPtr b = node2(ExprKind::Binary, at, std::move(l), pow_expr());
      b->name = at.text;
      l = std::move(b);
    }
    return l;
  }
  ExprPtr pow_expr() {
    ExprPtr l = unary(true);
    while (is_op("**")) {
      const Token& at = next();
      ExprPtr b = node2(ExprKind::Binary, at, std::move(l), unary(true));
      b->name = "**";
      l = std::move(b);
    }
    return l;
  }
  ExprPtr unary(bool with_filter) {
    DepthGuard g(*this);
    ExprPtr e;
    if (is_op("-") || is_op("+")) {
      const Token& at = next();
      e = node(at.text == "-" ? ExprKind::Neg : ExprKind::Pos, at);
      e->args.push_back(unary(false));
    } else {
      e = primary();
    }
    e = postfix(std::move(e));
    if (with_filter) e = filter_expr(std::move(e));
    return e;
  }

  ExprPtr primary() {
    const Token& t = cur();
    if (t.type == Tok::Name) {
      next();
      ExprPtr e = node(ExprKind::Const, t);
      if (t.text == "true" || t.text == "True") {
        e->value = Value(true);
      } else if (t.text == "false" || t.text == "False") {
        e->value = Value(false);
      } else if (t.text == "none" || t.text == "None") {
        e->value = Value::none();
      } else {
        e->kind = ExprKind::Name;
        e->name = t.text;
        if (t.text == "loop") ++loop_refs_;
      }
      return e;
    }
    if (t.type == Tok::String) {
      std::string s;
      while (cur().type == Tok::String) s += next().text;  // adjacent literals concatenate
      ExprPtr e = node(ExprKind::Const, t);
      e->value = Value(std::move(s));
      return e;
    }
    if (t.type == Tok::Int || t.type == Tok::Float) {
      next();
      ExprPtr e = node(ExprKind::Const, t);
      e->value = t.type == Tok::Int ? Value(t.ival) : Value(t.fval);
      return e;
    }
    if (is_op("(")) {
      next();
      ExprPtr e = tuple_expr(true, {}, true);
      expect_op(")");
      return e;
    }
    if (is_op("[")) {
      next();
      ExprPtr e = node(ExprKind::List, t);
      while (!is_op("]")) {
        if (!e->args.empty()) expect_op(",");
        if (is_op("]")) break;
        e->args.push_back(expression(true));
      }
      expect_op("]");
      return e;
    }
    if (is_op("{")) {
      next();
      ExprPtr e = node(ExprKind::Dict, t);
      while (!is_op("}")) {
        if (!e->args.empty()) expect_op(",");
        if (is_op("}")) break;
        e->args.push_back(expression(true));
        expect_op(":");
        e->args.push_back(expression(true));
      }
      expect_op("}");
      return e;
    }
    fail(t, fmt::format("unexpected {}", describe(t)));
  }

  ExprPtr postfix(ExprPtr e) {
    while (true) {
      if (is_op(".")) {
        const Token& at = next();
        if (cur().type == Tok::Name) {
          ExprPtr g = node(ExprKind::GetAttr, at);
          g->name = next().text;
          g->args.push_back(std::move(e));
          e = std::move(g);
        } else if (cur().type == Tok::Int) {
          ExprPtr idx = node(ExprKind::Const, cur());
          idx->value = Value(next().ival);
          e = node2(ExprKind::GetItem, at, std::move(e), std::move(idx));
        } else {
          fail(cur(), fmt::format("expected a name or number after '.', got {}", describe(cur())));
        }
      } else if (is_op("[")) {
        e = subscript(std::move(e));
      } else if (is_op("(")) {
        e = call(std::move(e));
      } else {
        return e;
      }
    }
  }

  ExprPtr subscript(ExprPtr obj) {
    const Token& at = next();  // [
    std::vector<ExprPtr> items;
    bool slice = false;
    ExprPtr parts[3];
    while (!is_op("]")) {
      if (!items.empty() || slice) expect_op(",");
      ExprPtr first = is_op(":") ? nullptr : expression(true);
      if (!is_op(":")) {
        items.push_back(std::move(first));
        continue;
      }
      if (slice || !items.empty()) fail(cur(), "multi-dimensional subscripts are not supported");
      slice = true;
      next();
      parts[0] = std::move(first);
      if (!is_op(":") && !is_op("]") && !is_op(",")) parts[1] = expression(true);
      if (skip_op(":") && !is_op("]") && !is_op(",")) parts[2] = expression(true);
    }
    expect_op("]");
    if (slice) {
      ExprPtr s = node(ExprKind::Slice, at);
      s->args.push_back(std::move(obj));
      for (ExprPtr& p : parts) s->args.push_back(std::move(p));
      return s;
    }
    if (items.empty()) fail(at, "empty subscript");
    ExprPtr index;
    if (items.size() == 1) {
      index = std::move(items[0]);
    } else {
      index = node(ExprKind::Tuple, at);
      index->args = std::move(items);
    }
    return node2(ExprKind::GetItem, at, std::move(obj), std::move(index));
  }

  // (args): positional and name=value arguments into e->args (after what is already there) and e->kwargs.
  void call_args(Expr& e) {
    expect_op("(");
    bool first = true;
    while (!is_op(")")) {
      if (!first) expect_op(",");
      first = false;
      if (is_op(")")) break;
      if (is_op("*") || is_op("**")) fail(cur(), "*args and **kwargs in calls are not supported");
      if (cur().type == Tok::Name && peek().type == Tok::Op && peek().text == "=") {
        std::string key = next().text;
        next();
        e.kwargs.emplace_back(std::move(key), expression(true));
      } else {
        if (!e.kwargs.empty()) fail(cur(), "a positional argument follows a keyword argument");
        e.args.push_back(expression(true));
      }
    }
    expect_op(")");
  }

  ExprPtr call(ExprPtr callee) {
    ExprPtr c = node(ExprKind::Call, cur());
    c->args.push_back(std::move(callee));
    call_args(*c);
    return c;
  }

  std::string dotted_name() {
    std::string n = expect_name();
    while (is_op(".")) {
      next();
      n += "." + expect_name();
    }
    return n;
  }

  // `|name(args)|name2...` applied to operand (null for filter blocks); `start_inline`: no leading '|'.
  ExprPtr filter_chain(ExprPtr operand, bool start_inline) {
    while (is_op("|") || start_inline) {
      if (!start_inline) next();
      start_inline = false;
      const Token& at = cur();
      ExprPtr f = node(ExprKind::Filter, at);
      f->name = dotted_name();
      f->args.push_back(std::move(operand));
      if (is_op("(")) call_args(*f);
      operand = std::move(f);
    }
    return operand;
  }

  ExprPtr filter_expr(ExprPtr e) {
    while (true) {
      if (is_op("|")) {
        e = filter_chain(std::move(e), false);
      } else if (is_name("is")) {
        e = test(std::move(e));
      } else if (is_op("(")) {
        e = call(std::move(e));
      } else {
        return e;
      }
    }
  }

  ExprPtr test(ExprPtr operand) {
    const Token& at = next();  // is
    ExprPtr t = node(ExprKind::Test, at);
    t->negated = skip_name("not");
    t->name = dotted_name();
    t->args.push_back(std::move(operand));
    const Token& c = cur();
    const bool arg_start = c.type == Tok::Name || c.type == Tok::String || c.type == Tok::Int ||
                           c.type == Tok::Float || (c.type == Tok::Op && (c.text == "[" || c.text == "{"));
    if (is_op("(")) {
      call_args(*t);
    } else if (arg_start && !is_name("else") && !is_name("or") && !is_name("and")) {
      if (is_name("is")) fail(c, "tests cannot be chained with 'is'");
      t->args.push_back(postfix(primary()));
    }
    return t;
  }

  const std::vector<Token>& t_;
  TemplateImpl& out_;
  size_t i_ = 0;
  int depth_ = 0;
  int loops_ = 0;
  int loop_refs_ = 0;  // Name nodes `loop` seen so far
};

}  // namespace

void parse_tokens(TemplateImpl& out, const std::vector<Token>& tokens) { Parser(tokens, out).run(); }

}  // namespace rlcu::jinja
