// Config names <-> enums for the rl module: a table of (name, value) pairs per enum, parsed with an error that
// names the config field and every accepted name.
#pragma once

#include <string>
#include <utility>

#include "rlcu/error.h"

namespace rlcu::rl {

template <class E, size_t K>
E parse_enum(const std::string& s, const std::string& field, const std::pair<const char*, E> (&table)[K]) {
  std::string accepted;
  for (const auto& [name, value] : table) {
    if (s == name) return value;
    accepted += accepted.empty() ? "" : ", ";
    accepted += std::string("\"") + name + "\"";
  }
  throw Error(fmt::format("{}: unknown value \"{}\", expected one of {}", field, s, accepted));
}

template <class E, size_t K>
const char* enum_name(E v, const std::pair<const char*, E> (&table)[K]) {
  for (const auto& [name, value] : table)
    if (value == v) return name;
  return "?";
}

}  // namespace rlcu::rl
