// Run-directory rules, the run lock and the inputs record (see include/rlcu/run_dir.h).
// XXH64 follows the xxHash specification (https://github.com/Cyan4973/xxHash/blob/dev/doc/xxhash_spec.md): four
// 64-bit lanes over 32-byte stripes, merged, then the tail and the avalanche; files are hashed in 1 MiB chunks
// (a multiple of the stripe), so the streaming value equals the one-shot value.
#include "rlcu/run_dir.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "rlcu/checkpoint.h"
#include "rlcu/error.h"

namespace rlcu {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr const char* kLockFile = "rlcu.lock";
constexpr const char* kInputsFile = "inputs.json";
// What a run writes into its directory: the files that make it "hold a run" and that --overwrite removes.
constexpr const char* kRunFiles[] = {"config.json", "metrics.jsonl", "samples.jsonl", "eval_samples.jsonl", "inputs.json"};
constexpr const char* kEventsPrefix = "events.out.tfevents.";

// ---- XXH64 ---------------------------------------------------------------------------------------------------------

constexpr uint64_t kP1 = 0x9E3779B185EBCA87ULL, kP2 = 0xC2B2AE3D27D4EB4FULL, kP3 = 0x165667B19E3779F9ULL,
                   kP4 = 0x85EBCA77C2B2AE63ULL, kP5 = 0x27D4EB2F165667C5ULL;

uint64_t rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
uint64_t read64(const unsigned char* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);  // little-endian hosts only (x86-64, aarch64)
  return v;
}
uint32_t read32(const unsigned char* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}
uint64_t xround(uint64_t acc, uint64_t in) { return rotl(acc + in * kP2, 31) * kP1; }
uint64_t xmerge(uint64_t acc, uint64_t v) { return (acc ^ xround(0, v)) * kP1 + kP4; }

struct Xxh64State {
  uint64_t v[4];
  uint64_t total = 0;
  explicit Xxh64State(uint64_t seed) : v{seed + kP1 + kP2, seed + kP2, seed, seed - kP1} {}
  // Whole stripes of p[0, n); returns the bytes consumed (a multiple of 32).
  size_t stripes(const unsigned char* p, size_t n) {
    const size_t whole = n / 32 * 32;
    for (size_t i = 0; i < whole; i += 32)
      for (int l = 0; l < 4; ++l) v[l] = xround(v[l], read64(p + i + 8 * static_cast<size_t>(l)));
    total += whole;
    return whole;
  }
  // The digest, given the last n < 32 bytes.
  uint64_t finish(const unsigned char* p, size_t n, uint64_t seed) const {
    const uint64_t len = total + n;
    uint64_t h;
    if (total > 0) {
      h = rotl(v[0], 1) + rotl(v[1], 7) + rotl(v[2], 12) + rotl(v[3], 18);
      for (int l = 0; l < 4; ++l) h = xmerge(h, v[l]);
    } else {
      h = seed + kP5;
    }
    h += len;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) h = rotl(h ^ xround(0, read64(p + i)), 27) * kP1 + kP4;
    if (i + 4 <= n) {
      h = rotl(h ^ (static_cast<uint64_t>(read32(p + i)) * kP1), 23) * kP2 + kP3;
      i += 4;
    }
    for (; i < n; ++i) h = rotl(h ^ (static_cast<uint64_t>(p[i]) * kP5), 11) * kP1;
    h ^= h >> 33;
    h *= kP2;
    h ^= h >> 29;
    h *= kP3;
    h ^= h >> 32;
    return h;
  }
};

std::string hex64(uint64_t h) { return fmt::format("{:016x}", h); }

// ---- lock ----------------------------------------------------------------------------------------------------------

std::string host_name() {
  char buf[256] = {0};
  if (gethostname(buf, sizeof(buf) - 1) != 0) return "unknown";
  return buf;
}

// "pid 123 on host foo (rlcu train)", from the lock file's contents.
std::string describe_holder(int fd) {
  std::string text;
  char buf[512];
  ssize_t n;
  lseek(fd, 0, SEEK_SET);
  while ((n = read(fd, buf, sizeof buf)) > 0 && text.size() < 4096) text.append(buf, static_cast<size_t>(n));
  const json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object() || !j.contains("pid")) return "another process (the lock file names no holder yet)";
  return fmt::format("pid {} on host {}{}", j["pid"].dump(), j.value("host", std::string("?")),
                     j.contains("command") ? fmt::format(" (rlcu {})", j.value("command", std::string())) : "");
}

