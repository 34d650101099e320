// Runs the built rlcu binary (RLCU_BIN) with arguments and captures exit code, stdout and stderr.
#pragma once

#include <sys/wait.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <unistd.h>

namespace rlcu::test {

struct CliResult {
  int code = -1;
  std::string out, err;
};

inline std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

inline std::string temp_dir() {
  static std::string dir = [] {
    char tmpl[] = "/tmp/rlcu_test_XXXXXX";
    const char* d = mkdtemp(tmpl);
    return std::string(d ? d : "/tmp");
  }();
  return dir;
}

inline void write_file(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
}

// `args` is appended to the binary path as is (shell syntax: quote what needs quoting). With `cwd` set, the binary
// runs in that directory. With `stdout_to`, stdout goes there (e.g. /dev/full) and CliResult::out stays empty.
inline CliResult run_cli(const std::string& args, const std::string& cwd = "", const std::string& stdout_to = "") {
  static int counter = 0;
  const std::string base = temp_dir() + "/cli_" + std::to_string(getpid()) + "_" + std::to_string(counter++);
  const std::string cmd = (cwd.empty() ? "" : "cd '" + cwd + "' && ") + std::string(RLCU_BIN) + " " + args + " >" +
                          (stdout_to.empty() ? base + ".out" : stdout_to) + " 2>" + base + ".err </dev/null";
  const int status = std::system(cmd.c_str());
  CliResult r;
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.out = read_file(base + ".out");
  r.err = read_file(base + ".err");
  std::remove((base + ".out").c_str());
  std::remove((base + ".err").c_str());
  return r;
}

}  // namespace rlcu::test
