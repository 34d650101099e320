// Fuzz target: tokenizer.json loading, then encoding and decoding. Input: TOKENIZER_JSON \0 TEXT [\0 CONFIG_JSON].
#include <cstddef>
#include <cstdint>

#include "fuzz_util.h"
#include "rlcu/error.h"
#include "rlcu/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::vector<std::string> parts = rlcu::fuzz::split_nul(data, size);
  try {
    const rlcu::Tokenizer tok = rlcu::Tokenizer::from_json(parts[0], parts.size() > 2 ? parts[2] : "");
    const std::string text = parts.size() > 1 ? parts[1] : "hello world";
    const std::vector<int32_t> ids = tok.encode(text);
    (void)tok.decode(ids);
    rlcu::DecodeOptions d;
    d.skip_special = true;
    (void)tok.decode(ids, d);
  } catch (const rlcu::Error&) {
  }
  return 0;
}
