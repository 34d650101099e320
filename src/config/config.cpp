// RunConfig from JSON: the schema (one FieldSpec per key, in section order), parsing with line/column syntax
// errors, `--set` overrides, validation against the schema, unknown keys with suggestions, and the resolved dump.
#include "rlcu/config.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "rlcu/context.h"
#include "rlcu/error.h"
#include "rlcu/input_file.h"
#include "rlcu/json_error.h"

namespace rlcu {

const char* const kLoraTargetNames[kLoraTargets] = {"q_proj",    "k_proj",  "v_proj",   "o_proj",
                                                  "gate_proj", "up_proj", "down_proj"};

std::array<bool, kLoraTargets> parse_lora_targets(const std::string& list, const std::string& field) {
  std::array<bool, kLoraTargets> out{};
  if (list == "all") {
    out.fill(true);
    return out;
  }
  std::stringstream ss(list);
  std::string item;
  bool any = false;
  while (std::getline(ss, item, ',')) {
    const size_t b = item.find_first_not_of(" \t"), e = item.find_last_not_of(" \t");
    item = b == std::string::npos ? "" : item.substr(b, e - b + 1);
    int found = -1;
    for (int i = 0; i < kLoraTargets; ++i)
      if (item == kLoraTargetNames[i]) found = i;
    if (found < 0)
      throw Error(fmt::format("{}: unknown target module `{}` (expected a comma-separated list of q_proj, k_proj, "
                              "v_proj, o_proj, gate_proj, up_proj, down_proj, or `all`)",
                              field, item));
    out[static_cast<size_t>(found)] = true;
    any = true;
  }
  if (!any) throw Error(fmt::format("{}: names no target module", field));
  return out;
}


using json = nlohmann::json;

namespace {

template <class S, class T>
FieldSpec bind_field(const std::string& path, S RunConfig::*sec, T S::*mem, FieldKind kind, const std::string& doc) {
  FieldSpec f;
  f.path = path;
  f.kind = kind;
  f.doc = doc;
  f.get = [sec, mem](const RunConfig& c) { return json((c.*sec).*mem); };
  f.set = [sec, mem](RunConfig& c, const json& v) { (c.*sec).*mem = v.get<T>(); };
  return f;
}

FieldSpec range(FieldSpec f, double lo, double hi, bool lo_exclusive = false) {
  f.min = lo;
  f.max = hi;
  f.min_exclusive = lo_exclusive;
  return f;
}

FieldSpec path_field(FieldSpec f) {
  f.is_path = true;
  return f;
}

FieldSpec choices(FieldSpec f, std::vector<std::string> c) {
  f.choices = std::move(c);
  return f;
}

void add_algorithm_train_rollout(std::vector<FieldSpec>& s);
void add_reward(std::vector<FieldSpec>& s);
void add_sft(std::vector<FieldSpec>& s);
void add_eval(std::vector<FieldSpec>& s);
void add_policy_loss_keys(std::vector<FieldSpec>& s);
void add_lora(std::vector<FieldSpec>& s);

std::vector<FieldSpec> build_schema() {
  using K = FieldKind;
  std::vector<FieldSpec> s;
  // run
  s.push_back(range(bind_field("run.seed", &RunConfig::run, &RunSection::seed, K::Int,
                         "Seed for every random choice of the run (sampling, shuffling, initialisation)."),
                    0, 9007199254740991.0));
  s.push_back(path_field(bind_field(
      "run.output_dir", &RunConfig::run, &RunSection::output_dir, K::String,
      "Directory a run writes its outputs to; `{section.key}` placeholders are filled with the resolved values "
      "(`runs/lr{optimizer.lr}`), `{{` and `}}` are literal braces. Relative to the config file's directory (from "
      "`--set` or by default: to the current directory).")));
  {
    FieldSpec f = bind_field("run.device", &RunConfig::run, &RunSection::device, K::String,
                       "Where to run: `auto` (the first CUDA device when there is one, else the CPU; the "
                       "first log line says which), `cpu`, `cuda` or `cuda:N`.");
    f.check = [](const std::string& v) -> std::string {
      if (v == "auto") return "";
      try {
        parse_device(v, "run.device");
        return "";
      } catch (const Error&) {
        return "auto, cpu, cuda or cuda:N";
      }
    };
    s.push_back(f);
  }
  s.push_back(range(bind_field("run.threads", &RunConfig::run, &RunSection::threads, K::Int,
                               "Threads of the CPU kernels (on `cpu`); 0 = all cores. Results are bitwise the same "
                               "for any count; `--threads N` overrides it."),
                    0, 4096));
  s.push_back(range(bind_field("run.save_every", &RunConfig::run, &RunSection::save_every, K::Int,
                               "Save a checkpoint every N steps (and at the end); 0 = only at the end."),
                    0, 1e12));
  s.push_back(range(bind_field("run.keep_checkpoints", &RunConfig::run, &RunSection::keep_checkpoints, K::Int,
                               "Keep only the newest N checkpoints of the run; 0 = keep all."),
                    0, 1e12));
  s.push_back(bind_field("run.tensorboard", &RunConfig::run, &RunSection::tensorboard, K::Bool,
                         "Also write the metrics as TensorBoard event files (`RUN/events.out.tfevents.*`)."));
  s.push_back(choices(bind_field("run.resume", &RunConfig::run, &RunSection::resume, K::Enum,
                                 "A new run in a directory that holds a run: `never` refuses it (continue with "
                                 "`--resume`, start over with `--overwrite`); `auto` resumes from the directory's "
                                 "latest checkpoint when it has one and starts fresh otherwise (preemptible jobs)."),
                      {"never", "auto"}));
  s.push_back(range(bind_field("run.memory_limit_gib", &RunConfig::run, &RunSection::memory_limit_gib, K::Float,
                               "The memory plan (`--dry-run` prints it) must fit this many GiB per device, else the "
                               "run stops before allocating, naming the largest items and the settings that shrink "
                               "them; 0 = the device's free memory (on the CPU: no limit)."),
                    0, 1e6));
  // model
  s.push_back(path_field(bind_field("model.path", &RunConfig::model, &ModelSection::path, K::String,
                   "Hugging Face model directory (config.json and *.safetensors).")));
  s.push_back(path_field(bind_field("model.tokenizer", &RunConfig::model, &ModelSection::tokenizer, K::String,
                   "Tokenizer directory (tokenizer.json, tokenizer_config.json); empty means `model.path`.")));
  s.push_back(choices(bind_field("model.chat_template", &RunConfig::model, &ModelSection::chat_template, K::Enum,
                           "Chat template: `auto` is the model's own (tokenizer_config.json `chat_template` or "
                           "`chat_template.jinja`), `none` the raw prompt plus the tokenizer's BOS, the others built-in "
                           "copies of those models' templates for models without one."),
                      {"auto", "none", "chatml", "qwen2", "qwen2.5", "qwen3", "llama3", "llama3.1"}));
  s.push_back(path_field(bind_field("model.chat_template_file", &RunConfig::model, &ModelSection::chat_template_file, K::String,
                   "A Jinja chat template file used instead of the model's (`model.chat_template` stays `auto`); "
                   "empty = none.")));
  s.push_back(bind_field("model.enable_thinking", &RunConfig::model, &ModelSection::enable_thinking, K::Bool,
                   "Passed to the chat template as `enable_thinking` (Qwen3, SmolLM3: false switches thinking off)."));
  // data
  s.push_back(path_field(bind_field("data.path", &RunConfig::data, &DataConfig::path, K::String,
                         "Prompt file: JSONL, or a JSON array of objects.")));
  s.push_back(choices(bind_field("data.format", &RunConfig::data, &DataConfig::format, K::Enum,
                                 "File format; `auto`: a file starting with `[` is a JSON array, else JSONL."),
                      {"auto", "jsonl", "json"}));
  s.push_back(bind_field("data.prompt_field", &RunConfig::data, &DataConfig::prompt_field, K::String,
                         "Record field holding the prompt text (or a list of chat messages)."));
  s.push_back(bind_field("data.messages_field", &RunConfig::data, &DataConfig::messages_field, K::String,
                         "Record field holding a list of {role, content} messages; used when present."));
  s.push_back(bind_field("data.answer_field", &RunConfig::data, &DataConfig::answer_field, K::String,
                         "Record field holding the reference answer; empty when the records have none."));
  s.push_back(bind_field("data.tools_field", &RunConfig::data, &DataConfig::tools_field, K::String,
                         "Record field holding a list of tool schemas, passed to the chat template as `tools`; "
                         "empty = never."));
  s.push_back(bind_field("data.system_prompt", &RunConfig::data, &DataConfig::system_prompt, K::String,
                         "System message put before every conversation that has none."));
  s.push_back(bind_field("data.prompt_template", &RunConfig::data, &DataConfig::prompt_template, K::String,
                         "User prompt built from record fields, e.g. `{question}\\nAnswer:`; empty = the prompt field."));
  s.push_back(range(bind_field("data.max_prompt_tokens", &RunConfig::data, &DataConfig::max_prompt_tokens, K::Int,
                               "Prompts longer than this many tokens are dropped (and counted); 0 = no limit."),
                    0, 1e9));
  s.push_back(bind_field("data.shuffle", &RunConfig::data, &DataConfig::shuffle, K::Bool,
                         "Shuffle the prompts anew every epoch, from `run.seed`."));
  s.push_back(bind_field("data.skip_malformed", &RunConfig::data, &DataConfig::skip_malformed, K::Bool,
                         "Skip and count malformed records instead of failing with file:line."));
  s.push_back(range(bind_field("data.max_samples", &RunConfig::data, &DataConfig::max_samples, K::Int,
                               "Keep only the first N usable prompts; 0 = all."),
                    0, 1e12));
  s.push_back(path_field(bind_field("model.adapter", &RunConfig::model, &ModelSection::adapter, K::String,
                   "A PEFT LoRA adapter directory (adapter_config.json, adapter_model.safetensors) the run starts "
                   "from, on the base `model.path`; `lora.rank`, `lora.alpha` and `lora.targets` must equal its "
                   "`r`, `lora_alpha` and `target_modules` (`lora.rank` 0 takes all three from it). Empty = none.")));
  add_lora(s);
  // optimizer
  s.push_back(choices(bind_field("optimizer.name", &RunConfig::optimizer, &OptimizerSection::name, K::Enum,
                                 "`adamw`: fp32 moments (8 bytes per parameter); `adamw_8bit`: both moments "
                                 "quantised to 8-bit dynamic codes with an fp32 absmax per block of 256 (about 2 "
                                 "bytes per parameter). The PPO critic always uses `adamw`."),
                      {"adamw", "adamw_8bit"}));
  s.push_back(range(bind_field("optimizer.lr", &RunConfig::optimizer, &OptimizerSection::lr, K::Float,
                         "Peak learning rate of AdamW."),
                    0, 1, true));
  s.push_back(range(bind_field("optimizer.beta1", &RunConfig::optimizer, &OptimizerSection::beta1, K::Float,
                         "AdamW first-moment decay."),
                    0, 0.999999));
  s.push_back(range(bind_field("optimizer.beta2", &RunConfig::optimizer, &OptimizerSection::beta2, K::Float,
                         "AdamW second-moment decay."),
                    0, 0.999999));
  s.push_back(range(bind_field("optimizer.eps", &RunConfig::optimizer, &OptimizerSection::eps, K::Float,
                         "AdamW denominator epsilon."),
                    0, 1, true));
  s.push_back(range(bind_field("optimizer.weight_decay", &RunConfig::optimizer, &OptimizerSection::weight_decay, K::Float,
                         "Decoupled weight decay."),
                    0, 1));
  s.push_back(range(bind_field("optimizer.max_grad_norm", &RunConfig::optimizer, &OptimizerSection::max_grad_norm,
                         K::Float, "Clip the global gradient L2 norm to this value; 0 disables clipping."),
                    0, 1e12));
  s.push_back(choices(bind_field("optimizer.lr_schedule", &RunConfig::optimizer, &OptimizerSection::lr_schedule, K::Enum,
                           "Learning-rate schedule after warm-up."),
                      {"constant", "linear", "cosine"}));
  s.push_back(range(bind_field("optimizer.warmup_steps", &RunConfig::optimizer, &OptimizerSection::warmup_steps, K::Int,
                         "Linear warm-up: step i (0-based) of the first N uses `optimizer.lr` * (i+1)/N."),
                    0, 1e12));
  s.push_back(range(bind_field("optimizer.min_lr_ratio", &RunConfig::optimizer, &OptimizerSection::min_lr_ratio, K::Float,
                         "Floor of the linear/cosine decay, as a fraction of `optimizer.lr`."),
                    0, 1));
  add_algorithm_train_rollout(s);
  add_reward(s);
  add_sft(s);
  add_eval(s);
  return s;
}

std::string fmt_num(double v) {
  std::ostringstream o;
  o << v;
  return o.str();
}

// algorithm.policy_loss and its clip ranges, algorithm.old_logprobs and the rollout correction.
void add_policy_loss_keys(std::vector<FieldSpec>& s) {
  using K = FieldKind;
  using A = AlgorithmSection;
  constexpr double kNoMax = 1e12;
  const auto alg = [](const std::string& key, auto mem, FieldKind kind, const std::string& doc) {
    return bind_field("algorithm." + key, &RunConfig::algorithm, mem, kind, doc);
  };
  s.push_back(choices(alg("policy_loss", &A::policy_loss, K::Enum,
                          "Policy loss: `clip` (PPO/GRPO clipped token ratio), `gspo` (one ratio per sequence, the "
                          "geometric mean of its token ratios, clipped by `algorithm.gspo_clip_*`), `cispo` (the "
                          "token ratio clipped by `algorithm.cispo_clip_*` and detached, times -A log p)."),
                      {"clip", "gspo", "cispo"}));
  s.push_back(range(alg("gspo_clip_low", &A::gspo_clip_low, K::Float,
                        "GSPO: the sequence ratio is clipped below at 1 - gspo_clip_low (paper: 3e-4)."),
                    0, 1));
  s.push_back(range(alg("gspo_clip_high", &A::gspo_clip_high, K::Float,
                        "GSPO: the sequence ratio is clipped above at 1 + gspo_clip_high (paper: 4e-4)."),
                    0, kNoMax));
  s.push_back(range(alg("cispo_clip_low", &A::cispo_clip_low, K::Float,
                        "CISPO: the importance weight is at least 1 - cispo_clip_low; 1 = no lower bound (paper)."),
                    0, 1));
  s.push_back(range(alg("cispo_clip_high", &A::cispo_clip_high, K::Float,
                        "CISPO: the importance weight is at most 1 + cispo_clip_high."),
                    0, kNoMax));
  s.push_back(choices(alg("old_logprobs", &A::old_logprobs, K::Enum,
                          "The ratio's old log-probs: `rollout` (the sampler's) or `recompute` (the training forward "
                          "scores the completions before the first update, so the first ratio is exactly 1)."),
                      {"rollout", "recompute"}));
  s.push_back(choices(alg("rollout_correction", &A::rollout_correction, K::Enum,
                          "Importance-sampling correction of the rollout policy (needs `algorithm.old_logprobs` = "
                          "recompute): `tis` weights the policy loss by min(ratio, cap), `mis` drops units whose ratio "
                          "leaves [1/cap, cap]; ratio = pi_old / pi_rollout."),
                      {"none", "tis", "mis"}));
  s.push_back(choices(alg("rollout_correction_level", &A::rollout_correction_level, K::Enum,
                          "Rollout correction per token (each token's ratio) or per sequence (the product of its "
                          "token ratios, one weight for all its tokens)."),
                      {"token", "sequence"}));
  s.push_back(range(alg("rollout_correction_cap", &A::rollout_correction_cap, K::Float,
                        "Rollout correction cap C (> 1): TIS truncates the ratio at C, MIS keeps ratios in [1/C, C]."),
                    1, kNoMax, true));
}

// algorithm, train and rollout sections.
void add_algorithm_train_rollout(std::vector<FieldSpec>& s) {
  using K = FieldKind;
  using A = AlgorithmSection;
  using T = TrainSection;
  using R = RolloutSection;
  constexpr double kNoMax = 1e12;  // "no upper bound" in expectation()
  const auto alg = [](const std::string& key, auto mem, FieldKind kind, const std::string& doc) {
    return bind_field("algorithm." + key, &RunConfig::algorithm, mem, kind, doc);
  };
  const auto train = [](const std::string& key, auto mem, FieldKind kind, const std::string& doc) {
    return bind_field("train." + key, &RunConfig::train, mem, kind, doc);
  };
  const auto roll = [](const std::string& key, auto mem, FieldKind kind, const std::string& doc) {
    return bind_field("rollout." + key, &RunConfig::rollout, mem, kind, doc);
  };
  // algorithm
  s.push_back(choices(alg("name", &A::name, K::Enum,
                          "RL algorithm: `grpo` (group-normalised advantages), `ppo` (critic + GAE), `rloo` "
                          "(leave-one-out baseline), `reinforce_pp` (REINFORCE++, batch-normalised returns)."),
                      {"grpo", "ppo", "rloo", "reinforce_pp"}));
  s.push_back(choices(alg("scale_rewards", &A::scale_rewards, K::Enum,
                          "Divide centred rewards by the std of their group, of the whole batch, or not at all "
                          "(`none`: Dr. GRPO)."),
                      {"group", "batch", "none"}));
  s.push_back(range(alg("clip_low", &A::clip_low, K::Float, "PPO ratio clip below: ratio >= 1 - clip_low."), 0, 1));
  s.push_back(range(alg("clip_high", &A::clip_high, K::Float,
                        "PPO ratio clip above: ratio <= 1 + clip_high (larger than clip_low: clip-higher)."),
                    0, kNoMax));
  s.push_back(range(alg("dual_clip", &A::dual_clip, K::Float,
                        "Dual-clip constant c: for negative advantages the loss is at most -c * A; 0 = off, "
                        "else > 1."),
                    0, kNoMax));
  s.push_back(range(alg("num_iterations", &A::num_iterations, K::Int,
                        "Policy updates per rollout batch (mu); above 1 the ratio to the rollout policy moves."),
                    1, 1e6));
  s.push_back(range(alg("kl_coef", &A::kl_coef, K::Float,
                        "Weight of the KL penalty to the reference model (the initial policy); 0 = no reference "
                        "model."),
                    0, kNoMax));
  s.push_back(choices(alg("kl_estimator", &A::kl_estimator, K::Enum,
                          "KL estimator per token, d = logp_ref - logp: `k1` = -d, `k2` = d^2 / 2, "
                          "`k3` = exp(d) - 1 - d."),
                      {"k1", "k2", "k3"}));
  s.push_back(alg("kl_in_reward", &A::kl_in_reward, K::Bool,
                  "Subtract `algorithm.kl_coef` * KL from the per-token reward instead of adding it to the loss."));
  s.push_back(range(alg("entropy_coef", &A::entropy_coef, K::Float,
                        "Weight of the entropy bonus (subtracted from the loss); 0 = off."),
                    0, kNoMax));
  s.push_back(choices(alg("loss_agg", &A::loss_agg, K::Enum,
                          "Loss aggregation: mean over all tokens, mean over sequences of the token mean / token "
                          "sum, or token sum divided by `rollout.max_new_tokens` (Dr. GRPO)."),
                      {"token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"}));
  s.push_back(alg("dynamic_sampling", &A::dynamic_sampling, K::Bool,
                  "Drop groups whose rewards are all equal (zero advantage) and sample more prompts (DAPO)."));
  s.push_back(alg("mask_truncated", &A::mask_truncated, K::Bool,
                  "Completions cut off at `rollout.max_new_tokens` get no loss (overlong filtering)."));
  s.push_back(range(alg("gamma", &A::gamma, K::Float, "PPO: discount of the GAE returns."), 0, 1));
  s.push_back(range(alg("lam", &A::lam, K::Float, "PPO: GAE lambda."), 0, 1));
  s.push_back(alg("whiten_advantages", &A::whiten_advantages, K::Bool,
                  "PPO and REINFORCE++: normalise advantages to zero mean and unit std over the batch."));
  s.push_back(range(alg("value_clip", &A::value_clip, K::Float,
                        "PPO: clip the new value to the old value +- this in the critic loss; 0 = off."),
                    0, kNoMax));
  s.push_back(range(alg("critic_lr", &A::critic_lr, K::Float, "PPO: peak learning rate of the critic."), 0, 1, true));
  {
    FieldSpec f = alg("critic_init", &A::critic_init, K::String,
                      "PPO: the critic's initial transformer: `policy` (a copy of the policy model) or a model "
                      "directory.");
    f.check = [](const std::string& v) -> std::string {
      return v.empty() ? "`policy` or a model directory" : "";
    };
    f.is_path = true;  // except the word `policy` (resolve_path)
    s.push_back(f);
  }
  add_policy_loss_keys(s);
  // train
  s.push_back(range(train("steps", &T::steps, K::Int, "Training steps (one rollout batch each)."), 1, kNoMax));
  s.push_back(range(train("prompts_per_step", &T::prompts_per_step, K::Int,
                          "Prompts per step; each gets `rollout.group_size` completions."),
                    1, 1e9));
  s.push_back(range(train("micro_batch_tokens", &T::micro_batch_tokens, K::Int,
                          "Token budget of one packed training micro-batch; gradients accumulate over them."),
                    1, 1e9));
  s.push_back(train("checkpointing", &T::checkpointing, K::Bool,
                    "Activation checkpointing: keep each layer's input only and recompute the layer in backward."));
  s.push_back(train("fp32_residual", &T::fp32_residual, K::Bool,
                    "Keep the residual stream in F32 in the training, reference and rollout forwards (CUDA; the CPU "
                    "is F32 throughout). Rollout and training log-probs then agree about 3x more closely."));
  s.push_back(train("save_head_probs", &T::save_head_probs, K::Bool,
                    "Keep the log-prob head's softmax of a micro-batch (micro_batch_tokens x vocab values, bf16 on "
                    "CUDA) so that its backward skips a second logits product; false saves that memory."));
  s.push_back(range(train("log_samples", &T::log_samples, K::Int,
                          "Completions per step written to samples.jsonl (with prompt and reward); 0 = none."),
                    0, 1e9));
  // rollout
  s.push_back(range(roll("group_size", &R::group_size, K::Int, "Completions sampled per prompt (G)."), 1, 1e6));
  s.push_back(range(roll("max_new_tokens", &R::max_new_tokens, K::Int, "Longest completion, in tokens."), 1, 1e9));
  s.push_back(range(roll("temperature", &R::temperature, K::Float,
                         "Sampling temperature; the trainer scores log-probs at the same temperature."),
                    0, kNoMax, true));
  s.push_back(range(roll("top_p", &R::top_p, K::Float, "Nucleus sampling mass; 1 = off."), 0, 1, true));
  s.push_back(range(roll("top_k", &R::top_k, K::Int, "Sample among the k most likely tokens; 0 = off."), 0, 1e9));
  s.push_back(range(roll("min_p", &R::min_p, K::Float,
                         "Drop tokens whose probability is below min_p times the top token's; 0 = off."),
                    0, 1));
  {
    FieldSpec f = roll("stop", &R::stop, K::String,
                       "Stop strings, separated by a vertical bar; a backslash makes the next bar or backslash "
                       "literal. Generation also stops at the model's EOS tokens. Empty = none.");
    f.check = [](const std::string& v) -> std::string {
      try {
        parse_stop_strings(v);
        return "";
      } catch (const Error&) {
        return "non-empty stop strings separated by `|`, with `\\|` and `\\\\` as the only escapes";
      }
    };
    s.push_back(f);
  }
  s.push_back(range(roll("kv_fraction", &R::kv_fraction, K::Float,
                         "Fraction of the GPU memory left after weights and training state given to the KV cache."),
                    0, 1, true));
  s.push_back(range(roll("block_size", &R::block_size, K::Int, "Tokens per paged KV-cache block."), 1, 1024));
  s.push_back(range(roll("max_batch", &R::max_batch, K::Int, "Most sequences decoded together."), 1, 1e6));
  s.push_back(roll("cuda_graphs", &R::cuda_graphs, K::Bool, "Replay captured CUDA graphs for the decode steps."));
  s.push_back(range(roll("prefill_tokens", &R::prefill_tokens, K::Int, "Token budget of one prefill batch."), 1,
                    1e9));
}

// reward section (component weights and their parameters; include/rlcu/reward.h gives the rules).
void add_reward(std::vector<FieldSpec>& s) {
  using K = FieldKind;
  using W = RewardSection;
  const auto rew = [](const std::string& key, auto mem, FieldKind kind, const std::string& doc) {
    return bind_field("reward." + key, &RunConfig::reward, mem, kind, doc);
  };
  const auto weight = [&](const std::string& key, double W::*mem, const std::string& what) {
    return range(rew(key, mem, K::Float, "Weight of the `" + key + "` reward (" + what + "); 0 = off."), -1e6, 1e6);
  };
  s.push_back(weight("math_answer", &W::math_answer,
                     "1 when the last `\\boxed{}`, else the number after `#### `, else the last number equals the "
                     "answer numerically, else 0"));
  s.push_back(weight("exact_match", &W::exact_match, "1 when the trimmed completion equals the trimmed answer, else 0"));
  s.push_back(weight("countdown", &W::countdown,
                     "1 when the completion's expression reaches the target of an answer `n1 n2 ... -> target` "
                     "using + - * / and each given number at most once, else 0"));
  s.push_back(weight("contains", &W::contains,
                     "1 when the completion contains `reward.contains_text`, or the answer when that is empty"));
  s.push_back(weight("format", &W::format, "1 when the tags of `reward.format_tags` occur in order, else 0"));
  s.push_back(weight("length", &W::length,
                     "overlong penalty from 0 to -1 set by `reward.length_max` and `reward.length_buffer`"));
  s.push_back(weight("command", &W::command, "the number printed by `reward.command_line` per completion"));
  s.push_back(weight("model", &W::model, "the score of the reward model at `reward.model_path`"));
  s.push_back(rew("contains_text", &W::contains_text, K::String,
                  "Text the `contains` component looks for; empty = the record's answer."));
  s.push_back(rew("format_tags", &W::format_tags, K::String,
                  "Comma-separated tags the `format` component wants in order, e.g. "
                  "`<think>,</think>,<answer>,</answer>`."));
  s.push_back(range(rew("length_max", &W::length_max, K::Int,
                        "Overlong penalty: completions longer than this many tokens get -1."),
                    0, 1e9));
  s.push_back(range(rew("length_buffer", &W::length_buffer, K::Int,
                        "Overlong penalty: the last this-many tokens before `reward.length_max` ramp from 0 to -1."),
                    0, 1e9));
  s.push_back(rew("command_line", &W::command_line, K::String,
                  "Shell command (`/bin/sh -c`) reading one JSON line per completion and printing one reward per "
                  "line."));
  s.push_back(range(rew("command_timeout_s", &W::command_timeout_s, K::Float,
                        "Seconds the command may take to answer one batch."),
                    0, 1e6, true));
  s.push_back(path_field(rew("model_path", &W::model_path, K::String,
                             "Reward model directory (Hugging Face sequence classification, `score.weight` of one "
                             "label).")));
}

// sft section (`rlcu sft`; src/train/sft.cpp gives the data format and the loss).
void add_lora(std::vector<FieldSpec>& s) {
  using K = FieldKind;
  s.push_back(range(bind_field("lora.rank", &RunConfig::lora, &LoraSection::rank, K::Int,
                               "LoRA rank r: train adapters A [r, in], B [out, r] on a frozen base; 0 = full "
                               "fine-tuning (`rlcu train` only)."),
                    0, 65536));
  s.push_back(range(bind_field("lora.alpha", &RunConfig::lora, &LoraSection::alpha, K::Float,
                               "LoRA alpha: the adapters add (alpha / r) B A to each target weight."),
                    0, 1e6, true));
  {
    FieldSpec f = bind_field("lora.targets", &RunConfig::lora, &LoraSection::targets, K::String,
                             "Comma-separated modules that get adapters, of q_proj, k_proj, v_proj, o_proj, "
                             "gate_proj, up_proj, down_proj (every layer); `all` = all seven.");
    f.check = [](const std::string& v) -> std::string {
      try {
        parse_lora_targets(v, "lora.targets");
        return "";
      } catch (const Error&) {
        return "a comma-separated list of q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, or all";
      }
    };
    s.push_back(f);
  }
}

void add_sft(std::vector<FieldSpec>& s) {
  using K = FieldKind;
  using F = SftSection;
  const auto sft = [](const std::string& key, auto mem, FieldKind kind, const std::string& doc) {
    return bind_field("sft." + key, &RunConfig::sft, mem, kind, doc);
  };
  s.push_back(path_field(sft("path", &F::path, K::String,
                  "SFT data (JSONL): {\"prompt\", \"completion\"} or {\"messages\": [...]} records; the loss covers "
                  "the completion / the assistant turns.")));
  s.push_back(path_field(sft("eval_path", &F::eval_path, K::String,
                             "Held-out SFT data (JSONL); empty = hold out `sft.eval_fraction` of `sft.path`.")));
  s.push_back(range(sft("eval_fraction", &F::eval_fraction, K::Float,
                        "Share of `sft.path` held out (a seeded choice) when `sft.eval_path` is empty; 0 = none."),
                    0, 0.9));
  s.push_back(range(sft("epochs", &F::epochs, K::Int, "Passes over the training records (when `sft.steps` is 0)."), 1,
                    1e9));
  s.push_back(range(sft("steps", &F::steps, K::Int, "Optimizer steps; 0 = as many as `sft.epochs` take."), 0, 1e12));
  s.push_back(range(sft("batch_tokens", &F::batch_tokens, K::Int,
                        "Tokens (prompt + completion) per optimizer step, accumulated over micro-batches of "
                        "`train.micro_batch_tokens`."),
                    1, 1e12));
  s.push_back(range(sft("eval_every", &F::eval_every, K::Int,
                        "Held-out loss every N steps (also at the start and the end); 0 = start and end only."),
                    0, 1e12));
  s.push_back(range(sft("max_seq_tokens", &F::max_seq_tokens, K::Int,
                        "Longer sequences are dropped (and counted); 0 = `train.micro_batch_tokens`."),
                    0, 1e9));
  s.push_back(sft("completion_field", &F::completion_field, K::String,
                  "Record field holding the completion text of prompt/completion records."));
}

// eval section (held-out evaluation during `rlcu train`); eval.reward.* mirrors the reward section.
void add_eval(std::vector<FieldSpec>& s) {
  using K = FieldKind;
  using E = EvalSection;
  const auto ev = [](const std::string& key, auto mem, FieldKind kind, const std::string& doc) {
    return bind_field("eval." + key, &RunConfig::eval, mem, kind, doc);
  };
  s.push_back(path_field(ev("data", &E::data, K::String,
                            "Held-out prompts (the format of `data.path`, read with the `data.*` field keys); empty = "
                            "no evaluation during training.")));
  s.push_back(range(ev("every", &E::every, K::Int,
                       "Evaluate every N steps and after the last step; 0 = after the last step only."),
                    0, 1e12));
  s.push_back(ev("at_start", &E::at_start, K::Bool, "Also evaluate before the first step (logged as step 0)."));
  s.push_back(range(ev("n", &E::n, K::Int, "Samples per eval prompt; `eval/pass@k` uses k = n."), 1, 1e6));
  s.push_back(ev("greedy", &E::greedy, K::Bool, "Greedy decoding for evaluation (the most likely token)."));
  s.push_back(range(ev("max_new_tokens", &E::max_new_tokens, K::Int,
                       "Longest eval completion; 0 = `rollout.max_new_tokens`."),
                    0, 1e9));
  s.push_back(range(ev("temperature", &E::temperature, K::Float,
                       "Eval sampling temperature; 0 = `rollout.temperature`."),
                    0, 1e12));
  s.push_back(range(ev("max_prompts", &E::max_prompts, K::Int, "Evaluate only the first N prompts; 0 = all."), 0,
                    1e12));
  // eval.reward.<key>: the reward key's spec, reading and writing cfg.eval.reward; naming any of them replaces the
  // run's reward set for evaluation.
  std::vector<FieldSpec> rewards;
  add_reward(rewards);
  for (const FieldSpec& r : rewards) {
    FieldSpec f = r;
    f.path = "eval." + r.path;
    f.doc = "Evaluation: as `" + r.path + "`; giving any `eval.reward.*` key replaces the run's reward set.";
    f.get = [g = r.get](const RunConfig& c) {
      RunConfig tmp;
      tmp.reward = c.eval.reward;
      return g(tmp);
    };
    f.set = [st = r.set](RunConfig& c, const json& v) {
      RunConfig tmp;
      tmp.reward = c.eval.reward;
      st(tmp, v);
      c.eval.reward = tmp.reward;
      c.eval.reward_given = true;
    };
    s.push_back(f);
  }
}

// Checks between keys, after every key passed its own validation; messages name every key involved.
void check_cross_fields(const RunConfig& c, const std::string& source) {
  const AlgorithmSection& a = c.algorithm;
  const auto fail = [&](const std::string& what) { throw Error(fmt::format("{}: {}", source, what)); };
  if (a.dual_clip != 0 && a.dual_clip <= 1)
    fail(fmt::format("`algorithm.dual_clip`: expected 0 (off) or a number > 1, got {}", fmt_num(a.dual_clip)));
  if ((a.name == "grpo" || a.name == "rloo") && c.rollout.group_size < 2)
    fail(fmt::format("`algorithm.name` = {} compares the completions of one prompt and needs `rollout.group_size` "
                     ">= 2, got {}",
                     a.name, c.rollout.group_size));
  if (a.rollout_correction != "none" && a.old_logprobs != "recompute")
    fail(fmt::format("`algorithm.rollout_correction` = {} needs `algorithm.old_logprobs` = recompute (got {}): the "
                     "correction compares the recomputed old log-probs with the rollout's",
                     a.rollout_correction, a.old_logprobs));
  if (a.policy_loss == "cispo" && a.dual_clip != 0)
    fail(fmt::format("`algorithm.dual_clip` = {} does not apply to `algorithm.policy_loss` = cispo; set it to 0",
                     fmt_num(a.dual_clip)));
  if (a.dynamic_sampling && c.rollout.group_size < 2)
    fail(fmt::format("`algorithm.dynamic_sampling` needs `rollout.group_size` >= 2, got {}", c.rollout.group_size));
  if (c.data.max_prompt_tokens > 0 && c.data.max_prompt_tokens + c.rollout.max_new_tokens > c.train.micro_batch_tokens)
    fail(fmt::format("`data.max_prompt_tokens` + `rollout.max_new_tokens` ({} + {}) exceed `train.micro_batch_tokens` "
                     "({}): a whole sequence must fit in one micro-batch",
                     c.data.max_prompt_tokens, c.rollout.max_new_tokens, c.train.micro_batch_tokens));
}

std::string short_json(const json& v) {
  std::string s = v.dump(-1, ' ', false, json::error_handler_t::replace);
  if (s.size() > 60) s = s.substr(0, 57) + "...";
  return s;
}

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j)
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)});
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

