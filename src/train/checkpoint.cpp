// Checkpoint save / find / load / restore (see include/rlcu/checkpoint.h for the layout and the guarantees).
//
// Save order inside RUN/checkpoints/.tmp-step-N: model.safetensors, trainer_state.safetensors, the copied model
// and tokenizer files, trainer_state.json last; then the directory is renamed to step-N and `latest` replaced.
// A checkpoint counts as complete when its step-N directory holds trainer_state.json.
#include "rlcu/checkpoint.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <system_error>

#include "rlcu/error.h"
#include "rlcu/json_error.h"
#include "rlcu/lora.h"
#include "rlcu/model.h"
#include "rlcu/ops.h"
#include "rlcu/optimizer.h"

namespace rlcu {

namespace fs = std::filesystem;

namespace {

constexpr const char* kStateFormat = "rlcu-trainer-state";
constexpr int kStateVersion = 1;
constexpr const char* kTmpPrefix = ".tmp-";
constexpr const char* kOldPrefix = ".old-";

// "step-000123" -> 123; -1 for anything else.
int64_t parse_step_name(const std::string& name) {
  const std::string p = "step-";
  if (name.size() <= p.size() || name.compare(0, p.size(), p) != 0 || name.size() > p.size() + 18) return -1;
  int64_t v = 0;
  for (size_t i = p.size(); i < name.size(); ++i) {
    if (name[i] < '0' || name[i] > '9') return -1;
    v = v * 10 + (name[i] - '0');
  }
  return v;
}

std::string read_text(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) throw Error(fmt::format("{}: cannot open", p.string()));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Writes PATH.tmp, then renames it over PATH.
void write_text_atomic(const fs::path& p, const std::string& text) {
  const fs::path tmp = p.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw Error(fmt::format("{}: cannot create: {}", tmp.string(), std::strerror(errno)));
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    out.flush();
    if (!out) throw Error(fmt::format("{}: write failed: {}", tmp.string(), std::strerror(errno)));
  }
  std::error_code ec;
  fs::rename(tmp, p, ec);
  if (ec) throw Error(fmt::format("{}: cannot rename to {}: {}", tmp.string(), p.string(), ec.message()));
}

void remove_all_logged(const fs::path& p) {
  std::error_code ec;
  fs::remove_all(p, ec);
  if (ec) spdlog::warn("{}: cannot remove: {}", p.string(), ec.message());
}

void copy_into(const fs::path& src, const fs::path& dst_dir) {
  std::error_code ec;
  fs::copy_file(src, dst_dir / src.filename(), fs::copy_options::overwrite_existing, ec);
  if (ec) throw Error(fmt::format("{}: cannot copy into {}: {}", src.string(), dst_dir.string(), ec.message()));
}

Tensor moment_view(const Tensor& flat, const HfTensor& h) {
  return Tensor(static_cast<char*>(flat.data) + static_cast<size_t>(h.offset) * sizeof(float), DType::F32,
                flat.device, h.shape);
}

// The F32 master view of a parameter; a model loaded without a master copy cannot be checkpointed.
const Tensor& master_of(const HfTensor& h, const Model& model) {
  if (h.master.empty() || h.master.dtype != DType::F32)
    throw Error(fmt::format("checkpoint: the model from {} has no F32 master weights (load it with training=true)",
                            model.dir()));
  return h.master;
}

std::string shape_string(const Tensor& t) { return t.shape_str(); }

// A dtype as safetensors headers spell it.
std::string file_dtype(DType t) {
  switch (t) {
    case DType::F32: return "F32";
    case DType::BF16: return "BF16";
    case DType::F16: return "F16";
    case DType::I32: return "I32";
    case DType::I64: return "I64";
    case DType::U8: return "U8";
    case DType::F64: return "F64";
  }
  return "?";
}

const nlohmann::json& need(const nlohmann::json& j, const char* key, const std::string& file) {
  if (!j.contains(key)) throw Error(fmt::format("{}: key \"{}\" is missing", file, key));
  return j[key];
}

}  // namespace

std::string checkpoint_dir_name(int64_t step) {
  RLCU_CHECK(step >= 0, "negative checkpoint step {}", step);
  return fmt::format("step-{:06d}", step);
}

