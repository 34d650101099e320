// Trainer-internal: a packed micro-batch of prompt + completion sequences. Row r of the batch predicts token r+1 of
// its sequence; the rows that predict a completion token carry (sequence index, completion token index), the others
// have target -1 and seq_of_row = tok_of_row = -1.
#pragma once

#include <cstdint>
#include <vector>

#include "rlcu/model.h"

namespace rlcu {

struct Micro {
  PackedBatch batch;
  std::vector<int32_t> seq_of_row, tok_of_row;
  std::vector<int32_t> seqs;  // the sequences it holds
};

}  // namespace rlcu
