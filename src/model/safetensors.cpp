// Safetensors reading (mmap + full header validation), sharded index resolution, dtype conversion on load and the
// deterministic writer. See include/rlcu/safetensors.h for the format.
#include "rlcu/json_error.h"
#include "rlcu/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "safetensors data is little-endian; big-endian hosts are not supported");

namespace rlcu {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// Headers above this size are rejected as corrupt (the reference implementation uses the same bound).
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

size_t dtype_elem_size(const std::string& d) {
  static const std::map<std::string, size_t> sizes = {
      {"F64", 8}, {"F32", 4}, {"F16", 2}, {"BF16", 2}, {"I64", 8},  {"I32", 4},     {"I16", 2},    {"I8", 1},
      {"U64", 8}, {"U32", 4}, {"U16", 2}, {"U8", 1},   {"BOOL", 1}, {"F8_E4M3", 1}, {"F8_E5M2", 1}};
  auto it = sizes.find(d);
  return it == sizes.end() ? 0 : it->second;
}

const char* file_dtype_str(DType t) {
  switch (t) {
    case DType::F32: return "F32";
    case DType::BF16: return "BF16";
    case DType::F16: return "F16";
    case DType::U8: return "U8";
    default: return nullptr;
  }
}

// A JSON value as a non-negative integer that fits `limit`, or false.
bool as_uint(const json& v, uint64_t limit, uint64_t* out) {
  if (v.is_number_unsigned()) {
    *out = v.get<uint64_t>();
  } else if (v.is_number_integer()) {
    if (v.get<int64_t>() < 0) return false;
    *out = static_cast<uint64_t>(v.get<int64_t>());
  } else {
    return false;
  }
  return *out <= limit;
}

std::string clip(const std::string& s) { return s.size() > 60 ? s.substr(0, 57) + "..." : s; }

}  // namespace

