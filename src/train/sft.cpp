// Supervised fine-tuning behind `rlcu sft` (data preparation and the loss: include/rlcu/sft.h). One step:
//   1. the step's examples come from a schedule fixed at start-up from (run.seed, data) (sft_schedule), so a resumed
//      run serves exactly the examples the uninterrupted one would;
//   2. they are packed in order into micro-batches of at most train.micro_batch_tokens tokens; row r of a sequence
//      has target ids[r+1] when ids[r+1] is a completion token, else -1 (no log-prob, no gradient);
//   3. per micro-batch: Transformer::forward -> logprob [T]; dlogprob = -1/N on target rows (N = completion tokens
//      of the whole step), 0 elsewhere; Transformer::backward ACCUMULATES into the parameter gradients;
//   4. one AdamW step (global-norm clipping, optimizer.lr_schedule over the schedule's step count).
// Loss = -(1/N) sum of the target rows' log-probs (fp64 sum on the host). The held-out loss is the same token mean
// over every completion token of the eval set, from forward passes only, at step 0, every sft.eval_every steps and
// at the end. Outputs as `rlcu train`: metrics.jsonl (step, loss, learning_rate, grad_norm, tokens_per_s/train, epoch[, eval_loss]),
// TensorBoard events (run.tensorboard), config.json, checkpoints (save_checkpoint: the checkpoint directory is a
// loadable Hugging Face model directory); SIGINT/SIGTERM and --stop-after save a checkpoint and stop. The run
// directory is locked and its inputs recorded as for `rlcu train` (include/rlcu/run_dir.h). A step that fails (a
// non-finite gradient, a failed write) saves the last completed step before the error ends the run: the previous
// step when the failure came before the optimizer update, the failed step when only its report was lost.
// Determinism: fixed schedule, fixed-order reductions, restored master weights and Adam moments, so a resumed run
// ends with byte-identical weights on the same device.
// Data parallel (a launcher's environment with world size W > 1, data_parallel.h): rank r takes the examples
// [r*n/W, (r+1)*n/W) of each step's n (and of the eval set); N, the loss sums and the token counts are summed over
// the ranks, so dlogprob = -1/N is the whole step's, and AdamW sums the gradients before its (replicated) update.
// Rank 0 alone writes the run directory; a stop signal on any rank stops every rank after the same step.
#include "rlcu/sft.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>

#include "rlcu/checkpoint.h"
#include "rlcu/config.h"
#include "rlcu/error.h"
#include "rlcu/input_file.h"
#include "rlcu/json_error.h"
#include "rlcu/memory_plan.h"
#include "rlcu/metrics.h"
#include "rlcu/model.h"
#include "rlcu/optimizer.h"
#include "rlcu/parallel.h"
#include "rlcu/rng.h"
#include "rlcu/run_dir.h"
#include "rlcu/signals.h"
#include "rlcu/tokenizer.h"
#include "data_parallel.h"

namespace rlcu {

namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using nlohmann::json;
using nlohmann::ordered_json;
using ojson = nlohmann::ordered_json;

double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// Fisher-Yates with draws keyed by (key, i): the permutation depends only on key and n.
std::vector<int64_t> permutation(int64_t n, uint64_t key) {
  return keyed_permutation(n, [key](uint64_t i) { return mix_key(key, i); }, ShuffleIndex::Modulo);
}

constexpr uint64_t kHoldoutKey = 0x5f7e1d0a11c0ffeeull;
constexpr uint64_t kOrderKey = 0x0ddba11cafe5eedull;

bool starts_with(const std::string& s, const std::string& prefix) {
  return s.size() >= prefix.size() && s.compare(0, prefix.size(), prefix) == 0;
}

std::string read_text_file(const std::string& path) {
  require_not_directory(path, "a JSONL file of SFT records");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(fmt::format("{}: cannot open SFT data file", path));
  std::stringstream ss;
  ss << in.rdbuf();
  if (in.bad()) throw Error(fmt::format("{}: read error", path));
  return ss.str();
}

void append(SftExample& ex, const std::vector<int32_t>& ids, uint8_t loss) {
  ex.ids.insert(ex.ids.end(), ids.begin(), ids.end());
  ex.loss.insert(ex.loss.end(), ids.size(), loss);
}

}  // namespace

int64_t SftExample::completion_tokens() const {
  int64_t n = 0;
  for (uint8_t m : loss) n += m;
  return n;
}