std::set<std::string> section_names() {
  std::set<std::string> out;
  for (const FieldSpec& f : config_schema()) out.insert(f.path.substr(0, f.path.find('.')));
  return out;
}

const FieldSpec* find_field(const std::string& path) {
  for (const FieldSpec& f : config_schema())
    if (f.path == path) return &f;
  return nullptr;
}

[[noreturn]] void unknown_key(const std::string& source, const std::string& path) {
  const std::string best = suggest_key(path);
  throw Error(fmt::format("{}: unknown key `{}`{}", source, path,
                          best.empty() ? " (see `rlcu config keys`)" : fmt::format("; did you mean `{}`?", best)));
}

// A resolved value as a user would write it in a path: 0.001, 2e-6, 8, true, the string itself.
std::string placeholder_text(const json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_boolean()) return v.get<bool>() ? "true" : "false";
  if (v.is_number_integer()) return std::to_string(v.get<int64_t>());
  // Shortest text that reads back as the same double; exponents without '+' and leading zeros ("2e-06" -> "2e-6").
  std::string t = fmt::format("{}", v.get<double>());
  const size_t e = t.find('e');
  if (e == std::string::npos) return t;
  std::string exp = t.substr(e + 1);
  const bool neg = !exp.empty() && exp[0] == '-';
  if (!exp.empty() && (exp[0] == '-' || exp[0] == '+')) exp = exp.substr(1);
  while (exp.size() > 1 && exp[0] == '0') exp = exp.substr(1);
  return t.substr(0, e + 1) + (neg ? "-" : "") + exp;
}

