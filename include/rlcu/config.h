// RunConfig: the typed configuration of a run, built from a JSON file plus `--set a.b.c=value` overrides.
//
// One schema (a list of FieldSpec, in config_schema.cpp) drives everything: defaults, type/range/enum validation,
// unknown-key detection with "did you mean" suggestions, the resolved dump (`rlcu config show`) and the key
// reference (`rlcu config keys`). Errors are rlcu::Error whose message names the file, the full key path and what
// was expected; JSON syntax errors give line and column.
#pragma once

#include <cstdint>
#include <array>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>


namespace rlcu {

struct RunSection {
  int64_t seed = 0;                      // one seed for every random choice of the run
  std::string output_dir = "runs/rlcu";  // where a run writes its outputs
  std::string device = "auto";           // auto | cpu | cuda | cuda:N
  int64_t threads = 0;                   // threads of the CPU kernels; 0 = all cores
  int64_t save_every = 0;                // checkpoint every N steps; 0 = only at the end
  int64_t keep_checkpoints = 0;          // keep the newest N checkpoints; 0 = all
  bool tensorboard = true;               // also write TensorBoard event files next to metrics.jsonl
  std::string resume = "never";          // never | auto: resume from output_dir's checkpoint when there is one
  double memory_limit_gib = 0;           // the memory plan must fit this; 0 = the device's free memory (none on CPU)
};

struct ModelSection {
  std::string path;                   // Hugging Face model directory (config.json + *.safetensors)
  std::string tokenizer;              // tokenizer directory; empty = the model directory
  std::string chat_template = "auto"; // auto | none | chatml | qwen2 | qwen2.5 | qwen3 | llama3 | llama3.1
  std::string chat_template_file;     // a Jinja chat template file instead of the model's ("" = none)
  bool enable_thinking = true;        // the chat template's enable_thinking variable
  std::string adapter;                // a PEFT LoRA adapter directory the run starts from ("" = none)
};

// LoRA target modules, in their fixed order (PEFT's names): q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj,
// down_proj. parse_lora_targets reads a comma-separated list of them ("all" = every one); throws naming `field`.
constexpr int kLoraTargets = 7;
extern const char* const kLoraTargetNames[kLoraTargets];
std::array<bool, kLoraTargets> parse_lora_targets(const std::string& list, const std::string& field);

// The `lora` section: LoRA adapters on a frozen base (rank 0 = full fine-tuning).
struct LoraSection {
  int64_t rank = 0;
  double alpha = 16.0;
  std::string targets = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj";
};

// The `data` section of a run config; JSON keys are these field names.
struct DataConfig {
  std::string path;                         // prompt file: JSONL, or a JSON array of objects
  std::string format = "auto";              // auto | jsonl | json (auto: a file whose first character is '[' is a
                                            // JSON array, anything else JSONL)
  std::string prompt_field = "prompt";      // prompt text (string) or a list of chat messages
  std::string messages_field = "messages";  // list of {role, content}; used when the record has it
  std::string answer_field = "answer";      // reference answer handed to rewards; "" = the records have none
  std::string tools_field = "tools";        // list of tool schemas handed to the chat template; "" = none
  std::string system_prompt;                // system message put before every conversation without one
  std::string prompt_template;              // user prompt built from record fields, e.g. "{question}\nAnswer:"
  int64_t max_prompt_tokens = 1024;         // longer prompts are dropped; 0 = no limit
  bool shuffle = true;                      // new order every epoch, drawn from the run seed
  bool skip_malformed = false;              // skip and count malformed records instead of failing
  int64_t max_samples = 0;                  // keep only the first N usable prompts; 0 = all
};

struct OptimizerSection {
  std::string name = "adamw";  // adamw | adamw_8bit (blockwise-quantised moments)
  double lr = 1e-6;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;
  double max_grad_norm = 1.0;  // 0 disables clipping
  std::string lr_schedule = "constant";  // constant | linear | cosine
  int64_t warmup_steps = 0;
  double min_lr_ratio = 0.0;  // floor of linear/cosine decay as a fraction of lr
};

// RL objective. Policy loss per token t of sequence i, ratio r = exp(logp - logp_old), advantage A:
//   -min(r A, clip(r, 1 - clip_low, 1 + clip_high) A), and for A < 0 with dual_clip c > 1 at most -c A;
//   plus kl_coef * KL_k(logp, logp_ref) (unless kl_in_reward) - entropy_coef * entropy; aggregated by loss_agg.
// policy_loss = gspo takes r per sequence (the geometric mean of the token ratios), cispo uses the clipped,
// detached r as a weight on -A logp; rollout_correction weights the policy term (include/rlcu/rl_ops.h).
struct AlgorithmSection {
  std::string name = "grpo";           // grpo | ppo | rloo | reinforce_pp
  std::string scale_rewards = "group";  // group | batch | none: divide advantages by the group's / batch's std
  double clip_low = 0.2;
  double clip_high = 0.2;
  double dual_clip = 0.0;  // 0 = off, else > 1
  int64_t num_iterations = 1;  // mu: policy updates per rollout batch
  double kl_coef = 0.0;
  std::string kl_estimator = "k3";  // k1 | k2 | k3
  bool kl_in_reward = false;        // subtract kl_coef * KL from the reward instead of adding it to the loss
  double entropy_coef = 0.0;
  // token-mean | seq-mean-token-mean | seq-mean-token-sum | seq-mean-token-sum-norm
  std::string loss_agg = "token-mean";
  bool dynamic_sampling = false;  // drop groups whose rewards are all equal
  bool mask_truncated = false;    // completions cut at rollout.max_new_tokens get no loss
  double gamma = 1.0;             // PPO/GAE discount
  double lam = 0.95;              // GAE lambda
  bool whiten_advantages = true;  // PPO: normalise advantages over the batch
  double value_clip = 0.2;        // PPO critic value clipping; 0 = off
  double critic_lr = 1e-5;
  std::string critic_init = "policy";  // "policy" or a model directory
  std::string policy_loss = "clip";    // clip | gspo | cispo
  double gspo_clip_low = 3e-4;         // GSPO's sequence-ratio clip range (the paper's)
  double gspo_clip_high = 4e-4;
  double cispo_clip_low = 1.0;         // CISPO's IS-weight clip: [1 - low, 1 + high]; low 1 = no lower bound
  double cispo_clip_high = 0.28;
  std::string old_logprobs = "rollout";       // rollout | recompute: where the ratio's old log-probs come from
  std::string rollout_correction = "none";    // none | tis | mis (needs old_logprobs = recompute)
  std::string rollout_correction_level = "token";  // token | sequence
  double rollout_correction_cap = 2.0;             // C > 1
};


struct TrainSection {
  int64_t steps = 100;
  int64_t prompts_per_step = 8;
  int64_t micro_batch_tokens = 8192;
  bool checkpointing = false;  // activation checkpointing (recompute each layer in backward)
  bool fp32_residual = true;   // F32 residual stream in the policy, reference and rollout forwards
  bool save_head_probs = true; // keep the log-prob head's softmax between forward and backward
  int64_t log_samples = 4;     // completions per step written to samples.jsonl
};

struct RolloutSection {
  int64_t group_size = 8;
  int64_t max_new_tokens = 256;
  double temperature = 1.0;
  double top_p = 1.0;
  int64_t top_k = 0;  // 0 = off
  double min_p = 0.0;
  std::string stop;  // stop strings separated by `|`; `\|` is a literal bar, `\\` a literal backslash
  double kv_fraction = 0.9;
  int64_t block_size = 16;
  int64_t max_batch = 256;
  bool cuda_graphs = true;
  int64_t prefill_tokens = 8192;
};

// Splits rollout.stop into its stop strings (see RolloutSection::stop). Throws rlcu::Error naming `what` on a
// dangling or unknown escape or an empty stop string.
std::vector<std::string> parse_stop_strings(const std::string& encoded, const std::string& what = "rollout.stop");

// Rewards: total = sum of weight * component over the enabled components (weight 0 = off); see include/rlcu/reward.h.
struct RewardSection {
  double math_answer = 1.0;
  double exact_match = 0.0;
  double countdown = 0.0;
  double contains = 0.0;
  double format = 0.0;
  double length = 0.0;
  double command = 0.0;
  double model = 0.0;
  std::string contains_text;     // "" = the answer
  std::string format_tags;       // comma-separated tags that must occur in order
  int64_t length_max = 0;        // DAPO overlong penalty: max completion tokens L
  int64_t length_buffer = 0;     // and the soft buffer C
  std::string command_line;      // /bin/sh -c command, one JSON line in and one reward out per completion
  double command_timeout_s = 60.0;
  std::string model_path;        // sequence-classification reward model directory
};

// Held-out evaluation during `rlcu train` (the metrics of include/rlcu/eval.h, logged as eval/*).
struct EvalSection {
  std::string data;             // prompt file (the data.* format keys apply); "" = no evaluation
  int64_t every = 0;            // every N steps (and after the last step); 0 = after the last step only
  bool at_start = false;        // also before the first step (logged as step 0)
  int64_t n = 1;                // samples per prompt (pass@k uses k = n)
  bool greedy = false;          // pick the most likely token
  int64_t max_new_tokens = 0;   // 0 = rollout.max_new_tokens
  double temperature = 0.0;     // 0 = rollout.temperature
  int64_t max_prompts = 0;      // only the first N prompts; 0 = all
  RewardSection reward;         // eval.reward.*: the run's reward section unless any eval.reward.* key is given
  bool reward_given = false;    // set when a config or --set names an eval.reward.* key
};

// Supervised fine-tuning (`rlcu sft`): loss = mean negative log-likelihood of the completion (assistant) tokens.
struct SftSection {
  std::string path;                          // JSONL of {"prompt", "completion"} or {"messages": [...]} records
  std::string eval_path;                     // held-out JSONL; empty = hold out eval_fraction of `path`
  double eval_fraction = 0.05;               // share of `path` held out when eval_path is empty
  int64_t epochs = 1;                        // passes over the training records (when steps = 0)
  int64_t steps = 0;                         // optimizer steps; 0 = as many as `epochs` take
  int64_t batch_tokens = 16384;              // tokens (prompt + completion) per optimizer step
  int64_t eval_every = 0;                    // held-out loss every N steps (and at the start and the end)
  int64_t max_seq_tokens = 0;                // longer sequences are dropped; 0 = train.micro_batch_tokens
  std::string completion_field = "completion";  // record field holding the completion text
};

struct RunConfig {
  RunSection run;
  ModelSection model;
  DataConfig data;
  OptimizerSection optimizer;
  LoraSection lora;
  AlgorithmSection algorithm;
  TrainSection train;
  RolloutSection rollout;
  RewardSection reward;
  SftSection sft;
  EvalSection eval;
};

enum class FieldKind { Int, Float, Bool, String, Enum };

struct FieldSpec {
  std::string path;  // "optimizer.lr"
  FieldKind kind;
  std::string doc;
  double min = -1e300, max = 1e300;  // inclusive range for Int/Float
  bool min_exclusive = false;
  std::vector<std::string> choices;  // Enum
  // A file or directory path: a relative value is made absolute against the config file's directory (from the
  // file) or the current directory (from --set) when the config is loaded from a file.
  bool is_path = false;
  // Extra validation for String fields: returns "" when valid, else what was expected.
  std::function<std::string(const std::string&)> check;
  std::function<nlohmann::json(const RunConfig&)> get;
  std::function<void(RunConfig&, const nlohmann::json&)> set;
  std::string expectation() const;  // "a number > 0 and <= 1", "one of cpu, cuda", ...
};

const std::vector<FieldSpec>& config_schema();

// Which command a config is for: the checks between RL keys (algorithm, rollout, data.max_prompt_tokens against
// train.micro_batch_tokens) apply to `rlcu train` (and `config check|show`), not to `rlcu sft`, which reads none of
// those keys.
enum class ConfigUse { Rl, Sft };

// Parses `text` (named `source` in messages), applies overrides ("a.b.c=value"; value parsed as JSON when it is
// valid JSON, else taken as a string), validates and returns the config. Throws rlcu::Error.
// With `base_dir` set, path keys (FieldSpec::is_path) become absolute: the file's relative values against
// `base_dir`, the overrides' against the current directory, run.output_dir's default against the current directory.
RunConfig parse_config(const std::string& text, const std::string& source,
                       const std::vector<std::string>& overrides = {}, const std::string& base_dir = "",
                       ConfigUse use = ConfigUse::Rl);
// parse_config of the file at `path` with base_dir = the file's directory.
RunConfig load_config(const std::string& path, const std::vector<std::string>& overrides = {},
                      ConfigUse use = ConfigUse::Rl);
// The config of a training command (`rlcu train`, `rlcu sft`): `config` with the overrides, plus run.device = device
// when set and, when resuming, run.output_dir = resume; with resume and no config file, RESUME/config.json (the
// run's resolved config). `*source` receives the file read. `command` names the command in a usage error.
RunConfig load_run_config(const std::string& command, const std::string& config, std::vector<std::string> overrides,
                          const std::string& resume, const std::string& device, std::string* source);

nlohmann::ordered_json config_to_json(const RunConfig& cfg);  // every key, resolved
std::string suggest_key(const std::string& unknown);           // closest known key path, or ""

}  // namespace rlcu
