// Safetensors: memory-mapped reading (one file, or a sharded set through model.safetensors.index.json) with every
// header field validated, conversion of F32/BF16/F16 tensors to F32 or BF16 on load, and a deterministic writer.
//
// File format: u64 little-endian N | N bytes of JSON header | data section. The header is an object mapping each
// tensor name to {"dtype": "F32"|"BF16"|..., "shape": [d0, ...], "data_offsets": [begin, end]} (byte offsets into
// the data section, end - begin == numel * element size) plus an optional "__metadata__" object of strings.
// Every error is an rlcu::Error whose message names the file and, where one is concerned, the tensor.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "rlcu/tensor.h"

namespace rlcu {

// One tensor entry of a safetensors header.
struct SafetensorsEntry {
  std::string name;
  std::string dtype;  // as written in the file: "F32", "BF16", "F16", "I64", ...
  size_t elem_size = 0;
  std::vector<int64_t> shape;
  size_t begin = 0;  // data_offsets, relative to the data section
  size_t end = 0;
  int64_t numel() const;
  std::string shape_str() const;
};

// One memory-mapped, validated safetensors file. Move-only; the mapping lives as long as the object.
class SafetensorsFile {
 public:
  static SafetensorsFile open(const std::string& path);
  SafetensorsFile(SafetensorsFile&& o) noexcept;
  SafetensorsFile& operator=(SafetensorsFile&& o) noexcept;
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;
  ~SafetensorsFile();

  const std::string& path() const { return path_; }
  const std::map<std::string, SafetensorsEntry>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const SafetensorsEntry* find(const std::string& name) const;
  // Raw bytes of an entry (not necessarily aligned).
  const uint8_t* data(const SafetensorsEntry& e) const { return data_ + e.begin; }

  // Converts the entry (F32, BF16 or F16) into `dst` (host memory of numel elements of `dst_dtype`, F32 or BF16).
  // Any other stored dtype is an error naming the file and the tensor, and so is a value that is not finite once
  // converted (NaN or inf in the file, or an F32 value beyond the bf16 range): the message gives its index.
  void read_converted(const SafetensorsEntry& e, void* dst, DType dst_dtype) const;

 private:
  SafetensorsFile() = default;
  void unmap();
  std::string path_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  const uint8_t* data_ = nullptr;  // start of the data section
  std::map<std::string, SafetensorsEntry> tensors_;
  std::map<std::string, std::string> metadata_;
};

// The weights of a model directory: DIR/model.safetensors, or the shards listed by
// DIR/model.safetensors.index.json ({"weight_map": {tensor: file}}); each tensor is in exactly one file and
// the index must agree with the files' headers.
class SafetensorsSet {
 public:
  static SafetensorsSet open_dir(const std::string& dir);

  struct Located {
    const SafetensorsFile* file = nullptr;
    const SafetensorsEntry* entry = nullptr;
  };
  // nullptr members when absent.
  Located find(const std::string& name) const;
  std::vector<std::string> names() const;  // sorted
  const std::vector<SafetensorsFile>& files() const { return files_; }
  // "DIR/model.safetensors" or "DIR/model.safetensors.index.json": what to name when a tensor is missing.
  const std::string& description() const { return description_; }

 private:
  std::vector<SafetensorsFile> files_;
  std::map<std::string, std::pair<size_t, const SafetensorsEntry*>> index_;
  std::string description_;
};

// One tensor to write: a view on any device (F32, BF16 or F16) and the dtype to store (F32, BF16 or F16;
// conversion rounds to nearest even), or a U8 view stored as U8. Shape is the view's shape unless `shape` is given (same numel).
struct SafetensorsWriteItem {
  std::string name;
  Tensor tensor;
  DType file_dtype = DType::F32;
  std::vector<int64_t> shape;
};

// Writes a safetensors file deterministically: names sorted, data laid out in that order without gaps, header
// `{"__metadata__":{...},"name":{"dtype":..,"shape":[..],"data_offsets":[b,e]},...}` padded with spaces to a
// multiple of 8 bytes. Written to PATH.tmp and renamed, so a failed write never leaves a partial PATH.
void write_safetensors(const std::string& path, const std::vector<SafetensorsWriteItem>& items,
                       const std::map<std::string, std::string>& metadata);

// f32 -> f16 bits (round to nearest even, overflow to inf, NaN kept).
uint16_t f32_to_f16(float f);

}  // namespace rlcu
