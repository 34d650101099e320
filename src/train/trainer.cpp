// The RL trainer behind `rlcu train`. One step:
//   1. prompts   train.prompts_per_step prompts from the data loader (resumable cursor);
//   2. rollout   the engine samples rollout.group_size completions per prompt from the policy's own bf16 weights,
//                with the sampler seed derived from (run.seed, step), and returns each token's log-prob: these are
//                the "old" log-probs of the clipped-ratio loss;
//   3. reward    the reward set scores every completion (weighted components, each logged);
//   4. reference when algorithm.kl_coef > 0, a frozen copy of the initial policy scores the completion tokens;
//   5. advantage GRPO (group-normalised; scale_rewards group | batch | none = Dr.GRPO), RLOO, REINFORCE++ (token
//                KL in the return, batch whitening) or PPO (GAE over a critic's values, whitened); DAPO dynamic
//                sampling drops groups whose rewards are all equal; mask_truncated zeroes completions cut at
//                max_new_tokens;
//   6. update    algorithm.num_iterations passes over the batch; each packs prompt + completion sequences into
//                micro-batches of train.micro_batch_tokens, runs the policy forward (log-prob head with entropy), the
//                fused policy-loss kernel (clip-low/high, dual clip, KL k1/k2/k3, entropy bonus, loss aggregation as
//                per-token weights over the whole batch) and the backward; gradients accumulate over the micro-batches
//                and one AdamW step (global-norm clipping, LR schedule) ends the pass. PPO also updates the critic
//                (clipped value loss, its own AdamW).
//   7. outputs   metrics.jsonl (TRL's names where they exist), samples.jsonl, the console line, checkpoints every
//                run.save_every steps and at the end; SIGINT/SIGTERM save a checkpoint and stop.
// Determinism: the sampler is keyed by (seed, step, sequence, position), every reduction has a fixed order and the
// data cursor and optimizer state are checkpointed, so a resumed run reproduces the uninterrupted one bit for bit on
// the same device.
#include "rlcu/trainer.h"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <optional>

#include "model/device_copy.h"
#include "rlcu/checkpoint.h"
#include "rlcu/config.h"
#include "rlcu/data.h"
#include "rlcu/engine.h"
#include "rlcu/error.h"
#include "rlcu/metrics.h"
#include "rlcu/model.h"
#include "rlcu/ops.h"
#include "rlcu/optimizer.h"
#include "rlcu/reward.h"
#include "rlcu/rl_ops.h"
#include "rlcu/signals.h"
#include "rlcu/tokenizer.h"
#include "train/critic.h"
#include "train/micro.h"

namespace rlcu {

namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using nlohmann::json;
using nlohmann::ordered_json;

double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}
// The sampler seed of step `step` (1-based): a completion depends only on (run.seed, step, sequence, position).
uint64_t rollout_seed(uint64_t seed, int64_t step) { return splitmix64(seed ^ splitmix64(static_cast<uint64_t>(step))); }

// A device (or host) F32 vector of n values.
void put(const Tensor& dst, const std::vector<float>& v, Context& ctx) {
  RLCU_CHECK(dst.numel() == static_cast<int64_t>(v.size()), "put: {} values into {}", v.size(), dst.shape_str());
  model_detail::upload(dst, v.data(), ctx);
}
std::vector<float> get(const Tensor& t, Context& ctx) {
  ctx.synchronize("trainer: read back");
  return to_host_f32(t);
}

double kl_estimate(double logp, double ref, rl::KlEstimator k) {
  const double x = ref - logp;
  switch (k) {
    case rl::KlEstimator::K1: return -x;
    case rl::KlEstimator::K2: return 0.5 * x * x;
    case rl::KlEstimator::K3: return std::exp(x) - x - 1.0;
  }
  return 0.0;
}

double mean_of(const std::vector<float>& v) {
  if (v.empty()) return 0.0;
  double s = 0;
  for (float x : v) s += x;
  return s / static_cast<double>(v.size());
}
double std_of(const std::vector<float>& v) {
  if (v.size() < 2) return 0.0;
  const double m = mean_of(v);
  double s = 0;
  for (float x : v) s += (x - m) * (x - m);
  return std::sqrt(s / static_cast<double>(v.size() - 1));
}

class Trainer {
 public:
  Trainer(const TrainArgs& args);
  int run();

 private:
  void setup_outputs();
  void save(int64_t step);
  void step(int64_t step);
  std::vector<Micro> pack(const std::vector<std::vector<int32_t>>& prompts,
                          const std::vector<engine::Completion>& comps) const;

