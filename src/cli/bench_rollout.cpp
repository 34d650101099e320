// `rlcu bench rollout`: times the rollout engine on random prompts (prompts x samples sequences, temperature 1, no
// EOS stop, so every sequence generates exactly --new-tokens tokens), then checks the rollout's log-probs against
// the training path (a Transformer forward of prompt + completion, as `rlcu score` computes them).
//
// Reported: generated tokens/s over the whole generate() call (prefill included); time per decode step; the mean
// decode batch; KV pool size and peak use; and the fraction of the HBM roofline: the bytes a decode step must read
// at least — every weight once (bf16, the LM head included) plus the K/V of every context token of every sequence —
// summed over the run's decode steps, divided by the decode time and by the card's peak memory bandwidth.
// The bound: per decode step, the memory time (those bytes over the copy bandwidth measured in the same run) and the
// compute time (2 × matmul parameters × sequences in the step plus the attention FLOPs 4 · layers · heads · head_dim
// · context per token, over the bf16 product rate measured in the same run); the larger one is the step's limit and
// the benchmark reports the fraction of it achieved. The same for the prefill passes (weights read once per pass
// plus the K/V written; the LM head runs for one token per prompt there).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <random>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "commands.h"
#include "device_rates.h"
#include "rlcu/context.h"
#include "rlcu/engine.h"
#include "rlcu/model.h"
#include "rlcu/profile.h"
#include "rlcu/parallel.h"

namespace rlcu::cli {

namespace {

struct BenchRolloutArgs {
  std::string model;
  int prompts = 32;
  int samples = 8;
  int prompt_len = 128;
  int new_tokens = 256;
  int repeats = 3;
  std::string device = "auto";
  int threads = 0;  // threads of the CPU kernels; 0 = all cores
  uint64_t seed = 0;
  int64_t max_batch = 256;
  double kv_fraction = 0.9;
  bool no_graphs = false;
  bool bf16_residual = false;
  bool profile = false;
};

// Peak HBM bandwidth by card name (vendor figures), bytes/s; 0 when unknown.
double hbm_peak_bytes(const std::string& name) {
  struct Entry {
    const char* key;
    double tbs;
  };
  static const Entry table[] = {{"H200", 4.8}, {"H100 PCIe", 2.0}, {"H100 NVL", 3.9}, {"H100", 3.35},
                                {"H800", 3.35}, {"A100-SXM4-80GB", 2.04}, {"A100", 1.55}, {"L40S", 0.864}};
  for (const Entry& e : table)
    if (name.find(e.key) != std::string::npos) return e.tbs * 1e12;
  return 0;
}

// Random prompts of a.prompt_len tokens from one stream seeded by a.seed, drawn in call order.
class RandomPrompts {
 public:
  RandomPrompts(const BenchRolloutArgs& a, int64_t vocab)
      : a_(a), rng_(a.seed), tok_(0, static_cast<int32_t>(vocab - 1)) {}
  std::vector<engine::Request> next() {
    std::vector<engine::Request> reqs(static_cast<size_t>(a_.prompts));
    for (auto& r : reqs) {
      r.prompt.resize(static_cast<size_t>(a_.prompt_len));
      for (auto& x : r.prompt) x = tok_(rng_);
      r.n = a_.samples;
    }
    return reqs;
  }

