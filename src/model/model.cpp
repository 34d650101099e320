// Weight layout and loading.
//
// Layout: every parameter of a role (working weights, F32 master, F32 grads) lives in one flat buffer of that role;
// the order is embed, then per layer input_norm, q, k, v, [q_bias, k_bias, v_bias], o, [o_bias],
// [q_norm, k_norm], post_norm, gate_up, down, then final_norm and [lm_head]. Each parameter starts at a multiple of
// kAlign elements and the padding is zero, so the flat buffers can be fed whole to sum_squares / adamw_update and
// all roles share element offsets. gate_proj and up_proj are fused into gate_up [2I, H] (gate rows first). When
// no padding separates them, q, k and v (and their biases) are also viewed as one fused projection qkv.
//
// Loading: every HF tensor the config implies must be present with exactly the implied shape and dtype F32, BF16 or
// F16 (converted to the weight dtype: F32 on the CPU, BF16 on CUDA; the F32 master on CUDA is converted from the
// file directly, not from the rounded copy). Unexpected tensors are errors, except `lm_head.weight` of a model with
// tied embeddings and rotary `inv_freq` buffers, which HF ignores as well. Model::inspect runs the same checks on
// the headers alone (no allocation, no tensor data); Model::buffer_bytes gives the sizes load() allocates, from the
// same layout function, for the memory plan.
#include "rlcu/model.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <filesystem>
#include <set>

#include "rlcu/layer.h"
#include "rlcu/ops.h"
#include "rlcu/safetensors.h"

