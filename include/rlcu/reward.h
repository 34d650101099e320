// Rewards: scoring completions as a weighted sum of named components, each logged separately.
//
//   total[i] = sum over enabled components c of weight_c * value_c[i]          (weight 0 = component off)
//
// Rule-based components run over the completions' BYTES, detokenised on the device from a token -> bytes table
// (Tokenizer::token_bytes), one op per component with a CPU twin (kernels/cpu/reward.cpp) and a CUDA kernel
// (kernels/reward.cu) that give bit-identical results (the per-completion logic is one set of host/device functions
// in kernels/reward_common.h). Shapes: N completions; a text batch is bytes U8 [B] plus offsets I64 [N+1]
// (completion i is bytes [offsets[i], offsets[i+1]); offsets non-decreasing, offsets[0] = 0, offsets[N] <= B);
// outputs are F32 [N] and are overwritten.
//
// Component rules (whitespace = space, \t, \n, \r, \v, \f; "trimmed" = whitespace removed at both ends):
//
//   math_answer  1 if the completion's final answer equals the reference answer, else 0.
//     Candidate, first rule that applies:
//       a. the content of the LAST `\boxed{...}` whose braces balance (nested braces counted);
//       b. the number right after the last `#### ` (spaces/tabs and `$` may come first);
//       c. the last number in the text.
//     No candidate -> 0. A "number" in text is: an optional `-` (only when the byte before it is not a letter or
//     digit), digits with optional thousands groups `,ddd` (exactly three digits, then a non-digit), an optional
//     `.digits`, and optionally `/` plus another such unsigned number (a fraction); `.5` counts as a number.
//     Reference: the answer string; when it contains `#### ` only the text after the last `#### ` is used
//     (GSM8K solutions). An empty (trimmed) reference scores 0.
//     Comparison: both sides are normalised by deleting whitespace, `$`, `\$`, `%`, `\%`, `\!`, `\,`, `\;`
//     then trailing `.` characters and one leading `+`. A normalised string is numeric when it is, in full,
//     [-] D | [-] D/D | [-] \frac{S}{S} (also \dfrac, \tfrac) with D an unsigned decimal (thousands groups as
//     above allowed, `2.50`, `.5`) and S an optionally signed D; at most 63 bytes. Value: 19 significant digits
//     read into an integer, scaled by a power of ten (then one division for fractions), in fp64.
//     Both numeric: equal when a == b or |a - b| <= 1e-6 * max(|a|, |b|). Otherwise the trimmed candidate and
//     the trimmed reference must be byte-for-byte equal.
//   exact_match  1 if trimmed completion == trimmed answer (bytes), else 0.
//   contains     1 if the completion contains the needle (a byte substring), else 0; an empty needle gives 0.
//                The needle is reward.contains_text, or the trimmed answer when that is empty.
//   format       1 if the tags t_1..t_K occur in this order without overlapping (t_{j+1} starts at or after the
//                end of the earliest match of t_j found after t_{j-1}), else 0; K = 0 gives 1.
//   length       DAPO overlong penalty from the completion length in TOKENS n, max_len L, buffer C:
//                0 if n <= L - C;  (L - C - n) / C if L - C < n <= L (fp64, rounded to F32);  -1 if n > L.
//   command      an external program (see RewardCommand).
//   model        a sequence-classification reward model (see RewardModel).
//
// Detokenisation: token ids outside [0, V) contribute no bytes.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "rlcu/context.h"
#include "rlcu/tensor.h"

namespace rlcu {

class Tokenizer;
class Model;
class Transformer;
struct RewardSection;

// ---- the token -> bytes table --------------------------------------------------------------------------------
// Concatenated bytes of every token id [B] (U8) and offsets [V+1] (I64): token v is bytes [offsets[v], offsets[v+1]).
class TokenBytesTable {
 public:
  static TokenBytesTable build(const Tokenizer& tok);                      // ids [0, vocab_size)
  static TokenBytesTable from_strings(const std::vector<std::string>& tokens);  // token v = tokens[v]
  // Copies the table to ctx's device once (no-op on the CPU or when already there).
  void upload(Context& ctx);

