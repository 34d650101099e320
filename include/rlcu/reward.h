// Rewards: scoring completions as a weighted sum of named components, each logged separately.
//
//   total[i] = sum over enabled components c of weight_c * value_c[i]          (weight 0 = component off)
//
// The rule-based components (math_answer, exact_match, countdown, contains, format, length) are the reward ops of
// rlcu/reward_ops.h, whose header gives their rules; the others are
//   command      an external program (see RewardCommand);
//   model        a sequence-classification reward model (see RewardModel).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "rlcu/context.h"
#include "rlcu/reward_ops.h"
#include "rlcu/tensor.h"
#include "rlcu/token_bytes.h"

namespace rlcu {

class Tokenizer;
class Model;
class Transformer;
struct RewardSection;

// ---- external command ------------------------------------------------------------------------------------------
// Runs `/bin/sh -c <command>` once (started at the first batch), and per batch writes one JSON line per completion
//   {"prompt": ..., "completion": ..., "answer": ..., "index": i}
// (invalid UTF-8 replaced by U+FFFD) and reads exactly one reply line per completion, matched by position: a JSON
// number or an object {"reward": number} (an object may also give "index", which must then equal the request's).
// Its stderr is passed through. The process is reused across batches and closed on destruction (stdin closed, then
// SIGTERM after 2 s, then SIGKILL). Each of these is an rlcu::Error naming the command and the reply line (its
// number within the batch and the start of its text): an exit/EOF before all replies, a last line with no newline,
// no complete reply set within timeout_s seconds of the batch's start, a malformed reply, a line longer than
// kMaxReplyLine bytes (so a runaway command cannot grow rlcu's memory), and an extra line: output past the batch's
// last reply that has arrived when the batch ends or before the next batch is written. After an error the process
// is stopped and the next batch starts it anew. SIGPIPE is ignored process-wide once a command is started (a dead
// command is seen as EPIPE).
class RewardCommand {
 public:
  RewardCommand(std::string command, double timeout_s);
  ~RewardCommand();
  RewardCommand(const RewardCommand&) = delete;
  RewardCommand& operator=(const RewardCommand&) = delete;

  std::vector<float> score(const std::vector<std::string>& prompts, const std::vector<std::string>& completions,
                           const std::vector<std::string>& answers);
  bool running() const { return pid_ > 0; }

 private:
  void start();
  void stop();
  // Reads what the command has written so far without waiting; fails on anything (output nobody asked for).
  void check_no_output(const std::string& when);
  std::string command_;
  double timeout_s_;
  int pid_ = -1;
  int to_child_ = -1;
  int from_child_ = -1;
  std::string pending_;  // bytes read past the last complete line
  size_t scan_ = 0;      // pending_[0, scan_) holds no newline: the next search starts there
};

inline constexpr size_t kMaxReplyLine = size_t{1} << 20;  // bytes of one reward-command reply line

// One reward-command reply line (no newline): a JSON number or {"reward": number[, "index": expected_index]}.
// Returns "" and sets *out, or says what is wrong.
std::string parse_reward_reply(const std::string& line, size_t expected_index, float* out);

// ---- reward model ----------------------------------------------------------------------------------------------
// A directory saved by Hugging Face AutoModelForSequenceClassification (Qwen2/Qwen3/Llama decoder tensors plus
// `score.weight` [1, H], usually no `lm_head.weight`). score(sequence) = final_hidden[last token] . score.weight,
// with final_hidden the decoder's output after the final norm (rlcu::Transformer::final_hidden), in fp64 on the
// host from the activations' dtype. Sequences are packed into micro-batches of at most max_tokens tokens.
class RewardModel {
 public:
  RewardModel(const std::string& dir, int64_t max_tokens, Context& ctx);
  ~RewardModel();
  // One score per sequence (token ids of prompt + completion; each non-empty and at most max_tokens long).
  std::vector<float> score(const std::vector<std::vector<int32_t>>& sequences);
  const std::vector<float>& score_weight() const { return score_weight_; }
  Model& model() { return *model_; }

 private:
  Context& ctx_;
  std::unique_ptr<Model> model_;
  std::unique_ptr<Transformer> tf_;
  std::vector<float> score_weight_;
  int64_t max_tokens_;
  OwnedTensor logprob_;  // the forward's log-prob rows [max_tokens] (not read)
};

// ---- the combination -------------------------------------------------------------------------------------------
struct RewardItem {
  std::string prompt;                // prompt text (as shown to the model)
  std::vector<int32_t> prompt_ids;   // used by the reward model; empty = encode `prompt` with the tokenizer
  std::vector<int32_t> completion;   // completion token ids
  std::string answer;                // reference answer ("" when the data has none)
  std::string completion_text;       // optional host text; "" = detokenise from the ids when needed on the host
};

struct RewardBatch {
  std::vector<RewardItem> items;
};

struct RewardResult {
  std::vector<float> total;                                // [N]
  std::map<std::string, std::vector<float>> components;    // name -> [N], enabled components only (unweighted)
};

// Names in evaluation order: math_answer, exact_match, countdown, contains, format, length, command, model.
const std::vector<std::string>& reward_component_names();

// Throws rlcu::Error naming the `reward.*` key when an enabled component lacks a parameter or a parameter is out of
// range (format_tags empty or with an empty tag, length_max <= 0 or length_buffer > length_max, command_line
// empty, command_timeout_s <= 0, model_path empty), or when nothing is enabled.
void validate_reward_section(const RewardSection& s);
// Splits reward.format_tags at commas (no escaping; surrounding whitespace of each tag is kept).
std::vector<std::string> split_format_tags(const std::string& s);

class RewardSet {
 public:
  // `tokenizer` is required (the byte table, and the reward model's prompt encoding); it must outlive the set.
  RewardSet(const RewardSection& cfg, const Tokenizer* tokenizer, Context& ctx);
  ~RewardSet();
  RewardResult score(const RewardBatch& batch);
  const std::vector<std::string>& enabled() const { return enabled_; }
  // Sizes the device staging buffers (CUDA) once for batches of at most max_items completions, max_tokens
  // completion tokens in all and answers of at most max_answer_bytes bytes each, so that score() on such batches
  // allocates no device memory (a larger batch still works: its buffers grow).
  void reserve(int64_t max_items, int64_t max_tokens, int64_t max_answer_bytes);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::vector<std::string> enabled_;
};

}  // namespace rlcu