namespace rlcu {

namespace fs = std::filesystem;

namespace {

constexpr int64_t kAlign = 128;

int64_t round_up(int64_t n, int64_t a) { return (n + a - 1) / a * a; }

// Calls f(slot, dims) for every parameter in layout order, then ties lm_head to embed when the config says so.
template <class F>
void for_each_param(const ModelConfig& c, ModelWeights& w, F&& f) {
  const int64_t H = c.hidden_size, I = c.intermediate_size, V = c.vocab_size, qd = c.q_dim(), kvd = c.kv_dim();
  w.layers.assign(static_cast<size_t>(c.num_layers), LayerWeights{});
  f(w.embed, {V, H});
  for (LayerWeights& L : w.layers) {
    f(L.input_norm, {H});
    f(L.q, {qd, H});
    f(L.k, {kvd, H});
    f(L.v, {kvd, H});
    if (c.qkv_bias) {
      f(L.q_bias, {qd});
      f(L.k_bias, {kvd});
      f(L.v_bias, {kvd});
    }
    f(L.o, {H, qd});
    if (c.o_bias) f(L.o_bias, {H});
    if (c.qk_norm) {
      f(L.q_norm, {c.head_dim});
      f(L.k_norm, {c.head_dim});
    }
    f(L.post_norm, {H});
    f(L.gate_up, {2 * I, H});
    f(L.down, {H, I});
  }
  f(w.final_norm, {H});
  if (c.tie_word_embeddings)
    w.lm_head = w.embed;
  else
    f(w.lm_head, {V, H});
}

int64_t layout_elements(const ModelConfig& c) {
  ModelWeights w;
  int64_t n = 0;
  for_each_param(c, w, [&](Tensor&, std::vector<int64_t> dims) {
    int64_t e = 1;
    for (int64_t d : dims) e *= d;
    n += round_up(e, kAlign);
  });
  return n;
}

ModelWeights bind(const ModelConfig& c, void* base, DType dt, Device dev) {
  ModelWeights w;
  int64_t off = 0;
  for_each_param(c, w, [&](Tensor& slot, std::vector<int64_t> dims) {
    slot = Tensor(static_cast<char*>(base) + static_cast<size_t>(off) * dtype_size(dt), dt, dev, dims);
    off += round_up(slot.numel(), kAlign);
  });
  for (LayerWeights& L : w.layers) {
    auto follows = [](const Tensor& a, const Tensor& b) {
      return static_cast<const char*>(a.data) + a.nbytes() == static_cast<const char*>(b.data);
    };
    const int64_t n = L.q.size(0) + L.k.size(0) + L.v.size(0);
    if (follows(L.q, L.k) && follows(L.k, L.v)) L.qkv = Tensor(L.q.data, dt, dev, {n, L.q.size(1)});
    if (!L.q_bias.empty() && follows(L.q_bias, L.k_bias) && follows(L.k_bias, L.v_bias))
      L.qkv_bias = Tensor(L.q_bias.data, dt, dev, {n});
  }
  return w;
}

// HF name -> view into `w` (a whole parameter or a row slice of gate_up).
std::vector<std::pair<std::string, Tensor>> hf_views(const ModelConfig& c, const ModelWeights& w) {
  std::vector<std::pair<std::string, Tensor>> v;
  v.emplace_back("model.embed_tokens.weight", w.embed);
  const int64_t I = c.intermediate_size;
  for (size_t l = 0; l < w.layers.size(); ++l) {
    const LayerWeights& L = w.layers[l];
    const std::string p = fmt::format("model.layers.{}.", l);
    v.emplace_back(p + "input_layernorm.weight", L.input_norm);
    v.emplace_back(p + "self_attn.q_proj.weight", L.q);
    v.emplace_back(p + "self_attn.k_proj.weight", L.k);
    v.emplace_back(p + "self_attn.v_proj.weight", L.v);
    v.emplace_back(p + "self_attn.o_proj.weight", L.o);
    if (c.qkv_bias) {
      v.emplace_back(p + "self_attn.q_proj.bias", L.q_bias);
      v.emplace_back(p + "self_attn.k_proj.bias", L.k_bias);
      v.emplace_back(p + "self_attn.v_proj.bias", L.v_bias);
    }
    if (c.o_bias) v.emplace_back(p + "self_attn.o_proj.bias", L.o_bias);
    if (c.qk_norm) {
      v.emplace_back(p + "self_attn.q_norm.weight", L.q_norm);
      v.emplace_back(p + "self_attn.k_norm.weight", L.k_norm);
    }
    v.emplace_back(p + "post_attention_layernorm.weight", L.post_norm);
    v.emplace_back(p + "mlp.gate_proj.weight", L.gate_up.slice_rows(0, I));
    v.emplace_back(p + "mlp.up_proj.weight", L.gate_up.slice_rows(I, 2 * I));
    v.emplace_back(p + "mlp.down_proj.weight", L.down);
  }
  v.emplace_back("model.norm.weight", w.final_norm);
  if (!c.tie_word_embeddings) v.emplace_back("lm_head.weight", w.lm_head);
  return v;
}

bool ignorable_tensor(const ModelConfig& c, const std::string& name, const ModelOptions& opt) {
  if (c.tie_word_embeddings && name == "lm_head.weight") return true;
  if (opt.sequence_classification && name == "score.weight") return true;
  const std::string suffix = ".rotary_emb.inv_freq";
  return name.size() > suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::string dims_str(const std::vector<int64_t>& d) {
  std::string s = "[";
  for (size_t i = 0; i < d.size(); ++i) s += (i ? ", " : "") + std::to_string(d[i]);
  return s + "]";
}

// Every tensor the config implies is in `set` with its shape and a float dtype; no tensor is left unexplained.
void validate_files(const ModelConfig& c, const SafetensorsSet& set, const ModelOptions& opt, const std::string& dir,
                    const ModelWeights& views) {
  const std::string config_path = (fs::path(dir) / "config.json").string();
  std::set<std::string> expected;
  for (const auto& [name, view] : hf_views(c, views)) {
    expected.insert(name);
    const SafetensorsSet::Located loc = set.find(name);
    if (!loc.entry)
      throw Error(fmt::format("{}: tensor `{}` is missing (required by {}: model_type {}, {} layers{})",
                              set.description(), name, config_path, c.model_type, c.num_layers,
                              c.tie_word_embeddings ? "" : ", untied embeddings"));
    std::vector<int64_t> want(view.shape, view.shape + view.ndim);
    if (loc.entry->shape != want)
      throw Error(fmt::format("{}: tensor `{}` has shape {} but {} implies {}", loc.file->path(), name,
                              loc.entry->shape_str(), config_path, dims_str(want)));
    if (loc.entry->dtype != "F32" && loc.entry->dtype != "BF16" && loc.entry->dtype != "F16")
      throw Error(fmt::format("{}: tensor `{}` has dtype {}; model weights must be F32, BF16 or F16",
                              loc.file->path(), name, loc.entry->dtype));
  }
  for (const std::string& name : set.names()) {
    if (expected.count(name)) continue;
    const SafetensorsSet::Located loc = set.find(name);
    if (ignorable_tensor(c, name, opt)) {
      spdlog::debug("{}: ignoring tensor `{}`", loc.file->path(), name);
      continue;
    }
    throw Error(fmt::format("{}: unexpected tensor `{}` (not part of the {} model described by {})", loc.file->path(),
                            name, c.model_type, config_path));
  }
}

// Shapes-only views of config c (data pointers into a fake base that is never dereferenced), for inspect().
ModelWeights shape_views(const ModelConfig& c) {
  alignas(256) static char base[256];
  return bind(c, base, DType::F32, Device::CPU);
}

}  // namespace

std::unique_ptr<Model> Model::load(const std::string& dir, const ModelOptions& opt, Context& ctx) {
  std::unique_ptr<Model> m(new Model());
  m->dir_ = dir;
  m->config_ = ModelConfig::load(dir);
  m->device_ = ctx.device();
  m->weight_dtype_ = m->device_ == Device::CPU ? DType::F32 : DType::BF16;
  const bool separate_master = opt.training && m->weight_dtype_ != DType::F32;

  const SafetensorsSet set = SafetensorsSet::open_dir(dir);
  if (opt.sequence_classification && !m->config_.tie_word_embeddings && !set.find("lm_head.weight").entry)
    m->config_.tie_word_embeddings = true;  // no LM head in a classifier: alias the embeddings
  const ModelConfig& c = m->config_;
  const int64_t total = layout_elements(c);
  const Device dev = m->device_;
  m->weights_buf_ = Buffer::alloc(static_cast<size_t>(total) * dtype_size(m->weight_dtype_), dev);
  m->weights_ = bind(c, m->weights_buf_.data(), m->weight_dtype_, dev);
  m->flat_weights_ = Tensor(m->weights_buf_.data(), m->weight_dtype_, dev, {total});

  // Validate the files against the config before reading any data.
  validate_files(c, set, opt, dir, m->weights_);

  // The other roles; padding between parameters is zero in every buffer.
  ctx.zero(m->flat_weights_);
  if (separate_master) {
    m->master_buf_ = Buffer::alloc(static_cast<size_t>(total) * 4, dev);
    m->master_ = bind(c, m->master_buf_.data(), DType::F32, dev);
    m->flat_master_ = Tensor(m->master_buf_.data(), DType::F32, dev, {total});
    ctx.zero(m->flat_master_);
  } else if (m->weight_dtype_ == DType::F32) {
    m->master_ = m->weights_;
    m->flat_master_ = m->flat_weights_;
  }
  if (opt.training) {
    m->grads_buf_ = Buffer::alloc(static_cast<size_t>(total) * 4, dev);
    m->grads_ = bind(c, m->grads_buf_.data(), DType::F32, dev);
    m->flat_grads_ = Tensor(m->grads_buf_.data(), DType::F32, dev, {total});
    ctx.zero(m->flat_grads_);
  }

  // The HF name table, then the data.
  auto view_at = [&](const Tensor& flat, int64_t offset, const Tensor& like) {
    if (flat.empty()) return Tensor();
    Tensor t = like;
    t.data = static_cast<char*>(flat.data) + static_cast<size_t>(offset) * dtype_size(flat.dtype);
    t.dtype = flat.dtype;
    return t;
  };
  std::vector<char> staging;
  for (const auto& [name, view] : hf_views(c, m->weights_)) {
    HfTensor h;
    h.name = name;
    h.shape.assign(view.shape, view.shape + view.ndim);
    h.offset = (static_cast<char*>(view.data) - static_cast<char*>(m->weights_buf_.data())) /
               static_cast<int64_t>(dtype_size(m->weight_dtype_));
    h.weight = view;
    h.master = view_at(m->flat_master_, h.offset, view);
    h.grad = view_at(m->flat_grads_, h.offset, view);
    m->num_params_ += view.numel();

    const SafetensorsSet::Located loc = set.find(name);
    if (dev == Device::CPU) {
      loc.file->read_converted(*loc.entry, view.data, view.dtype);
    } else {
      staging.resize(view.nbytes());
      loc.file->read_converted(*loc.entry, staging.data(), view.dtype);
      ctx.upload(view, staging.data());
      if (separate_master) {
        staging.resize(h.master.nbytes());
        loc.file->read_converted(*loc.entry, staging.data(), DType::F32);
        ctx.upload(h.master, staging.data());
      }
    }
    m->hf_.push_back(std::move(h));
  }

  const std::vector<float> inv = rope_inv_freq(c.rope, c.head_dim);
  m->inv_freq_buf_ = Buffer::alloc(inv.size() * 4, dev);
  m->inv_freq_ = Tensor(m->inv_freq_buf_.data(), DType::F32, dev, {static_cast<int64_t>(inv.size())});
  ctx.upload(m->inv_freq_, inv.data());
  ctx.synchronize("model weights loaded");
  spdlog::info("loaded {} ({} layers, {:.1f}M parameters) from {}: {} weights on {}{}", c.model_type, c.num_layers,
               m->num_params_ / 1e6, dir, dtype_name(m->weight_dtype_), device_name(dev),
               opt.training ? (separate_master ? ", f32 master and grads" : ", f32 grads") : "");
  return m;
}

std::vector<std::pair<std::string, Tensor>> Model::named_weights() const { return hf_views(config_, weights_); }

void Model::set_effective_weights(const ModelWeights& effective) {
  RLCU_CHECK(!effective_, "set_effective_weights: the model already has effective weights");
  RLCU_CHECK(effective.layers.size() == weights_.layers.size(), "set_effective_weights: {} layers, the model has {}",
             effective.layers.size(), weights_.layers.size());
  base_ = weights_;
  weights_ = effective;
  effective_ = true;
}

ModelConfig Model::inspect(const std::string& dir, const ModelOptions& opt) {
  ModelConfig c = ModelConfig::load(dir);
  const SafetensorsSet set = SafetensorsSet::open_dir(dir);
  if (opt.sequence_classification && !c.tie_word_embeddings && !set.find("lm_head.weight").entry)
    c.tie_word_embeddings = true;
  validate_files(c, set, opt, dir, shape_views(c));
  return c;
}

Model::BufferBytes Model::buffer_bytes(const ModelConfig& c, Device device, const ModelOptions& opt) {
  const DType wdt = device == Device::CPU ? DType::F32 : DType::BF16;
  BufferBytes b;
  b.elements = layout_elements(c);
  const size_t n = static_cast<size_t>(b.elements);
  b.weights = n * dtype_size(wdt) + rope_inv_freq(c.rope, c.head_dim).size() * 4;
  if (opt.training && wdt != DType::F32) b.master = n * 4;
  if (opt.training) b.grads = n * 4;
  return b;
}

bool Model::fused_qkv_layout(const ModelConfig& c) {
  const ModelWeights w = shape_views(c);
  for (const LayerWeights& l : w.layers)
    if (!fused_qkv_available(l, c)) return false;
  return true;
}

void Model::zero_grads(Context& ctx) {
  RLCU_CHECK(has_grads(), "zero_grads: the model was loaded without training buffers");
  ctx.zero(flat_grads_);
}

}  // namespace rlcu
