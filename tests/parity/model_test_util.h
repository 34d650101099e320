// Helpers shared by the model, safetensors, parity and `rlcu score` tests: fixture paths, scratch directories,
// golden files, byte-level file edits and running the CLI with its exit code, stdout and stderr captured.
#pragma once

#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

namespace rlcu::test {

namespace fs = std::filesystem;

inline std::string fixture_model(const std::string& name) {
  return (fs::path(RLCU_TEST_FIXTURES) / "models" / name).string();
}

// The six fixture model directories: HF float32 saves and their bf16 re-saves.
inline std::vector<std::string> fixture_model_names() {
  return {"qwen3-tiny", "qwen2-tiny", "llama3-tiny", "qwen3-tiny-bf16", "qwen2-tiny-bf16", "llama3-tiny-bf16"};
}

// A fresh directory under the system temp dir, removed with its contents on destruction.
class TempDir {
 public:
  explicit TempDir(const std::string& tag) {
    static std::atomic<int> counter{0};
    path_ = fs::temp_directory_path() /
            ("rlcu-test-" + tag + "-" + std::to_string(getpid()) + "-" + std::to_string(counter++));
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string str() const { return path_.string(); }
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  fs::path path_;
};

struct GoldenSeq {
  std::vector<int32_t> ids;
  std::vector<double> logprobs;
};

// The {"ids", "logprobs"} lines of DIR/golden.jsonl (greedy lines are skipped).
inline std::vector<GoldenSeq> read_golden(const std::string& model_dir) {
  std::ifstream in(fs::path(model_dir) / "golden.jsonl");
  std::vector<GoldenSeq> out;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    const auto j = nlohmann::json::parse(line);
    if (!j.contains("ids")) continue;
    out.push_back({j["ids"].get<std::vector<int32_t>>(), j["logprobs"].get<std::vector<double>>()});
  }
  return out;
}

inline std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

inline void write_text(const std::string& path, const std::string& s) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << s;
}

inline nlohmann::json read_json(const std::string& path) { return nlohmann::json::parse(read_text(path)); }
inline void write_json(const std::string& path, const nlohmann::json& j) { write_text(path, j.dump(2)); }

// Copies every regular file of a model directory into `dst` (created).
inline void copy_model(const std::string& src, const std::string& dst) {
  fs::create_directories(dst);
  for (const auto& e : fs::directory_iterator(src))
    if (e.is_regular_file())
      fs::copy_file(e.path(), fs::path(dst) / e.path().filename(), fs::copy_options::overwrite_existing);
}

struct CmdResult {
  int code = -1;
  std::string out, err;
};

// Runs `RLCU_BIN args` through the shell with stdout and stderr captured to files.
inline CmdResult run_rlcu(const std::string& args) {
  TempDir tmp("cli");
  const std::string cmd =
      std::string("'") + RLCU_BIN + "' " + args + " >'" + tmp.file("out") + "' 2>'" + tmp.file("err") + "'";
  const int st = std::system(cmd.c_str());
  CmdResult r;
  r.code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
  r.out = read_text(tmp.file("out"));
  r.err = read_text(tmp.file("err"));
  return r;
}

inline std::string quote(const std::string& s) { return "'" + s + "'"; }

}  // namespace rlcu::test
