// `rlcu sft`: supervised fine-tuning on prompt/completion or chat records, with the loss on the completion tokens
// only. See src/train/sft.cpp for the loop; this header also exposes the data preparation and the step schedule.
//
// Sequences: a {"prompt", "completion"} record becomes ids = prompt ids (the prompt as one user turn rendered with
// the chat template and its generation prompt, as `rlcu train` builds prompts; template `none`: the raw prompt
// text with the tokenizer's BOS) + encode(completion) + [EOS] (the tokenizer's primary EOS, e.g. <|im_end|> for
// ChatML instruct tokenizers, else the model's first EOS id). The loss mask covers the completion tokens and the
// EOS. A {"messages": [...]} record (no completion field) works with any chat template; its assistant spans are
// found as transformers' return_assistant_tokens_mask finds them:
//   - a template with {% generation %} blocks renders the whole conversation once; the text of those blocks is
//     covered by the loss, the rest is context;
//   - otherwise the conversation is rendered turn by turn: the text up to each assistant turn (with the generation
//     prompt) is context, the rest of that turn as the template renders it (content, end of turn token and whatever
//     the template puts after it, e.g. ChatML's "<|im_end|>\n") is covered by the loss. A template that does not
//     render the conversation as a growing prefix (Qwen3 drops earlier turns' thinking) is an error for such
//     multi-turn records.
// Each piece is encoded separately, so the ids at a turn boundary equal what generation after that prompt sees.
// The record's tools (data.tools_field) are passed to the template.
//
// Loss of one optimizer step over its completion tokens c (token mean): L = -(1/|c|) sum_c log p(ids[c] | ids[<c]),
// so d L / d logprob = -1/|c| on every completion row and 0 elsewhere; gradients accumulate over the step's
// micro-batches before one AdamW step.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "rlcu/data.h"

namespace rlcu {

struct SftArgs {
  std::string config;                  // config file; empty with resume = RUN_DIR/config.json
  std::vector<std::string> overrides;  // --set key=value
  std::string resume;                  // run directory to continue from its latest checkpoint
  bool overwrite = false;              // start over in a run directory that holds a run (deletes its outputs)
  std::string device;                  // overrides run.device when set
  int64_t threads = -1;                // >= 0: overrides run.threads (--threads)
  int64_t stop_after = 0;              // > 0: save a checkpoint and stop after this many steps of this invocation
  bool dry_run = false;                // check config, model headers, tokenizer and data, print the memory plan
                                       // and return 0 without creating the run directory
};

// Runs supervised fine-tuning; returns the process exit code (0 done, 128 + signal after a stop request, with a
// checkpoint saved). Throws rlcu::Error for bad configs, data or models.
int run_sft(const SftArgs& args);

struct SftExample {
  int64_t line = 0;              // 1-based line in its file
  std::vector<int32_t> ids;      // prompt + completion
  std::vector<uint8_t> loss;     // [ids.size()]: 1 where ids[t] is a completion token (predicted from row t - 1)
  int64_t completion_tokens() const;
};

struct SftDataStats {
  int64_t records = 0;   // non-blank lines
  int64_t too_long = 0;  // dropped: more than max_tokens ids
  int64_t kept = 0;
};

// Reads an SFT JSONL file (blank lines skipped). Prompts come from data.prompt_field / data.messages_field /
// data.prompt_template / data.system_prompt as for `rlcu train`; the completion from `completion_field`.
// `eos_id` is appended after each completion. Sequences longer than max_tokens (> 0) are dropped and counted.
// Throws rlcu::Error naming file:line for unreadable files, bad JSON, a record without a completion or assistant
// turn, a non-string completion, or a record with no completion token; and when no example is left.
std::vector<SftExample> load_sft_examples(const std::string& path, const DataConfig& data,
                                          const std::string& completion_field, const PromptFormat& format,
                                          int32_t eos_id, int64_t max_tokens, SftDataStats* stats = nullptr);
// The same for one record already parsed (errors without position).
SftExample sft_example_from_record(const nlohmann::ordered_json& record, const DataConfig& data,
                                   const std::string& completion_field, const PromptFormat& format, int32_t eos_id);

// Indices [0, n) held out for evaluation: a seeded choice of round(fraction * n) records (at least 1 when
// fraction > 0 and n >= 2; never all of them), ascending.
std::vector<int64_t> sft_holdout_indices(int64_t n, double fraction, uint64_t seed);

// One optimizer step of the schedule: example indices in order, and where it ends in the data stream.
struct SftStep {
  std::vector<int64_t> examples;
  int64_t epoch = 0;     // 0-based epoch the step belongs to
  int64_t position = 0;  // examples of that epoch served after this step
};

// The whole step schedule: epoch e serves the examples in the order drawn from (seed, e) (file order when
// shuffle is off); a step takes the next examples while their total length stays <= batch_tokens (at least one),
// never crossing an epoch's end. steps > 0: exactly that many steps (epochs repeat as needed); steps = 0: all
// steps of `epochs` epochs.
std::vector<SftStep> sft_schedule(const std::vector<int64_t>& lengths, uint64_t seed, bool shuffle, int64_t epochs,
                                  int64_t steps, int64_t batch_tokens);
// The order of epoch `epoch` over n examples (a permutation drawn from (seed, epoch); identity without shuffle).
std::vector<int64_t> sft_epoch_order(int64_t n, uint64_t seed, int64_t epoch, bool shuffle);

}  // namespace rlcu
