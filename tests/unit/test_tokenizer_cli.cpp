// `rlcu tokenize`: encode, --chat and --decode through the built binary on the Qwen3 fixture, one output line per
// input line in order, and errors naming the file and line with exit code 1 (2 for a bad command line).
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include <nlohmann/json.hpp>

using json = nlohmann::json;
namespace fs = std::filesystem;

namespace {

const std::string kQwen3 = std::string(RLCU_TEST_FIXTURES) + "/tokenizers/qwen3";

struct Result {
  int code;
  std::string out;
  std::string err;
};

Result run(const std::string& args) {
  const fs::path dir = fs::temp_directory_path();
  const std::string tag = std::to_string(std::random_device{}());
  const fs::path out = dir / ("rlcu_cli_out_" + tag), err = dir / ("rlcu_cli_err_" + tag);
  const std::string cmd = std::string(RLCU_BIN) + " " + args + " >" + out.string() + " 2>" + err.string();
  const int status = std::system(cmd.c_str());
  auto slurp = [](const fs::path& p) {
    std::ifstream f(p);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
  };
  Result r{WIFEXITED(status) ? WEXITSTATUS(status) : -1, slurp(out), slurp(err)};
  fs::remove(out);
  fs::remove(err);
  return r;
}

std::string write_input(const std::string& text) {
  const fs::path p = fs::temp_directory_path() / ("rlcu_cli_in_" + std::to_string(std::random_device{}()) + ".jsonl");
  std::ofstream(p) << text;
  return p.string();
}

std::vector<json> lines_of(const std::string& out) {
  std::vector<json> v;
  std::istringstream ss(out);
  std::string line;
  while (std::getline(ss, line)) v.push_back(json::parse(line));
  return v;
}

}  // namespace

TEST(TokenizeCli, EncodeMatchesGoldenInOrder) {
  std::ifstream golden(kQwen3 + "/golden.jsonl");
  std::string line, input;
  std::vector<json> expect;
  while (std::getline(golden, line)) {
    const json g = json::parse(line);
    input += json{{"text", g["text"]}}.dump() + "\n";
    expect.push_back(g["ids"]);
  }
  const std::string in = write_input(input);
  const Result r = run("tokenize --tokenizer " + kQwen3 + " --input " + in);
  fs::remove(in);
  ASSERT_EQ(r.code, 0) << r.err;
  const auto out = lines_of(r.out);
  ASSERT_EQ(out.size(), expect.size());
  for (size_t i = 0; i < out.size(); ++i) EXPECT_EQ(out[i]["ids"], expect[i]) << "line " << i + 1;
}

TEST(TokenizeCli, ChatRendersAndDecodeInverts) {
  const std::string in = write_input(
      R"({"messages": [{"role": "user", "content": "What is 2+3?"}]})"
      "\n"
      R"({"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"}]})"
      "\n");
  const Result r = run("tokenize --tokenizer " + kQwen3 + " --input " + in + " --chat");
  ASSERT_EQ(r.code, 0) << r.err;
  const auto out = lines_of(r.out);
  ASSERT_EQ(out.size(), 2u);
  EXPECT_EQ(out[0]["text"], "<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(out[0]["ids"].front(), 151644);
  EXPECT_EQ(out[1]["text"], "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");

  const Result nothink = run("tokenize --tokenizer " + kQwen3 + " --input " + in + " --chat --no-thinking");
  ASSERT_EQ(nothink.code, 0) << nothink.err;
  EXPECT_EQ(lines_of(nothink.out)[0]["text"],
            "<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n");
  const Result chatml = run("tokenize --tokenizer " + kQwen3 + " --input " + in + " --chat --template qwen2.5");
  ASSERT_EQ(chatml.code, 0) << chatml.err;
  EXPECT_NE(lines_of(chatml.out)[0]["text"].get<std::string>().find("You are Qwen"), std::string::npos);
  EXPECT_EQ(chatml.err.find("warn"), std::string::npos) << chatml.err;
  // A family whose special tokens the tokenizer lacks renders, with a warning.
  const Result llama = run("tokenize --tokenizer " + kQwen3 + " --input " + in + " --chat --template llama3");
  ASSERT_EQ(llama.code, 0) << llama.err;
  EXPECT_EQ(lines_of(llama.out)[0]["text"], "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nWhat is "
                                            "2+3?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n");
  EXPECT_NE(llama.err.find("<|start_header_id|>, <|end_header_id|>, <|eot_id|>"), std::string::npos) << llama.err;
  // A Jinja file.
  const std::string tmpl = write_input("{{ messages[-1].content | upper }}{% if add_generation_prompt %} =>{% endif %}");
  const Result file = run("tokenize --tokenizer " + kQwen3 + " --input " + in + " --chat --template " + tmpl);
  ASSERT_EQ(file.code, 0) << file.err;
  EXPECT_EQ(lines_of(file.out)[1]["text"], "HI =>");
  fs::remove(tmpl);

  std::string ids_input;
  for (const json& o : out) ids_input += json{{"ids", o["ids"]}}.dump() + "\n";
  ids_input += R"({"ids": [11162]})" "\n";
  const std::string ids_in = write_input(ids_input);
  const Result d = run("tokenize --tokenizer " + kQwen3 + " --input " + ids_in + " --decode");
  ASSERT_EQ(d.code, 0) << d.err;
  const auto decoded = lines_of(d.out);
  ASSERT_EQ(decoded.size(), 3u);
  EXPECT_EQ(decoded[0]["text"], out[0]["text"]);
  EXPECT_EQ(decoded[1]["text"], out[1]["text"]);
  EXPECT_EQ(decoded[2]["text"], " \xEF\xBF\xBD");
  const Result skip = run("tokenize --tokenizer " + kQwen3 + " --input " + ids_in + " --decode --skip-special");
  EXPECT_EQ(lines_of(skip.out)[0]["text"], "user\nWhat is 2+3?\nassistant\n");
  fs::remove(in);
  fs::remove(ids_in);
}

TEST(TokenizeCli, ErrorsNameFileAndLine) {
  const std::string in = write_input("{\"text\": \"ok\"}\n{\"txt\": \"typo\"}\n");
  const Result r = run("tokenize --tokenizer " + kQwen3 + " --input " + in);
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find(in + ":2:"), std::string::npos) << r.err;
  EXPECT_EQ(lines_of(r.out).size(), 1u);  // the good first line was written
  const std::string bad = write_input("{oops\n");
  const Result bad_json = run("tokenize --tokenizer " + kQwen3 + " --input " + bad);
  fs::remove(bad);
  EXPECT_EQ(bad_json.code, 1);
  EXPECT_NE(bad_json.err.find(bad + ":1:"), std::string::npos) << bad_json.err;
  const Result no_dir = run("tokenize --tokenizer /nonexistent --input " + in);
  EXPECT_EQ(no_dir.code, 1);
  EXPECT_NE(no_dir.err.find("/nonexistent: the tokenizer directory does not exist"), std::string::npos) << no_dir.err;
  const Result both = run("tokenize --tokenizer " + kQwen3 + " --input " + in + " --chat --decode");
  EXPECT_EQ(both.code, 2);
  const Result bad_template = run("tokenize --tokenizer " + kQwen3 + " --input " + in + " --chat --template vicuna");
  EXPECT_EQ(bad_template.code, 1);
  EXPECT_NE(bad_template.err.find("'vicuna'"), std::string::npos) << bad_template.err;
  fs::remove(in);
}
