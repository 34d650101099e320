// The memory plan (see include/rlcu/memory_plan.h): each item from the sizing function of the buffer it stands for.
#include "rlcu/memory_plan.h"

#include <algorithm>
#include <limits>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "rlcu/error.h"
#include "rlcu/optimizer.h"

namespace rlcu {

namespace {

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;
constexpr size_t kCudaReserve = size_t(256) << 20;  // what Engine::memory leaves free on CUDA

double gib(size_t b) { return static_cast<double>(b) / kGiB; }

std::string count_str(int64_t n) {
  if (n >= 1000000000) return fmt::format("{:.2f}B", n / 1e9);
  if (n >= 1000000) return fmt::format("{:.1f}M", n / 1e6);
  if (n >= 1000) return fmt::format("{:.1f}k", n / 1e3);
  return std::to_string(n);
}

}  // namespace

size_t MemoryPlan::total() const {
  size_t t = 0;
  for (const MemoryItem& it : items) t += it.bytes;
  return t;
}

size_t MemoryPlan::required() const {
  const size_t t = total();
  return t - kv_bytes + (device == Device::CUDA ? min_kv_bytes : kv_bytes);
}

std::string MemoryPlan::table() const {
  std::string s = fmt::format("memory plan ({}, per device)\n\n| item | GiB | detail |\n|---|---:|---|\n",
                              device_name(device));
  for (const MemoryItem& it : items) s += fmt::format("| {} | {:.4g} | {} |\n", it.name, gib(it.bytes), it.detail);
  s += fmt::format("| **total** | **{:.4g}** | {} bytes |\n", gib(total()), total());
  if (limit > 0)
    s += fmt::format("| limit ({}) | {:.4g} | {} |\n", limit_source, gib(limit),
                     fits() ? "fits" : fmt::format("does not fit: {:.4g} GiB needed", gib(required())));
  else
    s += "| limit | none | run.memory_limit_gib = 0 on the CPU |\n";
  return s;
}

MemoryPlan plan_memory(const MemoryPlanInputs& in) {
  const RunConfig& c = in.cfg;
  const Device dev = in.device;
  const bool cuda = dev == Device::CUDA;
  MemoryPlan p;
  p.device = dev;
  if (c.run.memory_limit_gib > 0) {
    p.limit = static_cast<size_t>(c.run.memory_limit_gib * kGiB);
    p.limit_source = "run.memory_limit_gib";
  } else if (cuda) {
    p.limit = in.free_bytes;
    p.limit_source = "free device memory";
  }
  auto add = [&](std::string name, size_t bytes, std::string detail) {
    if (bytes > 0) p.items.push_back({std::move(name), bytes, std::move(detail)});
  };
  const int64_t Tm = c.train.micro_batch_tokens;
  const DType ad = default_act_dtype(dev);
  const char* wname = cuda ? "bf16" : "f32";

  // The policy (Trainer::load_models / SftTrainer: Model::load with training, its Transformer, AdamW).
  ModelOptions train_mo;
  train_mo.training = true;
  const bool lora = in.lora.rank > 0;
  const Model::BufferBytes pb = Model::buffer_bytes(in.policy, dev, lora ? ModelOptions{} : train_mo);
  int64_t n = pb.elements;
  add(fmt::format("policy weights ({})", wname), pb.weights,
      lora ? fmt::format("{} elements, the frozen base (no masters, moments or gradients)", count_str(n))
           : fmt::format("{} elements{}", count_str(n), cuda ? "" : ", also the masters"));
  add("policy masters (f32)", pb.master, "");
  add("policy gradients (f32)", pb.grads, "");
  if (lora) {
    const LoraBufferBytes lb = lora_buffer_bytes(in.policy, in.lora, dev);
    n = lb.elements;
    add(fmt::format("LoRA effective weights ({})", wname), lb.effective,
        fmt::format("W0 + (alpha/r) B A of {} (engine and training forward)", in.lora.targets_string()));
    add("LoRA adapters", lb.weights + lb.master + lb.grads,
        fmt::format("rank {}, {} parameters: f32 masters + gradients{}", in.lora.rank,
                    count_str(lora_parameter_count(in.policy, in.lora)), cuda ? " + bf16 working copy" : ""));
  }
  const OptimizerKind ok = optimizer_kind(c.optimizer.name);
  add(fmt::format("optimizer state ({})", optimizer_name(ok)),
      static_cast<size_t>(optimizer_state_bytes(ok, n)),
      std::string(ok == OptimizerKind::AdamW ? "f32 exp_avg + exp_avg_sq"
                                             : "u8 codes + f32 absmax per 256, for exp_avg and exp_avg_sq") +
          (lora ? " of the adapters" : ""));
  TransformerOptions to;
  to.max_tokens = Tm;
  to.act_dtype = ad;
  to.training = true;
  to.checkpointing = c.train.checkpointing;
  to.fp32_residual = c.train.fp32_residual;
  to.save_head_probs = false;
  const bool fused = Model::fused_qkv_layout(in.policy);
  // LoRA on some but not all of q/k/v leaves no fused qkv view in the effective weights (rlcu/lora.h).
  const bool qkv_some = lora && (in.lora.targets[0] || in.lora.targets[1] || in.lora.targets[2]) &&
                        !(in.lora.targets[0] && in.lora.targets[1] && in.lora.targets[2]);
  const bool tfused = fused && !qkv_some;
  const size_t act = Transformer::plan_bytes(in.policy, to, tfused);
  to.save_head_probs = c.train.save_head_probs;
  const size_t act_head = Transformer::plan_bytes(in.policy, to, tfused);
  add("policy activations", act,
      fmt::format("{} tokens per micro-batch, {}", Tm,
                  c.train.checkpointing ? "checkpointing (one layer's activations)" : "every layer's activations"));
  add("saved head softmax", act_head - act, fmt::format("{} x {} vocab ({})", Tm, in.policy.vocab_size, dtype_name(ad)));
  if (lora) {
    to.lora_rank = in.lora.rank;
    add("LoRA backward scratch", Transformer::plan_bytes(in.policy, to, tfused) - act_head,
        fmt::format("U, G [{}, {}], a fused product's rows x {}, the frozen norms' gradient sink", Tm, in.lora.rank,
                    in.lora.rank));
    to.lora_rank = 0;
  }
  if (in.reference) {
    const Model::BufferBytes rb = Model::buffer_bytes(in.policy, dev, ModelOptions{});
    TransformerOptions ro = to;  // rl::ReferenceModel: the policy's options, inference
    ro.training = false;
    ro.checkpointing = false;
    // With LoRA the reference reads the base weights themselves (which keep the fused qkv view): no copy.
    add("reference model", (lora ? 0 : rb.weights) + Transformer::plan_bytes(in.policy, ro, fused),
        lora ? std::string("inference activations (the frozen base weights themselves, no copy)")
             : fmt::format("{} weights + inference activations", wname));
  }
  if (in.critic) {  // rl::Critic + TrainedCritic: plain AdamW for the decoder and the value head
    const Model::BufferBytes cb = Model::buffer_bytes(in.critic_model, dev, train_mo);
    TransformerOptions co;
    co.max_tokens = Tm;
    co.act_dtype = ad;
    co.training = true;
    co.checkpointing = c.train.checkpointing;
    const int64_t H = in.critic_model.hidden_size;
    const size_t head = static_cast<size_t>(H) * (4 + 4 + (cuda ? dtype_size(ad) : 0) + 8);
    const size_t rows = static_cast<size_t>(Tm) * (6 * 4 + dtype_size(ad));
    add("critic", cb.weights + cb.master + cb.grads +
                      static_cast<size_t>(optimizer_state_bytes(OptimizerKind::AdamW, cb.elements)) +
                      Transformer::plan_bytes(in.critic_model, co, Model::fused_qkv_layout(in.critic_model)) + head +
                      rows,
        "weights, masters, gradients, adamw moments, activations, value head");
  }
  if (in.reward_model) {  // rl::RewardModel: 8192-token inference arena
    const Model::BufferBytes wb = Model::buffer_bytes(in.reward, dev, ModelOptions{});
    TransformerOptions wo;
    wo.max_tokens = 8192;
    wo.act_dtype = ad;
    add("reward model", wb.weights + Transformer::plan_bytes(in.reward, wo, Model::fused_qkv_layout(in.reward)) +
                            8192 * 4,
        "weights + inference activations (8192 tokens)");
  }
  add("per-token rows", static_cast<size_t>(in.token_rows) * static_cast<size_t>(Tm) * 4,
      fmt::format("{} f32 rows of {} tokens", in.token_rows, Tm));

  if (in.engine) {
    size_t before = 0;
    for (const MemoryItem& it : p.items) before += it.bytes;
    // On CUDA the engine sizes its pool from the memory free when it is built: the limit less what came before.
    const size_t free_then = p.limit > before ? p.limit - before : 0;
    const DType wdt = cuda ? DType::BF16 : DType::F32;
    engine::EngineMemory em;
    try {
      em = engine::Engine::memory(in.policy, wdt, dev, in.engine_options, free_then);
    } catch (const Error&) {  // not one KV block left: the plan does not fit (check_memory_plan says why)
      em = engine::Engine::memory(in.policy, wdt, dev, in.engine_options, std::numeric_limits<size_t>::max() / 4);
      em.kv_blocks = 0;
      em.kv_bytes = 0;
    }
    add("rollout engine buffers", em.activation_bytes,
        fmt::format("{} prefill tokens, batch {}", in.engine_options.prefill_tokens, in.engine_options.max_batch));
    p.kv_blocks = em.kv_blocks;
    p.kv_bytes = em.kv_bytes;
    p.min_kv_bytes = static_cast<size_t>(em.min_kv_blocks) * em.kv_block_bytes;
    add("KV pool", em.kv_bytes,
        fmt::format("{} blocks of {} tokens{}", em.kv_blocks, in.engine_options.block_size,
                    cuda ? fmt::format(", rollout.kv_fraction {} of what is left", in.engine_options.kv_fraction)
                         : ""));
    if (cuda) add("workspaces", kCudaReserve, "cuBLAS and op scratch (left free by the engine)");
  }
  return p;
}

void check_memory_plan(const MemoryPlanInputs& in, const MemoryPlan& plan) {
  if (plan.fits()) return;
  std::vector<MemoryItem> largest = plan.items;
  std::sort(largest.begin(), largest.end(), [](const MemoryItem& a, const MemoryItem& b) { return a.bytes > b.bytes; });
  std::string big;
  for (size_t i = 0; i < largest.size() && i < 3; ++i)
    big += fmt::format("{}{} {:.2f} GiB", i ? ", " : "", largest[i].name, gib(largest[i].bytes));
  std::vector<std::string> ways;
  auto try_with = [&](const std::string& setting, auto change) {
    MemoryPlanInputs alt = in;
    change(alt.cfg);
    if (alt.cfg.lora.rank != in.cfg.lora.rank) alt.lora = lora_spec_from_config(alt.cfg);
    const MemoryPlan ap = plan_memory(alt);
    ways.push_back(fmt::format("{} -> {:.2f} GiB", setting, gib(ap.required())));
  };
  const TrainSection& t = in.cfg.train;
  const int64_t half = std::max(t.micro_batch_tokens / 2, in.min_micro_batch_tokens);
  if (half < t.micro_batch_tokens) {
    try_with(fmt::format("train.micro_batch_tokens={}", half), [&](RunConfig& c) { c.train.micro_batch_tokens = half; });
  }
  if (!t.checkpointing) try_with("train.checkpointing=true", [](RunConfig& c) { c.train.checkpointing = true; });
  if (in.cfg.optimizer.name != "adamw_8bit")
    try_with("optimizer.name=adamw_8bit", [](RunConfig& c) { c.optimizer.name = "adamw_8bit"; });
  if (in.lora.rank == 0)
    try_with("lora.rank=16", [](RunConfig& c) { c.lora.rank = 16; });
  if (t.save_head_probs) try_with("train.save_head_probs=false", [](RunConfig& c) { c.train.save_head_probs = false; });
  throw Error(fmt::format("the memory plan needs {:.2f} GiB on {} but the limit ({}) is {:.2f} GiB; largest: {}. "
                          "Settings that shrink it: {} (`--dry-run` prints the whole plan)",
                          gib(plan.required()), device_name(plan.device), plan.limit_source, gib(plan.limit), big,
                          ways.empty() ? "none" : fmt::format("{}", fmt::join(ways, "; "))));
}

}  // namespace rlcu
