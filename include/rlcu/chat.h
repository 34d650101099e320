// Chat templates: render a conversation (+ the generation prompt) to the exact text the model's Jinja template in
// tokenizer_config.json produces, for the families people train, without a Jinja engine.
//
//   chatml    <|im_start|>{role}\n{content}<|im_end|>\n ... <|im_start|>assistant\n            (no default system)
//   qwen2     ChatML; system "You are a helpful assistant." when the conversation has none
//   qwen2.5   ChatML; system "You are Qwen, created by Alibaba Cloud. You are a helpful assistant." when none;
//             consecutive tool messages grouped into one user turn of <tool_response> blocks
//   qwen3     ChatML without default system; assistant turns after the last user query carry their
//             <think>...</think> block, earlier ones lose it; enable_thinking=false appends an empty think block
//             to the generation prompt
//   llama3    {bos}<|start_header_id|>{role}<|end_header_id|>\n\n{trimmed content}<|eot_id|> ... then
//             <|start_header_id|>assistant<|end_header_id|>\n\n
//   llama3.1  Llama 3.1/3.2/3.3: BOS, then always a system turn "Cutting Knowledge Date: December 2023\n
//             Today Date: 26 Jul 2024\n\n{system}" (the template's fixed date; 3.2's strftime_now date is not
//             used so that prompts do not change with the calendar), tool/ipython turns under the ipython header
//   none      the user message as is (a system message, when given, followed by "\n\n")
//   custom    one string with {system} and {prompt} placeholders ({{ and }} for literal braces) rendering one
//             optional system message and one user message; it is the whole prompt, generation prompt included
//
// "auto" recognises the family from distinctive markers in the model's template; an unrecognised template is an
// rlcu::Error telling how to choose one explicitly.
#pragma once

#include <string>
#include <vector>

namespace rlcu {

class Tokenizer;

struct ChatMessage {
  std::string role;               // system | user | assistant | tool (ipython for llama3.1)
  std::string content;
  std::string reasoning_content;  // qwen3: the assistant's thinking when kept apart from content
};

struct ChatRenderOptions {
  bool add_generation_prompt = true;  // end with the assistant header the model continues from
  bool enable_thinking = true;        // qwen3 thinking switch; false renders "<think>\n\n</think>\n\n"
};

enum class ChatFamily { None, ChatML, Qwen2, Qwen25, Qwen3, Llama3, Llama31, Custom };

class ChatTemplate {
 public:
  // name: auto | none | chatml | qwen2 | qwen2.5 | qwen3 | llama3 | llama3.1 | custom.
  // hf_template: the model's Jinja template (used by auto); bos_token: the BOS string the llama templates emit;
  // custom_template: the template string when name is custom.
  static ChatTemplate resolve(const std::string& name, const std::string& hf_template, const std::string& bos_token,
                              const std::string& custom_template = "");
  // The same, taking the template and BOS from a loaded tokenizer.
  static ChatTemplate for_tokenizer(const Tokenizer& tok, const std::string& name = "auto",
                                    const std::string& custom_template = "");

  std::string render(const std::vector<ChatMessage>& messages, const ChatRenderOptions& opts = {}) const;

  ChatFamily family() const { return family_; }
  std::string name() const;  // the family's config name ("qwen2.5", ...)
  // Whether rendered text already carries the model's BOS (llama3 families), so encoding must not add one.
  bool renders_bos() const { return family_ == ChatFamily::Llama3 || family_ == ChatFamily::Llama31; }

 private:
  ChatFamily family_ = ChatFamily::None;
  std::string bos_token_;
  std::string custom_;
};

// Recognises the family of a Jinja chat template from its markers; throws rlcu::Error for one it does not know
// (the message lists the names to set instead). An empty template is an error too (set none or a family).
ChatFamily detect_chat_family(const std::string& hf_template);
ChatFamily chat_family_from_name(const std::string& name);  // throws rlcu::Error for an unknown name
std::string chat_family_name(ChatFamily family);

}  // namespace rlcu
