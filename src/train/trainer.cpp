// The RL trainer behind `rlcu train`: set-up, the step loop, checkpoints. One step is a sequence of phases, each a
// function below with the rollout batch (include/rlcu/rollout_batch.h) as what passes between them:
//   rollout    train.prompts_per_step prompts from the data loader (resumable cursor); the engine samples
//              rollout.group_size completions per prompt from the policy's own bf16 weights, with the sampler seed
//              derived from (run.seed, step), and returns each token's log-prob: the "old" log-probs of the
//              clipped-ratio loss;
//   reward     the reward set scores every completion (weighted components, each logged);
//   reference  the completions are packed into micro-batches of train.micro_batch_tokens; with a reference model
//              (algorithm.kl_coef > 0) it scores the completion tokens, and PPO's critic gives their values;
//   recompute  with algorithm.old_logprobs = recompute the policy's training forward scores them too (the old
//              log-probs of the ratio, include/rlcu/rollout_correction.h), and the rollout correction (TIS / MIS)
//              weighs the rollout policy against them;
//   advantage  the advantage driver (include/rlcu/advantage.h): KL to the reference, the algorithm's estimator,
//              dynamic sampling and truncation masks, per-token loss weights;
//   update     algorithm.num_iterations passes over the micro-batches: the policy forward (log-prob head with
//              entropy), the fused policy-loss kernel (clip / GSPO / CISPO, dual clip, KL k1/k2/k3, entropy bonus,
//              rollout-correction weights, loss aggregation as per-token weights over the whole batch) and the
//              backward; gradients accumulate over
//              the micro-batches and one AdamW step (global-norm clipping, LR schedule) ends the pass. PPO then
//              updates the critic (clipped value loss, its own AdamW);
//   eval       every eval.every steps and after the last (and before the first with eval.at_start): the engine
//              generates for the held-out prompts of eval.data with the current weights, the code path of
//              `rlcu eval` (include/rlcu/eval_run.h); eval/* metrics, RUN/eval_samples.jsonl;
//   report     metrics.jsonl (TRL's names where they exist) and the same scalars as TensorBoard events
//              (run.tensorboard), samples.jsonl, the console line (step_report.h).
// Checkpoints every run.save_every steps and at the end; SIGINT/SIGTERM save a checkpoint and stop. The run directory
// is locked for the run's lifetime and its inputs are recorded (include/rlcu/run_dir.h). A step that fails (a reward
// command that dies, a non-finite gradient, a failed write) saves the last completed step before the error ends the
// run: the previous step when the failure came before the step's first optimizer update (the data cursor is put
// back), the failed step itself when its update was complete (only its report was lost), nothing when an update of
// the step was partly applied (algorithm.num_iterations > 1, or the critic after the policy). A stop signal that
// interrupts a step (a reward command being waited for) saves the same way and exits 128 + signal.
// Memory: every device buffer of a step (the policy's per-token rows, the advantage driver's vectors, the critic's)
// is allocated at start-up from the sizes the config implies; the step loop allocates no device memory. Before any
// of it, the memory plan (include/rlcu/memory_plan.h) is computed from the model headers and the data: a plan that
// does not fit stops the run, `--dry-run` prints it and returns, and the end of a run logs its peak beside it.
// Determinism: the sampler is keyed by (seed, step, sequence, position), every reduction has a fixed order and the
// data cursor and optimizer state are checkpointed, so a resumed run reproduces the uninterrupted one bit for bit on
// the same device.
// Data parallel (a launcher's environment with world size W > 1, include/rlcu/dist.h): rank r samples its share of
// the step's prompts under global sequence ids; the completions, rewards and per-token scores are all-gathered, so
// the advantages, the rollout correction, the loss weights and the metrics are computed over the whole batch on every
// rank exactly as one process computes them; each rank runs the update on its own sequences and AdamW sums the
// gradients over the ranks (replicated optimizer state, identical on every rank). Rank 0 alone locks and writes the
// run directory; a stop signal on any rank stops every rank after the same step. With W = 1 (or no launcher) none
// of this runs: the trainer is one process as before.
#include "rlcu/trainer.h"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <optional>

#include "rlcu/advantage.h"
#include "rlcu/algorithm.h"
#include "rlcu/checkpoint.h"
#include "rlcu/config.h"
#include "rlcu/data.h"
#include "rlcu/dist.h"
#include "rlcu/engine.h"
#include "rlcu/error.h"
#include "rlcu/eval_run.h"
#include "rlcu/memory_plan.h"
#include "rlcu/metrics.h"
#include "rlcu/model.h"
#include "rlcu/ops.h"
#include "rlcu/lora.h"
#include "rlcu/optimizer.h"
#include "rlcu/parallel.h"
#include "rlcu/reference.h"
#include "rlcu/reward.h"
#include "rlcu/rl_ops.h"
#include "rlcu/rng.h"
#include "rlcu/rollout_batch.h"
#include "rlcu/rollout_correction.h"
#include "rlcu/run_dir.h"
#include "rlcu/signals.h"
#include "rlcu/token_bytes.h"
#include "rlcu/tokenizer.h"
#include "critic_update.h"
#include "data_parallel.h"
#include "step_report.h"

namespace rlcu {

namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using nlohmann::ordered_json;

double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// The eval completion length: eval.max_new_tokens, or rollout.max_new_tokens when 0.
int64_t eval_max_new_tokens(const RunConfig& c) {
  return c.eval.max_new_tokens > 0 ? c.eval.max_new_tokens : c.rollout.max_new_tokens;
}

// The sampler seed of step `step` (1-based): a completion depends only on (run.seed, step, sequence, position).
uint64_t rollout_seed(uint64_t seed, int64_t step) { return mix_key(seed, static_cast<uint64_t>(step)); }

void put(const Tensor& dst, const std::vector<float>& v, Context& ctx) {
  RLCU_CHECK(dst.numel() == static_cast<int64_t>(v.size()), "put: {} values into {}", v.size(), dst.shape_str());
  ctx.upload(dst, v.data());
}

// The console's rollout progress bar (on a terminal only).
engine::ProgressFn progress_bar() {
  if (isatty(fileno(stderr)) == 0) return {};
  return [](int64_t done, int64_t total) {
    const int width = 30, filled = static_cast<int>(width * done / std::max<int64_t>(total, 1));
    std::fprintf(stderr, "\r  rollout [%s%s] %lld/%lld", std::string(static_cast<size_t>(filled), '#').c_str(),
                 std::string(static_cast<size_t>(width - filled), '.').c_str(), static_cast<long long>(done),
                 static_cast<long long>(total));
    if (done == total) std::fprintf(stderr, "\r%60s\r", "");
  };
}

// How far the current step has changed the training state (what an error in it leaves behind).
enum class StepProgress { Clean, Partial, Trained };

// The inputs a run reads from outside its directory (recorded at the start, checked on resume).
std::vector<RunInput> train_inputs(const RunConfig& c, bool critic) {
  std::vector<RunInput> in = {{"model.path", c.model.path},
                              {"model.tokenizer", c.model.tokenizer},
                              {"model.chat_template_file", c.model.chat_template_file},
                              {"data.path", c.data.path}};
  if (critic && c.algorithm.critic_init != "policy") in.push_back({"algorithm.critic_init", c.algorithm.critic_init});
  if (c.reward.model != 0) in.push_back({"reward.model_path", c.reward.model_path});
  if (!c.eval.data.empty()) in.push_back({"eval.data", c.eval.data});
  return in;
}

class Trainer {
 public:
  Trainer(const TrainArgs& args);
  int run();

