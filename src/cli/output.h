// Output sink shared by the commands that write result files (score, generate): stdout, or a temporary file next
// to the destination that commit() renames into place, so an error never leaves a partial file.
#pragma once

#include <fmt/format.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>

#include "rlcu/error.h"

namespace rlcu::cli {

class Output {
 public:
  explicit Output(const std::string& path) : path_(path) {
    if (path_.empty()) {
      f_ = stdout;
      return;
    }
    tmp_ = fmt::format("{}.tmp.{}", path_, static_cast<long>(getpid()));
    f_ = std::fopen(tmp_.c_str(), "wb");
    if (!f_) throw Error(fmt::format("{}: cannot create output file: {}", path_, std::strerror(errno)));
  }
  ~Output() {
    if (!path_.empty() && f_) {
      std::fclose(f_);
      std::remove(tmp_.c_str());
    }
  }
  void write(const std::string& s) {
    if (std::fwrite(s.data(), 1, s.size(), f_) != s.size())
      throw Error(fmt::format("{}: write failed: {}", path_.empty() ? "stdout" : path_, std::strerror(errno)));
  }
  void commit() {
    if (path_.empty()) {
      if (std::fflush(stdout) != 0) throw Error(fmt::format("stdout: write failed: {}", std::strerror(errno)));
      return;
    }
    const bool ok = std::fflush(f_) == 0 && fsync(fileno(f_)) == 0;
    const int err = errno;
    const bool closed = std::fclose(f_) == 0;
    f_ = nullptr;
    if (!ok || !closed) {
      std::remove(tmp_.c_str());
      throw Error(fmt::format("{}: write failed: {}", path_, std::strerror(err)));
    }
    if (std::rename(tmp_.c_str(), path_.c_str()) != 0) {
      const int e = errno;
      std::remove(tmp_.c_str());
      throw Error(fmt::format("{}: cannot move the output into place: {}", path_, std::strerror(e)));
    }
  }

 private:
  std::string path_, tmp_;
  std::FILE* f_ = nullptr;
};

}  // namespace rlcu::cli
