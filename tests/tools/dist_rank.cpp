// rlcu_dist_rank: one rank of a test job, started the way a launcher starts rlcu (RANK / WORLD_SIZE / MASTER_ADDR /
// MASTER_PORT or the SLURM / Open MPI variables in the environment). The dist tests start several of these.
//   rlcu_dist_rank DEVICE SCENARIO      DEVICE: cpu | cuda (GPU LOCAL_RANK)
//   collectives  every collective over odd sizes and several dtypes on integer-valued data (exact in any reduction
//                order), checked on this rank; prints "ok DIGEST" where DIGEST hashes every result (equal on every
//                rank when the results are bitwise identical)
//   die          after a barrier the last rank ends at once (_exit, no clean-up); the others keep all-reducing
//                until an error and print "error after S s: MESSAGE"
//   hang         after a barrier the last rank stops calling collectives for up to 120 s (it ends early once its
//                communicator reports a failure); the others all-reduce and print the error as for die
// Exit status: 0 ok, 1 an rlcu::Error (printed), 2 a wrong result (printed), 3 the error the scenario expects never came.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "rlcu/context.h"
#include "rlcu/dist.h"
#include "rlcu/error.h"
#include "rlcu/tensor.h"

using namespace rlcu;
using namespace rlcu::dist;

