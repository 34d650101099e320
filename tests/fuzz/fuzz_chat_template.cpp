// Fuzz target: chat template parsing (the Jinja subset) and rendering. Input: TEMPLATE \0 MESSAGES_JSON; messages
// that are not a JSON list are replaced by a fixed system/user/assistant conversation.
#include <cstddef>
#include <cstdint>

#include <nlohmann/json.hpp>

#include "fuzz_util.h"
#include "rlcu/chat.h"
#include "rlcu/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::vector<std::string> parts = rlcu::fuzz::split_nul(data, size);
  nlohmann::ordered_json msgs =
      parts.size() > 1 ? nlohmann::ordered_json::parse(parts[1], nullptr, false) : nlohmann::ordered_json();
  if (!msgs.is_array())
    msgs = nlohmann::ordered_json::parse(
        R"([{"role":"system","content":"Be brief."},{"role":"user","content":"2+2?"},{"role":"assistant","content":"4"}])");
  try {
    const rlcu::ChatTemplate t = rlcu::ChatTemplate::from_source(parts[0], "fuzz.jinja");
    rlcu::ChatRenderOptions o;
    (void)t.render_json(msgs, o);
    o.add_generation_prompt = false;
    (void)t.render_json(msgs, o);
  } catch (const rlcu::Error&) {
  }
  return 0;
}