// Replaces each `{section.key}` in run.output_dir with that key's resolved value; `{{` and `}}` are literal braces.
void fill_output_dir(RunConfig& c, const std::string& source) {
  const std::string& in = c.run.output_dir;
  if (in.find_first_of("{}") == std::string::npos) return;
  const auto fail = [&](const std::string& what) {
    throw Error(fmt::format("{}: `run.output_dir` = \"{}\": {}", source, in, what));
  };
  std::string out;
  for (size_t i = 0; i < in.size(); ++i) {
    const char ch = in[i];
    if ((ch == '{' || ch == '}') && i + 1 < in.size() && in[i + 1] == ch) {
      out += ch;
      ++i;
      continue;
    }
    if (ch == '}') fail(fmt::format("`}}` at byte {} closes no placeholder (write `}}}}` for a literal brace)", i));
    if (ch != '{') {
      out += ch;
      continue;
    }
    const size_t close = in.find('}', i + 1);
    const size_t nested = in.find('{', i + 1);
    if (close == std::string::npos || (nested != std::string::npos && nested < close))
      fail(fmt::format("placeholder `{}` at byte {} is not closed by `}}` (write `{{{{` for a literal brace)",
                       in.substr(i, (nested == std::string::npos ? in.size() : nested) - i), i));
    const std::string key = in.substr(i + 1, close - i - 1);
    const FieldSpec* f = find_field(key);
    if (!f) {
      const std::string best = key.empty() ? "" : suggest_key(key);
      fail(fmt::format("placeholder `{{{}}}` names no config key{}", key,
                       best.empty() ? " (see `rlcu config keys`)" : fmt::format("; did you mean `{{{}}}`?", best)));
    }
    if (f->path == "run.output_dir") fail("placeholder `{run.output_dir}` names the key itself");
    out += placeholder_text(f->get(c));
    i = close;
  }
  c.run.output_dir = out;
}

