// TensorBoard event files: CRC-32C, TFRecord framing, hand-encoded Event protobufs and the writer that turns
// metrics records into scalar events (see include/rlcu/tensorboard.h for the format and the resume rules).
#include "rlcu/tensorboard.h"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <system_error>

#include "rlcu/error.h"

namespace rlcu {

namespace fs = std::filesystem;

namespace tensorboard {

namespace {

constexpr const char* kPrefix = "events.out.tfevents.";

// Byte-at-a-time table of the reflected Castagnoli polynomial.
const std::array<uint32_t, 256>& crc_table() {
  static const std::array<uint32_t, 256> table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82f63b78u : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  return table;
}

void put_fixed32(std::string& out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out += static_cast<char>((v >> (8 * i)) & 0xff);
}

void put_fixed64(std::string& out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out += static_cast<char>((v >> (8 * i)) & 0xff);
}

void put_varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out += static_cast<char>((v & 0x7f) | 0x80);
    v >>= 7;
  }
  out += static_cast<char>(v);
}

// A length-delimited field (wire type 2): key, length, bytes.
void put_bytes(std::string& out, uint32_t field, const std::string& bytes) {
  put_varint(out, (static_cast<uint64_t>(field) << 3) | 2);
  put_varint(out, bytes.size());
  out += bytes;
}

// Event fields 1 (wall_time, fixed64 double) and 2 (step, varint int64; negative steps take ten bytes as in
// protobuf's two's-complement encoding).
std::string event_head(double wall_time, int64_t step) {
  std::string e;
  uint64_t bits = 0;
  std::memcpy(&bits, &wall_time, sizeof bits);
  e += static_cast<char>(0x09);
  put_fixed64(e, bits);
  e += static_cast<char>(0x10);
  put_varint(e, static_cast<uint64_t>(step));
  return e;
}

}  // namespace

uint32_t crc32c(const void* data, size_t n) {
  const auto& t = crc_table();
  const auto* p = static_cast<const unsigned char*>(data);
  uint32_t c = 0xffffffffu;
  for (size_t i = 0; i < n; ++i) c = t[(c ^ p[i]) & 0xff] ^ (c >> 8);
  return c ^ 0xffffffffu;
}

uint32_t masked_crc32c(const void* data, size_t n) {
  const uint32_t c = crc32c(data, n);
  return ((c >> 15) | (c << 17)) + 0xa282ead8u;
}

std::string tfrecord(const std::string& payload) {
  std::string out;
  out.reserve(payload.size() + 16);
  put_fixed64(out, payload.size());
  put_fixed32(out, masked_crc32c(out.data(), 8));
  out += payload;
  put_fixed32(out, masked_crc32c(payload.data(), payload.size()));
  return out;
}

std::string file_version_event(double wall_time) {
  std::string e;
  uint64_t bits = 0;
  std::memcpy(&bits, &wall_time, sizeof bits);
  e += static_cast<char>(0x09);
  put_fixed64(e, bits);
  put_bytes(e, 3, "brain.Event:2");
  return e;
}

std::string session_start_event(double wall_time, int64_t step) {
  std::string e = event_head(wall_time, step);
  const std::string session_log = {static_cast<char>(0x08), static_cast<char>(1)};  // status = START
  put_bytes(e, 7, session_log);
  return e;
}

std::string scalars_event(double wall_time, int64_t step, const std::vector<std::pair<std::string, float>>& values) {
  std::string summary;
  for (const auto& [tag, v] : values) {
    std::string value;
    put_bytes(value, 1, tag);
    uint32_t bits = 0;
    std::memcpy(&bits, &v, sizeof bits);
    value += static_cast<char>(0x15);
    put_fixed32(value, bits);
    put_bytes(summary, 1, value);
  }
  std::string e = event_head(wall_time, step);
  put_bytes(e, 5, summary);
  return e;
}

