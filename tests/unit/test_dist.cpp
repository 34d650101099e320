// The socket communicator and the rendezvous across real processes (2, 3 and 4 ranks on 127.0.0.1):
//   * every collective on every rank, odd sizes (fewer elements than ranks too), F32/F64/BF16/I32/I64, against
//     reductions in rank order computed here: results are bitwise those, hence identical on every rank;
//   * a large all-reduce (send/receive multiplexing cannot deadlock), world size one (Local and Socket);
//   * failures end in bounded time with errors naming who: a rank that never comes, rank 0 that never comes,
//     disagreeing world sizes, a duplicate rank, a busy port, a killed rank, a hung rank, mismatched collectives;
//   * the PeerMonitor on rendezvous links: a goodbye is quiet, a dead process is named;
//   * rlcu_dist_rank started with torchrun, srun and mpirun variables (the real environment path).
#include <gtest/gtest.h>

#include <netinet/in.h>
#include <sys/socket.h>

#include <cmath>
#include <thread>

#include "dist/rendezvous.h"
#include "dist_test_util.h"
#include "rlcu/dist.h"
#include "rlcu/error.h"

using namespace rlcu;
using namespace rlcu::dist;
using rlcu::test::Outcome;

namespace {

using Vars = std::map<std::string, std::string>;

#define EXPECT_CONTAINS(s, part) EXPECT_NE(std::string(s).find(part), std::string::npos) << "in: " << (s)

struct WrongResult : std::runtime_error {
  using std::runtime_error::runtime_error;
};
void expect(bool ok, const std::string& what) {
  if (!ok) throw WrongResult(what);
}

Vars torchrun_vars(int rank, int world, int port) {
  return {{"RANK", std::to_string(rank)}, {"WORLD_SIZE", std::to_string(world)}, {"MASTER_ADDR", "127.0.0.1"},
          {"MASTER_PORT", std::to_string(port)}};
}

DistOptions quick(double rendezvous_s, double collective_s) {
  DistOptions o;
  o.rendezvous_timeout_s = rendezvous_s;
  o.collective_timeout_s = collective_s;
  return o;
}

// Runs body(rank) in `world` processes (rank i gets env_of(i)); a body's return value is its output line.
// Exit code 0: ok; 1: rlcu::Error (output "error: ..."); 2: wrong result (output "wrong: ...").
std::vector<Outcome> run_ranks(int n, const std::function<Vars(int)>& env_of,
                               const std::function<std::string(const DistEnv&)>& body, double limit_s) {
  return rlcu::test::run_children(
      n,
      [&](int i) {
        int code = 0;
        std::string out;
        try {
          out = body(parse_dist_env(env_of(i)));
        } catch (const WrongResult& e) {
          code = 2;
          out = std::string("wrong: ") + e.what();
        } catch (const std::exception& e) {
          code = 1;
          out = std::string("error: ") + e.what();
        }
        std::printf("%s\n", out.c_str());
        std::fflush(stdout);
        _exit(code);
      },
      limit_s);
}

std::string describe(const std::vector<Outcome>& res) {
  std::string s;
  for (size_t i = 0; i < res.size(); ++i)
    s += fmt::format("  [{}] exit {} signal {}{} after {:.2f} s: {}", i, res[i].exit_code, res[i].signal,
                     res[i].timed_out ? " (timed out)" : "", res[i].seconds, res[i].out);
  return s;
}

// ---- data and the reference reductions -------------------------------------------------------------------------

uint64_t mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}
// Values spread over several binades (so the reduction order shows in the rounding), some negative.
double draw(int rank, int64_t i, int salt) {
  const uint64_t h = mix(static_cast<uint64_t>(rank) * 1000003ull + static_cast<uint64_t>(i) * 7919ull +
                         static_cast<uint64_t>(salt) * 0x1234567ull);
  const double u = static_cast<double>(h >> 11) / 9007199254740992.0;  // [0, 1)
  return (u - 0.5) * std::ldexp(1.0, static_cast<int>(h % 17) - 8);
}

template <class T>
T stored(double v) {
  if constexpr (std::is_integral_v<T>) return static_cast<T>(std::llround(v * 1e6));
  else return static_cast<T>(v);
}