int64_t SafetensorsEntry::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string SafetensorsEntry::shape_str() const {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

SafetensorsFile::SafetensorsFile(SafetensorsFile&& o) noexcept { *this = std::move(o); }

SafetensorsFile& SafetensorsFile::operator=(SafetensorsFile&& o) noexcept {
  if (this != &o) {
    unmap();
    path_ = std::move(o.path_);
    map_ = std::exchange(o.map_, nullptr);
    map_size_ = std::exchange(o.map_size_, 0);
    data_ = std::exchange(o.data_, nullptr);
    tensors_ = std::move(o.tensors_);
    metadata_ = std::move(o.metadata_);
  }
  return *this;
}

SafetensorsFile::~SafetensorsFile() { unmap(); }

void SafetensorsFile::unmap() {
  if (map_) munmap(map_, map_size_);
  map_ = nullptr;
  map_size_ = 0;
  data_ = nullptr;
}

SafetensorsFile SafetensorsFile::open(const std::string& path) {
  SafetensorsFile f;
  f.path_ = path;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error(fmt::format("{}: cannot open: {}", path, std::strerror(errno)));
  struct stat st {};
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw Error(fmt::format("{}: not a regular file", path));
  }
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  if (size < 8) {
    ::close(fd);
    throw Error(fmt::format("{}: file is {} bytes long, too short for a safetensors file (truncated?)", path, size));
  }
  void* m = mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  const int map_errno = errno;
  ::close(fd);
  if (m == MAP_FAILED) throw Error(fmt::format("{}: cannot mmap: {}", path, std::strerror(map_errno)));
  f.map_ = m;
  f.map_size_ = size;
  const uint8_t* bytes = static_cast<const uint8_t*>(m);

  uint64_t n = 0;
  std::memcpy(&n, bytes, 8);
  if (n == 0 || n > kMaxHeaderBytes)
    throw Error(fmt::format("{}: header length {} is implausible (not a safetensors file?)", path, n));
  if (n > size - 8)
    throw Error(fmt::format("{}: header length {} exceeds the {} bytes after the length field (file truncated?)", path,
                            n, size - 8));
  const char* hb = reinterpret_cast<const char*>(bytes + 8);
  if (hb[0] != '{') throw Error(fmt::format("{}: header does not start with '{{' (not a safetensors file?)", path));

  // Parse, recording top-level keys to reject duplicates (a JSON object keeps only the last of them).
  std::set<std::string> seen;
  std::string duplicate;
  json::parser_callback_t cb = [&](int depth, json::parse_event_t ev, json& parsed) {
    if (ev == json::parse_event_t::key && depth == 1) {
      const std::string k = parsed.get<std::string>();
      if (!seen.insert(k).second && duplicate.empty()) duplicate = k;
    }
    return true;
  };
  json h;
  try {
    h = json::parse(hb, hb + n, cb);
  } catch (const json::exception& e) {
    throw Error(fmt::format("{}: header is not valid JSON: {}", path, json_error_text(e)));
  }
  if (!h.is_object()) throw Error(fmt::format("{}: header is not a JSON object", path));
  if (!duplicate.empty()) throw Error(fmt::format("{}: tensor `{}` appears twice in the header", path, duplicate));

  const uint64_t data_size = size - 8 - n;
  f.data_ = bytes + 8 + n;
  for (auto it = h.begin(); it != h.end(); ++it) {
    const std::string& name = it.key();
    const json& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) throw Error(fmt::format("{}: `__metadata__` must be an object of strings", path));
      for (auto m2 = v.begin(); m2 != v.end(); ++m2) {
        if (!m2.value().is_string())
          throw Error(
              fmt::format("{}: `__metadata__.{}` must be a string, got {}", path, m2.key(), clip(m2.value().dump())));
        f.metadata_[m2.key()] = m2.value().get<std::string>();
      }
      continue;
    }
    const std::string where = fmt::format("{}: tensor `{}`", path, name);
    if (!v.is_object()) throw Error(fmt::format("{}: entry must be an object, got {}", where, clip(v.dump())));
    for (auto k = v.begin(); k != v.end(); ++k)
      if (k.key() != "dtype" && k.key() != "shape" && k.key() != "data_offsets")
        throw Error(fmt::format("{}: unknown field `{}` (expected dtype, shape, data_offsets)", where, k.key()));
    SafetensorsEntry e;
    e.name = name;
    if (!v.contains("dtype") || !v["dtype"].is_string())
      throw Error(fmt::format("{}: `dtype` is missing or not a string", where));
    e.dtype = v["dtype"].get<std::string>();
    e.elem_size = dtype_elem_size(e.dtype);
    if (e.elem_size == 0) throw Error(fmt::format("{}: unknown dtype `{}`", where, clip(e.dtype)));
    if (!v.contains("shape") || !v["shape"].is_array())
      throw Error(fmt::format("{}: `shape` is missing or not an array", where));
    uint64_t numel = 1;
    for (const json& d : v["shape"]) {
      uint64_t dim = 0;
      if (!as_uint(d, uint64_t(1) << 48, &dim))
        throw Error(fmt::format("{}: shape {} must hold non-negative integers", where, clip(v["shape"].dump())));
      e.shape.push_back(static_cast<int64_t>(dim));
      if (dim != 0 && numel > (uint64_t(1) << 56) / dim)
        throw Error(fmt::format("{}: shape {} is too large", where, clip(v["shape"].dump())));
      numel *= dim;
    }
    const json* off = v.contains("data_offsets") ? &v["data_offsets"] : nullptr;
    uint64_t b = 0, en = 0;
    if (!off || !off->is_array() || off->size() != 2 || !as_uint((*off)[0], data_size, &b) ||
        !as_uint((*off)[1], std::numeric_limits<uint64_t>::max(), &en))
      throw Error(fmt::format("{}: `data_offsets` must be [begin, end] with begin within the {}-byte data section",
                              where, data_size));
    if (en < b) throw Error(fmt::format("{}: data_offsets [{}, {}] end before they begin", where, b, en));
    if (en > data_size)
      throw Error(
          fmt::format("{}: data_offsets [{}, {}] extend past the end of the {}-byte data section "
                      "(file truncated?)",
                      where, b, en, data_size));
    if (en - b != numel * e.elem_size)
      throw Error(fmt::format("{}: data_offsets [{}, {}] span {} bytes but dtype {} shape {} needs {}", where, b, en,
                              en - b, e.dtype, e.shape_str(), numel * e.elem_size));
    e.begin = b;
    e.end = en;
    f.tensors_.emplace(name, std::move(e));
  }

  std::vector<const SafetensorsEntry*> by_offset;
  for (const auto& kv : f.tensors_)
    if (kv.second.end > kv.second.begin) by_offset.push_back(&kv.second);
  std::sort(by_offset.begin(), by_offset.end(),
            [](const SafetensorsEntry* a, const SafetensorsEntry* b) { return a->begin < b->begin; });
  for (size_t i = 1; i < by_offset.size(); ++i)
    if (by_offset[i]->begin < by_offset[i - 1]->end)
      throw Error(fmt::format("{}: tensors `{}` [{}, {}] and `{}` [{}, {}] overlap", path, by_offset[i - 1]->name,
                              by_offset[i - 1]->begin, by_offset[i - 1]->end, by_offset[i]->name, by_offset[i]->begin,
                              by_offset[i]->end));
  return f;
}

