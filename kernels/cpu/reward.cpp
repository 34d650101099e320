// CPU reward ops (include/rlcu/reward_ops.h; per-completion rules in kernels/reward_common.h, shared with
// kernels/reward.cu). Plain loops, one completion after another:
//   detokenize_offsets: byte_offsets[0] = 0, byte_offsets[i+1] = byte_offsets[i] + sum over the completion's ids v
//                       of (table_offsets[v+1] - table_offsets[v]) (ids outside [0, V) count 0)
//   detokenize_bytes:   bytes[byte_offsets[i] ...] = the tokens' bytes in order
//   reward_*:           out[i] = <component>(completion i), F32, overwritten
#include <cstring>

#include "backends.h"
#include "reward_common.h"

namespace rlcu::cpu {

namespace rd = reward_detail;

namespace {

const uint8_t* u8(const Tensor& t) { return static_cast<const uint8_t*>(t.data); }
const int64_t* i64(const Tensor& t) { return static_cast<const int64_t*>(t.data); }

int64_t token_len(const int64_t* toff, int64_t V, int64_t v) { return v < 0 || v >= V ? 0 : toff[v + 1] - toff[v]; }

}  // namespace

void detokenize_offsets(const Tensor& byte_offsets, const Tensor& ids, const Tensor& id_offsets,
                        const Tensor& table_bytes, const Tensor& table_offsets, Context& ctx) {
  const int64_t N = id_offsets.numel() - 1, V = table_offsets.numel() - 1;
  const bool ids64 = ids.dtype == DType::I64, off64 = id_offsets.dtype == DType::I64;
  const int64_t* toff = i64(table_offsets);
  int64_t* out = byte_offsets.ptr<int64_t>();
  out[0] = 0;
  for (int64_t i = 0; i < N; ++i) {
    const int64_t b = rd::load_index(id_offsets.data, off64, i), e = rd::load_index(id_offsets.data, off64, i + 1);
    RLCU_CHECK(b >= 0 && b <= e && e <= ids.numel(), "detokenize: id_offsets[{}..{}] = {}..{} outside [0, {}]", i,
               i + 1, b, e, ids.numel());
    int64_t n = 0;
    for (int64_t t = b; t < e; ++t) n += token_len(toff, V, rd::load_index(ids.data, ids64, t));
    out[i + 1] = out[i] + n;
  }
}

void detokenize_bytes(const Tensor& bytes, const Tensor& byte_offsets, const Tensor& ids, const Tensor& id_offsets,
                      const Tensor& table_bytes, const Tensor& table_offsets, Context& ctx) {
  const int64_t N = id_offsets.numel() - 1, V = table_offsets.numel() - 1;
  const bool ids64 = ids.dtype == DType::I64, off64 = id_offsets.dtype == DType::I64;
  const int64_t* toff = i64(table_offsets);
  const int64_t* boff = i64(byte_offsets);
  RLCU_CHECK(boff[N] <= bytes.numel(), "detokenize_bytes: {} bytes do not fit the {}-byte output", boff[N],
             bytes.numel());
  uint8_t* out = bytes.ptr<uint8_t>();
  for (int64_t i = 0; i < N; ++i) {
    int64_t pos = boff[i];
    const int64_t b = rd::load_index(id_offsets.data, off64, i), e = rd::load_index(id_offsets.data, off64, i + 1);
    for (int64_t t = b; t < e; ++t) {
      const int64_t v = rd::load_index(ids.data, ids64, t);
      const int64_t len = token_len(toff, V, v);
      if (len > 0) std::memcpy(out + pos, u8(table_bytes) + toff[v], static_cast<size_t>(len));
      pos += len;
    }
    RLCU_CHECK(pos == boff[i + 1], "detokenize_bytes: byte_offsets do not match the ids of completion {}", i);
  }
}

namespace {

void check_offsets(const TextBatch& t, const char* what) {
  const int64_t* off = i64(t.offsets);
  const int64_t n = t.count(), cap = t.bytes.empty() ? 0 : t.bytes.numel();
  RLCU_CHECK(off[0] == 0 && off[n] <= cap, "{}: offsets [0] = {}, [N] = {} for {} bytes", what, off[0], off[n], cap);
  for (int64_t i = 0; i < n; ++i) RLCU_CHECK(off[i] <= off[i + 1], "{}: offsets decrease at {}", what, i);
}

rd::Span span_of(const TextBatch& t, int64_t i) { return rd::Span{i64(t.offsets)[i], i64(t.offsets)[i + 1]}; }

// out[i] = f(text bytes, text span i, other bytes, other span i) for the pairwise components.
template <class F>
void pairwise(const Tensor& out, const TextBatch& text, const TextBatch& other, const char* what, F f) {
  check_offsets(text, what);
  check_offsets(other, what);
  float* o = out.ptr<float>();
  for (int64_t i = 0; i < text.count(); ++i) o[i] = f(u8(text.bytes), span_of(text, i), u8(other.bytes), span_of(other, i));
}

}  // namespace

void reward_math_answer(const Tensor& out, const TextBatch& text, const TextBatch& answers, Context& ctx) {
  pairwise(out, text, answers, "reward_math_answer", rd::math_answer_value);
}

void reward_exact_match(const Tensor& out, const TextBatch& text, const TextBatch& answers, Context& ctx) {
  pairwise(out, text, answers, "reward_exact_match", rd::exact_match_value);
}

void reward_countdown(const Tensor& out, const TextBatch& text, const TextBatch& answers, Context& ctx) {
  pairwise(out, text, answers, "reward_countdown", rd::countdown_value);
}

void reward_contains(const Tensor& out, const TextBatch& text, const TextBatch& needles, Context& ctx) {
  pairwise(out, text, needles, "reward_contains", rd::contains_value);
}

void reward_format(const Tensor& out, const TextBatch& text, const TextBatch& tags, Context& ctx) {
  check_offsets(text, "reward_format");
  check_offsets(tags, "reward_format tags");
  float* o = out.ptr<float>();
  for (int64_t i = 0; i < text.count(); ++i)
    o[i] = rd::format_value(u8(text.bytes), span_of(text, i), u8(tags.bytes), i64(tags.offsets), tags.count());
}

void reward_length(const Tensor& out, const Tensor& id_offsets, const LengthPenalty& p, Context& ctx) {
  const bool off64 = id_offsets.dtype == DType::I64;
  float* o = out.ptr<float>();
  for (int64_t i = 0; i < out.numel(); ++i) {
    const int64_t n = rd::load_index(id_offsets.data, off64, i + 1) - rd::load_index(id_offsets.data, off64, i);
    o[i] = rd::length_value(n, p.max_len, p.buffer);
  }
}

}  // namespace rlcu::cpu
