// Internals of the Jinja interpreter shared by its lexer, parser, evaluator and builtins (see jinja.h): tokens,
// the syntax tree, the evaluation scopes and the Renderer that walks the tree.
#pragma once

#include <deque>
#include <string>
#include <vector>

#include "jinja.h"

namespace rlcu::jinja {

// ---- tokens ------------------------------------------------------------------------------------------------------
enum class Tok { Data, BlockBegin, BlockEnd, VarBegin, VarEnd, Name, String, Int, Float, Op, Eof };

struct Token {
  Tok type = Tok::Eof;
  std::string text;  // Data: the text; Name/Op: the spelling; String: the decoded value
  int64_t ival = 0;
  double fval = 0;
  int line = 1;
  int col = 1;
};

// Splits a template into tokens with jinja2's whitespace control (trim_blocks, lstrip_blocks, `-` and `+`).
// Comments are dropped; {% raw %} bodies become Data. Throws rlcu::Error "<name>:<line>:<col>: ...".
std::vector<Token> lex(const std::string& source, const std::string& name);

// "<name>:<line>:<col>: <what>"
[[noreturn]] void fail_at(const std::string& name, int line, int col, const std::string& what);

// ---- syntax tree -------------------------------------------------------------------------------------------------
struct Expr;
struct Stmt;
using ExprPtr = std::unique_ptr<Expr>;
using StmtPtr = std::unique_ptr<Stmt>;
using Body = std::vector<StmtPtr>;

// Operand conventions (args):
//   Const: value            Name: name               List/Tuple: items            Dict: k0, v0, k1, v1, ...
//   GetAttr: obj (name)     GetItem: obj, index      Slice: obj, start, stop, step (null when absent)
//   Call: callee, positional..., kwargs              Filter/Test: operand (null in a filter block), positional...
//   Not/Neg/Pos: operand    Binary (name = op): l, r And/Or: l, r
//   Compare: first, operands... with ops[i] between args[i] and args[i+1]
//   Cond: value, condition, else (null when absent)
enum class ExprKind {
  Const, Name, List, Tuple, Dict, GetAttr, GetItem, Slice, Call, Filter, Test, Not, Neg, Pos, Binary, And, Or,
  Compare, Cond
};

struct Expr {
  ExprKind kind = ExprKind::Const;
  int line = 1, col = 1;
  Value value;
  std::string name;
  std::vector<ExprPtr> args;
  std::vector<std::pair<std::string, ExprPtr>> kwargs;
  std::vector<std::string> ops;
  bool negated = false;  // Test: `is not`
};

// Conventions:
//   Text: text              Print: exprs[0]
//   If: exprs = conditions, bodies[i] for exprs[i], bodies[n] the else branch (when present)
//   For: names = targets, exprs[0] = iterable, exprs[1] = filter condition (or null), bodies = {body, else};
//        attr = "loop" when the body refers to `loop` (the loop object is only built then)
//   Set: names = targets (attr: namespace attribute of names[0]), exprs[0] = value
//   SetBlock: names[0], bodies[0], exprs[0] = filter chain applied to the body (or null)
//   Macro: names[0] = name, params = parameter names, exprs = defaults (null when none), bodies[0]
//   FilterBlock: exprs[0] = filter chain (innermost operand null), bodies[0]
//   Generation: bodies[0]   With: names/exprs = assignments, bodies[0]   Break, Continue
enum class StmtKind { Text, Print, If, For, Set, SetBlock, Macro, FilterBlock, Generation, With, Break, Continue };

struct Stmt {
  StmtKind kind = StmtKind::Text;
  int line = 1, col = 1;
  std::string text;
  std::vector<ExprPtr> exprs;
  std::vector<Body> bodies;
  std::vector<std::string> names;
  std::vector<std::string> params;
  std::string attr;
};

struct TemplateImpl {
  std::string name;
  Body body;
  bool has_generation = false;
};

// Builds the syntax tree from tokens (checks loop controls outside loops and the nesting depth; unknown filters and
// tests are errors when reached, as in jinja2's conditional branches).
void parse_tokens(TemplateImpl& out, const std::vector<Token>& tokens);

// ---- evaluation --------------------------------------------------------------------------------------------------
struct Scope {
  std::vector<std::pair<std::string, Value>> vars;
  Scope* parent = nullptr;
  size_t index = 0;  // position in the Renderer's arena
  const Value* find(const std::string& name) const;
  void set(const std::string& name, Value v);
};

enum class Flow { Normal, Break, Continue };

class Renderer {
 public:
  Renderer(const TemplateImpl& t, const RenderOptions& opts);

