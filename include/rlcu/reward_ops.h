// Reward ops: the rule-based reward components over completions' BYTES, detokenised on the device from a token ->
// bytes table (rlcu/token_bytes.h), one op per component with a CPU twin (kernels/cpu/reward.cpp) and a CUDA kernel
// (kernels/reward.cu) that give bit-identical results (the per-completion logic is one set of host/device functions
// in kernels/reward_common.h). Shapes: N completions; a text batch is bytes U8 [B] plus offsets I64 [N+1]
// (completion i is bytes [offsets[i], offsets[i+1]); offsets non-decreasing, offsets[0] = 0, offsets[N] <= B);
// outputs are F32 [N] and are overwritten.
//
// Component rules (whitespace = space, \t, \n, \r, \v, \f; "trimmed" = whitespace removed at both ends):
//
//   math_answer  1 if the completion's final answer equals the reference answer, else 0.
//     Candidate, first rule that applies:
//       a. the content of the LAST `\boxed{...}` whose braces balance (nested braces counted);
//       b. the number right after the last `#### ` (spaces/tabs and `$` may come first);
//       c. the last number in the text.
//     No candidate -> 0. A "number" in text is: an optional `-` (only when the byte before it is not a letter or
//     digit), digits with optional thousands groups `,ddd` (exactly three digits, then a non-digit), an optional
//     `.digits`, and optionally `/` plus another such unsigned number (a fraction); `.5` counts as a number.
//     Reference: the answer string; when it contains `#### ` only the text after the last `#### ` is used
//     (GSM8K solutions). An empty (trimmed) reference scores 0.
//     Comparison: both sides are normalised by deleting whitespace, `$`, `\$`, `%`, `\%`, `\!`, `\,`, `\;`
//     then trailing `.` characters and one leading `+`. A normalised string is numeric when it is, in full,
//     [-] D | [-] D/D | [-] \frac{S}{S} (also \dfrac, \tfrac) with D an unsigned decimal (thousands groups as
//     above allowed, `2.50`, `.5`) and S an optionally signed D; at most 63 bytes. Value: 19 significant digits
//     read into an integer, scaled by a power of ten (then one division for fractions), in fp64.
//     Both numeric: equal when a == b or |a - b| <= 1e-6 * max(|a|, |b|). Otherwise the trimmed candidate and
//     the trimmed reference must be byte-for-byte equal.
//   exact_match  1 if trimmed completion == trimmed answer (bytes), else 0.
//   contains     1 if the completion contains the needle (a byte substring), else 0; an empty needle gives 0.
//                The needle is reward.contains_text, or the trimmed answer when that is empty.
//   format       1 if the tags t_1..t_K occur in this order without overlapping (t_{j+1} starts at or after the
//                end of the earliest match of t_j found after t_{j-1}), else 0; K = 0 gives 1.
//   countdown    1 if the completion's expression reaches the target with the given numbers, else 0.
//     Reference (the answer field): "n1 n2 ... nk -> target", k in [1, 16] unsigned integers below 10^9 separated by
//     spaces, tabs or commas, then `->` and the target (optionally negative, |target| < 10^15). A malformed
//     reference scores 0.
//     Expression: the content of the last balanced `\boxed{...}` when it holds an operator (cut at a `=` in it),
//     else the text before the first `=` on the last line that has one (`3*5+7=22 \boxed{22}`); trimmed.
//     It may hold unsigned integer literals, `+`, `-` (also U+2212), `*` (also U+00D7, `\times`, `\cdot`), `/`
//     (also U+00F7, `\div`), parentheses and whitespace, nothing else (no unary minus, no decimals). Each literal
//     must be one of the given numbers, each given number used at most once (a number given twice may be used
//     twice). Usual precedence, left to right; integer arithmetic where every intermediate result is exact: a
//     division with a remainder, a division by zero or an |intermediate| above 10^15 scores 0. 1 when the value
//     equals the target.
//   length       DAPO overlong penalty from the completion length in TOKENS n, max_len L, buffer C:
//                0 if n <= L - C;  (L - C - n) / C if L - C < n <= L (fp64, rounded to F32);  -1 if n > L.
//
// Detokenisation: token ids outside [0, V) contribute no bytes.
#pragma once

#include <cstdint>

#include "rlcu/context.h"
#include "rlcu/tensor.h"

namespace rlcu {

// A batch of byte strings on one device: bytes U8 [B] (may be an empty Tensor when B = 0) and offsets I64 [N+1].
struct TextBatch {
  Tensor bytes;
  Tensor offsets;
  int64_t count() const { return offsets.numel() - 1; }
};

// ---- ops (dispatch on the device of the first tensor) ----------------------------------------------------------
// Completions as ids [total] (I32 or I64) with id_offsets [N+1] (I32 or I64). Pass 1 writes byte_offsets I64 [N+1]
// (byte_offsets[0] = 0, exclusive scan of the per-completion byte counts); pass 2 copies the bytes into
// bytes U8 [>= byte_offsets[N]] given those offsets. Between the two the caller reads byte_offsets[N] to size
// `bytes`.
// The token table is table_bytes U8 [>= 1] and table_offsets I64 [V+1] (TokenBytesTable::bytes / offsets on the op's
// device).
void detokenize_offsets(const Tensor& byte_offsets, const Tensor& ids, const Tensor& id_offsets,
                        const Tensor& table_bytes, const Tensor& table_offsets, Context& ctx);
void detokenize_bytes(const Tensor& bytes, const Tensor& byte_offsets, const Tensor& ids, const Tensor& id_offsets,
                      const Tensor& table_bytes, const Tensor& table_offsets, Context& ctx);

void reward_math_answer(const Tensor& out, const TextBatch& text, const TextBatch& answers, Context& ctx);
void reward_exact_match(const Tensor& out, const TextBatch& text, const TextBatch& answers, Context& ctx);
// answers: the countdown references "n1 n2 ... -> target".
void reward_countdown(const Tensor& out, const TextBatch& text, const TextBatch& answers, Context& ctx);
// needles: one per completion (N entries).
void reward_contains(const Tensor& out, const TextBatch& text, const TextBatch& needles, Context& ctx);
// tags: K entries shared by every completion.
void reward_format(const Tensor& out, const TextBatch& text, const TextBatch& tags, Context& ctx);

struct LengthPenalty {
  int64_t max_len = 0;  // L > 0
  int64_t buffer = 0;   // 0 <= C <= L
};
// out F32 [N] from id_offsets [N+1] (I32 or I64): the DAPO overlong penalty above.
void reward_length(const Tensor& out, const Tensor& id_offsets, const LengthPenalty& p, Context& ctx);

}  // namespace rlcu