const SafetensorsEntry* SafetensorsFile::find(const std::string& name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

namespace {

// Non-finite check by bits, branch-free so that it vectorises: the exponent field is all ones (inf or NaN) exactly
// when adding one unit of the exponent carries into the sign bit. OR-ing these sums over a block leaves the sign
// bit set when any value of the block is not finite.
inline bool any_nonfinite_f32(const float* v, size_t n) {
  uint32_t acc = 0;
  for (size_t i = 0; i < n; ++i) {
    uint32_t u;
    std::memcpy(&u, v + i, 4);
    acc |= (u & 0x7f800000u) + 0x00800000u;
  }
  return (acc & 0x80000000u) != 0;
}
inline bool any_nonfinite_bf16(const uint16_t* v, size_t n) {
  uint16_t acc = 0;
  for (size_t i = 0; i < n; ++i) acc |= static_cast<uint16_t>((v[i] & 0x7f80u) + 0x0080u);
  return (acc & 0x8000u) != 0;
}

// Converts n elements with `conv(i)` in blocks that stay in cache, checking each converted block as it is written.
template <typename Out, typename Conv, typename Any>
bool convert_checked(Out* o, size_t n, Conv conv, Any any_bad) {
  constexpr size_t kBlock = 8192;
  bool bad = false;
  for (size_t b = 0; b < n; b += kBlock) {
    const size_t e = std::min(n, b + kBlock);
    for (size_t i = b; i < e; ++i) o[i] = conv(i);
    bad |= any_bad(o + b, e - b);
  }
  return bad;
}

// The same for a stored dtype equal to the destination's: block copies.
inline bool copy_checked_bf16(uint16_t* o, const uint8_t* src, size_t n) {
  constexpr size_t kBlock = 8192;
  bool bad = false;
  for (size_t b = 0; b < n; b += kBlock) {
    const size_t e = std::min(n, b + kBlock);
    std::memcpy(o + b, src + 2 * b, 2 * (e - b));
    bad |= any_nonfinite_bf16(o + b, e - b);
  }
  return bad;
}

}  // namespace

void SafetensorsFile::read_converted(const SafetensorsEntry& e, void* dst, DType dst_dtype) const {
  RLCU_CHECK(dst_dtype == DType::F32 || dst_dtype == DType::BF16, "read_converted to {}", dtype_name(dst_dtype));
  const size_t n = static_cast<size_t>(e.numel());
  const uint8_t* src = data(e);
  enum class Src { F32, BF16, F16 } st;
  if (e.dtype == "F32")
    st = Src::F32;
  else if (e.dtype == "BF16")
    st = Src::BF16;
  else if (e.dtype == "F16")
    st = Src::F16;
  else
    throw Error(
        fmt::format("{}: tensor `{}` has dtype {}; model weights must be F32, BF16 or F16", path_, e.name, e.dtype));
  auto load16 = [src](size_t i) {
    uint16_t h;
    std::memcpy(&h, src + 2 * i, 2);
    return h;
  };
  auto load32 = [src](size_t i) {
    float f;
    std::memcpy(&f, src + 4 * i, 4);
    return f;
  };
  // Every value is checked as it is converted: a NaN or inf in the file, or a value that overflows the destination
  // dtype (F32 above the bf16 range), is an error naming the tensor, not a model that computes NaN later.
  bool bad = false;
  if (dst_dtype == DType::F32) {
    float* o = static_cast<float*>(dst);
    const auto bad_f = any_nonfinite_f32;
    if (st == Src::F32)
      bad = convert_checked(o, n, load32, bad_f);
    else if (st == Src::BF16)
      bad = convert_checked(o, n, [&](size_t i) { return bf16_to_f32(load16(i)); }, bad_f);
    else
      bad = convert_checked(o, n, [&](size_t i) { return f16_to_f32(load16(i)); }, bad_f);
  } else {
    uint16_t* o = static_cast<uint16_t*>(dst);
    const auto bad_b = any_nonfinite_bf16;
    if (st == Src::BF16)
      bad = copy_checked_bf16(o, src, n);
    else if (st == Src::F32)
      bad = convert_checked(o, n, [&](size_t i) { return f32_to_bf16(load32(i)); }, bad_b);
    else
      bad = convert_checked(o, n, [&](size_t i) { return f32_to_bf16(f16_to_f32(load16(i))); }, bad_b);
  }
  if (!bad) return;
  // The error path: find the first offending element and say what it is.
  for (size_t i = 0; i < n; ++i) {
    const float stored = st == Src::F32 ? load32(i) : st == Src::BF16 ? bf16_to_f32(load16(i)) : f16_to_f32(load16(i));
    const float converted = dst_dtype == DType::F32 ? static_cast<const float*>(dst)[i]
                                                    : bf16_to_f32(static_cast<const uint16_t*>(dst)[i]);
    if (std::isfinite(converted)) continue;
    if (std::isfinite(stored))
      throw Error(fmt::format("{}: tensor `{}`: element {} of {} ({:g}, {}) overflows {} (inf)", path_, e.name, i, n,
                              stored, e.dtype, dtype_name(dst_dtype)));
    throw Error(fmt::format("{}: tensor `{}`: element {} of {} is {} (weights must be finite)", path_, e.name, i, n,
                            std::isnan(stored) ? "NaN" : stored > 0 ? "inf" : "-inf"));
  }
  RLCU_CHECK(false, "read_converted: a non-finite value flagged but not found in `{}`", e.name);
}

SafetensorsSet SafetensorsSet::open_dir(const std::string& dir) {
  SafetensorsSet s;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) throw Error(fmt::format("{}: not a directory", dir));
  const std::string single = (fs::path(dir) / "model.safetensors").string();
  const std::string index_path = (fs::path(dir) / "model.safetensors.index.json").string();
  if (fs::exists(single, ec)) {
    s.description_ = single;
    s.files_.push_back(SafetensorsFile::open(single));
    for (const auto& kv : s.files_[0].tensors()) s.index_[kv.first] = {0, &kv.second};
    return s;
  }
  if (!fs::exists(index_path, ec))
    throw Error(fmt::format("{}: no model.safetensors or model.safetensors.index.json", dir));
  s.description_ = index_path;
  std::ifstream in(index_path);
  if (!in) throw Error(fmt::format("{}: cannot open", index_path));
  std::stringstream text;
  text << in.rdbuf();
  json idx;
  try {
    idx = json::parse(text.str());
  } catch (const json::exception& e) {
    throw Error(json_parse_error(index_path, text.str(), e));
  }
  if (!idx.is_object() || !idx.contains("weight_map") || !idx["weight_map"].is_object())
    throw Error(fmt::format("{}: expected an object with a `weight_map` object", index_path));
  std::map<std::string, std::string> weight_map;
  std::map<std::string, size_t> file_ids;
  std::vector<std::string> file_names;
  for (auto it = idx["weight_map"].begin(); it != idx["weight_map"].end(); ++it) {
    if (!it.value().is_string())
      throw Error(fmt::format("{}: weight_map.`{}` must be a file name string", index_path, it.key()));
    const std::string fn = it.value().get<std::string>();
    if (fn.empty() || fn.find('/') != std::string::npos || fn == "." || fn == "..")
      throw Error(fmt::format("{}: weight_map.`{}`: `{}` is not a file name inside the model directory", index_path,
                              it.key(), clip(fn)));
    weight_map[it.key()] = fn;
    if (file_ids.emplace(fn, file_names.size()).second) file_names.push_back(fn);
  }
  if (file_names.empty()) throw Error(fmt::format("{}: weight_map is empty", index_path));
  for (const std::string& fn : file_names) s.files_.push_back(SafetensorsFile::open((fs::path(dir) / fn).string()));
  for (const auto& [name, fn] : weight_map) {
    const size_t id = file_ids.at(fn);
    const SafetensorsEntry* e = s.files_[id].find(name);
    if (!e)
      throw Error(fmt::format("{}: tensor `{}` is listed in {} but missing from the file", s.files_[id].path(), name,
                              index_path));
    s.index_[name] = {id, e};
  }
  for (size_t id = 0; id < s.files_.size(); ++id)
    for (const auto& kv : s.files_[id].tensors()) {
      auto it = weight_map.find(kv.first);
      if (it == weight_map.end())
        throw Error(fmt::format("{}: tensor `{}` is not listed in {}", s.files_[id].path(), kv.first, index_path));
      if (it->second != file_names[id])
        throw Error(fmt::format("{}: tensor `{}` also appears here, but {} maps it to {}", s.files_[id].path(),
                                kv.first, index_path, it->second));
    }
  return s;
}