// Type/range validation of one value; returns the error text or "".
std::string validate_value(const FieldSpec& f, const json& v) {
  switch (f.kind) {
    case FieldKind::Bool:
      return v.is_boolean() ? "" : "expected true or false";
    case FieldKind::String:
      if (!v.is_string()) return "expected a string";
      try {
        (void)v.dump();  // config.json is written back: the text must be valid UTF-8
      } catch (const json::type_error&) {
        return "expected a string of valid UTF-8";
      }
      if (f.check) {
        const std::string exp = f.check(v.get<std::string>());
        if (!exp.empty()) return "expected " + exp;
      }
      return "";
    case FieldKind::Enum: {
      if (v.is_string() && std::find(f.choices.begin(), f.choices.end(), v.get<std::string>()) != f.choices.end())
        return "";
      return "expected " + f.expectation();
    }
    case FieldKind::Int:
    case FieldKind::Float: {
      if (!v.is_number()) return "expected " + f.expectation();
      const double d = v.get<double>();
      if (!std::isfinite(d)) return "expected " + f.expectation();
      if (f.kind == FieldKind::Int && (!v.is_number_integer() && std::floor(d) != d)) return "expected " + f.expectation();
      const bool low_ok = f.min_exclusive ? d > f.min : d >= f.min;
      if (!low_ok || d > f.max) return "expected " + f.expectation();
      return "";
    }
  }
  return "";
}

