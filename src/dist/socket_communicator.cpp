// The socket communicator: collectives on CPU tensors over TCP between every pair of ranks (a full mesh). For tests
// and CPU smoke runs, not a production transport.
//
// Every collective is built from one primitive, exchange(): a set of (peer, bytes to send, bytes to receive)
// transfers multiplexed with poll() until all are done, so no ordering of sends and receives can deadlock and every
// wait is bounded by the collective timeout. Each message carries a header (op, sequence number, byte count) that
// the receiver checks, so ranks that call different collectives fail with an error instead of reading garbage.
//
//   all_reduce(x):  x is cut into W chunks of ceil(n/W) elements (the last ones shorter or empty). Rank r receives
//                   chunk r of every rank, reduces the W contributions in rank order (x_0 op x_1 op ... op x_{W-1}),
//                   then every rank receives every reduced chunk from its owner: each value is computed once, by one
//                   rank, in a fixed order, so it is bitwise identical on every rank and independent of timing.
//   reduce_scatter: the first half of all_reduce on W slices of n elements.
//   all_gather:     every rank sends its n elements to every other.
//   broadcast:      the root sends to every other rank.
//   barrier:        an empty message from every rank to every other.
// Sums of BF16 accumulate in F32 and round once; integer sums wrap (as NCCL's do); max/min propagate NaN.
#include <poll.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <type_traits>

#include "backends.h"
#include "rendezvous.h"
#include "rlcu/error.h"
#include "socket.h"

namespace rlcu::dist {

namespace {

constexpr uint32_t kMeshMagic = 0x4853'454du;  // "MESH"

enum class Op : uint32_t { AllReduceScatter = 1, AllReduceGather, ReduceScatter, AllGather, Broadcast, Barrier };

const char* op_name(uint32_t op) {
  switch (static_cast<Op>(op)) {
    case Op::AllReduceScatter: return "all_reduce (reduce phase)";
    case Op::AllReduceGather: return "all_reduce (gather phase)";
    case Op::ReduceScatter: return "reduce_scatter";
    case Op::AllGather: return "all_gather";
    case Op::Broadcast: return "broadcast";
    case Op::Barrier: return "barrier";
  }
  return "an unknown collective";
}

struct Header {
  uint32_t magic;
  uint32_t op;
  uint64_t seq;
  uint64_t bytes;
};
static_assert(sizeof(Header) == 24, "wire header");

// One peer's part of an exchange: header + payload each way.
struct Transfer {
  int peer = -1;
  const void* send = nullptr;
  size_t send_bytes = 0;
  bool sends = false;
  void* recv = nullptr;
  size_t recv_bytes = 0;
  bool receives = false;
  // progress
  Header out_hdr{}, in_hdr{};
  size_t sent = 0, got = 0;
  bool send_done() const { return !sends || sent == sizeof(Header) + send_bytes; }
  bool recv_done() const { return !receives || got == sizeof(Header) + recv_bytes; }
};

// Reduces `inputs` (one per rank, in rank order) elementwise into `out` (which may be one of the inputs).
template <class T, class Acc>
void reduce_typed(void* out, const std::vector<const void*>& inputs, int64_t n, ReduceOp op) {
  auto load = [](const void* p, int64_t i) -> Acc {
    if constexpr (std::is_same_v<T, uint16_t>) return bf16_to_f32(static_cast<const uint16_t*>(p)[i]);
    else return static_cast<Acc>(static_cast<const T*>(p)[i]);
  };
  auto combine = [op](Acc a, Acc b) -> Acc {
    if constexpr (std::is_floating_point_v<Acc>) {
      if (op == ReduceOp::Sum) return a + b;
      if (std::isnan(a)) return a;
      if (std::isnan(b)) return b;
      return op == ReduceOp::Max ? (b > a ? b : a) : (b < a ? b : a);
    } else {
      using U = std::make_unsigned_t<Acc>;  // wrapping sums without signed overflow
      if (op == ReduceOp::Sum) return static_cast<Acc>(static_cast<U>(a) + static_cast<U>(b));
      return op == ReduceOp::Max ? std::max(a, b) : std::min(a, b);
    }
  };
  for (int64_t i = 0; i < n; ++i) {
    Acc acc = load(inputs[0], i);
    for (size_t r = 1; r < inputs.size(); ++r) acc = combine(acc, load(inputs[r], i));
    if constexpr (std::is_same_v<T, uint16_t>) static_cast<uint16_t*>(out)[i] = f32_to_bf16(acc);
    else static_cast<T*>(out)[i] = static_cast<T>(acc);
  }
}

bool socket_reducible(DType t) {
  return t == DType::F32 || t == DType::F64 || t == DType::BF16 || t == DType::I32 || t == DType::I64;
}

void reduce_in_rank_order(void* out, const std::vector<const void*>& inputs, int64_t n, DType t, ReduceOp op) {
  switch (t) {
    case DType::F32: reduce_typed<float, float>(out, inputs, n, op); return;
    case DType::F64: reduce_typed<double, double>(out, inputs, n, op); return;
    case DType::BF16: reduce_typed<uint16_t, float>(out, inputs, n, op); return;
    case DType::I32: reduce_typed<int32_t, int32_t>(out, inputs, n, op); return;
    case DType::I64: reduce_typed<int64_t, int64_t>(out, inputs, n, op); return;
    default: RLCU_CHECK(false, "socket communicator: cannot reduce {}", dtype_name(t));
  }
}

class SocketCommunicator final : public Communicator {
 public:
  SocketCommunicator(const DistEnv& env, const DistOptions& opt);
  Backend backend() const override { return Backend::Socket; }
  void all_reduce(const Tensor& x, ReduceOp op, Context& ctx) override;
  void reduce_scatter(const Tensor& out, const Tensor& in, ReduceOp op, Context& ctx) override;
  void all_gather(const Tensor& out, const Tensor& in, Context& ctx) override;
  void broadcast(const Tensor& x, int root, Context& ctx) override;
  void barrier(Context& ctx) override;
  void check() const override {
    if (!failure_.empty()) throw Error(failure_ + " (the communicator is unusable after this error)");
  }