SafetensorsSet::Located SafetensorsSet::find(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end()) return {};
  return {&files_[it->second.first], it->second.second};
}

std::vector<std::string> SafetensorsSet::names() const {
  std::vector<std::string> v;
  for (const auto& kv : index_) v.push_back(kv.first);
  return v;
}

uint16_t f32_to_f16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t absu = u & 0x7fffffffu;
  if (absu >= 0x7f800000u) return static_cast<uint16_t>(sign | 0x7c00u | (absu > 0x7f800000u ? 0x200u : 0u));
  if (absu >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds to >= 65520: inf
  const int exp = static_cast<int>(absu >> 23) - 127;
  if (exp < -14) {  // subnormal half (or zero): value = mant * 2^-24
    if (exp < -25) return sign;
    const uint32_t mant = (absu & 0x7fffffu) | 0x800000u;
    const int shift = -exp - 14 + 13;  // bits dropped from the 24-bit significand
    uint32_t r = mant >> shift;
    const uint32_t rem = mant & ((1u << shift) - 1);
    const uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (r & 1u))) ++r;
    return static_cast<uint16_t>(sign | r);
  }
  uint32_t r = ((static_cast<uint32_t>(exp + 15)) << 10) | ((absu >> 13) & 0x3ffu);
  const uint32_t rem = absu & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (r & 1u))) ++r;  // carry into the exponent is correct rounding
  return static_cast<uint16_t>(sign | r);
}

