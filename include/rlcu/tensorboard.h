// TensorBoard event files: RUN/events.out.tfevents.<unix time>.<hostname>, written next to metrics.jsonl.
//
// File format (what TensorBoard's readers expect; no protobuf library involved):
//   TFRecord framing per record:  uint64 length (little endian) | uint32 masked_crc32c(length bytes)
//                                 | payload (length bytes)      | uint32 masked_crc32c(payload)
//   masked_crc32c(x) = ((c >> 15) | (c << 17)) + 0xa282ead8 with c = CRC-32C (Castagnoli) of x, mod 2^32.
//   Payloads are serialized tensorflow.Event messages, encoded by hand with the few fields used here:
//     Event   { double wall_time = 1; int64 step = 2; oneof { string file_version = 3; Summary summary = 5;
//               SessionLog session_log = 7; } }
//     Summary { repeated Value value = 1; }   Value { string tag = 1; float simple_value = 2; }
//     SessionLog { SessionStatus status = 1; }   (START = 1)
//   The first record of a file is Event{wall_time, file_version: "brain.Event:2"}; each metrics record then becomes
//   one Event{wall_time, step, summary} holding one simple_value per numeric field (float32; booleans as 0 / 1;
//   strings, nulls, arrays and objects are skipped; non-finite numbers, which metrics.jsonl writes as null, are kept
//   as NaN / inf). Each event is flushed when written, so a running TensorBoard sees every step.
//
// Runs and resumes: a fresh run (resume_step < 0) deletes the run directory's earlier events.out.tfevents.* files,
// as metrics.jsonl is truncated. A resumed run keeps them and starts a new file (named after every existing one, so
// it sorts last, as TensorBoard reads a directory's files in name order) whose second record is
// Event{step: resume_step + 1, session_log: START}: TensorBoard's Python reader then drops the earlier files' points
// at steps >= resume_step + 1, and its Rust data server drops them when the steps go back; either way each step
// shows the values metrics.jsonl holds.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace rlcu {

namespace tensorboard {

// CRC-32C (Castagnoli, reflected polynomial 0x82f63b78, initial value and final xor 0xffffffff):
// crc32c("123456789") = 0xe3069283.
uint32_t crc32c(const void* data, size_t n);
// TFRecord's masked form of crc32c (see the file comment).
uint32_t masked_crc32c(const void* data, size_t n);
// One TFRecord: framing around `payload`.
std::string tfrecord(const std::string& payload);

// Serialized Event messages.
std::string file_version_event(double wall_time);
std::string session_start_event(double wall_time, int64_t step);
std::string scalars_event(double wall_time, int64_t step, const std::vector<std::pair<std::string, float>>& values);

// The simple_value scalars of one metrics record, in the record's order (see the file comment for the rules).
std::vector<std::pair<std::string, float>> record_scalars(const nlohmann::ordered_json& record);

}  // namespace tensorboard

// Writes RUN/events.out.tfevents.* (see the file comment). Move-only; every failed write is an rlcu::Error naming
// the file.
class TensorBoardWriter {
 public:
  TensorBoardWriter(const std::string& run_dir, int64_t resume_step);
  ~TensorBoardWriter();
  TensorBoardWriter(TensorBoardWriter&& o) noexcept;
  TensorBoardWriter& operator=(TensorBoardWriter&&) = delete;
  TensorBoardWriter(const TensorBoardWriter&) = delete;
  TensorBoardWriter& operator=(const TensorBoardWriter&) = delete;

  // One event at the record's integer "step" with its numeric fields; flushed.
  void write(const nlohmann::ordered_json& record);
  const std::string& path() const { return path_; }

 private:
  void append(const std::string& event);

  std::string path_;
  std::FILE* f_ = nullptr;
};

}  // namespace rlcu