  TrainArgs args_;
  RunConfig cfg_;
  std::string run_dir_;
  std::unique_ptr<Context> cuda_ctx_;
  Context* ctx_ = nullptr;
  Device dev_ = Device::CPU;
  std::optional<Tokenizer> tok_;
  std::optional<PromptFormat> format_;
  std::optional<PromptDataset> data_;
  std::optional<PromptLoader> loader_;
  std::unique_ptr<Model> policy_, ref_;
  std::unique_ptr<Transformer> tf_, ref_tf_;
  std::unique_ptr<AdamW> opt_;
  std::unique_ptr<Critic> critic_;
  std::unique_ptr<RewardSet> rewards_;
  std::unique_ptr<engine::Engine> engine_;
  std::unique_ptr<MetricsWriter> metrics_;
  std::unique_ptr<SamplesWriter> samples_;
  std::vector<std::string> token_bytes_;
  std::vector<int32_t> eos_ids_;
  std::vector<std::string> stop_strings_;
  OwnedTensor logp_, entropy_, dlogp_, dentropy_, old_, ref_lp_, adv_, w_, stats_;
  rl::KlEstimator kl_est_ = rl::KlEstimator::K3;
  rl::AdvantageNorm adv_norm_ = rl::AdvantageNorm::Group;
  rl::LossAgg loss_agg_ = rl::LossAgg::TokenMean;
  int64_t start_step_ = 0;
  int64_t steps_done_ = 0;
};