namespace {

// Loss over the text of {% generation %} blocks, context elsewhere (one render of the whole conversation).
void append_generation_spans(SftExample& ex, const std::vector<ChatMessage>& msgs, const ChatRenderOptions& opts,
                             const PromptFormat& format) {
  const Tokenizer& tok = *format.tokenizer;
  EncodeOptions plain;
  plain.allow_special = true;
  ChatRenderOptions o = opts;
  o.add_generation_prompt = false;
  const ChatRender r = format.chat.render_spans(msgs, o);
  std::vector<std::pair<size_t, size_t>> spans = r.generation;
  std::sort(spans.begin(), spans.end());
  size_t pos = 0;
  for (const auto& [b, e] : spans) {
    if (e <= pos) continue;
    const size_t begin = std::max(b, pos);
    if (begin > pos) append(ex, tok.encode(r.text.substr(pos, begin - pos), plain), 0);
    append(ex, tok.encode(r.text.substr(begin, e - begin), plain), 1);
    pos = e;
  }
  if (pos < r.text.size()) append(ex, tok.encode(r.text.substr(pos), plain), 0);
  if (ex.completion_tokens() == 0)
    throw Error(fmt::format("chat template {} rendered no {{% generation %}} text for this conversation (no "
                            "assistant turn?)",
                            format.chat.source()));
}

// Loss over each assistant turn as the difference between the conversation rendered through that turn and
// rendered up to it with the generation prompt.
void append_turn_diffs(SftExample& ex, const std::vector<ChatMessage>& msgs, const ChatRenderOptions& opts,
                       const PromptFormat& format, const std::string& completion_field) {
  const Tokenizer& tok = *format.tokenizer;
  EncodeOptions plain;
  plain.allow_special = true;
  ChatRenderOptions with_prompt = opts, without = opts;
  with_prompt.add_generation_prompt = true;
  without.add_generation_prompt = false;
  std::string consumed;
  for (size_t a = 0; a < msgs.size(); ++a) {
    if (msgs[a].role != "assistant") continue;
    const std::vector<ChatMessage> before(msgs.begin(), msgs.begin() + static_cast<std::ptrdiff_t>(a));
    const std::vector<ChatMessage> through(msgs.begin(), msgs.begin() + static_cast<std::ptrdiff_t>(a + 1));
    const std::string context = format.chat.render(before, with_prompt);
    const std::string full = format.chat.render(through, without);
    if (!starts_with(context, consumed) || !starts_with(full, context))
      throw Error(fmt::format("chat template {} does not render this conversation as a growing prefix (turn {}); "
                              "use {{\"prompt\", \"{}\"}} records, a template with {{% generation %}} blocks, or "
                              "another template",
                              format.chat.source(), a, completion_field));
    EncodeOptions first = plain;
    first.add_special = consumed.empty() && format.chat.is_none();
    append(ex, tok.encode(context.substr(consumed.size()), first), 0);
    const std::vector<int32_t> turn = tok.encode(full.substr(context.size()), plain);
    if (turn.empty()) throw Error(fmt::format("assistant turn {} renders to no tokens", a));
    append(ex, turn, 1);
    consumed = full;
  }
}

}  // namespace

SftExample sft_example_from_record(const ojson& record, const DataConfig& data, const std::string& completion_field,
                                   const PromptFormat& format, int32_t eos_id) {
  if (!record.is_object()) throw Error("the record is not a JSON object");
  RLCU_CHECK(format.tokenizer != nullptr, "PromptFormat without a tokenizer");
  const Tokenizer& tok = *format.tokenizer;
  SftExample ex;
  EncodeOptions plain;
  plain.allow_special = true;
  const ojson tools = record_tools(record, data);
  const ojson* completion = nullptr;
  if (!completion_field.empty() && record.contains(completion_field)) completion = &record[completion_field];
  if (completion) {
    if (!completion->is_string())
      throw Error(fmt::format("\"{}\" must be a string (sft.completion_field)", completion_field));
    std::string text;
    std::vector<int32_t> prompt_ids;
    build_prompt(text, prompt_ids, record_messages(record, data), format, tools);
    append(ex, prompt_ids, 0);
    append(ex, tok.encode(completion->get<std::string>(), plain), 1);
    if (eos_id >= 0) append(ex, {eos_id}, 1);
  } else {
    const ojson* m = data.messages_field.empty() || !record.contains(data.messages_field)
                         ? nullptr
                         : &record[data.messages_field];
    if (!m || !m->is_array())
      throw Error(fmt::format("no \"{}\" field (sft.completion_field) and no \"{}\" list of messages with an "
                              "assistant turn",
                              completion_field, data.messages_field));
    const std::vector<ChatMessage> msgs = record_messages(record, data);
    if (std::none_of(msgs.begin(), msgs.end(), [](const ChatMessage& x) { return x.role == "assistant"; }))
      throw Error(fmt::format("no \"{}\" field (sft.completion_field) and no assistant turn in \"{}\"",
                              completion_field, data.messages_field));
    ChatRenderOptions opts = format.render;
    opts.tools = tools;
    if (format.chat.has_generation())
      append_generation_spans(ex, msgs, opts, format);
    else
      append_turn_diffs(ex, msgs, opts, format, completion_field);
  }
  if (ex.completion_tokens() == 0) throw Error("the record has no completion token");
  if (!ex.loss.empty() && ex.loss[0]) throw Error("the record has no prompt token to predict the completion from");
  return ex;
}