namespace {
// The training state of parameters `tensors` (views with F32 masters; offsets into the optimizer's flat state).
void append_state(std::vector<SafetensorsWriteItem>& items, std::map<std::string, std::string>& metadata,
                  const std::vector<HfTensor>& tensors, const Model& model, const AdamW* opt,
                  const std::string& prefix) {
  const bool q8 = opt && opt->kind() == OptimizerKind::AdamW8bit;
  for (const HfTensor& h : tensors) {
    items.push_back({prefix + "master." + h.name, master_of(h, model), DType::F32, {}});
    if (opt && !q8) {
      items.push_back({prefix + "exp_avg." + h.name, moment_view(opt->exp_avg(), h), DType::F32, {}});
      items.push_back({prefix + "exp_avg_sq." + h.name, moment_view(opt->exp_avg_sq(), h), DType::F32, {}});
    }
  }
  if (q8) {  // the quantisation blocks span tensors: the flat state, as the optimizer holds it
    items.push_back({prefix + "exp_avg.codes", opt->exp_avg(), DType::U8, {}});
    items.push_back({prefix + "exp_avg.absmax", opt->exp_avg_absmax(), DType::F32, {}});
    items.push_back({prefix + "exp_avg_sq.codes", opt->exp_avg_sq(), DType::U8, {}});
    items.push_back({prefix + "exp_avg_sq.absmax", opt->exp_avg_sq_absmax(), DType::F32, {}});
    metadata[prefix + "optimizer"] = optimizer_name(opt->kind());
    metadata[prefix + "optimizer_block_size"] = std::to_string(ops::kAdamw8Block);
  }
  metadata[prefix + "optimizer_steps"] = std::to_string(opt ? opt->steps_done() : 0);
  metadata[prefix + "has_optimizer"] = opt ? "true" : "false";
}

}  // namespace

void append_training_state(std::vector<SafetensorsWriteItem>& items, std::map<std::string, std::string>& metadata,
                           const Model& model, const AdamW* opt, const std::string& prefix) {
  append_state(items, metadata, model.hf_tensors(), model, opt, prefix);
}

