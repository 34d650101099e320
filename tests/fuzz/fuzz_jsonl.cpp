// Fuzz target: the prompt dataset reader (JSONL and JSON records, prompt/messages/answer fields) with the byte-level
// fixture tokenizer and the chatml template, strict and with data.skip_malformed. Input: the file's text.
#include <cstddef>
#include <cstdint>
#include <string>

#include "rlcu/chat.h"
#include "rlcu/config.h"
#include "rlcu/data.h"
#include "rlcu/error.h"
#include "rlcu/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const rlcu::Tokenizer tok = rlcu::Tokenizer::load(std::string(RLCU_TEST_FIXTURES) + "/models/byte-tiny");
  static const rlcu::PromptFormat format = rlcu::make_prompt_format(tok, "chatml");
  const std::string text(reinterpret_cast<const char*>(data), size);
  for (bool skip : {false, true}) {
    rlcu::DataConfig cfg;
    cfg.skip_malformed = skip;
    try {
      (void)rlcu::PromptDataset::parse(text, "fuzz.jsonl", cfg, format);
    } catch (const rlcu::Error&) {
    }
  }
  return 0;
}
