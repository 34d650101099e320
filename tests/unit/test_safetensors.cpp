// Safetensors: header validation (each malformed field is an Error naming the file and the tensor), dtype
// conversion on load, sharded index resolution, and the deterministic writer.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "parity/model_test_util.h"
#include "rlcu/safetensors.h"

using namespace rlcu;
using namespace rlcu::test;

namespace {

// Writes an 8-byte length, `header` verbatim and `data_bytes` bytes of data (values 0, 1, 2, ...).
void write_raw(const std::string& path, const std::string& header, size_t data_bytes) {
  std::string s(8, '\0');
  const uint64_t n = header.size();
  std::memcpy(&s[0], &n, 8);
  s += header;
  for (size_t i = 0; i < data_bytes; ++i) s += static_cast<char>(i & 0xff);
  write_text(path, s);
}

// Expects SafetensorsFile::open(path) to throw an Error whose message contains every string of `parts`.
void expect_open_error(const std::string& path, const std::vector<std::string>& parts) {
  try {
    SafetensorsFile::open(path);
    FAIL() << "no error for " << path;
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const auto& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "'" << p << "' not in: " << msg;
  }
}

}  // namespace

TEST(Safetensors, ReadsEntriesMetadataAndConverts) {
  TempDir d("st");
  const std::string p = d.file("a.safetensors");
  // F32 [2] = {1.5, -2}, BF16 [2] = {1.0, -0.5}, F16 [1] = 0.25, I64 [1]; zero-size F32 [0].
  const std::string h =
      R"({"__metadata__":{"format":"pt"},"f":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
      R"("b":{"dtype":"BF16","shape":[2],"data_offsets":[8,12]},"h":{"dtype":"F16","shape":[1],"data_offsets":[12,14]},)"
      R"("i":{"dtype":"I64","shape":[1,1],"data_offsets":[14,22]},"z":{"dtype":"F32","shape":[0,3],"data_offsets":[22,22]}})";
  std::string s(8, '\0');
  const uint64_t n = h.size();
  std::memcpy(&s[0], &n, 8);
  s += h;
  const float f[2] = {1.5f, -2.0f};
  s.append(reinterpret_cast<const char*>(f), 8);
  const uint16_t b[2] = {0x3f80, 0xbf00};
  s.append(reinterpret_cast<const char*>(b), 4);
  const uint16_t hv = 0x3400;
  s.append(reinterpret_cast<const char*>(&hv), 2);
  s.append(8, '\0');
  write_text(p, s);

  const SafetensorsFile st = SafetensorsFile::open(p);
  EXPECT_EQ(st.metadata().at("format"), "pt");
  ASSERT_EQ(st.tensors().size(), 5u);
  EXPECT_EQ(st.find("i")->shape, (std::vector<int64_t>{1, 1}));
  EXPECT_EQ(st.find("z")->numel(), 0);
  EXPECT_EQ(st.find("nope"), nullptr);
  std::vector<float> out(2);
  st.read_converted(*st.find("f"), out.data(), DType::F32);
  EXPECT_EQ(out, (std::vector<float>{1.5f, -2.0f}));
  st.read_converted(*st.find("b"), out.data(), DType::F32);
  EXPECT_EQ(out, (std::vector<float>{1.0f, -0.5f}));
  st.read_converted(*st.find("h"), out.data(), DType::F32);
  EXPECT_EQ(out[0], 0.25f);
  std::vector<uint16_t> bf(2);
  st.read_converted(*st.find("f"), bf.data(), DType::BF16);
  EXPECT_EQ(bf[0], f32_to_bf16(1.5f));
  EXPECT_EQ(bf[1], f32_to_bf16(-2.0f));
  try {
    st.read_converted(*st.find("i"), out.data(), DType::F32);
    FAIL() << "I64 converted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(p), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("`i`"), std::string::npos);
  }
}