std::string save_checkpoint(const CheckpointWrite& w) {
  RLCU_CHECK(w.model != nullptr, "save_checkpoint needs a model");
  RLCU_CHECK(w.keep >= 0, "negative keep {}", w.keep);
  const Model& model = *w.model;
  const fs::path ck_root = fs::path(w.run_dir) / "checkpoints";
  const std::string name = checkpoint_dir_name(w.step);
  const fs::path final_dir = ck_root / name;
  const fs::path tmp_dir = ck_root / (kTmpPrefix + name);

  std::error_code ec;
  fs::create_directories(ck_root, ec);
  if (ec) throw Error(fmt::format("{}: cannot create: {}", ck_root.string(), ec.message()));
  // Leftovers of an interrupted save (only one trainer writes a run directory).
  for (const auto& e : fs::directory_iterator(ck_root, ec)) {
    const std::string n = e.path().filename().string();
    if (n.rfind(kTmpPrefix, 0) == 0 || n.rfind(kOldPrefix, 0) == 0) {
      spdlog::info("{}: removing the leftover of an interrupted save", e.path().string());
      remove_all_logged(e.path());
    }
  }
  fs::create_directories(tmp_dir, ec);
  if (ec) throw Error(fmt::format("{}: cannot create: {}", tmp_dir.string(), ec.message()));

  // model.safetensors: BF16 from the F32 master, HF names (tied embeddings once); or the PEFT adapter.
  if (w.lora) {
    w.lora->save_peft(tmp_dir.string(), model.dir());
  } else {
    std::vector<SafetensorsWriteItem> items;
    for (const HfTensor& h : model.hf_tensors()) items.push_back({h.name, master_of(h, model), DType::BF16, h.shape});
    write_safetensors((tmp_dir / "model.safetensors").string(), items, {{"format", "pt"}});
  }
  // trainer_state.safetensors
  {
    std::vector<SafetensorsWriteItem> items;
    std::map<std::string, std::string> metadata;
    if (w.lora)
      append_state(items, metadata, w.lora->peft_tensors(), model, w.optimizer, "");
    else
      append_training_state(items, metadata, model, w.optimizer, "");
    std::set<std::string> names;
    for (const SafetensorsWriteItem& it : items) names.insert(it.name);
    for (const SafetensorsWriteItem& it : w.extra_tensors) {
      if (!names.insert(it.name).second)
        throw Error(fmt::format("checkpoint: extra tensor `{}` collides with another tensor of the state", it.name));
      items.push_back(it);
    }
    for (const auto& [k, v] : w.extra_metadata) {
      if (metadata.count(k) && metadata[k] != v)
        throw Error(fmt::format("checkpoint: extra metadata `{}` collides with the policy's state", k));
      metadata[k] = v;
    }
    write_safetensors((tmp_dir / "trainer_state.safetensors").string(), items, metadata);
  }
  // Model and tokenizer files.
  const fs::path model_dir = model.dir();
  const fs::path tok_dir = w.tokenizer_dir.empty() ? model_dir : fs::path(w.tokenizer_dir);
  if (!fs::is_regular_file(model_dir / "config.json"))
    throw Error(fmt::format("{}: cannot copy into the checkpoint: file missing", (model_dir / "config.json").string()));
  if (!w.lora) {
    copy_into(model_dir / "config.json", tmp_dir);
    if (fs::is_regular_file(model_dir / "generation_config.json"))
      copy_into(model_dir / "generation_config.json", tmp_dir);
  }
  for (const char* f : {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"}) {
    if (fs::is_regular_file(tok_dir / f))
      copy_into(tok_dir / f, tmp_dir);
    else if (fs::is_regular_file(model_dir / f))
      copy_into(model_dir / f, tmp_dir);
  }
  // trainer_state.json, last: its presence marks a complete checkpoint.
  {
    nlohmann::ordered_json st;
    st["format"] = kStateFormat;
    st["version"] = kStateVersion;
    st["step"] = w.step;
    st["optimizer_steps"] = w.optimizer ? w.optimizer->steps_done() : 0;
    st["seed"] = w.seed;
    st["rng"] = nlohmann::ordered_json::parse(w.rng.dump());
    st["data_cursor"] = nlohmann::ordered_json::parse(w.data_cursor.dump());
    st["model_dir"] = model.dir();
    st["tokenizer_dir"] = tok_dir.string();
    st["config"] = w.config;
    st["extra"] = nlohmann::ordered_json::parse(w.extra.dump());
    write_text_atomic(tmp_dir / "trainer_state.json", st.dump(2) + "\n");
  }

  // Move into place; an existing checkpoint of the same step is replaced.
  if (fs::exists(final_dir)) {
    const fs::path old = ck_root / (kOldPrefix + name);
    fs::rename(final_dir, old, ec);
    if (ec) throw Error(fmt::format("{}: cannot replace: {}", final_dir.string(), ec.message()));
    fs::rename(tmp_dir, final_dir, ec);
    if (ec) throw Error(fmt::format("{}: cannot rename to {}: {}", tmp_dir.string(), final_dir.string(), ec.message()));
    remove_all_logged(old);
  } else {
    fs::rename(tmp_dir, final_dir, ec);
    if (ec) throw Error(fmt::format("{}: cannot rename to {}: {}", tmp_dir.string(), final_dir.string(), ec.message()));
  }
  write_text_atomic(ck_root / "latest", name + "\n");

  if (w.keep > 0) {
    std::vector<int64_t> others;
    for (int64_t s : list_checkpoints(w.run_dir))
      if (s != w.step) others.push_back(s);
    const size_t keep_others = static_cast<size_t>(w.keep - 1);
    if (others.size() > keep_others) {
      for (size_t i = 0; i < others.size() - keep_others; ++i) {
        spdlog::info("checkpoints: removing {} (run.keep_checkpoints = {})", checkpoint_dir_name(others[i]), w.keep);
        remove_all_logged(ck_root / checkpoint_dir_name(others[i]));
      }
    }
  }
  spdlog::info("checkpoint saved: {}", final_dir.string());
  return final_dir.string();
}

std::vector<int64_t> list_checkpoints(const std::string& run_dir) {
  std::vector<int64_t> steps;
  const fs::path root = fs::path(run_dir) / "checkpoints";
  std::error_code ec;
  if (!fs::is_directory(root, ec)) return steps;
  for (const auto& e : fs::directory_iterator(root, ec)) {
    const int64_t s = parse_step_name(e.path().filename().string());
    if (s >= 0 && fs::is_regular_file(e.path() / "trainer_state.json")) steps.push_back(s);
  }
  std::sort(steps.begin(), steps.end());
  return steps;
}

std::string latest_checkpoint(const std::string& run_dir) {
  const fs::path root = fs::path(run_dir) / "checkpoints";
  const fs::path latest = root / "latest";
  if (fs::is_regular_file(latest)) {
    std::string n = read_text(latest);
    while (!n.empty() && (n.back() == '\n' || n.back() == '\r' || n.back() == ' ')) n.pop_back();
    if (parse_step_name(n) >= 0 && fs::is_regular_file(root / n / "trainer_state.json")) return (root / n).string();
    spdlog::warn("{}: names `{}`, which is not a complete checkpoint; using the newest step-* directory",
                 latest.string(), n);
  }
  const std::vector<int64_t> steps = list_checkpoints(run_dir);
  if (steps.empty()) return "";
  return (root / checkpoint_dir_name(steps.back())).string();
}

CheckpointRead load_checkpoint(const std::string& run_dir) {
  const std::string dir = latest_checkpoint(run_dir);
  if (dir.empty())
    throw Error(fmt::format("{}: no checkpoint to resume from (no complete {}/checkpoints/step-* directory)", run_dir,
                            run_dir));
  return load_checkpoint_dir(dir);
}

CheckpointRead load_checkpoint_dir(const std::string& dir) {
  CheckpointRead ck;
  ck.dir = dir;
  const std::string file = (fs::path(dir) / "trainer_state.json").string();
  if (!fs::is_regular_file(file)) throw Error(fmt::format("{}: missing (not a complete checkpoint)", file));
  try {
    ck.state = nlohmann::json::parse(read_text(file));
  } catch (const nlohmann::json::exception& e) {
    throw Error(json_parse_error(file, read_text(file), e));
  }
  if (!ck.state.is_object()) throw Error(fmt::format("{}: expected a JSON object", file));
  const nlohmann::json& fmt_ = need(ck.state, "format", file);
  if (fmt_ != kStateFormat) throw Error(fmt::format("{}: \"format\" is {}, expected \"{}\"", file, fmt_.dump(), kStateFormat));
  const nlohmann::json& ver = need(ck.state, "version", file);
  if (ver != kStateVersion)
    throw Error(fmt::format("{}: \"version\" is {}, this rlcu reads version {}", file, ver.dump(), kStateVersion));
  const auto int_key = [&](const char* key) {
    const nlohmann::json& v = need(ck.state, key, file);
    if (!v.is_number_integer() || v.get<int64_t>() < 0)
      throw Error(fmt::format("{}: \"{}\" must be an integer >= 0, got {}", file, key, v.dump()));
    return v;
  };
  ck.step = int_key("step").get<int64_t>();
  ck.optimizer_steps = int_key("optimizer_steps").get<int64_t>();
  ck.seed = int_key("seed").get<uint64_t>();
  ck.rng = need(ck.state, "rng", file);
  ck.data_cursor = need(ck.state, "data_cursor", file);
  ck.config = need(ck.state, "config", file);
  ck.extra = need(ck.state, "extra", file);
  const std::string tensors = (fs::path(dir) / "trainer_state.safetensors").string();
  if (!fs::is_regular_file(tensors)) throw Error(fmt::format("{}: missing (not a complete checkpoint)", tensors));
  ck.tensors = std::make_shared<const SafetensorsFile>(SafetensorsFile::open(tensors));
  spdlog::info("checkpoint loaded: {} (step {})", dir, ck.step);
  return ck;
}

bool CheckpointRead::has_tensor(const std::string& name) const { return tensors && tensors->find(name) != nullptr; }

std::string CheckpointRead::metadata(const std::string& key) const {
  RLCU_CHECK(tensors != nullptr, "CheckpointRead without tensors");
  const auto it = tensors->metadata().find(key);
  if (it == tensors->metadata().end())
    throw Error(fmt::format("{}: metadata entry `{}` is missing", tensors->path(), key));
  return it->second;
}

void CheckpointRead::restore_tensor(const std::string& name, const Tensor& dst) const {
  RLCU_CHECK(tensors != nullptr, "CheckpointRead without tensors");
  const SafetensorsEntry* e = tensors->find(name);
  if (!e) throw Error(fmt::format("{}: tensor `{}` is missing", tensors->path(), name));
  if (e->dtype != file_dtype(dst.dtype))
    throw Error(fmt::format("{}: tensor `{}` has dtype {} but the destination is {}", tensors->path(), name, e->dtype,
                            file_dtype(dst.dtype)));
  const std::vector<int64_t> want(dst.shape, dst.shape + dst.ndim);
  if (e->shape != want)
    throw Error(fmt::format("{}: tensor `{}` has shape {} but the destination is {}", tensors->path(), name,
                            e->shape_str(), shape_string(dst)));
  // The mapped bytes may be unaligned for the element type: go through an aligned host copy.
  std::vector<uint8_t> host(dst.nbytes());
  if (!host.empty()) std::memcpy(host.data(), tensors->data(*e), host.size());
  Tensor src = dst;
  src.data = host.data();
  src.device = Device::CPU;
  copy_bytes(dst, src);
}

namespace {
void restore_state(const CheckpointRead& ck, const std::vector<HfTensor>& tensors, const Model& model,
                   const Tensor& flat_weights, const Tensor& flat_master, AdamW* opt, Context& ctx,
                   const std::string& prefix) {
  if (opt && ck.metadata(prefix + "has_optimizer") != "true")
    throw Error(fmt::format("{}: the checkpoint holds no optimizer state for `{}` (saved without an optimizer)",
                            ck.tensors->path(), prefix.empty() ? "policy" : prefix));
  if (opt) {
    // A checkpoint without the entry was written by plain AdamW.
    const auto it = ck.tensors->metadata().find(prefix + "optimizer");
    const std::string saved = it == ck.tensors->metadata().end() ? "adamw" : it->second;
    const std::string want = optimizer_name(opt->kind());
    if (saved != want)
      throw Error(fmt::format("{}: the checkpoint's optimizer state is {} but optimizer.name is {}; resume with "
                              "optimizer.name={} (the moments of one cannot continue the other)",
                              ck.tensors->path(), saved, want, saved));
  }
  const bool q8 = opt && opt->kind() == OptimizerKind::AdamW8bit;
  if (q8) {
    const std::string bs = ck.metadata(prefix + "optimizer_block_size");
    if (bs != std::to_string(ops::kAdamw8Block))
      throw Error(fmt::format("{}: metadata `{}optimizer_block_size` is {}, this rlcu's 8-bit AdamW uses blocks of {}",
                              ck.tensors->path(), prefix, bs, ops::kAdamw8Block));
  }
  for (const HfTensor& h : tensors) {
    ck.restore_tensor(prefix + "master." + h.name, master_of(h, model));
    if (opt && !q8) {
      ck.restore_tensor(prefix + "exp_avg." + h.name, moment_view(opt->exp_avg(), h));
      ck.restore_tensor(prefix + "exp_avg_sq." + h.name, moment_view(opt->exp_avg_sq(), h));
    }
  }
  if (q8) {
    ck.restore_tensor(prefix + "exp_avg.codes", opt->exp_avg());
    ck.restore_tensor(prefix + "exp_avg.absmax", opt->exp_avg_absmax());
    ck.restore_tensor(prefix + "exp_avg_sq.codes", opt->exp_avg_sq());
    ck.restore_tensor(prefix + "exp_avg_sq.absmax", opt->exp_avg_sq_absmax());
  }
  // A separate BF16 working copy follows from the master exactly as AdamW's write-back rounds it.
  if (flat_weights.data != flat_master.data) ops::cast(flat_weights, flat_master, ctx);
  if (opt) {
    const std::string s = ck.metadata(prefix + "optimizer_steps");
    int64_t steps = -1;
    try {
      size_t used = 0;
      steps = std::stoll(s, &used);
      if (used != s.size()) steps = -1;
    } catch (const std::exception&) {
      steps = -1;
    }
    if (steps < 0)
      throw Error(fmt::format("{}: metadata `{}optimizer_steps` is `{}`, expected an integer >= 0", ck.tensors->path(),
                              prefix, s));
    opt->set_steps_done(steps);
  }
}
}  // namespace

void restore_training_state(const CheckpointRead& ck, Model& model, AdamW* opt, Context& ctx,
                            const std::string& prefix) {
  restore_state(ck, model.hf_tensors(), model, model.flat_weights(), model.flat_master(), opt, ctx, prefix);
}

void restore_lora_state(const CheckpointRead& ck, LoraAdapters& lora, AdamW* opt, Context& ctx) {
  const std::string ac = (fs::path(ck.dir) / "adapter_config.json").string();
  if (!fs::is_regular_file(ac))
    throw Error(fmt::format("{}: missing: the checkpoint holds no LoRA adapter (it is a full fine-tuning run's; "
                            "resume it with lora.rank = 0)",
                            ac));
  const PeftAdapterInfo info = read_peft_config(ck.dir);
  const LoraSpec& s = lora.spec();
  if (info.spec.rank != s.rank || info.spec.alpha != s.alpha || info.spec.targets != s.targets)
    throw Error(fmt::format("{}: r = {}, lora_alpha = {}, target_modules = {} differ from lora.rank = {}, "
                            "lora.alpha = {}, lora.targets = {}",
                            ac, info.spec.rank, info.spec.alpha, info.spec.targets_string(), s.rank, s.alpha,
                            s.targets_string()));
  restore_state(ck, lora.peft_tensors(), lora.model(), lora.flat_weights(), lora.flat_master(), opt, ctx, "");
  lora.merge(ctx);
}

}  // namespace rlcu
