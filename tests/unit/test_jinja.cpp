// The Jinja interpreter of the tokenizer module, construct by construct. Every expected text is what Python's
// jinja2 3.1.6 renders for the same template with transformers' settings (trim_blocks, lstrip_blocks, loopcontrols,
// tojson with ensure_ascii=False, strftime_now pinned to 2025-03-14 09:26:53); the real chat templates are compared
// in test_chat against goldens made by scripts/make_chat_goldens.py.
#include <gtest/gtest.h>

#include <chrono>
#include <functional>

#include <nlohmann/json.hpp>

#include "rlcu/error.h"
#include "tokenizer/jinja.h"

using namespace rlcu;
using namespace rlcu::jinja;
using ojson = nlohmann::ordered_json;

namespace {

RenderOptions fixed_time() {
  std::tm tm{};
  tm.tm_year = 2025 - 1900;
  tm.tm_mon = 2;
  tm.tm_mday = 14;
  tm.tm_hour = 9;
  tm.tm_min = 26;
  tm.tm_sec = 53;
  tm.tm_wday = 5;
  tm.tm_yday = 72;
  RenderOptions o;
  o.now = tm;
  return o;
}

std::vector<std::pair<std::string, Value>> default_vars() {
  const ojson messages = ojson::parse(
      R"([{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}])");
  return {{"messages", Value::from_json(messages)}};
}

RenderResult render_full(const std::string& tmpl) {
  return Template::parse(tmpl, "t.jinja").render(default_vars(), fixed_time());
}

std::string render(const std::string& tmpl) { return render_full(tmpl).text; }

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

std::string render_error(const std::string& tmpl) { return error_of([&] { render(tmpl); }); }

struct Case {
  const char* tmpl;
  const char* expected;
};

void check(const std::vector<Case>& cases) {
  for (const Case& c : cases) EXPECT_EQ(render(c.tmpl), c.expected) << c.tmpl;
}

}  // namespace

TEST(Jinja, WhitespaceControlMatchesTrimAndLstripBlocks) {
  check({
      {"  {% if true %}\n  x\n  {% endif %}\n  {{ 'y' }}\n", "  x\n  y"},
      {"a  {%- if true -%}  b  {%- endif -%}  c", "abc"},
      {"{# c #}\n  {# d #}\nx", "x"},
      {"  {%+ if true %}x{% endif %}\n{% if true +%}\ny{% endif %}", "  x\ny"},
      {"{% raw %}{{ a }}{% endraw %}", "{{ a }}"},
      {"a\r\nb\rc\n", "a\nb\nc"},
      {"x\n\n", "x\n"},
      {"{{ 'a' }}  {% if true %}b{% endif %}", "a  b"},  // lstrip only at the start of a line
  });
}

TEST(Jinja, OperatorsFollowPython) {
  check({
      {"{{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 7 / 2 }} {{ 2 ** 10 }} {{ 'ab' * 2 }} {{ 1 ~ 'x' ~ none }} "
       "{{ 1 + 2 * 3 }} {{ 0.1 + 0.2 }} {{ 1e16 }} {{ 1e-5 }} {{ 2.0 }}",
       "3 -4 1 2 3.5 1024 abab 1xNone 7 0.30000000000000004 1e+16 1e-05 2.0"},
      {"{{ 1 < 2 < 3 }} {{ 3 > 2 > 2 }} {{ 'b' in 'abc' }} {{ 2 in [1, 2] }} {{ 'k' in {'k': 1} }} "
       "{{ 'z' not in 'abc' }} {{ 1 == 1.0 }}",
       "True False True True True True True"},
      {"{{ 'a' if false else 'b' }}|{{ 'x' if false }}|{{ none or 'd' }}|{{ 0 and 1 }}|{{ not [] }}", "b||d|0|True"},
      // Filters bind tighter than binary operators: only the second operand is trimmed.
      {"{{ 'a ' + ' b ' | trim + ' c' }}", "a b c"},
  });
}