 private:
  const BenchRolloutArgs& a_;
  std::mt19937_64 rng_;
  std::uniform_int_distribution<int32_t> tok_;
};

struct TimedRuns {
  double tokens_per_s = 0, ms_per_step = 0;  // medians over the runs
  std::vector<engine::Request> last_reqs;    // the last run's requests and completions, with its statistics
  std::vector<engine::Completion> last;
  engine::EngineStats st;
};

// One warm-up run (it captures the decode graphs of every bucket the run passes through), then a.repeats timed runs.
TimedRuns time_runs(engine::Engine& eng, RandomPrompts& prompts, engine::SamplingOptions& so,
                    const BenchRolloutArgs& a) {
  so.sample.seed = a.seed + 1000;
  eng.generate(prompts.next(), so);
  TimedRuns out;
  std::vector<double> times, step_ms, tps;
  for (int r = 0; r < a.repeats; ++r) {
    so.sample.seed = a.seed + static_cast<uint64_t>(r);
    out.last_reqs = prompts.next();
    out.last = eng.generate(out.last_reqs, so);
    const engine::EngineStats& st = out.st = eng.stats();
    times.push_back(st.total_seconds);
    tps.push_back(static_cast<double>(st.generated_tokens) / st.total_seconds);
    step_ms.push_back(1e3 * st.decode_seconds / std::max<int64_t>(1, st.decode_steps));
    spdlog::info("run {}: {:.3f} s, {:.0f} tokens/s, {} decode steps of {:.2f} ms, prefill {:.1f} ms, {} preemptions",
                 r + 1, st.total_seconds, tps.back(), st.decode_steps, step_ms.back(), 1e3 * st.prefill_seconds,
                 st.preemptions);
  }
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  out.tokens_per_s = median(tps);
  out.ms_per_step = median(step_ms);
  return out;
}

// Time a phase must take at least, from the bytes it must move and the FLOPs it must do (see the file header).
struct PhaseBound {
  double actual_ms = 0, memory_ms = 0, compute_ms = 0;
  double limit_ms() const { return std::max(memory_ms, compute_ms); }
  const char* limited_by() const { return memory_ms >= compute_ms ? "memory" : "compute"; }
  double fraction() const { return actual_ms > 0 ? limit_ms() / actual_ms : 0; }
};

struct Roofline {
  std::string card = "cpu";
  double peak_bw = 0;      // bytes/s; 0 when the card is unknown
  double achieved_bw = 0;  // bytes a decode step must read, over the last run's decode time
  DeviceRates rates;
  PhaseBound decode;   // per decode step (averaged over the last run's steps)
  PhaseBound prefill;  // all prefill passes of the last run together
};

Roofline roofline(const Model& model, const TimedRuns& runs, const DeviceRates& rates, Device dev, int dev_index) {
  const ModelConfig& mc = model.config();
  const double weight_bytes = static_cast<double>(model.num_parameters()) * 2.0;
  const double kv_token_bytes = 2.0 * static_cast<double>(mc.num_layers * mc.kv_dim()) * 2.0;
  // Attention FLOPs per (query, key) pair over all layers and heads: q·k and p·v, 2·head_dim each.
  const double attn_pair_flops = 4.0 * static_cast<double>(mc.num_layers * mc.num_heads * mc.head_dim);
  double kv_bytes_read = 0, decode_tokens = 0, decode_pairs = 0, prompt_pairs = 0, prompt_tokens = 0;
  for (const auto& c : runs.last) {
    const double P = static_cast<double>(runs.last_reqs[static_cast<size_t>(c.request)].prompt.size());
    const double T = static_cast<double>(c.ids.size());
    // decode steps feed tokens 2..T: contexts P+1 .. P+T-1, each reading its whole context's K/V
    if (T <= 1) continue;
    decode_tokens += T - 1;
    decode_pairs += (T - 1) * (2 * P + T) / 2.0;
  }
  kv_bytes_read = decode_pairs * kv_token_bytes;
  for (const auto& rq : runs.last_reqs) {  // the prompt is prefilled once per request, shared by its samples
    const double P = static_cast<double>(rq.prompt.size());
    prompt_tokens += P;
    prompt_pairs += P * (P + 1) / 2.0;
  }
  const double bytes = weight_bytes * static_cast<double>(runs.st.decode_steps) + kv_bytes_read;
  const double steps = static_cast<double>(std::max<int64_t>(1, runs.st.decode_steps));
  const double mm = matmul_parameters(mc), head = head_parameters(mc);
  Roofline r;
  r.rates = rates;
  r.decode.actual_ms = 1e3 * runs.st.decode_seconds / steps;
  r.decode.memory_ms = 1e3 * bytes / steps / rates.copy_bytes_per_s;
  r.decode.compute_ms = 1e3 * (2.0 * mm * decode_tokens + attn_pair_flops * decode_pairs) / steps /
                        rates.gemm_flops_per_s;
  r.prefill.actual_ms = 1e3 * runs.st.prefill_seconds;
  r.prefill.memory_ms = 1e3 *
                        (weight_bytes * static_cast<double>(runs.st.prefill_passes) + kv_token_bytes * prompt_tokens) /
                        rates.copy_bytes_per_s;
  r.prefill.compute_ms = 1e3 *
                         (2.0 * (mm - head) * prompt_tokens +
                          2.0 * head * static_cast<double>(runs.last_reqs.size()) + attn_pair_flops * prompt_pairs) /
                         rates.gemm_flops_per_s;
  if (dev == Device::CUDA)
    for (const GpuInfo& g : cuda_devices())
      if (g.index == dev_index) {
        r.card = g.name;
        r.peak_bw = hbm_peak_bytes(g.name);
      }
  r.achieved_bw = runs.st.decode_seconds > 0 ? bytes / runs.st.decode_seconds : 0;
  return r;
}

struct Mismatch {
  double mean_abs = 0, max_abs = 0;
};

// The last run's log-probs against the training path: a forward of prompt + completion, compared on the completion.
Mismatch mismatch(Model& model, const TimedRuns& runs, const BenchRolloutArgs& a, Device dev, Context& ctx) {
  TransformerOptions to;
  to.max_tokens = 16384;
  to.act_dtype = default_act_dtype(dev);
  to.fp32_residual = !a.bf16_residual;
  to.max_tokens = std::max<int64_t>(to.max_tokens, a.prompt_len + a.new_tokens);
  Transformer tf(model, to, ctx);
  OwnedTensor lp = OwnedTensor::make(DType::F32, dev, {to.max_tokens});
  double sum_abs = 0, max_abs = 0;
  int64_t count = 0;
  PackedBatch pb;
  std::vector<const engine::Completion*> in_batch;
  auto flush = [&] {
    if (pb.num_tokens() == 0) return;
    const DeviceBatch db = tf.upload(pb, ctx);
    const Tensor l = lp.t.slice_rows(0, pb.num_tokens());
    tf.forward(l, Tensor(), db, ctx);
    ctx.synchronize("bench rollout: scored");
    const std::vector<float> host = to_host_f32(l);
    for (size_t i = 0; i < in_batch.size(); ++i) {
      const engine::Completion& c = *in_batch[i];
      const int64_t P = static_cast<int64_t>(runs.last_reqs[static_cast<size_t>(c.request)].prompt.size());
      const int64_t base = pb.cu_seqlens[i];
      for (size_t k = 0; k < c.ids.size(); ++k) {
        // logprob of completion token k = log p(ids[P+k] | ...), stored at row P+k-1 of the sequence.
        const double d = std::fabs(static_cast<double>(host[static_cast<size_t>(base + P + k - 1)]) - c.logprobs[k]);
        sum_abs += d;
        max_abs = std::max(max_abs, d);
        ++count;
      }
    }
    pb.clear();
    in_batch.clear();
  };
  for (const auto& c : runs.last) {
    std::vector<int32_t> seq = runs.last_reqs[static_cast<size_t>(c.request)].prompt;
    seq.insert(seq.end(), c.ids.begin(), c.ids.end());
    if (pb.num_tokens() + static_cast<int64_t>(seq.size()) > to.max_tokens) flush();
    pb.add_sequence(seq);
    in_batch.push_back(&c);
  }
  flush();
  Mismatch m;
  m.mean_abs = count ? sum_abs / static_cast<double>(count) : 0;
  m.max_abs = max_abs;
  return m;
}

// The results table and its JSON line.
void print_results(const BenchRolloutArgs& a, const engine::Engine& eng, const TimedRuns& runs, const Roofline& rf,
                   const Mismatch& mm) {
  const engine::EngineStats& st = runs.st;
  fmt::print("| card | sequences | prompt -> new | tokens/s | ms / decode step | mean decode batch | KV pool GiB | "
             "peak KV use | HBM GB/s | roofline | mean abs dlogprob | max abs dlogprob |\n"
             "|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  fmt::print("| {} | {} x {} | {} -> {} | {:.0f} | {:.3f} | {:.1f} | {:.2f} | {:.1f}% | {:.0f} | {} | {:.2e} | {:.2e} |\n",
             rf.card, a.prompts, a.samples, a.prompt_len, a.new_tokens, runs.tokens_per_s, runs.ms_per_step,
             st.mean_decode_batch(), static_cast<double>(eng.kv_bytes()) / (1 << 30),
             100.0 * static_cast<double>(st.peak_blocks_used) / static_cast<double>(eng.kv_blocks()),
             rf.achieved_bw / 1e9,
             rf.peak_bw > 0 ? fmt::format("{:.1f}%", 100 * rf.achieved_bw / rf.peak_bw) : std::string("-"),
             mm.mean_abs, mm.max_abs);
  fmt::print("\nbound (copy {:.0f} GB/s, {} product {:.1f} TFLOP/s, measured in this run):\n"
             "| phase | measured ms | memory ms | compute ms | limited by | of bound |\n|---|---|---|---|---|---|\n",
             rf.rates.copy_bytes_per_s / 1e9, rf.card == "cpu" ? "fp32" : "bf16", rf.rates.gemm_flops_per_s / 1e12);
  for (const auto& [name, b] : {std::pair{"decode step", rf.decode}, std::pair{"prefill (all passes)", rf.prefill}})
    fmt::print("| {} | {:.3f} | {:.3f} | {:.3f} | {} | {:.1f}% |\n", name, b.actual_ms, b.memory_ms, b.compute_ms,
               b.limited_by(), 100 * b.fraction());
  nlohmann::json j{{"bench", "rollout"},
                   {"card", rf.card},
                   {"prompts", a.prompts},
                   {"samples", a.samples},
                   {"prompt_len", a.prompt_len},
                   {"new_tokens", a.new_tokens},
                   {"tokens_per_s", runs.tokens_per_s},
                   {"ms_per_decode_step", runs.ms_per_step},
                   {"mean_decode_batch", st.mean_decode_batch()},
                   {"decode_steps", st.decode_steps},
                   {"prefill_s", st.prefill_seconds},
                   {"preemptions", st.preemptions},
                   {"kv_pool_gib", static_cast<double>(eng.kv_bytes()) / (1 << 30)},
                   {"hbm_bytes_per_s", rf.achieved_bw},
                   {"hbm_roofline_fraction", rf.peak_bw > 0 ? rf.achieved_bw / rf.peak_bw : 0.0},
                   {"copy_bytes_per_s", rf.rates.copy_bytes_per_s},
                   {"gemm_flops_per_s", rf.rates.gemm_flops_per_s},
                   {"decode_memory_ms", rf.decode.memory_ms},
                   {"decode_compute_ms", rf.decode.compute_ms},
                   {"decode_bound_fraction", rf.decode.fraction()},
                   {"prefill_ms", rf.prefill.actual_ms},
                   {"prefill_memory_ms", rf.prefill.memory_ms},
                   {"prefill_compute_ms", rf.prefill.compute_ms},
                   {"prefill_bound_fraction", rf.prefill.fraction()},
                   {"mean_abs_dlogprob", mm.mean_abs},
                   {"max_abs_dlogprob", mm.max_abs},
                   {"cuda_graphs", !a.no_graphs},
                   {"fp32_residual", !a.bf16_residual}};
  fmt::print("{}\n", j.dump());
}

// One more run with every decode step launched eagerly and an event pair around every op (CUDA).
void profile_run(engine::Engine& eng, RandomPrompts& prompts, const engine::SamplingOptions& so,
                 const BenchRolloutArgs& a, Context& ctx) {
  eng.set_cuda_graphs(false);
  profiler_enable(true);
  eng.generate(prompts.next(), so);
  const std::vector<ProfileRow> rows = profiler_collect(ctx);
  profiler_enable(false);
  eng.set_cuda_graphs(!a.no_graphs);
  const engine::EngineStats& ps = eng.stats();
  double total = 0;
  for (const ProfileRow& r : rows) total += r.ms;
  fmt::print("\nprofiled run (no graphs): {:.1f} ms in {} decode steps and {} prefill passes; ops total {:.1f} ms\n",
             1e3 * ps.total_seconds, ps.decode_steps, ps.prefill_passes, total);
  fmt::print("| op | calls | ms | share |\n|---|---|---|---|\n");
  for (size_t i = 0; i < rows.size() && i < 30; ++i)
    fmt::print("| {} | {} | {:.2f} | {:.1f}% |\n", rows[i].name, rows[i].calls, rows[i].ms, 100 * rows[i].ms / total);
}

int run_bench_rollout(const BenchRolloutArgs& a) {
  if (a.prompts < 1 || a.samples < 1 || a.prompt_len < 1 || a.new_tokens < 1 || a.repeats < 1)
    throw UsageError("--prompts, --samples, --prompt-len, --new-tokens and --repeats must be >= 1");
  int dev_index = 0;
  const Device dev = parse_device(a.device, "--device", &dev_index);
  set_cpu_threads(a.threads);
  spdlog::info("{}", device_note(a.device, dev, dev_index));
  std::unique_ptr<Context> cuda_ctx;
  if (dev == Device::CUDA) cuda_ctx = Context::cuda(dev_index);
  Context& ctx = dev == Device::CUDA ? *cuda_ctx : Context::cpu();
  auto model = Model::load(a.model, ModelOptions{}, ctx);
  const ModelConfig& mc = model->config();
  const DeviceRates rates = measure_device_rates(ctx);  // before the KV pool takes the free memory

  engine::EngineOptions eo;
  eo.max_batch = std::max<int64_t>(a.max_batch, a.samples);
  eo.kv_fraction = a.kv_fraction;
  eo.prefill_tokens = std::max<int64_t>(8192, a.prompt_len);
  eo.max_model_len = a.prompt_len + a.new_tokens;
  eo.cuda_graphs = !a.no_graphs;
  eo.fp32_residual = !a.bf16_residual;
  engine::Engine eng(*model, eo, ctx);

  RandomPrompts prompts(a, mc.vocab_size);
  engine::SamplingOptions so;
  so.sample.temperature = 1.0f;
  so.max_new_tokens = a.new_tokens;
  so.ignore_eos = true;

  spdlog::info("bench rollout: {} ({} layers, hidden {}), {} prompts x {} samples, {} prompt -> {} new tokens, "
               "KV pool {} blocks x {} tokens ({:.2f} GiB)",
               a.model, mc.num_layers, mc.hidden_size, a.prompts, a.samples, a.prompt_len, a.new_tokens,
               eng.kv_blocks(), eng.block_size(), static_cast<double>(eng.kv_bytes()) / (1 << 30));
  const TimedRuns runs = time_runs(eng, prompts, so, a);
  const Roofline rf = roofline(*model, runs, rates, dev, dev_index);
  const Mismatch mm = mismatch(*model, runs, a, dev, ctx);
  print_results(a, eng, runs, rf, mm);
  if (a.profile && dev == Device::CUDA) profile_run(eng, prompts, so, a, ctx);
  return 0;
}

}  // namespace

void add_bench_rollout_command(CLI::App* bench, Action& action) {
  static BenchRolloutArgs a;
  CLI::App* cmd = bench->add_subcommand("rollout", "Time the rollout engine on random prompts");
  cmd->add_option("--model", a.model, "Hugging Face model directory")->required();
  cmd->add_option("--prompts", a.prompts, "Prompts per run")->capture_default_str();
  cmd->add_option("--samples", a.samples, "Samples per prompt")->capture_default_str();
  cmd->add_option("--prompt-len", a.prompt_len, "Tokens per prompt")->capture_default_str();
  cmd->add_option("--new-tokens", a.new_tokens, "Tokens generated per sample")->capture_default_str();
  cmd->add_option("--repeats", a.repeats, "Timed runs (the median is reported) after one warm-up run")
      ->capture_default_str();
  cmd->add_option("--device", a.device, "auto, cpu, cuda or cuda:N")->capture_default_str();
  cmd->add_option("--threads", a.threads, "Threads of the CPU kernels; 0 = all cores")
      ->capture_default_str()
      ->check(int_range(0, 4096));
  cmd->add_option("--seed", a.seed, "Seed of the random prompts and the sampler")->capture_default_str();
  cmd->add_option("--max-batch", a.max_batch, "Sequences decoded together at most")->capture_default_str();
  cmd->add_option("--kv-fraction", a.kv_fraction, "CUDA: share of free memory for the KV cache")
      ->capture_default_str()
      ->check(float_range(0.01, 1.0));
  cmd->add_flag("--no-graphs", a.no_graphs, "Launch decode steps eagerly instead of replaying CUDA graphs");
  cmd->add_flag("--bf16-residual", a.bf16_residual,
                "Keep the residual stream in bf16 in the engine and the scoring forward (default: F32)");
  cmd->add_flag("--profile", a.profile, "After timing, run once more without graphs, timing every op on the GPU");
  cmd->callback([&action] { action = [] { return run_bench_rollout(a); }; });
}

}  // namespace rlcu::cli
