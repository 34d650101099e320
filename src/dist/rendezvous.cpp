// Rendezvous at MASTER_ADDR:MASTER_PORT and the PeerMonitor over its links (protocol in rendezvous.h).
#include "rendezvous.h"

#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstring>

#include <spdlog/spdlog.h>

#include "rlcu/error.h"

namespace rlcu::dist {

namespace {

constexpr uint32_t kMagic = 0x5543'4c52u;  // "RLCU" in memory order
constexpr uint32_t kVersion = 1;
constexpr uint32_t kMaxFrame = 64u << 20;
constexpr double kHelloWaitS = 5.0;  // a connection that says nothing valid within this is not one of ours
constexpr char kGoodbye = 'B';
constexpr auto kReplyGrace = std::chrono::seconds(10);

void put_u32(std::string& s, uint32_t v) {
  char b[4];
  for (int i = 0; i < 4; ++i) b[i] = static_cast<char>((v >> (8 * i)) & 0xffu);
  s.append(b, 4);
}
void put_str(std::string& s, const std::string& v) {
  put_u32(s, static_cast<uint32_t>(v.size()));
  s += v;
}

// Bounds-checked reading of a frame body; any overrun makes ok() false.
class Reader {
 public:
  explicit Reader(const std::string& s) : s_(s) {}
  uint32_t u32() {
    if (pos_ + 4 > s_.size()) return fail();
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i) v |= static_cast<uint32_t>(static_cast<unsigned char>(s_[pos_ + i])) << (8 * i);
    pos_ += 4;
    return v;
  }
  std::string str() {
    const uint32_t n = u32();
    if (!ok_ || pos_ + n > s_.size()) {
      fail();
      return {};
    }
    std::string v = s_.substr(pos_, n);
    pos_ += n;
    return v;
  }
  bool ok() const { return ok_ && pos_ == s_.size(); }