 private:
  // set-up, in order
  void load_data(const std::string& config_path);
  void load_eval_data();
  MemoryPlanInputs memory_inputs() const;
  engine::EngineOptions engine_options() const;
  void load_models();
  void make_engine();
  void restore();
  void setup_outputs();
  void save(int64_t step);
  int fail_step(int64_t step, const DataCursor& before, const std::exception& e);

  // one step and its phases
  void step(int64_t step, bool eval_after);
  rl::RolloutBatch rollout(int64_t step);
  void score_rewards(rl::RolloutBatch& batch);
  void score_reference(rl::RolloutBatch& batch, const std::vector<rl::Micro>& micros);
  rl::CorrectionStats recompute_old(rl::RolloutBatch& batch, const std::vector<rl::Micro>& micros);
  ordered_json evaluate(int64_t step);
  UpdateResult update(const rl::RolloutBatch& batch, const std::vector<rl::Micro>& micros,
                      const rl::AdvantageStats& adv, int64_t step);
  void policy_pass(const rl::RolloutBatch& batch, const std::vector<rl::Micro>& micros);

  TrainArgs args_;
  RunConfig cfg_;
  rl::AlgorithmSpec spec_;
  rl::PolicyLossParams loss_;
  std::string run_dir_;
  RunDirectory rundir_;
  std::vector<RunInput> inputs_;
  std::unique_ptr<Context> cuda_ctx_;
  Context* ctx_ = nullptr;
  Device dev_ = Device::CPU;
  std::optional<Tokenizer> tok_;
  std::optional<PromptFormat> format_;
  std::optional<PromptDataset> data_;
  std::optional<PromptLoader> loader_;
  int64_t longest_prompt_ = 0;  // tokens
  int64_t longest_answer_ = 0;  // bytes
  std::unique_ptr<Model> policy_;
  LoraSpec lora_spec_;                  // rank 0: full fine-tuning
  std::unique_ptr<LoraAdapters> lora_;  // LoRA: the trained adapters on the frozen policy_
  std::unique_ptr<Transformer> tf_;
  std::unique_ptr<AdamW> opt_;
  std::unique_ptr<rl::ReferenceModel> ref_;
  std::unique_ptr<TrainedCritic> critic_;
  std::unique_ptr<RewardSet> rewards_;
  std::unique_ptr<engine::Engine> engine_;
  std::unique_ptr<rl::AdvantageDriver> advantages_;
  std::unique_ptr<rl::RolloutCorrector> corrector_;  // with algorithm.old_logprobs = recompute
  std::optional<PromptDataset> eval_data_;           // eval.data, or none
  std::vector<const PromptSample*> eval_prompts_;
  int64_t eval_longest_prompt_ = 0, eval_longest_answer_ = 0;
  std::unique_ptr<RewardSet> eval_rewards_;          // eval.reward.* when given (else the run's reward set)
  std::unique_ptr<JsonlWriter> eval_samples_;
  std::unique_ptr<MetricsWriter> metrics_;
  std::unique_ptr<SamplesWriter> samples_;
  TokenBytesTable token_bytes_;
  std::vector<int32_t> eos_ids_;
  std::vector<std::string> stop_strings_;
  // The policy's per-token rows of one micro-batch [train.micro_batch_tokens] and the loss statistics.
  OwnedTensor logp_, entropy_, dlogp_, dentropy_, old_, ref_lp_, adv_, w_, stats_;
  OwnedTensor is_w_, seq_lr_;  // rollout-correction weights and GSPO's sequence log-ratio rows
  OwnedTensor stats_after_;    // [max micro-batches * kPolicyStats]: stats_ after each micro-batch of a pass
  int64_t start_step_ = 0;
  int64_t steps_done_ = 0;
  int64_t last_saved_ = 0;  // the step of the newest checkpoint this run has (0 = none)
  int64_t num_tokens_ = 0;  // prompt + completion tokens of the completed steps (metric num_tokens; checkpointed)
  Clock::time_point started_ = Clock::now();  // when this invocation's first step began (ETA, summary)
  void summary(double wall_seconds) const;
  StepProgress progress_ = StepProgress::Clean;
  ModelConfig policy_config_;  // Model::inspect of model.path, before loading
  MemoryPlan plan_;
  bool dry_run_done_ = false;

