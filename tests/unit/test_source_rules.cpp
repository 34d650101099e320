// Rules of the source tree that the compiler does not check.
//
// 1. The module layering of DESIGN.md: modules lowest first
//   core, ops (kernels/), config, tokenizer, model, data, engine, dist, rl, train, cli
// and a module uses only the modules below it. CMake gives each module only its own folder as a private include
// directory, so a private header of another module does not compile; this test covers what the compiler cannot:
//   * no `#include "../..."` path out of a folder, anywhere;
//   * a quoted include in a module is either a public header `rlcu/X.h` or a file of the module's own folder;
//   * a public header belongs to one module (the table below) and may be included only by that module, the modules
//     above it, and the public headers of those modules.
// A new public header must be added to the table.
//
// 2. No function in src/ longer than kMaxFunctionLines lines (a body a reader takes in at once). kLongFunctions
//    lists the ones still waiting to be split; an entry that is no longer long fails too, so the list only shrinks.
//
// 3. Matrix-product parameters by name (DESIGN.md, conventions): no positional aggregate initialisation of
//    ops::GemmParams (`GemmParams{false, true}`, `GemmParams p{true}`, `GemmParams p = {...}`) in src/, kernels/ or
//    include/; set the fields by name (`p.trans_b = true`) or leave the braces empty.
#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <regex>
#include <string>
#include <vector>

namespace fs = std::filesystem;

