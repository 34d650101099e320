// Fuzz target: the config parser with --set overrides. Input: CONFIG_JSON [\0 KEY=VALUE]...
#include <cstddef>
#include <cstdint>

#include "fuzz_util.h"
#include "rlcu/config.h"
#include "rlcu/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::vector<std::string> parts = rlcu::fuzz::split_nul(data, size);
  const std::string text = parts[0];
  parts.erase(parts.begin());
  for (rlcu::ConfigUse use : {rlcu::ConfigUse::Rl, rlcu::ConfigUse::Sft}) {
    try {
      const rlcu::RunConfig cfg = rlcu::parse_config(text, "fuzz.json", parts, "", use);
      (void)rlcu::config_to_json(cfg).dump();
    } catch (const rlcu::Error&) {
    }
  }
  return 0;
}