[[noreturn]] void throw_in_use(const std::string& dir, int fd) {
  const std::string who = describe_holder(fd);
  close(fd);
  throw Error(fmt::format("{}: the run directory is in use by {}; two processes must not write one run directory "
                          "(wait for it to end or stop it, or choose another run.output_dir)",
                          dir, who));
}

// Throws when another process holds the lock of an existing lock file; writes nothing.
void probe_lock(const std::string& dir) {
  const fs::path p = fs::path(dir) / kLockFile;
  std::error_code ec;
  if (!fs::exists(p, ec)) return;
  const int fd = open(p.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;  // unreadable: acquire() reports it
  if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    if (errno == EWOULDBLOCK) throw_in_use(dir, fd);
  } else {
    flock(fd, LOCK_UN);
  }
  close(fd);
}

std::string latest_step_note(const std::string& dir) {
  const std::vector<int64_t> steps = list_checkpoints(dir);
  if (steps.empty()) return "no checkpoint";
  return fmt::format("latest checkpoint: step {}", steps.back());
}

std::vector<fs::path> run_files(const std::string& dir) {
  std::vector<fs::path> out;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return out;
  for (const char* f : kRunFiles)
    if (fs::exists(fs::path(dir) / f, ec)) out.push_back(fs::path(dir) / f);
  if (fs::exists(fs::path(dir) / "checkpoints", ec)) out.push_back(fs::path(dir) / "checkpoints");
  for (const fs::directory_entry& e : fs::directory_iterator(dir, ec))
    if (e.path().filename().string().rfind(kEventsPrefix, 0) == 0) out.push_back(e.path());
  std::sort(out.begin(), out.end());
  return out;
}

void remove_run_files(const std::string& dir) {
  for (const fs::path& p : run_files(dir)) {
    std::error_code ec;
    fs::remove_all(p, ec);
    if (ec) throw Error(fmt::format("{}: cannot remove (--overwrite): {}", p.string(), ec.message()));
  }
}

[[noreturn]] void throw_holds_run(const RunDirRequest& req) {
  std::string names;
  for (const fs::path& p : run_files(req.dir)) names += (names.empty() ? "" : ", ") + p.filename().string();
  throw Error(fmt::format("{}: the directory already holds a run ({}; {}) and a new run would overwrite it. Continue "
                          "it with `rlcu {} --resume {}`, start over with `--overwrite` (deletes its metrics, samples "
                          "and checkpoints), or set run.output_dir to another directory",
                          req.dir, names, latest_step_note(req.dir), req.command, req.dir));
}

// ---- inputs --------------------------------------------------------------------------------------------------------

// The files a directory input stands for, sorted.
std::vector<fs::path> input_files(const std::string& key, const std::string& path) {
  std::error_code ec;
  if (fs::is_regular_file(path, ec)) return {fs::path(path)};
  if (!fs::is_directory(path, ec)) throw Error(fmt::format("{} = \"{}\": no such file or directory", key, path));
  std::vector<fs::path> out;
  for (const fs::directory_entry& e : fs::directory_iterator(path, ec)) {
    const std::string ext = e.path().extension().string();
    if ((ext == ".safetensors" || ext == ".json" || ext == ".jinja") && fs::is_regular_file(e.path(), ec))
      out.push_back(e.path());
  }
  if (ec) throw Error(fmt::format("{} = \"{}\": cannot list: {}", key, path, ec.message()));
  std::sort(out.begin(), out.end());
  return out;
}

json describe_input(const RunInput& in) {
  json files = json::object();
  for (const fs::path& f : input_files(in.key, in.path)) {
    std::error_code ec;
    const uintmax_t size = fs::file_size(f, ec);
    if (ec) throw Error(fmt::format("{}: cannot read its size ({}): {}", f.string(), in.key, ec.message()));
    files[f.filename().string()] = {{"size", size}, {"xxh64", hex64(file_xxh64(f.string()))}};
  }
  std::error_code ec;
  const fs::path abs = fs::absolute(in.path, ec);
  return {{"path", ec ? in.path : abs.lexically_normal().string()}, {"files", files}};
}

json describe_inputs(const std::vector<RunInput>& inputs) {
  json j = json::object();
  for (const RunInput& in : inputs)
    if (!in.path.empty()) j[in.key] = describe_input(in);
  return j;
}