TEST(Jinja, UndefinedPrintsEmptyAndFailsOnUse) {
  check({
      {"[{{ nothing }}] {{ nothing is defined }} {{ nothing | default('dflt') }} {{ nothing | length }} "
       "{% for x in nothing %}no{% endfor %}",
       "[] False dflt 0 "},
      {"{{ {'a': 1}.b }}|{{ none.b }}|{{ [1][3] }}", "||"},
  });
  EXPECT_NE(render_error("{{ nothing.attr }}").find("'nothing' is undefined"), std::string::npos);
  EXPECT_NE(render_error("{{ {'a': 1}.b.c }}").find("'dict object' has no attribute 'b'"), std::string::npos);
  EXPECT_NE(render_error("{{ nothing + 'x' }}").find("is undefined"), std::string::npos);
  EXPECT_NE(render_error("{{ none | length }}").find("has no len()"), std::string::npos);
}

TEST(Jinja, LoopsScopesAndNamespaces) {
  check({
      {"{% for m in messages %}{{ loop.index }}{{ loop.index0 }}{{ loop.revindex }}{{ loop.first }}{{ loop.last }}"
       "{{ loop.length }}{{ loop.cycle('a', 'b') }};{% endfor %}",
       "103TrueFalse3a;212FalseFalse3b;321FalseTrue3a;"},
      {"{% for m in messages if m.role != 'system' %}{{ loop.index }}:{{ m.role }}{{ '' if loop.last else ',' }}"
       "{% else %}none{% endfor %}",
       "1:user,2:assistant"},
      {"{% for x in [] %}a{% else %}empty{% endfor %}", "empty"},
      {"{% for i in range(10) %}{% if i == 2 %}{% continue %}{% endif %}{% if i == 5 %}{% break %}{% endif %}{{ i }}"
       "{% endfor %}",
       "0134"},
      {"{% for a in [1, 2] %}{% for b in 'xy' %}{{ a }}{{ b }}{{ loop.index }} {% endfor %}{% endfor %}",
       "1x1 1y2 2x1 2y2 "},
      // A set inside a loop body lasts for that iteration only; namespaces carry values out.
      {"{% set x = 'out' %}{% for i in [1, 2] %}{{ x }}{% set x = i %}{{ x }} {% endfor %}{{ x }}", "out1 out2 out"},
      {"{% set ns = namespace(n=0, s='') %}{% for i in [1, 2, 3] %}{% set ns.n = ns.n + i %}{% set ns.s = ns.s ~ i %}"
       "{% endfor %}{{ ns.n }} {{ ns.s }}",
       "6 123"},
      {"{% for k, v in {'b': 1, 'a': 2}.items() %}{{ k }}={{ v }};{% endfor %}", "b=1;a=2;"},
      {"{% with a = 1, b = 'x' %}{{ a }}{{ b }}{% endwith %}{{ a is defined }}", "1xFalse"},
      {"{% set a, b = 1, 2 %}{{ b }}{{ a }}", "21"},
  });
  EXPECT_NE(render_error("{% set s = 'x' %}{% set s.a = 1 %}").find("non-namespace"), std::string::npos);
}

TEST(Jinja, MacrosSetBlocksAndFilterBlocks) {
  check({
      {"{% macro tag(name, body='-', close=true) %}<{{ name }}>{{ body }}{% if close %}</{{ name }}>{% endif %}"
       "{% endmacro %}{{ tag('a') }}{{ tag('b', 'x') }}{{ tag('c', close=false) }}{{ tag(body='y', name='d') }}",
       "<a>-</a><b>x</b><c>-<d>y</d>"},
      {"{% macro fact(n) %}{{ 1 if n <= 1 else n * (fact(n - 1) | int) }}{% endmacro %}{{ fact(5) }}", "120"},
      {"{% set body %}<{{ messages | length }}>{% endset %}{{ body }}{% filter upper %}up {{ 'x' }}{% endfilter %}",
       "<3>UP X"},
      {"{% macro m() %}{{ later }}{% endmacro %}{% set later = 5 %}{{ m() }}", "5"},  // names resolve at call time
  });
  EXPECT_NE(render_error("{% macro m(a) %}{% endmacro %}{{ m(1, 2) }}").find("takes not more than 1"),
            std::string::npos);
  EXPECT_NE(render_error("{% macro m(a) %}{% endmacro %}{{ m(b=2) }}").find("no keyword argument 'b'"),
            std::string::npos);
}

