// Contracts of the reward ops of include/rlcu/reward_ops.h: index and byte dtypes, text batches (bytes U8, offsets
// I64 [N+1]), output F32 [N], matching counts and the length-penalty parameters. The backends
// (kernels/cpu/reward.cpp, kernels/reward.cu) add what they check themselves (the CPU twin reads the offsets).
#include "contract/contract.h"

namespace rlcu::contract {

namespace {

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
                        const Tensor& table_bytes, const Tensor& table_offsets) {
  (void)table_bytes, (void)table_offsets;
  check_index("detokenize_offsets", ids, "ids");
  check_index("detokenize_offsets", id_offsets, "id_offsets");
  RLCU_CHECK(byte_offsets.dtype == DType::I64 && byte_offsets.numel() == id_offsets.numel(),
             "detokenize_offsets: byte_offsets must be I64 with as many entries as id_offsets");
}

void detokenize_bytes(const Tensor& bytes, const Tensor& byte_offsets, const Tensor& ids, const Tensor& id_offsets,
                      const Tensor& table_bytes, const Tensor& table_offsets) {
  (void)table_bytes, (void)table_offsets;
  check_index("detokenize_bytes", ids, "ids");
  check_index("detokenize_bytes", id_offsets, "id_offsets");
  RLCU_CHECK(bytes.empty() || bytes.dtype == DType::U8, "detokenize_bytes: bytes must be U8");
  RLCU_CHECK(byte_offsets.dtype == DType::I64 && byte_offsets.numel() == id_offsets.numel(),
             "detokenize_bytes: byte_offsets must be I64 with as many entries as id_offsets");
}

#define RLCU_REWARD_PAIRWISE(NAME, OTHER)                                                             \
  void NAME(const Tensor& out, const TextBatch& text, const TextBatch& OTHER) {                     \
    check_text(#NAME, text, "text");                                                                 \
    check_text(#NAME, OTHER, #OTHER);                                                                \
    check_out(#NAME, out, text.count());                                                             \
    RLCU_CHECK(OTHER.count() == text.count(), #NAME ": {} completions but {} " #OTHER, text.count(), \
               OTHER.count());                                                                       \
  }

RLCU_REWARD_PAIRWISE(reward_math_answer, answers)
RLCU_REWARD_PAIRWISE(reward_exact_match, answers)
RLCU_REWARD_PAIRWISE(reward_countdown, answers)
RLCU_REWARD_PAIRWISE(reward_contains, needles)
#undef RLCU_REWARD_PAIRWISE

void reward_format(const Tensor& out, const TextBatch& text, const TextBatch& tags) {
  check_text("reward_format", text, "text");
  check_text("reward_format", tags, "tags");
  check_out("reward_format", out, text.count());
}

void reward_length(const Tensor& out, const Tensor& id_offsets, const LengthPenalty& p) {
  check_index("reward_length", id_offsets, "id_offsets");
  check_out("reward_length", out, id_offsets.numel() - 1);
  RLCU_CHECK(p.max_len > 0 && p.buffer >= 0 && p.buffer <= p.max_len,
             "reward_length: need max_len > 0 and 0 <= buffer <= max_len, got {} and {}", p.max_len, p.buffer);
}

}  // namespace rlcu::contract
