// Turning nlohmann::json exceptions into rlcu messages: the file, the line and column, and what the parser expected,
// without the library's "[json.exception.parse_error.101] parse error at line 1, column 5:" prefix.
//
//   json_error_text(e)                          "syntax error while parsing object - unexpected '}'; expected ..."
//   json_parse_error(source, text, e)           "SOURCE:LINE:COL: invalid JSON: <json_error_text>"  (a whole file)
//   json_line_error(source, line, e)            "SOURCE:LINE:COL: invalid JSON: <json_error_text>"  (one JSONL line)
#pragma once

#include <fmt/format.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>

#include <nlohmann/json.hpp>

namespace rlcu {

inline std::string json_error_text(const nlohmann::json::exception& e) {
  std::string w = e.what();
  if (!w.empty() && w[0] == '[') {
    const size_t close = w.find("] ");
    if (close != std::string::npos) w = w.substr(close + 2);
  }
  if (w.rfind("parse error", 0) == 0) {
    const size_t colon = w.find(": ");
    if (colon != std::string::npos) w = w.substr(colon + 2);
  }
  return w;
}

// 1-based line and column of byte offset `pos` (0-based) in `text`.
inline std::pair<size_t, size_t> json_line_col(std::string_view text, size_t pos) {
  size_t line = 1, col = 1;
  for (size_t i = 0; i < pos && i < text.size(); ++i) {
    if (text[i] == '\n') {
      ++line;
      col = 1;
    } else {
      ++col;
    }
  }
  return {line, col};
}

inline std::string json_parse_error(const std::string& source, std::string_view text,
                                    const nlohmann::json::exception& e) {
  if (const auto* pe = dynamic_cast<const nlohmann::json::parse_error*>(&e)) {
    const auto [line, col] = json_line_col(text, pe->byte == 0 ? 0 : pe->byte - 1);
    return fmt::format("{}:{}:{}: invalid JSON: {}", source, line, col, json_error_text(e));
  }
  return fmt::format("{}: invalid JSON: {}", source, json_error_text(e));
}

inline std::string json_line_error(const std::string& source, int64_t line, const nlohmann::json::exception& e) {
  if (const auto* pe = dynamic_cast<const nlohmann::json::parse_error*>(&e))
    return fmt::format("{}:{}:{}: invalid JSON: {}", source, line, pe->byte == 0 ? 1 : pe->byte, json_error_text(e));
  return fmt::format("{}:{}: invalid JSON: {}", source, line, json_error_text(e));
}

}  // namespace rlcu