TEST(Safetensors, TruncatedAndShortFiles) {
  TempDir d("st");
  write_text(d.file("short.safetensors"), "abc");
  expect_open_error(d.file("short.safetensors"), {d.file("short.safetensors"), "too short"});
  write_raw(d.file("hlen.safetensors"), R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", 0);
  std::string s = read_text(d.file("hlen.safetensors"));
  write_text(d.file("hlen.safetensors"), s.substr(0, s.size() - 10));
  expect_open_error(d.file("hlen.safetensors"), {d.file("hlen.safetensors"), "header length"});
  // Header intact but data cut short: the tensor's offsets run past the end.
  write_raw(d.file("data.safetensors"), R"({"weight":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", 9);
  expect_open_error(d.file("data.safetensors"), {d.file("data.safetensors"), "`weight`", "past the end"});
  expect_open_error(d.file("missing.safetensors"), {d.file("missing.safetensors"), "cannot open"});
}

TEST(Safetensors, HeaderErrorsNameFileAndTensor) {
  TempDir d("st");
  struct Case {
    std::string header;
    size_t data;
    std::vector<std::string> parts;
  };
  const std::vector<Case> cases = {
      {R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]})", 4, {"not valid JSON"}},
      {R"([1, 2])", 0, {"does not start with"}},
      {R"({"w":{"shape":[1],"data_offsets":[0,4]}})", 4, {"`w`", "dtype"}},
      {R"({"w":{"dtype":"F99","shape":[1],"data_offsets":[0,4]}})", 4, {"`w`", "unknown dtype"}},
      {R"({"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", 4, {"`w`", "non-negative"}},
      {R"({"w":{"dtype":"F32","shape":"x","data_offsets":[0,4]}})", 4, {"`w`", "shape"}},
      {R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})", 8, {"`w`", "needs 8"}},
      {R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}})", 8, {"`w`", "end before"}},
      {R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0]}})", 4, {"`w`", "data_offsets"}},
      {R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"extra":1}})", 4, {"`w`", "unknown field `extra`"}},
      {R"({"w":[1]})", 4, {"`w`", "must be an object"}},
      {R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
       12,
       {"`a`", "`b`", "overlap"}},
      {R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
       4,
       {"`w`", "twice"}},
      {R"({"__metadata__":{"format":1},"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 4, {"__metadata__"}},
      {R"({"__metadata__":[],"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 4, {"__metadata__"}},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    SCOPED_TRACE(cases[i].header);
    const std::string p = d.file("c" + std::to_string(i) + ".safetensors");
    write_raw(p, cases[i].header, cases[i].data);
    std::vector<std::string> parts = cases[i].parts;
    parts.push_back(p);
    expect_open_error(p, parts);
  }
}

TEST(Safetensors, F16Conversion) {
  EXPECT_EQ(f32_to_f16(1.0f), 0x3c00);
  EXPECT_EQ(f32_to_f16(-2.0f), 0xc000);
  EXPECT_EQ(f32_to_f16(65504.0f), 0x7bff);
  EXPECT_EQ(f32_to_f16(65520.0f), 0x7c00);  // rounds up to infinity
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -24)), 0x0001);
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -26)), 0x0000);
  EXPECT_EQ(f32_to_f16(std::ldexp(3.0f, -26)), 0x0001);         // 0.75 ulp rounds up
  EXPECT_EQ(f32_to_f16(1.0f + std::ldexp(1.0f, -11)), 0x3c00);  // tie to even
  EXPECT_EQ(f32_to_f16(1.0f + std::ldexp(3.0f, -11)), 0x3c02);  // tie to even (up)
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -14)), 0x0400);         // smallest normal
  EXPECT_TRUE(std::isnan(f16_to_f32(f32_to_f16(std::nanf("")))));
  for (uint32_t h = 0; h < 0x7c00; h += 7) EXPECT_EQ(f32_to_f16(f16_to_f32(static_cast<uint16_t>(h))), h);
}

