// Built-in chat templates: name, Jinja source and the special tokens the template writes (a tokenizer without them
// cannot encode the prompts the model was trained on, which ChatTemplate warns about).
#pragma once

#include <string>
#include <vector>

namespace rlcu {

struct BuiltinChatTemplate {
  const char* name;
  const char* source;
  std::vector<std::string> tokens;
};

const std::vector<BuiltinChatTemplate>& builtin_chat_templates();

}  // namespace rlcu