namespace {

struct WrongResult : std::runtime_error {
  using std::runtime_error::runtime_error;
};

uint64_t fnv(uint64_t h, const void* p, size_t n) {
  const auto* b = static_cast<const unsigned char*>(p);
  for (size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 1099511628211ull;
  return h;
}

// Small integers: exact in F32, F64 and BF16 sums over a few ranks, whatever the order.
double value(int rank, int64_t i) { return static_cast<double>(((rank + 1) * 7 + i * 3) % 11) - 5.0; }

std::vector<char> host_bytes(DType t, int rank, int64_t n, int64_t offset) {
  std::vector<char> out(static_cast<size_t>(n) * dtype_size(t));
  for (int64_t i = 0; i < n; ++i) {
    const double v = value(rank, i + offset);
    switch (t) {
      case DType::F32: reinterpret_cast<float*>(out.data())[i] = static_cast<float>(v); break;
      case DType::F64: reinterpret_cast<double*>(out.data())[i] = v; break;
      case DType::BF16: reinterpret_cast<uint16_t*>(out.data())[i] = f32_to_bf16(static_cast<float>(v)); break;
      case DType::I32: reinterpret_cast<int32_t*>(out.data())[i] = static_cast<int32_t>(v); break;
      case DType::I64: reinterpret_cast<int64_t*>(out.data())[i] = static_cast<int64_t>(v) * 3000000000LL; break;
      default: throw WrongResult("unsupported dtype in the test");
    }
  }
  return out;
}

double as_double(DType t, const std::vector<char>& b, int64_t i) {
  switch (t) {
    case DType::F32: return reinterpret_cast<const float*>(b.data())[i];
    case DType::F64: return reinterpret_cast<const double*>(b.data())[i];
    case DType::BF16: return bf16_to_f32(reinterpret_cast<const uint16_t*>(b.data())[i]);
    case DType::I32: return reinterpret_cast<const int32_t*>(b.data())[i];
    case DType::I64: return static_cast<double>(reinterpret_cast<const int64_t*>(b.data())[i]);
    default: return 0;
  }
}

double reduce_values(DType t, ReduceOp op, int world, int64_t i) {
  double acc = 0;
  for (int r = 0; r < world; ++r) {
    const double v = as_double(t, host_bytes(t, r, 1, i), 0);
    if (r == 0) acc = v;
    else acc = op == ReduceOp::Sum ? acc + v : op == ReduceOp::Max ? std::max(acc, v) : std::min(acc, v);
  }
  return acc;
}

struct Job {
  Communicator& comm;
  Context& ctx;
  Device dev;
  uint64_t digest = 1469598103934665603ull;

  OwnedTensor upload(const std::vector<char>& bytes, DType t) {
    OwnedTensor o = OwnedTensor::make(t, dev, {static_cast<int64_t>(bytes.size() / dtype_size(t))});
    copy_bytes(o.t, Tensor(const_cast<char*>(bytes.data()), DType::U8, Device::CPU, {static_cast<int64_t>(bytes.size())}));
    return o;
  }
  // `same_on_every_rank`: the result enters the digest (reduce_scatter's slices differ by rank).
  std::vector<char> download(const Tensor& t, bool same_on_every_rank = true) {
    ctx.synchronize("dist test result");
    comm.check();
    std::vector<char> out(t.nbytes());
    copy_bytes(Tensor(out.data(), DType::U8, Device::CPU, {static_cast<int64_t>(out.size())}), t);
    if (same_on_every_rank) digest = fnv(digest, out.data(), out.size());
    return out;
  }
  void expect(bool ok, const std::string& what) {
    if (!ok) throw WrongResult(fmt::format("rank {}: {}", comm.rank(), what));
  }
};

void check_collectives(Job& j) {
  const int w = j.comm.world_size(), me = j.comm.rank();
  for (DType t : {DType::F32, DType::F64, DType::BF16, DType::I32, DType::I64}) {
    for (ReduceOp op : {ReduceOp::Sum, ReduceOp::Max, ReduceOp::Min}) {
      for (int64_t n : {int64_t(1), int64_t(w - 1), int64_t(1031)}) {
        OwnedTensor x = j.upload(host_bytes(t, me, n, 0), t);
        j.comm.all_reduce(x.t, op, j.ctx);
        const std::vector<char> got = j.download(x.t);
        for (int64_t i = 0; i < n; ++i)
          j.expect(as_double(t, got, i) == reduce_values(t, op, w, i),
                   fmt::format("all_reduce {} {} n={} [{}] = {}, expected {}", reduce_op_name(op), dtype_name(t), n,
                               i, as_double(t, got, i), reduce_values(t, op, w, i)));
      }
    }
    // reduce_scatter: slice r of rank p's input starts at element r * n of p's sequence.
    const int64_t n = 257;
    OwnedTensor in = j.upload(host_bytes(t, me, n * w, 0), t);
    OwnedTensor out = OwnedTensor::make(t, j.dev, {n});
    j.comm.reduce_scatter(out.t, in.t, ReduceOp::Sum, j.ctx);
    const std::vector<char> got = j.download(out.t, false);
    for (int64_t i = 0; i < n; ++i)
      j.expect(as_double(t, got, i) == reduce_values(t, ReduceOp::Sum, w, me * n + i),
               fmt::format("reduce_scatter {} [{}]", dtype_name(t), i));
  }
  // all_gather in place (into rank slice) and out of place; broadcast from the last rank.
  for (bool in_place : {true, false}) {
    const int64_t n = 129;
    OwnedTensor out = OwnedTensor::make(DType::I64, j.dev, {n * w});
    OwnedTensor src = j.upload(host_bytes(DType::I64, me, n, 0), DType::I64);
    Tensor in = src.t;
    if (in_place) {
      in = Tensor(static_cast<char*>(out.t.data) + me * n * 8, DType::I64, j.dev, {n});
      copy_bytes(in, src.t);
    }
    j.comm.all_gather(out.t, in, j.ctx);
    const std::vector<char> got = j.download(out.t);
    for (int r = 0; r < w; ++r)
      for (int64_t i = 0; i < n; ++i)
        j.expect(as_double(DType::I64, got, r * n + i) == as_double(DType::I64, host_bytes(DType::I64, r, 1, i), 0),
                 fmt::format("all_gather (in place {}) slot {} [{}]", in_place, r, i));
  }
  OwnedTensor b = j.upload(host_bytes(DType::BF16, me, 333, 0), DType::BF16);
  j.comm.broadcast(b.t, w - 1, j.ctx);
  const std::vector<char> got = j.download(b.t);
  for (int64_t i = 0; i < 333; ++i)
    j.expect(as_double(DType::BF16, got, i) == value(w - 1, i), fmt::format("broadcast [{}]", i));
  j.comm.barrier(j.ctx);
}

// die / hang: the last rank stops taking part; the others must get an error, not wait forever.
int survive(Job& j, bool die) {
  const int w = j.comm.world_size(), me = j.comm.rank();
  j.comm.barrier(j.ctx);
  if (me == w - 1) {
    std::fflush(stdout);
    if (die) _exit(0);
    // Hang, but end once the communicator reports the others' failure (the NCCL one does: its links close).
    for (int i = 0; i < 1200; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      try {
        j.comm.check();
      } catch (const Error&) {
        break;
      }
    }
    return 0;
  }
  OwnedTensor x = j.upload(host_bytes(DType::F32, me, 4096, 0), DType::F32);
  const auto t0 = std::chrono::steady_clock::now();
  try {
    for (int it = 0; it < 100000; ++it) {
      j.comm.all_reduce(x.t, ReduceOp::Sum, j.ctx);
      j.ctx.synchronize("dist test");
      j.comm.check();
    }
  } catch (const Error& e) {
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::string msg = e.what();
    try {
      j.comm.check();  // the communicator's own account, when the first error came from CUDA after an abort
    } catch (const Error& recorded) {
      msg = recorded.what();
    }
    std::printf("error after %.2f s: %s\n", s, msg.c_str());
    return 0;
  }
  std::printf("no error\n");
  return 3;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string device = argc > 1 ? argv[1] : "cpu";
  const std::string scenario = argc > 2 ? argv[2] : "collectives";
  try {
    const DistEnv env = dist_env_from_environment();
    const DistOptions opt = dist_options_from_environment();
    std::unique_ptr<Context> cuda;
    if (device == "cuda") cuda = Context::cuda(local_device_index(env, cuda_device_count()));
    Context& ctx = cuda ? *cuda : Context::cpu();
    std::unique_ptr<Communicator> comm = create_communicator(env, ctx, opt);
    Job j{*comm, ctx, ctx.device()};
    if (scenario == "die" || scenario == "hang") return survive(j, scenario == "die");
    check_collectives(j);
    std::printf("ok %016llx\n", static_cast<unsigned long long>(j.digest));
    return 0;
  } catch (const WrongResult& e) {
    std::printf("wrong: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::printf("error: %s\n", e.what());
    return 1;
  }
}