TEST(Safetensors, WriterIsDeterministicAndRoundTrips) {
  TempDir d("st");
  std::vector<float> a = {1.0f, -2.5f, 3.25f, 1e-3f, 7.0f, -0.125f};
  std::vector<float> b = {0.1f, 0.2f, 0.3f};
  std::vector<float> c = {65504.0f, 1.0f / 3.0f};
  const Tensor ta(a.data(), DType::F32, Device::CPU, {2, 3});
  const Tensor tb(b.data(), DType::F32, Device::CPU, {3});
  const Tensor tc(c.data(), DType::F32, Device::CPU, {2});
  const std::map<std::string, std::string> meta = {{"format", "pt"}};
  write_safetensors(d.file("1.safetensors"),
                    {{"z.weight", ta, DType::F32, {}}, {"a.bias", tb, DType::BF16, {}}, {"m", tc, DType::F16, {1, 2}}},
                    meta);
  write_safetensors(d.file("2.safetensors"),
                    {{"m", tc, DType::F16, {1, 2}}, {"a.bias", tb, DType::BF16, {}}, {"z.weight", ta, DType::F32, {}}},
                    meta);
  const std::string bytes = read_text(d.file("1.safetensors"));
  EXPECT_EQ(bytes, read_text(d.file("2.safetensors")));
  EXPECT_FALSE(fs::exists(d.file("1.safetensors.tmp")));
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  EXPECT_EQ(n % 8, 0u);
  const std::string header = bytes.substr(8, n);
  EXPECT_EQ(
      header.rfind(R"({"__metadata__":{"format":"pt"},"a.bias":{"dtype":"BF16","shape":[3],"data_offsets":[0,6]},)", 0),
      0u)
      << header;
  EXPECT_LT(header.find("\"m\""), header.find("\"z.weight\""));

  const SafetensorsFile st = SafetensorsFile::open(d.file("1.safetensors"));
  std::vector<float> out(6);
  st.read_converted(*st.find("z.weight"), out.data(), DType::F32);
  EXPECT_EQ(out, a);
  EXPECT_EQ(st.find("z.weight")->shape, (std::vector<int64_t>{2, 3}));
  st.read_converted(*st.find("a.bias"), out.data(), DType::F32);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(out[i], round_to_bf16(b[i]));
  EXPECT_EQ(st.find("m")->shape, (std::vector<int64_t>{1, 2}));
  st.read_converted(*st.find("m"), out.data(), DType::F32);
  EXPECT_EQ(out[0], 65504.0f);
  EXPECT_EQ(out[1], f16_to_f32(f32_to_f16(1.0f / 3.0f)));
  EXPECT_NEAR(out[1], 1.0f / 3.0f, 1e-3);

  // A failed write leaves no file behind.
  EXPECT_THROW(write_safetensors(d.file("no/such/dir.safetensors"), {{"x", tb, DType::F32, {}}}, meta), Error);
  EXPECT_FALSE(fs::exists(d.file("no/such/dir.safetensors.tmp")));
}

TEST(Safetensors, ShardedIndex) {
  TempDir d("st");
  std::vector<float> a = {1, 2, 3, 4}, b = {5, 6};
  const Tensor ta(a.data(), DType::F32, Device::CPU, {2, 2}), tb(b.data(), DType::F32, Device::CPU, {2});
  write_safetensors(d.file("model-00001-of-00002.safetensors"), {{"a", ta, DType::F32, {}}}, {});
  write_safetensors(d.file("model-00002-of-00002.safetensors"), {{"b", tb, DType::F32, {}}, {"c", tb, DType::F32, {}}},
                    {});
  const std::string idx = d.file("model.safetensors.index.json");
  nlohmann::json j = {{"metadata", {{"total_size", 24}}},
                      {"weight_map",
                       {{"a", "model-00001-of-00002.safetensors"},
                        {"b", "model-00002-of-00002.safetensors"},
                        {"c", "model-00002-of-00002.safetensors"}}}};
  write_json(idx, j);
  {
    const SafetensorsSet s = SafetensorsSet::open_dir(d.str());
    EXPECT_EQ(s.names(), (std::vector<std::string>{"a", "b", "c"}));
    EXPECT_EQ(s.description(), idx);
    const auto loc = s.find("b");
    ASSERT_NE(loc.entry, nullptr);
    EXPECT_NE(loc.file->path().find("00002"), std::string::npos);
    EXPECT_EQ(s.find("x").entry, nullptr);
  }
  auto expect_dir_error = [&](const nlohmann::json& index, const std::vector<std::string>& parts) {
    write_json(idx, index);
    try {
      SafetensorsSet::open_dir(d.str());
      FAIL() << "no error for " << index.dump();
    } catch (const Error& e) {
      for (const auto& p : parts) EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
    }
  };
  auto wm = j;
  wm["weight_map"]["d"] = "model-00002-of-00002.safetensors";
  expect_dir_error(wm, {"model-00002-of-00002.safetensors", "`d`", "missing"});
  wm = j;
  wm["weight_map"].erase("c");
  expect_dir_error(wm, {"model-00002-of-00002.safetensors", "`c`", "not listed"});
  wm = j;
  wm["weight_map"]["b"] = "model-00001-of-00002.safetensors";
  expect_dir_error(wm, {"model-00001-of-00002.safetensors", "`b`", "missing"});
  wm = j;
  wm["weight_map"]["b"] = "model-00003-of-00002.safetensors";
  expect_dir_error(wm, {"model-00003-of-00002.safetensors", "cannot open"});
  wm = j;
  wm["weight_map"]["b"] = "../b.safetensors";
  expect_dir_error(wm, {idx, "`b`"});
  expect_dir_error(nlohmann::json::array(), {idx, "weight_map"});
  write_text(idx, "{\"weight_map\": {");
  try {
    SafetensorsSet::open_dir(d.str());
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(idx), std::string::npos);
  }
  fs::remove(idx);
  try {
    SafetensorsSet::open_dir(d.str());
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no model.safetensors"), std::string::npos);
  }
}

