// Input files named by the user (configs, data, --input files): a directory opens as an empty stream on Linux, which
// would read as an empty file (a run with "no usable prompts", `tokenize` printing nothing with exit 0). Each
// reader calls require_not_directory first, so the error says what is wrong.
#pragma once

#include <fmt/format.h>
#include <sys/stat.h>

#include <string>

#include "rlcu/error.h"

namespace rlcu {

// Throws "PATH: is a directory, expected WHAT" when PATH names a directory; anything else is left to the reader.
inline void require_not_directory(const std::string& path, const std::string& what) {
  struct stat st;
  if (::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode))
    throw Error(fmt::format("{}: is a directory, expected {}", path, what));
}

}  // namespace rlcu