template <class T>
std::vector<T> make_data(int rank, int64_t n, int salt) {
  std::vector<T> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[static_cast<size_t>(i)] = stored<T>(draw(rank, i, salt));
  return v;
}
std::vector<uint16_t> make_bf16(int rank, int64_t n, int salt) {
  std::vector<uint16_t> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[static_cast<size_t>(i)] = f32_to_bf16(static_cast<float>(draw(rank, i, salt)));
  return v;
}

template <class Acc>
Acc combine(Acc a, Acc b, ReduceOp op) {
  if (op == ReduceOp::Sum) return a + b;
  return op == ReduceOp::Max ? std::max(a, b) : std::min(a, b);
}

// x_0 op x_1 op ... op x_{w-1}, left to right, in the accumulator type (BF16: F32, rounded once).
template <class T>
std::vector<T> rank_order(int w, int64_t n, int salt, ReduceOp op) {
  std::vector<T> acc = make_data<T>(0, n, salt);
  for (int r = 1; r < w; ++r) {
    const std::vector<T> x = make_data<T>(r, n, salt);
    for (size_t i = 0; i < acc.size(); ++i) acc[i] = combine(acc[i], x[i], op);
  }
  return acc;
}
std::vector<uint16_t> rank_order_bf16(int w, int64_t n, int salt, ReduceOp op) {
  std::vector<float> acc(static_cast<size_t>(n));
  for (int r = 0; r < w; ++r) {
    const std::vector<uint16_t> x = make_bf16(r, n, salt);
    for (size_t i = 0; i < acc.size(); ++i) acc[i] = r == 0 ? bf16_to_f32(x[i]) : combine(acc[i], bf16_to_f32(x[i]), op);
  }
  std::vector<uint16_t> out(acc.size());
  for (size_t i = 0; i < acc.size(); ++i) out[i] = f32_to_bf16(acc[i]);
  return out;
}

template <class T>
Tensor view_of(std::vector<T>& v, DType t) {
  return Tensor(v.data(), t, Device::CPU, {static_cast<int64_t>(v.size())});
}

