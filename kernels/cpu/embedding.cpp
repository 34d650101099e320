// CPU token embedding: out[T,H] = table[ids[t], :] (F32 table, I32 ids).
// Backward: dtable[V,H] += dout[t,:] at row ids[t] for every t. dtable is a parameter gradient and ACCUMULATES
// (+=); repeated ids add up, in token order. An id outside [0, V) throws rlcu::Error naming the position.
// Shapes and dtypes are checked by kernels/contract/norm.cpp; the CPU twin takes non-empty 2-D F32 tensors.
#include "backends.h"
#include "reference.h"

namespace rlcu::cpu {
namespace ref {

namespace {
void check_id(const char* op, int32_t id, int64_t t, int64_t vocab) {
  if (id < 0 || id >= vocab)
    throw Error(fmt::format("{}: token id {} at position {} is outside the vocabulary [0, {})", op, id, t, vocab));
}
}  // namespace

template <class T>
void embedding_fwd_ref(T* out, const T* table, const int32_t* ids, int64_t tokens, int64_t vocab, int64_t hidden) {
  for (int64_t t = 0; t < tokens; ++t) {
    check_id("embedding_fwd", ids[t], t, vocab);
    const T* src = table + static_cast<int64_t>(ids[t]) * hidden;
    T* dst = out + t * hidden;
    for (int64_t h = 0; h < hidden; ++h) dst[h] = src[h];
  }
}

template <class T>
void embedding_bwd_ref(T* dtable, const T* dout, const int32_t* ids, int64_t tokens, int64_t vocab, int64_t hidden) {
  for (int64_t t = 0; t < tokens; ++t) check_id("embedding_bwd", ids[t], t, vocab);
  for (int64_t t = 0; t < tokens; ++t) {
    T* dst = dtable + static_cast<int64_t>(ids[t]) * hidden;
    const T* src = dout + t * hidden;
    for (int64_t h = 0; h < hidden; ++h) dst[h] += src[h];
  }
}

#define RLCU_INSTANTIATE(T)                                                                      \
  template void embedding_fwd_ref<T>(T*, const T*, const int32_t*, int64_t, int64_t, int64_t); \
  template void embedding_bwd_ref<T>(T*, const T*, const int32_t*, int64_t, int64_t, int64_t);
RLCU_INSTANTIATE(float)
RLCU_INSTANTIATE(double)
#undef RLCU_INSTANTIATE

}  // namespace ref

void embedding_fwd(const Tensor& out, const Tensor& table, const Tensor& ids, Context& ctx) {
  check::tensor("embedding_fwd", "out", out, DType::F32, 2);
  check::tensor("embedding_fwd", "table", table, DType::F32, 2);
  RLCU_CHECK(!ids.empty(), "embedding_fwd: ids is empty");
  const int64_t tokens = out.shape[0], hidden = out.shape[1];
  ref::embedding_fwd_ref<float>(out.ptr<float>(), table.ptr<float>(), ids.ptr<int32_t>(), tokens, table.shape[0],
                                hidden);
}

void embedding_bwd(const Tensor& dtable, const Tensor& dout, const Tensor& ids, Context& ctx) {
  RLCU_CHECK(!dtable.empty(), "embedding_bwd: dtable is empty");
  check::tensor("embedding_bwd", "dout", dout, DType::F32, 2);
  RLCU_CHECK(!ids.empty(), "embedding_bwd: ids is empty");
  const int64_t tokens = dout.shape[0], hidden = dout.shape[1];
  ref::embedding_bwd_ref<float>(dtable.ptr<float>(), dout.ptr<float>(), ids.ptr<int32_t>(), tokens, dtable.shape[0],
                                hidden);
}

}  // namespace rlcu::cpu