std::vector<SftExample> load_sft_examples(const std::string& path, const DataConfig& data,
                                          const std::string& completion_field, const PromptFormat& format,
                                          int32_t eos_id, int64_t max_tokens, SftDataStats* stats) {
  if (path.empty()) throw Error("sft.path: no SFT data file given");
  const std::string text = read_text_file(path);
  std::vector<SftExample> out;
  SftDataStats st;
  size_t pos = 0;
  int64_t line = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    ++line;
    const std::string l = text.substr(pos, end - pos);
    pos = end + 1;
    if (l.find_first_not_of(" \t\r") == std::string::npos) continue;
    ++st.records;
    SftExample ex;
    try {
      ojson rec;
      try {
        rec = ojson::parse(l);
      } catch (const ojson::exception& e) {
        throw Error(fmt::format("not valid JSON: {}", json_error_text(e)));
      }
      ex = sft_example_from_record(rec, data, completion_field, format, eos_id);
    } catch (const InternalError&) {
      throw;
    } catch (const Error& e) {
      throw Error(fmt::format("{}:{}: {}", path, line, e.what()));
    }
    ex.line = line;
    if (max_tokens > 0 && static_cast<int64_t>(ex.ids.size()) > max_tokens) {
      ++st.too_long;
      continue;
    }
    out.push_back(std::move(ex));
  }
  st.kept = static_cast<int64_t>(out.size());
  if (stats) *stats = st;
  if (out.empty())
    throw Error(fmt::format("{}: no usable SFT records ({} read, {} longer than {} tokens)", path, st.records,
                            st.too_long, max_tokens));
  return out;
}

std::vector<int64_t> sft_holdout_indices(int64_t n, double fraction, uint64_t seed) {
  if (n < 2 || fraction <= 0) return {};
  int64_t k = static_cast<int64_t>(std::llround(fraction * static_cast<double>(n)));
  k = std::clamp<int64_t>(k, 1, n - 1);
  std::vector<int64_t> p = permutation(n, splitmix64(seed ^ kHoldoutKey));
  p.resize(static_cast<size_t>(k));
  std::sort(p.begin(), p.end());
  return p;
}

std::vector<int64_t> sft_epoch_order(int64_t n, uint64_t seed, int64_t epoch, bool shuffle) {
  if (shuffle) return permutation(n, splitmix64(seed ^ kOrderKey) ^ splitmix64(static_cast<uint64_t>(epoch) + 1));
  std::vector<int64_t> p(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) p[static_cast<size_t>(i)] = i;
  return p;
}

std::vector<SftStep> sft_schedule(const std::vector<int64_t>& lengths, uint64_t seed, bool shuffle, int64_t epochs,
                                  int64_t steps, int64_t batch_tokens) {
  RLCU_CHECK(!lengths.empty() && batch_tokens > 0 && (steps > 0 || epochs > 0), "sft_schedule: bad arguments");
  const int64_t n = static_cast<int64_t>(lengths.size());
  std::vector<SftStep> out;
  for (int64_t e = 0; steps > 0 ? static_cast<int64_t>(out.size()) < steps : e < epochs; ++e) {
    const std::vector<int64_t> order = sft_epoch_order(n, seed, e, shuffle);
    int64_t i = 0;
    while (i < n && (steps == 0 || static_cast<int64_t>(out.size()) < steps)) {
      SftStep s;
      s.epoch = e;
      int64_t tokens = 0;
      while (i < n && (s.examples.empty() || tokens + lengths[static_cast<size_t>(order[static_cast<size_t>(i)])] <=
                                                 batch_tokens)) {
        tokens += lengths[static_cast<size_t>(order[static_cast<size_t>(i)])];
        s.examples.push_back(order[static_cast<size_t>(i)]);
        ++i;
      }
      s.position = i;
      out.push_back(std::move(s));
    }
  }
  return out;
}

