// Dispatch of the reward ops (include/rlcu/reward_ops.h) to the CPU twin (kernels/cpu/reward.cpp) or the CUDA
// kernels (kernels/reward.cu) by the device of the first tensor, after checking dtypes, shapes and devices.
#include "rlcu/error.h"
#include "cuda_backend.h"
#include "rlcu/profile.h"
#include "rlcu/reward_ops.h"
#include "reward_common.h"

namespace rlcu {

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
                        const Tensor& table_bytes, const Tensor& table_offsets, Context& ctx) {
  const Device d = byte_offsets.device;
  check_device("detokenize_offsets", d, {&byte_offsets, &ids, &id_offsets, &table_bytes, &table_offsets});
  check_index("detokenize_offsets", ids, "ids");
  check_index("detokenize_offsets", id_offsets, "id_offsets");
  RLCU_CHECK(byte_offsets.dtype == DType::I64 && byte_offsets.numel() == id_offsets.numel(),
             "detokenize_offsets: byte_offsets must be I64 with as many entries as id_offsets");
  if (d == Device::CPU) {
    cpu::detokenize_offsets(byte_offsets, ids, id_offsets, table_bytes, table_offsets, ctx);
    return;
  }
  ProfileScope prof_("detokenize_offsets", ctx);
  RLCU_CUDA_BACKEND(cuda::detokenize_offsets(byte_offsets, ids, id_offsets, table_bytes, table_offsets, ctx));
}

void detokenize_bytes(const Tensor& bytes, const Tensor& byte_offsets, const Tensor& ids, const Tensor& id_offsets,
                      const Tensor& table_bytes, const Tensor& table_offsets, Context& ctx) {
  const Device d = byte_offsets.device;
  check_device("detokenize_bytes", d, {&bytes, &byte_offsets, &ids, &id_offsets, &table_bytes, &table_offsets});
  check_index("detokenize_bytes", ids, "ids");
  check_index("detokenize_bytes", id_offsets, "id_offsets");
  RLCU_CHECK(bytes.empty() || bytes.dtype == DType::U8, "detokenize_bytes: bytes must be U8");
  RLCU_CHECK(byte_offsets.dtype == DType::I64 && byte_offsets.numel() == id_offsets.numel(),
             "detokenize_bytes: byte_offsets must be I64 with as many entries as id_offsets");
  if (d == Device::CPU) {
    cpu::detokenize_bytes(bytes, byte_offsets, ids, id_offsets, table_bytes, table_offsets, ctx);
    return;
  }
  ProfileScope prof_("detokenize_bytes", ctx);
  RLCU_CUDA_BACKEND(cuda::detokenize_bytes(bytes, byte_offsets, ids, id_offsets, table_bytes, table_offsets, ctx));
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
    RLCU_CUDA_BACKEND(cuda::NAME(out, text, OTHER, ctx));                                                                    \
  }

RLCU_REWARD_PAIRWISE(reward_math_answer, answers)
RLCU_REWARD_PAIRWISE(reward_exact_match, answers)
RLCU_REWARD_PAIRWISE(reward_countdown, answers)
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
  RLCU_CUDA_BACKEND(cuda::reward_format(out, text, tags, ctx));
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
  RLCU_CUDA_BACKEND(cuda::reward_length(out, id_offsets, p, ctx));
}

}  // namespace rlcu