void apply_field(const FieldSpec& f, RunConfig& cfg, const json& v) {
  if (f.kind == FieldKind::Int && v.is_number_float()) {
    f.set(cfg, json(static_cast<int64_t>(v.get<double>())));
  } else if (f.kind == FieldKind::Float) {
    f.set(cfg, json(v.get<double>()));
  } else {
    f.set(cfg, v);
  }
}

// Whether `path` names a group of keys inside a section (eval.reward), not a key.
bool is_group(const std::string& path) {
  for (const FieldSpec& f : config_schema())
    if (f.path.size() > path.size() && f.path.compare(0, path.size(), path) == 0 && f.path[path.size()] == '.')
      return true;
  return false;
}

// A path key's value made absolute against `base` (empty values, absolute paths and critic_init's `policy` stay).
std::string resolve_path(const FieldSpec& f, const std::string& v, const std::filesystem::path& base) {
  namespace fs = std::filesystem;
  if (v.empty() || fs::path(v).is_absolute()) return v;
  if (f.path == "algorithm.critic_init" && v == "policy") return v;
  return (base / v).lexically_normal().string();
}

std::filesystem::path current_dir() {
  std::error_code ec;
  const std::filesystem::path p = std::filesystem::current_path(ec);
  if (ec) throw Error(fmt::format("cannot read the current directory: {}", ec.message()));
  return p;
}

