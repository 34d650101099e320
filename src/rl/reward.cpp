// RewardSet (include/rlcu/reward.h): validates the `reward.*` section, builds what the enabled components need once
// (the token-bytes table on the context's device, the tag list, the external command, the reward model), and per
// batch:
//   host: completion ids -> ids [total] I32 + id_offsets [N+1] I64; answers / needles -> bytes + offsets
//   device: detokenize_offsets -> (read byte_offsets[N]) -> detokenize_bytes -> one op per rule-based component
//   host: command and reward model scores; total[i] = sum_c weight_c * value_c[i] summed in fp64 in the order of
//         reward_component_names(), rounded to F32.
// Device buffers grow to the largest batch seen and are reused.
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

#include <algorithm>

#include "rlcu/config.h"
#include "rlcu/error.h"
#include "rlcu/reward.h"
#include "rlcu/tokenizer.h"

namespace rlcu {

const std::vector<std::string>& reward_component_names() {
  static const std::vector<std::string> names{"math_answer", "exact_match", "countdown", "contains",
                                              "format",      "length",      "command",   "model"};
  return names;
}

std::vector<std::string> split_format_tags(const std::string& s) {
  std::vector<std::string> out;
  size_t start = 0;
  while (true) {
    const size_t c = s.find(',', start);
    out.push_back(s.substr(start, c == std::string::npos ? std::string::npos : c - start));
    if (c == std::string::npos) break;
    start = c + 1;
  }
  return out;
}

void validate_reward_section(const RewardSection& s) {
  const auto fail = [](const std::string& key, const std::string& what) {
    throw Error(fmt::format("`reward.{}`: {}", key, what));
  };
  if (s.format != 0) {
    if (s.format_tags.empty()) fail("format_tags", "`reward.format` is enabled but no tags are given (e.g. `<think>,</think>`)");
    for (const std::string& t : split_format_tags(s.format_tags))
      if (t.empty()) fail("format_tags", fmt::format("empty tag in `{}`", s.format_tags));
  }
  if (s.length != 0) {
    if (s.length_max <= 0) fail("length_max", "`reward.length` is enabled; expected the maximum length in tokens (> 0)");
    if (s.length_buffer > s.length_max)
      fail("length_buffer", fmt::format("expected at most `reward.length_max` ({}), got {}", s.length_max,
                                        s.length_buffer));
  }
  if (s.command != 0) {
    if (s.command_line.empty()) fail("command_line", "`reward.command` is enabled but no command is given");
    if (!(s.command_timeout_s > 0)) fail("command_timeout_s", "expected a number of seconds > 0");
  }
  if (s.model != 0 && s.model_path.empty())
    fail("model_path", "`reward.model` is enabled but no reward model directory is given");
  if (s.math_answer == 0 && s.exact_match == 0 && s.countdown == 0 && s.contains == 0 && s.format == 0 &&
      s.length == 0 && s.command == 0 && s.model == 0)
    throw Error("`reward`: every component weight is 0; enable at least one (e.g. `reward.math_answer` = 1)");
}

namespace {

double weight_of(const RewardSection& s, const std::string& name) {
  if (name == "math_answer") return s.math_answer;
  if (name == "exact_match") return s.exact_match;
  if (name == "countdown") return s.countdown;
  if (name == "contains") return s.contains;
  if (name == "format") return s.format;
  if (name == "length") return s.length;
  if (name == "command") return s.command;
  return s.model;
}

// A grow-only buffer on one device.
struct GrowBuffer {
  Buffer buf;
  Tensor get(DType dt, int64_t n, Device d) {
    const size_t bytes = static_cast<size_t>(std::max<int64_t>(n, 1)) * dtype_size(dt);
    if (buf.size() < bytes) buf = Buffer::alloc(bytes + bytes / 2, d);
    return Tensor(buf.data(), dt, d, {n});
  }
  // At least n elements of dt from now on.
  void reserve(DType dt, int64_t n, Device d) {
    const size_t bytes = static_cast<size_t>(std::max<int64_t>(n, 1)) * dtype_size(dt);
    if (buf.size() < bytes) buf = Buffer::alloc(bytes, d);
  }
};

// Byte strings on the host in TextBatch layout.
struct HostText {
  std::string bytes;
  std::vector<int64_t> offsets{0};
  void add(const std::string& s) {
    bytes += s;
    offsets.push_back(static_cast<int64_t>(bytes.size()));
  }
};

std::string trim_ws(const std::string& s) {
  const char* ws = " \t\n\r\v\f";
  const size_t b = s.find_first_not_of(ws);
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(ws) - b + 1);
}

Tensor host_view(const std::string& s) {
  return Tensor(const_cast<char*>(s.data()), DType::U8, Device::CPU, {static_cast<int64_t>(s.size())});
}
template <class T>
Tensor host_view(const std::vector<T>& v, DType dt) {
  return Tensor(const_cast<T*>(v.data()), dt, Device::CPU, {static_cast<int64_t>(v.size())});
}

}  // namespace