 private:
  void build_mesh(Socket listener, const RendezvousResult& rv, Deadline deadline);
  void exchange(std::vector<Transfer>& xs, Op op);
  void step(Transfer& t, short revents, Op op);
  [[noreturn]] void fail(const std::string& msg);
  void* staging(size_t bytes);

  DistOptions opt_;
  std::vector<Socket> peers_;       // by rank; own entry unused
  std::vector<std::string> hosts_;  // by rank
  uint64_t seq_ = 0;
  std::string failure_;
  std::vector<unsigned char> staging_;
};

SocketCommunicator::SocketCommunicator(const DistEnv& env, const DistOptions& opt)
    : Communicator(env.rank, env.world_size, Device::CPU), opt_(opt) {
  Socket listener = listen_tcp(0, fmt::format("rank {}: socket communicator", env.rank));
  const std::string port = std::to_string(local_port(listener));
  const Deadline deadline = deadline_after(opt.rendezvous_timeout_s);
  RendezvousResult rv = rendezvous(env, "socket", port, opt.rendezvous_timeout_s);
  build_mesh(std::move(listener), rv, deadline);
}

// Rank r connects to every lower rank and accepts every higher one; each connection opens with (magic, rank).
void SocketCommunicator::build_mesh(Socket listener, const RendezvousResult& rv, Deadline deadline) {
  const int me = rank(), w = world_size();
  peers_.resize(static_cast<size_t>(w));
  for (const RendezvousEntry& e : rv.ranks) hosts_.push_back(e.host);
  std::string err;
  for (int p = 0; p < me; ++p) {
    const RendezvousEntry& e = rv.ranks[static_cast<size_t>(p)];
    const std::string who = fmt::format("rank {}: socket communicator, connection to rank {}", me, p);
    Socket s = connect_retry(e.host, std::stoi(e.blob), deadline, who);
    const uint32_t hello[2] = {kMeshMagic, static_cast<uint32_t>(me)};
    if (write_all(s.fd(), hello, sizeof hello, deadline, &err) != IoStatus::Ok)
      throw Error(fmt::format("{} ({}:{}): could not send its hello: {}", who, e.host, e.blob, err));
    peers_[static_cast<size_t>(p)] = std::move(s);
  }
  for (int n = me + 1; n < w; ++n) {
    std::string host;
    Socket s = accept_until(listener, deadline, &host);
    if (!s.valid())
      throw Error(fmt::format("rank {}: socket communicator: {} of the higher ranks did not connect in time", me,
                              w - n));
    uint32_t hello[2] = {0, 0};
    const IoStatus st = read_exact(s.fd(), hello, sizeof hello, deadline, &err);
    const int p = static_cast<int>(hello[1]);
    if (st != IoStatus::Ok || hello[0] != kMeshMagic || p <= me || p >= w || peers_[static_cast<size_t>(p)].valid())
      throw Error(fmt::format("rank {}: socket communicator: a bad hello from {} (rank {})", me, host, p));
    peers_[static_cast<size_t>(p)] = std::move(s);
  }
}

void SocketCommunicator::fail(const std::string& msg) {
  failure_ = msg;
  // Closing every connection makes the other ranks fail at once instead of waiting for their timeout.
  for (Socket& s : peers_) s.close();
  throw Error(msg);
}

void* SocketCommunicator::staging(size_t bytes) {
  if (staging_.size() < bytes) staging_.resize(bytes);
  return staging_.data();
}

// Moves what poll() allowed for one transfer: its header first, then its payload, in each direction.
void SocketCommunicator::step(Transfer& t, short revents, Op op) {
  IoStatus st = IoStatus::Ok;
  std::string err;
  const int fd = peers_[static_cast<size_t>(t.peer)].fd();
  auto closed = [&](const char* doing) {
    fail(fmt::format("rank {}: {} #{}: the connection to rank {} ({}) {} ({}): rank {} ended (crashed, was killed "
                     "or stopped on an error)",
                     rank(), op_name(static_cast<uint32_t>(op)), seq_, t.peer, hosts_[static_cast<size_t>(t.peer)],
                     doing, err, t.peer));
  };
  if (!t.send_done() && (revents & (POLLOUT | POLLERR | POLLHUP))) {
    for (;;) {
      const bool in_hdr = t.sent < sizeof(Header);
      const char* p = in_hdr ? reinterpret_cast<const char*>(&t.out_hdr) + t.sent
                             : static_cast<const char*>(t.send) + (t.sent - sizeof(Header));
      const size_t left = in_hdr ? sizeof(Header) - t.sent : t.send_bytes - (t.sent - sizeof(Header));
      const long n = send_some(fd, p, left, &st, &err);
      if (n < 0) closed("failed while sending");
      t.sent += static_cast<size_t>(n);
      if (n == 0 || t.send_done()) break;
    }
  }
  if (!t.recv_done() && (revents & (POLLIN | POLLERR | POLLHUP))) {
    for (;;) {
      const bool in_hdr = t.got < sizeof(Header);
      char* p = in_hdr ? reinterpret_cast<char*>(&t.in_hdr) + t.got
                       : static_cast<char*>(t.recv) + (t.got - sizeof(Header));
      const size_t left = in_hdr ? sizeof(Header) - t.got : t.recv_bytes - (t.got - sizeof(Header));
      const long n = recv_some(fd, p, left, &st, &err);
      if (n < 0) closed("closed");
      t.got += static_cast<size_t>(n);
      if (in_hdr && t.got == sizeof(Header)) {
        const Header& h = t.in_hdr;
        if (h.magic != kMeshMagic || h.op != static_cast<uint32_t>(op) || h.seq != seq_ || h.bytes != t.recv_bytes)
          fail(fmt::format("rank {}: {} #{} expected {} bytes from rank {} but rank {} sent {} #{} of {} bytes: the "
                           "ranks called different collectives, or the same one with different sizes",
                           rank(), op_name(static_cast<uint32_t>(op)), seq_, t.recv_bytes, t.peer, t.peer,
                           op_name(h.op), h.seq, h.bytes));
      }
      if (n == 0 || t.recv_done()) break;
    }
  }
}

void SocketCommunicator::exchange(std::vector<Transfer>& xs, Op op) {
  check();
  ++seq_;
  for (Transfer& t : xs) t.out_hdr = Header{kMeshMagic, static_cast<uint32_t>(op), seq_, t.send_bytes};
  const Deadline deadline = deadline_after(opt_.collective_timeout_s);
  std::vector<pollfd> fds;
  std::vector<Transfer*> live;
  for (;;) {
    fds.clear();
    live.clear();
    for (Transfer& t : xs) {
      short ev = 0;
      if (!t.send_done()) ev |= POLLOUT;
      if (!t.recv_done()) ev |= POLLIN;
      if (ev == 0) continue;
      fds.push_back(pollfd{peers_[static_cast<size_t>(t.peer)].fd(), ev, 0});
      live.push_back(&t);
    }
    if (fds.empty()) return;
    const int r = ::poll(fds.data(), fds.size(), ms_until(deadline, 1000));
    if (r == 0 && Clock::now() >= deadline) {
      std::string waiting;
      for (const Transfer* t : live) waiting += fmt::format("{}{}", waiting.empty() ? "" : ", ", t->peer);
      fail(fmt::format("rank {}: {} #{} waited {} for rank(s) {} (RLCU_DIST_TIMEOUT_S): a rank is hung or did not "
                       "call the same collective",
                       rank(), op_name(static_cast<uint32_t>(op)), seq_, seconds_text(opt_.collective_timeout_s),
                       waiting));
    }
    if (r < 0 && errno != EINTR) fail(fmt::format("rank {}: poll: {}", rank(), errno_text(errno)));
    for (size_t i = 0; r > 0 && i < fds.size(); ++i)
      if (fds[i].revents) step(*live[i], fds[i].revents, op);
  }
}

void SocketCommunicator::all_reduce(const Tensor& x, ReduceOp op, Context&) {
  check_all_reduce(*this, x, socket_reducible(x.dtype));
  check();
  const int w = world_size(), me = rank();
  if (w == 1) return;
  const int64_t n = x.numel(), chunk = (n + w - 1) / w;
  const size_t es = dtype_size(x.dtype);
  auto begin = [&](int r) { return std::min<int64_t>(n, r * chunk); };
  auto len = [&](int r) { return begin(r + 1) - begin(r); };
  char* base = static_cast<char*>(x.data);
  char* slots = static_cast<char*>(staging(static_cast<size_t>(w * chunk) * es));
  std::vector<Transfer> xs;
  for (int p = 0; p < w; ++p) {
    if (p == me) continue;
    Transfer t;
    t.peer = p;
    t.sends = t.receives = true;
    t.send = base + static_cast<size_t>(begin(p)) * es;
    t.send_bytes = static_cast<size_t>(len(p)) * es;
    t.recv = slots + static_cast<size_t>(p * chunk) * es;
    t.recv_bytes = static_cast<size_t>(len(me)) * es;
    xs.push_back(t);
  }
  exchange(xs, Op::AllReduceScatter);
  std::vector<const void*> inputs;
  char* mine = base + static_cast<size_t>(begin(me)) * es;
  for (int p = 0; p < w; ++p) inputs.push_back(p == me ? mine : slots + static_cast<size_t>(p * chunk) * es);
  reduce_in_rank_order(mine, inputs, len(me), x.dtype, op);
  xs.clear();
  for (int p = 0; p < w; ++p) {
    if (p == me) continue;
    Transfer t;
    t.peer = p;
    t.sends = t.receives = true;
    t.send = mine;
    t.send_bytes = static_cast<size_t>(len(me)) * es;
    t.recv = base + static_cast<size_t>(begin(p)) * es;
    t.recv_bytes = static_cast<size_t>(len(p)) * es;
    xs.push_back(t);
  }
  exchange(xs, Op::AllReduceGather);
}

void SocketCommunicator::reduce_scatter(const Tensor& out, const Tensor& in, ReduceOp op, Context&) {
  check_reduce_scatter(*this, out, in, socket_reducible(in.dtype));
  check();
  const int w = world_size(), me = rank();
  const int64_t n = out.numel();
  const size_t bytes = static_cast<size_t>(n) * dtype_size(in.dtype);
  char* slots = static_cast<char*>(staging(bytes * static_cast<size_t>(w)));
  std::vector<Transfer> xs;
  for (int p = 0; p < w; ++p) {
    if (p == me) continue;
    Transfer t;
    t.peer = p;
    t.sends = t.receives = true;
    t.send = rank_slice(in, p, n).data;
    t.send_bytes = bytes;
    t.recv = slots + bytes * static_cast<size_t>(p);
    t.recv_bytes = bytes;
    xs.push_back(t);
  }
  exchange(xs, Op::ReduceScatter);
  std::vector<const void*> inputs;
  for (int p = 0; p < w; ++p) inputs.push_back(p == me ? rank_slice(in, me, n).data : slots + bytes * static_cast<size_t>(p));
  reduce_in_rank_order(out.data, inputs, n, in.dtype, op);
}

void SocketCommunicator::all_gather(const Tensor& out, const Tensor& in, Context&) {
  check_all_gather(*this, out, in);
  check();
  const int w = world_size(), me = rank();
  const int64_t n = in.numel();
  const Tensor mine = rank_slice(out, me, n);
  if (mine.data != in.data && n > 0) std::memcpy(mine.data, in.data, in.nbytes());
  std::vector<Transfer> xs;
  for (int p = 0; p < w; ++p) {
    if (p == me) continue;
    Transfer t;
    t.peer = p;
    t.sends = t.receives = true;
    t.send = mine.data;
    t.send_bytes = in.nbytes();
    t.recv = rank_slice(out, p, n).data;
    t.recv_bytes = in.nbytes();
    xs.push_back(t);
  }
  exchange(xs, Op::AllGather);
}

void SocketCommunicator::broadcast(const Tensor& x, int root, Context&) {
  check_broadcast(*this, x, root);
  check();
  std::vector<Transfer> xs;
  for (int p = 0; p < world_size(); ++p) {
    if (p == rank() || (rank() != root && p != root)) continue;
    Transfer t;
    t.peer = p;
    if (rank() == root) {
      t.sends = true;
      t.send = x.data;
      t.send_bytes = x.nbytes();
    } else {
      t.receives = true;
      t.recv = x.data;
      t.recv_bytes = x.nbytes();
    }
    xs.push_back(t);
  }
  exchange(xs, Op::Broadcast);
}

void SocketCommunicator::barrier(Context&) {
  check();
  std::vector<Transfer> xs;
  for (int p = 0; p < world_size(); ++p) {
    if (p == rank()) continue;
    Transfer t;
    t.peer = p;
    t.sends = t.receives = true;
    xs.push_back(t);
  }
  exchange(xs, Op::Barrier);
}

}  // namespace

std::unique_ptr<Communicator> make_socket_communicator(const DistEnv& env, const DistOptions& opt) {
  return std::make_unique<SocketCommunicator>(env, opt);
}

}  // namespace rlcu::dist