  // Data parallel (see the file comment): the job's shape, its communicator (null for a job of one) and this rank's
  // share of the current step's batch.
  bool dp() const { return dp_.on(); }
  bool writer() const { return dp_.writer(); }  // rank 0 writes every file of the run directory
  // Prompts [*first, *end) of the step's prompts_per_step are this rank's.
  void prompt_share(int rank, int64_t* first, int64_t* end) const {
    dp_.share(cfg_.train.prompts_per_step, rank, first, end);
  }
  std::vector<engine::Completion> gather_completions(std::vector<engine::Completion> mine, int64_t first_prompt);
  void gather_tokens(std::vector<float>& per_token, const rl::RolloutBatch& batch);
  void reduce_report(StepRecord& rec);
  DataParallel dp_;
  int64_t seq_first_ = 0, seq_end_ = 0;  // this rank's sequences of the current step's batch
};

Trainer::Trainer(const TrainArgs& args) : args_(args) {
  std::string config_path;
  cfg_ = load_run_config("train", args.config, args.overrides, args.resume, args.device, &config_path);
  int dev_index = 0;
  dev_ = parse_device(cfg_.run.device, "run.device", &dev_index);
  set_cpu_threads(static_cast<int>(cfg_.run.threads));
  bool distributed = false;
  dp_ = DataParallel::from_environment(args.dry_run, &distributed);
  if (distributed) {
    if (cfg_.train.prompts_per_step < dp_.world_size())
      throw Error(fmt::format("{}: train.prompts_per_step = {} is less than the world size {}: every rank needs at "
                              "least one prompt group per step",
                              config_path, cfg_.train.prompts_per_step, dp_.world_size()));
    if (dev_ == Device::CUDA) dev_index = dist::local_device_index(dp_.env, cuda_device_count());
  }
  spdlog::info("{}", device_note(cfg_.run.device, dev_, dev_index));
  run_dir_ = cfg_.run.output_dir;
  const AlgorithmSection& al = cfg_.algorithm;
  spec_ = rl::parse_algorithm_spec(al);
  loss_.kind = spec_.policy_loss;
  loss_.clip_low = spec_.loss_clip_low;
  loss_.clip_high = spec_.loss_clip_high;
  loss_.dual_clip = static_cast<float>(al.dual_clip);
  loss_.kl_coef = spec_.loss_kl_coef();
  loss_.kl = spec_.kl_estimator;
  loss_.ent_coef = static_cast<float>(al.entropy_coef);
  if (cfg_.model.path.empty()) throw Error(fmt::format("{}: model.path is not set", config_path));
  if (cfg_.data.path.empty()) throw Error(fmt::format("{}: data.path is not set", config_path));
  stop_strings_ = parse_stop_strings(cfg_.rollout.stop);

  if (distributed) {  // the communicator first: rank 0 tells the others whether the run resumes
    if (dev_ == Device::CUDA) {
      if (cuda_device_count() == 0) throw Error("run.device is cuda but no CUDA device is available (use --device cpu)");
      cuda_ctx_ = Context::cuda(dev_index);
    }
    ctx_ = cuda_ctx_ ? cuda_ctx_.get() : &Context::cpu();
    // Completions, rewards and per-token rows of one rank's share, padded to the largest share (host_collectives).
    const int64_t W = dp_.world_size(), P = cfg_.train.prompts_per_step, G = cfg_.rollout.group_size;
    const int64_t share_seqs = (P + W - 1) / W * G;
    const int64_t words = share_seqs * (4 + 2 * cfg_.rollout.max_new_tokens +
                                        static_cast<int64_t>(reward_component_names().size()) + 1);
    dp_.start(*ctx_, static_cast<size_t>(W * words * 4 + 4096));
  }
  if (!args.dry_run && writer()) {  // a dry run neither creates nor locks the run directory
    RunDirRequest rq;
    rq.command = "train";
    rq.dir = run_dir_;
    rq.resume = !args.resume.empty();
    rq.overwrite = args.overwrite;
    rq.resume_mode = cfg_.run.resume;
    rundir_ = open_run_dir(rq);
    inputs_ = train_inputs(cfg_, spec_.traits.needs_critic);
    if (rundir_.resuming) verify_run_inputs(run_dir_, inputs_);
  }
  // The other ranks resume from the checkpoint rank 0 found (the run directory is shared).
  if (dp()) rundir_.resuming = dp_.agree_resuming(rundir_.resuming);

  if (!ctx_ && dev_ == Device::CUDA) {
    if (cuda_device_count() == 0) throw Error("run.device is cuda but no CUDA device is available (use --device cpu)");
    cuda_ctx_ = Context::cuda(dev_index);
  }
  ctx_ = cuda_ctx_ ? cuda_ctx_.get() : &Context::cpu();

  load_data(config_path);
  load_eval_data();
  // The memory plan, from the model headers and the data, before anything is allocated.
  policy_config_ = Model::inspect(cfg_.model.path, ModelOptions{});
  lora_spec_ = lora_spec_from_config(cfg_);
  const int64_t longest_seq = longest_prompt_ + cfg_.rollout.max_new_tokens;
  if (policy_config_.max_position_embeddings > 0 && longest_seq > policy_config_.max_position_embeddings)
    throw Error(fmt::format("the longest prompt ({} tokens) plus rollout.max_new_tokens ({}) exceeds the model's "
                            "max_position_embeddings {}",
                            longest_prompt_, cfg_.rollout.max_new_tokens, policy_config_.max_position_embeddings));
  const MemoryPlanInputs mi = memory_inputs();
  plan_ = plan_memory(mi);
  if (args.dry_run) {
    validate_reward_section(cfg_.reward);
    if (cfg_.eval.reward_given) validate_reward_section(cfg_.eval.reward);
    dry_run_done_ = true;
    return;
  }
  check_memory_plan(mi, plan_);

  load_models();
  rewards_ = std::make_unique<RewardSet>(cfg_.reward, &*tok_, *ctx_);
  if (eval_data_ && cfg_.eval.reward_given)
    eval_rewards_ = std::make_unique<RewardSet>(cfg_.eval.reward, &*tok_, *ctx_);
  make_engine();
  // The step's remaining device buffers, sized from the config; after the engine, which sizes its KV pool from the
  // memory left, as they are small.
  const rl::AdvantageOptions ao = rl::advantage_options(cfg_, spec_);
  advantages_ = std::make_unique<rl::AdvantageDriver>(ao, dev_);
  if (spec_.recompute_old_logprobs)
    corrector_ = std::make_unique<rl::RolloutCorrector>(spec_.correction, ao.max_seqs, ao.max_tokens, dev_);
  const int64_t eval_seqs = static_cast<int64_t>(eval_prompts_.size()) * cfg_.eval.n;
  const int64_t eval_tokens = eval_seqs * eval_max_new_tokens(cfg_);
  if (eval_rewards_) {
    rewards_->reserve(ao.max_seqs, ao.max_tokens, longest_answer_);
    eval_rewards_->reserve(eval_seqs, eval_tokens, eval_longest_answer_);
  } else {
    rewards_->reserve(std::max(ao.max_seqs, eval_seqs), std::max(ao.max_tokens, eval_tokens),
                      std::max(longest_answer_, eval_longest_answer_));
  }
  if (rundir_.resuming) restore();
}

void Trainer::load_data(const std::string& config_path) {
  const std::string tok_dir = cfg_.model.tokenizer.empty() ? cfg_.model.path : cfg_.model.tokenizer;
  tok_ = Tokenizer::load(tok_dir);
  format_ = make_prompt_format(*tok_, cfg_.model.chat_template, cfg_.model.chat_template_file,
                               cfg_.model.enable_thinking);
  data_ = PromptDataset::load(cfg_.data, *format_);
  loader_.emplace(*data_, cfg_.run.seed, cfg_.data.shuffle);
  for (int64_t i = 0; i < data_->size(); ++i) {
    longest_prompt_ = std::max<int64_t>(longest_prompt_, static_cast<int64_t>((*data_)[i].ids.size()));
    longest_answer_ = std::max<int64_t>(longest_answer_, static_cast<int64_t>((*data_)[i].answer.size()));
  }
  const int64_t longest_seq = longest_prompt_ + cfg_.rollout.max_new_tokens;
  if (longest_seq > cfg_.train.micro_batch_tokens)
    throw Error(fmt::format("train.micro_batch_tokens = {} cannot hold the longest prompt ({} tokens) plus "
                            "rollout.max_new_tokens = {}; raise it to at least {}",
                            cfg_.train.micro_batch_tokens, longest_prompt_, cfg_.rollout.max_new_tokens, longest_seq));
}

// The held-out prompts of eval.data (read like data.path, in file order).
void Trainer::load_eval_data() {
  if (cfg_.eval.data.empty()) return;
  DataConfig dc = cfg_.data;
  dc.path = cfg_.eval.data;
  dc.shuffle = false;
  dc.max_samples = cfg_.eval.max_prompts;
  eval_data_ = PromptDataset::load(dc, *format_);
  if (eval_data_->size() == 0) throw Error(fmt::format("eval.data = {}: no usable prompt", cfg_.eval.data));
  for (int64_t i = 0; i < eval_data_->size(); ++i) {
    eval_prompts_.push_back(&(*eval_data_)[i]);
    eval_longest_prompt_ = std::max<int64_t>(eval_longest_prompt_, static_cast<int64_t>((*eval_data_)[i].ids.size()));
    eval_longest_answer_ = std::max<int64_t>(eval_longest_answer_, static_cast<int64_t>((*eval_data_)[i].answer.size()));
  }
}

// The policy (and its optimizer), the reference model, the critic, the policy's per-token rows.
void Trainer::load_models() {
  Context& ctx = *ctx_;
  const AlgorithmSection& al = cfg_.algorithm;
  ModelOptions mo;
  mo.training = lora_spec_.rank == 0;  // LoRA: a frozen base
  policy_ = Model::load(cfg_.model.path, mo, ctx);
  if (lora_spec_.rank > 0) {
    lora_ = std::make_unique<LoraAdapters>(*policy_, lora_spec_, cfg_.run.seed, true, ctx);
    if (!cfg_.model.adapter.empty()) lora_->load_peft(cfg_.model.adapter, ctx);
  }
  const ModelConfig& mc = policy_->config();
  if (tok_->vocab_size() > mc.vocab_size)
    spdlog::warn("the tokenizer has {} tokens, more than the model's vocabulary of {}", tok_->vocab_size(),
                 mc.vocab_size);
  TransformerOptions to;
  to.max_tokens = cfg_.train.micro_batch_tokens;
  to.act_dtype = default_act_dtype(dev_);
  to.training = true;
  to.checkpointing = cfg_.train.checkpointing;
  to.fp32_residual = cfg_.train.fp32_residual;
  to.save_head_probs = cfg_.train.save_head_probs;
  to.inv_temperature = static_cast<float>(1.0 / cfg_.rollout.temperature);
  to.lora = lora_.get();
  to.lora_rank = lora_spec_.rank;
  tf_ = std::make_unique<Transformer>(*policy_, to, ctx);
  if (lora_)
    opt_ = std::make_unique<AdamW>(cfg_.optimizer, lora_->flat_master(), lora_->flat_grads(),
                                   dev_ == Device::CUDA ? lora_->flat_weights() : Tensor(), ctx);
  else
    opt_ = std::make_unique<AdamW>(cfg_.optimizer, policy_->flat_master(), policy_->flat_grads(),
                                   dev_ == Device::CUDA ? policy_->flat_weights() : Tensor(), ctx);
  if (dp()) opt_->set_communicator(dp_.comm.get());
  if (spec_.use_reference)
    ref_ = lora_ ? std::make_unique<rl::ReferenceModel>(*policy_, to, ctx)
                 : std::make_unique<rl::ReferenceModel>(cfg_.model.path, to, ctx);
  if (spec_.traits.needs_critic) {
    rl::CriticOptions co;
    co.init = al.critic_init == "policy" ? cfg_.model.path : al.critic_init;
    co.max_tokens = cfg_.train.micro_batch_tokens;
    co.checkpointing = cfg_.train.checkpointing;
    co.value_clip = al.value_clip;
    OptimizerSection copt = cfg_.optimizer;
    copt.lr = al.critic_lr;
    copt.name = "adamw";  // the critic keeps fp32 moments whatever optimizer.name says
    critic_ = std::make_unique<TrainedCritic>(co, copt, ctx);
    if (dp()) critic_->set_collectives(dp_.coll.get());
  }
  const int64_t Tm = cfg_.train.micro_batch_tokens;
  for (OwnedTensor* t : {&logp_, &entropy_, &dlogp_, &dentropy_, &old_, &ref_lp_, &adv_, &w_})
    *t = OwnedTensor::make(DType::F32, dev_, {Tm});
  if (spec_.correction.mode != rl::RolloutCorrection::None) is_w_ = OwnedTensor::make(DType::F32, dev_, {Tm});
  if (spec_.policy_loss == rl::PolicyLossKind::Gspo) seq_lr_ = OwnedTensor::make(DType::F32, dev_, {Tm});
  stats_ = OwnedTensor::make(DType::F32, dev_, {rl::kPolicyStats});
  // A micro-batch holds at least one sequence of the step's P x G.
  stats_after_ =
      OwnedTensor::make(DType::F32, dev_, {cfg_.train.prompts_per_step * cfg_.rollout.group_size * rl::kPolicyStats});
}

// What the memory plan is computed from (the policy's config is inspected first).
MemoryPlanInputs Trainer::memory_inputs() const {
  MemoryPlanInputs in;
  in.cfg = cfg_;
  in.device = dev_;
  if (dev_ == Device::CUDA) in.free_bytes = ctx_->memory_info().free_bytes;
  in.policy = policy_config_;
  in.lora = lora_spec_;
  in.reference = spec_.use_reference;
  if (spec_.traits.needs_critic) {
    in.critic = true;
    const std::string& init = cfg_.algorithm.critic_init;
    in.critic_model = init == "policy" ? policy_config_ : Model::inspect(init, ModelOptions{});
  }
  if (cfg_.reward.model != 0) {
    ModelOptions mo;
    mo.sequence_classification = true;
    in.reward_model = true;
    in.reward = Model::inspect(cfg_.reward.model_path, mo);
  }
  in.engine = true;
  in.engine_options = engine_options();
  // logp_, entropy_, dlogp_, dentropy_, old_, ref_lp_, adv_, w_ (load_models), is_w_, seq_lr_
  in.token_rows = 8 + (spec_.correction.mode != rl::RolloutCorrection::None ? 1 : 0) +
                  (spec_.policy_loss == rl::PolicyLossKind::Gspo ? 1 : 0);
  in.min_micro_batch_tokens = longest_prompt_ + cfg_.rollout.max_new_tokens;
  if (cfg_.data.max_prompt_tokens > 0)  // the config check asks this much of train.micro_batch_tokens
    in.min_micro_batch_tokens =
        std::max(in.min_micro_batch_tokens, cfg_.data.max_prompt_tokens + cfg_.rollout.max_new_tokens);
  return in;
}

// The rollout engine's options: sized for the longest prompts of the data (and of eval.data) plus their
// completion lengths.
engine::EngineOptions Trainer::engine_options() const {
  const ModelConfig& mc = policy_config_;
  const int64_t longest_seq = longest_prompt_ + cfg_.rollout.max_new_tokens;
  engine::EngineOptions eo;
  eo.block_size = cfg_.rollout.block_size;
  eo.kv_fraction = cfg_.rollout.kv_fraction;
  eo.max_batch = std::max(cfg_.rollout.max_batch, cfg_.rollout.group_size);
  eo.prefill_tokens = std::max(cfg_.rollout.prefill_tokens, longest_prompt_);
  eo.max_model_len = longest_seq;
  if (eval_data_) {  // the held-out prompts go through the same engine
    const int64_t eval_seq = eval_longest_prompt_ + eval_max_new_tokens(cfg_);
    if (mc.max_position_embeddings > 0 && eval_seq > mc.max_position_embeddings)
      throw Error(fmt::format("eval.data: the longest prompt ({} tokens) plus the eval completion length ({}) exceeds "
                              "the model's max_position_embeddings {}",
                              eval_longest_prompt_, eval_max_new_tokens(cfg_), mc.max_position_embeddings));
    eo.max_batch = std::max(eo.max_batch, cfg_.eval.n);
    eo.prefill_tokens = std::max(eo.prefill_tokens, eval_longest_prompt_);
    eo.max_model_len = std::max(eo.max_model_len, eval_seq);
  }
  eo.cuda_graphs = cfg_.rollout.cuda_graphs;
  eo.fp32_residual = cfg_.train.fp32_residual;
  // With run.memory_limit_gib the pool is the plan's, not what the device happens to have free.
  if (cfg_.run.memory_limit_gib > 0 && plan_.kv_blocks > 0) eo.max_kv_tokens = plan_.kv_blocks * eo.block_size;
  return eo;
}

// The rollout engine, which takes its share of the memory that is left.
void Trainer::make_engine() {
  const ModelConfig& mc = policy_->config();
  token_bytes_ = TokenBytesTable::build(*tok_, mc.vocab_size);
  eos_ids_ = engine::stop_token_ids(mc, &*tok_);
  const int64_t longest_seq = longest_prompt_ + cfg_.rollout.max_new_tokens;
  const engine::EngineOptions eo = engine_options();
  try {
    engine_ = std::make_unique<engine::Engine>(*policy_, eo, *ctx_);
  } catch (const Error& e) {
    throw Error(fmt::format("the rollout engine does not fit in the memory left after the models and training "
                            "buffers ({}); lower train.micro_batch_tokens or rollout.max_batch, or raise "
                            "rollout.kv_fraction",
                            e.what()));
  }
  const int64_t batch_seqs = cfg_.train.prompts_per_step * cfg_.rollout.group_size;
  const int64_t blocks_needed =
      std::min(batch_seqs, eo.max_batch) * ((longest_seq + eo.block_size - 1) / eo.block_size);
  if (engine_->kv_blocks() < blocks_needed)
    spdlog::warn("the KV pool ({} blocks) is smaller than {} sequences of {} tokens need ({} blocks): rollouts will "
                 "preempt and recompute",
                 engine_->kv_blocks(), std::min(batch_seqs, eo.max_batch), longest_seq, blocks_needed);
  spdlog::info("policy {} ({} parameters) on {}, {}: {} prompts x {} samples per step, KV pool {:.2f} GiB",
               cfg_.model.path, policy_->num_parameters(), device_name(dev_), rl::name_of(spec_.algorithm),
               cfg_.train.prompts_per_step, cfg_.rollout.group_size,
               static_cast<double>(engine_->kv_bytes()) / (1 << 30));
}

void Trainer::restore() {
  const CheckpointRead ck = load_checkpoint(run_dir_);
  if (lora_)
    restore_lora_state(ck, *lora_, opt_.get(), *ctx_);
  else
    restore_training_state(ck, *policy_, opt_.get(), *ctx_);
  if (critic_) critic_->restore(ck, *ctx_);
  if (!ck.data_cursor.is_null()) loader_->restore(DataCursor::from_json(ck.data_cursor));
  start_step_ = last_saved_ = ck.step;
  num_tokens_ = ck.extra.is_object() ? ck.extra.value("num_tokens", int64_t{0}) : 0;
  spdlog::info("resumed {} at step {}", ck.dir, ck.step);
}

void Trainer::setup_outputs() {
  fs::create_directories(run_dir_);
  write_run_config(run_dir_, config_to_json(cfg_));
  if (!rundir_.resuming) record_run_inputs(run_dir_, inputs_);
  const int64_t resume_step = rundir_.resuming ? start_step_ : -1;
  MetricsOptions mo;
  mo.tensorboard = cfg_.run.tensorboard;
  metrics_ = std::make_unique<MetricsWriter>(run_dir_, resume_step, mo);
  samples_ = std::make_unique<SamplesWriter>(run_dir_, resume_step);
  if (eval_data_)
    eval_samples_ = std::make_unique<JsonlWriter>((fs::path(run_dir_) / "eval_samples.jsonl").string(), resume_step);
}

void Trainer::save(int64_t step) {
  if (!writer()) {  // the optimizer state is replicated: rank 0's checkpoint is every rank's
    last_saved_ = step;
    return;
  }
  CheckpointWrite w;
  w.run_dir = run_dir_;
  w.step = step;
  w.model = policy_.get();
  w.optimizer = opt_.get();
  w.lora = lora_.get();
  w.tokenizer_dir = cfg_.model.tokenizer;
  w.seed = cfg_.run.seed;
  w.data_cursor = loader_->cursor().to_json();
  w.config = config_to_json(cfg_);
  w.extra["num_tokens"] = num_tokens_;
  w.keep = cfg_.run.keep_checkpoints;
  if (critic_) critic_->append_state(w.extra_tensors, w.extra_metadata);
  const std::string dir = save_checkpoint(w);
  last_saved_ = step;
  spdlog::info("saved checkpoint {}", dir);
}

// After step `step` failed with `e`: saves the last completed step (see the file comment), then rethrows with what
// was kept, or returns 128 + signal when a stop signal interrupted the step.
int Trainer::fail_step(int64_t step, const DataCursor& before, const std::exception& e) {
  const int sig = stop_requested() ? stop_signal() : 0;
  const std::string resume = fmt::format("continue with `rlcu train --resume {}`{}", run_dir_,
                                         sig ? "" : " (with --set to fix what failed)");
  int64_t keep = -1;
  if (progress_ == StepProgress::Trained) keep = step;
  if (progress_ == StepProgress::Clean) {
    loader_->restore(before);
    keep = step - 1;
  }
  std::string note;
  if (!writer()) {
    note = fmt::format("rank 0 saves the run's checkpoints; {}", resume);
  } else if (keep < 0) {
    note = fmt::format("step {} had already applied part of its update, so it is not saved; {}", step,
                       last_saved_ > 0 ? fmt::format("the latest checkpoint is step {}; {}", last_saved_, resume)
                                       : "there is no checkpoint (start over with --overwrite)");
  } else if (keep == 0) {
    note = "no step had completed, so there is nothing to save";
  } else {
    try {
      if (keep != last_saved_) save(keep);
      note = fmt::format("{} step {} is saved in {}; {}", keep == step ? "the step's update was complete:" : "the last "
                         "completed", keep, (fs::path(run_dir_) / "checkpoints" / checkpoint_dir_name(keep)).string(),
                         resume);
    } catch (const std::exception& se) {
      note = fmt::format("saving step {} failed too: {}", keep, se.what());
    }
  }
  if (sig) {
    spdlog::warn("step {} interrupted by signal {}: {}", step, sig, e.what());
    spdlog::info("{}", note);
    return 128 + sig;
  }
  throw Error(fmt::format("{} (step {} failed; {})", e.what(), step, note));
}

// ---- data parallel -------------------------------------------------------------------------------------------
// Rank r of W samples prompts [r*P/W, (r+1)*P/W) of the step's P (whole groups), with the sampler's global sequence
// ids. The completions, rewards and per-token scores are all-gathered, so every rank holds the whole batch and runs
// the advantage driver, the rollout correction and the metrics on it exactly as one process would; each rank then
// trains on its own sequences, and AdamW sums the gradients over the ranks before its (replicated) update.

// Every rank's completions, in rank order (= request order): per completion its request (global), sample, finish,
// length, tokens and log-prob bits.
std::vector<engine::Completion> Trainer::gather_completions(std::vector<engine::Completion> mine,
                                                            int64_t first_prompt) {
  std::vector<int32_t> words;
  for (const engine::Completion& c : mine) {
    words.push_back(c.request + static_cast<int32_t>(first_prompt));
    words.push_back(c.sample);
    words.push_back(static_cast<int32_t>(c.finish));
    words.push_back(static_cast<int32_t>(c.ids.size()));
    words.insert(words.end(), c.ids.begin(), c.ids.end());
    for (float lp : c.logprobs) words.push_back(dist::float_bits(lp));
  }
  const std::vector<int32_t> all = dp_.coll->all_gather_concat(words);
  std::vector<engine::Completion> out;
  for (size_t at = 0; at < all.size();) {
    engine::Completion c;
    RLCU_CHECK(at + 4 <= all.size(), "data parallel: a truncated completion record");
    c.request = all[at];
    c.sample = all[at + 1];
    c.finish = static_cast<engine::FinishReason>(all[at + 2]);
    const size_t n = static_cast<size_t>(all[at + 3]);
    at += 4;
    RLCU_CHECK(at + 2 * n <= all.size(), "data parallel: a truncated completion record");
    c.ids.assign(all.begin() + static_cast<ptrdiff_t>(at), all.begin() + static_cast<ptrdiff_t>(at + n));
    for (size_t k = 0; k < n; ++k) c.logprobs.push_back(dist::bits_float(all[at + n + k]));
    at += 2 * n;
    out.push_back(std::move(c));
  }
  return out;
}

// per_token holds this rank's sequences' values (completion layout of the whole batch); afterwards every rank's.
void Trainer::gather_tokens(std::vector<float>& per_token, const rl::RolloutBatch& batch) {
  const int32_t b = batch.offsets[static_cast<size_t>(seq_first_)], e = batch.offsets[static_cast<size_t>(seq_end_)];
  std::vector<int32_t> mine;
  mine.reserve(static_cast<size_t>(e - b));
  for (int32_t t = b; t < e; ++t) mine.push_back(dist::float_bits(per_token[static_cast<size_t>(t)]));
  const std::vector<int32_t> all = dp_.coll->all_gather_concat(mine);
  RLCU_CHECK(static_cast<int64_t>(all.size()) == batch.num_tokens(), "data parallel: {} token values for {} tokens",
             all.size(), batch.num_tokens());
  for (size_t t = 0; t < all.size(); ++t) per_token[t] = dist::bits_float(all[t]);
}

// The step's own counters summed over the ranks (generated tokens, preemptions) and its phase times the slowest
// rank's; everything else in the record already describes the whole batch.
void Trainer::reduce_report(StepRecord& rec) {
  std::vector<int64_t> counts{rec.engine.generated_tokens, rec.engine.preemptions, rec.engine.prompts,
                              rec.engine.sequences};
  dp_.coll->all_reduce(counts, dist::ReduceOp::Sum);
  rec.engine.generated_tokens = counts[0];
  rec.engine.preemptions = counts[1];
  rec.engine.prompts = counts[2];
  rec.engine.sequences = counts[3];
  StepTimes& t = rec.times;
  std::vector<double> times{t.rollout, t.reward, t.reference, t.recompute, t.advantage, t.train, t.step};
  dp_.coll->all_reduce(times, dist::ReduceOp::Max);
  double* fields[] = {&t.rollout, &t.reward, &t.reference, &t.recompute, &t.advantage, &t.train, &t.step};
  for (size_t i = 0; i < times.size(); ++i) *fields[i] = times[i];
}

// ---- one step ----------------------------------------------------------------------------------------------------

void Trainer::step(int64_t step, bool eval_after) {
  StepRecord rec;
  rec.step = step;
  const auto t_step = Clock::now();

  auto t0 = Clock::now();
  rl::RolloutBatch batch = rollout(step);
  rec.times.rollout = since(t0);
  rec.engine = engine_->stats();

  t0 = Clock::now();
  score_rewards(batch);
  rec.times.reward = since(t0);

  const std::vector<rl::Micro> micros =
      rl::pack_micro_batches(batch, cfg_.train.micro_batch_tokens, seq_first_, seq_end_);
  t0 = Clock::now();
  score_reference(batch, micros);
  rec.times.reference = since(t0);

  if (corrector_) {
    t0 = Clock::now();
    rec.correction = recompute_old(batch, micros);
    rec.times.recompute = since(t0);
  }

  t0 = Clock::now();
  rec.advantage = advantages_->compute(batch, *ctx_);
  rec.times.advantage = since(t0);

  t0 = Clock::now();
  rec.update = update(batch, micros, rec.advantage, step);
  rec.times.train = since(t0);
  rec.times.step = since(t_step);
  if (eval_after) rec.eval = evaluate(step);

  rec.total_steps = cfg_.train.steps;
  rec.batch = &batch;
  rec.use_reference = spec_.use_reference;
  rec.recompute = spec_.recompute_old_logprobs;
  rec.correction_mode = spec_.correction.mode;
  rec.loss = loss_;
  rec.num_iterations = cfg_.algorithm.num_iterations;
  rec.cuda = dev_ == Device::CUDA;
  rec.epoch = loader_->epoch();
  for (int64_t i = 0; i < batch.num_seqs(); ++i)
    rec.num_tokens += static_cast<int64_t>(batch.prompts[static_cast<size_t>(batch.prompt_of[static_cast<size_t>(i)])].ids.size()) +
                      batch.lengths[static_cast<size_t>(i)];
  rec.num_tokens += num_tokens_;
  const int64_t done_here = steps_done_ + 1;  // steps of this invocation, this one included
  rec.eta_seconds = since(started_) / static_cast<double>(done_here) * static_cast<double>(cfg_.train.steps - step);
  if (dp()) reduce_report(rec);
  const ordered_json m = step_metrics(rec);
  if (metrics_) metrics_->write(m);
  if (samples_) write_samples(*samples_, rec, cfg_.train.log_samples);
  num_tokens_ = rec.num_tokens;
  spdlog::info("{}", step_line(rec, m));
}

rl::RolloutBatch Trainer::rollout(int64_t step) {
  const int G = static_cast<int>(cfg_.rollout.group_size);
  // Every rank draws the whole step's prompts (the same cursor everywhere) and samples its share of them.
  const std::vector<const PromptSample*> samples = loader_->next_batch(cfg_.train.prompts_per_step);
  int64_t first = 0, end = static_cast<int64_t>(samples.size());
  if (dp()) prompt_share(dp_.rank(), &first, &end);
  seq_first_ = first * G;
  seq_end_ = end * G;
  std::vector<engine::Request> reqs;
  std::vector<rl::RolloutPrompt> prompts;
  for (const PromptSample* s : samples) {
    const int64_t k = static_cast<int64_t>(prompts.size());
    if (k >= first && k < end) {
      engine::Request r;
      r.prompt = s->ids;
      r.n = G;
      reqs.push_back(std::move(r));
    }
    rl::RolloutPrompt p;
    p.text = s->text;
    p.ids = s->ids;
    p.answer = s->answer;
    prompts.push_back(std::move(p));
  }
  engine::SamplingOptions so;
  so.sample.seed = rollout_seed(cfg_.run.seed, step);
  so.sample.temperature = static_cast<float>(cfg_.rollout.temperature);
  so.sample.top_p = static_cast<float>(cfg_.rollout.top_p);
  so.sample.top_k = static_cast<int>(cfg_.rollout.top_k);
  so.sample.min_p = static_cast<float>(cfg_.rollout.min_p);
  so.max_new_tokens = cfg_.rollout.max_new_tokens;
  so.eos_ids = eos_ids_;
  so.stop_strings = stop_strings_;
  so.token_bytes = &token_bytes_;
  so.first_seq_id = static_cast<int32_t>(seq_first_);  // global sequence ids: the same completions for any world size
  const engine::ProgressFn progress = writer() ? progress_bar() : engine::ProgressFn{};  // one bar per job
  std::vector<engine::Completion> comps = engine_->generate(reqs, so, progress);
  if (dp()) comps = gather_completions(std::move(comps), first);
  return rl::make_rollout_batch(std::move(prompts), std::move(comps), G);
}

void Trainer::score_rewards(rl::RolloutBatch& batch) {
  const int64_t N = batch.num_seqs();
  RewardBatch rb;
  batch.completion_texts.assign(static_cast<size_t>(N), std::string());
  for (int64_t i = 0; i < N; ++i) {
    const size_t k = static_cast<size_t>(i);
    batch.completion_texts[k] = tok_->decode(batch.completions[k]);
    if (i < seq_first_ || i >= seq_end_) continue;  // another rank scores it
    const rl::RolloutPrompt& p = batch.prompts[static_cast<size_t>(batch.prompt_of[k])];
    rb.items.push_back({p.text, p.ids, batch.completions[k], p.answer, batch.completion_texts[k]});
  }
  RewardResult rr = rewards_->score(rb);
  if (!dp()) {
    batch.rewards = std::move(rr.total);
    batch.reward_components = std::move(rr.components);
    return;
  }
  // Every rank's scores, in rank order: its totals, then each component (the same names on every rank).
  std::vector<int32_t> mine;
  for (float v : rr.total) mine.push_back(dist::float_bits(v));
  for (const auto& [name, vals] : rr.components)
    for (float v : vals) mine.push_back(dist::float_bits(v));
  const std::vector<int32_t> all = dp_.coll->all_gather_concat(mine);
  const int64_t G = batch.group_size;
  batch.rewards.assign(static_cast<size_t>(N), 0.0f);
  batch.reward_components.clear();
  for (const auto& kv : rr.components) batch.reward_components[kv.first].assign(static_cast<size_t>(N), 0.0f);
  size_t at = 0;
  for (int r = 0; r < dp_.world_size(); ++r) {
    int64_t first = 0, end = 0;
    prompt_share(r, &first, &end);
    for (int64_t i = first * G; i < end * G; ++i) batch.rewards[static_cast<size_t>(i)] = dist::bits_float(all.at(at++));
    for (auto& [name, vals] : batch.reward_components)
      for (int64_t i = first * G; i < end * G; ++i) vals[static_cast<size_t>(i)] = dist::bits_float(all.at(at++));
  }
  RLCU_CHECK(at == all.size(), "data parallel: {} reward words of {}", at, all.size());
}

void Trainer::score_reference(rl::RolloutBatch& batch, const std::vector<rl::Micro>& micros) {
  if (ref_) ref_->score(batch, micros, logp_.t, *ctx_);
  if (critic_) critic_->critic().score(batch, micros, *ctx_);
  if (dp() && ref_) gather_tokens(batch.ref_logprobs, batch);
  if (dp() && critic_) gather_tokens(batch.values, batch);
}

// The old log-probs from the policy's training forward (before any update of this step), then the rollout
// correction's weights and statistics.
rl::CorrectionStats Trainer::recompute_old(rl::RolloutBatch& batch, const std::vector<rl::Micro>& micros) {
  rl::score_completions(batch.recomputed_logprobs, batch, micros, *tf_, logp_.t, *ctx_);
  if (dp()) gather_tokens(batch.recomputed_logprobs, batch);
  return corrector_->apply(batch, *ctx_);  // on the whole batch, the same on every rank
}

// One evaluation pass over eval.data with the current weights; its eval/* metrics (samples to eval_samples.jsonl).
ordered_json Trainer::evaluate(int64_t step) {
  const auto t0 = Clock::now();
  engine::SamplingOptions so;
  so.sample.seed = mix_key(cfg_.run.seed, 0x6576616cULL);  // the same sampling noise at every evaluation
  so.sample.temperature =
      static_cast<float>(cfg_.eval.temperature > 0 ? cfg_.eval.temperature : cfg_.rollout.temperature);
  so.sample.greedy = cfg_.eval.greedy;
  so.max_new_tokens = eval_max_new_tokens(cfg_);
  so.eos_ids = eos_ids_;
  so.stop_strings = stop_strings_;
  so.token_bytes = &token_bytes_;
  RewardSet& rewards = eval_rewards_ ? *eval_rewards_ : *rewards_;
  const EvalRun run = run_evaluation(*engine_, eval_prompts_, cfg_.eval.n, so, rewards, *tok_);
  for (size_t i = 0; eval_samples_ && i < run.completions.size(); ++i) {
    ordered_json j;
    j["step"] = step;
    const ordered_json sample = eval_sample_json(run, eval_prompts_, i);
    for (auto it = sample.begin(); it != sample.end(); ++it) j[it.key()] = it.value();
    eval_samples_->write(j);
  }
  const EvalSummary& s = run.summary;
  ordered_json m;
  m["eval/accuracy"] = s.accuracy;
  m["eval/pass@1"] = s.pass_at_1;
  m["eval/pass@k"] = s.pass_at_k;
  m["eval/k"] = s.k;
  m["eval/mean_reward"] = s.mean_reward;
  m["eval/mean_length"] = s.mean_length;
  m["time/eval_s"] = since(t0);
  spdlog::info("eval at step {}: accuracy {:.4f}, pass@1 {:.4f}, pass@{} {:.4f}, mean reward {:.4f} ({:.1f} s)", step,
               s.accuracy, s.pass_at_1, s.k, s.pass_at_k, s.mean_reward, m["time/eval_s"].get<double>());
  return m;
}

UpdateResult Trainer::update(const rl::RolloutBatch& batch, const std::vector<rl::Micro>& micros,
                             const rl::AdvantageStats& adv, int64_t step) {
  Context& ctx = *ctx_;
  UpdateResult r;
  r.stats.assign(rl::kPolicyStats, 0.0);
  r.lr = lr_at(cfg_.optimizer, step - 1, cfg_.train.steps);
  r.updated = adv.kept_tokens > 0;
  for (int64_t it = 0; r.updated && it < cfg_.algorithm.num_iterations; ++it) {
    if (lora_)
      lora_->zero_grads(ctx);
    else
      policy_->zero_grads(ctx);
    ops::fill(stats_.t, 0.0f, ctx);
    policy_pass(batch, micros);
    if (dp()) dp_.comm->all_reduce(stats_.t, dist::ReduceOp::Sum, ctx);  // the loss sums of the whole batch
    r.optimizer = opt_->step(r.lr, ctx);  // throws on a non-finite gradient norm, before changing anything
    if (lora_) lora_->merge(ctx);  // the engine and the next forward read W0 + s B A
    progress_ = StepProgress::Partial;
    ctx.synchronize("trainer: read back");
    const std::vector<float> s = to_host_f32(stats_.t);
    for (int k = 0; k < rl::kPolicyStats; ++k) r.stats[static_cast<size_t>(k)] = s[static_cast<size_t>(k)];
    if (it == 0) r.first_stats = r.stats;
    // Per micro-batch clip fractions from the running sums (token and clip counts: integers, exact in F32).
    const std::vector<float> after = to_host_f32(stats_after_.t);
    r.clip_low_min = r.clip_high_max = -1;
    for (size_t i = 0; i < micros.size(); ++i) {
      const auto at = [&](size_t row, int k) { return row == 0 ? 0.0 : double(after[(row - 1) * rl::kPolicyStats + k]); };
      const double tokens = at(i + 1, rl::kPsTokens) - at(i, rl::kPsTokens);
      if (tokens <= 0) continue;
      const double low = (at(i + 1, rl::kPsClipLow) - at(i, rl::kPsClipLow)) / tokens;
      const double high = (at(i + 1, rl::kPsClipHigh) - at(i, rl::kPsClipHigh)) / tokens;
      r.clip_low_min = r.clip_low_min < 0 ? low : std::min(r.clip_low_min, low);
      r.clip_high_max = std::max(r.clip_high_max, high);
    }
    if (dp()) {  // over every rank's micro-batches; a fraction is at most 1, so 2 stands for "none" in the minimum
      std::vector<double> lo{r.clip_low_min < 0 ? 2.0 : r.clip_low_min}, hi{r.clip_high_max};
      dp_.coll->all_reduce(lo, dist::ReduceOp::Min);
      dp_.coll->all_reduce(hi, dist::ReduceOp::Max);
      r.clip_low_min = lo[0] > 1.5 ? -1 : lo[0];
      r.clip_high_max = hi[0];
    }
  }
  if (critic_ && r.updated)
    r.critic = critic_->update(batch, micros, cfg_.algorithm.num_iterations, step, cfg_.train.steps, ctx);
  for (const rl::Micro& mb : micros) r.train_tokens += mb.batch.num_tokens();
  if (dp()) {
    std::vector<int64_t> t{r.train_tokens};
    dp_.coll->all_reduce(t, dist::ReduceOp::Sum);
    r.train_tokens = t[0];
  }
  progress_ = StepProgress::Trained;
  return r;
}

// One pass of policy-loss gradients over the micro-batches (accumulating into the policy's gradients and stats_).
void Trainer::policy_pass(const rl::RolloutBatch& batch, const std::vector<rl::Micro>& micros) {
  Context& ctx = *ctx_;
  const bool kl = loss_.kl_coef > 0, ent = loss_.ent_coef != 0;
  const bool is = !batch.is_weights.empty(), gspo = loss_.kind == rl::PolicyLossKind::Gspo;
  RLCU_CHECK(static_cast<int64_t>(micros.size()) * rl::kPolicyStats <= stats_after_.t.numel(),
             "trainer: {} micro-batches exceed the {} sequences of a step", micros.size(),
             stats_after_.t.numel() / rl::kPolicyStats);
  for (const rl::Micro& mb : micros) {
    const int64_t T = mb.batch.num_tokens();
    const Tensor lp = logp_.t.slice_rows(0, T), en = entropy_.t.slice_rows(0, T);
    const Tensor dl = dlogp_.t.slice_rows(0, T), de = dentropy_.t.slice_rows(0, T);
    const Tensor ot = old_.t.slice_rows(0, T), rt = ref_lp_.t.slice_rows(0, T);
    const Tensor at = adv_.t.slice_rows(0, T), wt = w_.t.slice_rows(0, T);
    put(ot, rl::gather_rows(mb, batch.offsets, batch.old_logprobs()), ctx);
    put(at, rl::gather_rows(mb, batch.offsets, batch.advantages), ctx);
    put(wt, rl::gather_rows(mb, batch.offsets, batch.loss_weights), ctx);
    if (kl) put(rt, rl::gather_rows(mb, batch.offsets, batch.ref_logprobs), ctx);
    const Tensor it = is ? is_w_.t.slice_rows(0, T) : Tensor(), st = gspo ? seq_lr_.t.slice_rows(0, T) : Tensor();
    if (is) put(it, rl::gather_rows(mb, batch.offsets, batch.is_weights), ctx);
    const DeviceBatch db = tf_->upload(mb.batch, ctx);
    tf_->forward(lp, en, db, ctx);
    if (gspo) rl::sequence_log_ratio(st, lp, ot, wt, db.cu_seqlens, ctx);
    rl::policy_loss(dl, ent ? de : Tensor(), stats_.t, lp, ot, kl ? rt : Tensor(), at, wt, en, it, st, loss_, ctx);
    const int64_t row = static_cast<int64_t>(&mb - micros.data()) * rl::kPolicyStats;
    ops::scale(stats_after_.t.slice_rows(row, row + rl::kPolicyStats), stats_.t, 1.0f, ctx);  // a copy
    tf_->backward(dl, ent ? de : Tensor(), ctx);
  }
}

int Trainer::run() {
  if (dry_run_done_) {
    fmt::print("{}", plan_.table());
    std::fflush(stdout);
    return 0;
  }
  if (writer()) setup_outputs();
  install_stop_handlers();
  if (dp()) set_stop_interrupts_waits(false);  // every rank finishes the step; all stop after it (agreed_stop_signal)
  struct Uninstall {
    ~Uninstall() {
      uninstall_stop_handlers();
      set_stop_interrupts_waits(true);
    }
  } uninstall;
  const int64_t total = cfg_.train.steps;
  if (start_step_ >= total) {
    spdlog::info("the run is already at step {} of {}", start_step_, total);
    return 0;
  }
  if (eval_data_ && cfg_.eval.at_start && start_step_ == 0) {
    ordered_json m;
    m["step"] = 0;
    const ordered_json e = evaluate(0);
    for (auto it = e.begin(); it != e.end(); ++it) m[it.key()] = it.value();
    if (metrics_) metrics_->write(m);
  }
  started_ = Clock::now();
  for (int64_t s = start_step_ + 1; s <= total; ++s) {
    const DataCursor before = loader_->cursor();
    const bool eval_after = eval_data_ && ((cfg_.eval.every > 0 && s % cfg_.eval.every == 0) || s == total);
    progress_ = StepProgress::Clean;
    try {
      step(s, eval_after);
    } catch (const std::exception& e) {
      return fail_step(s, before, e);
    }
    ++steps_done_;
    const bool periodic = cfg_.run.save_every > 0 && s % cfg_.run.save_every == 0;
    const int stop_sig = dp() ? dp_.agreed_stop_signal() : 0;  // a signal on any rank stops every rank
    const bool stop = stop_requested() || stop_sig != 0 || (args_.stop_after > 0 && steps_done_ >= args_.stop_after);
    if (periodic || s == total || stop) {
      save(s);
      if (dp()) dp_.comm->barrier(*ctx_);  // no rank ends before rank 0's checkpoint is complete
    }
    if (stop) {
      const int sig = dp() ? stop_sig : stop_signal();
      spdlog::info("stopping after step {} ({}); continue with: rlcu train --resume {}", s,
                   sig ? "signal" : "--stop-after", run_dir_);
      return sig ? 128 + sig : 0;
    }
  }
  spdlog::info("memory: peak {} bytes ({:.3f} GiB) of buffers on {}, memory plan {} bytes ({:.3f} GiB)",
               buffer_bytes_peak(dev_), static_cast<double>(buffer_bytes_peak(dev_)) / (1 << 30), device_name(dev_),
               plan_.total(), static_cast<double>(plan_.total()) / (1 << 30));
  summary(since(started_));
  return 0;
}

// The end of a run: steps, wall time, the reward's first and last tenth (from metrics.jsonl, so a resumed run
// counts all its steps), the last evaluation and the final checkpoint.
void Trainer::summary(double wall_seconds) const {
  std::vector<double> rewards;
  std::optional<double> accuracy;
  int64_t eval_step = 0;
  std::ifstream in(fs::path(run_dir_) / "metrics.jsonl");
  for (std::string line; std::getline(in, line);) {
    const nlohmann::json m = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (!m.is_object()) continue;
    if (m.contains("reward") && m["reward"].is_number()) rewards.push_back(m["reward"].get<double>());
    if (m.contains("eval/accuracy") && m["eval/accuracy"].is_number()) {
      accuracy = m["eval/accuracy"].get<double>();
      eval_step = m.value("step", int64_t{0});
    }
  }
  std::string text = fmt::format("done: {} steps ({} in this invocation, {})", cfg_.train.steps, steps_done_,
                                 format_duration(wall_seconds));
  if (!rewards.empty()) {
    const size_t tenth = std::max<size_t>(1, rewards.size() / 10);
    double first = 0, last = 0;
    for (size_t i = 0; i < tenth; ++i) {
      first += rewards[i];
      last += rewards[rewards.size() - tenth + i];
    }
    text += fmt::format(" | reward {:.4f} -> {:.4f} (mean of the first and last {} steps)",
                        first / static_cast<double>(tenth), last / static_cast<double>(tenth), tenth);
  }
  if (accuracy) text += fmt::format(" | eval accuracy {:.4f} at step {}", *accuracy, eval_step);
  text += fmt::format(" | final checkpoint {}",
                      (fs::path(run_dir_) / "checkpoints" / checkpoint_dir_name(cfg_.train.steps)).string());
  spdlog::info("{}", text);
}

}  // namespace

int run_train(const TrainArgs& args) {
  Trainer t(args);
  return t.run();
}

}  // namespace rlcu