struct RewardSet::Impl {
  RewardSection cfg;
  const Tokenizer* tok = nullptr;
  Context* ctx = nullptr;
  TokenBytesTable table;
  HostText tags;
  std::unique_ptr<RewardCommand> command;
  std::unique_ptr<RewardModel> model;
  // Device staging (CUDA only; on the CPU the host vectors are used directly).
  GrowBuffer ids, id_offsets, byte_offsets, bytes, answers, answer_offsets, needles, needle_offsets, tag_bytes,
      tag_offsets, values;

  // Host text -> TextBatch on the context's device.
  TextBatch stage(const HostText& h, GrowBuffer& b, GrowBuffer& o) {
    const Device d = ctx->device();
    if (d == Device::CPU) return TextBatch{h.bytes.empty() ? Tensor() : host_view(h.bytes), host_view(h.offsets, DType::I64)};
    TextBatch t{b.get(DType::U8, static_cast<int64_t>(h.bytes.size()), d),
                o.get(DType::I64, static_cast<int64_t>(h.offsets.size()), d)};
    if (!h.bytes.empty()) copy_bytes(t.bytes, host_view(h.bytes));
    copy_bytes(t.offsets, host_view(h.offsets, DType::I64));
    if (h.bytes.empty()) t.bytes = Tensor();
    return t;
  }
};

RewardSet::RewardSet(const RewardSection& cfg, const Tokenizer* tokenizer, Context& ctx) : impl_(new Impl) {
  validate_reward_section(cfg);
  RLCU_CHECK(tokenizer != nullptr, "RewardSet needs a tokenizer");
  Impl& m = *impl_;
  m.cfg = cfg;
  m.tok = tokenizer;
  m.ctx = &ctx;
  for (const std::string& name : reward_component_names())
    if (weight_of(cfg, name) != 0) enabled_.push_back(name);
  m.table = TokenBytesTable::build(*tokenizer);
  m.table.upload(ctx);
  if (cfg.format != 0)
    for (const std::string& t : split_format_tags(cfg.format_tags)) m.tags.add(t);
  if (cfg.command != 0) m.command = std::make_unique<RewardCommand>(cfg.command_line, cfg.command_timeout_s);
  if (cfg.model != 0) m.model = std::make_unique<RewardModel>(cfg.model_path, 8192, ctx);
  spdlog::debug("rewards: {}", fmt::join(enabled_, ", "));
}

RewardSet::~RewardSet() = default;

void RewardSet::reserve(int64_t max_items, int64_t max_tokens, int64_t max_answer_bytes) {
  Impl& m = *impl_;
  const Device d = m.ctx->device();
  if (d == Device::CPU) return;  // the CPU reads the host vectors directly
  const int64_t needle_bytes = std::max<int64_t>(static_cast<int64_t>(m.cfg.contains_text.size()), max_answer_bytes);
  m.ids.reserve(DType::I32, max_tokens, d);
  m.id_offsets.reserve(DType::I64, max_items + 1, d);
  m.byte_offsets.reserve(DType::I64, max_items + 1, d);
  m.bytes.reserve(DType::U8, max_tokens * m.table.max_token_bytes(), d);
  m.answers.reserve(DType::U8, max_items * max_answer_bytes, d);
  m.answer_offsets.reserve(DType::I64, max_items + 1, d);
  m.needles.reserve(DType::U8, max_items * needle_bytes, d);
  m.needle_offsets.reserve(DType::I64, max_items + 1, d);
  m.tag_bytes.reserve(DType::U8, static_cast<int64_t>(m.tags.bytes.size()), d);
  m.tag_offsets.reserve(DType::I64, static_cast<int64_t>(m.tags.offsets.size()), d);
  m.values.reserve(DType::F32, max_items, d);
}