// `overridden` holds the keys set with --set, so that their errors name the option rather than the file. With
// `base_dir` set, relative path values become absolute (resolve_path); run.output_dir waits for its placeholders.
void walk(const json& obj, const std::string& prefix, const std::string& file, const std::set<std::string>& overridden,
          const std::string& base_dir, RunConfig& cfg) {
  static const std::set<std::string> sections = section_names();
  for (auto it = obj.begin(); it != obj.end(); ++it) {
    const std::string path = prefix.empty() ? it.key() : prefix + "." + it.key();
    const std::string source = overridden.count(path) ? "--set " + path : file;
    if ((prefix.empty() && sections.count(it.key())) || (!prefix.empty() && is_group(path))) {
      if (!it.value().is_object())
        throw Error(fmt::format("{}: `{}` must be an object of settings, got {}", source, path, short_json(it.value())));
      walk(it.value(), path, file, overridden, base_dir, cfg);
      continue;
    }
    const FieldSpec* f = find_field(path);
    if (!f) unknown_key(source, path);
    const std::string err = validate_value(*f, it.value());
    if (!err.empty()) throw Error(fmt::format("{}: `{}`: {}, got {}", source, path, err, short_json(it.value())));
    if (f->is_path && !base_dir.empty() && f->path != "run.output_dir") {
      const std::filesystem::path base = overridden.count(path) ? current_dir() : std::filesystem::path(base_dir);
      apply_field(*f, cfg, json(resolve_path(*f, it.value().get<std::string>(), base)));
      continue;
    }
    apply_field(*f, cfg, it.value());
  }
}

