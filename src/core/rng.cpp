// Host-side counter-based randomness (see include/rlcu/rng.h).
#include "rlcu/rng.h"

namespace rlcu {

uint64_t fnv1a64(std::string_view bytes) {
  uint64_t h = 0xCBF29CE484222325ull;
  for (unsigned char c : bytes) {
    h ^= c;
    h *= 0x100000001B3ull;
  }
  return h;
}

int64_t KeyedRng::uniform(int64_t lo, int64_t hi) {
  const uint64_t span = static_cast<uint64_t>(hi - lo) + 1;
  const uint64_t limit = span == 0 ? 0 : UINT64_MAX - UINT64_MAX % span;
  uint64_t x = next();
  while (span != 0 && x >= limit) x = next();
  return lo + static_cast<int64_t>(span == 0 ? x : x % span);
}

}  // namespace rlcu