  int64_t vocab_size() const { return static_cast<int64_t>(host_offsets_.size()) - 1; }
  int64_t max_token_bytes() const { return max_token_bytes_; }
  // Views on `d` (CUDA requires upload() first). The byte view holds at least one byte even when B = 0.
  Tensor bytes(Device d) const;
  Tensor offsets(Device d) const;

 private:
  std::string host_bytes_;
  std::vector<int64_t> host_offsets_;
  int64_t max_token_bytes_ = 0;
  Buffer dev_bytes_, dev_offsets_;
};

// A batch of byte strings on one device: bytes U8 [B] (may be an empty Tensor when B = 0) and offsets I64 [N+1].
struct TextBatch {
  Tensor bytes;
  Tensor offsets;
  int64_t count() const { return offsets.numel() - 1; }
};

// ---- ops (dispatch on the device of the first tensor) ----------------------------------------------------------
// Completions as ids [total] (I32 or I64) with id_offsets [N+1] (I32 or I64). Pass 1 writes byte_offsets I64 [N+1]
// (byte_offsets[0] = 0, exclusive scan of the per-completion byte counts); pass 2 copies the bytes into
// bytes U8 [>= byte_offsets[N]] given those offsets. Between the two the caller reads byte_offsets[N] to size
// `bytes`.
void detokenize_offsets(const Tensor& byte_offsets, const Tensor& ids, const Tensor& id_offsets,
                        const TokenBytesTable& table, Context& ctx);
void detokenize_bytes(const Tensor& bytes, const Tensor& byte_offsets, const Tensor& ids, const Tensor& id_offsets,
                      const TokenBytesTable& table, Context& ctx);

void reward_math_answer(const Tensor& out, const TextBatch& text, const TextBatch& answers, Context& ctx);
void reward_exact_match(const Tensor& out, const TextBatch& text, const TextBatch& answers, Context& ctx);
// needles: one per completion (N entries).
void reward_contains(const Tensor& out, const TextBatch& text, const TextBatch& needles, Context& ctx);
// tags: K entries shared by every completion.
void reward_format(const Tensor& out, const TextBatch& text, const TextBatch& tags, Context& ctx);

struct LengthPenalty {
  int64_t max_len = 0;  // L > 0
  int64_t buffer = 0;   // 0 <= C <= L
};
// out F32 [N] from id_offsets [N+1] (I32 or I64): the DAPO overlong penalty above.
void reward_length(const Tensor& out, const Tensor& id_offsets, const LengthPenalty& p, Context& ctx);

// ---- external command ------------------------------------------------------------------------------------------
// Runs `/bin/sh -c <command>` once (started at the first batch), and per batch writes one JSON line per completion
//   {"prompt": ..., "completion": ..., "answer": ..., "index": i}
// (invalid UTF-8 replaced by U+FFFD) and reads one reply line per completion, in order: a JSON number or an object
// {"reward": number}. Its stderr is passed through. The process is reused across batches and closed on
// destruction (stdin closed, then SIGTERM after 2 s, then SIGKILL). An exit/EOF before all replies, no complete
// reply set within timeout_s seconds of the batch's start, or a malformed reply is an rlcu::Error naming the
// command and the reply line number within the batch; after an error the process is stopped and the next batch
// starts it anew. SIGPIPE is ignored process-wide once a command is started (a dead command is seen as EPIPE).
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
  std::string command_;
  double timeout_s_;
  int pid_ = -1;
  int to_child_ = -1;
  int from_child_ = -1;
  std::string pending_;  // bytes read past the last complete line
};

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

// Names in evaluation order: math_answer, exact_match, contains, format, length, command, model.
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

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::vector<std::string> enabled_;
};

}  // namespace rlcu
