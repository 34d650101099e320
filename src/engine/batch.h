// The inputs of one forward pass of the engine's runner, as plain host data: what the scheduler builds and the
// runner consumes, so that neither depends on the other.
//
//   PrefillInput: S sequences packed into T tokens, each from position 0 (sequence i spans rows cu_seqlens[i] ..
//     cu_seqlens[i+1]); every token's K/V goes to the cache at its pool slot; the logits of the rows listed in
//     logit_rows (a row may repeat: the n samples of one prompt) are computed.
//   DecodeInput: B sequences, one token each at its position; the K/V of that token goes to its slot and attention
//     reads context_lens[b] tokens (the new one included) through block table row b, a row of max_blocks_per_seq
//     block ids padded with 0.
// Slots are pool slots as block_manager.h defines them (block * block_size + offset).
#pragma once

#include <cstdint>
#include <vector>

namespace rlcu::engine {

struct PrefillInput {
  std::vector<int32_t> ids, positions, slots;  // [T]
  std::vector<int32_t> cu_seqlens{0};          // [S+1]
  int32_t max_seqlen = 0;
  std::vector<int32_t> logit_rows;             // [R] token rows whose logits are wanted
};

struct DecodeInput {
  std::vector<int32_t> ids, positions, slots, context_lens;  // [B]
  std::vector<int32_t> block_tables;                         // [B * max_blocks_per_seq]
};

}  // namespace rlcu::engine
