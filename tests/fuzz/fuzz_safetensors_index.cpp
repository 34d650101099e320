// Fuzz target: a sharded model directory (model.safetensors.index.json and its shards): the index JSON, file names,
// the agreement between the weight map and the shards' headers, and the converting read of every float tensor
// through the set. Input: the index text, then up to three shard files, separated by the line "\n--shard--\n";
// they are written as DIR/model.safetensors.index.json and DIR/a.safetensors, DIR/b.safetensors, DIR/c.safetensors.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "rlcu/error.h"
#include "rlcu/safetensors.h"

namespace {

void write_file(const std::string& path, const std::string& bytes) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) return;
  std::fwrite(bytes.data(), 1, bytes.size(), f);
  std::fclose(f);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  namespace fs = std::filesystem;
  static const std::string dir = "/tmp/rlcu_fuzz_index_" + std::to_string(getpid());
  static const std::string sep = "\n--shard--\n";
  std::error_code ec;
  fs::remove_all(dir, ec);
  fs::create_directories(dir, ec);
  const std::string in(reinterpret_cast<const char*>(data), size);
  std::vector<std::string> parts;
  for (size_t start = 0;;) {
    const size_t at = in.find(sep, start);
    parts.push_back(in.substr(start, at == std::string::npos ? std::string::npos : at - start));
    if (at == std::string::npos || parts.size() == 4) break;
    start = at + sep.size();
  }
  write_file(dir + "/model.safetensors.index.json", parts[0]);
  const char* names[] = {"a.safetensors", "b.safetensors", "c.safetensors"};
  for (size_t i = 1; i < parts.size(); ++i) write_file(dir + "/" + names[i - 1], parts[i]);
  try {
    const rlcu::SafetensorsSet set = rlcu::SafetensorsSet::open_dir(dir);
    for (const std::string& name : set.names()) {
      const rlcu::SafetensorsSet::Located t = set.find(name);
      if (!t.file || !t.entry) continue;
      const rlcu::SafetensorsEntry& e = *t.entry;
      if (e.dtype != "F32" && e.dtype != "BF16" && e.dtype != "F16") continue;
      std::vector<float> out(static_cast<size_t>(e.numel()));
      try {
        t.file->read_converted(e, out.data(), rlcu::DType::F32);
      } catch (const rlcu::Error&) {
      }
    }
  } catch (const rlcu::Error&) {
  }
  return 0;
}
