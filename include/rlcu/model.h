// Models: the Hugging Face config.json of Qwen2/2.5, Qwen3 and Llama 3.x, the weight layout (one flat buffer per
// role), loading from safetensors, and the decoder transformer's forward and backward over packed micro-batches,
// written once against include/rlcu/ops.h so that the same code runs on the CPU and on CUDA. Each layer's forward
// is rlcu/layer.h's, shared with the generation engine.
//
// The decoder (HF LlamaForCausalLM / Qwen2ForCausalLM / Qwen3ForCausalLM), per packed micro-batch of T tokens:
//   x = embed[ids]                                                            [T,H]
//   per layer:  h = rmsnorm(x) * w_in
//               q = h Wq^T (+bq) [T,nq,hd], k = h Wk^T (+bk), v = h Wv^T (+bv) [T,nkv,hd]   (bias: Qwen2 always)
//               Qwen3: q, k = per-head rmsnorm(q) * q_norm, rmsnorm(k) * k_norm
//               q, k = rope(q, k; positions, inv_freq)        (NeoX half split; default/linear/llama3 frequencies)
//               x = x + attention(q, k, v) Wo^T (+bo)          (causal within each sequence, GQA)
//               h = rmsnorm(x) * w_post;  x = x + (silu(h Wg^T) * (h Wu^T)) Wd^T   (Wg|Wu fused into gate_up)
//   h = rmsnorm(x) * w_final;  logprob[t] = log_softmax(h[t] W_head^T)[targets[t]], entropy[t] of that softmax,
//   W_head = lm_head, or embed when the embeddings are tied. targets[t] = -1: no next token (logprob 0).
//
// Gradients: backward(dlogprob, dentropy) ACCUMULATES (+=) into the model's F32 parameter gradients (zero them with
// Model::zero_grads); activation gradients are internal and overwrite.
#pragma once

#include <cstdint>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <utility>
#include <vector>

#include "rlcu/context.h"
#include "rlcu/tensor.h"

namespace rlcu {

// ---- config.json ------------------------------------------------------------------------------------------------
enum class RopeType { Default, Linear, Llama3 };

struct RopeConfig {
  RopeType type = RopeType::Default;
  double theta = 10000.0;
  double factor = 1.0;                           // linear and llama3
  double low_freq_factor = 1.0;                  // llama3
  double high_freq_factor = 4.0;                 // llama3
  int64_t original_max_position_embeddings = 0;  // llama3
};

struct ModelConfig {
  std::string model_type;  // "qwen2", "qwen3" or "llama"
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;                 // config `head_dim`, else hidden_size / num_heads
  int64_t max_position_embeddings = 0;  // 0 when absent
  double rms_norm_eps = 1e-6;
  bool qkv_bias = false;  // q/k/v projections have a bias (Qwen2; `attention_bias` elsewhere)
  bool o_bias = false;    // o_proj has a bias (`attention_bias` for Llama and Qwen3)
  bool qk_norm = false;   // per-head RMSNorm of q and k before rope (Qwen3)
  bool tie_word_embeddings = false;
  RopeConfig rope;
  DType checkpoint_dtype = DType::F32;  // `dtype` / `torch_dtype`, informative
  std::vector<int32_t> eos_token_ids;   // generation_config.json first, then config.json; may be empty
  int32_t bos_token_id = -1;            // -1 when absent

  int64_t q_dim() const { return num_heads * head_dim; }
  int64_t kv_dim() const { return num_kv_heads * head_dim; }