namespace {

struct SftMicro {
  PackedBatch batch;
  std::vector<uint8_t> target_row;  // 1 where the row predicts a completion token
  int64_t targets = 0;
};

// Packs examples (in order) into micro-batches of at most `budget` tokens.
std::vector<SftMicro> pack(const std::vector<SftExample>& data, const std::vector<int64_t>& which, int64_t budget) {
  std::vector<SftMicro> out;
  for (int64_t idx : which) {
    const SftExample& ex = data[static_cast<size_t>(idx)];
    const int64_t n = static_cast<int64_t>(ex.ids.size());
    if (out.empty() || out.back().batch.num_tokens() + n > budget) out.emplace_back();
    SftMicro& m = out.back();
    std::vector<int32_t> targets(ex.ids.size(), -1);
    for (size_t r = 0; r + 1 < ex.ids.size(); ++r)
      if (ex.loss[r + 1]) targets[r] = ex.ids[r + 1];
    m.batch.add_sequence(ex.ids, targets);
    for (int32_t t : targets) {
      m.target_row.push_back(t >= 0 ? 1 : 0);
      m.targets += t >= 0 ? 1 : 0;
    }
  }
  return out;
}

class SftTrainer {
 public:
  explicit SftTrainer(const SftArgs& args);
  int run();

 private:
  void open_run(const SftArgs& args, bool distributed, int dev_index);
  void save(int64_t step);
  int fail_step(int64_t step, const std::exception& e);
  double eval_loss();
  void step(int64_t s);

