// Errors: one exception family and one check-macro family for the whole project.
//
//   rlcu::Error         bad user input (config, files, data) or an environment problem; message names the
//                       file/field and what was expected. `main` prints it and exits 1.
//   rlcu::UsageError    bad command line; `main` exits 2.
//   rlcu::InternalError a broken invariant inside rlcu (RLCU_CHECK); names statement, file and line.
//
// RLCU_CUDA_CHECK / RLCU_CUBLAS_CHECK wrap CUDA runtime and cuBLAS(Lt) calls (defined in cuda_check.h so that
// host code without CUDA headers need not include them).
#pragma once

#include <stdexcept>
#include <string>

#include <fmt/format.h>

namespace rlcu {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& msg) : std::runtime_error(msg) {}
};

class UsageError : public Error {
 public:
  explicit UsageError(const std::string& msg) : Error(msg) {}
};

class InternalError : public Error {
 public:
  explicit InternalError(const std::string& msg) : Error(msg) {}
};

[[noreturn]] void throw_check_failure(const char* stmt, const char* file, int line, const std::string& msg);

}  // namespace rlcu

// RLCU_CHECK(cond) or RLCU_CHECK(cond, "format {}", args...): throws InternalError naming the statement.
#define RLCU_CHECK(cond, ...)                                                                   \
  do {                                                                                          \
    if (!(cond)) ::rlcu::throw_check_failure(#cond, __FILE__, __LINE__, fmt::format("" __VA_ARGS__)); \
  } while (0)