  // Parses a config.json object (transformers 4.x or 5.x form); `source` (the file) prefixes every error message.
  static ModelConfig from_json(const nlohmann::json& j, const std::string& source);
  // DIR/config.json, plus eos/bos ids from DIR/generation_config.json when present.
  static ModelConfig load(const std::string& dir);
};

// Rotary inverse frequencies [head_dim/2]: 1 / theta^(2i/hd), then scaled as HF's `_compute_default_rope_parameters`,
// `_compute_linear_scaling_rope_parameters` or `_compute_llama3_parameters`. Computed in double, rounded to float.
std::vector<float> rope_inv_freq(const RopeConfig& rope, int64_t head_dim);

// ---- weights ----------------------------------------------------------------------------------------------------
struct LayerWeights {
  Tensor input_norm;                      // [H]
  Tensor q, k, v, o;                      // [nq*hd, H], [nkv*hd, H], [nkv*hd, H], [H, nq*hd]
  Tensor q_bias, k_bias, v_bias, o_bias;  // [nq*hd], [nkv*hd], [nkv*hd], [H]; empty when absent
  // q, k, v as one [nq*hd + 2*nkv*hd, H] projection (and their biases as one vector) when they are contiguous in
  // the flat buffer (no alignment padding between them); empty otherwise.
  Tensor qkv, qkv_bias;
  Tensor q_norm, k_norm;                  // [hd]; empty unless qk_norm
  Tensor post_norm;                       // [H]
  Tensor gate_up;                         // [2I, H]: rows [0, I) gate_proj, rows [I, 2I) up_proj
  Tensor down;                            // [H, I]
};

// Views of one role (weights, F32 master, or F32 grads) into its flat buffer; all roles share element offsets.
struct ModelWeights {
  Tensor embed;  // [V, H]
  std::vector<LayerWeights> layers;
  Tensor final_norm;  // [H]
  Tensor lm_head;     // [V, H]; the same view as `embed` when tied
};

// One Hugging Face tensor and where it lives: a whole parameter, or a row slice of a fused one (gate/up).
struct HfTensor {
  std::string name;  // e.g. "model.layers.0.mlp.up_proj.weight"
  std::vector<int64_t> shape;
  int64_t offset = 0;           // element offset into each flat buffer
  Tensor weight, master, grad;  // master/grad empty when not allocated
};

struct ModelOptions {
  bool training = false;  // allocate F32 gradients (and, on CUDA, F32 master weights)
  // A Hugging Face *ForSequenceClassification directory (a reward model): `score.weight` is left to the caller and
  // a missing `lm_head.weight` is allowed (the head then aliases the embeddings; its logits are not used).
  bool sequence_classification = false;
};

// A loaded model on the context's device. On the CPU weights are F32 and double as the master copy; on CUDA the
// working weights are BF16 and a separate F32 master copy exists when training.
class Model {
 public:
  // Loads DIR (config.json, model.safetensors or model.safetensors.index.json) onto ctx's device. Throws
  // rlcu::Error naming the file and the tensor or field for any problem.
  static std::unique_ptr<Model> load(const std::string& dir, const ModelOptions& opt, Context& ctx);
  // Checks DIR as load() does (config.json; every tensor's presence, shape and dtype in the safetensors headers)
  // without reading tensor data or allocating; returns the config with load()'s adjustments.
  static ModelConfig inspect(const std::string& dir, const ModelOptions& opt);
  // The buffers load() allocates for a model of config `c` on `device` (memory plans are computed from this).
  struct BufferBytes {
    size_t weights = 0;  // working weights (F32 on the CPU, BF16 on CUDA) and the rope table
    size_t master = 0;   // separate F32 master weights (CUDA, training)
    size_t grads = 0;    // F32 gradients (training)
    int64_t elements = 0;  // padded elements of each flat buffer
  };
  static BufferBytes buffer_bytes(const ModelConfig& c, Device device, const ModelOptions& opt);
  // Whether the layout gives every layer fused q/k/v views (weights and gradients alike; see Transformer).
  static bool fused_qkv_layout(const ModelConfig& c);

  const ModelConfig& config() const { return config_; }
  const std::string& dir() const { return dir_; }
  Device device() const { return device_; }
  DType weight_dtype() const { return weight_dtype_; }
  bool has_grads() const { return grads_buf_.data() != nullptr; }

  const ModelWeights& weights() const { return weights_; }
  // The frozen base weights as loaded: == weights() unless LoRA adapters (rlcu/lora.h) pointed weights() at their
  // effective buffer W0 + s B A; the reference model of a LoRA run scores with these.
  const ModelWeights& base_weights() const { return effective_ ? base_ : weights_; }
  // Makes weights() view `effective` (same shapes; LoraAdapters owns the buffer). base_weights() keeps the base.
  void set_effective_weights(const ModelWeights& effective);
  const ModelWeights& master() const { return master_; }  // == weights() on the CPU
  const ModelWeights& grads() const { return grads_; }
  const std::vector<HfTensor>& hf_tensors() const { return hf_; }
  // Every HF tensor name with its view into weights() (the effective weights when LoRA adapters are attached).
  std::vector<std::pair<std::string, Tensor>> named_weights() const;
  const Tensor& inv_freq() const { return inv_freq_; }  // F32 [hd/2] on the model's device

  // Flat views of the whole buffers ([padded parameter count]); padding between parameters stays zero.
  Tensor flat_weights() const { return flat_weights_; }
  Tensor flat_master() const { return flat_master_; }
  Tensor flat_grads() const { return flat_grads_; }
  int64_t num_parameters() const { return num_params_; }  // without padding; tied embeddings counted once

  void zero_grads(Context& ctx);

 private:
  Model() = default;
  ModelConfig config_;
  std::string dir_;
  Device device_ = Device::CPU;
  DType weight_dtype_ = DType::F32;
  Buffer weights_buf_, master_buf_, grads_buf_, inv_freq_buf_;
  ModelWeights weights_, master_, grads_, base_;
  bool effective_ = false;
  Tensor flat_weights_, flat_master_, flat_grads_, inv_freq_;
  std::vector<HfTensor> hf_;
  int64_t num_params_ = 0;
};

// ---- packed micro-batches ---------------------------------------------------------------------------------------
// Host side: sequences packed back to back. add_sequence(ids) appends positions 0..n-1 and targets = the next id
// (-1 for the last token); add_sequence(ids, targets) takes explicit targets.
struct PackedBatch {
  std::vector<int32_t> ids, positions, targets;
  std::vector<int32_t> cu_seqlens{0};
  int32_t max_seqlen = 0;