RewardResult RewardSet::score(const RewardBatch& batch) {
  Impl& m = *impl_;
  Context& ctx = *m.ctx;
  const Device d = ctx.device();
  const int64_t N = static_cast<int64_t>(batch.items.size());
  RewardResult res;
  res.total.assign(static_cast<size_t>(N), 0.0f);
  if (N == 0) {
    for (const std::string& name : enabled_) res.components[name] = {};
    return res;
  }

  // Completion ids and the per-completion inputs on the host.
  std::vector<int32_t> ids;
  std::vector<int64_t> id_off{0};
  HostText answers, needles;
  for (const RewardItem& it : batch.items) {
    ids.insert(ids.end(), it.completion.begin(), it.completion.end());
    id_off.push_back(static_cast<int64_t>(ids.size()));
    answers.add(it.answer);
    needles.add(m.cfg.contains_text.empty() ? trim_ws(it.answer) : m.cfg.contains_text);
  }
  const int64_t total_ids = static_cast<int64_t>(ids.size());
  Tensor ids_t = host_view(ids, DType::I32), off_t = host_view(id_off, DType::I64);
  if (d == Device::CUDA) {
    ids_t = m.ids.get(DType::I32, total_ids, d);
    off_t = m.id_offsets.get(DType::I64, N + 1, d);
    if (total_ids > 0) copy_bytes(ids_t, host_view(ids, DType::I32));
    copy_bytes(off_t, host_view(id_off, DType::I64));
  }
  if (total_ids == 0) ids_t = Tensor(ids_t.data, DType::I32, d, {0});

  // Detokenise on the device.
  std::vector<int64_t> byte_off(static_cast<size_t>(N + 1));
  const Tensor boff_t = d == Device::CPU ? host_view(byte_off, DType::I64) : m.byte_offsets.get(DType::I64, N + 1, d);
  detokenize_offsets(boff_t, ids_t, off_t, m.table.bytes(ctx.device()), m.table.offsets(ctx.device()), ctx);
  if (d == Device::CUDA) copy_bytes(host_view(byte_off, DType::I64), boff_t);
  const int64_t nbytes = byte_off[static_cast<size_t>(N)];
  std::string host_bytes;
  Tensor bytes_t;
  if (d == Device::CPU) {
    host_bytes.resize(static_cast<size_t>(nbytes));
    bytes_t = Tensor(host_bytes.data(), DType::U8, d, {nbytes});
  } else {
    bytes_t = m.bytes.get(DType::U8, nbytes, d);
  }
  if (nbytes > 0)
    detokenize_bytes(bytes_t, boff_t, ids_t, off_t, m.table.bytes(ctx.device()), m.table.offsets(ctx.device()), ctx);
  const TextBatch text{nbytes > 0 ? bytes_t : Tensor(), boff_t};

  // Rule-based components on the device.
  std::map<std::string, std::vector<float>> values;
  const Tensor out_t = d == Device::CPU ? Tensor() : m.values.get(DType::F32, N, d);
  const auto run_op = [&](const std::string& name, auto&& op) {
    std::vector<float> v(static_cast<size_t>(N));
    const Tensor o = d == Device::CPU ? host_view(v, DType::F32) : out_t;
    op(o);
    if (d == Device::CUDA) copy_bytes(host_view(v, DType::F32), o);
    values[name] = std::move(v);
  };
  if (m.cfg.math_answer != 0 || m.cfg.exact_match != 0 || m.cfg.countdown != 0) {
    const TextBatch ans = m.stage(answers, m.answers, m.answer_offsets);
    if (m.cfg.math_answer != 0)
      run_op("math_answer", [&](const Tensor& o) { reward_math_answer(o, text, ans, ctx); });
    if (m.cfg.exact_match != 0)
      run_op("exact_match", [&](const Tensor& o) { reward_exact_match(o, text, ans, ctx); });
    if (m.cfg.countdown != 0) run_op("countdown", [&](const Tensor& o) { reward_countdown(o, text, ans, ctx); });
  }
  if (m.cfg.contains != 0) {
    const TextBatch nd = m.stage(needles, m.needles, m.needle_offsets);
    run_op("contains", [&](const Tensor& o) { reward_contains(o, text, nd, ctx); });
  }
  if (m.cfg.format != 0) {
    const TextBatch tg = m.stage(m.tags, m.tag_bytes, m.tag_offsets);
    run_op("format", [&](const Tensor& o) { reward_format(o, text, tg, ctx); });
  }
  if (m.cfg.length != 0) {
    const LengthPenalty p{m.cfg.length_max, m.cfg.length_buffer};
    run_op("length", [&](const Tensor& o) { reward_length(o, off_t, p, ctx); });
  }

  // Host components.
  if (m.command) {
    if (d == Device::CUDA && nbytes > 0) {
      host_bytes.resize(static_cast<size_t>(nbytes));
      copy_bytes(host_view(host_bytes), bytes_t);
    }
    std::vector<std::string> prompts, completions, ans;
    for (int64_t i = 0; i < N; ++i) {
      const RewardItem& it = batch.items[static_cast<size_t>(i)];
      prompts.push_back(it.prompt);
      completions.push_back(!it.completion_text.empty()
                                ? it.completion_text
                                : host_bytes.substr(static_cast<size_t>(byte_off[i]),
                                                    static_cast<size_t>(byte_off[i + 1] - byte_off[i])));
      ans.push_back(it.answer);
    }
    values["command"] = m.command->score(prompts, completions, ans);
  }
  if (m.model) {
    std::vector<std::vector<int32_t>> seqs;
    for (const RewardItem& it : batch.items) {
      std::vector<int32_t> s = it.prompt_ids.empty() ? m.tok->encode(it.prompt) : it.prompt_ids;
      s.insert(s.end(), it.completion.begin(), it.completion.end());
      seqs.push_back(std::move(s));
    }
    values["model"] = m.model->score(seqs);
  }

  for (int64_t i = 0; i < N; ++i) {
    double t = 0.0;
    for (const std::string& name : enabled_)
      t += weight_of(m.cfg, name) * static_cast<double>(values[name][static_cast<size_t>(i)]);
    res.total[static_cast<size_t>(i)] = static_cast<float>(t);
  }
  res.components = std::move(values);
  return res;
}

}  // namespace rlcu
