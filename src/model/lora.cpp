// LoRA adapters: layout, initialisation, the effective-weight merge and the PEFT files (see include/rlcu/lora.h).
#include "rlcu/lora.h"

#include <spdlog/spdlog.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "rlcu/ops.h"
#include "rlcu/rng.h"
#include "rlcu/safetensors.h"

namespace rlcu {

namespace fs = std::filesystem;

namespace {

constexpr int64_t kAlign = 128;
int64_t round_up(int64_t n, int64_t a) { return (n + a - 1) / a * a; }
const char* const* const kNames = kLoraTargetNames;
LoraTarget target_at(int i) { return static_cast<LoraTarget>(i); }

// Calls f(layer, target, a_dims, b_dims) for every adapter in layout order.
template <class F>
void for_each_adapter(const ModelConfig& c, const LoraSpec& s, F&& f) {
  for (int64_t l = 0; l < c.num_layers; ++l)
    for (int i = 0; i < kLoraTargets; ++i) {
      if (!s.targets[static_cast<size_t>(i)]) continue;
      const LoraShape sh = lora_shape(c, target_at(i));
      f(l, target_at(i), std::vector<int64_t>{s.rank, sh.in}, std::vector<int64_t>{sh.out, s.rank});
    }
}

int64_t adapter_elements(const ModelConfig& c, const LoraSpec& s) {
  int64_t n = 0;
  for_each_adapter(c, s, [&](int64_t, LoraTarget, const std::vector<int64_t>& a, const std::vector<int64_t>& b) {
    n += round_up(a[0] * a[1], kAlign) + round_up(b[0] * b[1], kAlign);
  });
  return n;
}

bool any_qkv(const LoraSpec& s) { return s.targets[0] || s.targets[1] || s.targets[2]; }
bool all_qkv(const LoraSpec& s) { return s.targets[0] && s.targets[1] && s.targets[2]; }
bool any_gate_up(const LoraSpec& s) { return s.targets[4] || s.targets[5]; }

// The matrices of a layer that get an effective copy, in buffer order, as (slot, dims).
template <class F>
void for_each_effective(const ModelConfig& c, const LoraSpec& s, LayerWeights& L, F&& f) {
  const int64_t H = c.hidden_size, I = c.intermediate_size, qd = c.q_dim(), kvd = c.kv_dim();
  if (s.targets[0]) f(L.q, std::vector<int64_t>{qd, H});
  if (s.targets[1]) f(L.k, std::vector<int64_t>{kvd, H});
  if (s.targets[2]) f(L.v, std::vector<int64_t>{kvd, H});
  if (s.targets[3]) f(L.o, std::vector<int64_t>{H, qd});
  if (any_gate_up(s)) f(L.gate_up, std::vector<int64_t>{2 * I, H});
  if (s.targets[6]) f(L.down, std::vector<int64_t>{H, I});
}

int64_t effective_elements(const ModelConfig& c, const LoraSpec& s) {
  int64_t n = 0;
  LayerWeights L;
  for_each_effective(c, s, L, [&](Tensor&, const std::vector<int64_t>& d) { n += round_up(d[0] * d[1], kAlign); });
  return n * c.num_layers;
}

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(fmt::format("{}: cannot open", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

const char* lora_target_name(LoraTarget t) { return kNames[static_cast<int>(t)]; }

std::string LoraSpec::targets_string() const {
  std::string s;
  for (int i = 0; i < kLoraTargets; ++i)
    if (targets[static_cast<size_t>(i)]) s += (s.empty() ? "" : ",") + std::string(kNames[i]);
  return s;
}

LoraShape lora_shape(const ModelConfig& c, LoraTarget t) {
  const int64_t H = c.hidden_size, I = c.intermediate_size;
  switch (t) {
    case LoraTarget::Q: return {H, c.q_dim()};
    case LoraTarget::K:
    case LoraTarget::V: return {H, c.kv_dim()};
    case LoraTarget::O: return {c.q_dim(), H};
    case LoraTarget::Gate:
    case LoraTarget::Up: return {H, I};
    case LoraTarget::Down: return {I, H};
  }
  return {};
}

int64_t lora_parameter_count(const ModelConfig& c, const LoraSpec& s) {
  int64_t n = 0;
  for_each_adapter(c, s, [&](int64_t, LoraTarget, const std::vector<int64_t>& a, const std::vector<int64_t>& b) {
    n += a[0] * a[1] + b[0] * b[1];
  });
  return n;
}

LoraBufferBytes lora_buffer_bytes(const ModelConfig& c, const LoraSpec& s, Device device) {
  LoraBufferBytes b;
  b.elements = adapter_elements(c, s);
  const size_t n = static_cast<size_t>(b.elements);
  const DType wd = device == Device::CPU ? DType::F32 : DType::BF16;
  b.master = n * 4;
  b.grads = n * 4;
  b.weights = device == Device::CPU ? 0 : n * 2;
  b.effective = static_cast<size_t>(effective_elements(c, s)) * dtype_size(wd);
  return b;
}

std::string lora_peft_name(int64_t layer, LoraTarget t, bool b) {
  const int i = static_cast<int>(t);
  return fmt::format("base_model.model.model.layers.{}.{}.{}.{}.weight", layer, i <= 3 ? "self_attn" : "mlp",
                     kNames[i], b ? "lora_B" : "lora_A");
}

Tensor lora_target_view(const LayerWeights& w, const ModelConfig& c, LoraTarget t) {
  const int64_t I = c.intermediate_size;
  switch (t) {
    case LoraTarget::Q: return w.q;
    case LoraTarget::K: return w.k;
    case LoraTarget::V: return w.v;
    case LoraTarget::O: return w.o;
    case LoraTarget::Gate: return w.gate_up.slice_rows(0, I);
    case LoraTarget::Up: return w.gate_up.slice_rows(I, 2 * I);
    case LoraTarget::Down: return w.down;
  }
  return Tensor();
}

PeftAdapterInfo read_peft_config(const std::string& dir) {
  const std::string path = (fs::path(dir) / "adapter_config.json").string();
  if (!fs::is_regular_file(path)) throw Error(fmt::format("{}: missing (not a PEFT adapter directory)", path));
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_text(path));
  } catch (const nlohmann::json::exception& e) {
    throw Error(fmt::format("{}: invalid JSON: {}", path, e.what()));
  }
  if (!j.is_object()) throw Error(fmt::format("{}: expected a JSON object", path));
  auto need = [&](const char* key) -> const nlohmann::json& {
    if (!j.contains(key)) throw Error(fmt::format("{}: key \"{}\" is missing", path, key));
    return j[key];
  };
  PeftAdapterInfo info;
  if (need("peft_type") != "LORA")
    throw Error(fmt::format("{}: \"peft_type\" is {}, expected \"LORA\"", path, j["peft_type"].dump()));
  const nlohmann::json& r = need("r");
  if (!r.is_number_integer() || r.get<int64_t>() < 1)
    throw Error(fmt::format("{}: \"r\" must be an integer >= 1, got {}", path, r.dump()));
  info.spec.rank = r.get<int64_t>();
  const nlohmann::json& a = need("lora_alpha");
  if (!a.is_number() || !(a.get<double>() > 0))
    throw Error(fmt::format("{}: \"lora_alpha\" must be a number > 0, got {}", path, a.dump()));
  info.spec.alpha = a.get<double>();
  const nlohmann::json& tm = need("target_modules");
  std::string list;
  if (tm.is_string()) {
    list = tm.get<std::string>();
    if (list == "all-linear") list = "all";
  } else if (tm.is_array()) {
    for (const auto& e : tm) {
      if (!e.is_string()) throw Error(fmt::format("{}: \"target_modules\" must hold strings, got {}", path, e.dump()));
      list += (list.empty() ? "" : ",") + e.get<std::string>();
    }
  } else {
    throw Error(fmt::format("{}: \"target_modules\" must be a list of module names, got {}", path, tm.dump()));
  }
  info.spec.targets = parse_lora_targets(list, path + ": \"target_modules\"");
  auto must = [&](const char* key, const nlohmann::json& want) {
    if (j.contains(key) && !j[key].is_null() && j[key] != want)
      throw Error(fmt::format("{}: \"{}\" is {}; rlcu reads LoRA adapters with {} = {}", path, key, j[key].dump(), key,
                              want.dump()));
  };
  must("bias", "none");
  must("use_dora", false);
  must("use_rslora", false);
  must("fan_in_fan_out", false);
  if (j.contains("task_type") && !j["task_type"].is_null()) must("task_type", "CAUSAL_LM");
  for (const char* key : {"modules_to_save", "layers_to_transform", "rank_pattern", "alpha_pattern"})
    if (j.contains(key) && !j[key].is_null() && !(j[key].is_object() && j[key].empty()) &&
        !(j[key].is_array() && j[key].empty()))
      throw Error(fmt::format("{}: \"{}\" is {}; rlcu reads LoRA adapters without it", path, key, j[key].dump()));
  if (j.contains("base_model_name_or_path") && j["base_model_name_or_path"].is_string())
    info.base_model = j["base_model_name_or_path"].get<std::string>();
  return info;
}

LoraSpec lora_spec_from_config(const RunConfig& cfg) {
  LoraSpec s;
  s.rank = cfg.lora.rank;
  s.alpha = cfg.lora.alpha;
  s.targets = parse_lora_targets(cfg.lora.targets, "lora.targets");
  if (cfg.model.adapter.empty()) return s;
  const PeftAdapterInfo info = read_peft_config(cfg.model.adapter);
  if (s.rank == 0) return info.spec;
  const std::string f = (fs::path(cfg.model.adapter) / "adapter_config.json").string();
  if (s.rank != info.spec.rank)
    throw Error(fmt::format("lora.rank = {} but model.adapter's {} has r = {}", s.rank, f, info.spec.rank));
  if (s.alpha != info.spec.alpha)
    throw Error(fmt::format("lora.alpha = {} but model.adapter's {} has lora_alpha = {}", s.alpha, f,
                            info.spec.alpha));
  if (s.targets != info.spec.targets)
    throw Error(fmt::format("lora.targets = {} but model.adapter's {} has target_modules {}", s.targets_string(), f,
                            info.spec.targets_string()));
  return s;
}

LoraAdapters::LoraAdapters(Model& model, const LoraSpec& spec, uint64_t seed, bool training, Context& ctx)
    : model_(model), spec_(spec) {
  const ModelConfig& c = model.config();
  RLCU_CHECK(spec.rank >= 1, "LoRA rank {}", spec.rank);
  RLCU_CHECK(!model.has_grads(), "LoRA needs a frozen base (a model loaded without gradients)");
  const Device dev = model.device();
  const int64_t n = adapter_elements(c, spec);
  m_buf_ = Buffer::alloc(static_cast<size_t>(n) * 4, dev);
  flat_m_ = Tensor(m_buf_.data(), DType::F32, dev, {n});
  ctx.zero(flat_m_);
  if (dev == Device::CPU) {
    flat_w_ = flat_m_;
  } else {
    w_buf_ = Buffer::alloc(static_cast<size_t>(n) * 2, dev);
    flat_w_ = Tensor(w_buf_.data(), DType::BF16, dev, {n});
  }
  if (training) {
    g_buf_ = Buffer::alloc(static_cast<size_t>(n) * 4, dev);
    flat_g_ = Tensor(g_buf_.data(), DType::F32, dev, {n});
    ctx.zero(flat_g_);
  }
  const size_t slots = static_cast<size_t>(c.num_layers) * kLoraTargets;
  w_.assign(slots, {});
  m_.assign(slots, {});
  g_.assign(slots, {});
  auto at = [](const Tensor& flat, int64_t off, const std::vector<int64_t>& d) {
    if (flat.empty()) return Tensor();
    return Tensor(static_cast<char*>(flat.data) + static_cast<size_t>(off) * dtype_size(flat.dtype), flat.dtype,
                  flat.device, d);
  };
  // Views, PEFT names and the initial A: U(-1/sqrt(in), 1/sqrt(in)) (PEFT's kaiming_uniform_(a = sqrt(5))).
  std::vector<float> host(static_cast<size_t>(n), 0.0f);
  int64_t off = 0;
  for_each_adapter(c, spec, [&](int64_t l, LoraTarget t, const std::vector<int64_t>& ad, const std::vector<int64_t>& bd) {
    const size_t k = index(l, t);
    const int64_t na = ad[0] * ad[1], nb = bd[0] * bd[1];
    w_[k] = {at(flat_w_, off, ad), at(flat_w_, off + round_up(na, kAlign), bd)};
    m_[k] = {at(flat_m_, off, ad), at(flat_m_, off + round_up(na, kAlign), bd)};
    g_[k] = {at(flat_g_, off, ad), at(flat_g_, off + round_up(na, kAlign), bd)};
    const double bound = 1.0 / std::sqrt(static_cast<double>(ad[1]));
    const uint64_t key = mix_key(mix_key(seed ^ 0x4c6f5241ull, static_cast<uint64_t>(l)), static_cast<uint64_t>(t));
    for (int64_t i = 0; i < na; ++i)
      host[static_cast<size_t>(off + i)] = static_cast<float>((2.0 * unit_open(mix_key(key, i)) - 1.0) * bound);
    for (int b = 0; b < 2; ++b) {
      HfTensor h;
      h.name = lora_peft_name(l, t, b == 1);
      h.shape = b ? bd : ad;
      h.offset = b ? off + round_up(na, kAlign) : off;
      h.weight = b ? w_[k].b : w_[k].a;
      h.master = b ? m_[k].b : m_[k].a;
      h.grad = b ? g_[k].b : g_[k].a;
      peft_.push_back(std::move(h));
    }
    num_params_ += na + nb;
    off += round_up(na, kAlign) + round_up(nb, kAlign);
  });
  ctx.upload(flat_m_, host.data());
  if (flat_w_.data != flat_m_.data) ops::cast(flat_w_, flat_m_, ctx);

  // The effective weights: a copy of each target matrix (gate_up whole), the other views left on the base.
  const int64_t ne = effective_elements(c, spec);
  const DType wd = model.weight_dtype();
  eff_buf_ = Buffer::alloc(static_cast<size_t>(ne) * dtype_size(wd), dev);
  ModelWeights eff = model.weights();
  int64_t eoff = 0;
  for (LayerWeights& L : eff.layers) {
    const LayerWeights base = L;
    for_each_effective(c, spec, L, [&](Tensor& slot, const std::vector<int64_t>& d) {
      const Tensor src = slot;
      slot = Tensor(static_cast<char*>(eff_buf_.data()) + static_cast<size_t>(eoff) * dtype_size(wd), wd, dev, d);
      ctx.copy(slot, src);
      eoff += round_up(d[0] * d[1], kAlign);
    });
    if (any_qkv(spec)) {
      L.qkv = Tensor();
      auto follows = [](const Tensor& a, const Tensor& b) {
        return static_cast<const char*>(a.data) + a.nbytes() == static_cast<const char*>(b.data);
      };
      if (all_qkv(spec) && !base.qkv.empty() && follows(L.q, L.k) && follows(L.k, L.v))
        L.qkv = Tensor(L.q.data, wd, dev, {L.q.size(0) + L.k.size(0) + L.v.size(0), L.q.size(1)});
    }
  }
  model.set_effective_weights(eff);
  ctx.synchronize("LoRA adapters initialised");
  spdlog::info("LoRA: rank {}, alpha {}, targets {}: {:.2f}M adapter parameters; effective weights {:.1f} MiB",
               spec.rank, spec.alpha, spec.targets_string(), num_params_ / 1e6,
               static_cast<double>(ne) * dtype_size(wd) / (1 << 20));
}

LoraAdapters::~LoraAdapters() = default;

void LoraAdapters::zero_grads(Context& ctx) {
  if (!flat_g_.empty()) ctx.zero(flat_g_);
}

void LoraAdapters::merge(Context& ctx) {
  const ModelConfig& c = model_.config();
  ops::GemmParams p;
  p.alpha = scaling();
  p.beta = 1.0f;
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const LayerWeights& E = model_.weights().layers[static_cast<size_t>(l)];
    const LayerWeights& B0 = model_.base_weights().layers[static_cast<size_t>(l)];
    for (int i = 0; i < kLoraTargets; ++i) {
      if (!spec_.targets[static_cast<size_t>(i)]) continue;
      const LoraTarget t = target_at(i);
      const Tensor base = lora_target_view(B0, c, t);
      p.addend = &base;
      const LoraViews& v = w_[index(l, t)];
      ops::gemm(lora_target_view(E, c, t), v.b, v.a, p, ctx);  // W = s B A + W0
    }
  }
}

void LoraAdapters::load_peft(const std::string& dir, Context& ctx) {
  const PeftAdapterInfo info = read_peft_config(dir);
  const std::string cfg_path = (fs::path(dir) / "adapter_config.json").string();
  if (info.spec.rank != spec_.rank || info.spec.alpha != spec_.alpha || info.spec.targets != spec_.targets)
    throw Error(fmt::format("{}: r = {}, lora_alpha = {}, target_modules = {} differ from the run's lora.rank = {}, "
                            "lora.alpha = {}, lora.targets = {}",
                            cfg_path, info.spec.rank, info.spec.alpha, info.spec.targets_string(), spec_.rank,
                            spec_.alpha, spec_.targets_string()));
  const std::string path = (fs::path(dir) / "adapter_model.safetensors").string();
  if (!fs::is_regular_file(path)) throw Error(fmt::format("{}: missing (not a PEFT adapter directory)", path));
  const SafetensorsFile f = SafetensorsFile::open(path);
  const ModelConfig& c = model_.config();
  std::map<std::string, const HfTensor*> expected;
  for (const HfTensor& h : peft_) expected[h.name] = &h;
  for (const auto& [name, e] : f.tensors()) {
    if (expected.count(name)) continue;
    throw Error(fmt::format("{}: unexpected tensor `{}` (not a LoRA tensor of target_modules {} on the {}-layer {} "
                            "base {})",
                            path, name, spec_.targets_string(), c.num_layers, c.model_type, model_.dir()));
  }
  std::vector<float> host;
  for (const HfTensor& h : peft_) {
    const SafetensorsEntry* e = f.find(h.name);
    if (!e) throw Error(fmt::format("{}: tensor `{}` is missing (target_modules {} of {})", path, h.name,
                                    spec_.targets_string(), cfg_path));
    if (e->shape != h.shape) {
      const bool is_b = h.name.find(".lora_B.") != std::string::npos;
      const bool rank_ok = e->shape.size() == 2 && e->shape[is_b ? 1 : 0] == spec_.rank;
      if (e->shape.size() == 2 && !rank_ok)
        throw Error(fmt::format("{}: tensor `{}` has shape {}: rank {} but {} says r = {}", path, h.name,
                                e->shape_str(), e->shape[is_b ? 1 : 0], cfg_path, spec_.rank));
      throw Error(fmt::format("{}: tensor `{}` has shape {} but the base {} implies [{}, {}]", path, h.name,
                              e->shape_str(), model_.dir(), h.shape[0], h.shape[1]));
    }
    if (e->dtype != "F32" && e->dtype != "BF16" && e->dtype != "F16")
      throw Error(fmt::format("{}: tensor `{}` has dtype {}; adapter weights must be F32, BF16 or F16", path, h.name,
                              e->dtype));
    host.resize(static_cast<size_t>(e->numel()));
    f.read_converted(*e, host.data(), DType::F32);
    ctx.upload(h.master, host.data());
  }
  if (flat_w_.data != flat_m_.data) ops::cast(flat_w_, flat_m_, ctx);
  merge(ctx);
  ctx.synchronize("LoRA adapter loaded");
  spdlog::info("LoRA: adapter loaded from {}", dir);
}

void LoraAdapters::save_peft(const std::string& dir, const std::string& base_model) const {
  nlohmann::ordered_json j;
  j["alpha_pattern"] = nlohmann::json::object();
  j["auto_mapping"] = nullptr;
  j["base_model_name_or_path"] = base_model;
  j["bias"] = "none";
  j["fan_in_fan_out"] = false;
  j["inference_mode"] = true;
  j["init_lora_weights"] = true;
  j["layers_to_transform"] = nullptr;
  j["lora_alpha"] = spec_.alpha;
  j["lora_dropout"] = 0.0;
  j["modules_to_save"] = nullptr;
  j["peft_type"] = "LORA";
  j["r"] = spec_.rank;
  j["rank_pattern"] = nlohmann::json::object();
  j["revision"] = nullptr;
  nlohmann::json tm = nlohmann::json::array();
  for (int i = 0; i < kLoraTargets; ++i)
    if (spec_.targets[static_cast<size_t>(i)]) tm.push_back(kNames[i]);
  j["target_modules"] = tm;
  j["task_type"] = "CAUSAL_LM";
  j["use_dora"] = false;
  j["use_rslora"] = false;
  const fs::path p = fs::path(dir) / "adapter_config.json";
  {
    std::ofstream out(p, std::ios::binary | std::ios::trunc);
    if (!out) throw Error(fmt::format("{}: cannot create", p.string()));
    out << j.dump(2) << "\n";
    if (!out) throw Error(fmt::format("{}: write failed", p.string()));
  }
  std::vector<SafetensorsWriteItem> items;
  for (const HfTensor& h : peft_) items.push_back({h.name, h.master, DType::F32, h.shape});
  write_safetensors((fs::path(dir) / "adapter_model.safetensors").string(), items, {{"format", "pt"}});
}

void merge_lora_to_dir(const std::string& adapter_dir, const std::string& out_dir, const std::string& base_dir) {
  const PeftAdapterInfo info = read_peft_config(adapter_dir);
  const std::string base = base_dir.empty() ? info.base_model : base_dir;
  if (base.empty())
    throw Error(fmt::format("{}: no base_model_name_or_path; name the base model directory with --base",
                            (fs::path(adapter_dir) / "adapter_config.json").string()));
  if (!fs::is_regular_file(fs::path(base) / "config.json"))
    throw Error(fmt::format("{}: missing (the base model directory{})", (fs::path(base) / "config.json").string(),
                            base_dir.empty() ? " named by the adapter's base_model_name_or_path; pass --base" : ""));
  if (fs::weakly_canonical(fs::path(out_dir)) == fs::weakly_canonical(fs::path(base)) ||
      fs::weakly_canonical(fs::path(out_dir)) == fs::weakly_canonical(fs::path(adapter_dir)))
    throw Error(fmt::format("--out {}: must be a new directory, not the base or the adapter", out_dir));
  Context& ctx = Context::cpu();
  std::unique_ptr<Model> model = Model::load(base, ModelOptions{}, ctx);
  LoraAdapters lora(*model, info.spec, 0, false, ctx);
  lora.load_peft(adapter_dir, ctx);
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  if (ec) throw Error(fmt::format("{}: cannot create: {}", out_dir, ec.message()));
  const DType fd = model->config().checkpoint_dtype == DType::BF16 ? DType::BF16 : DType::F32;
  std::vector<SafetensorsWriteItem> items;
  for (const auto& [name, view] : model->named_weights())
    items.push_back({name, view, fd, std::vector<int64_t>(view.shape, view.shape + view.ndim)});
  write_safetensors((fs::path(out_dir) / "model.safetensors").string(), items, {{"format", "pt"}});
  for (const char* f : {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                        "special_tokens_map.json", "chat_template.jinja"}) {
    const fs::path src = fs::path(base) / f;
    if (!fs::is_regular_file(src)) continue;
    fs::copy_file(src, fs::path(out_dir) / f, fs::copy_options::overwrite_existing, ec);
    if (ec) throw Error(fmt::format("{}: cannot copy into {}: {}", src.string(), out_dir, ec.message()));
  }
  spdlog::info("merge-lora: {} + {} (r = {}, alpha = {}) -> {} ({})", base, adapter_dir, info.spec.rank,
               info.spec.alpha, out_dir, dtype_name(fd));
}

}  // namespace rlcu