void write_safetensors(const std::string& path, const std::vector<SafetensorsWriteItem>& items,
                       const std::map<std::string, std::string>& metadata) {
  std::vector<const SafetensorsWriteItem*> sorted;
  for (const auto& it : items) sorted.push_back(&it);
  std::sort(sorted.begin(), sorted.end(),
            [](const SafetensorsWriteItem* a, const SafetensorsWriteItem* b) { return a->name < b->name; });
  for (size_t i = 1; i < sorted.size(); ++i)
    RLCU_CHECK(sorted[i]->name != sorted[i - 1]->name, "write_safetensors: duplicate tensor {}", sorted[i]->name);

  std::string header = "{";
  bool first = true;
  if (!metadata.empty()) {
    header += "\"__metadata__\":{";
    bool mfirst = true;
    for (const auto& [k, v] : metadata) {
      header += (mfirst ? "" : ",") + json(k).dump() + ":" + json(v).dump();
      mfirst = false;
    }
    header += "}";
    first = false;
  }
  uint64_t offset = 0;
  for (const SafetensorsWriteItem* it : sorted) {
    const char* fd = file_dtype_str(it->file_dtype);
    RLCU_CHECK(fd != nullptr, "write_safetensors: cannot store {} as {}", it->name, dtype_name(it->file_dtype));
    const bool is_float = it->tensor.dtype == DType::F32 || it->tensor.dtype == DType::BF16 ||
                          it->tensor.dtype == DType::F16;
    RLCU_CHECK(it->tensor.dtype == it->file_dtype || (is_float && it->file_dtype != DType::U8),
               "write_safetensors: {} has dtype {}, cannot store it as {}", it->name, dtype_name(it->tensor.dtype),
               dtype_name(it->file_dtype));
    std::vector<int64_t> shape = it->shape;
    if (shape.empty())
      for (int d = 0; d < it->tensor.ndim; ++d) shape.push_back(it->tensor.shape[d]);
    int64_t numel = 1;
    for (int64_t d : shape) numel *= d;
    RLCU_CHECK(numel == it->tensor.numel(), "write_safetensors: {} shape does not match its view", it->name);
    const uint64_t bytes = static_cast<uint64_t>(numel) * dtype_size(it->file_dtype);
    std::string shp = "[";
    for (size_t i = 0; i < shape.size(); ++i) shp += (i ? "," : "") + std::to_string(shape[i]);
    shp += "]";
    header += fmt::format("{}{}:{{\"dtype\":\"{}\",\"shape\":{},\"data_offsets\":[{},{}]}}", first ? "" : ",",
                          json(it->name).dump(), fd, shp, offset, offset + bytes);
    first = false;
    offset += bytes;
  }
  header += "}";
  header.append((8 - header.size() % 8) % 8, ' ');

  const std::string tmp = path + ".tmp";
  std::FILE* out = std::fopen(tmp.c_str(), "wb");
  if (!out) throw Error(fmt::format("{}: cannot create: {}", tmp, std::strerror(errno)));
  bool ok = true;
  auto put = [&](const void* p, size_t n) {
    if (ok && n && std::fwrite(p, 1, n, out) != n) ok = false;
  };
  const uint64_t hlen = header.size();
  try {
    put(&hlen, 8);
    put(header.data(), header.size());
    constexpr int64_t kChunk = 1 << 20;
    std::vector<uint8_t> raw;
    std::vector<uint8_t> conv;
    for (const SafetensorsWriteItem* it : sorted) {
      const Tensor flat = it->tensor.view({-1});
      const size_t out_es = dtype_size(it->file_dtype);
      for (int64_t b = 0; b < flat.numel() && ok; b += kChunk) {
        const int64_t e = std::min(flat.numel(), b + kChunk);
        const Tensor part = flat.slice_rows(b, e);
        raw.resize(part.nbytes());
        copy_bytes(Tensor(raw.data(), part.dtype, Device::CPU, {e - b}), part);
        if (part.dtype == it->file_dtype) {
          put(raw.data(), raw.size());
          continue;
        }
        conv.resize(static_cast<size_t>(e - b) * out_es);
        for (int64_t i = 0; i < e - b; ++i) {
          float f;
          uint16_t h;
          if (part.dtype == DType::F32) {
            std::memcpy(&f, raw.data() + 4 * i, 4);
          } else {
            std::memcpy(&h, raw.data() + 2 * i, 2);
            f = part.dtype == DType::BF16 ? bf16_to_f32(h) : f16_to_f32(h);
          }
          if (it->file_dtype == DType::F32) {
            std::memcpy(conv.data() + 4 * i, &f, 4);
          } else {
            h = it->file_dtype == DType::BF16 ? f32_to_bf16(f) : f32_to_f16(f);
            std::memcpy(conv.data() + 2 * i, &h, 2);
          }
        }
        put(conv.data(), conv.size());
      }
    }
  } catch (...) {
    std::fclose(out);
    std::remove(tmp.c_str());
    throw;
  }
  if (std::fflush(out) != 0) ok = false;
  if (ok && fsync(fileno(out)) != 0) ok = false;
  const int write_errno = errno;
  if (std::fclose(out) != 0) ok = false;
  if (!ok) {
    std::remove(tmp.c_str());
    throw Error(fmt::format("{}: write failed: {}", tmp, std::strerror(write_errno)));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int e = errno;
    std::remove(tmp.c_str());
    throw Error(fmt::format("{}: cannot rename {} into place: {}", path, tmp, std::strerror(e)));
  }
}

}  // namespace rlcu
