// Jinja evaluator: walks the syntax tree of jinja_ast.h with jinja2's scoping rules.
//
// Scopes: the globals (builtins + the render's variables) hold the template's top-level scope; every for-loop
// iteration, macro call and with-block gets a fresh child scope, so `{% set %}` inside a loop body is gone at the
// next iteration and after the loop (namespace() objects carry values out), while `{% if %}` shares its scope.
// Macros resolve free names through the scope they were defined in, at call time. Scopes live until the render
// ends (a deque owned by the Renderer), so macros and loop scopes can refer to each other by plain pointers.
//
// Output goes to one buffer; set blocks, macro calls and filter blocks render into their own and hand the text
// back. {% generation %} blocks rendered straight into the output record their byte range (transformers' assistant
// spans; inside a macro or set block the range is not recorded, as transformers cannot place it either).
//
// Every evaluation counts a step and nests a level; both are bounded (jinja.h), so no template hangs or overflows
// the stack. Errors are "<name>:<line>:<col>: <what>" at the node being evaluated.
#include <algorithm>

#include "jinja_ast.h"

namespace rlcu::jinja {

const Value* Scope::find(const std::string& name) const {
  for (const auto& [k, v] : vars)
    if (k == name) return &v;
  return nullptr;
}

void Scope::set(const std::string& name, Value v) {
  for (auto& [k, old] : vars)
    if (k == name) {
      old = std::move(v);
      return;
    }
  vars.emplace_back(name, std::move(v));
}

Renderer::Renderer(const TemplateImpl& t, const RenderOptions& opts) : t_(t), opts_(opts) {}

Scope& Renderer::new_scope(Scope* parent) {
  scopes_.emplace_back();
  scopes_.back().parent = parent;
  scopes_.back().index = scopes_.size() - 1;
  return scopes_.back();
}

void Renderer::release_scopes(size_t mark) {
  if (captured_top_ <= mark && scopes_.size() > mark) scopes_.resize(mark);
}

void Renderer::fail(int l, int c, const std::string& what) const { fail_at(t_.name, l, c, what); }

void Renderer::step(int l, int c) {
  line = l;
  col = c;
  if (++steps_ > kMaxSteps)
    fail(l, c, fmt::format("the template took more than {} evaluation steps (a loop that does not end?)", kMaxSteps));
}

void Renderer::charge(size_t bytes, int l, int c) {
  if (bytes > kMaxString) fail(l, c, fmt::format("a string of more than {} MiB", kMaxString >> 20));
  string_work_ += static_cast<int64_t>(bytes);
  if (string_work_ > kMaxStringWork)
    fail(l, c, fmt::format("the template built more than {} GiB of strings", kMaxStringWork >> 30));
}

namespace {

struct DepthGuard {
  DepthGuard(int& depth, Renderer& r, int line, int col) : d(depth) {
    if (++d > kMaxEvalDepth)
      r.fail(line, col, fmt::format("evaluation nested more than {} levels deep (a macro that calls itself?)",
                                    kMaxEvalDepth));
  }
  ~DepthGuard() { --d; }
  int& d;
};

CallArgs eval_args(Renderer& r, const Expr& e, Scope& s, size_t first) {
  CallArgs a;
  for (size_t i = first; i < e.args.size(); ++i) a.pos.push_back(r.eval(*e.args[i], s));
  for (const auto& [k, v] : e.kwargs) a.kw.emplace_back(k, r.eval(*v, s));
  return a;
}

}  // namespace

RenderResult Renderer::run(const std::vector<std::pair<std::string, Value>>& vars) {
  Scope& globals = new_scope(nullptr);
  add_globals(globals);
  for (const auto& [k, v] : vars) globals.set(k, v);
  Scope& root = new_scope(&globals);
  RenderResult res;
  out_ = &res.text;
  at_root_ = true;
  exec(t_.body, root);
  res.generation = std::move(spans_);
  return res;
}

Flow Renderer::exec(const Body& body, Scope& s) {
  for (const StmtPtr& st : body) {
    const Flow f = exec_stmt(*st, s);
    if (f != Flow::Normal) return f;
  }
  return Flow::Normal;
}

std::string Renderer::capture(const Body& body, Scope& s) {
  std::string buf;
  std::string* saved = out_;
  const bool saved_root = at_root_;
  out_ = &buf;
  at_root_ = false;
  Flow f;
  try {
    f = exec(body, s);
  } catch (...) {
    out_ = saved;
    at_root_ = saved_root;
    throw;
  }
  out_ = saved;
  at_root_ = saved_root;
  if (f != Flow::Normal) fail(line, col, "break or continue inside a set, macro or filter block");
  return buf;
}

Flow Renderer::exec_stmt(const Stmt& st, Scope& s) {
  DepthGuard g(depth_, *this, st.line, st.col);
  step(st.line, st.col);
  switch (st.kind) {
    case StmtKind::Text:
      *out_ += st.text;
      break;
    case StmtKind::Print:
      *out_ += to_str(eval(*st.exprs[0], s));
      break;
    case StmtKind::If:
      for (size_t i = 0; i < st.exprs.size(); ++i)
        if (eval(*st.exprs[i], s).truthy()) return exec(st.bodies[i], s);
      if (st.bodies.size() > st.exprs.size()) return exec(st.bodies.back(), s);
      return Flow::Normal;
    case StmtKind::For: return exec_for(st, s);
    case StmtKind::Set: exec_set(st, s); break;
    case StmtKind::SetBlock: {
      Value v(capture(st.bodies[0], s));
      if (st.exprs[0]) {
        chain_operand_ = &v;
        v = eval(*st.exprs[0], s);
      }
      s.set(st.names[0], std::move(v));
      break;
    }
    case StmtKind::Macro: s.set(st.names[0], make_macro(st, s)); break;
    case StmtKind::FilterBlock: {
      Value v(capture(st.bodies[0], s));
      chain_operand_ = &v;
      *out_ += to_str(eval(*st.exprs[0], s));
      break;
    }
    case StmtKind::Generation: {
      if (!at_root_) return exec(st.bodies[0], s);
      const size_t begin = out_->size();
      const Flow f = exec(st.bodies[0], s);
      spans_.emplace_back(begin, out_->size());
      return f;
    }
    case StmtKind::With: {
      Scope& w = new_scope(&s);
      for (size_t i = 0; i < st.names.size(); ++i) w.set(st.names[i], eval(*st.exprs[i], s));
      return exec(st.bodies[0], w);
    }
    case StmtKind::Break: return Flow::Break;
    case StmtKind::Continue: return Flow::Continue;
  }
  if (out_->size() > kMaxString) fail(st.line, st.col, fmt::format("the output grew past {} MiB", kMaxString >> 20));
  return Flow::Normal;
}

namespace {

// Binds loop or set targets: one name takes the value, several unpack a sequence (or a string's characters).
void bind_targets(Renderer& r, Scope& s, const std::vector<std::string>& names, const Value& v, int line, int col) {
  if (names.size() == 1) {
    s.set(names[0], v);
    return;
  }
  List items;
  if (v.is_sequence()) {
    items = v.items();
  } else if (v.is_string()) {
    items = iterate(v, r);
  } else {
    r.fail(line, col, fmt::format("cannot unpack a {} into {} names", v.type_name(), names.size()));
  }
  if (items.size() != names.size())
    r.fail(line, col, fmt::format("{} values to unpack (expected {}, got {})",
                                  items.size() < names.size() ? "not enough" : "too many", names.size(), items.size()));
  for (size_t i = 0; i < names.size(); ++i) s.set(names[i], items[i]);
}

Value loop_object(const List& items, size_t i) {
  auto d = std::make_shared<Dict>();
  const auto n = static_cast<int64_t>(items.size());
  const auto k = static_cast<int64_t>(i);
  d->entries.reserve(12);
  d->entries.emplace_back("index", Value(k + 1));
  d->entries.emplace_back("index0", Value(k));
  d->entries.emplace_back("revindex", Value(n - k));
  d->entries.emplace_back("revindex0", Value(n - k - 1));
  d->entries.emplace_back("first", Value(k == 0));
  d->entries.emplace_back("last", Value(k == n - 1));
  d->entries.emplace_back("length", Value(n));
  d->entries.emplace_back("depth", Value(int64_t{1}));
  d->entries.emplace_back("depth0", Value(int64_t{0}));
  d->entries.emplace_back("previtem", k > 0 ? items[i - 1] : Value::undefined("there is no previous item"));
  d->entries.emplace_back("nextitem", k + 1 < n ? items[i + 1] : Value::undefined("there is no next item"));
  auto cycle = std::make_shared<Callable>();
  cycle->name = "cycle";
  cycle->call = [k](CallArgs& a, Renderer&) -> Value {
    if (a.pos.empty()) throw ValueError("no items for cycling given");
    return a.pos[static_cast<size_t>(k) % a.pos.size()];
  };
  d->entries.emplace_back("cycle", Value::callable(std::move(cycle)));
  return Value::dict(std::move(d));
}

}  // namespace

Flow Renderer::exec_for(const Stmt& st, Scope& s) {
  List items = iterate(eval(*st.exprs[0], s), *this);
  if (st.exprs[1]) {  // `for x in xs if cond`: loop.* counts the kept items only
    List kept;
    for (const Value& v : items) {
      const size_t mark = scope_mark();
      Scope& f = new_scope(&s);
      bind_targets(*this, f, st.names, v, st.line, st.col);
      if (eval(*st.exprs[1], f).truthy()) kept.push_back(v);
      release_scopes(mark);
    }
    items = std::move(kept);
  }
  if (items.empty()) return exec(st.bodies[1], new_scope(&s));
  for (size_t i = 0; i < items.size(); ++i) {
    step(st.line, st.col);  // an empty body still counts
    const size_t mark = scope_mark();
    Scope& it = new_scope(&s);
    bind_targets(*this, it, st.names, items[i], st.line, st.col);
    if (!st.attr.empty()) it.set("loop", loop_object(items, i));
    const Flow f = exec(st.bodies[0], it);
    release_scopes(mark);
    if (f == Flow::Break) break;
  }
  return Flow::Normal;
}

void Renderer::exec_set(const Stmt& st, Scope& s) {
  Value v = eval(*st.exprs[0], s);
  if (!st.attr.empty()) {
    const Value* target = nullptr;
    for (Scope* p = &s; p && !target; p = p->parent) target = p->find(st.names[0]);
    if (!target || target->kind() != Value::Kind::Namespace)
      fail(st.line, st.col, fmt::format("cannot assign attribute on non-namespace object '{}'", st.names[0]));
    target->namespace_attrs().set(st.attr, std::move(v));
    return;
  }
  bind_targets(*this, s, st.names, v, st.line, st.col);
}

Value Renderer::make_macro(const Stmt& st, Scope& defining) {
  auto fn = std::make_shared<Callable>();
  fn->name = st.names[0];
  const Stmt* m = &st;
  Scope* def = &defining;
  captured_top_ = std::max(captured_top_, defining.index + 1);
  fn->call = [m, def](CallArgs& a, Renderer& r) -> Value {
    const std::string& name = m->names[0];
    if (a.pos.size() > m->params.size())
      throw ValueError(fmt::format("macro '{}' takes not more than {} argument(s)", name, m->params.size()));
    for (const auto& [k, v] : a.kw) {
      const auto it = std::find(m->params.begin(), m->params.end(), k);
      if (it == m->params.end()) throw ValueError(fmt::format("macro '{}' takes no keyword argument '{}'", name, k));
      if (static_cast<size_t>(it - m->params.begin()) < a.pos.size())
        throw ValueError(fmt::format("macro '{}' got multiple values for argument '{}'", name, k));
    }
    const size_t mark = r.scope_mark();
    Scope& ms = r.new_scope(def);
    for (size_t i = 0; i < m->params.size(); ++i) {
      const std::string& p = m->params[i];
      if (const Value* v = a.get(p.c_str(), i)) {
        ms.set(p, *v);
      } else if (m->exprs[i]) {
        ms.set(p, r.eval(*m->exprs[i], ms));
      } else {
        ms.set(p, Value::undefined(fmt::format("parameter '{}' was not provided", p)));
      }
    }
    Value out(r.capture(m->bodies[0], ms));
    r.release_scopes(mark);
    return out;
  };
  return Value::callable(std::move(fn));
}

Value Renderer::eval(const Expr& e, Scope& s) {
  DepthGuard g(depth_, *this, e.line, e.col);
  step(e.line, e.col);
  try {
    return eval_inner(e, s);
  } catch (const ValueError& err) {
    fail(e.line, e.col, err.what());
  }
}

Value Renderer::eval_inner(const Expr& e, Scope& s) {
  switch (e.kind) {
    case ExprKind::Const: return e.value;
    case ExprKind::Name:
      for (Scope* p = &s; p; p = p->parent)
        if (const Value* v = p->find(e.name)) return *v;
      return Value::undefined(fmt::format("'{}' is undefined", e.name));
    case ExprKind::List:
    case ExprKind::Tuple: {
      List items;
      items.reserve(e.args.size());
      for (const ExprPtr& a : e.args) items.push_back(eval(*a, s));
      return e.kind == ExprKind::List ? Value::list(std::move(items)) : Value::tuple(std::move(items));
    }
    case ExprKind::Dict: {
      auto d = std::make_shared<Dict>();
      for (size_t i = 0; i + 1 < e.args.size(); i += 2) {
        Value k = eval(*e.args[i], s);
        if (!k.is_string()) throw ValueError(fmt::format("dict keys must be strings here, not {}", k.type_name()));
        d->set(k.str(), eval(*e.args[i + 1], s));
      }
      return Value::dict(std::move(d));
    }
    case ExprKind::GetAttr: {
      Value obj = eval(*e.args[0], s);
      if (obj.is_undefined()) undefined_error(obj);
      return get_attr(obj, e.name);
    }
    case ExprKind::GetItem: {
      Value obj = eval(*e.args[0], s);
      if (obj.is_undefined()) undefined_error(obj);
      return get_item(obj, eval(*e.args[1], s));
    }
    case ExprKind::Slice: {
      Value obj = eval(*e.args[0], s);
      if (obj.is_undefined()) undefined_error(obj);
      Value parts[3];
      for (int k = 0; k < 3; ++k) parts[k] = e.args[1 + k] ? eval(*e.args[1 + k], s) : Value::none();
      return get_slice(obj, parts[0], parts[1], parts[2], *this);
    }
    case ExprKind::Call: return eval_call(e, s);
    case ExprKind::Filter: {
      Value operand;
      if (e.args[0]) {
        operand = eval(*e.args[0], s);
      } else {
        operand = *chain_operand_;  // innermost filter of a filter block / set block chain
      }
      CallArgs a = eval_args(*this, e, s, 1);
      line = e.line;
      col = e.col;
      return apply_filter(e.name, operand, a, *this);
    }
    case ExprKind::Test: {
      Value operand = eval(*e.args[0], s);
      CallArgs a = eval_args(*this, e, s, 1);
      line = e.line;
      col = e.col;
      return Value(apply_test(e.name, operand, a, *this) != e.negated);
    }
    case ExprKind::Not: return Value(!eval(*e.args[0], s).truthy());
    case ExprKind::Neg:
    case ExprKind::Pos: {
      Value v = eval(*e.args[0], s);
      if (v.is_undefined()) undefined_error(v);
      if (!v.is_number()) throw ValueError(fmt::format("bad operand type for unary {}: '{}'",
                                                       e.kind == ExprKind::Neg ? '-' : '+', v.type_name()));
      if (e.kind == ExprKind::Pos) return v.kind() == Value::Kind::Float ? v : Value(v.integer());
      if (v.kind() == Value::Kind::Float) return Value(-v.number());
      if (v.integer() == INT64_MIN) throw ValueError("integer overflow (rlcu's template integers are 64-bit)");
      return Value(-v.integer());
    }
    case ExprKind::Binary: {
      Value a = eval(*e.args[0], s);
      Value b = eval(*e.args[1], s);
      line = e.line;
      col = e.col;
      return binary_op(e.name, a, b, *this);
    }
    case ExprKind::And: {
      Value a = eval(*e.args[0], s);
      return a.truthy() ? eval(*e.args[1], s) : a;
    }
    case ExprKind::Or: {
      Value a = eval(*e.args[0], s);
      return a.truthy() ? a : eval(*e.args[1], s);
    }
    case ExprKind::Compare: return eval_compare(e, s);
    case ExprKind::Cond:
      if (eval(*e.args[1], s).truthy()) return eval(*e.args[0], s);
      if (e.args[2]) return eval(*e.args[2], s);
      return Value::undefined(fmt::format("the inline if-expression on line {} evaluated to false and no else "
                                          "section was defined",
                                          e.line));
  }
  return Value();
}

Value Renderer::eval_compare(const Expr& e, Scope& s) {
  Value left = eval(*e.args[0], s);
  for (size_t i = 0; i < e.ops.size(); ++i) {
    Value right = eval(*e.args[i + 1], s);
    line = e.line;
    col = e.col;
    if (!compare_op(e.ops[i], left, right, *this)) return Value(false);
    left = std::move(right);
  }
  return Value(true);
}

Value Renderer::eval_call(const Expr& e, Scope& s) {
  Value fn = eval(*e.args[0], s);
  CallArgs a = eval_args(*this, e, s, 1);
  line = e.line;
  col = e.col;
  if (fn.kind() == Value::Kind::Callable) return fn.fn().call(a, *this);
  if (fn.is_undefined()) undefined_error(fn);
  throw ValueError(fmt::format("'{}' object is not callable", fn.type_name()));
}

Template Template::parse(const std::string& source, const std::string& name) {
  auto impl = std::make_shared<TemplateImpl>();
  impl->name = name;
  parse_tokens(*impl, lex(source, name));
  Template t;
  t.impl_ = std::move(impl);
  return t;
}

RenderResult Template::render(const std::vector<std::pair<std::string, Value>>& vars, const RenderOptions& opts) const {
  Renderer r(*impl_, opts);
  return r.run(vars);
}

const std::string& Template::name() const { return impl_->name; }
bool Template::has_generation() const { return impl_->has_generation; }

}  // namespace rlcu::jinja