TEST(Jinja, StringsCountCodePointsAndSlice) {
  check({
      {"{{ 'héllo'[1] }} {{ 'héllo' | length }} {{ 'héllo'[::-1] }} {{ 'abcdef'[1:4] }} {{ 'abcdef'[-2:] }} "
       "{{ [1, 2, 3, 4][::2] }} {{ messages[-1].content }} {{ messages[1:] | length }}",
       "é 5 olléh bcd ef [1, 3] Yo 2"},
      {R"({{ ' a b '.strip() }}|{{ '--x--'.strip('-') }}|{{ '\n\nx'.lstrip('\n') }}|{{ 'a,b,,c'.split(',') }}|)"
       R"({{ ' a  b '.split() }}|{{ 'a b c'.split(' ', 1) }}|{{ 'abc'.startswith(('x', 'a')) }}{{ 'abc'.endswith('c') }}|)"
       R"({{ 'a-b'.replace('-', '+') }}|{{ 'Hi'.upper() }}{{ 'Hi'.lower() }}|{{ 'x y'.title() }}|)"
       R"({{ 'banana'.count('a') }}{{ 'banana'.find('n') }}|{{ ', '.join(['a', 'b']) }})",
       "a b|x|x|['a', 'b', '', 'c']|['a', 'b']|['a', 'b c']|TrueTrue|a+b|HIhi|X Y|32|a, b"},
      {R"({{ "\u00e9\x41\t|\\" }})", "éA\t|\\"},
  });
}

TEST(Jinja, FiltersTestsAndDictMethods) {
  check({
      {"{{ '  x  ' | trim }}|{{ 'Ab' | upper }}|{{ 'Ab' | lower }}|{{ 'hello world' | title }}|{{ 'hi there' | capitalize }}"
       "|{{ 'aXa' | replace('a', 'b') }}|{{ [3, 1, 2] | sort | join('-') }}|{{ [1, 2] | first }}{{ [1, 2] | last }}|"
       "{{ 'ab' | list }}|{{ [1, 1, 2] | unique | list }}|{{ '4.7' | int }}{{ '4.7' | float }}|{{ 2.675 | round(2) }}|"
       "{{ -2 | abs }}",
       "x|AB|ab|Hello World|Hi there|bXb|1-2-3|12|['a', 'b']|[1, 2]|44.7|2.67|2"},
      {"{{ messages | map(attribute='role') | join(',') }}|{{ messages | selectattr('role', 'equalto', 'user') | "
       "map(attribute='content') | first }}|{{ messages | rejectattr('role', 'in', ['user', 'system']) | list | length }}"
       "|{{ [0, 1, 2] | select | list }}|{{ {'b': 2, 'a': 1} | dictsort }}|{{ {'a': 1} | items | list }}",
       "system,user,assistant|Hi|1|[1, 2]|[('a', 1), ('b', 2)]|[('a', 1)]"},
      {"{{ {'a': 1}.get('a') }}{{ {'a': 1}.get('b', 'd') }}{{ {'a': 1}.get('b') }}|{{ {'a': 1, 'b': 2}.keys() | list }}"
       "|{{ {'a': 1}.values() | list }}|{{ {'a': 1}.items() | list }}",
       "1dNone|['a', 'b']|[1]|[('a', 1)]"},
      {"{{ 5 is divisibleby 5 }}{{ 3 is odd }}{{ 4 is even }}{{ none is none }}{{ 1 is number }}{{ 'a' is string }}"
       "{{ {} is mapping }}{{ [] is iterable }}{{ true is boolean }}{{ 1 is integer }}{{ 1.5 is float }}"
       "{{ x is undefined }}{{ false is false }}{{ 'x' is not none }}",
       "TrueTrueTrueTrueTrueTrueTrueTrueTrueTrueTrueTrueTrueTrue"},
      {"{{ dict(a=1, b=[2]) }} {{ namespace(a=1).a }} {{ range(2, 8, 3) | list }}", "{'a': 1, 'b': [2]} 1 [2, 5]"},
  });
  // The sandbox refuses mutators of lists and dicts.
  EXPECT_NE(render_error("{{ messages.append(1) }}").find("unsafe"), std::string::npos);
  EXPECT_NE(render_error("{{ {'a': 1}.update({}) }}").find("unsafe"), std::string::npos);
  EXPECT_NE(render_error("{{ 1 | nosuchfilter }}").find("No filter named 'nosuchfilter'"), std::string::npos);
  EXPECT_NE(render_error("{{ 1 is nosuchtest }}").find("No test named 'nosuchtest'"), std::string::npos);
}