TEST(Safetensors, NonFiniteValuesAreErrorsNamingTheTensorAndElement) {
  TempDir d("st");
  const std::string p = d.file("bad.safetensors");
  // F32 [3] = {1, 3.4e38 (beyond bf16), NaN}; BF16 [2] = {1, +inf}; F16 [2] = {1, -inf}; F32 [1] = 2 (finite).
  const std::string h =
      R"({"f":{"dtype":"F32","shape":[3],"data_offsets":[0,12]},"b":{"dtype":"BF16","shape":[2],"data_offsets":[12,16]},)"
      R"("h":{"dtype":"F16","shape":[2],"data_offsets":[16,20]},"ok":{"dtype":"F32","shape":[1],"data_offsets":[20,24]}})";
  std::string s(8, '\0');
  const uint64_t n = h.size();
  std::memcpy(&s[0], &n, 8);
  s += h;
  const float f[3] = {1.0f, 3.4e38f, std::nanf("")};
  s.append(reinterpret_cast<const char*>(f), 12);
  const uint16_t b[2] = {0x3f80, 0x7f80};
  s.append(reinterpret_cast<const char*>(b), 4);
  const uint16_t hv[2] = {0x3c00, 0xfc00};
  s.append(reinterpret_cast<const char*>(hv), 4);
  const float two = 2.0f;
  s.append(reinterpret_cast<const char*>(&two), 4);
  write_text(p, s);
  const SafetensorsFile st = SafetensorsFile::open(p);
  const auto error_of = [&](const char* name, DType to) -> std::string {
    std::vector<float> out(4);
    try {
      st.read_converted(*st.find(name), out.data(), to);
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  };
  EXPECT_EQ(error_of("f", DType::F32), p + ": tensor `f`: element 2 of 3 is NaN (weights must be finite)");
  EXPECT_EQ(error_of("f", DType::BF16), p + ": tensor `f`: element 1 of 3 (3.4e+38, F32) overflows bf16 (inf)");
  EXPECT_EQ(error_of("b", DType::F32), p + ": tensor `b`: element 1 of 2 is inf (weights must be finite)");
  EXPECT_EQ(error_of("b", DType::BF16), p + ": tensor `b`: element 1 of 2 is inf (weights must be finite)");
  EXPECT_EQ(error_of("h", DType::F32), p + ": tensor `h`: element 1 of 2 is -inf (weights must be finite)");
  EXPECT_EQ(error_of("h", DType::BF16), p + ": tensor `h`: element 1 of 2 is -inf (weights must be finite)");
  EXPECT_EQ(error_of("ok", DType::BF16), "");
}
