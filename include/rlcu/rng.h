// Counter-based randomness for every host-side random choice of rlcu (device-side sampling uses Philox, see
// kernels/philox.h). Everything is a pure function of a 64-bit key and a counter, so a draw never depends on how
// many draws came before it, on threads or on the platform's std:: distributions.
//
//   splitmix64(x)        the SplitMix64 finaliser (Steele et al.): a bijective 64-bit mix
//   mix_key(key, n)      splitmix64(key ^ splitmix64(n)): the n-th word of the stream named by key
//   fnv1a64(bytes)       FNV-1a, to derive keys from names
//   KeyedRng             the stream of mix_key(key, 0), mix_key(key, 1), ...
//   keyed_shuffle        Fisher-Yates where step i's word comes from a caller-given draw(i)
#pragma once

#include <cstdint>
#include <string_view>
#include <utility>
#include <vector>

namespace rlcu {

constexpr uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

constexpr uint64_t mix_key(uint64_t key, uint64_t n) { return splitmix64(key ^ splitmix64(n)); }

uint64_t fnv1a64(std::string_view bytes);

// Uniform in (0, 1): the top 53 bits, offset by half a step so that log() never sees 0.
inline double unit_open(uint64_t word) { return (static_cast<double>(word >> 11) + 0.5) * (1.0 / 9007199254740992.0); }

class KeyedRng {
 public:
  explicit KeyedRng(uint64_t key) : key_(key) {}
  uint64_t next() { return mix_key(key_, counter_++); }
  // Uniform integer in [lo, hi] (rejection sampling: no modulo bias).
  int64_t uniform(int64_t lo, int64_t hi);

 private:
  uint64_t key_;
  uint64_t counter_ = 0;
};

// How a 64-bit word picks j in [0, i]: `Modulo` j = word % (i + 1); `Scale` j = floor(word * (i + 1) / 2^64).
// (The prompt loader's epoch order was defined with Scale and the SFT orders with Modulo; both are kept so that
// orders, and so runs, stay reproducible.)
enum class ShuffleIndex { Modulo, Scale };

// Fisher-Yates over v from the back: for i = n-1 down to 1, swap v[i] with v[j(draw(i))].
template <class Draw>
void keyed_shuffle(std::vector<int64_t>& v, Draw draw, ShuffleIndex index) {
  for (size_t i = v.size(); i-- > 1;) {
    const uint64_t w = draw(static_cast<uint64_t>(i));
    const size_t j = index == ShuffleIndex::Modulo
                         ? static_cast<size_t>(w % static_cast<uint64_t>(i + 1))
                         : static_cast<size_t>((static_cast<unsigned __int128>(w) * (i + 1)) >> 64);
    std::swap(v[i], v[j]);
  }
}

// 0, 1, ..., n-1 shuffled with keyed_shuffle.
template <class Draw>
std::vector<int64_t> keyed_permutation(int64_t n, Draw draw, ShuffleIndex index) {
  std::vector<int64_t> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[static_cast<size_t>(i)] = i;
  keyed_shuffle(v, draw, index);
  return v;
}

}  // namespace rlcu
