// TensorBoard event files (include/rlcu/tensorboard.h): CRC-32C against published check values (RFC 3720 B.4 and
// the "123456789" check), TFRecord framing, the Event encodings byte for byte, and the writer (file name, first
// record, one scalar event per metrics record, the fresh-run and resume rules, write errors). TensorBoard's own
// reader is run on a real training run by tests/e2e/tensorboard_reader.py.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "rlcu/error.h"
#include "rlcu/metrics.h"
#include "rlcu/tensorboard.h"

using namespace rlcu;
namespace fs = std::filesystem;
namespace tb = rlcu::tensorboard;

namespace {

std::string fresh_dir() {
  char tmpl[] = "/tmp/rlcu_tensorboard_XXXXXX";
  const char* d = mkdtemp(tmpl);
  if (!d) throw std::runtime_error("mkdtemp failed");
  return d;
}

std::string bytes(std::initializer_list<int> b) {
  std::string s;
  for (int x : b) s += static_cast<char>(x);
  return s;
}

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

uint64_t le(const std::string& s, size_t at, int n) {
  uint64_t v = 0;
  for (int i = 0; i < n; ++i) v |= static_cast<uint64_t>(static_cast<unsigned char>(s[at + i])) << (8 * i);
  return v;
}

// Splits a file into its TFRecord payloads, checking both CRCs of every record.
std::vector<std::string> records(const std::string& file) {
  std::vector<std::string> out;
  size_t at = 0;
  while (at < file.size()) {
    EXPECT_LE(at + 12, file.size());
    const uint64_t n = le(file, at, 8);
    EXPECT_EQ(le(file, at + 8, 4), tb::masked_crc32c(file.data() + at, 8));
    const std::string payload = file.substr(at + 12, n);
    EXPECT_EQ(le(file, at + 12 + n, 4), tb::masked_crc32c(payload.data(), payload.size()));
    out.push_back(payload);
    at += 16 + n;
  }
  return out;
}

// A minimal protobuf reader for the Event fields the writer uses.
struct Decoded {
  double wall_time = 0;
  int64_t step = -1;
  std::string file_version;
  int session_status = 0;
  std::vector<std::pair<std::string, float>> values;
};

uint64_t varint(const std::string& s, size_t& at) {
  uint64_t v = 0;
  for (int shift = 0;; shift += 7) {
    const auto b = static_cast<unsigned char>(s.at(at++));
    v |= static_cast<uint64_t>(b & 0x7f) << shift;
    if (!(b & 0x80)) return v;
  }
}

// (field, wire type, payload) of each field of a message; varint values come back as their decimal text.
std::vector<std::tuple<int, int, std::string>> fields(const std::string& m) {
  std::vector<std::tuple<int, int, std::string>> out;
  size_t at = 0;
  while (at < m.size()) {
    const uint64_t key = varint(m, at);
    const int field = static_cast<int>(key >> 3), wire = static_cast<int>(key & 7);
    if (wire == 0) {
      out.emplace_back(field, wire, std::to_string(varint(m, at)));
    } else if (wire == 1 || wire == 5) {
      const size_t n = wire == 1 ? 8 : 4;
      out.emplace_back(field, wire, m.substr(at, n));
      at += n;
    } else {
      EXPECT_EQ(wire, 2);
      const uint64_t n = varint(m, at);
      out.emplace_back(field, wire, m.substr(at, n));
      at += n;
    }
  }
  return out;
}

Decoded decode(const std::string& event) {
  Decoded d;
  for (const auto& [f, w, p] : fields(event)) {
    if (f == 1) {
      const uint64_t bits = le(p, 0, 8);
      std::memcpy(&d.wall_time, &bits, 8);
    } else if (f == 2) {
      d.step = std::stoll(p);
    } else if (f == 3) {
      d.file_version = p;
    } else if (f == 7) {
      for (const auto& [sf, sw, sp] : fields(p))
        if (sf == 1) d.session_status = std::stoi(sp);
    } else if (f == 5) {
      for (const auto& [vf, vw, vp] : fields(p)) {
        EXPECT_EQ(vf, 1);
        std::string tag;
        float value = NAN;
        for (const auto& [xf, xw, xp] : fields(vp)) {
          if (xf == 1) tag = xp;
          if (xf == 2) {
            EXPECT_EQ(xw, 5);
            const auto bits = static_cast<uint32_t>(le(xp, 0, 4));
            std::memcpy(&value, &bits, 4);
          }
        }
        d.values.emplace_back(tag, value);
      }
    } else {
      ADD_FAILURE() << "unexpected Event field " << f;
    }
  }
  return d;
}

std::vector<fs::path> event_files(const std::string& dir) {
  std::vector<fs::path> out;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().filename().string().rfind("events.out.tfevents.", 0) == 0) out.push_back(e.path());
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace

TEST(TensorBoard, Crc32cCheckValues) {
  EXPECT_EQ(tb::crc32c("", 0), 0u);
  EXPECT_EQ(tb::crc32c("123456789", 9), 0xe3069283u);
  EXPECT_EQ(tb::crc32c("a", 1), 0xc1d04330u);
  std::string zeros(32, '\0'), ones(32, '\xff'), inc;
  for (int i = 0; i < 32; ++i) inc += static_cast<char>(i);
  EXPECT_EQ(tb::crc32c(zeros.data(), 32), 0x8a9136aau);  // RFC 3720 B.4
  EXPECT_EQ(tb::crc32c(ones.data(), 32), 0x62a8ab43u);
  EXPECT_EQ(tb::crc32c(inc.data(), 32), 0x46dd794eu);
  // Masked: rotate right by 15, add 0xa282ead8.
  EXPECT_EQ(tb::masked_crc32c("123456789", 9), 0xc78ab0e5u);
  EXPECT_EQ(tb::masked_crc32c("", 0), 0xa282ead8u);
}

TEST(TensorBoard, RecordFraming) {
  const std::string r = tb::tfrecord("hello");
  ASSERT_EQ(r.size(), 8u + 4 + 5 + 4);
  EXPECT_EQ(r.substr(0, 8), bytes({5, 0, 0, 0, 0, 0, 0, 0}));
  EXPECT_EQ(le(r, 8, 4), 0x3e04b2eau);  // masked crc of the 8 length bytes
  EXPECT_EQ(r.substr(12, 5), "hello");
  EXPECT_EQ(le(r, 17, 4), 0x191c1fbbu);  // masked crc of "hello"
  const std::string empty = tb::tfrecord("");
  ASSERT_EQ(empty.size(), 16u);
  EXPECT_EQ(le(empty, 8, 4), 0x07980329u);
  EXPECT_EQ(le(empty, 12, 4), 0xa282ead8u);
}

TEST(TensorBoard, EventEncodings) {
  // wall_time 1.5 = 0x3ff8000000000000, little endian after the key 0x09.
  const std::string wt = bytes({0x09, 0, 0, 0, 0, 0, 0, 0xf8, 0x3f});
  EXPECT_EQ(tb::file_version_event(1.5), wt + bytes({0x1a, 13}) + "brain.Event:2");
  EXPECT_EQ(tb::session_start_event(1.5, 3), wt + bytes({0x10, 3, 0x3a, 2, 0x08, 1}));
  // step 300 = varint ac 02; value {tag "a", simple_value 0.5f = 0x3f000000}.
  EXPECT_EQ(tb::scalars_event(1.5, 300, {{"a", 0.5f}}),
            wt + bytes({0x10, 0xac, 0x02, 0x2a, 10, 0x0a, 8, 0x0a, 1, 'a', 0x15, 0, 0, 0, 0x3f}));
  const Decoded d = decode(tb::scalars_event(2.25, 7, {{"reward", 0.25f}, {"time/step_s", 3.0f}}));
  EXPECT_EQ(d.wall_time, 2.25);
  EXPECT_EQ(d.step, 7);
  EXPECT_EQ(d.values, (std::vector<std::pair<std::string, float>>{{"reward", 0.25f}, {"time/step_s", 3.0f}}));
}

TEST(TensorBoard, RecordScalarsKeepNumbersAndBooleans) {
  nlohmann::ordered_json r;
  r["step"] = 4;
  r["reward"] = 0.125;
  r["name"] = "text";
  r["skipped_update"] = true;
  r["tokens"] = 1000;
  r["kl"] = std::nan("");
  r["phase"] = {{"rollout", 1.5}};
  r["list"] = {1, 2};
  r["none"] = nullptr;
  const auto s = tb::record_scalars(r);
  ASSERT_EQ(s.size(), 4u);
  EXPECT_EQ(s[0], (std::pair<std::string, float>{"reward", 0.125f}));
  EXPECT_EQ(s[1], (std::pair<std::string, float>{"skipped_update", 1.0f}));
  EXPECT_EQ(s[2], (std::pair<std::string, float>{"tokens", 1000.0f}));
  EXPECT_EQ(s[3].first, "kl");
  EXPECT_TRUE(std::isnan(s[3].second));
}

TEST(TensorBoard, WriterFileNameFirstRecordAndScalars) {
  const std::string dir = fresh_dir() + "/run";
  std::string path;
  {
    TensorBoardWriter w(dir, -1);
    path = w.path();
    const std::string name = fs::path(path).filename().string();
    ASSERT_EQ(name.rfind("events.out.tfevents.", 0), 0u) << name;
    const std::string rest = name.substr(std::strlen("events.out.tfevents."));
    ASSERT_GT(rest.size(), 11u);
    EXPECT_EQ(rest.find_first_not_of("0123456789"), 10u) << name;  // ten-digit unix time, then .hostname
    EXPECT_EQ(rest[10], '.');
    const double t = std::stod(rest.substr(0, 10));
    EXPECT_NEAR(t, static_cast<double>(std::time(nullptr)), 60);
    nlohmann::ordered_json r;
    r["step"] = 1;
    r["loss"] = 2.5;
    w.write(r);
    // Flushed: readable while the writer is open.
    const auto recs = records(read_all(path));
    ASSERT_EQ(recs.size(), 2u);
    EXPECT_EQ(decode(recs[0]).file_version, "brain.Event:2");
    EXPECT_NEAR(decode(recs[0]).wall_time, t, 1.0);
    const Decoded d = decode(recs[1]);
    EXPECT_EQ(d.step, 1);
    EXPECT_GE(d.wall_time, t);
    EXPECT_EQ(d.values, (std::vector<std::pair<std::string, float>>{{"loss", 2.5f}}));
  }
  // A record without an integer step is an internal error, as for metrics.jsonl.
  TensorBoardWriter w2(fresh_dir(), -1);
  nlohmann::ordered_json bad;
  bad["loss"] = 1.0;
  EXPECT_THROW(w2.write(bad), Error);
}

TEST(TensorBoard, FreshRunRemovesOldEventsResumeAppendsAFileThatSortsLast) {
  const std::string dir = fresh_dir();
  nlohmann::ordered_json r;
  r["step"] = 1;
  r["x"] = 1.0;
  // An earlier run's file with a later name than this process can make: a fresh run deletes it.
  std::ofstream(dir + "/events.out.tfevents.9999999999.elsewhere") << "old";
  std::ofstream(dir + "/other.txt") << "kept";
  std::string first;
  {
    TensorBoardWriter w(dir, -1);
    first = w.path();
    w.write(r);
  }
  ASSERT_EQ(event_files(dir), (std::vector<fs::path>{first}));
  EXPECT_TRUE(fs::exists(dir + "/other.txt"));
  // Resume at step 1: a second file, sorting after the first even within the same second, opens with a session
  // START at step 2 (TensorBoard's Python reader then drops the first file's points from step 2 on).
  std::string second;
  {
    TensorBoardWriter w(dir, 1);
    second = w.path();
    r["step"] = 2;
    w.write(r);
  }
  const auto files = event_files(dir);
  ASSERT_EQ(files.size(), 2u);
  EXPECT_EQ(files[0], fs::path(first));
  EXPECT_EQ(files[1], fs::path(second));
  const auto recs = records(read_all(second));
  ASSERT_EQ(recs.size(), 3u);
  EXPECT_EQ(decode(recs[0]).file_version, "brain.Event:2");
  EXPECT_EQ(decode(recs[1]).session_status, 1);
  EXPECT_EQ(decode(recs[1]).step, 2);
  EXPECT_EQ(decode(recs[2]).step, 2);
  EXPECT_EQ(records(read_all(first)).size(), 2u);  // untouched
  // A fresh start afterwards removes both.
  { TensorBoardWriter w(dir, -1); }
  EXPECT_EQ(event_files(dir).size(), 1u);
}

TEST(TensorBoard, MetricsWriterFeedsTheEventsWhenAskedFor) {
  const std::string dir = fresh_dir();
  MetricsOptions on;
  on.tensorboard = true;
  {
    MetricsWriter m(dir, -1, on);
    ASSERT_FALSE(m.tensorboard_path().empty());
    nlohmann::ordered_json r;
    r["step"] = 3;
    r["reward"] = 0.5;
    r["note"] = "x";
    m.write(r);
    const auto recs = records(read_all(m.tensorboard_path()));
    ASSERT_EQ(recs.size(), 2u);
    EXPECT_EQ(decode(recs[1]).values, (std::vector<std::pair<std::string, float>>{{"reward", 0.5f}}));
  }
  const std::string off_dir = fresh_dir();
  MetricsWriter off(off_dir, -1);
  EXPECT_TRUE(off.tensorboard_path().empty());
  EXPECT_TRUE(event_files(off_dir).empty());
}

TEST(TensorBoard, UnwritableDirectoryIsAnErrorNamingIt) {
  if (geteuid() == 0) GTEST_SKIP() << "running as root: permissions do not stop writes";
  const std::string dir = fresh_dir();
  fs::permissions(dir, fs::perms::owner_read | fs::perms::owner_exec);
  try {
    TensorBoardWriter w(dir, -1);
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(dir), std::string::npos) << e.what();
  }
  fs::permissions(dir, fs::perms::owner_all);
}

TEST(TensorBoard, FailedWriteIsAnErrorNamingTheFile) {
  if (!fs::exists("/dev/full")) GTEST_SKIP() << "no /dev/full";
  // A resume after a file from the future is named after it (+ ".r<step>"): let that name lead to /dev/full, where
  // every write fails (ENOSPC).
  const std::string dir = fresh_dir();
  const std::string latest = dir + "/events.out.tfevents.9999999999.elsewhere";
  std::ofstream(latest) << "old";
  fs::create_symlink("/dev/full", latest + ".r2");
  try {
    TensorBoardWriter w(dir, 1);
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(latest + ".r2: write failed"), std::string::npos) << e.what();
  }
}
