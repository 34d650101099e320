// Token embedding on CUDA.
//
// embedding_fwd: out[T,H] = table[ids[t], :]   (table F32 or BF16, out F32 or BF16, ids I32). An id outside
//   [0, V) yields a zero row (ids are validated by the data layer; the kernel never reads out of bounds).
// embedding_bwd: dtable[V,H] (F32) += sum over t with ids[t] = v of dout[t, :]   (parameter gradient: accumulates)
//   Deterministic without atomics: the (id, t) pairs are radix-sorted on the device (stable, so equal ids keep
//   token order), then one block per run of equal ids sums its dout rows in token order (fp64) and adds the sum to
//   the table row. Out-of-range ids contribute nothing. No host synchronisation.
// Shapes and dtypes are checked before the call (kernels/contract/norm.cpp); embedding_bwd adds its sort range.
#include <cub/device/device_radix_sort.cuh>

#include "cuda_common.cuh"
#include "backends.h"

namespace rlcu::cuda {

namespace {

template <class TO, class TT, int V>
__global__ void embedding_fwd_kernel(TO* __restrict__ out, const TT* __restrict__ table, const int* __restrict__ ids,
                                     int64_t tokens, int64_t hidden, int64_t vocab) {
  const int64_t per_row = hidden / V;
  const int64_t n = tokens * per_row;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = i / per_row, c = (i % per_row) * V;
    const int id = ids[t];
    Vec<TO, V> o;
    if (id >= 0 && id < vocab) {
      const Vec<TT, V> x = load_vec<V>(table + static_cast<int64_t>(id) * hidden + c);
#pragma unroll
      for (int j = 0; j < V; ++j) o.v[j] = from_f32<TO>(to_f32(x.v[j]));
    } else {
#pragma unroll
      for (int j = 0; j < V; ++j) o.v[j] = from_f32<TO>(0.0f);
    }
    store_vec<V>(out + t * hidden + c, o);
  }
}

__global__ void iota_kernel(int* __restrict__ v, int64_t n) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    v[i] = static_cast<int>(i);
}

// One block per sorted position; only the first position of a run of equal ids works.
template <class T, int V>
__global__ void embedding_bwd_kernel(float* __restrict__ dtable, const T* __restrict__ dout,
                                     const int* __restrict__ sorted_ids, const int* __restrict__ sorted_tok,
                                     int64_t tokens, int64_t hidden, int64_t vocab) {
  const int64_t i = blockIdx.x;
  const int id = sorted_ids[i];
  if (id < 0 || id >= vocab) return;
  if (i > 0 && sorted_ids[i - 1] == id) return;
  int64_t end = i + 1;
  while (end < tokens && sorted_ids[end] == id) ++end;
  float* row = dtable + static_cast<int64_t>(id) * hidden;
  for (int64_t c = static_cast<int64_t>(threadIdx.x) * V; c < hidden; c += static_cast<int64_t>(blockDim.x) * V) {
    double acc[V] = {};  // fp64: a padding id can repeat thousands of times
    for (int64_t r = i; r < end; ++r) {
      const Vec<T, V> x = load_vec<V>(dout + static_cast<int64_t>(sorted_tok[r]) * hidden + c);
#pragma unroll
      for (int j = 0; j < V; ++j) acc[j] += to_f32(x.v[j]);
    }
#pragma unroll
    for (int j = 0; j < V; ++j) row[c + j] = static_cast<float>(row[c + j] + acc[j]);
  }
}

}  // namespace

void embedding_fwd(const Tensor& out, const Tensor& table, const Tensor& ids, Context& ctx) {
  const int64_t vocab = table.size(0), hidden = table.size(1), tokens = out.rows();
  if (tokens == 0 || hidden == 0) return;
  cudaStream_t s = stream_of(ctx);
  dispatch_float(out.dtype, "embedding_fwd out", [&](auto to) {
    using TO = decltype(to);
    dispatch_float(table.dtype, "embedding_fwd table", [&](auto tt) {
      using TT = decltype(tt);
      constexpr int V = 8;
      if (hidden % V == 0 && is_aligned(out.data, V * sizeof(TO)) && is_aligned(table.data, V * sizeof(TT))) {
        embedding_fwd_kernel<TO, TT, V><<<grid_for(tokens * hidden / V, 256), 256, 0, s>>>(
            out.ptr<TO>(), table.ptr<TT>(), ids.ptr<int>(), tokens, hidden, vocab);
      } else {
        embedding_fwd_kernel<TO, TT, 1><<<grid_for(tokens * hidden, 256), 256, 0, s>>>(
            out.ptr<TO>(), table.ptr<TT>(), ids.ptr<int>(), tokens, hidden, vocab);
      }
      RLCU_LAUNCH_CHECK(s);
    });
  });
}

void embedding_bwd(const Tensor& dtable, const Tensor& dout, const Tensor& ids, Context& ctx) {
  const int64_t vocab = dtable.size(0), hidden = dtable.size(1), tokens = dout.rows();
  RLCU_CHECK(tokens < (int64_t(1) << 31), "embedding_bwd: {} tokens exceed the i32 sort range", tokens);
  if (tokens == 0 || hidden == 0) return;
  cudaStream_t s = stream_of(ctx);
  const int n = static_cast<int>(tokens);

  size_t sort_bytes = 0;
  RLCU_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, sort_bytes, static_cast<const int*>(nullptr),
                                                  static_cast<int*>(nullptr), static_cast<const int*>(nullptr),
                                                  static_cast<int*>(nullptr), n, 0, 32, s));
  Carver measure;
  measure.take<int>(tokens);
  measure.take<int>(tokens);
  measure.take<int>(tokens);
  measure.take<char>(sort_bytes);
  Carver carve(static_cast<char*>(scratch(ctx, measure.size())));
  int* sorted_ids = carve.take<int>(tokens);
  int* tok = carve.take<int>(tokens);
  int* sorted_tok = carve.take<int>(tokens);
  void* sort_tmp = carve.take<char>(sort_bytes);

  iota_kernel<<<grid_for(tokens, 256), 256, 0, s>>>(tok, tokens);
  RLCU_LAUNCH_CHECK(s);
  RLCU_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(sort_tmp, sort_bytes, ids.ptr<const int>(), sorted_ids, tok,
                                                  sorted_tok, n, 0, 32, s));
  dispatch_float(dout.dtype, "embedding_bwd dout", [&](auto t) {
    using T = decltype(t);
    constexpr int V = 8;
    if (hidden % V == 0 && is_aligned(dout.data, V * sizeof(T)) && is_aligned(dtable.data, V * sizeof(float))) {
      embedding_bwd_kernel<T, V><<<static_cast<unsigned>(tokens), 128, 0, s>>>(
          dtable.ptr<float>(), dout.ptr<T>(), sorted_ids, sorted_tok, tokens, hidden, vocab);
    } else {
      embedding_bwd_kernel<T, 1><<<static_cast<unsigned>(tokens), 128, 0, s>>>(
          dtable.ptr<float>(), dout.ptr<T>(), sorted_ids, sorted_tok, tokens, hidden, vocab);
    }
    RLCU_LAUNCH_CHECK(s);
  });
}

}  // namespace rlcu::cuda