TEST(Jinja, PrintsAndSerializesLikePython) {
  check({
      {R"({{ {'b': 1, 'a': [1, 2.5, 'é"\n', none, true]} | tojson }})", R"({"b": 1, "a": [1, 2.5, "é\"\n", null, true]})"},
      {"{{ {'k': [1, {}], 'e': []} | tojson(indent=2) }}", "{\n  \"k\": [\n    1,\n    {}\n  ],\n  \"e\": []\n}"},
      {"{{ [1, 'a', none, true, 2.5, ('t',)] }} {{ {'q': \"it's\"} }}", "[1, 'a', None, True, 2.5, ('t',)] {'q': \"it's\"}"},
  });
  // Key order of JSON data survives to tojson (transformers does not sort keys).
  const ojson tools = ojson::parse(R"([{"name": "f", "description": "d", "arguments": {"z": 1, "a": 2}}])");
  const RenderResult r = Template::parse("{{ tools[0] | tojson }}", "t").render({{"tools", Value::from_json(tools)}});
  EXPECT_EQ(r.text, R"({"name": "f", "description": "d", "arguments": {"z": 1, "a": 2}})");
  EXPECT_EQ(py_float_repr(123456789012345678.0), "1.2345678901234568e+17");
  EXPECT_EQ(py_float_repr(0.0001), "0.0001");
  EXPECT_EQ(py_float_repr(-1.5e-7), "-1.5e-07");
  EXPECT_EQ(py_float_repr(1e15), "1000000000000000.0");
}

TEST(Jinja, StrftimeNowAndGenerationSpans) {
  EXPECT_EQ(render("{{ strftime_now('%d %b %Y') }}|{{ strftime_now('%A %B %d, %H:%M') }}"),
            "14 Mar 2025|Friday March 14, 09:26");
  const RenderResult r = render_full(
      "A{% generation %}B{{ 1 }}{% endgeneration %}C{% for i in [1, 2] %}{% generation %}<{{ i }}>{% endgeneration %}"
      "{% endfor %}");
  EXPECT_EQ(r.text, "AB1C<1><2>");
  ASSERT_EQ(r.generation.size(), 3u);
  EXPECT_EQ(r.text.substr(r.generation[0].first, r.generation[0].second - r.generation[0].first), "B1");
  EXPECT_EQ(r.text.substr(r.generation[2].first, r.generation[2].second - r.generation[2].first), "<2>");
  EXPECT_TRUE(Template::parse("{% generation %}x{% endgeneration %}", "t").has_generation());
  EXPECT_FALSE(Template::parse("x", "t").has_generation());
  // Without an override strftime_now formats the current date.
  const std::string year = Template::parse("{{ strftime_now('%Y') }}", "t").render({}).text;
  EXPECT_EQ(year.size(), 4u);
  EXPECT_GE(std::stoi(year), 2025);
}

TEST(Jinja, ErrorsNameTemplateLineAndColumn) {
  EXPECT_EQ(error_of([] { Template::parse("line one\n{% if x %}\n{{ 1 + }}\n{% endif %}", "my.jinja"); }),
            "my.jinja:3:8: unexpected end of print statement");
  EXPECT_NE(error_of([] { Template::parse("{% for x in y %}", "tokenizer_config.json:chat_template"); })
                .find("tokenizer_config.json:chat_template:1:17: unexpected end of template: looking for the tag "
                      "'endfor' or 'else' to close the 'for' block"),
            std::string::npos);
  EXPECT_NE(error_of([] { Template::parse("{% frobnicate %}", "t"); }).find("t:1:4: unknown or unsupported tag"),
            std::string::npos);
  EXPECT_NE(error_of([] { Template::parse("{% break %}", "t"); }).find("outside a for loop"), std::string::npos);
  EXPECT_NE(error_of([] { Template::parse("{{ 'open", "t"); }).find("unterminated string"), std::string::npos);
  EXPECT_NE(error_of([] { Template::parse("{# open", "t"); }).find("missing end of comment"), std::string::npos);
  EXPECT_EQ(error_of([] { Template::parse("{{ (1 }}", "t"); }), "t:1:7: unexpected '}', expected ')'");
  // Runtime errors point at the expression.
  EXPECT_EQ(render_error("ok\n  {{ messages[0].content.nope() }}"), "t.jinja:2:30: 'str object' has no attribute 'nope'");
  EXPECT_NE(render_error("{{ 1 / 0 }}").find("t.jinja:1:6: division by zero"), std::string::npos);
}

TEST(Jinja, RaiseExceptionIsTheMessage) {
  try {
    render("{% if messages[0].role == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}");
    FAIL() << "no error";
  } catch (const RaisedError& e) {
    EXPECT_STREQ(e.what(), "System role not supported");
  }
}

TEST(Jinja, HostileTemplatesAreBounded) {
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_NE(render_error("{% for i in range(100000) %}{% for j in range(1000) %}{% endfor %}{% endfor %}")
                .find("evaluation steps"),
            std::string::npos);
  EXPECT_NE(render_error("{% macro r(n) %}{{ r(n) }}{% endmacro %}{{ r(1) }}").find("nested more than"),
            std::string::npos);
  EXPECT_NE(render_error("{{ 'x' * 1000000000 }}").find("MiB"), std::string::npos);
  EXPECT_NE(render_error("{{ range(1000000000) | length }}").find("Range too big"), std::string::npos);
  EXPECT_NE(render_error("{% set ns = namespace(s='xxxxxxxxxxxxxxxx') %}{% for i in range(40) %}"
                         "{% set ns.s = ns.s ~ ns.s %}{% endfor %}")
                .find("MiB"),
            std::string::npos);
  EXPECT_NE(render_error("{{ 9223372036854775807 + 1 }}").find("overflow"), std::string::npos);
  const std::string deep = std::string(5000, '(') + "1" + std::string(5000, ')');
  EXPECT_NE(error_of([&] { Template::parse("{{ " + deep + " }}", "t"); }).find("nested too deeply"),
            std::string::npos);
  std::string nested_ifs;
  for (int i = 0; i < 5000; ++i) nested_ifs += "{% if true %}";
  EXPECT_NE(error_of([&] { Template::parse(nested_ifs, "t"); }).find("nested too deeply"), std::string::npos);
  // A value nested deeper than printing allows is an error, not a stack overflow.
  EXPECT_NE(render_error("{% set ns = namespace(v=[]) %}{% for i in range(2000) %}{% set ns.v = [ns.v] %}{% endfor %}"
                         "{{ ns.v }}")
                .find("nested more than"),
            std::string::npos);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_LT(seconds, 30.0);
}
