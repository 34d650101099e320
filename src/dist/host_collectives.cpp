// HostCollectives (include/rlcu/dist.h): collectives on host vectors over a communicator of any backend. On the CPU
// the vectors themselves are the tensors; on CUDA each call uploads into the staging buffer, runs the collective on
// it (stream-ordered after the upload) and downloads the result, synchronising once.
//   all_gather_concat: the sizes are all-gathered first (I64, one per rank), every rank's words are padded to the
//   largest and all-gathered, and the padding is dropped: W * max(size) words of staging.
#include <algorithm>

#include "backends.h"
#include "rlcu/dist.h"
#include "rlcu/error.h"

namespace rlcu::dist {

HostCollectives::HostCollectives(Communicator& comm, Context& ctx, size_t capacity_bytes) : comm_(comm), ctx_(ctx) {
  RLCU_CHECK(comm.device() == ctx.device(), "host collectives: a {} communicator with a {} context",
             device_name(comm.device()), device_name(ctx.device()));
  if (ctx.device() != Device::CPU)
    staging_ = OwnedTensor::make(DType::U8, ctx.device(), {static_cast<int64_t>(std::max<size_t>(capacity_bytes, 64))});
}

Tensor HostCollectives::stage(DType dt, int64_t n) {
  if (ctx_.device() == Device::CPU) return Tensor();
  const size_t bytes = static_cast<size_t>(n) * dtype_size(dt);
  RLCU_CHECK(bytes <= static_cast<size_t>(staging_.t.numel()),
             "host collectives: {} bytes exceed the staging buffer of {} bytes", bytes, staging_.t.numel());
  return Tensor(staging_.t.data, dt, ctx_.device(), {n});
}

namespace {

// Runs `collective` on a tensor holding `host` (n elements of dt): the vector itself on the CPU, else the staging
// view `dev` (uploaded before, downloaded after).
template <class F>
void through(void* host, int64_t n, DType dt, const Tensor& dev, Context& ctx, F collective) {
  if (n == 0) return;
  if (dev.empty()) {
    collective(Tensor(host, dt, Device::CPU, {n}));
    return;
  }
  ctx.upload(dev, host);
  collective(dev);
  ctx.download(host, dev);
  ctx.synchronize("host collectives: read back");
}

}  // namespace

void HostCollectives::all_reduce(std::vector<double>& v, ReduceOp op) {
  const int64_t n = static_cast<int64_t>(v.size());
  through(v.data(), n, DType::F64, n ? stage(DType::F64, n) : Tensor(), ctx_,
          [&](const Tensor& t) { comm_.all_reduce(t, op, ctx_); });
}

void HostCollectives::all_reduce(std::vector<int64_t>& v, ReduceOp op) {
  const int64_t n = static_cast<int64_t>(v.size());
  through(v.data(), n, DType::I64, n ? stage(DType::I64, n) : Tensor(), ctx_,
          [&](const Tensor& t) { comm_.all_reduce(t, op, ctx_); });
}

void HostCollectives::broadcast(std::vector<int64_t>& x, int root) {
  const int64_t n = static_cast<int64_t>(x.size());
  through(x.data(), n, DType::I64, n ? stage(DType::I64, n) : Tensor(), ctx_,
          [&](const Tensor& t) { comm_.broadcast(t, root, ctx_); });
}

std::vector<int32_t> HostCollectives::all_gather_concat(const std::vector<int32_t>& mine) {
  const int W = world_size();
  std::vector<int64_t> sizes(static_cast<size_t>(W), 0);
  sizes[static_cast<size_t>(rank())] = static_cast<int64_t>(mine.size());
  all_reduce(sizes, ReduceOp::Sum);  // every other entry is 0 on each rank: a gather of the sizes
  const int64_t most = *std::max_element(sizes.begin(), sizes.end());
  std::vector<int32_t> all(static_cast<size_t>(W * most), 0);
  std::copy(mine.begin(), mine.end(), all.begin() + static_cast<ptrdiff_t>(rank() * most));
  if (most > 0) {
    const int64_t n = W * most;
    const Tensor dev = stage(DType::I32, n);
    if (dev.empty()) {
      const Tensor out(all.data(), DType::I32, Device::CPU, {n});
      comm_.all_gather(out, rank_slice(out, rank(), most), ctx_);
    } else {
      ctx_.upload(dev, all.data());
      comm_.all_gather(dev, rank_slice(dev, rank(), most), ctx_);
      ctx_.download(all.data(), dev);
      ctx_.synchronize("host collectives: read back");
    }
  }
  std::vector<int32_t> out;
  for (int r = 0; r < W; ++r) {
    const auto b = all.begin() + static_cast<ptrdiff_t>(r * most);
    out.insert(out.end(), b, b + static_cast<ptrdiff_t>(sizes[static_cast<size_t>(r)]));
  }
  return out;
}

}  // namespace rlcu::dist
