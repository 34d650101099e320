// create_communicator(): picks the backend (Local for one rank, Socket for CPU tensors, NCCL for CUDA tensors);
// the Local backend of a job of one; argument checks shared by the backends.
#include <cstring>

#include "backends.h"
#include "rlcu/error.h"

namespace rlcu::dist {

const char* reduce_op_name(ReduceOp op) {
  switch (op) {
    case ReduceOp::Sum: return "sum";
    case ReduceOp::Max: return "max";
    case ReduceOp::Min: return "min";
  }
  return "?";
}

Tensor rank_slice(const Tensor& t, int r, int64_t n) {
  return Tensor(static_cast<char*>(t.data) + static_cast<size_t>(r) * static_cast<size_t>(n) * dtype_size(t.dtype),
                t.dtype, t.device, {n});
}

namespace {

void check_tensor(const Communicator& c, const char* op, const char* what, const Tensor& t) {
  RLCU_CHECK(t.device == c.device(), "{}: {} is a {} tensor but the communicator is for {} tensors", op, what,
             device_name(t.device), device_name(c.device()));
  RLCU_CHECK(t.numel() == 0 || !t.empty(), "{}: {} {} has no data", op, what, t.shape_str());
}

}  // namespace

void check_all_reduce(const Communicator& c, const Tensor& x, bool reducible) {
  check_tensor(c, "all_reduce", "x", x);
  RLCU_CHECK(reducible, "all_reduce: this backend does not reduce {} tensors", dtype_name(x.dtype));
}

void check_reduce_scatter(const Communicator& c, const Tensor& out, const Tensor& in, bool reducible) {
  check_tensor(c, "reduce_scatter", "out", out);
  check_tensor(c, "reduce_scatter", "in", in);
  RLCU_CHECK(out.dtype == in.dtype, "reduce_scatter: out is {}, in is {}", dtype_name(out.dtype), dtype_name(in.dtype));
  RLCU_CHECK(in.numel() == out.numel() * c.world_size(), "reduce_scatter: in {} must hold world size {} x out {}",
             in.shape_str(), c.world_size(), out.shape_str());
  RLCU_CHECK(reducible, "reduce_scatter: this backend does not reduce {} tensors", dtype_name(in.dtype));
}

void check_all_gather(const Communicator& c, const Tensor& out, const Tensor& in) {
  check_tensor(c, "all_gather", "out", out);
  check_tensor(c, "all_gather", "in", in);
  RLCU_CHECK(out.dtype == in.dtype, "all_gather: out is {}, in is {}", dtype_name(out.dtype), dtype_name(in.dtype));
  RLCU_CHECK(out.numel() == in.numel() * c.world_size(), "all_gather: out {} must hold world size {} x in {}",
             out.shape_str(), c.world_size(), in.shape_str());
  // `in` is either this rank's slice of `out` or apart from `out` entirely.
  const char* o = static_cast<const char*>(out.data);
  const char* i = static_cast<const char*>(in.data);
  const bool own_slice = i == static_cast<const char*>(rank_slice(out, c.rank(), in.numel()).data);
  const bool apart = i + in.nbytes() <= o || o + out.nbytes() <= i;
  RLCU_CHECK(in.numel() == 0 || own_slice || apart, "all_gather: in overlaps out but is not rank {}'s slice of it",
             c.rank());
}

void check_broadcast(const Communicator& c, const Tensor& x, int root) {
  check_tensor(c, "broadcast", "x", x);
  RLCU_CHECK(root >= 0 && root < c.world_size(), "broadcast: root {} is not a rank of {}", root, c.world_size());
}

namespace {

// A job of one: the reductions over one rank are the identity; out-of-place forms copy.
class LocalCommunicator final : public Communicator {
 public:
  explicit LocalCommunicator(Device device) : Communicator(0, 1, device) {}
  Backend backend() const override { return Backend::Local; }
  void all_reduce(const Tensor& x, ReduceOp, Context&) override { check_all_reduce(*this, x, true); }
  void reduce_scatter(const Tensor& out, const Tensor& in, ReduceOp, Context&) override {
    check_reduce_scatter(*this, out, in, true);
    if (out.data != in.data && out.numel() > 0) copy_bytes(out, in);
  }
  void all_gather(const Tensor& out, const Tensor& in, Context&) override {
    check_all_gather(*this, out, in);
    if (out.data != in.data && out.numel() > 0) copy_bytes(out, in);
  }
  void broadcast(const Tensor& x, int root, Context&) override { check_broadcast(*this, x, root); }
  void barrier(Context&) override {}
  void check() const override {}
};

}  // namespace

std::unique_ptr<Communicator> make_local_communicator(Device device) {
  return std::make_unique<LocalCommunicator>(device);
}

std::unique_ptr<Communicator> create_communicator(const DistEnv& env, Context& ctx, const DistOptions& opt) {
  Backend b = opt.backend;
  if (b == Backend::Auto) b = !env.distributed() ? Backend::Local : ctx.device() == Device::CPU ? Backend::Socket : Backend::Nccl;
  switch (b) {
    case Backend::Local:
      if (env.distributed())
        throw Error(fmt::format("{}: the local communicator serves one process only", env.describe()));
      return make_local_communicator(ctx.device());
    case Backend::Socket:
      if (ctx.device() != Device::CPU)
        throw Error(fmt::format("{}: the socket communicator takes CPU tensors only (CUDA uses NCCL)", env.describe()));
      return make_socket_communicator(env, opt);
    case Backend::Nccl:
      if (ctx.device() != Device::CUDA)
        throw Error(fmt::format("{}: the NCCL communicator takes CUDA tensors only", env.describe()));
#ifdef RLCU_HAVE_NCCL
      return make_nccl_communicator(env, ctx, opt);
#else
      throw Error(fmt::format("{}: this rlcu was built without NCCL (libnccl was not found when it was configured), "
                              "so it cannot run collectives on CUDA tensors",
                              env.describe()));
#endif
    case Backend::Auto: break;
  }
  RLCU_CHECK(false, "unknown backend");
  return nullptr;
}

bool nccl_available() {
#ifdef RLCU_HAVE_NCCL
  return true;
#else
  return false;
#endif
}

}  // namespace rlcu::dist