// Applies one KEY=VALUE override to the JSON document and returns KEY.
std::string apply_override(json& doc, const std::string& ov) {
  const size_t eq = ov.find('=');
  if (eq == std::string::npos || eq == 0)
    throw UsageError(fmt::format("--set {}: expected KEY=VALUE, e.g. --set optimizer.lr=2e-6", ov));
  const std::string key = ov.substr(0, eq);
  const std::string raw = ov.substr(eq + 1);
  json value = json::parse(raw, nullptr, /*allow_exceptions=*/false);
  if (value.is_discarded()) value = raw;  // bare words are strings
  const std::string source = "--set " + key;
  const FieldSpec* field = find_field(key);
  if (!field) unknown_key(source, key);
  // A text field takes the value as written: --set reward.contains_text=42 means the string "42".
  if ((field->kind == FieldKind::String || field->kind == FieldKind::Enum) && !value.is_string()) value = raw;
  json* node = &doc;
  size_t start = 0;
  while (true) {
    const size_t dot = key.find('.', start);
    const std::string part = key.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    if (dot == std::string::npos) {
      (*node)[part] = value;
      return key;
    }
    json& child = (*node)[part];
    if (child.is_null()) child = json::object();
    if (!child.is_object())
      throw Error(fmt::format("{}: `{}` is not an object in the config file", source, key.substr(0, dot)));
    node = &child;
    start = dot + 1;
  }
}

}  // namespace