  SftArgs args_;
  RunConfig cfg_;
  std::string run_dir_;
  RunDirectory rundir_;
  std::vector<RunInput> inputs_;
  std::unique_ptr<Context> cuda_ctx_;
  Context* ctx_ = nullptr;
  Device dev_ = Device::CPU;
  std::optional<Tokenizer> tok_;
  std::optional<PromptFormat> format_;
  std::vector<SftExample> train_, eval_;
  std::vector<SftStep> schedule_;
  std::unique_ptr<Model> model_;
  std::unique_ptr<Transformer> tf_;
  std::unique_ptr<AdamW> opt_;
  std::unique_ptr<MetricsWriter> metrics_;
  OwnedTensor logp_, dlogp_;
  int64_t start_step_ = 0;
  int64_t last_saved_ = 0;  // the step of the newest checkpoint this run has (0 = none)
  bool updated_ = false;    // the current step's optimizer update is applied
  MemoryPlan plan_;
  bool dry_run_done_ = false;
  DataParallel dp_;
  // This rank's share of `which` (all of it for a job of one).
  std::vector<int64_t> my_share(const std::vector<int64_t>& which) const;
};

std::vector<int64_t> SftTrainer::my_share(const std::vector<int64_t>& which) const {
  if (!dp_.on()) return which;
  int64_t first = 0, end = 0;
  dp_.share(static_cast<int64_t>(which.size()), dp_.rank(), &first, &end);
  return std::vector<int64_t>(which.begin() + first, which.begin() + end);
}

// The communicator (data parallel), the locked run directory (rank 0) and the device context.
void SftTrainer::open_run(const SftArgs& args, bool distributed, int dev_index) {
  const SftSection& sc = cfg_.sft;
  if (distributed) {  // the communicator first: rank 0 tells the others whether the run resumes
    if (dev_ == Device::CUDA) {
      if (cuda_device_count() == 0) throw Error("run.device is cuda but no CUDA device is available (use --device cpu)");
      cuda_ctx_ = Context::cuda(dev_index);
    }
    ctx_ = cuda_ctx_ ? cuda_ctx_.get() : &Context::cpu();
    dp_.start(*ctx_, 4096);  // a few sums per step
  }
  if (!args.dry_run && dp_.writer()) {  // a dry run neither creates nor locks the run directory
    RunDirRequest rq;
    rq.command = "sft";
    rq.dir = run_dir_;
    rq.resume = !args.resume.empty();
    rq.overwrite = args.overwrite;
    rq.resume_mode = cfg_.run.resume;
    rundir_ = open_run_dir(rq);
    inputs_ = {{"model.path", cfg_.model.path},   {"model.tokenizer", cfg_.model.tokenizer},
               {"model.chat_template_file", cfg_.model.chat_template_file},
               {"sft.path", sc.path},             {"sft.eval_path", sc.eval_path}};
    if (rundir_.resuming) verify_run_inputs(run_dir_, inputs_);
  }
  // The other ranks resume from the checkpoint rank 0 found (the run directory is shared).
  if (dp_.on()) rundir_.resuming = dp_.agree_resuming(rundir_.resuming);

  if (!ctx_ && dev_ == Device::CUDA) {
    if (cuda_device_count() == 0) throw Error("run.device is cuda but no CUDA device is available (use --device cpu)");
    cuda_ctx_ = Context::cuda(dev_index);
  }
  ctx_ = cuda_ctx_ ? cuda_ctx_.get() : &Context::cpu();
}

SftTrainer::SftTrainer(const SftArgs& args) : args_(args) {
  // ---- config --------------------------------------------------------------------------------------------------
  std::string config_path;
  cfg_ = load_run_config("sft", args.config, args.overrides, args.resume, args.device, &config_path);
  int dev_index = 0;
  dev_ = parse_device(cfg_.run.device, "run.device", &dev_index);
  set_cpu_threads(static_cast<int>(cfg_.run.threads));
  bool distributed = false;
  dp_ = DataParallel::from_environment(args.dry_run, &distributed);
  if (distributed && dev_ == Device::CUDA) dev_index = dist::local_device_index(dp_.env, cuda_device_count());
  spdlog::info("{}", device_note(cfg_.run.device, dev_, dev_index));
  run_dir_ = cfg_.run.output_dir;
  const SftSection& sc = cfg_.sft;
  if (cfg_.model.path.empty()) throw Error(fmt::format("{}: model.path is not set", config_path));
  if (sc.path.empty()) throw Error(fmt::format("{}: sft.path is not set", config_path));
  const int64_t Tm = cfg_.train.micro_batch_tokens;
  const int64_t max_seq = sc.max_seq_tokens > 0 ? sc.max_seq_tokens : Tm;
  if (max_seq > Tm)
    throw Error(fmt::format("{}: sft.max_seq_tokens = {} exceeds train.micro_batch_tokens = {}: a whole sequence must "
                            "fit in one micro-batch",
                            config_path, max_seq, Tm));
  open_run(args, distributed, dev_index);
  Context& ctx = *ctx_;

  // ---- tokenizer and data --------------------------------------------------------------------------------------
  const std::string tok_dir = cfg_.model.tokenizer.empty() ? cfg_.model.path : cfg_.model.tokenizer;
  tok_ = Tokenizer::load(tok_dir);
  format_ = make_prompt_format(*tok_, cfg_.model.chat_template, cfg_.model.chat_template_file,
                               cfg_.model.enable_thinking);
  const ModelConfig mc = ModelConfig::load(cfg_.model.path);
  int32_t eos = tok_->eos_id();
  if (eos < 0 && !mc.eos_token_ids.empty()) eos = mc.eos_token_ids.front();
  if (eos < 0) throw Error(fmt::format("{}: neither the tokenizer nor the model names an EOS token", tok_dir));
  SftDataStats st;
  std::vector<SftExample> all = load_sft_examples(sc.path, cfg_.data, sc.completion_field, *format_, eos, max_seq, &st);
  if (st.too_long > 0)
    spdlog::warn("{}: dropped {} of {} records longer than {} tokens (sft.max_seq_tokens)", sc.path, st.too_long,
                 st.records, max_seq);
  if (!sc.eval_path.empty()) {
    SftDataStats es;
    eval_ = load_sft_examples(sc.eval_path, cfg_.data, sc.completion_field, *format_, eos, max_seq, &es);
    train_ = std::move(all);
  } else {
    const std::vector<int64_t> held =
        sft_holdout_indices(static_cast<int64_t>(all.size()), sc.eval_fraction, cfg_.run.seed);
    size_t h = 0;
    for (size_t i = 0; i < all.size(); ++i) {
      if (h < held.size() && held[h] == static_cast<int64_t>(i)) {
        eval_.push_back(std::move(all[i]));
        ++h;
      } else {
        train_.push_back(std::move(all[i]));
      }
    }
  }
  std::vector<int64_t> lengths;
  int64_t train_tokens = 0;
  for (const SftExample& ex : train_) {
    lengths.push_back(static_cast<int64_t>(ex.ids.size()));
    train_tokens += lengths.back();
  }
  schedule_ = sft_schedule(lengths, cfg_.run.seed, cfg_.data.shuffle, sc.epochs, sc.steps, sc.batch_tokens);
  spdlog::info("sft data: {} training examples ({} tokens), {} held out; {} steps ({})", train_.size(), train_tokens,
               eval_.size(), schedule_.size(),
               sc.steps > 0 ? fmt::format("sft.steps") : fmt::format("{} epochs", sc.epochs));

  const int64_t max_pos = mc.max_position_embeddings;
  if (max_pos > 0 && max_seq > max_pos)
    for (const auto* set : {&train_, &eval_})
      for (const SftExample& ex : *set)
        if (static_cast<int64_t>(ex.ids.size()) > max_pos)
          throw Error(fmt::format("SFT record at line {} has {} tokens, more than the model's max_position_embeddings "
                                  "{}; lower sft.max_seq_tokens",
                                  ex.line, ex.ids.size(), max_pos));

  if (cfg_.lora.rank > 0 || !cfg_.model.adapter.empty())
    throw Error(fmt::format("{}: LoRA is supported by `rlcu train` only; `rlcu sft` fine-tunes the whole model (set "
                            "lora.rank = 0 and model.adapter = \"\")",
                            cfg_.lora.rank > 0 ? "lora.rank" : "model.adapter"));
  // ---- memory plan: the policy's buffers, its activations and the two per-token rows ----------------------------
  {
    MemoryPlanInputs mi;
    mi.cfg = cfg_;
    mi.device = dev_;
    if (dev_ == Device::CUDA) mi.free_bytes = ctx.memory_info().free_bytes;
    mi.policy = Model::inspect(cfg_.model.path, ModelOptions{});
    mi.token_rows = 2;  // logp_, dlogp_
    mi.min_micro_batch_tokens = max_seq;
    plan_ = plan_memory(mi);
    if (args.dry_run) {
      dry_run_done_ = true;
      return;
    }
    check_memory_plan(mi, plan_);
  }


  // ---- model and optimizer ---------------------------------------------------------------------------------------
  ModelOptions mo;
  mo.training = true;
  model_ = Model::load(cfg_.model.path, mo, ctx);
  if (tok_->vocab_size() > model_->config().vocab_size)
    spdlog::warn("the tokenizer has {} tokens, more than the model's vocabulary of {}", tok_->vocab_size(),
                 model_->config().vocab_size);
  TransformerOptions to;
  to.max_tokens = Tm;
  to.act_dtype = default_act_dtype(dev_);
  to.training = true;
  to.checkpointing = cfg_.train.checkpointing;
  to.fp32_residual = cfg_.train.fp32_residual;
  to.save_head_probs = cfg_.train.save_head_probs;
  tf_ = std::make_unique<Transformer>(*model_, to, ctx);
  opt_ = std::make_unique<AdamW>(cfg_.optimizer, model_->flat_master(), model_->flat_grads(),
                                 dev_ == Device::CUDA ? model_->flat_weights() : Tensor(), ctx);
  if (dp_.on()) opt_->set_communicator(dp_.comm.get());
  logp_ = OwnedTensor::make(DType::F32, dev_, {Tm});
  dlogp_ = OwnedTensor::make(DType::F32, dev_, {Tm});
  spdlog::info("sft: model {} ({} parameters) on {}", cfg_.model.path, model_->num_parameters(), device_name(dev_));

  // ---- resume ----------------------------------------------------------------------------------------------------
  if (rundir_.resuming) {
    const CheckpointRead ck = load_checkpoint(run_dir_);
    const json& ex = ck.extra;
    if (!ex.is_object() || !ex.contains("sft_train_examples") || !ex.contains("sft_schedule_steps"))
      throw Error(fmt::format("{}: not an `rlcu sft` checkpoint (trainer_state.json has no sft state)", ck.dir));
    if (ex["sft_train_examples"].get<int64_t>() != static_cast<int64_t>(train_.size()) ||
        ex["sft_schedule_steps"].get<int64_t>() != static_cast<int64_t>(schedule_.size()))
      throw Error(fmt::format("{}: the checkpoint was written for {} training examples and {} steps, the data and "
                              "config now give {} and {}; resuming would change the data order",
                              ck.dir, ex["sft_train_examples"].dump(), ex["sft_schedule_steps"].dump(), train_.size(),
                              schedule_.size()));
    restore_training_state(ck, *model_, opt_.get(), ctx);
    start_step_ = last_saved_ = ck.step;
    spdlog::info("resumed {} at step {}", ck.dir, ck.step);
  }
}

void SftTrainer::save(int64_t step) {
  if (!dp_.writer()) {  // the optimizer state is replicated: rank 0's checkpoint is every rank's
    last_saved_ = step;
    return;
  }
  CheckpointWrite w;
  w.run_dir = run_dir_;
  w.step = step;
  w.model = model_.get();
  w.optimizer = opt_.get();
  w.tokenizer_dir = cfg_.model.tokenizer;
  w.seed = cfg_.run.seed;
  w.config = config_to_json(cfg_);
  w.keep = cfg_.run.keep_checkpoints;
  const SftStep& last = schedule_[static_cast<size_t>(step - 1)];
  w.extra = {{"sft_train_examples", static_cast<int64_t>(train_.size())},
             {"sft_schedule_steps", static_cast<int64_t>(schedule_.size())},
             {"epoch", last.epoch},
             {"position", last.position}};
  const std::string dir = save_checkpoint(w);
  last_saved_ = step;
  spdlog::info("saved checkpoint {}", dir);
}

// After step `step` failed with `e`: saves the last completed step, then rethrows with what was kept (or returns
// 128 + signal when a stop signal ended the step).
int SftTrainer::fail_step(int64_t step, const std::exception& e) {
  const int64_t keep = updated_ ? step : step - 1;  // the schedule is indexed by step: nothing to put back
  std::string note = "no step had completed, so there is nothing to save";
  if (!dp_.writer()) {
    note = "rank 0 saves the run's checkpoints";
  } else if (keep > 0) {
    try {
      if (keep != last_saved_) save(keep);
      note = fmt::format("{} step {} is saved in {}; continue with `rlcu sft --resume {}` (with --set to fix what "
                         "failed)",
                         updated_ ? "the step's update was complete:" : "the last completed", keep,
                         (fs::path(run_dir_) / "checkpoints" / checkpoint_dir_name(keep)).string(), run_dir_);
    } catch (const std::exception& se) {
      note = fmt::format("saving step {} failed too: {}", keep, se.what());
    }
  }
  if (stop_requested()) {
    spdlog::warn("step {} interrupted by signal {}: {}", step, stop_signal(), e.what());
    spdlog::info("{}", note);
    return 128 + stop_signal();
  }
  throw Error(fmt::format("{} (step {} failed; {})", e.what(), step, note));
}

double SftTrainer::eval_loss() {
  Context& ctx = *ctx_;
  std::vector<int64_t> all(eval_.size());
  for (size_t i = 0; i < all.size(); ++i) all[i] = static_cast<int64_t>(i);
  double nll = 0;
  int64_t n = 0;
  for (const SftMicro& mb : pack(eval_, my_share(all), cfg_.train.micro_batch_tokens)) {
    const int64_t T = mb.batch.num_tokens();
    const DeviceBatch db = tf_->upload(mb.batch, ctx);
    tf_->forward(logp_.t.slice_rows(0, T), Tensor(), db, ctx);
    ctx.synchronize("sft: eval log-probs");
    const std::vector<float> lp = to_host_f32(logp_.t.slice_rows(0, T));
    for (int64_t r = 0; r < T; ++r)
      if (mb.target_row[static_cast<size_t>(r)]) nll -= lp[static_cast<size_t>(r)];
    n += mb.targets;
  }
  if (dp_.on()) {  // over every rank's share
    std::vector<double> sums{nll, static_cast<double>(n)};
    dp_.coll->all_reduce(sums, dist::ReduceOp::Sum);
    nll = sums[0];
    n = static_cast<int64_t>(sums[1]);
  }
  return n > 0 ? nll / static_cast<double>(n) : 0.0;
}

void SftTrainer::step(int64_t s) {
  Context& ctx = *ctx_;
  const auto t0 = Clock::now();
  const SftStep& sp = schedule_[static_cast<size_t>(s - 1)];
  const std::vector<SftMicro> micros = pack(train_, my_share(sp.examples), cfg_.train.micro_batch_tokens);
  int64_t targets = 0, tokens = 0;
  for (const SftMicro& mb : micros) {
    targets += mb.targets;
    tokens += mb.batch.num_tokens();
  }
  if (dp_.on()) {  // N and the token count of the whole step
    std::vector<int64_t> counts{targets, tokens};
    dp_.coll->all_reduce(counts, dist::ReduceOp::Sum);
    targets = counts[0];
    tokens = counts[1];
  }
  const float g = targets > 0 ? static_cast<float>(-1.0 / static_cast<double>(targets)) : 0.0f;
  model_->zero_grads(ctx);
  double nll = 0;
  for (const SftMicro& mb : micros) {
    const int64_t T = mb.batch.num_tokens();
    std::vector<float> d(static_cast<size_t>(T), 0.0f);
    for (int64_t r = 0; r < T; ++r)
      if (mb.target_row[static_cast<size_t>(r)]) d[static_cast<size_t>(r)] = g;
    const Tensor lp = logp_.t.slice_rows(0, T), dl = dlogp_.t.slice_rows(0, T);
    ctx.upload(dl, d.data());
    const DeviceBatch db = tf_->upload(mb.batch, ctx);
    tf_->forward(lp, Tensor(), db, ctx);
    tf_->backward(dl, Tensor(), ctx);
    ctx.synchronize("sft: log-probs");
    const std::vector<float> h = to_host_f32(lp);
    for (int64_t r = 0; r < T; ++r)
      if (mb.target_row[static_cast<size_t>(r)]) nll -= h[static_cast<size_t>(r)];
  }
  const int64_t total = static_cast<int64_t>(schedule_.size());
  const double lr = lr_at(cfg_.optimizer, s - 1, total);
  const OptimizerStepStats os = opt_->step(lr, ctx);  // throws on a non-finite gradient norm, changing nothing
  updated_ = true;
  if (dp_.on()) {
    std::vector<double> sum{nll};
    dp_.coll->all_reduce(sum, dist::ReduceOp::Sum);
    nll = sum[0];
  }
  double secs = since(t0);
  if (dp_.on()) {  // the slowest rank's
    std::vector<double> t{secs};
    dp_.coll->all_reduce(t, dist::ReduceOp::Max);
    secs = t[0];
  }

  ordered_json m;
  m["step"] = s;
  m["loss"] = targets > 0 ? nll / static_cast<double>(targets) : 0.0;
  m["learning_rate"] = lr;
  m["grad_norm"] = os.grad_norm;
  m["tokens_per_s/train"] = secs > 0 ? static_cast<double>(tokens) / secs : 0.0;
  m["epoch"] = static_cast<double>(sp.epoch) +
               static_cast<double>(sp.position) / static_cast<double>(std::max<size_t>(train_.size(), 1));
  m["tokens"] = tokens;
  m["completion_tokens"] = targets;
  const bool eval_point = !eval_.empty() && ((cfg_.sft.eval_every > 0 && s % cfg_.sft.eval_every == 0) || s == total);
  if (eval_point) m["eval_loss"] = eval_loss();
  m["time/step_s"] = secs;
  if (metrics_) metrics_->write(m);
  std::string line = fmt::format("step {}/{} | loss {:.4f}", s, total, m["loss"].get<double>());
  if (eval_point) line += fmt::format(" | eval_loss {:.4f}", m["eval_loss"].get<double>());
  line += fmt::format(" | grad_norm {:.3f} | lr {:.2e} | {:.0f} tok/s | epoch {:.2f}", os.grad_norm, lr,
                      m["tokens_per_s/train"].get<double>(), m["epoch"].get<double>());
  spdlog::info("{}", line);
}

int SftTrainer::run() {
  if (dry_run_done_) {
    fmt::print("{}", plan_.table());
    std::fflush(stdout);
    return 0;
  }
  if (dp_.writer()) {
    fs::create_directories(run_dir_);
    write_run_config(run_dir_, config_to_json(cfg_));
    if (!rundir_.resuming) record_run_inputs(run_dir_, inputs_);
    MetricsOptions mo;
    mo.tensorboard = cfg_.run.tensorboard;
    metrics_ = std::make_unique<MetricsWriter>(run_dir_, rundir_.resuming ? start_step_ : -1, mo);
  }
  install_stop_handlers();
  struct Uninstall {
    ~Uninstall() { uninstall_stop_handlers(); }
  } uninstall;
  const int64_t total = static_cast<int64_t>(schedule_.size());
  if (start_step_ >= total) {
    spdlog::info("the run is already at step {} of {}", start_step_, total);
    return 0;
  }
  if (start_step_ == 0 && !eval_.empty()) {
    ordered_json m;
    m["step"] = 0;
    m["eval_loss"] = eval_loss();
    if (metrics_) metrics_->write(m);
    spdlog::info("step 0/{} | eval_loss {:.4f}", total, m["eval_loss"].get<double>());
  }
  int64_t done = 0;
  for (int64_t s = start_step_ + 1; s <= total; ++s) {
    updated_ = false;
    try {
      step(s);
    } catch (const std::exception& e) {
      return fail_step(s, e);
    }
    ++done;
    const bool periodic = cfg_.run.save_every > 0 && s % cfg_.run.save_every == 0;
    const int stop_sig = dp_.on() ? dp_.agreed_stop_signal() : 0;  // a signal on any rank stops every rank
    const bool stop = stop_requested() || stop_sig != 0 || (args_.stop_after > 0 && done >= args_.stop_after);
    if (periodic || s == total || stop) {
      save(s);
      if (dp_.on()) dp_.comm->barrier(*ctx_);  // no rank ends before rank 0's checkpoint is complete
    }
    if (s == total)
      spdlog::info("final model: {} (a Hugging Face model directory)",
                   (fs::path(run_dir_) / "checkpoints" / checkpoint_dir_name(s)).string());
    if (stop && s < total) {
      const int sig = dp_.on() ? stop_sig : stop_signal();
      spdlog::info("stopping after step {} ({}); continue with: rlcu sft --resume {}", s,
                   sig ? "signal" : "--stop-after", run_dir_);
      return sig ? 128 + sig : 0;
    }
  }
  spdlog::info("memory: peak {} bytes ({:.3f} GiB) of buffers on {}, memory plan {} bytes ({:.3f} GiB)",
               buffer_bytes_peak(dev_), static_cast<double>(buffer_bytes_peak(dev_)) / (1 << 30), device_name(dev_),
               plan_.total(), static_cast<double>(plan_.total()) / (1 << 30));
  return 0;
}

}  // namespace

int run_sft(const SftArgs& args) {
  SftTrainer t(args);
  return t.run();
}

}  // namespace rlcu