 private:
  uint32_t fail() {
    ok_ = false;
    return 0;
  }
  const std::string& s_;
  size_t pos_ = 0;
  bool ok_ = true;
};

IoStatus write_frame(int fd, const std::string& body, Deadline d, std::string* err) {
  std::string f;
  put_u32(f, kMagic);
  put_u32(f, static_cast<uint32_t>(body.size()));
  f += body;
  return write_all(fd, f.data(), f.size(), d, err);
}

// A frame's body; Failed with *err = "not an rlcu peer" when the magic or length is wrong.
IoStatus read_frame(int fd, std::string* body, Deadline d, std::string* err) {
  char head[8];
  IoStatus st = read_exact(fd, head, 8, d, err);
  if (st != IoStatus::Ok) return st;
  std::string h(head, 8);
  Reader r(h);
  const uint32_t magic = r.u32(), len = r.u32();
  if (magic != kMagic || len > kMaxFrame) {
    *err = "not an rlcu peer (bad magic or length)";
    return IoStatus::Failed;
  }
  body->resize(len);
  return read_exact(fd, body->data(), len, d, err);
}

struct Hello {
  uint32_t version = 0;
  int rank = -1, world = 0;
  std::string tag, blob;
};

bool parse_hello(const std::string& body, Hello* h) {
  Reader r(body);
  h->version = r.u32();
  h->rank = static_cast<int>(r.u32());
  h->world = static_cast<int>(r.u32());
  h->tag = r.str();
  h->blob = r.str();
  return r.ok();
}

std::string missing_ranks(const std::vector<bool>& have) {
  std::string out;
  int n = 0;
  for (size_t r = 0; r < have.size(); ++r) {
    if (have[r]) continue;
    if (++n <= 16) out += fmt::format("{}{}", out.empty() ? "" : ", ", r);
  }
  if (n > 16) out += fmt::format(" and {} more", n - 16);
  return fmt::format("rank{} {}", n == 1 ? "" : "s", out);
}

// Rank 0's side: gather every hello, then send everyone the table (or everyone the error).
RendezvousResult serve(const DistEnv& env, const std::string& tag, const std::string& blob, double timeout_s) {
  const std::string where = fmt::format("{}:{}", env.master_addr, env.master_port);
  Socket listener = listen_tcp(env.master_port, fmt::format("rank 0: rendezvous at MASTER_PORT={}", env.master_port));
  const Deadline deadline = deadline_after(timeout_s);
  RendezvousResult res;
  res.ranks.resize(static_cast<size_t>(env.world_size));
  res.links.resize(static_cast<size_t>(env.world_size));
  res.ranks[0] = RendezvousEntry{env.master_addr, blob};
  std::vector<bool> have(static_cast<size_t>(env.world_size), false);
  have[0] = true;
  int missing = env.world_size - 1;
  std::string err;

  // Every connected rank (and the offending connection) learns why before rank 0 throws.
  auto fail = [&](Socket* extra, const std::string& msg) {
    std::string body;
    put_u32(body, 1);
    put_str(body, msg);
    const Deadline d = deadline_after(2.0);
    if (extra) (void)write_frame(extra->fd(), body, d, &err);
    for (Socket& s : res.links)
      if (s.valid()) (void)write_frame(s.fd(), body, d, &err);
    return Error(msg);
  };

  while (missing > 0) {
    std::string peer;
    Socket c = accept_until(listener, deadline, &peer);
    if (!c.valid())
      throw fail(nullptr, fmt::format("rank 0: rendezvous at {}: {} of {} did not connect within {} "
                                      "(RLCU_DIST_RENDEZVOUS_TIMEOUT_S)",
                                      where, missing_ranks(have), env.world_size, seconds_text(timeout_s)));
    std::string body;
    Hello h;
    const Deadline hello_by = std::min(deadline, deadline_after(kHelloWaitS));
    if (read_frame(c.fd(), &body, hello_by, &err) != IoStatus::Ok || !parse_hello(body, &h)) {
      spdlog::warn("rank 0: rendezvous at {}: dropped a connection from {} that sent no valid hello", where, peer);
      continue;
    }
    if (h.version != kVersion)
      throw fail(&c, fmt::format("rank 0: rendezvous at {}: the process at {} speaks protocol version {}, rank 0 "
                                 "version {} (mixed rlcu builds?)",
                                 where, peer, h.version, kVersion));
    if (h.world != env.world_size)
      throw fail(&c, fmt::format("rank 0: rendezvous at {}: rank {} at {} has world size {} but rank 0 has {} (the "
                                 "ranks were started with different WORLD_SIZE / task counts)",
                                 where, h.rank, peer, h.world, env.world_size));
    if (h.tag != tag)
      throw fail(&c, fmt::format("rank 0: rendezvous at {}: rank {} at {} uses the {} backend but rank 0 uses {} "
                                 "(the ranks must use the same device kind)",
                                 where, h.rank, peer, h.tag, tag));
    if (h.rank <= 0 || h.rank >= env.world_size)
      throw fail(&c, fmt::format("rank 0: rendezvous at {}: the process at {} says rank {} (expected 1..{})", where,
                                 peer, h.rank, env.world_size - 1));
    const auto r = static_cast<size_t>(h.rank);
    if (have[r])
      throw fail(&c, fmt::format("rank 0: rendezvous at {}: rank {} connected twice (from {} and from {}): two "
                                 "processes have the same rank",
                                 where, h.rank, res.ranks[r].host, peer));
    have[r] = true;
    --missing;
    res.ranks[r] = RendezvousEntry{peer, h.blob};
    res.links[r] = std::move(c);
  }

  std::string table;
  put_u32(table, 0);
  put_u32(table, static_cast<uint32_t>(env.world_size));
  for (const RendezvousEntry& e : res.ranks) {
    put_str(table, e.host);
    put_str(table, e.blob);
  }
  for (int r = 1; r < env.world_size; ++r) {
    const IoStatus st = write_frame(res.links[static_cast<size_t>(r)].fd(), table, deadline, &err);
    if (st != IoStatus::Ok)
      throw fail(nullptr, fmt::format("rank 0: rendezvous at {}: could not send the table to rank {} at {}: {}", where,
                                      r, res.ranks[static_cast<size_t>(r)].host,
                                      st == IoStatus::Timeout ? "timed out" : err));
  }
  return res;
}

// Rank k's side: connect, say hello, wait for the table.
RendezvousResult join(const DistEnv& env, const std::string& tag, const std::string& blob, double timeout_s) {
  const std::string where = fmt::format("{}:{}", env.master_addr, env.master_port);
  const Deadline deadline = deadline_after(timeout_s);
  Socket s = connect_retry(env.master_addr, env.master_port, deadline,
                           fmt::format("rank {}: rendezvous with rank 0 within {}", env.rank, seconds_text(timeout_s)));
  std::string body, err;
  put_u32(body, kVersion);
  put_u32(body, static_cast<uint32_t>(env.rank));
  put_u32(body, static_cast<uint32_t>(env.world_size));
  put_str(body, tag);
  put_str(body, blob);
  IoStatus st = write_frame(s.fd(), body, deadline, &err);
  std::string reply;
  // Rank 0 answers by its own deadline, with the table or with what went wrong (which ranks did not come): wait a
  // little longer than that so that its account, not a timeout here, is what this rank reports.
  if (st == IoStatus::Ok) st = read_frame(s.fd(), &reply, deadline + kReplyGrace, &err);
  if (st == IoStatus::Timeout)
    throw Error(fmt::format("rank {}: connected to rank 0 at {} but had no answer within {}: rank 0 answers once all "
                            "{} ranks have connected (RLCU_DIST_RENDEZVOUS_TIMEOUT_S)",
                            env.rank, where,
                            seconds_text(timeout_s + std::chrono::duration<double>(kReplyGrace).count()),
                            env.world_size));
  if (st == IoStatus::Closed)
    throw Error(fmt::format("rank {}: rank 0 at {} closed the connection during the rendezvous (it ended, or "
                            "MASTER_PORT belongs to another program)",
                            env.rank, where));
  if (st != IoStatus::Ok) throw Error(fmt::format("rank {}: rendezvous with rank 0 at {}: {}", env.rank, where, err));
  Reader r(reply);
  if (r.u32() != 0) {
    const std::string msg = r.str();
    throw Error(fmt::format("rank {}: the rendezvous failed on rank 0: {}", env.rank, msg));
  }
  RendezvousResult res;
  const uint32_t n = r.u32();
  for (uint32_t i = 0; i < n && i <= static_cast<uint32_t>(env.world_size); ++i) {
    RendezvousEntry e;
    e.host = r.str();
    e.blob = r.str();
    res.ranks.push_back(std::move(e));
  }
  if (!r.ok() || n != static_cast<uint32_t>(env.world_size))
    throw Error(fmt::format("rank {}: rendezvous with rank 0 at {}: malformed table", env.rank, where));
  res.links.push_back(std::move(s));
  return res;
}

}  // namespace