void write_inputs(const std::string& run_dir, const json& inputs) {
  const fs::path p = fs::path(run_dir) / kInputsFile, tmp = fs::path(run_dir) / ".inputs.json.tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << json{{"format", "rlcu-run-inputs"}, {"version", 1}, {"inputs", inputs}}.dump(2) << "\n";
    out.flush();
    if (!out) throw Error(fmt::format("{}: write failed: {}", tmp.string(), std::strerror(errno)));
  }
  std::error_code ec;
  fs::rename(tmp, p, ec);
  if (ec) throw Error(fmt::format("{}: cannot rename to {}: {}", tmp.string(), p.string(), ec.message()));
}

// The file `name` of input `path`: the path itself for a file input, else the file in the directory.
std::string member(const std::string& path, const std::string& name) {
  std::error_code ec;
  return fs::is_directory(path, ec) ? (fs::path(path) / name).string() : path;
}

// What differs between a recorded input and the current one, or "".
std::string input_difference(const std::string& key, const json& was, const json& now) {
  const std::string hint = "a resumed run must read what the run started with; restore it, or start a new run";
  const std::string was_path = was.value("path", std::string()), now_path = now.value("path", std::string());
  const json& wf = was["files"];
  const json& nf = now["files"];
  for (auto it = wf.begin(); it != wf.end(); ++it) {
    const std::string file = member(now_path, it.key());
    if (!nf.contains(it.key()))
      return fmt::format("{}: {} no longer exists (the run started with {} = \"{}\"); {}", key, file, key, was_path,
                         hint);
    const json& a = it.value();
    const json& b = nf[it.key()];
    if (a["size"] != b["size"])
      return fmt::format("{}: {} changed since the run started ({} bytes then, {} now); {}", key, file,
                         a["size"].dump(), b["size"].dump(), hint);
    if (a["xxh64"] != b["xxh64"])
      return fmt::format("{}: {} changed since the run started (content hash xxh64 {} then, {} now; same size); {}",
                         key, file, a["xxh64"].get<std::string>(), b["xxh64"].get<std::string>(), hint);
  }
  for (auto it = nf.begin(); it != nf.end(); ++it)
    if (!wf.contains(it.key()))
      return fmt::format("{}: {} is new since the run started (it was not in {} = \"{}\" then); {}", key,
                         member(now_path, it.key()), key, was_path, hint);
  return "";
}

}  // namespace

// ---- XXH64 (public) ------------------------------------------------------------------------------------------------

uint64_t xxh64(const void* data, size_t n, uint64_t seed) {
  const auto* p = static_cast<const unsigned char*>(data);
  Xxh64State st(seed);
  const size_t used = st.stripes(p, n);
  return st.finish(p + used, n - used, seed);
}

uint64_t file_xxh64(const std::string& path) {
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error(fmt::format("{}: cannot open: {}", path, std::strerror(errno)));
  constexpr size_t kChunk = size_t{1} << 20;
  std::vector<unsigned char> buf(kChunk);
  Xxh64State st(0);
  size_t have = 0;  // bytes in buf not yet hashed (< 32 between reads except while filling)
  for (;;) {
    const ssize_t r = read(fd, buf.data() + have, kChunk - have);
    if (r < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      close(fd);
      throw Error(fmt::format("{}: read failed: {}", path, std::strerror(err)));
    }
    if (r == 0) break;
    have += static_cast<size_t>(r);
    if (have == kChunk) have -= st.stripes(buf.data(), have);  // kChunk is a multiple of 32: all consumed
  }
  close(fd);
  const size_t used = st.stripes(buf.data(), have);
  return st.finish(buf.data() + used, have - used, 0);
}

// ---- lock (public) -------------------------------------------------------------------------------------------------

RunDirLock RunDirLock::acquire(const std::string& dir, const std::string& command) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw Error(fmt::format("{}: cannot create the run directory: {}", dir, ec.message()));
  const std::string p = (fs::path(dir) / kLockFile).string();
  const int fd = open(p.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) throw Error(fmt::format("{}: cannot open the run lock: {}", p, std::strerror(errno)));
  if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    if (errno == EWOULDBLOCK) throw_in_use(dir, fd);
    const int err = errno;
    close(fd);
    throw Error(fmt::format("{}: cannot lock: {}", p, std::strerror(err)));
  }
  const std::string who =
      json{{"pid", static_cast<int64_t>(getpid())}, {"host", host_name()}, {"command", command}}.dump() + "\n";
  if (ftruncate(fd, 0) != 0 || pwrite(fd, who.data(), who.size(), 0) != static_cast<ssize_t>(who.size())) {
    const int err = errno;
    close(fd);
    throw Error(fmt::format("{}: cannot write the run lock: {}", p, std::strerror(err)));
  }
  RunDirLock l;
  l.fd_ = fd;
  return l;
}