Trainer::Trainer(const TrainArgs& args) : args_(args) {
  // ---- config --------------------------------------------------------------------------------------------------
  std::string config_path;
  cfg_ = load_run_config("train", args.config, args.overrides, args.resume, args.device, &config_path);
  run_dir_ = cfg_.run.output_dir;
  const AlgorithmSection& al = cfg_.algorithm;
  kl_est_ = rl::parse_kl_estimator(al.kl_estimator, "algorithm.kl_estimator");
  adv_norm_ = rl::parse_advantage_norm(al.scale_rewards, "algorithm.scale_rewards");
  loss_agg_ = rl::parse_loss_agg(al.loss_agg, "algorithm.loss_agg");
  if (cfg_.model.path.empty()) throw Error(fmt::format("{}: model.path is not set", config_path));
  if (cfg_.data.path.empty()) throw Error(fmt::format("{}: data.path is not set", config_path));
  stop_strings_ = parse_stop_strings(cfg_.rollout.stop);

  int dev_index = 0;
  dev_ = parse_device(cfg_.run.device, "run.device", &dev_index);
  if (dev_ == Device::CUDA) {
    if (cuda_device_count() == 0) throw Error("run.device is cuda but no CUDA device is available (use --device cpu)");
    cuda_ctx_ = Context::cuda(dev_index);
  }
  ctx_ = cuda_ctx_ ? cuda_ctx_.get() : &Context::cpu();
  Context& ctx = *ctx_;

  // ---- tokenizer and data --------------------------------------------------------------------------------------
  const std::string tok_dir = cfg_.model.tokenizer.empty() ? cfg_.model.path : cfg_.model.tokenizer;
  tok_ = Tokenizer::load(tok_dir);
  format_ = make_prompt_format(*tok_, cfg_.model.chat_template, cfg_.model.chat_template_file,
                               cfg_.model.enable_thinking);
  data_ = PromptDataset::load(cfg_.data, *format_);
  loader_.emplace(*data_, cfg_.run.seed, cfg_.data.shuffle);
  int64_t longest_prompt = 0;
  for (int64_t i = 0; i < data_->size(); ++i)
    longest_prompt = std::max<int64_t>(longest_prompt, static_cast<int64_t>((*data_)[i].ids.size()));
  const int64_t longest_seq = longest_prompt + cfg_.rollout.max_new_tokens;
  if (longest_seq > cfg_.train.micro_batch_tokens)
    throw Error(fmt::format("train.micro_batch_tokens = {} cannot hold the longest prompt ({} tokens) plus "
                            "rollout.max_new_tokens = {}; raise it to at least {}",
                            cfg_.train.micro_batch_tokens, longest_prompt, cfg_.rollout.max_new_tokens, longest_seq));

  // ---- models: policy (+ optimizer), reference, critic -------------------------------------------------------------
  ModelOptions mo;
  mo.training = true;
  policy_ = Model::load(cfg_.model.path, mo, ctx);
  const ModelConfig& mc = policy_->config();
  if (tok_->vocab_size() > mc.vocab_size)
    spdlog::warn("the tokenizer has {} tokens, more than the model's vocabulary of {}", tok_->vocab_size(),
                 mc.vocab_size);
  if (mc.max_position_embeddings > 0 && longest_seq > mc.max_position_embeddings)
    throw Error(fmt::format("the longest prompt ({} tokens) plus rollout.max_new_tokens ({}) exceeds the model's "
                            "max_position_embeddings {}",
                            longest_prompt, cfg_.rollout.max_new_tokens, mc.max_position_embeddings));
  TransformerOptions to;
  to.max_tokens = cfg_.train.micro_batch_tokens;
  to.act_dtype = default_act_dtype(dev_);
  to.training = true;
  to.checkpointing = cfg_.train.checkpointing;
  to.fp32_residual = cfg_.train.fp32_residual;
  to.save_head_probs = cfg_.train.save_head_probs;
  to.inv_temperature = static_cast<float>(1.0 / cfg_.rollout.temperature);
  tf_ = std::make_unique<Transformer>(*policy_, to, ctx);
  opt_ = std::make_unique<AdamW>(cfg_.optimizer, policy_->flat_master(), policy_->flat_grads(),
                                 dev_ == Device::CUDA ? policy_->flat_weights() : Tensor(), ctx);
  const bool need_ref = al.kl_coef > 0;
  if (need_ref) {
    ref_ = Model::load(cfg_.model.path, ModelOptions{}, ctx);
    TransformerOptions ro = to;
    ro.training = false;
    ro.checkpointing = false;
    ref_tf_ = std::make_unique<Transformer>(*ref_, ro, ctx);
  }
  if (al.name == "ppo") {
    CriticOptions co;
    co.init = al.critic_init == "policy" ? cfg_.model.path : al.critic_init;
    co.max_tokens = cfg_.train.micro_batch_tokens;
    co.checkpointing = cfg_.train.checkpointing;
    co.optimizer = cfg_.optimizer;
    co.optimizer.lr = al.critic_lr;
    co.value_clip = al.value_clip;
    critic_ = std::make_unique<Critic>(co, ctx);
  }
  const int64_t Tm = cfg_.train.micro_batch_tokens;
  for (OwnedTensor* t : {&logp_, &entropy_, &dlogp_, &dentropy_, &old_, &ref_lp_, &adv_, &w_})
    *t = OwnedTensor::make(DType::F32, dev_, {Tm});
  stats_ = OwnedTensor::make(DType::F32, dev_, {rl::kPolicyStats});

  // ---- rewards and the rollout engine (which takes its share of the memory that is left) -----------------------
  rewards_ = std::make_unique<RewardSet>(cfg_.reward, &*tok_, ctx);
  token_bytes_ = engine::token_bytes_table(*tok_, mc.vocab_size);
  eos_ids_ = engine::stop_token_ids(mc, &*tok_);
  engine::EngineOptions eo;
  eo.block_size = cfg_.rollout.block_size;
  eo.kv_fraction = cfg_.rollout.kv_fraction;
  eo.max_batch = std::max(cfg_.rollout.max_batch, cfg_.rollout.group_size);
  eo.prefill_tokens = std::max(cfg_.rollout.prefill_tokens, longest_prompt);
  eo.max_model_len = longest_seq;
  eo.cuda_graphs = cfg_.rollout.cuda_graphs;
  eo.fp32_residual = cfg_.train.fp32_residual;
  try {
    engine_ = std::make_unique<engine::Engine>(*policy_, eo, ctx);
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
               cfg_.model.path, policy_->num_parameters(), device_name(dev_), al.name, cfg_.train.prompts_per_step,
               cfg_.rollout.group_size, static_cast<double>(engine_->kv_bytes()) / (1 << 30));

  // ---- resume --------------------------------------------------------------------------------------------------
  if (!args.resume.empty()) {
    const CheckpointRead ck = load_checkpoint(run_dir_);
    restore_training_state(ck, *policy_, opt_.get(), ctx);
    if (critic_) critic_->restore(ck, ctx);
    if (!ck.data_cursor.is_null()) loader_->restore(DataCursor::from_json(ck.data_cursor));
    start_step_ = ck.step;
    spdlog::info("resumed {} at step {}", ck.dir, ck.step);
  }
}

void Trainer::setup_outputs() {
  fs::create_directories(run_dir_);
  write_run_config(run_dir_, config_to_json(cfg_));
  const int64_t resume_step = args_.resume.empty() ? -1 : start_step_;
  metrics_ = std::make_unique<MetricsWriter>(run_dir_, resume_step);
  samples_ = std::make_unique<SamplesWriter>(run_dir_, resume_step);
}

