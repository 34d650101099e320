// LoRA adapters (Hu et al. 2021, as Hugging Face PEFT defines them) on the linear layers of a frozen base model.
//
// For a target projection with base weight W0 [out, in] and rank r, scaling s = alpha / r:
//   W = W0 + s B A,   A [r, in] (kaiming-uniform as PEFT: U(-1/sqrt(in), 1/sqrt(in))), B [out, r] (zero at start)
// Targets: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj of every layer (a subset by lora.targets).
//
// Effective weights: the model's working weights (Model::weights(), what the training forward AND the rollout engine
// read) view a separate buffer holding W = W0 + s B A for each target matrix (gate_proj / up_proj share the fused
// gate_up [2I, H]; q/k/v keep the fused qkv view when all three are targets), refreshed by merge() after every
// optimizer step with one product per target: W = s * B @ A + W0 (ops::gemm with the base as addend, fp32
// accumulation, one rounding to the weight dtype). The base W0 stays untouched (Model::base_weights(): the reference
// model of the KL penalty scores with it, so there is no second copy of the model); rollout and training read the
// same bits, so LoRA adds no log-prob mismatch between them. Cost: one copy of the target matrices in the weight
// dtype, and per step a read of W0 and a write of W (plus 2 out in r flops per target).
//
// Gradients (Transformer backward, given the target's input X [T, in] and its output gradient dY [T, out]):
//   U = X A^T [T, r];  G = dY B [T, r];  dB += s dY^T U [out, r];  dA += s G^T X [r, in]
// — skinny products, never a dW [out, in]. dX already holds the adapter's term, since the backward's dX = dY W reads
// the effective W. A target whose output is a row block of a fused product (q/k/v of qkv, gate/up of gate_up) reads
// the fused dY [T, N]: dB gets rows [r0, r0 + out) of s dY^T U [N, r], and G = dY Bpad with Bpad [N, r] = B in those
// rows and zero elsewhere. Adapter gradients ACCUMULATE (+=) into the F32 grads.
//
// Storage: one flat buffer per role (F32 masters, F32 grads, BF16 working copy on CUDA; on the CPU the masters are the
// working weights), per layer and target A then B, each padded to 128 elements (zero padding). AdamW runs over the flat
// buffers as it does for a whole model.
//
// PEFT files: adapter_config.json ({"peft_type": "LORA", "r", "lora_alpha", "target_modules", "task_type":
// "CAUSAL_LM", "bias": "none", "base_model_name_or_path", ...}) and adapter_model.safetensors with F32 tensors
// `base_model.model.model.layers.{l}.{self_attn|mlp}.{module}.lora_A.weight` [r, in] and `...lora_B.weight` [out, r].
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "rlcu/config.h"
#include "rlcu/context.h"
#include "rlcu/model.h"
#include "rlcu/tensor.h"

namespace rlcu {

// The targets in kLoraTargetNames' order (rlcu/config.h, which also parses lists of them).
enum class LoraTarget : int { Q = 0, K, V, O, Gate, Up, Down };
const char* lora_target_name(LoraTarget t);  // "q_proj", ...

struct LoraSpec {
  int64_t rank = 0;
  double alpha = 16.0;
  std::array<bool, kLoraTargets> targets{};  // which modules carry an adapter
  double scaling() const { return alpha / static_cast<double>(rank); }
  std::string targets_string() const;  // "q_proj,k_proj,..." in module order
};

// A target's input and output sizes for config c.
struct LoraShape {
  int64_t in = 0, out = 0;
};
LoraShape lora_shape(const ModelConfig& c, LoraTarget t);
// Adapter parameters (A and B of every target of every layer), without padding.
int64_t lora_parameter_count(const ModelConfig& c, const LoraSpec& s);
// Bytes of the buffers a LoraAdapters allocates on `device`: working copy (BF16 on CUDA, none on the CPU), F32
// masters, F32 grads; and the effective weights of the target matrices (weight dtype).
struct LoraBufferBytes {
  size_t weights = 0, master = 0, grads = 0, effective = 0;
  int64_t elements = 0;  // padded elements of each flat adapter buffer
};
LoraBufferBytes lora_buffer_bytes(const ModelConfig& c, const LoraSpec& s, Device device);

// The PEFT name of a target's A ("lora_A") or B ("lora_B") in layer l.
std::string lora_peft_name(int64_t layer, LoraTarget t, bool b);

// A PEFT adapter directory read without allocating: its config (r, lora_alpha, target_modules) and the base it
// names. Throws naming adapter_config.json and the key for anything LoRA-for-causal-LM cannot be.
struct PeftAdapterInfo {
  LoraSpec spec;
  std::string base_model;  // base_model_name_or_path ("" when absent)
};
PeftAdapterInfo read_peft_config(const std::string& dir);

// The run's LoRA spec from lora.* and model.adapter (rank 0 with an adapter: the adapter's r, lora_alpha and
// target_modules); rank 0 without one = no LoRA. Throws naming the key and the adapter's file when they disagree.
LoraSpec lora_spec_from_config(const RunConfig& cfg);

struct LoraViews {
  Tensor a, b;  // [r, in], [out, r]
};

class LoraAdapters {
 public:
  // Adapters on `model` (loaded without gradients: the base is frozen): A drawn from `seed`, B = 0, and the model's
  // working weights switched to the effective buffer (initially equal to the base). `training` allocates the grads.
  LoraAdapters(Model& model, const LoraSpec& spec, uint64_t seed, bool training, Context& ctx);
  ~LoraAdapters();
  LoraAdapters(const LoraAdapters&) = delete;
  LoraAdapters& operator=(const LoraAdapters&) = delete;

