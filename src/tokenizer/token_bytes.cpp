// The token -> bytes table (see include/rlcu/token_bytes.h).
#include "rlcu/token_bytes.h"

#include <algorithm>

#include "rlcu/error.h"
#include "rlcu/tokenizer.h"

namespace rlcu {

TokenBytesTable TokenBytesTable::from_strings(const std::vector<std::string>& tokens) {
  TokenBytesTable t;
  t.host_offsets_.reserve(tokens.size() + 1);
  for (const std::string& s : tokens) {
    t.host_bytes_ += s;
    t.host_offsets_.push_back(static_cast<int64_t>(t.host_bytes_.size()));
    t.max_token_bytes_ = std::max<int64_t>(t.max_token_bytes_, static_cast<int64_t>(s.size()));
  }
  return t;
}

TokenBytesTable TokenBytesTable::build(const Tokenizer& tok, int64_t vocab) {
  std::vector<std::string> tokens(static_cast<size_t>(std::max<int64_t>(tok.vocab_size(), vocab)));
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

std::string_view TokenBytesTable::token(int64_t id) const {
  if (id < 0 || id >= vocab_size()) return {};
  const size_t b = static_cast<size_t>(host_offsets_[static_cast<size_t>(id)]);
  const size_t e = static_cast<size_t>(host_offsets_[static_cast<size_t>(id) + 1]);
  return std::string_view(host_bytes_).substr(b, e - b);
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

}  // namespace rlcu
