// JSON-lines writers (metrics, samples) with resume truncation, the resolved-config dump and the console step line
// (see include/rlcu/metrics.h); metrics records are also handed to the TensorBoard writer when it is on.
#include "rlcu/metrics.h"

#include <spdlog/spdlog.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <system_error>

#include "rlcu/error.h"

namespace rlcu {

namespace fs = std::filesystem;

namespace {

void write_atomic(const fs::path& p, const std::string& text) {
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

void make_parent(const fs::path& p) {
  if (!p.has_parent_path()) return;
  std::error_code ec;
  fs::create_directories(p.parent_path(), ec);
  if (ec) throw Error(fmt::format("{}: cannot create: {}", p.parent_path().string(), ec.message()));
}

// Step of one line, or -1 when the line is not a JSON object with an integer "step" (e.g. torn by a crash).
int64_t line_step(const std::string& line) {
  const nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object() || !j.contains("step") || !j["step"].is_number_integer()) return -1;
  return j["step"].get<int64_t>();
}

}  // namespace

JsonlWriter::JsonlWriter(const std::string& path, int64_t resume_step) : path_(path) {
  make_parent(path_);
  if (resume_step >= 0 && fs::exists(path_)) {
    std::ifstream in(path_, std::ios::binary);
    if (!in) throw Error(fmt::format("{}: cannot open", path_));
    std::string line, kept;
    int64_t dropped = 0;
    while (std::getline(in, line)) {
      const int64_t s = line_step(line);
      if (s >= 0 && s <= resume_step) {
        kept += line + "\n";
        ++kept_;
      } else {
        ++dropped;
      }
    }
    in.close();
    if (dropped > 0) spdlog::info("{}: dropped {} line(s) after step {} (resume)", path_, dropped, resume_step);
    write_atomic(path_, kept);
  }
  f_ = std::fopen(path_.c_str(), resume_step >= 0 ? "ab" : "wb");
  if (!f_) throw Error(fmt::format("{}: cannot open for writing: {}", path_, std::strerror(errno)));
}

JsonlWriter::~JsonlWriter() {
  if (f_) std::fclose(f_);
}

JsonlWriter::JsonlWriter(JsonlWriter&& o) noexcept : path_(std::move(o.path_)), f_(o.f_), kept_(o.kept_) {
  o.f_ = nullptr;
}

void JsonlWriter::write(const nlohmann::ordered_json& record) {
  RLCU_CHECK(record.is_object() && record.contains("step") && record["step"].is_number_integer(),
             "{}: a record needs an integer \"step\"", path_);
  RLCU_CHECK(f_ != nullptr, "{}: writer was moved from", path_);
  // Non-finite numbers become null in JSON; invalid UTF-8 in generated text is replaced, never fatal.
  const std::string line = record.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace) + "\n";
  if (std::fwrite(line.data(), 1, line.size(), f_) != line.size() || std::fflush(f_) != 0)
    throw Error(fmt::format("{}: write failed: {}", path_, std::strerror(errno)));
}

MetricsWriter::MetricsWriter(const std::string& run_dir, int64_t resume_step, const MetricsOptions& options)
    : w_((fs::path(run_dir) / "metrics.jsonl").string(), resume_step) {
  if (options.tensorboard) tb_.emplace(run_dir, resume_step);
}

void MetricsWriter::write(const nlohmann::ordered_json& record) {
  w_.write(record);
  if (tb_) tb_->write(record);
}

SamplesWriter::SamplesWriter(const std::string& run_dir, int64_t resume_step)
    : w_((fs::path(run_dir) / "samples.jsonl").string(), resume_step) {}

void SamplesWriter::write(const SampleRecord& s) {
  nlohmann::ordered_json j;
  j["step"] = s.step;
  j["prompt"] = s.prompt;
  j["completion"] = s.completion;
  j["reward"] = s.reward;
  if (s.extra.is_object())
    for (auto it = s.extra.begin(); it != s.extra.end(); ++it) {
      RLCU_CHECK(!j.contains(it.key()), "sample extra field `{}` shadows a standard field", it.key());
      j[it.key()] = it.value();
    }
  w_.write(j);
}

void write_run_config(const std::string& run_dir, const nlohmann::ordered_json& config) {
  const fs::path p = fs::path(run_dir) / "config.json";
  make_parent(p);
  write_atomic(p, config.dump(2) + "\n");
}

std::string format_duration(double seconds) {
  const int64_t t = static_cast<int64_t>(seconds + 0.5);
  if (t < 60) return fmt::format("{} s", t);
  if (t < 3600) return fmt::format("{}m{:02d}s", t / 60, t % 60);
  return fmt::format("{}h{:02d}m", t / 3600, (t % 3600) / 60);
}

std::string format_step_line(const StepSummary& s) {
  std::string out = fmt::format("step {}/{}", s.step, s.total_steps);
  const auto add = [&](const char* name, const std::optional<double>& v, const char* spec) {
    if (v) out += fmt::format(" | {} ", name) + fmt::format(fmt::runtime(spec), *v);
  };
  add("reward", s.reward, "{:.4f}");
  add("kl", s.kl, "{:.4g}");
  add("entropy", s.entropy, "{:.4f}");
  add("grad_norm", s.grad_norm, "{:.4g}");
  add("lr", s.lr, "{:.2e}");
  if (s.tokens_per_s) out += fmt::format(" | {:.0f} tok/s", *s.tokens_per_s);
  out += fmt::format(" | {:.2f} s", s.step_seconds);
  if (!s.phases.empty()) {
    out += " (";
    for (size_t i = 0; i < s.phases.size(); ++i)
      out += fmt::format("{}{} {:.2f} s", i ? ", " : "", s.phases[i].first, s.phases[i].second);
    out += ")";
  }
  if (s.eta_seconds) out += " | ETA " + format_duration(*s.eta_seconds);
  return out;
}

}  // namespace rlcu
