// Fuzz target: the safetensors reader (length field, header JSON, entry validation) and the converting read of
// every float tensor. Input: the file's bytes (written to a temporary file, as the reader maps a path).
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "rlcu/error.h"
#include "rlcu/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = "/tmp/rlcu_fuzz_" + std::to_string(getpid()) + ".safetensors";
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) return 0;
  std::fwrite(data, 1, size, f);
  std::fclose(f);
  try {
    const rlcu::SafetensorsFile st = rlcu::SafetensorsFile::open(path);
    for (const auto& [name, e] : st.tensors()) {
      if (e.dtype != "F32" && e.dtype != "BF16" && e.dtype != "F16") continue;
      std::vector<float> out(static_cast<size_t>(e.numel()));
      std::vector<uint16_t> out16(static_cast<size_t>(e.numel()));
      try {
        st.read_converted(e, out.data(), rlcu::DType::F32);
      } catch (const rlcu::Error&) {
      }
      try {
        st.read_converted(e, out16.data(), rlcu::DType::BF16);
      } catch (const rlcu::Error&) {
      }
    }
  } catch (const rlcu::Error&) {
  }
  return 0;
}
