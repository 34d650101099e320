// Output sink for commands that write a result file (score, generate, eval, data synth) or stdout. A regular file
// (or a path that does not exist yet) is written to a temporary file next to the destination that commit() syncs
// and renames into place, so an error never leaves a partial file. An existing path that is not a regular file (a
// device such as /dev/stdout or /dev/full, a FIFO) is written directly: renaming over it would replace the device.
// Every write and the final flush are checked: a failed write (a full disk) is an rlcu::Error naming the output.
#pragma once

#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>

#include "rlcu/error.h"

namespace rlcu {

class OutputFile {
 public:
  // "" = stdout.
  explicit OutputFile(const std::string& path) : path_(path) {
    if (path_.empty()) {
      f_ = stdout;
      return;
    }
    struct stat st;
    direct_ = ::stat(path_.c_str(), &st) == 0 && !S_ISREG(st.st_mode);
    if (direct_ && S_ISDIR(st.st_mode)) throw Error(fmt::format("{}: is a directory, expected an output file", path_));
    tmp_ = direct_ ? path_ : fmt::format("{}.tmp.{}", path_, static_cast<long>(getpid()));
    f_ = std::fopen(tmp_.c_str(), "wb");
    if (!f_)
      throw Error(fmt::format("{}: cannot {} output file: {}", path_, direct_ ? "open the" : "create the",
                              std::strerror(errno)));
  }
  ~OutputFile() {
    if (!path_.empty() && f_) {
      std::fclose(f_);
      if (!direct_) std::remove(tmp_.c_str());
    }
  }
  OutputFile(const OutputFile&) = delete;
  OutputFile& operator=(const OutputFile&) = delete;

  const std::string& name() const { return path_.empty() ? stdout_name() : path_; }

  void write(const std::string& s) {
    if (std::fwrite(s.data(), 1, s.size(), f_) != s.size() || std::ferror(f_))
      throw Error(fmt::format("{}: write failed: {}", name(), std::strerror(errno ? errno : EIO)));
  }
  void commit() {
    if (path_.empty()) {
      if (std::fflush(stdout) != 0 || std::ferror(stdout))
        throw Error(fmt::format("stdout: write failed: {}", std::strerror(errno ? errno : EIO)));
      return;
    }
    errno = 0;
    bool ok = std::fflush(f_) == 0 && !std::ferror(f_);
    if (ok && !direct_) ok = fsync(fileno(f_)) == 0;
    int err = errno;
    const bool closed = std::fclose(f_) == 0;
    if (!closed && ok) err = errno;
    f_ = nullptr;
    if (!ok || !closed) {
      if (!direct_) std::remove(tmp_.c_str());
      throw Error(fmt::format("{}: write failed: {}", path_, std::strerror(err ? err : EIO)));
    }
    if (direct_) return;
    if (std::rename(tmp_.c_str(), path_.c_str()) != 0) {
      const int e = errno;
      std::remove(tmp_.c_str());
      throw Error(fmt::format("{}: cannot move the output into place: {}", path_, std::strerror(e)));
    }
  }

  // Writes `s` to stdout; a short write is an error naming stdout (the final flush is check_stdout()).
  static void write_stdout(const std::string& s) {
    if (std::fwrite(s.data(), 1, s.size(), stdout) != s.size() || std::ferror(stdout))
      throw Error(fmt::format("stdout: write failed: {}", std::strerror(errno ? errno : EIO)));
  }
  // Flushes stdout and says whether everything written to it arrived (also what std::cout wrote: synced with stdio).
  static void check_stdout() {
    if (std::fflush(stdout) != 0 || std::ferror(stdout))
      throw Error(fmt::format("stdout: write failed: {}", std::strerror(errno ? errno : EIO)));
  }

 private:
  static const std::string& stdout_name() {
    static const std::string s = "stdout";
    return s;
  }
  std::string path_, tmp_;
  bool direct_ = false;
  std::FILE* f_ = nullptr;
};

}  // namespace rlcu
