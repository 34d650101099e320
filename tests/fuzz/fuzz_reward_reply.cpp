// Fuzz target: the reward command's reply-line parser. Input: one reply line.
#include <cstddef>
#include <cstdint>
#include <string>

#include "rlcu/reward.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string line(reinterpret_cast<const char*>(data), size);
  float r = 0;
  (void)rlcu::parse_reward_reply(line, 3, &r);
  return 0;
}