std::vector<std::string> parse_stop_strings(const std::string& encoded, const std::string& what) {
  std::vector<std::string> out;
  if (encoded.empty()) return out;
  std::string cur;
  for (size_t i = 0; i < encoded.size(); ++i) {
    const char ch = encoded[i];
    if (ch == '\\') {
      if (i + 1 == encoded.size() || (encoded[i + 1] != '|' && encoded[i + 1] != '\\'))
        throw Error(fmt::format("{}: `\\` at byte {} must be followed by `|` or `\\`", what, i));
      cur += encoded[++i];
    } else if (ch == '|') {
      if (cur.empty()) throw Error(fmt::format("{}: empty stop string before byte {}", what, i));
      out.push_back(cur);
      cur.clear();
    } else {
      cur += ch;
    }
  }
  if (cur.empty()) throw Error(fmt::format("{}: empty stop string at the end", what));
  out.push_back(cur);
  return out;
}

std::string FieldSpec::expectation() const {
  switch (kind) {
    case FieldKind::Bool: return "true or false";
    case FieldKind::String: return "a string";
    case FieldKind::Enum: {
      std::string s = "one of ";
      for (size_t i = 0; i < choices.size(); ++i) s += (i ? ", " : "") + choices[i];
      return s;
    }
    case FieldKind::Int:
    case FieldKind::Float: {
      std::string s = kind == FieldKind::Int ? "an integer" : "a number";
      const bool has_lo = min > -1e299, has_hi = max < 1e11;
      if (has_lo) s += fmt::format(" {} {}", min_exclusive ? ">" : ">=", fmt_num(min));
      if (has_lo && has_hi) s += " and";
      if (has_hi) s += fmt::format(" <= {}", fmt_num(max));
      return s;
    }
  }
  return "";
}

const std::vector<FieldSpec>& config_schema() {
  static const std::vector<FieldSpec> schema = build_schema();
  return schema;
}

std::string suggest_key(const std::string& unknown) {
  std::string best;
  size_t best_d = SIZE_MAX;
  const std::string leaf = unknown.substr(unknown.rfind('.') + 1);
  for (const FieldSpec& f : config_schema()) {
    size_t d = edit_distance(unknown, f.path);
    // A right key in the wrong section ("lr" at top level) is also a good suggestion.
    const std::string fleaf = f.path.substr(f.path.rfind('.') + 1);
    if (fleaf == leaf) d = std::min<size_t>(d, 1);
    if (d < best_d) {
      best_d = d;
      best = f.path;
    }
  }
  const size_t limit = std::max<size_t>(2, leaf.size() / 3 + 1);
  return best_d <= limit ? best : "";
}

RunConfig parse_config(const std::string& text, const std::string& source, const std::vector<std::string>& overrides,
                       const std::string& base_dir, ConfigUse use) {
  json doc;
  try {
    doc = json::parse(text);
  } catch (const json::exception& e) {
    throw Error(json_parse_error(source, text, e));
  }
  if (!doc.is_object()) throw Error(fmt::format("{}: expected a JSON object at the top level", source));
  std::set<std::string> overridden;
  for (const std::string& ov : overrides) overridden.insert(apply_override(doc, ov));
  RunConfig cfg;
  walk(doc, "", source, overridden, base_dir, cfg);
  if (!cfg.eval.reward_given) cfg.eval.reward = cfg.reward;  // evaluation scores with the run's rewards
  if (use == ConfigUse::Rl) check_cross_fields(cfg, source);
  fill_output_dir(cfg, overridden.count("run.output_dir") ? "--set run.output_dir" : source);
  if (!base_dir.empty()) {
    const bool from_file = !overridden.count("run.output_dir") && doc.contains("run") && doc["run"].is_object() &&
                           doc["run"].contains("output_dir");
    cfg.run.output_dir = resolve_path(*find_field("run.output_dir"), cfg.run.output_dir,
                                      from_file ? std::filesystem::path(base_dir) : current_dir());
  }
  return cfg;
}

RunConfig load_run_config(const std::string& command, const std::string& config, std::vector<std::string> overrides,
                          const std::string& resume, const std::string& device, std::string* source) {
  std::string path = config;
  if (path.empty()) {
    if (resume.empty()) throw UsageError(fmt::format("{}: give a CONFIG file (or --resume RUN_DIR)", command));
    path = (std::filesystem::path(resume) / "config.json").string();
    if (!std::filesystem::exists(path))
      throw Error(fmt::format("{}: no such file (the run's resolved config)", path));
  }
  if (!device.empty()) overrides.push_back("run.device=" + device);
  if (!resume.empty()) {
    // The run directory is a real path: its braces are not placeholders.
    std::string escaped;
    for (const char ch : resume) escaped += (ch == '{' || ch == '}') ? std::string(2, ch) : std::string(1, ch);
    overrides.push_back("run.output_dir=" + escaped);
  }
  if (source) *source = path;
  return load_config(path, overrides, command == "sft" ? ConfigUse::Sft : ConfigUse::Rl);
}

RunConfig load_config(const std::string& path, const std::vector<std::string>& overrides, ConfigUse use) {
  for (const std::string& ov : overrides)  // a malformed --set is a usage error, whatever the file holds
    if (ov.find('=') == std::string::npos || ov[0] == '=')
      throw UsageError(fmt::format("--set {}: expected KEY=VALUE, e.g. --set optimizer.lr=2e-6", ov));
  require_not_directory(path, "a JSON config file");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(fmt::format("{}: cannot open config file", path));
  std::stringstream ss;
  ss << in.rdbuf();
  std::error_code ec;
  const std::filesystem::path abs = std::filesystem::absolute(path, ec);
  if (ec) throw Error(fmt::format("{}: cannot make the path absolute: {}", path, ec.message()));
  return parse_config(ss.str(), path, overrides, abs.parent_path().lexically_normal().string(), use);
}

nlohmann::ordered_json config_to_json(const RunConfig& cfg) {
  nlohmann::ordered_json out = nlohmann::ordered_json::object();
  for (const FieldSpec& f : config_schema()) {
    nlohmann::ordered_json* node = &out;  // eval.reward.math_answer -> out["eval"]["reward"]["math_answer"]
    size_t start = 0;
    for (size_t dot = f.path.find('.'); dot != std::string::npos; start = dot + 1, dot = f.path.find('.', start))
      node = &(*node)[f.path.substr(start, dot - start)];
    (*node)[f.path.substr(start)] = nlohmann::ordered_json::parse(f.get(cfg).dump());
  }
  return out;
}

}  // namespace rlcu