uint64_t fnv(uint64_t h, const void* p, size_t n) {
  const auto* b = static_cast<const unsigned char*>(p);
  for (size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 1099511628211ull;
  return h;
}

template <class T>
void expect_all_reduce(Communicator& c, DType t, int64_t n, ReduceOp op, int salt, uint64_t* digest) {
  std::vector<T> x = make_data<T>(c.rank(), n, salt);
  c.all_reduce(view_of(x, t), op, Context::cpu());
  const std::vector<T> want = rank_order<T>(c.world_size(), n, salt, op);
  expect(std::memcmp(x.data(), want.data(), x.size() * sizeof(T)) == 0,
         fmt::format("all_reduce {} {} n={}: not the rank-order result", reduce_op_name(op), dtype_name(t), n));
  *digest = fnv(*digest, x.data(), x.size() * sizeof(T));
}

// Every collective; returns a digest of the results that must be the same on every rank.
std::string collectives_body(const DistEnv& env) {
  auto comm = create_communicator(env, Context::cpu(), quick(30, 30));
  Communicator& c = *comm;
  expect(c.backend() == Backend::Socket && c.rank() == env.rank && c.world_size() == env.world_size, "identity");
  const int w = c.world_size(), me = c.rank();
  uint64_t digest = 1469598103934665603ull;
  int salt = 0;
  for (int64_t n : {int64_t(1), int64_t(w - 1), int64_t(w + 1), int64_t(1037)}) {
    for (ReduceOp op : {ReduceOp::Sum, ReduceOp::Max, ReduceOp::Min}) {
      ++salt;
      expect_all_reduce<float>(c, DType::F32, n, op, salt, &digest);
      expect_all_reduce<double>(c, DType::F64, n, op, salt, &digest);
      expect_all_reduce<int32_t>(c, DType::I32, n, op, salt, &digest);
      expect_all_reduce<int64_t>(c, DType::I64, n, op, salt, &digest);
      std::vector<uint16_t> b = make_bf16(me, n, salt);
      c.all_reduce(view_of(b, DType::BF16), op, Context::cpu());
      expect(b == rank_order_bf16(w, n, salt, op), fmt::format("all_reduce bf16 {} n={}", reduce_op_name(op), n));
      digest = fnv(digest, b.data(), b.size() * 2);
    }
  }
  // reduce_scatter: rank r's result is slice r of the rank-order sums of the whole inputs.
  for (int64_t n : {int64_t(1), int64_t(333)}) {
    std::vector<float> in = make_data<float>(me, n * w, 77), out(static_cast<size_t>(n));
    c.reduce_scatter(view_of(out, DType::F32), view_of(in, DType::F32), ReduceOp::Sum, Context::cpu());
    const std::vector<float> all = rank_order<float>(w, n * w, 77, ReduceOp::Sum);
    expect(std::memcmp(out.data(), all.data() + me * n, out.size() * 4) == 0, fmt::format("reduce_scatter n={}", n));
    // in place: out is this rank's slice of in
    c.reduce_scatter(Tensor(in.data() + me * n, DType::F32, Device::CPU, {n}), view_of(in, DType::F32),
                     ReduceOp::Sum, Context::cpu());
    expect(std::memcmp(in.data() + me * n, out.data(), out.size() * 4) == 0, "reduce_scatter in place");
  }
  std::vector<int64_t> in = make_data<int64_t>(me, 101, 5), out(static_cast<size_t>(101 * w), -1);
  c.all_gather(view_of(out, DType::I64), view_of(in, DType::I64), Context::cpu());
  for (int r = 0; r < w; ++r)
    expect(std::equal(out.begin() + r * 101, out.begin() + (r + 1) * 101, make_data<int64_t>(r, 101, 5).begin()),
           fmt::format("all_gather slot {}", r));
  std::vector<int64_t> in_place(static_cast<size_t>(101 * w), -1);
  std::copy(in.begin(), in.end(), in_place.begin() + me * 101);
  c.all_gather(view_of(in_place, DType::I64), Tensor(in_place.data() + me * 101, DType::I64, Device::CPU, {101}),
               Context::cpu());
  expect(in_place == out, "all_gather in place");
  digest = fnv(digest, out.data(), out.size() * 8);
  for (int root : {0, w - 1}) {
    std::vector<uint16_t> b = make_bf16(me, 77, 9);
    c.broadcast(view_of(b, DType::BF16), root, Context::cpu());
    expect(b == make_bf16(root, 77, 9), fmt::format("broadcast from {}", root));
    digest = fnv(digest, b.data(), b.size() * 2);
  }
  c.all_reduce(Tensor(nullptr, DType::F32, Device::CPU, {0}), ReduceOp::Sum, Context::cpu());
  c.barrier(Context::cpu());
  return fmt::format("ok {:016x}", digest);
}

void expect_all_ok_and_equal(const std::vector<Outcome>& res) {
  for (const Outcome& o : res) EXPECT_EQ(o.exit_code, 0) << describe(res);
  for (const Outcome& o : res) EXPECT_EQ(o.out, res[0].out) << "results differ between ranks:\n" << describe(res);
}

TEST(DistSocket, CollectivesOnTwoThreeAndFourRanks) {
  for (int w : {2, 3, 4}) {
    SCOPED_TRACE(fmt::format("world size {}", w));
    const int port = rlcu::test::free_port();
    const auto res = run_ranks(w, [&](int r) { return torchrun_vars(r, w, port); }, collectives_body, 60);
    expect_all_ok_and_equal(res);
    EXPECT_EQ(res[0].out.rfind("ok ", 0), 0u) << describe(res);
  }
}

// HostCollectives over the socket communicator: uneven all_gather_concat (one rank contributing nothing), the
// reductions of host vectors and broadcast, identical on every rank.
TEST(DistSocket, HostCollectivesOnThreeRanks) {
  const int port = rlcu::test::free_port();
  const auto res = run_ranks(
      3, [&](int r) { return torchrun_vars(r, 3, port); },
      [&](const DistEnv& env) {
        auto c = create_communicator(env, Context::cpu(), quick(30, 30));
        HostCollectives hc(*c, Context::cpu(), 0);
        const int r = env.rank;
        std::vector<int32_t> mine;  // rank 0: 5 words, rank 1: none, rank 2: 2 (one a float's bits)
        if (r == 0) mine = {1, 2, 3, 4, 5};
        if (r == 2) mine = {-7, float_bits(0.1f)};
        const std::vector<int32_t> all = hc.all_gather_concat(mine);
        expect(all == std::vector<int32_t>({1, 2, 3, 4, 5, -7, float_bits(0.1f)}), "concat");
        expect(bits_float(all.back()) == 0.1f, "float bits");
        std::vector<double> d = {0.5 * (r + 1), -1.0 * r};
        hc.all_reduce(d, ReduceOp::Sum);
        expect(d[0] == 3.0 && d[1] == -3.0, fmt::format("sum {} {}", d[0], d[1]));
        std::vector<double> m = {double(r)};
        hc.all_reduce(m, ReduceOp::Max);
        expect(m[0] == 2.0, "max");
        std::vector<int64_t> i = {r == 1 ? int64_t(1) << 40 : 0};
        hc.all_reduce(i, ReduceOp::Sum);
        expect(i[0] == int64_t(1) << 40, "i64 sum");
        std::vector<int64_t> b = {r == 2 ? 42 : -1};
        hc.broadcast(b, 2);
        expect(b[0] == 42, "broadcast");
        expect(hc.all_gather_concat({}).empty(), "empty concat");
        return std::string("ok");
      },
      60);
  expect_all_ok_and_equal(res);
}

TEST(DistSocket, LargeAllReduce) {
  const int port = rlcu::test::free_port();
  const int64_t n = (int64_t(1) << 21) + 3;  // 8 MiB per rank: far more than the socket buffers hold
  const auto res = run_ranks(
      3, [&](int r) { return torchrun_vars(r, 3, port); },
      [&](const DistEnv& env) {
        auto c = create_communicator(env, Context::cpu(), quick(30, 60));
        std::vector<float> x(static_cast<size_t>(n));
        for (int64_t i = 0; i < n; ++i) x[static_cast<size_t>(i)] = static_cast<float>((i % 1000) * (env.rank + 1));
        c->all_reduce(view_of(x, DType::F32), ReduceOp::Sum, Context::cpu());
        for (int64_t i = 0; i < n; ++i)
          expect(x[static_cast<size_t>(i)] == static_cast<float>((i % 1000) * 6), fmt::format("[{}]", i));
        return std::string("ok");
      },
      90);
  expect_all_ok_and_equal(res);
}

TEST(DistSocket, WorldOfOne) {
  for (Backend b : {Backend::Auto, Backend::Socket}) {
    DistOptions o = quick(5, 5);
    o.backend = b;
    auto c = create_communicator(DistEnv{}, Context::cpu(), o);
    EXPECT_EQ(c->backend(), b == Backend::Auto ? Backend::Local : Backend::Socket);
    EXPECT_EQ(c->world_size(), 1);
    std::vector<float> x = {1.5f, -2.f, 3.f}, y(3, 0.f);
    c->all_reduce(view_of(x, DType::F32), ReduceOp::Max, Context::cpu());
    EXPECT_EQ(x, (std::vector<float>{1.5f, -2.f, 3.f}));
    c->reduce_scatter(view_of(y, DType::F32), view_of(x, DType::F32), ReduceOp::Sum, Context::cpu());
    EXPECT_EQ(y, x);
    std::fill(y.begin(), y.end(), 0.f);
    c->all_gather(view_of(y, DType::F32), view_of(x, DType::F32), Context::cpu());
    EXPECT_EQ(y, x);
    c->broadcast(view_of(x, DType::F32), 0, Context::cpu());
    c->barrier(Context::cpu());
    EXPECT_THROW(c->broadcast(view_of(x, DType::F32), 1, Context::cpu()), InternalError);
    std::vector<float> two(2);
    EXPECT_THROW(c->all_gather(view_of(two, DType::F32), view_of(x, DType::F32), Context::cpu()), InternalError);
  }
  // A job of several ranks cannot take the local backend.
  DistOptions o;
  o.backend = Backend::Local;
  EXPECT_THROW(create_communicator(parse_dist_env(torchrun_vars(0, 2, 1)), Context::cpu(), o), Error);
}

// ---- rendezvous failures ------------------------------------------------------------------------------------

std::string setup_only(const DistEnv& env, double rendezvous_s) {
  auto c = create_communicator(env, Context::cpu(), quick(rendezvous_s, 5));
  return "ok";
}

TEST(DistRendezvous, RankThatNeverComesIsNamed) {
  const int port = rlcu::test::free_port();
  // World size 3, but rank 2 is never started.
  const auto res = run_ranks(2, [&](int r) { return torchrun_vars(r, 3, port); },
                             [](const DistEnv& e) { return setup_only(e, 1.5); }, 20);
  ASSERT_EQ(res[0].exit_code, 1) << describe(res);
  EXPECT_CONTAINS(res[0].out, "rank 2 of 3 did not connect within 1.5 s");
  EXPECT_CONTAINS(res[0].out, fmt::format("127.0.0.1:{}", port));
  ASSERT_EQ(res[1].exit_code, 1) << describe(res);
  EXPECT_CONTAINS(res[1].out, "rank 1: the rendezvous failed on rank 0");
  EXPECT_CONTAINS(res[1].out, "rank 2 of 3 did not connect");
  for (const Outcome& o : res) EXPECT_LT(o.seconds, 6.0) << describe(res);
}

TEST(DistRendezvous, RankZeroThatNeverComes) {
  const int port = rlcu::test::free_port();
  const auto res = run_ranks(1, [&](int) { return torchrun_vars(1, 2, port); },
                             [](const DistEnv& e) { return setup_only(e, 1.0); }, 20);
  ASSERT_EQ(res[0].exit_code, 1) << describe(res);
  EXPECT_CONTAINS(res[0].out, "rank 1: rendezvous with rank 0 within 1 s");
  EXPECT_CONTAINS(res[0].out, fmt::format("could not connect to 127.0.0.1:{}", port));
  EXPECT_LT(res[0].seconds, 5.0);
}

TEST(DistRendezvous, WorldSizesThatDisagree) {
  const int port = rlcu::test::free_port();
  const auto res = run_ranks(2, [&](int r) { return torchrun_vars(r, r == 0 ? 2 : 3, port); },
                             [](const DistEnv& e) { return setup_only(e, 10); }, 30);
  ASSERT_EQ(res[0].exit_code, 1) << describe(res);
  EXPECT_CONTAINS(res[0].out, "rank 1 at 127.0.0.1 has world size 3 but rank 0 has 2");
  ASSERT_EQ(res[1].exit_code, 1) << describe(res);
  EXPECT_CONTAINS(res[1].out, "the rendezvous failed on rank 0: ");
  EXPECT_CONTAINS(res[1].out, "has world size 3 but rank 0 has 2");
  for (const Outcome& o : res) EXPECT_LT(o.seconds, 6.0) << describe(res);
}

TEST(DistRendezvous, DuplicateRank) {
  const int port = rlcu::test::free_port();
  const auto res = run_ranks(3, [&](int r) { return torchrun_vars(r == 2 ? 1 : r, 3, port); },
                             [](const DistEnv& e) { return setup_only(e, 10); }, 30);
  ASSERT_EQ(res[0].exit_code, 1) << describe(res);
  EXPECT_CONTAINS(res[0].out, "rank 1 connected twice");
  for (const Outcome& o : res) EXPECT_EQ(o.exit_code, 1) << describe(res);
}

TEST(DistRendezvous, BusyPort) {
  Socket busy = listen_tcp(0, "test");
  const int port = local_port(busy);
  const auto res = run_ranks(1, [&](int) { return torchrun_vars(0, 2, port); },
                             [](const DistEnv& e) { return setup_only(e, 5); }, 20);
  ASSERT_EQ(res[0].exit_code, 1) << describe(res);
  EXPECT_CONTAINS(res[0].out, fmt::format("cannot listen on port {}", port));
  EXPECT_CONTAINS(res[0].out, "pick another MASTER_PORT");
}

// ---- failures during collectives -------------------------------------------------------------------------------

// Ranks other than the last all-reduce until an error, and report how long it took.
std::string survive(Communicator& c) {
  std::vector<float> x(1000, 1.f);
  const auto t0 = Clock::now();
  try {
    for (int i = 0; i < 1000000; ++i) c.all_reduce(view_of(x, DType::F32), ReduceOp::Sum, Context::cpu());
  } catch (const Error& e) {
    return fmt::format("error after {:.2f} s: {}", std::chrono::duration<double>(Clock::now() - t0).count(), e.what());
  }
  return "no error";
}

TEST(DistSocket, KilledRankEndsTheOthers) {
  const int port = rlcu::test::free_port();
  const auto res = run_ranks(
      3, [&](int r) { return torchrun_vars(r, 3, port); },
      [](const DistEnv& env) {
        auto c = create_communicator(env, Context::cpu(), quick(30, 60));
        c->barrier(Context::cpu());
        if (env.rank == 2) raise(SIGKILL);
        return survive(*c);
      },
      30);
  EXPECT_EQ(res[2].signal, SIGKILL) << describe(res);
  for (int r : {0, 1}) {
    const Outcome& o = res[static_cast<size_t>(r)];
    ASSERT_EQ(o.exit_code, 0) << describe(res);
    EXPECT_CONTAINS(o.out, "error after");
    // Rank r sees rank 2's connection close, or that of the survivor that noticed first and closed its own.
    EXPECT_CONTAINS(o.out, "the connection to rank");
    EXPECT_CONTAINS(o.out, "ended (crashed, was killed or stopped on an error)");
    EXPECT_LT(o.seconds, 10.0) << describe(res);
  }
  EXPECT_CONTAINS(res[0].out + res[1].out, "the connection to rank 2 (127.0.0.1)");
}

TEST(DistSocket, HungRankTimesOut) {
  const int port = rlcu::test::free_port();
  const auto res = run_ranks(
      2, [&](int r) { return torchrun_vars(r, 2, port); },
      [](const DistEnv& env) {
        auto c = create_communicator(env, Context::cpu(), quick(30, 1.0));
        c->barrier(Context::cpu());
        if (env.rank == 1) std::this_thread::sleep_for(std::chrono::seconds(3));
        return survive(*c);
      },
      30);
  ASSERT_EQ(res[0].exit_code, 0) << describe(res);
  EXPECT_CONTAINS(res[0].out, "rank 0: all_reduce (reduce phase) #2 waited 1 s for rank(s) 1 (RLCU_DIST_TIMEOUT_S)");
  // The late rank then finds rank 0 gone.
  EXPECT_CONTAINS(res[1].out, "the connection to rank 0");
  EXPECT_LT(res[0].seconds, 3.0) << describe(res);
}

TEST(DistSocket, MismatchedCollectivesAreAnError) {
  const int port = rlcu::test::free_port();
  const auto res = run_ranks(
      2, [&](int r) { return torchrun_vars(r, 2, port); },
      [](const DistEnv& env) {
        auto c = create_communicator(env, Context::cpu(), quick(30, 10));
        std::vector<float> x(10, 1.f), y(20);
        if (env.rank == 0) c->all_gather(view_of(y, DType::F32), view_of(x, DType::F32), Context::cpu());
        else c->broadcast(view_of(x, DType::F32), 1, Context::cpu());  // the root's sends may all succeed...
        c->barrier(Context::cpu());  // ...but rank 0 has closed its connections by now
        return std::string("no error");
      },
      30);
  ASSERT_EQ(res[0].exit_code, 1) << describe(res);
  EXPECT_CONTAINS(res[0].out, "rank 1 sent broadcast #1 of 40 bytes: the ranks called different collectives");
  EXPECT_EQ(res[1].exit_code, 1) << describe(res);
}

// ---- the rendezvous links as liveness monitor -----------------------------------------------------------------

TEST(DistRendezvous, PeerMonitorNamesTheRankThatDied) {
  const int port = rlcu::test::free_port();
  // Rank 1 says goodbye, then rank 2 dies; rank 0 must name rank 2 (not 1), then close its links, which rank 3
  // must report as rank 0 ending.
  const auto res = run_ranks(
      4, [&](int r) { return torchrun_vars(r, 4, port); },
      [](const DistEnv& env) {
        RendezvousResult rv = rendezvous(env, "test", "", 20);
        std::vector<std::string> hosts;
        for (const RendezvousEntry& e : rv.ranks) hosts.push_back(e.host);
        PeerMonitor m(env.rank, std::move(rv.links), hosts);
        if (env.rank == 1) {
          m.goodbye();
          return std::string("bye");
        }
        if (env.rank == 2) {
          std::this_thread::sleep_for(std::chrono::milliseconds(300));
          _exit(0);
        }
        const auto t0 = Clock::now();
        while (Clock::now() - t0 < std::chrono::seconds(10)) {
          if (auto dead = m.poll(100)) {
            if (env.rank == 0) m.close_all();
            return *dead;
          }
        }
        return std::string("nothing");
      },
      30);
  EXPECT_CONTAINS(res[0].out, "rank 2 (127.0.0.1) ended without closing its communicator");
  EXPECT_CONTAINS(res[3].out, "rank 0 (127.0.0.1) ended without closing its communicator");
  for (const Outcome& o : res) EXPECT_LT(o.seconds, 5.0) << describe(res);
}

// ---- rlcu_dist_rank started with each launcher's variables ---------------------------------------------------

std::vector<Outcome> launch(int n, const std::function<Vars(int)>& env_of, const std::string& scenario) {
  return rlcu::test::run_children(
      n, [&](int i) { rlcu::test::exec_with_env(RLCU_DIST_RANK_BIN, {"cpu", scenario}, env_of(i)); }, 120);
}

TEST(DistLaunch, TorchrunSrunAndMpirunVariables) {
  const int port = rlcu::test::free_port();
  auto res = launch(3, [&](int r) {
    Vars v = torchrun_vars(r, 3, port);
    v["LOCAL_RANK"] = std::to_string(r);
    v["LOCAL_WORLD_SIZE"] = "3";
    return v;
  }, "collectives");
  expect_all_ok_and_equal(res);
  EXPECT_EQ(res[0].out.rfind("ok ", 0), 0u) << describe(res);
  const int port2 = rlcu::test::free_port();
  res = launch(2, [&](int r) {
    return Vars{{"SLURM_PROCID", std::to_string(r)}, {"SLURM_NTASKS", "2"}, {"SLURM_LOCALID", std::to_string(r)},
                {"SLURM_STEP_ID", "0"}, {"SLURM_JOB_NODELIST", "127.0.0.1"}, {"SLURM_TASKS_PER_NODE", "2"},
                {"MASTER_PORT", std::to_string(port2)}};
  }, "collectives");
  expect_all_ok_and_equal(res);
  const int port3 = rlcu::test::free_port();
  res = launch(2, [&](int r) {
    return Vars{{"OMPI_COMM_WORLD_RANK", std::to_string(r)}, {"OMPI_COMM_WORLD_SIZE", "2"},
                {"OMPI_COMM_WORLD_LOCAL_RANK", std::to_string(r)}, {"OMPI_COMM_WORLD_LOCAL_SIZE", "2"},
                {"MASTER_PORT", std::to_string(port3)}};
  }, "collectives");
  expect_all_ok_and_equal(res);
}

TEST(DistLaunch, DeadRankThroughTheEnvironment) {
  const int port = rlcu::test::free_port();
  const auto res = launch(3, [&](int r) {
    Vars v = torchrun_vars(r, 3, port);
    v["RLCU_DIST_TIMEOUT_S"] = "60";
    return v;
  }, "die");
  for (int r : {0, 1}) {
    EXPECT_EQ(res[static_cast<size_t>(r)].exit_code, 0) << describe(res);
    EXPECT_CONTAINS(res[static_cast<size_t>(r)].out, "error after");
    EXPECT_LT(res[static_cast<size_t>(r)].seconds, 10.0) << describe(res);
  }
}

}  // namespace