std::vector<std::pair<std::string, float>> record_scalars(const nlohmann::ordered_json& record) {
  std::vector<std::pair<std::string, float>> out;
  for (auto it = record.begin(); it != record.end(); ++it) {
    if (it.key() == "step") continue;
    const auto& v = it.value();
    if (v.is_boolean())
      out.emplace_back(it.key(), v.get<bool>() ? 1.0f : 0.0f);
    else if (v.is_number())
      out.emplace_back(it.key(), static_cast<float>(v.get<double>()));
  }
  return out;
}

}  // namespace tensorboard

namespace {

double unix_seconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

bool is_event_file(const fs::directory_entry& e) {
  return e.is_regular_file() && e.path().filename().string().rfind(tensorboard::kPrefix, 0) == 0;
}

// A fresh run: remove the directory's earlier event files. A resume: the name of the latest one ("" when none).
std::string prepare_dir(const std::string& run_dir, int64_t resume_step) {
  std::error_code ec;
  fs::create_directories(run_dir, ec);
  if (ec) throw Error(fmt::format("{}: cannot create: {}", run_dir, ec.message()));
  std::string latest;
  int removed = 0;
  for (const auto& e : fs::directory_iterator(run_dir, ec)) {
    if (!is_event_file(e)) continue;
    if (resume_step >= 0) {
      latest = std::max(latest, e.path().filename().string());
      continue;
    }
    fs::remove(e.path(), ec);
    if (ec) throw Error(fmt::format("{}: cannot remove (an earlier run's TensorBoard events): {}", e.path().string(),
                                    ec.message()));
    ++removed;
  }
  if (ec) throw Error(fmt::format("{}: cannot list: {}", run_dir, ec.message()));
  if (removed > 0) spdlog::info("{}: removed {} earlier TensorBoard event file(s) (fresh run)", run_dir, removed);
  return latest;
}

}  // namespace

TensorBoardWriter::TensorBoardWriter(const std::string& run_dir, int64_t resume_step) {
  const std::string latest = prepare_dir(run_dir, resume_step);
  const double now = unix_seconds();
  char host[256] = {};
  if (gethostname(host, sizeof host - 1) != 0 || host[0] == '\0') std::strcpy(host, "localhost");
  std::string name = fmt::format("{}{:010d}.{}", tensorboard::kPrefix, static_cast<int64_t>(now), host);
  // TensorBoard reads a directory's files in name order: the resumed part must come after what it replaces.
  if (!latest.empty() && name <= latest) name = fmt::format("{}.r{}", latest, resume_step + 1);
  path_ = (fs::path(run_dir) / name).string();
  f_ = std::fopen(path_.c_str(), "wb");
  if (!f_) throw Error(fmt::format("{}: cannot open for writing: {}", path_, std::strerror(errno)));
  append(tensorboard::file_version_event(now));
  if (resume_step >= 0) append(tensorboard::session_start_event(now, resume_step + 1));
}

TensorBoardWriter::~TensorBoardWriter() {
  if (f_) std::fclose(f_);
}

TensorBoardWriter::TensorBoardWriter(TensorBoardWriter&& o) noexcept : path_(std::move(o.path_)), f_(o.f_) {
  o.f_ = nullptr;
}

void TensorBoardWriter::append(const std::string& event) {
  RLCU_CHECK(f_ != nullptr, "{}: writer was moved from", path_);
  const std::string rec = tensorboard::tfrecord(event);
  if (std::fwrite(rec.data(), 1, rec.size(), f_) != rec.size() || std::fflush(f_) != 0)
    throw Error(fmt::format("{}: write failed: {}", path_, std::strerror(errno)));
}

void TensorBoardWriter::write(const nlohmann::ordered_json& record) {
  RLCU_CHECK(record.is_object() && record.contains("step") && record["step"].is_number_integer(),
             "{}: a record needs an integer \"step\"", path_);
  append(tensorboard::scalars_event(unix_seconds(), record["step"].get<int64_t>(),
                                    tensorboard::record_scalars(record)));
}

}  // namespace rlcu