namespace {

const std::vector<std::string> kModules = {"core", "ops",    "config", "tokenizer", "model", "data",
                                           "engine", "dist", "rl",     "train",     "cli"};

int level(const std::string& module) {
  for (size_t i = 0; i < kModules.size(); ++i)
    if (kModules[i] == module) return static_cast<int>(i);
  return -1;
}

// The module that owns each public header.
const std::map<std::string, std::string>& owners() {
  static const std::map<std::string, std::string> m = {
      // one line per header, grouped by module (lowest first)
      {"tensor.h", "core"},
      {"context.h", "core"},
      {"error.h", "core"},
      {"cuda_check.h", "core"},
      {"profile.h", "core"},
      {"parallel.h", "core"},
      {"rng.h", "core"},
      {"signals.h", "core"},
      {"json_error.h", "core"},
      {"input_file.h", "core"},
      {"output_file.h", "core"},
      {"ops.h", "ops"},
      {"rl_ops.h", "ops"},
      {"reward_ops.h", "ops"},
      {"config.h", "config"},
      {"tokenizer.h", "tokenizer"},
      {"chat.h", "tokenizer"},
      {"token_bytes.h", "tokenizer"},
      {"model.h", "model"},
      {"layer.h", "model"},
      {"safetensors.h", "model"},
      {"init_model.h", "model"},
      {"lora.h", "model"},
      {"data.h", "data"},
      {"synth.h", "data"},
      {"engine.h", "engine"},
      {"dist.h", "dist"},
      {"reward.h", "rl"},
      {"eval.h", "rl"},
      {"algorithm.h", "rl"},
      {"rollout_batch.h", "rl"},
      {"advantage.h", "rl"},
      {"reference.h", "rl"},
      {"rollout_correction.h", "rl"},
      {"eval_run.h", "rl"},
      {"critic.h", "rl"},
      {"trainer.h", "train"},
      {"sft.h", "train"},
      {"run_dir.h", "train"},
      {"checkpoint.h", "train"},
      {"metrics.h", "train"},
      {"optimizer.h", "train"},
      {"tensorboard.h", "train"},
      {"memory_plan.h", "train"},
  };
  return m;
}

struct Include {
  std::string path;
  int line;
};

std::vector<Include> quoted_includes(const fs::path& file) {
  static const std::regex re(R"(^\s*#\s*include\s*"([^"]+)\")");
  std::vector<Include> out;
  std::ifstream in(file);
  std::string line;
  int n = 0;
  while (std::getline(in, line)) {
    ++n;
    std::smatch m;
    if (std::regex_search(line, m, re)) out.push_back({m[1].str(), n});
  }
  return out;
}

bool is_source(const fs::path& p) {
  const std::string e = p.extension().string();
  return e == ".h" || e == ".cpp" || e == ".cu" || e == ".cuh" || e == ".inc";
}

const fs::path kRoot = RLCU_SOURCE_DIR;

// Checks one file of `module` whose private include directory is `own_dir` (empty for public headers).
void check_file(const fs::path& file, const std::string& module, const fs::path& own_dir,
                std::vector<std::string>& problems) {
  const std::string rel = fs::relative(file, kRoot).string();
  for (const Include& inc : quoted_includes(file)) {
    const std::string where = rel + ":" + std::to_string(inc.line) + ": \"" + inc.path + "\"";
    if (inc.path.rfind("../", 0) == 0 || inc.path.find("/../") != std::string::npos) {
      problems.push_back(where + " leaves its folder with ../");
      continue;
    }
    if (inc.path.rfind("rlcu/", 0) == 0) {
      const std::string name = inc.path.substr(5);
      const auto it = owners().find(name);
      if (it == owners().end()) {
        problems.push_back(where + " is a public header missing from the layering table of test_layering.cpp");
        continue;
      }
      if (level(it->second) > level(module))
        problems.push_back(where + " belongs to module " + it->second + ", above " + module);
      continue;
    }
    const bool local = !own_dir.empty() && (fs::exists(own_dir / inc.path) || fs::exists(file.parent_path() / inc.path));
    if (!local) problems.push_back(where + " is neither a public header nor a file of module " + module);
  }
}

}  // namespace

TEST(Layering, EveryPublicHeaderHasAnOwner) {
  std::vector<std::string> missing;
  for (const auto& e : fs::directory_iterator(kRoot / "include" / "rlcu"))
    if (!owners().count(e.path().filename().string())) missing.push_back(e.path().filename().string());
  EXPECT_TRUE(missing.empty()) << "public headers without a module in test_layering.cpp: " << missing.size()
                               << (missing.empty() ? "" : " (first: " + missing[0] + ")");
}

TEST(Layering, ModulesIncludeOnlyWhatIsBelowThem) {
  std::vector<std::string> problems;
  for (const std::string& m : kModules) {
    const fs::path dir = m == "ops" ? kRoot / "kernels" : kRoot / "src" / m;
    if (!fs::exists(dir)) continue;
    for (const auto& e : fs::recursive_directory_iterator(dir))
      if (e.is_regular_file() && is_source(e.path())) check_file(e.path(), m, dir, problems);
  }
  for (const auto& e : fs::directory_iterator(kRoot / "include" / "rlcu")) {
    const auto it = owners().find(e.path().filename().string());
    if (it != owners().end()) check_file(e.path(), it->second, fs::path(), problems);
  }
  for (const std::string& p : problems) ADD_FAILURE() << p;
}

namespace {

constexpr int kMaxFunctionLines = 150;

// "file: start of the function's header" of functions known to be too long.
const std::vector<std::string> kLongFunctions = {
};

// Lengths of the function bodies in a C++ source: every brace block at namespace level whose opening line holds a
// parameter list, and the member functions defined inside class bodies. Strings, characters and comments are
// skipped; `namespace ... {` and `extern "C" {` do not count as a level.
struct FunctionSpan {
  std::string header;
  int first_line, lines;
};

// Whether `header` holds an assignment outside parentheses (`int x = {`, `auto f = [] {`): then the brace block is
// an initialiser or a lambda, not a function body (default arguments sit inside the parameter list).
bool assigns_at_top(const std::string& header) {
  int depth = 0;
  for (size_t i = 0; i < header.size(); ++i) {
    const char c = header[i];
    if (c == '(' || c == '[' || c == '<') ++depth;
    if (c == ')' || c == ']' || c == '>') --depth;
    if (c != '=' || depth > 0) continue;
    const char prev = i > 0 ? header[i - 1] : ' ', next = i + 1 < header.size() ? header[i + 1] : ' ';
    if (next == '=' || prev == '=' || prev == '!' || prev == '<' || prev == '>') continue;
    const size_t op = header.rfind("operator", i);
    if (op != std::string::npos && i - op <= 9) continue;  // operator=, operator+= ...
    return true;
  }
  return false;
}

std::vector<FunctionSpan> function_spans(const fs::path& file) {
  std::ifstream in(file);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<FunctionSpan> out;
  struct Open {
    enum Kind { Namespace, Class, Function, Other } kind;
    int line;
    std::string header;
  };
  std::vector<Open> stack;
  std::string header;  // text since the last ; { or }
  int line = 1;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (c == '\n') {
      ++line;
      header += ' ';
      continue;
    }
    if (c == '/' && i + 1 < text.size() && text[i + 1] == '/') {
      while (i < text.size() && text[i] != '\n') ++i;
      --i;
      continue;
    }
    if (c == '/' && i + 1 < text.size() && text[i + 1] == '*') {
      for (i += 2; i + 1 < text.size() && !(text[i] == '*' && text[i + 1] == '/'); ++i)
        if (text[i] == '\n') ++line;
      ++i;
      continue;
    }
    if (c == 'R' && i + 2 < text.size() && text[i + 1] == '"') {  // raw string R"delim( ... )delim"
      const size_t open = text.find('(', i + 2);
      const std::string close = ")" + text.substr(i + 2, open - i - 2) + "\"";
      const size_t end = text.find(close, open);
      for (size_t k = i; k < end && k < text.size(); ++k)
        if (text[k] == '\n') ++line;
      i = end + close.size() - 1;
      continue;
    }
    if (c == '"' || c == '\'') {
      for (++i; i < text.size() && text[i] != c; ++i)
        if (text[i] == '\\') ++i;
      continue;
    }
    if (c == '#' && header.find_first_not_of(' ') == std::string::npos) {  // preprocessor line (with continuations)
      while (i < text.size() && !(text[i] == '\n' && text[i - 1] != '\\')) {
        if (text[i] == '\n') ++line;
        ++i;
      }
      --i;
      continue;
    }
    if (c == '{') {
      const bool in_code = !stack.empty() && (stack.back().kind == Open::Function || stack.back().kind == Open::Other);
      Open o{Open::Other, line, header};
      if (!in_code) {
        if (std::regex_search(header, std::regex(R"((^|[\s;}])(namespace|extern\s+"C")\b)")))
          o.kind = Open::Namespace;
        else if (std::regex_search(header, std::regex(R"(\b(class|struct|union|enum)\b)")) &&
                 header.find('(') == std::string::npos)
          o.kind = Open::Class;
        else if (header.find('(') != std::string::npos && !assigns_at_top(header))
          o.kind = Open::Function;
      }
      stack.push_back(o);
      header.clear();
      continue;
    }
    if (c == '}') {
      if (!stack.empty()) {
        const Open o = stack.back();
        stack.pop_back();
        if (o.kind == Open::Function) out.push_back({o.header, o.line, line - o.line + 1});
      }
      header.clear();
      continue;
    }
    if (c == ';') {
      header.clear();
      continue;
    }
    header += c;
  }
  return out;
}

}  // namespace

TEST(SourceRules, NoFunctionLongerThanTheLimit) {
  std::vector<std::string> still_long;
  for (const auto& e : fs::recursive_directory_iterator(kRoot / "src")) {
    if (!e.is_regular_file() || !is_source(e.path())) continue;
    const std::string rel = fs::relative(e.path(), kRoot).string();
    for (const FunctionSpan& f : function_spans(e.path())) {
      if (f.lines <= kMaxFunctionLines) continue;
      std::string h = f.header;
      h.erase(0, h.find_first_not_of(' '));
      bool known = false;
      for (const std::string& k : kLongFunctions)
        if (k.rfind(rel + ": ", 0) == 0 && h.rfind(k.substr(rel.size() + 2), 0) == 0) {
          known = true;
          still_long.push_back(k);
        }
      if (h.size() > 100) h = h.substr(0, 100) + "...";
      if (!known)
        ADD_FAILURE() << rel << ":" << f.first_line << ": " << f.lines << " lines (limit " << kMaxFunctionLines
                      << "): " << h;
    }
  }
  for (const std::string& k : kLongFunctions)
    EXPECT_NE(std::find(still_long.begin(), still_long.end(), k), still_long.end())
        << "kLongFunctions lists \"" << k << "\", which is no longer too long (or moved): remove it";
}

TEST(SourceRules, FunctionSpansOfASmallSource) {
  const fs::path p = fs::temp_directory_path() / "rlcu_function_spans.cpp";
  {
    std::ofstream o(p);
    o << "namespace a {\nstruct S {\n  int f(int x) {\n    return x;\n  }\n};\n"
         "// }{ comment\nint g(int y = 1) {\n  const char* s = \"}{\";\n  if (y) {\n    y = 2;\n  }\n"
         "  return y;\n}\n}  // namespace a\n";
  }
  const std::vector<FunctionSpan> spans = function_spans(p);
  fs::remove(p);
  ASSERT_EQ(spans.size(), 2u);
  EXPECT_EQ(spans[0].first_line, 3);
  EXPECT_EQ(spans[0].lines, 3);
  EXPECT_EQ(spans[1].first_line, 8);
  EXPECT_EQ(spans[1].lines, 7);
}

TEST(Layering, EverySourceFolderIsAModule) {
  for (const auto& e : fs::directory_iterator(kRoot / "src"))
    if (e.is_directory()) {
      EXPECT_GE(level(e.path().filename().string()), 0) << e.path() << " is not a module";
    }
}

namespace {

// The source text with comments and string literals blanked (line breaks kept, so offsets map to the same lines).
std::string code_only(const std::string& text) {
  std::string out = text;
  for (size_t i = 0; i < out.size(); ++i) {
    if (out[i] == '/' && i + 1 < out.size() && out[i + 1] == '/') {
      for (; i < out.size() && out[i] != '\n'; ++i) out[i] = ' ';
    } else if (out[i] == '/' && i + 1 < out.size() && out[i + 1] == '*') {
      for (; i + 1 < out.size() && !(out[i] == '*' && out[i + 1] == '/'); ++i)
        if (out[i] != '\n') out[i] = ' ';
      if (i + 1 < out.size()) out[i] = out[i + 1] = ' ';
      ++i;
    } else if (out[i] == '"' || (out[i] == '\'' && !(i > 0 && std::isalnum(static_cast<unsigned char>(out[i - 1]))))) {
      const char q = out[i];
      for (++i; i < out.size() && out[i] != q && out[i] != '\n'; ++i) {
        if (out[i] == '\\' && i + 1 < out.size()) out[i++] = ' ';
        out[i] = ' ';
      }
    }
  }
  return out;
}

// Line numbers (1-based) of positional GemmParams initialisations in `text`: `GemmParams`, an optional variable
// name and `=`, then braces whose content is not empty and does not start with a designator (`.field`).
std::vector<int> positional_gemm_params(const std::string& text) {
  static const std::regex re(R"((\bstruct\s+)?\bGemmParams\s*(\w+\s*)?(=\s*)?\{\s*([^}\s]))");
  const std::string code = code_only(text);
  std::vector<int> lines;
  for (auto it = std::sregex_iterator(code.begin(), code.end(), re); it != std::sregex_iterator(); ++it) {
    if ((*it)[1].matched || (*it)[4].str() == ".") continue;  // the definition, or designated initialisers
    lines.push_back(1 + static_cast<int>(std::count(code.begin(), code.begin() + it->position(0), '\n')));
  }
  return lines;
}

}  // namespace

TEST(SourceRules, GemmParamsAreSetByName) {
  for (const char* dir : {"src", "kernels", "include"})
    for (const auto& e : fs::recursive_directory_iterator(kRoot / dir)) {
      if (!e.is_regular_file() || !is_source(e.path())) continue;
      std::ifstream in(e.path());
      const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      for (int line : positional_gemm_params(text))
        ADD_FAILURE() << fs::relative(e.path(), kRoot).string() << ":" << line
                      << ": positional GemmParams initialisation; set the fields by name (p.trans_b = true)";
    }
}

TEST(SourceRules, PositionalGemmParamsAreFound) {
  EXPECT_EQ(positional_gemm_params("gemm(o, a, b, ops::GemmParams{false, true}, ctx);"), std::vector<int>{1});
  EXPECT_EQ(positional_gemm_params("x;\nops::GemmParams p{true};"), std::vector<int>{2});
  EXPECT_EQ(positional_gemm_params("const GemmParams p = {\n  false, true};"), std::vector<int>{1});
  EXPECT_EQ(positional_gemm_params("GemmParams{\n}"), std::vector<int>{});
  EXPECT_EQ(positional_gemm_params("ops::GemmParams p;\np.trans_b = true;\ngemm(o, a, b, ops::GemmParams{}, c);"),
            std::vector<int>{});
  EXPECT_EQ(positional_gemm_params("GemmParams p{.trans_b = true};"), std::vector<int>{});
  EXPECT_EQ(positional_gemm_params("// GemmParams{false, true}\nconst char* s = \"GemmParams{1}\";"),
            std::vector<int>{});
  EXPECT_EQ(positional_gemm_params("struct GemmParams {\n  bool trans_a = false;\n};"), std::vector<int>{});
  EXPECT_EQ(positional_gemm_params("void f(const GemmParams& p) {\n  g(p);\n}"), std::vector<int>{});
}