void Trainer::save(int64_t step) {
  CheckpointWrite w;
  w.run_dir = run_dir_;
  w.step = step;
  w.model = policy_.get();
  w.optimizer = opt_.get();
  w.tokenizer_dir = cfg_.model.tokenizer;
  w.seed = cfg_.run.seed;
  w.data_cursor = loader_->cursor().to_json();
  w.config = config_to_json(cfg_);
  w.keep = cfg_.run.keep_checkpoints;
  if (critic_) critic_->append_state(w.extra_tensors, w.extra_metadata);
  const std::string dir = save_checkpoint(w);
  spdlog::info("saved checkpoint {}", dir);
}

std::vector<Micro> Trainer::pack(const std::vector<std::vector<int32_t>>& prompts,
                                 const std::vector<engine::Completion>& comps) const {
  std::vector<Micro> out;
  const int64_t budget = cfg_.train.micro_batch_tokens;
  for (size_t i = 0; i < comps.size(); ++i) {
    const engine::Completion& c = comps[i];
    const std::vector<int32_t>& p = prompts[static_cast<size_t>(c.request)];
    std::vector<int32_t> seq(p);
    seq.insert(seq.end(), c.ids.begin(), c.ids.end());
    const int64_t n = static_cast<int64_t>(seq.size());
    if (out.empty() || out.back().batch.num_tokens() + n > budget) out.emplace_back();
    Micro& m = out.back();
    std::vector<int32_t> targets(seq.size(), -1);
    const size_t P = p.size();
    for (size_t k = 0; k < c.ids.size(); ++k) targets[P + k - 1] = c.ids[k];
    m.batch.add_sequence(seq, targets);
    for (size_t r = 0; r < seq.size(); ++r) {
      const bool is_target = r + 1 >= P && r + 1 < seq.size();
      m.seq_of_row.push_back(is_target ? static_cast<int32_t>(i) : -1);
      m.tok_of_row.push_back(is_target ? static_cast<int32_t>(r + 1 - P) : -1);
    }
    m.seqs.push_back(static_cast<int32_t>(i));
  }
  return out;
}