  RenderResult run(const std::vector<std::pair<std::string, Value>>& vars);
  Value eval(const Expr& e, Scope& s);
  Flow exec(const Body& body, Scope& s);

  Scope& new_scope(Scope* parent);
  // Frees the scopes created since the arena held `mark` scopes, unless a macro defined in one of them may still
  // be called (loop iterations and macro calls release theirs, so long loops run in constant memory).
  size_t scope_mark() const { return scopes_.size(); }
  void release_scopes(size_t mark);
  // Renders `body` into a fresh buffer (set blocks, macro calls, filter blocks) and returns the text.
  std::string capture(const Body& body, Scope& s);
  [[noreturn]] void fail(int line, int col, const std::string& what) const;
  // Counts string bytes built; throws when one value or the render's total goes past the bounds.
  void charge(size_t bytes, int line, int col);
  const RenderOptions& options() const { return opts_; }

  int line = 1, col = 1;  // position of the node being evaluated (for errors raised by builtins)

 private:
  Flow exec_stmt(const Stmt& st, Scope& s);
  Flow exec_for(const Stmt& st, Scope& s);
  void exec_set(const Stmt& st, Scope& s);
  Value eval_inner(const Expr& e, Scope& s);
  Value eval_compare(const Expr& e, Scope& s);
  Value eval_call(const Expr& e, Scope& s);
  Value make_macro(const Stmt& st, Scope& defining);
  void step(int line, int col);

  const TemplateImpl& t_;
  RenderOptions opts_;
  std::deque<Scope> scopes_;  // every scope of this render; freed together at the end
  std::string* out_ = nullptr;
  bool at_root_ = true;
  std::vector<std::pair<size_t, size_t>> spans_;
  const Value* chain_operand_ = nullptr;  // the text a set/filter block hands to its filter chain
  size_t captured_top_ = 0;  // scopes below this index may be referred to by a macro
  int64_t steps_ = 0;
  int64_t string_work_ = 0;
  int depth_ = 0;
};

// ---- builtins (jinja_builtins.cpp) --------------------------------------------------------------------------------
Value apply_filter(const std::string& name, const Value& operand, CallArgs& args, Renderer& r);
bool apply_test(const std::string& name, const Value& operand, CallArgs& args, Renderer& r);
// obj.name: a dict's key or a bound method of str/dict/list (unsafe list/dict mutators give an undefined that
// raises the sandbox's error when used); undefined with jinja's message when there is none.
Value get_attr(const Value& obj, const std::string& name);
// obj[key] with jinja's fallback to attributes.
Value get_item(const Value& obj, const Value& key);
Value get_slice(const Value& obj, const Value& start, const Value& stop, const Value& step, Renderer& r);
void add_globals(Scope& s);
// Python's iteration over a value (dict: keys, str: characters, undefined: nothing); throws for the rest.
List iterate(const Value& v, Renderer& r);
// Binary operators (+ - * / // % ** ~) and comparisons (== != < <= > >= in) with Python semantics.
Value binary_op(const std::string& op, const Value& a, const Value& b, Renderer& r);
bool compare_op(const std::string& op, const Value& a, const Value& b, Renderer& r);
// Raises (as ValueError) the error an operation on an undefined value raises.
[[noreturn]] void undefined_error(const Value& v);

}  // namespace rlcu::jinja
