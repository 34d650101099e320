// The bytes every token id contributes to a text, as one table (the tokenizer module's; the engine reads it on the
// host for stop strings, the reward ops read its device copy to detokenise completions):
//   bytes U8 [B] (the tokens' bytes concatenated) and offsets I64 [V+1]: token v is bytes [offsets[v], offsets[v+1]).
// Ids the tokenizer does not define (holes between the vocabulary and the added tokens, ids past its vocabulary up
// to the model's) have no bytes.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "rlcu/context.h"
#include "rlcu/tensor.h"

namespace rlcu {

class Tokenizer;

class TokenBytesTable {
 public:
  // Tokenizer::token_bytes of ids [0, max(tok.vocab_size(), vocab)).
  static TokenBytesTable build(const Tokenizer& tok, int64_t vocab = 0);
  static TokenBytesTable from_strings(const std::vector<std::string>& tokens);  // token v = tokens[v]
  // Copies the table to ctx's device once (no-op on the CPU or when already there).
  void upload(Context& ctx);

  int64_t vocab_size() const { return static_cast<int64_t>(host_offsets_.size()) - 1; }
  int64_t max_token_bytes() const { return max_token_bytes_; }
  // The bytes of token `id` (empty outside [0, vocab_size())).
  std::string_view token(int64_t id) const;
  // Views on `d` (CUDA requires upload() first). The byte view holds at least one byte even when B = 0.
  Tensor bytes(Device d) const;
  Tensor offsets(Device d) const;

 private:
  std::string host_bytes_;
  std::vector<int64_t> host_offsets_{0};
  int64_t max_token_bytes_ = 0;
  Buffer dev_bytes_, dev_offsets_;
};

}  // namespace rlcu
