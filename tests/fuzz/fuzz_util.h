// Shared by the libFuzzer targets: an input is well handled when it parses or fails with rlcu::Error (the message a
// user sees). Any other exception (a JSON library error, std::out_of_range, bad_alloc) escapes the target and
// libFuzzer reports it, like a sanitizer finding.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace rlcu::fuzz {

// Splits the input at NUL bytes: the first part and the rest (as separate strings).
inline std::vector<std::string> split_nul(const uint8_t* data, size_t size) {
  std::vector<std::string> parts(1);
  for (size_t i = 0; i < size; ++i) {
    if (data[i] == 0)
      parts.emplace_back();
    else
      parts.back() += static_cast<char>(data[i]);
  }
  return parts;
}

}  // namespace rlcu::fuzz
