// `rlcu bench train`: times full training steps (forward + backward over packed micro-batches + global-norm clip +
// AdamW) of a model on random token sequences, and reports tokens/s, achieved model TFLOP/s, MFU against the
// card's dense bf16 peak, and peak device memory, as a table and as one JSON line.
//
// Model FLOPs per step = 6 * (matmul parameters incl. the LM head) * tokens + 12 * layers * heads * head_dim *
// (causal query-key pairs), the usual accounting (recomputation under checkpointing is not counted).
// --lora-rank r trains LoRA adapters on every linear layer of a frozen base (rlcu/lora.h) and counts what that step
// does: 4 * (matmul parameters) * tokens (the forward and the input-gradient backward; no weight gradient of the
// base), the same attention term, 4 * r * (in + out) per target and token (U, dB, G, dA) and 2 * r * in * out per
// target for the merge after the optimizer step.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <random>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "commands.h"
#include "device_rates.h"
#include "rlcu/config.h"
#include "rlcu/context.h"
#include "rlcu/lora.h"
#include "rlcu/model.h"
#include "rlcu/ops.h"
#include "rlcu/optimizer.h"
#include "rlcu/profile.h"
#include "rlcu/parallel.h"

namespace rlcu::cli {

namespace {

struct BenchTrainArgs {
  std::string model;
  int batch = 64;
  int seq_len = 512;
  int64_t micro_batch_tokens = 32768;
  bool checkpointing = false;
  bool fp32_residual = false;
  bool recompute_head = false;
  int steps = 3;
  int warmup = 1;
  std::string device = "auto";
  int threads = 0;  // threads of the CPU kernels; 0 = all cores
  uint64_t seed = 0;
  bool profile = false;
  std::string optim = "adamw";
  int64_t lora_rank = 0;
  double lora_alpha = 16.0;
};

// Dense bf16 tensor-core peak (no sparsity) by card name, in TFLOP/s; 0 when unknown.
double bf16_peak_tflops(const std::string& name) {
  struct Entry {
    const char* key;
    double tflops;
  };
  static const Entry table[] = {{"H200", 989.4}, {"H100 PCIe", 756.0}, {"H100 NVL", 835.0}, {"H100", 989.4},
                                {"H800", 989.4}, {"A100", 312.0},      {"L40S", 362.0},     {"A10", 125.0}};
  for (const Entry& e : table)
    if (name.find(e.key) != std::string::npos) return e.tflops;
  return 0;
}

LoraSpec bench_lora_spec(const BenchTrainArgs& a) {  // every linear layer
  LoraSpec ls;
  ls.rank = a.lora_rank;
  ls.alpha = a.lora_alpha;
  ls.targets.fill(true);
  return ls;
}

// Model FLOPs of one step (see the file comment; with --lora-rank what the LoRA step does).
double step_flops(const ModelConfig& mc, const BenchTrainArgs& a, int64_t tokens) {
  const double L = static_cast<double>(mc.num_layers);
  const double pairs = static_cast<double>(a.batch) * a.seq_len * (a.seq_len + 1) / 2.0;
  double flops = (a.lora_rank > 0 ? 4 : 6) * matmul_parameters(mc) * static_cast<double>(tokens) +
                 12.0 * L * mc.num_heads * mc.head_dim * pairs;
  if (a.lora_rank > 0)
    for (int t = 0; t < kLoraTargets; ++t) {
      const LoraShape sh = lora_shape(mc, static_cast<LoraTarget>(t));
      const double r = static_cast<double>(a.lora_rank);
      flops += L * (4.0 * r * static_cast<double>(sh.in + sh.out) * tokens + 2.0 * r * sh.in * sh.out);
    }
  return flops;
}

int run_bench_train(const BenchTrainArgs& a) {
  int dev_index = 0;
  const Device dev = parse_device(a.device, "--device", &dev_index);
  set_cpu_threads(a.threads);
  spdlog::info("{}", device_note(a.device, dev, dev_index));
  if (a.batch < 1 || a.seq_len < 2) throw UsageError("--batch must be >= 1 and --seq-len >= 2");
  std::unique_ptr<Context> cuda_ctx;
  if (dev == Device::CUDA) cuda_ctx = Context::cuda(dev_index);
  Context& ctx = dev == Device::CUDA ? *cuda_ctx : Context::cpu();

  ModelOptions mo;
  mo.training = a.lora_rank == 0;
  auto model = Model::load(a.model, mo, ctx);
  const ModelConfig& mc = model->config();
  std::unique_ptr<LoraAdapters> lora;
  if (a.lora_rank > 0) lora = std::make_unique<LoraAdapters>(*model, bench_lora_spec(a), a.seed, true, ctx);
  const int64_t tokens = static_cast<int64_t>(a.batch) * a.seq_len;
  const int seqs_per_mb =
      static_cast<int>(std::clamp<int64_t>(a.micro_batch_tokens / a.seq_len, 1, a.batch));
  TransformerOptions to;
  to.max_tokens = static_cast<int64_t>(seqs_per_mb) * a.seq_len;
  to.act_dtype = default_act_dtype(dev);
  to.training = true;
  to.checkpointing = a.checkpointing;
  to.fp32_residual = a.fp32_residual;
  to.save_head_probs = !a.recompute_head;
  to.lora = lora.get();
  to.lora_rank = a.lora_rank;
  Transformer tf(*model, to, ctx);
  OptimizerSection oc;
  oc.lr = 1e-6;
  oc.name = a.optim;
  AdamW opt(oc, lora ? lora->flat_master() : model->flat_master(), lora ? lora->flat_grads() : model->flat_grads(),
            dev == Device::CUDA ? (lora ? lora->flat_weights() : model->flat_weights()) : Tensor(), ctx);
  OwnedTensor logprob = OwnedTensor::make(DType::F32, dev, {to.max_tokens});
  OwnedTensor dlogprob = OwnedTensor::make(DType::F32, dev, {to.max_tokens});

  std::mt19937_64 rng(a.seed);
  std::uniform_int_distribution<int32_t> tok(0, static_cast<int32_t>(mc.vocab_size - 1));
  std::normal_distribution<float> nd(0.0f, 1.0f / static_cast<float>(tokens));
  // Fresh random sequences for every micro-batch of every step. With `phases`, each phase ends in a sync and its
  // wall time is added to phase_s (forward, backward, optimizer).
  double phase_s[3] = {0, 0, 0};
  auto run_step = [&](bool phases) {
    auto now = [] { return std::chrono::steady_clock::now(); };
    auto lap = [&](int i, std::chrono::steady_clock::time_point& t) {
      if (!phases) return;
      ctx.synchronize("bench phase");
      const auto n = now();
      phase_s[i] += std::chrono::duration<double>(n - t).count();
      t = n;
    };
    if (lora)
      lora->zero_grads(ctx);
    else
      model->zero_grads(ctx);
    auto t = now();
    for (int s0 = 0; s0 < a.batch; s0 += seqs_per_mb) {
      PackedBatch pb;
      const int n = std::min(seqs_per_mb, a.batch - s0);
      std::vector<int32_t> seq(a.seq_len);
      for (int i = 0; i < n; ++i) {
        for (auto& x : seq) x = tok(rng);
        pb.add_sequence(seq);
      }
      std::vector<float> w(pb.num_tokens());
      for (auto& x : w) x = nd(rng);
      DeviceBatch db = tf.upload(pb, ctx);
      Tensor dl = dlogprob.t.slice_rows(0, pb.num_tokens());
      from_host_f32(dl, w);
      tf.forward(logprob.t.slice_rows(0, pb.num_tokens()), Tensor(), db, ctx);
      lap(0, t);
      tf.backward(dl, Tensor(), ctx);
      lap(1, t);
    }
    opt.step(oc.lr, ctx);
    if (lora) lora->merge(ctx);
    lap(2, t);
    ctx.synchronize("bench step end");
  };

  spdlog::info("bench train: {} ({} layers, hidden {}, vocab {}), {} x {} tokens, micro-batch {} seqs, {}, {}{}{}",
               a.model, mc.num_layers, mc.hidden_size, mc.vocab_size, a.batch, a.seq_len, seqs_per_mb,
               device_name(dev), a.optim, a.checkpointing ? ", checkpointing" : "",
               a.lora_rank > 0 ? fmt::format(", LoRA rank {}", a.lora_rank) : "");
  for (int i = 0; i < a.warmup; ++i) run_step(false);
  reset_device_bytes_peak();
  std::vector<double> times;
  for (int i = 0; i < a.steps; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    run_step(false);
    times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    spdlog::info("step {}: {:.3f} s", i + 1, times.back());
  }
  std::vector<double> sorted = times;
  std::sort(sorted.begin(), sorted.end());
  const double med = sorted[sorted.size() / 2];

  const double flops = step_flops(mc, a, tokens);
  const double tflops = flops / med / 1e12;
  std::string card = "cpu";
  double peak = 0, mem_gib = 0, mem_total_gib = 0;
  if (dev == Device::CUDA) {
    for (const GpuInfo& g : cuda_devices())
      if (g.index == dev_index) {
        card = g.name;
        mem_total_gib = g.total_memory / 1073741824.0;
      }
    peak = bf16_peak_tflops(card);
    mem_gib = device_bytes_peak() / 1073741824.0;
  }
  const double tps = tokens / med;
  fmt::print("\n| model | device | tokens/step | checkpointing | residual | training | step (median of {}) | tokens/s "
             "| TFLOP/s | MFU | peak memory |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
             times.size());
  fmt::print("| {} | {} | {} x {} | {} | {} | {} | {:.3f} s | {:.0f} | {:.1f} | {} | {} |\n", mc.model_type, card,
             a.batch, a.seq_len, a.checkpointing ? "yes" : "no", a.fp32_residual ? "f32" : "bf16",
             lora ? fmt::format("LoRA r={}", a.lora_rank) : std::string("full"), med, tps, tflops,
             peak > 0 ? fmt::format("{:.1f}% of {:.0f}", 100 * tflops / peak, peak) : "n/a",
             dev == Device::CUDA ? fmt::format("{:.1f} GiB of {:.0f}", mem_gib, mem_total_gib) : "n/a");
  nlohmann::json j = {{"bench", "train"},         {"model", a.model},        {"device", card},
                      {"batch", a.batch},         {"seq_len", a.seq_len},    {"micro_batch_seqs", seqs_per_mb},
                      {"checkpointing", a.checkpointing}, {"fp32_residual", a.fp32_residual},
                      {"save_head_probs", !a.recompute_head}, {"optimizer", a.optim},
                      {"lora_rank", a.lora_rank},
                      {"step_seconds_median", med}, {"step_seconds", times},
                      {"tokens_per_s", tps},      {"model_tflops", tflops},  {"mfu", peak > 0 ? tflops / peak : 0.0},
                      {"peak_bf16_tflops", peak}, {"peak_memory_gib", mem_gib}, {"parameters", model->num_parameters()}};
  fmt::print("{}\n", j.dump());
  if (a.profile && dev == Device::CUDA) {
    // One more step, synchronised between phases and with an event pair around every op.
    profiler_enable(true);
    run_step(true);
    const std::vector<ProfileRow> rows = profiler_collect(ctx);
    profiler_enable(false);
    double total = 0;
    for (const ProfileRow& r : rows) total += r.ms;
    fmt::print("\nprofiled step: forward {:.1f} ms, backward {:.1f} ms, optimizer {:.1f} ms; ops total {:.1f} ms\n",
               1e3 * phase_s[0], 1e3 * phase_s[1], 1e3 * phase_s[2], total);
    fmt::print("| op | calls | ms | share |\n|---|---|---|---|\n");
    for (size_t i = 0; i < rows.size() && i < 40; ++i)
      fmt::print("| {} | {} | {:.2f} | {:.1f}% |\n", rows[i].name, rows[i].calls, rows[i].ms, 100 * rows[i].ms / total);
  }
  return 0;
}

}  // namespace

void add_bench_command(CLI::App& app, Action& action) {
  CLI::App* bench = app.add_subcommand("bench", "Benchmarks");
  bench->require_subcommand(1);
  static BenchTrainArgs a;
  CLI::App* train = bench->add_subcommand("train", "Time training steps (fwd + bwd + AdamW) on random tokens");
  train->add_option("--model", a.model, "Hugging Face model directory")->required();
  train->add_option("--batch", a.batch, "Sequences per step")->capture_default_str();
  train->add_option("--seq-len", a.seq_len, "Tokens per sequence")->capture_default_str();
  train->add_option("--micro-batch-tokens", a.micro_batch_tokens, "Token budget of one packed micro-batch")
      ->capture_default_str();
  train->add_flag("--checkpointing", a.checkpointing, "Recompute each layer in backward (activation checkpointing)");
  train->add_flag("--fp32-residual", a.fp32_residual,
                  "Keep the residual stream in F32 (as `rlcu train` does by default) instead of the activation dtype");
  train->add_flag("--recompute-head", a.recompute_head,
                  "Recompute the log-prob head's logits in backward instead of keeping its softmax "
                  "(train.save_head_probs = false)");
  train->add_option("--steps", a.steps, "Timed steps (the median is reported)")->capture_default_str();
  train->add_option("--warmup", a.warmup, "Untimed warm-up steps")->capture_default_str();
  train->add_option("--device", a.device, "auto, cpu, cuda or cuda:N")->capture_default_str();
  train->add_option("--threads", a.threads, "Threads of the CPU kernels; 0 = all cores")
      ->capture_default_str()
      ->check(int_range(0, 4096));
  train->add_option("--seed", a.seed, "Seed of the random tokens")->capture_default_str();
  train->add_option("--optim", a.optim, "Optimizer: adamw (fp32 moments) or adamw_8bit (8-bit blockwise moments)")
      ->check(CLI::IsMember({"adamw", "adamw_8bit"}))
      ->capture_default_str();
  train->add_option("--lora-rank", a.lora_rank,
                    "Train LoRA adapters of this rank on every linear layer of a frozen base (0 = full fine-tuning)")
      ->check(CLI::Range(int64_t{0}, int64_t{65536}))
      ->capture_default_str();
  train->add_option("--lora-alpha", a.lora_alpha, "LoRA alpha (the adapters add alpha / r * B A)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  train->add_flag("--profile", a.profile, "After timing, run one step with per-op GPU timing and print the breakdown");
  train->callback([&action] { action = [] { return run_bench_train(a); }; });
  add_bench_rollout_command(bench, action);
}

}  // namespace rlcu::cli
