// The token -> bytes table and the dispatch of the reward ops (include/rlcu/reward.h) to the CPU twin
// (kernels/cpu/reward.cpp) or the CUDA kernels (kernels/reward.cu) by the device of the first tensor, after
// checking dtypes, shapes and devices.
#include <algorithm>

#include "../../kernels/reward_common.h"
#include "rlcu/error.h"
#include "rlcu/profile.h"
#include "rlcu/tokenizer.h"

namespace rlcu {

// ---- TokenBytesTable ------------------------------------------------------------------------------------------
TokenBytesTable TokenBytesTable::from_strings(const std::vector<std::string>& tokens) {
  TokenBytesTable t;
  t.host_offsets_.reserve(tokens.size() + 1);
  t.host_offsets_.push_back(0);
  for (const std::string& s : tokens) {
    t.host_bytes_ += s;
    t.host_offsets_.push_back(static_cast<int64_t>(t.host_bytes_.size()));
    t.max_token_bytes_ = std::max<int64_t>(t.max_token_bytes_, static_cast<int64_t>(s.size()));
  }
  return t;
}

TokenBytesTable TokenBytesTable::build(const Tokenizer& tok) {
  std::vector<std::string> tokens(static_cast<size_t>(tok.vocab_size()));
  for (int32_t v = 0; v < tok.vocab_size(); ++v) {
    try {
      tokens[static_cast<size_t>(v)] = tok.token_bytes(v);
    } catch (const Error&) {
      // An id with no token (a hole between the vocabulary and the added tokens) contributes no bytes.
    }
  }
  return from_strings(tokens);
}

void TokenBytesTable::upload(Context& ctx) {
  if (ctx.device() == Device::CPU || dev_offsets_.data()) return;
  const int64_t nb = std::max<int64_t>(1, static_cast<int64_t>(host_bytes_.size()));
  dev_bytes_ = Buffer::alloc(static_cast<size_t>(nb), Device::CUDA);
  dev_offsets_ = Buffer::alloc(host_offsets_.size() * sizeof(int64_t), Device::CUDA);
  copy_bytes(bytes(Device::CUDA), bytes(Device::CPU));
  copy_bytes(offsets(Device::CUDA), offsets(Device::CPU));
}

Tensor TokenBytesTable::bytes(Device d) const {
  const int64_t nb = std::max<int64_t>(1, static_cast<int64_t>(host_bytes_.size()));
  if (d == Device::CPU) {
    // A one-byte view of the string's terminator when the table is empty.
    return Tensor(const_cast<char*>(host_bytes_.data()), DType::U8, Device::CPU, {nb});
  }
  RLCU_CHECK(dev_bytes_.data(), "TokenBytesTable: upload() before using the table on CUDA");
  return Tensor(dev_bytes_.data(), DType::U8, Device::CUDA, {nb});
}

Tensor TokenBytesTable::offsets(Device d) const {
  const int64_t n = static_cast<int64_t>(host_offsets_.size());
  if (d == Device::CPU) return Tensor(const_cast<int64_t*>(host_offsets_.data()), DType::I64, Device::CPU, {n});
  RLCU_CHECK(dev_offsets_.data(), "TokenBytesTable: upload() before using the table on CUDA");
  return Tensor(dev_offsets_.data(), DType::I64, Device::CUDA, {n});
}

// ---- dispatch -------------------------------------------------------------------------------------------------
namespace {

void check_device(const char* op, Device d, std::initializer_list<const Tensor*> ts) {
  for (const Tensor* t : ts)
    RLCU_CHECK(t->empty() || t->device == d, "{}: tensors on different devices ({} vs {})", op, device_name(t->device),
               device_name(d));
}

void check_index(const char* op, const Tensor& t, const char* what) {
  RLCU_CHECK(t.dtype == DType::I32 || t.dtype == DType::I64, "{}: {} must be I32 or I64, got {}", op, what,
             dtype_name(t.dtype));
}

void check_text(const char* op, const TextBatch& t, const char* what) {
  RLCU_CHECK(t.offsets.dtype == DType::I64 && t.offsets.numel() >= 1 && !t.offsets.empty(),
             "{}: {} offsets must be I64 [N+1]", op, what);
  RLCU_CHECK(t.bytes.empty() || t.bytes.dtype == DType::U8, "{}: {} bytes must be U8", op, what);
}

void check_out(const char* op, const Tensor& out, int64_t n) {
  RLCU_CHECK(out.dtype == DType::F32 && out.numel() == n, "{}: out must be F32 [{}], got {} {}", op, n,
             dtype_name(out.dtype), out.shape_str());
}

}  // namespace

void detokenize_offsets(const Tensor& byte_offsets, const Tensor& ids, const Tensor& id_offsets,
                        const TokenBytesTable& table, Context& ctx) {
  const Device d = byte_offsets.device;
  check_device("detokenize_offsets", d, {&byte_offsets, &ids, &id_offsets});
  check_index("detokenize_offsets", ids, "ids");
  check_index("detokenize_offsets", id_offsets, "id_offsets");
  RLCU_CHECK(byte_offsets.dtype == DType::I64 && byte_offsets.numel() == id_offsets.numel(),
             "detokenize_offsets: byte_offsets must be I64 with as many entries as id_offsets");
  if (d == Device::CPU) {
    cpu::detokenize_offsets(byte_offsets, ids, id_offsets, table.bytes(d), table.offsets(d), ctx);
    return;
  }
  ProfileScope prof_("detokenize_offsets", ctx);
  cuda::detokenize_offsets(byte_offsets, ids, id_offsets, table.bytes(d), table.offsets(d), ctx);
}

void detokenize_bytes(const Tensor& bytes, const Tensor& byte_offsets, const Tensor& ids, const Tensor& id_offsets,
                      const TokenBytesTable& table, Context& ctx) {
  const Device d = byte_offsets.device;
  check_device("detokenize_bytes", d, {&bytes, &byte_offsets, &ids, &id_offsets});
  check_index("detokenize_bytes", ids, "ids");
  check_index("detokenize_bytes", id_offsets, "id_offsets");
  RLCU_CHECK(bytes.empty() || bytes.dtype == DType::U8, "detokenize_bytes: bytes must be U8");
  RLCU_CHECK(byte_offsets.dtype == DType::I64 && byte_offsets.numel() == id_offsets.numel(),
             "detokenize_bytes: byte_offsets must be I64 with as many entries as id_offsets");
  if (d == Device::CPU) {
    cpu::detokenize_bytes(bytes, byte_offsets, ids, id_offsets, table.bytes(d), table.offsets(d), ctx);
    return;
  }
  ProfileScope prof_("detokenize_bytes", ctx);
  cuda::detokenize_bytes(bytes, byte_offsets, ids, id_offsets, table.bytes(d), table.offsets(d), ctx);
}

#define RLCU_REWARD_PAIRWISE(NAME, OTHER)                                                                  \
  void NAME(const Tensor& out, const TextBatch& text, const TextBatch& OTHER, Context& ctx) {            \
    const Device d = out.device;                                                                          \
    check_device(#NAME, d, {&out, &text.bytes, &text.offsets, &OTHER.bytes, &OTHER.offsets});             \
    check_text(#NAME, text, "text");                                                                      \
    check_text(#NAME, OTHER, #OTHER);                                                                     \
    check_out(#NAME, out, text.count());                                                                  \
    RLCU_CHECK(OTHER.count() == text.count(), #NAME ": {} completions but {} " #OTHER, text.count(),      \
               OTHER.count());                                                                            \
    if (d == Device::CPU) {                                                                               \
      cpu::NAME(out, text, OTHER, ctx);                                                                   \
      return;                                                                                             \
    }                                                                                                     \
    ProfileScope prof_(#NAME, ctx);                                                                       \
    cuda::NAME(out, text, OTHER, ctx);                                                                    \
  }

RLCU_REWARD_PAIRWISE(reward_math_answer, answers)
RLCU_REWARD_PAIRWISE(reward_exact_match, answers)
RLCU_REWARD_PAIRWISE(reward_contains, needles)
#undef RLCU_REWARD_PAIRWISE

void reward_format(const Tensor& out, const TextBatch& text, const TextBatch& tags, Context& ctx) {
  const Device d = out.device;
  check_device("reward_format", d, {&out, &text.bytes, &text.offsets, &tags.bytes, &tags.offsets});
  check_text("reward_format", text, "text");
  check_text("reward_format", tags, "tags");
  check_out("reward_format", out, text.count());
  if (d == Device::CPU) {
    cpu::reward_format(out, text, tags, ctx);
    return;
  }
  ProfileScope prof_("reward_format", ctx);
  cuda::reward_format(out, text, tags, ctx);
}

void reward_length(const Tensor& out, const Tensor& id_offsets, const LengthPenalty& p, Context& ctx) {
  const Device d = out.device;
  check_device("reward_length", d, {&out, &id_offsets});
  check_index("reward_length", id_offsets, "id_offsets");
  check_out("reward_length", out, id_offsets.numel() - 1);
  RLCU_CHECK(p.max_len > 0 && p.buffer >= 0 && p.buffer <= p.max_len,
             "reward_length: need max_len > 0 and 0 <= buffer <= max_len, got {} and {}", p.max_len, p.buffer);
  if (d == Device::CPU) {
    cpu::reward_length(out, id_offsets, p, ctx);
    return;
  }
  ProfileScope prof_("reward_length", ctx);
  cuda::reward_length(out, id_offsets, p, ctx);
}

}  // namespace rlcu