  void add_sequence(const std::vector<int32_t>& seq);
  void add_sequence(const std::vector<int32_t>& seq, const std::vector<int32_t>& seq_targets);
  int64_t num_tokens() const { return static_cast<int64_t>(ids.size()); }
  int num_seqs() const { return static_cast<int>(cu_seqlens.size()) - 1; }
  void clear();
};

// Device side: I32 views; ids/positions/targets [T], cu_seqlens [S+1].
struct DeviceBatch {
  Tensor ids, positions, targets, cu_seqlens;
  int64_t num_tokens = 0;
  int num_seqs = 0;
  int max_seqlen = 0;
};

// ---- the transformer ----------------------------------------------------------------------------------------------
class LoraAdapters;

struct TransformerOptions {
  int64_t max_tokens = 4096;     // token budget of one packed micro-batch; all activations are sized for it
  DType act_dtype = DType::F32;  // activations: F32 (CPU) or BF16/F32 (CUDA); see default_act_dtype
  bool training = false;         // keep what backward needs
  bool checkpointing = false;    // training: keep only each layer's input, recompute the layer in backward
  float inv_temperature = 1.0f;  // logits are scaled by this before the softmax
  bool fp32_residual = false;    // keep the residual stream (each layer's input and x_mid) in F32
  // training: keep the log-prob head's softmax ([max_tokens, vocab] in act_dtype, ops::LogprobParams::probs) so
  // that backward reads it instead of recomputing the logits product
  bool save_head_probs = false;
  // LoRA (rlcu/lora.h): training updates these adapters only (the base is frozen: the model has no gradients, and
  // the backward computes no parameter gradient of it). lora_rank sizes the adapters' backward scratch and must be
  // lora's rank; a memory plan sets it without adapters.
  LoraAdapters* lora = nullptr;
  int64_t lora_rank = 0;
  // Read Model::base_weights() instead of weights(): a LoRA run's reference model (the adapters off).
  bool base_weights = false;
};

DType default_act_dtype(Device d);  // F32 on the CPU, BF16 on CUDA

// Forward/backward driver over one model. All activation memory is allocated once, in the constructor, for
// options.max_tokens tokens; forward/backward allocate nothing.
class Transformer {
 public:
  Transformer(Model& model, const TransformerOptions& opt, Context& ctx);
  ~Transformer();
  Transformer(const Transformer&) = delete;
  Transformer& operator=(const Transformer&) = delete;

  // Copies a host batch into this driver's I32 staging buffers. Throws rlcu::Error when it exceeds the token
  // budget or holds an id outside the vocabulary.
  DeviceBatch upload(const PackedBatch& batch, Context& ctx);
  // What a forward is for: a backward follows (training), or only its log-probs are read (scoring with a training
  // driver, e.g. recomputed old log-probs: the head's softmax is not saved, and no backward may follow).
  enum class ForwardUse { ForBackward, ScoreOnly };
  // logprob [T] F32 (overwrite); entropy [T] F32 or an empty Tensor. The batch must stay valid until backward.
  // The log-probs are the same bits for either use.
  void forward(const Tensor& logprob, const Tensor& entropy, const DeviceBatch& batch, Context& ctx,
               ForwardUse use = ForwardUse::ForBackward);
  // Backward of the last forward (training only): dlogprob [T] F32, dentropy [T] F32 or empty. Parameter
  // gradients accumulate into model.grads().
  void backward(const Tensor& dlogprob, const Tensor& dentropy, Context& ctx);

  // Backward from a gradient of the final hidden states (e.g. a value head's), instead of the log-prob head:
  // write d(final_hidden()) into final_hidden_grad_buffer() [T, H] (act dtype) after forward, then call this.
  // The head's parameters get no gradient; the rest accumulate as in backward().
  Tensor final_hidden_grad_buffer() const;
  void backward_hidden(const Tensor& dhidden, Context& ctx);

  const TransformerOptions& options() const { return opt_; }
  size_t activation_bytes() const;
  // The activation arena the constructor allocates for a model of config `c` with options `opt`
  // (fused_qkv = Model::fused_qkv_layout(c)); activation_bytes() of such a driver returns the same.
  static size_t plan_bytes(const ModelConfig& c, const TransformerOptions& opt, bool fused_qkv);
  // Final hidden states after the last norm, [T, H] of the last forward (e.g. for a value head).
  Tensor final_hidden() const;

 private:
  struct State;
  void backward_from_final(const Tensor& dh, Context& ctx);
  std::unique_ptr<State> s_;
  Model& model_;
  TransformerOptions opt_;
};

}  // namespace rlcu
