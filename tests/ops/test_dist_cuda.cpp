// The NCCL communicator (GPU only; skipped visibly without a CUDA device or without NCCL in the build):
//   * one rank: every collective over every dtype NCCL takes, ordered with kernels on the caller's stream both
//     ways (a fill before and a scale after, on the context stream, with no synchronisation in between);
//   * several GPUs visible: rlcu_dist_rank on each GPU (torchrun variables) runs every collective; a rank that
//     dies and a rank that hangs end the others with an error, not a hang.
#include <gtest/gtest.h>

#include "dist_test_util.h"
#include "rlcu/context.h"
#include "rlcu/dist.h"
#include "rlcu/error.h"
#include "rlcu/ops.h"

using namespace rlcu;
using namespace rlcu::dist;
using rlcu::test::Outcome;

namespace {

using Vars = std::map<std::string, std::string>;

// Without CUDA headers, so that this file builds wherever the library does.
#define RLCU_REQUIRE_NCCL()                                                                \
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device: GPU test skipped";        \
  if (!nccl_available()) GTEST_SKIP() << "built without NCCL: NCCL test skipped"

std::unique_ptr<Communicator> nccl_of_one(Context& ctx) {
  DistOptions o;
  o.backend = Backend::Nccl;
  o.rendezvous_timeout_s = 60;
  o.collective_timeout_s = 60;
  return create_communicator(DistEnv{}, ctx, o);
}

std::vector<unsigned char> bytes_of(const Tensor& t) {
  std::vector<unsigned char> out(t.nbytes());
  copy_bytes(Tensor(out.data(), DType::U8, Device::CPU, {static_cast<int64_t>(out.size())}), t);
  return out;
}
void put_bytes(const Tensor& t, const std::vector<unsigned char>& b) {
  copy_bytes(t, Tensor(const_cast<unsigned char*>(b.data()), DType::U8, Device::CPU, {static_cast<int64_t>(b.size())}));
}
std::vector<unsigned char> pattern(size_t n, unsigned seed) {
  std::vector<unsigned char> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<unsigned char>((i * 131 + seed * 17) % 251);
  return v;
}

// HostCollectives on CUDA pass host vectors through the device staging buffer (one NCCL rank); a call beyond the
// staging capacity is an error.
TEST(DistNccl, HostCollectivesThroughTheStagingBuffer) {
  RLCU_REQUIRE_NCCL();
  auto ctx = Context::cuda(0);
  auto comm = nccl_of_one(*ctx);
  HostCollectives hc(*comm, *ctx, 64);
  std::vector<int32_t> mine = {3, -1, float_bits(2.5f)};
  EXPECT_EQ(hc.all_gather_concat(mine), mine);
  std::vector<double> d = {1.25, -3.0};
  hc.all_reduce(d, ReduceOp::Max);
  EXPECT_EQ(d, std::vector<double>({1.25, -3.0}));
  std::vector<int64_t> b = {7, 8};
  hc.broadcast(b, 0);
  EXPECT_EQ(b, std::vector<int64_t>({7, 8}));
  std::vector<double> big(9, 1.0);  // 72 bytes > 64
  EXPECT_ANY_THROW(hc.all_reduce(big, ReduceOp::Sum));
}

TEST(DistNccl, OneRankEveryCollectiveAndDtype) {
  RLCU_REQUIRE_NCCL();
  auto ctx = Context::cuda(0);
  auto comm = nccl_of_one(*ctx);
  EXPECT_EQ(comm->backend(), Backend::Nccl);
  EXPECT_EQ(comm->world_size(), 1);
  for (DType t : {DType::F32, DType::F64, DType::BF16, DType::F16, DType::I32, DType::I64, DType::U8}) {
    SCOPED_TRACE(dtype_name(t));
    const int64_t n = 1031;
    OwnedTensor a = OwnedTensor::make(t, Device::CUDA, {n}), b = OwnedTensor::make(t, Device::CUDA, {n});
    // Bytes in any pattern are values of every dtype; with one rank every collective returns them unchanged
    // (floating-point patterns may hold NaNs: compared as bytes, and max/min of one value is that value).
    const std::vector<unsigned char> pa = pattern(a.t.nbytes(), 1), pb = pattern(b.t.nbytes(), 2);
    put_bytes(a.t, pa);
    for (ReduceOp op : {ReduceOp::Sum, ReduceOp::Max, ReduceOp::Min}) comm->all_reduce(a.t, op, *ctx);
    EXPECT_EQ(bytes_of(a.t), pa);
    put_bytes(b.t, pb);
    comm->reduce_scatter(a.t, b.t, ReduceOp::Sum, *ctx);
    EXPECT_EQ(bytes_of(a.t), pb);
    put_bytes(b.t, pa);
    comm->all_gather(a.t, b.t, *ctx);
    EXPECT_EQ(bytes_of(a.t), pa);
    comm->all_gather(a.t, a.t, *ctx);  // in place
    comm->broadcast(a.t, 0, *ctx);
    EXPECT_EQ(bytes_of(a.t), pa);
  }
  comm->barrier(*ctx);
  comm->check();
}

TEST(DistNccl, OrderedWithTheContextStream) {
  RLCU_REQUIRE_NCCL();
  auto ctx = Context::cuda(0);
  auto comm = nccl_of_one(*ctx);
  const int64_t n = int64_t(1) << 26;  // 256 MiB: the fill takes long enough for a missing wait to show
  OwnedTensor in = OwnedTensor::make(DType::F32, Device::CUDA, {n}), out = OwnedTensor::make(DType::F32, Device::CUDA, {n});
  for (int it = 0; it < 3; ++it) {
    ops::fill(out.t, -1.0f, *ctx);
    ops::fill(in.t, static_cast<float>(it + 3), *ctx);
    comm->reduce_scatter(out.t, in.t, ReduceOp::Sum, *ctx);  // out = in (one rank), on the communicator's stream
    ops::scale(out.t, out.t, 2.0f, *ctx);                   // must see the copied values
    const std::vector<float> got = to_host_f32(out.t);
    size_t bad = 0;
    for (float v : got) bad += v != 2.0f * static_cast<float>(it + 3);
    EXPECT_EQ(bad, 0u) << "iteration " << it << ": first value " << got[0];
  }
  comm->check();
}

TEST(DistNccl, WrongDeviceIsRefused) {
  RLCU_REQUIRE_NCCL();
  auto ctx = Context::cuda(0);
  auto comm = nccl_of_one(*ctx);
  std::vector<float> host(4);
  EXPECT_THROW(comm->all_reduce(Tensor(host.data(), DType::F32, Device::CPU, {4}), ReduceOp::Sum, *ctx),
               InternalError);
  EXPECT_THROW(comm->all_reduce(Tensor(host.data(), DType::F32, Device::CUDA, {4}), ReduceOp::Sum, Context::cpu()),
               InternalError);
}

// ---- several GPUs --------------------------------------------------------------------------------------------

std::string describe(const std::vector<Outcome>& res) {
  std::string s;
  for (size_t i = 0; i < res.size(); ++i)
    s += fmt::format("  [{}] exit {} signal {}{} after {:.2f} s: {}", i, res[i].exit_code, res[i].signal,
                     res[i].timed_out ? " (timed out)" : "", res[i].seconds, res[i].out);
  return s;
}

std::vector<Outcome> launch_gpus(int w, const std::string& scenario, const Vars& extra, double limit_s) {
  const int port = rlcu::test::free_port();
  return rlcu::test::run_children(
      w,
      [&](int r) {
        Vars v = {{"RANK", std::to_string(r)},       {"WORLD_SIZE", std::to_string(w)},
                  {"LOCAL_RANK", std::to_string(r)}, {"LOCAL_WORLD_SIZE", std::to_string(w)},
                  {"MASTER_ADDR", "127.0.0.1"},      {"MASTER_PORT", std::to_string(port)}};
        v.insert(extra.begin(), extra.end());
        rlcu::test::exec_with_env(RLCU_DIST_RANK_BIN, {"cuda", scenario}, v);
      },
      limit_s);
}

int gpus_for_multi_rank_test() { return std::min(cuda_device_count(), 8); }

#define RLCU_REQUIRE_GPUS(n)                                                                                     \
  RLCU_REQUIRE_NCCL();                                                                                           \
  if (gpus_for_multi_rank_test() < (n)) GTEST_SKIP() << "needs " << (n) << " CUDA devices, " << cuda_device_count() \
                                                     << " visible: multi-GPU NCCL test skipped"

TEST(DistNccl, SeveralGpusEveryCollective) {
  RLCU_REQUIRE_GPUS(2);
  const int w = gpus_for_multi_rank_test();
  const auto res = launch_gpus(w, "collectives", {}, 300);
  for (const Outcome& o : res) EXPECT_EQ(o.exit_code, 0) << describe(res);
  for (const Outcome& o : res) EXPECT_EQ(o.out, res[0].out) << "results differ between ranks:\n" << describe(res);
}

TEST(DistNccl, DeadRankEndsTheOthers) {
  RLCU_REQUIRE_GPUS(2);
  const int w = gpus_for_multi_rank_test();
  const auto res = launch_gpus(w, "die", {{"RLCU_DIST_TIMEOUT_S", "600"}}, 200);
  for (int r = 0; r + 1 < w; ++r) {
    const Outcome& o = res[static_cast<size_t>(r)];
    EXPECT_EQ(o.exit_code, 0) << describe(res);
    EXPECT_NE(o.out.find("error after"), std::string::npos) << describe(res);
    EXPECT_NE(o.out.find("ended without closing its communicator"), std::string::npos) << describe(res);
    EXPECT_LT(o.seconds, 90.0) << describe(res);
  }
}

TEST(DistNccl, HungRankTimesOut) {
  RLCU_REQUIRE_GPUS(2);
  const int w = gpus_for_multi_rank_test();
  const auto res = launch_gpus(w, "hang", {{"RLCU_DIST_TIMEOUT_S", "5"}}, 200);
  for (int r = 0; r + 1 < w; ++r) {
    const Outcome& o = res[static_cast<size_t>(r)];
    EXPECT_EQ(o.exit_code, 0) << describe(res);
    EXPECT_NE(o.out.find("error after"), std::string::npos) << describe(res);
    EXPECT_LT(o.seconds, 90.0) << describe(res);
  }
  EXPECT_NE(res[0].out.find("did not finish within 5 s"), std::string::npos) << describe(res);
}

}  // namespace