RendezvousResult rendezvous(const DistEnv& env, const std::string& tag, const std::string& blob, double timeout_s) {
  if (!env.distributed()) {
    RendezvousResult res;
    res.ranks.push_back(RendezvousEntry{env.master_addr, blob});
    res.links.resize(1);
    return res;
  }
  return env.rank == 0 ? serve(env, tag, blob, timeout_s) : join(env, tag, blob, timeout_s);
}

PeerMonitor::PeerMonitor(int rank, std::vector<Socket> links, std::vector<std::string> hosts)
    : rank_(rank), links_(std::move(links)), hosts_(std::move(hosts)) {
  hosts_.resize(links_.size());
}

bool PeerMonitor::watching() const {
  return std::any_of(links_.begin(), links_.end(), [](const Socket& s) { return s.valid(); });
}

std::optional<std::string> PeerMonitor::poll(int timeout_ms) {
  std::vector<pollfd> fds;
  std::vector<size_t> which;
  for (size_t i = 0; i < links_.size(); ++i) {
    if (!links_[i].valid()) continue;
    fds.push_back(pollfd{links_[i].fd(), POLLIN, 0});
    which.push_back(i);
  }
  if (fds.empty()) return std::nullopt;
  if (::poll(fds.data(), fds.size(), timeout_ms) <= 0) return std::nullopt;
  for (size_t k = 0; k < fds.size(); ++k) {
    if (fds[k].revents == 0) continue;
    const size_t peer = rank_ == 0 ? which[k] : 0;
    char c = 0;
    IoStatus st = IoStatus::Ok;
    std::string err;
    const long n = recv_some(fds[k].fd, &c, 1, &st, &err);
    if (n == 0) continue;  // spurious wake-up
    if (n == 1 && c == kGoodbye) {
      links_[which[k]].close();
      continue;
    }
    links_[which[k]].close();
    const std::string& host = hosts_[which[k]];
    if (n == 1) return fmt::format("rank {} ({}) sent unexpected data on its rendezvous link", peer, host);
    if (rank_ == 0)
      return fmt::format("rank {} ({}) ended without closing its communicator: the process crashed, was killed or "
                         "stopped on an error",
                         peer, host);
    return fmt::format("rank 0 ({}) ended without closing its communicator: it crashed, was killed, or stopped on an "
                       "error (possibly another rank's failure)",
                       host);
  }
  return std::nullopt;
}

void PeerMonitor::goodbye() {
  for (Socket& s : links_) {
    if (!s.valid()) continue;
    (void)::send(s.fd(), &kGoodbye, 1, MSG_NOSIGNAL);
    s.close();
  }
}

void PeerMonitor::close_all() {
  for (Socket& s : links_) s.close();
}

}  // namespace rlcu::dist