RunDirLock::RunDirLock(RunDirLock&& o) noexcept : fd_(o.fd_) { o.fd_ = -1; }

RunDirLock& RunDirLock::operator=(RunDirLock&& o) noexcept {
  if (this != &o) {
    if (fd_ >= 0) close(fd_);
    fd_ = o.fd_;
    o.fd_ = -1;
  }
  return *this;
}

RunDirLock::~RunDirLock() {
  if (fd_ >= 0) close(fd_);  // releases the flock
}

// ---- starting a run ------------------------------------------------------------------------------------------------

bool run_dir_holds_run(const std::string& dir) { return !run_files(dir).empty(); }

RunDirectory open_run_dir(const RunDirRequest& req) {
  if (req.resume && req.overwrite)
    throw UsageError(fmt::format("{}: --resume continues a run and --overwrite starts it over; give one of them",
                                 req.command));
  probe_lock(req.dir);
  const bool has_checkpoint = !latest_checkpoint(req.dir).empty();
  RunDirectory rd;
  rd.resuming = req.resume || (req.resume_mode == "auto" && !req.overwrite && has_checkpoint);
  // --resume without a checkpoint is reported by load_checkpoint, which names what is missing.
  const bool clear = !rd.resuming && (req.overwrite || req.resume_mode == "auto");
  if (!rd.resuming && !clear && run_dir_holds_run(req.dir)) throw_holds_run(req);
  rd.lock = RunDirLock::acquire(req.dir, req.command);
  if (!rd.resuming && !clear && run_dir_holds_run(req.dir)) throw_holds_run(req);  // written while we locked
  if (clear && run_dir_holds_run(req.dir)) {
    spdlog::info("{}: removing the earlier run's files ({})", req.dir,
                 req.overwrite ? "--overwrite" : "run.resume = auto and no checkpoint to resume from");
    remove_run_files(req.dir);
  }
  if (req.resume_mode == "auto" && rd.resuming && !req.resume)
    spdlog::info("{}: run.resume = auto: resuming from its {}", req.dir, latest_step_note(req.dir));
  return rd;
}

// ---- inputs (public) -----------------------------------------------------------------------------------------------

void record_run_inputs(const std::string& run_dir, const std::vector<RunInput>& inputs) {
  write_inputs(run_dir, describe_inputs(inputs));
}

void verify_run_inputs(const std::string& run_dir, const std::vector<RunInput>& inputs) {
  const fs::path p = fs::path(run_dir) / kInputsFile;
  std::error_code ec;
  if (!fs::exists(p, ec)) {
    spdlog::warn("{}: missing (a run from an earlier rlcu): the inputs cannot be checked against the run's start; "
                 "recording them now",
                 p.string());
    record_run_inputs(run_dir, inputs);
    return;
  }
  std::ifstream in(p, std::ios::binary);
  const json doc = json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (!doc.is_object() || !doc.contains("inputs") || !doc["inputs"].is_object())
    throw Error(fmt::format("{}: not an rlcu inputs record (expected {{\"format\": \"rlcu-run-inputs\", \"inputs\": "
                            "{{...}}}})",
                            p.string()));
  const json& was = doc["inputs"];
  std::map<std::string, std::string> now_paths;
  for (const RunInput& i : inputs) now_paths[i.key] = i.path;
  for (auto it = was.begin(); it != was.end(); ++it) {
    const std::string now_path = now_paths.count(it.key()) ? now_paths[it.key()] : "";
    if (now_path.empty())
      throw Error(fmt::format("{}: the run started with {} = \"{}\" and the resumed config leaves it empty", p.string(),
                              it.key(), it.value().value("path", std::string())));
    std::error_code ec2;
    if (!fs::exists(now_path, ec2))
      throw Error(fmt::format("{}: \"{}\" no longer exists (recorded in {} when the run started); a resumed run must "
                              "read what the run started with: restore it, or start a new run",
                              it.key(), now_path, p.string()));
    const std::string diff = input_difference(it.key(), it.value(), describe_input({it.key(), now_path}));
    if (!diff.empty()) throw Error(diff);
  }
  for (const RunInput& i : inputs)
    if (!i.path.empty() && !was.contains(i.key))
      throw Error(fmt::format("{}: {} = \"{}\" was not part of the run when it started (see {}); start a new run to "
                              "use it",
                              i.key, i.key, i.path, p.string()));
}

}  // namespace rlcu