  const LoraSpec& spec() const { return spec_; }
  float scaling() const { return static_cast<float>(spec_.scaling()); }
  bool has(LoraTarget t) const { return spec_.targets[static_cast<int>(t)]; }
  // Views for layer l and target t (empty when t is not a target): working weights, F32 masters, F32 grads.
  const LoraViews& weights(int64_t l, LoraTarget t) const { return w_[index(l, t)]; }
  const LoraViews& master(int64_t l, LoraTarget t) const { return m_[index(l, t)]; }
  const LoraViews& grads(int64_t l, LoraTarget t) const { return g_[index(l, t)]; }
  Tensor flat_weights() const { return flat_w_; }  // BF16 on CUDA; == flat_master() on the CPU
  Tensor flat_master() const { return flat_m_; }
  Tensor flat_grads() const { return flat_g_; }
  int64_t num_parameters() const { return num_params_; }
  // The adapter tensors under their PEFT names (offsets into the flat buffers), in layer and module order.
  const std::vector<HfTensor>& peft_tensors() const { return peft_; }

  void zero_grads(Context& ctx);
  // Recomputes the model's effective weights W = W0 + s B A from the working adapter weights (after each optimizer
  // step and after loading or restoring the adapters).
  void merge(Context& ctx);
  // Loads a PEFT adapter directory into the masters (and the working copy), then merges. The directory's
  // adapter_config.json must give this spec's rank, alpha and targets; every tensor must be present with its shape;
  // unknown tensors are errors. Errors name the file and the tensor.
  void load_peft(const std::string& dir, Context& ctx);
  // Writes adapter_config.json and adapter_model.safetensors (F32 from the masters) into `dir`.
  void save_peft(const std::string& dir, const std::string& base_model) const;
  Model& model() const { return model_; }

 private:
  size_t index(int64_t l, LoraTarget t) const { return static_cast<size_t>(l) * kLoraTargets + static_cast<int>(t); }
  Model& model_;
  LoraSpec spec_;
  Buffer w_buf_, m_buf_, g_buf_, eff_buf_;
  Tensor flat_w_, flat_m_, flat_g_;
  std::vector<LoraViews> w_, m_, g_;
  std::vector<HfTensor> peft_;
  int64_t num_params_ = 0;
};

// `rlcu merge-lora`: loads the base (`base_dir`, or the adapter's base_model_name_or_path when empty) on the CPU in
// F32, the adapter of `adapter_dir` on it, and writes a Hugging Face model directory `out_dir` whose target weights
// are W0 + (alpha/r) B A computed in F32 (stored as the base's `dtype`: BF16 stays BF16, else F32), with the base's
// config.json, generation_config.json and tokenizer files. Throws naming the file for any problem.
void merge_lora_to_dir(const std::string& adapter_dir, const std::string& out_dir, const std::string& base_dir);

// The view of target t's weight inside layer weights `w` (a row block of gate_up for gate / up).
Tensor lora_target_view(const LayerWeights& w, const ModelConfig& c, LoraTarget t);

}  // namespace rlcu