void Trainer::step(int64_t step) {
  Context& ctx = *ctx_;
  const AlgorithmSection& al = cfg_.algorithm;
  const int64_t G = cfg_.rollout.group_size;
  const auto t_step = Clock::now();
  ordered_json m;
  m["step"] = step;

  // ---- 1-2. prompts and rollout ----------------------------------------------------------------------------------
  auto t0 = Clock::now();
  const std::vector<const PromptSample*> batch = loader_->next_batch(cfg_.train.prompts_per_step);
  std::vector<engine::Request> reqs;
  std::vector<std::vector<int32_t>> prompt_ids;
  for (const PromptSample* s : batch) {
    reqs.push_back({s->ids, static_cast<int>(G)});
    prompt_ids.push_back(s->ids);
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
  const bool tty = isatty(fileno(stderr)) != 0;
  engine::ProgressFn progress;
  if (tty)
    progress = [](int64_t done, int64_t total) {
      const int width = 30, filled = static_cast<int>(width * done / std::max<int64_t>(total, 1));
      std::fprintf(stderr, "\r  rollout [%s%s] %lld/%lld", std::string(static_cast<size_t>(filled), '#').c_str(),
                   std::string(static_cast<size_t>(width - filled), '.').c_str(), static_cast<long long>(done),
                   static_cast<long long>(total));
      if (done == total) std::fprintf(stderr, "\r%60s\r", "");
    };
  const std::vector<engine::Completion> comps = engine_->generate(reqs, so, progress);
  const double t_rollout = since(t0);
  const int64_t N = static_cast<int64_t>(comps.size());

  // ---- 3. rewards ------------------------------------------------------------------------------------------------
  t0 = Clock::now();
  RewardBatch rb;
  std::vector<std::string> texts(static_cast<size_t>(N));
  for (int64_t i = 0; i < N; ++i) {
    const engine::Completion& c = comps[static_cast<size_t>(i)];
    const PromptSample& ps = *batch[static_cast<size_t>(c.request)];
    texts[static_cast<size_t>(i)] = tok_->decode(c.ids);
    rb.items.push_back({ps.text, ps.ids, c.ids, ps.answer, texts[static_cast<size_t>(i)]});
  }
  RewardResult rr = rewards_->score(rb);
  std::vector<float> rewards = rr.total;
  const double t_reward = since(t0);

  // ---- completion layout: cu over completion tokens, rollout (old) log-probs ------------------------------------------
  std::vector<int32_t> comp_cu{0};
  std::vector<float> old_c;
  std::vector<int32_t> lengths;
  std::vector<uint8_t> stopped;
  for (const auto& c : comps) {
    old_c.insert(old_c.end(), c.logprobs.begin(), c.logprobs.end());
    comp_cu.push_back(comp_cu.back() + static_cast<int32_t>(c.ids.size()));
    lengths.push_back(static_cast<int32_t>(c.ids.size()));
    stopped.push_back(c.finish != engine::FinishReason::Length ? 1 : 0);
  }
  const int64_t Tc = comp_cu.back();
  std::vector<Micro> micros = pack(prompt_ids, comps);

  // ---- 4. reference log-probs (and the critic's values) ----------------------------------------------------------------
  t0 = Clock::now();
  std::vector<float> ref_c;
  if (ref_tf_) {
    ref_c.assign(static_cast<size_t>(Tc), 0.0f);
    for (const Micro& mb : micros) {
      const int64_t T = mb.batch.num_tokens();
      const DeviceBatch db = ref_tf_->upload(mb.batch, ctx);
      ref_tf_->forward(logp_.t.slice_rows(0, T), Tensor(), db, ctx);
      const std::vector<float> lp = get(logp_.t.slice_rows(0, T), ctx);
      for (int64_t r = 0; r < T; ++r)
        if (mb.seq_of_row[static_cast<size_t>(r)] >= 0)
          ref_c[static_cast<size_t>(comp_cu[static_cast<size_t>(mb.seq_of_row[static_cast<size_t>(r)])] +
                                    mb.tok_of_row[static_cast<size_t>(r)])] = lp[static_cast<size_t>(r)];
    }
  }
  std::vector<float> values_c;
  if (critic_) values_c = critic_->values(micros, comp_cu, ctx);
  const double t_ref = since(t0);

  // KL of the rollout policy to the reference (for the metric, and for the reward when kl_in_reward).
  double kl_rollout = 0;
  std::vector<double> seq_kl(static_cast<size_t>(N), 0.0);
  if (ref_tf_) {
    for (int64_t i = 0; i < N; ++i)
      for (int32_t t = comp_cu[static_cast<size_t>(i)]; t < comp_cu[static_cast<size_t>(i) + 1]; ++t)
        seq_kl[static_cast<size_t>(i)] += kl_estimate(old_c[static_cast<size_t>(t)], ref_c[static_cast<size_t>(t)], kl_est_);
    for (double v : seq_kl) kl_rollout += v;
    kl_rollout /= std::max<int64_t>(Tc, 1);
  }

  // ---- 5. advantages -----------------------------------------------------------------------------------------------
  t0 = Clock::now();
  const bool token_level = al.name == "reinforce_pp" || al.name == "ppo";
  const bool kl_in_reward = al.kl_in_reward || al.name == "reinforce_pp" || al.name == "ppo";
  std::vector<float> seq_reward = rewards;
  if (ref_tf_ && kl_in_reward && !token_level)
    for (int64_t i = 0; i < N; ++i)
      seq_reward[static_cast<size_t>(i)] -= static_cast<float>(al.kl_coef * seq_kl[static_cast<size_t>(i)]);
  std::vector<float> adv_c(static_cast<size_t>(Tc), 0.0f);
  {
    const OwnedTensor r_d = OwnedTensor::make(DType::F32, dev_, {N});
    put(r_d.t, seq_reward, ctx);
    if (!token_level) {
      const OwnedTensor a_d = OwnedTensor::make(DType::F32, dev_, {N});
      if (al.name == "rloo")
        rl::rloo_advantages(a_d.t, r_d.t, static_cast<int>(G), ctx);
      else
        rl::group_advantages(a_d.t, r_d.t, rl::GroupAdvantageParams{static_cast<int>(G), adv_norm_, 1e-6f}, ctx);
      const std::vector<float> a = get(a_d.t, ctx);
      for (int64_t i = 0; i < N; ++i)
        for (int32_t t = comp_cu[static_cast<size_t>(i)]; t < comp_cu[static_cast<size_t>(i) + 1]; ++t)
          adv_c[static_cast<size_t>(t)] = a[static_cast<size_t>(i)];
    } else if (Tc > 0) {
      const OwnedTensor cu_d = OwnedTensor::make(DType::I32, dev_, {N + 1});
      model_detail::upload(cu_d.t, comp_cu.data(), ctx);
      const OwnedTensor a_d = OwnedTensor::make(DType::F32, dev_, {Tc});
      OwnedTensor old_d, ref_d;
      const float kc = ref_tf_ ? static_cast<float>(al.kl_coef) : 0.0f;
      if (kc > 0) {
        old_d = OwnedTensor::make(DType::F32, dev_, {Tc});
        ref_d = OwnedTensor::make(DType::F32, dev_, {Tc});
        put(old_d.t, old_c, ctx);
        put(ref_d.t, ref_c, ctx);
      }
      if (al.name == "reinforce_pp") {
        rl::ReturnsParams rp;
        rp.reward = {kc, kl_est_};
        rp.gamma = static_cast<float>(al.gamma);
        rp.whiten = true;
        rl::reinforce_pp_advantages(a_d.t, Tensor(), r_d.t, old_d.t, ref_d.t, cu_d.t, rp, ctx);
      } else {
        const OwnedTensor v_d = OwnedTensor::make(DType::F32, dev_, {Tc});
        const OwnedTensor ret_d = OwnedTensor::make(DType::F32, dev_, {Tc});
        put(v_d.t, values_c, ctx);
        rl::GaeParams gp;
        gp.reward = {kc, kl_est_};
        gp.gamma = static_cast<float>(al.gamma);
        gp.lambda = static_cast<float>(al.lam);
        gp.whiten = al.whiten_advantages;
        rl::gae_advantages(a_d.t, ret_d.t, v_d.t, r_d.t, old_d.t, ref_d.t, cu_d.t, gp, ctx);
        critic_->set_returns(get(ret_d.t, ctx));
      }
      adv_c = get(a_d.t, ctx);
    }
  }
  // Masks: DAPO dynamic sampling (groups with equal rewards) and truncated completions.
  std::vector<float> keep(static_cast<size_t>(N), 1.0f);
  int64_t zero_std_groups = 0;
  {
    const std::vector<uint8_t> degenerate = rl::degenerate_groups(rewards, static_cast<int>(G));
    for (int64_t g = 0; g < N / G; ++g)
      if (degenerate[static_cast<size_t>(g)]) {
        ++zero_std_groups;
        if (al.dynamic_sampling)
          for (int64_t j = 0; j < G; ++j) keep[static_cast<size_t>(g * G + j)] = 0.0f;
      }
    const rl::TruncationMask tm = rl::truncation_mask(lengths, stopped, cfg_.rollout.max_new_tokens, al.mask_truncated);
    for (int64_t i = 0; i < N; ++i) keep[static_cast<size_t>(i)] *= tm.keep[static_cast<size_t>(i)];
  }
  int64_t kept_seqs = 0, kept_tokens = 0;
  for (int64_t i = 0; i < N; ++i)
    if (keep[static_cast<size_t>(i)] != 0.0f) {
      ++kept_seqs;
      kept_tokens += lengths[static_cast<size_t>(i)];
    }
  std::vector<float> w_c(static_cast<size_t>(Tc), 0.0f);
  if (kept_tokens > 0) {
    rl::LossWeightParams lw;
    lw.mode = loss_agg_;
    lw.total_tokens = kept_tokens;
    lw.num_seqs = kept_seqs;
    lw.norm_len = cfg_.rollout.max_new_tokens;
    Context& cpu = Context::cpu();
    OwnedTensor w_h = OwnedTensor::make(DType::F32, Device::CPU, {std::max<int64_t>(Tc, 1)});
    const Tensor cu_h(comp_cu.data(), DType::I32, Device::CPU, {N + 1});
    const Tensor keep_h(keep.data(), DType::F32, Device::CPU, {N});
    rl::loss_weights(w_h.t.slice_rows(0, Tc), cu_h, keep_h, lw, cpu);
    w_c.assign(w_h.t.ptr<float>(), w_h.t.ptr<float>() + Tc);
  }
  const double t_adv = since(t0);

  // ---- 6. policy (and critic) updates --------------------------------------------------------------------------------
  t0 = Clock::now();
  rl::PolicyLossParams pl;
  pl.clip_low = static_cast<float>(al.clip_low);
  pl.clip_high = static_cast<float>(al.clip_high);
  pl.dual_clip = static_cast<float>(al.dual_clip);
  pl.kl_coef = ref_tf_ && !kl_in_reward ? static_cast<float>(al.kl_coef) : 0.0f;
  pl.kl = kl_est_;
  pl.ent_coef = static_cast<float>(al.entropy_coef);
  std::vector<double> st(rl::kPolicyStats, 0.0), first_st;
  OptimizerStepStats os;
  const double lr = lr_at(cfg_.optimizer, step - 1, cfg_.train.steps);
  const bool update = kept_tokens > 0;
  for (int64_t it = 0; update && it < al.num_iterations; ++it) {
    policy_->zero_grads(ctx);
    ops::fill(stats_.t, 0.0f, ctx);
    for (const Micro& mb : micros) {
      const int64_t T = mb.batch.num_tokens();
      std::vector<float> o(static_cast<size_t>(T), 0.0f), rf(static_cast<size_t>(T), 0.0f),
          a(static_cast<size_t>(T), 0.0f), w(static_cast<size_t>(T), 0.0f);
      for (int64_t r = 0; r < T; ++r) {
        const int32_t s = mb.seq_of_row[static_cast<size_t>(r)];
        if (s < 0) continue;
        const size_t t = static_cast<size_t>(comp_cu[static_cast<size_t>(s)] + mb.tok_of_row[static_cast<size_t>(r)]);
        o[static_cast<size_t>(r)] = old_c[t];
        if (!ref_c.empty()) rf[static_cast<size_t>(r)] = ref_c[t];
        a[static_cast<size_t>(r)] = adv_c[t];
        w[static_cast<size_t>(r)] = w_c[t];
      }
      const Tensor lp = logp_.t.slice_rows(0, T), en = entropy_.t.slice_rows(0, T);
      const Tensor dl = dlogp_.t.slice_rows(0, T), de = dentropy_.t.slice_rows(0, T);
      const Tensor ot = old_.t.slice_rows(0, T), rt = ref_lp_.t.slice_rows(0, T);
      const Tensor at = adv_.t.slice_rows(0, T), wt = w_.t.slice_rows(0, T);
      put(ot, o, ctx);
      put(at, a, ctx);
      put(wt, w, ctx);
      if (pl.kl_coef > 0) put(rt, rf, ctx);
      const DeviceBatch db = tf_->upload(mb.batch, ctx);
      tf_->forward(lp, en, db, ctx);
      rl::policy_loss(dl, pl.ent_coef != 0 ? de : Tensor(), stats_.t, lp, ot, pl.kl_coef > 0 ? rt : Tensor(), at, wt,
                      en, pl, ctx);
      tf_->backward(dl, pl.ent_coef != 0 ? de : Tensor(), ctx);
    }
    os = opt_->step(lr, ctx);
    const std::vector<float> s = get(stats_.t, ctx);
    for (int k = 0; k < rl::kPolicyStats; ++k) st[static_cast<size_t>(k)] = s[static_cast<size_t>(k)];
    if (it == 0) first_st = st;
  }
  ordered_json critic_metrics;
  if (critic_ && update) critic_metrics = critic_->update(micros, comp_cu, w_c, al.num_iterations, step, cfg_.train.steps, ctx);
  const double t_train = since(t0);

  // ---- 7. metrics, samples, console --------------------------------------------------------------------------------
  const double step_s = since(t_step);
  m["reward"] = mean_of(rewards);
  m["reward_std"] = std_of(rewards);
  for (const auto& [name, vals] : rr.components) m["rewards/" + name + "/mean"] = mean_of(vals);
  m["frac_reward_zero_std"] = N / G > 0 ? static_cast<double>(zero_std_groups) / static_cast<double>(N / G) : 0.0;
  const double tokens = st[rl::kPsTokens];
  if (ref_tf_) m["kl"] = pl.kl_coef > 0 && tokens > 0 ? st[rl::kPsKlSum] / tokens : kl_rollout;
  if (tokens > 0) {
    m["entropy"] = st[rl::kPsEntropySum] / tokens;
    m["clip_ratio/low_mean"] = st[rl::kPsClipLow] / tokens;
    m["clip_ratio/high_mean"] = st[rl::kPsClipHigh] / tokens;
    m["clip_ratio/region_mean"] = (st[rl::kPsClipLow] + st[rl::kPsClipHigh]) / tokens;
    if (pl.dual_clip > 0) m["clip_ratio/dual_mean"] = st[rl::kPsDualClip] / tokens;
    m["loss"] = st[rl::kPsLoss];
  }
  if (!first_st.empty() && first_st[rl::kPsTokens] > 0)
    m["ratio/first_update_mean_abs_dev"] = first_st[rl::kPsAbsRatioDev] / first_st[rl::kPsTokens];
  double mean_len = 0, clipped = 0;
  for (size_t i = 0; i < comps.size(); ++i) {
    mean_len += static_cast<double>(lengths[i]);
    clipped += stopped[i] ? 0.0 : 1.0;
  }
  m["completions/mean_length"] = N ? mean_len / static_cast<double>(N) : 0.0;
  m["completions/clipped_ratio"] = N ? clipped / static_cast<double>(N) : 0.0;
  if (update) m["grad_norm"] = os.grad_norm;
  m["lr"] = lr;
  if (!update) m["skipped_update"] = true;
  for (auto it = critic_metrics.begin(); it != critic_metrics.end(); ++it) m[it.key()] = it.value();
  const engine::EngineStats& es = engine_->stats();
  m["time/rollout_s"] = t_rollout;
  m["time/reward_s"] = t_reward;
  m["time/reference_s"] = t_ref;
  m["time/advantage_s"] = t_adv;
  m["time/train_s"] = t_train;
  m["time/step_s"] = step_s;
  m["tokens_per_s/rollout"] = t_rollout > 0 ? static_cast<double>(es.generated_tokens) / t_rollout : 0.0;
  int64_t train_tokens = 0;
  for (const Micro& mb : micros) train_tokens += mb.batch.num_tokens();
  m["tokens_per_s/train"] =
      t_train > 0 ? static_cast<double>(train_tokens * std::max<int64_t>(al.num_iterations, 1)) / t_train : 0.0;
  m["tokens_per_s/step"] = step_s > 0 ? static_cast<double>(es.generated_tokens) / step_s : 0.0;
  m["rollout/preemptions"] = es.preemptions;
  if (dev_ == Device::CUDA) m["memory/peak_gib"] = static_cast<double>(device_bytes_peak()) / (1 << 30);
  m["epoch"] = loader_->epoch();
  metrics_->write(m);

  for (int64_t i = 0; i < std::min<int64_t>(cfg_.train.log_samples, N); ++i) {
    const engine::Completion& c = comps[static_cast<size_t>(i)];
    SampleRecord sr;
    sr.step = step;
    sr.prompt = batch[static_cast<size_t>(c.request)]->text;
    sr.completion = texts[static_cast<size_t>(i)];
    sr.reward = rewards[static_cast<size_t>(i)];
    sr.extra["answer"] = batch[static_cast<size_t>(c.request)]->answer;
    sr.extra["finish_reason"] = engine::finish_reason_name(c.finish);
    for (const auto& [name, vals] : rr.components) sr.extra["rewards/" + name] = vals[static_cast<size_t>(i)];
    samples_->write(sr);
  }
  StepSummary ss;
  ss.step = step;
  ss.total_steps = cfg_.train.steps;
  ss.reward = mean_of(rewards);
  if (m.contains("kl")) ss.kl = m["kl"].get<double>();
  if (m.contains("entropy")) ss.entropy = m["entropy"].get<double>();
  if (update) ss.grad_norm = os.grad_norm;
  ss.lr = lr;
  ss.tokens_per_s = m["tokens_per_s/step"].get<double>();
  ss.step_seconds = step_s;
  ss.phases = {{"rollout", t_rollout}, {"reward", t_reward}, {"reference", t_ref}, {"train", t_train}};
  spdlog::info("{}", format_step_line(ss));
}

int Trainer::run() {
  setup_outputs();
  install_stop_handlers();
  struct Uninstall {
    ~Uninstall() { uninstall_stop_handlers(); }
  } uninstall;
  const int64_t total = cfg_.train.steps;
  if (start_step_ >= total) {
    spdlog::info("the run is already at step {} of {}", start_step_, total);
    return 0;
  }
  int64_t last_saved = start_step_;
  for (int64_t s = start_step_ + 1; s <= total; ++s) {
    step(s);
    ++steps_done_;
    const bool periodic = cfg_.run.save_every > 0 && s % cfg_.run.save_every == 0;
    const bool stop = stop_requested() || (args_.stop_after > 0 && steps_done_ >= args_.stop_after);
    if (periodic || s == total || stop) {
      save(s);
      last_saved = s;
    }
    if (stop) {
      const int sig = stop_signal();
      spdlog::info("stopping after step {} ({}); continue with: rlcu train --resume {}", s,
                   sig ? "signal" : "--stop-after", run_dir_);
      return sig ? 128 + sig : 0;
    }
  }
  (void)last_saved;
  return 0;
}

}  // namespace

int run_train(const TrainArgs& args) {
  Trainer t(args);
  return t.run();
}

}  // namespace rlcu
