// Prompt datasets: records from JSONL (one JSON object a line) or a JSON array of objects, turned into prompt ids
// with the tokenizer and chat template, then served in a per-epoch shuffled order with a resumable cursor.
//
// Building one prompt from a record:
//   messages  = prompt_template set  ─► one user message: the template with each {field} replaced by the record's
//                                        field ({{ and }} are literal braces)
//               record[messages_field] is a list ─► those messages ({role, content[, reasoning_content]})
//               record[prompt_field] is a string ─► one user message; a list ─► messages
//   system_prompt (when set and the messages have no system message) is put first; record[tools_field], when a
//   list, is the template's `tools`; a message's fields other than role/content/reasoning_content (tool_calls,
//   name, ...) reach the template as they are, in the record's key order;
//   text = chat template rendering (+ generation prompt); ids = encode(text) (the tokenizer's BOS added only for
//   the `none` template, where no template put it in the text).
//   answer = record[answer_field] (strings as is, other JSON values as their JSON text).
// Field names may be dotted paths into nested objects ("reward_model.ground_truth").
// Prompts longer than max_prompt_tokens are dropped and counted in the log. A malformed record (bad JSON, not an
// object, missing/mistyped field) is an rlcu::Error naming file and line (JSON arrays: element), or is skipped and
// counted when skip_malformed is set.
//
// Order: epoch e visits every sample once, in the permutation drawn from (seed, e) by Fisher-Yates with a
// counter-based generator (so the order of epoch e never depends on how many samples were drawn before), or in
// file order when shuffle is off. A DataCursor (epoch, position) saved in a checkpoint restores the exact stream.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "rlcu/chat.h"
#include "rlcu/config.h"

namespace rlcu {

class Tokenizer;

struct PromptSample {
  int64_t record = 0;   // 0-based index of the record in the file (blank lines not counted)
  int64_t line = 0;     // 1-based line of the record (JSON arrays: 1-based element number)
  std::string text;     // rendered prompt text
  std::vector<int32_t> ids;
  std::string answer;   // "" when answer_field is "" or the record has none
  nlohmann::json fields;  // the whole record, for rewards that read other fields
};

// How prompt text becomes ids: the tokenizer, the chat template and its options.
struct PromptFormat {
  const Tokenizer* tokenizer = nullptr;
  ChatTemplate chat;
  ChatRenderOptions render;
};

// The format for a tokenizer with the model section's chat settings: model.chat_template (auto, none, a built-in
// name, or on the command line a file), model.chat_template_file (a Jinja file; then chat_template must be auto),
// model.enable_thinking (passed to the template). Throws rlcu::Error for an unknown choice, a model without a
// template under auto, or a template that does not parse.
PromptFormat make_prompt_format(const Tokenizer& tok, const std::string& chat_template = "auto",
                                const std::string& chat_template_file = "", bool enable_thinking = true);

struct DatasetStats {
  int64_t records = 0;    // records read (blank lines excluded)
  int64_t malformed = 0;  // skipped because malformed (skip_malformed only)
  int64_t too_long = 0;   // dropped by max_prompt_tokens
  int64_t kept = 0;
};

class PromptDataset {
 public:
  // Reads cfg.path and builds every prompt. Throws rlcu::Error on a malformed record unless cfg.skip_malformed,
  // on an empty result, and on a bad config value (naming the data.* key).
  static PromptDataset load(const DataConfig& cfg, const PromptFormat& format);
  // The same from text already in memory; `source` names it in messages.
  static PromptDataset parse(const std::string& text, const std::string& source, const DataConfig& cfg,
                             const PromptFormat& format);

  int64_t size() const { return static_cast<int64_t>(samples_.size()); }
  const PromptSample& operator[](int64_t i) const { return samples_.at(static_cast<size_t>(i)); }
  const DatasetStats& stats() const { return stats_; }
  const std::string& source() const { return source_; }

 private:
  std::vector<PromptSample> samples_;
  DatasetStats stats_;
  std::string source_;
};

// Builds the messages of one record (see the file header); throws rlcu::Error("<what is wrong>") without position.
std::vector<ChatMessage> record_messages(const nlohmann::ordered_json& record, const DataConfig& cfg);
// The record's tool schemas (record[cfg.tools_field] when it is a list), else null.
nlohmann::ordered_json record_tools(const nlohmann::ordered_json& record, const DataConfig& cfg);
// Renders and encodes one conversation with `format` (and `tools` for the template's tools variable).
void build_prompt(std::string& text, std::vector<int32_t>& ids, const std::vector<ChatMessage>& messages,
                  const PromptFormat& format, const nlohmann::ordered_json& tools = nullptr);

struct DataCursor {
  int64_t epoch = 0;      // epochs completed
  int64_t position = 0;   // samples already served in the current epoch
  int64_t dataset_size = 0;
  uint64_t seed = 0;
  bool shuffle = true;

  nlohmann::json to_json() const;
  static DataCursor from_json(const nlohmann::json& j);  // throws rlcu::Error on a missing/mistyped key
};

// Serves samples epoch after epoch. Copyable; holds a pointer to the dataset, which must outlive it.
class PromptLoader {
 public:
  PromptLoader(const PromptDataset& dataset, uint64_t seed, bool shuffle);

  const PromptSample& next();  // the next sample; moves to the next epoch (new order) after the last
  std::vector<const PromptSample*> next_batch(int64_t n);
  int64_t epoch() const { return epoch_; }
  int64_t position() const { return position_; }

  DataCursor cursor() const;
  // Continues from a saved cursor; throws rlcu::Error when it was saved for a different dataset size, seed or
  // shuffle setting (the stream would silently differ).
  void restore(const DataCursor& cursor);

  // Sample indices in the order epoch `epoch` serves them.
  std::vector<int64_t> epoch_order(int64_t epoch) const;

 private:
  const PromptDataset* dataset_;
  uint64_t seed_;
  bool shuffle_;
  int64_t epoch_ = 0;
  int64_t position_ = 0;
  std::vector<int64_t> order_;
};

}  // namespace rlcu
