// TCP helpers of the dist module: an owning socket, listen/accept/connect with deadlines, and exact reads and
// writes that wait at most until a deadline. Every socket is non-blocking and every wait is a poll() bounded by a
// deadline, so nothing here can block forever. Writes use MSG_NOSIGNAL: a peer that has gone is an EPIPE status,
// never a SIGPIPE. IPv4 only.
#pragma once

#include <chrono>
#include <cstddef>
#include <string>

namespace rlcu::dist {

using Clock = std::chrono::steady_clock;
using Deadline = Clock::time_point;

Deadline deadline_after(double seconds);
// Milliseconds until `d`, at least 0 and at most cap_ms (for poll()).
int ms_until(Deadline d, int cap_ms);
std::string errno_text(int err);
// "12 s", "1.5 s": a timeout as error messages print it.
std::string seconds_text(double s);

class Socket {
 public:
  Socket() = default;
  explicit Socket(int fd) : fd_(fd) {}
  ~Socket() { close(); }
  Socket(Socket&& o) noexcept : fd_(o.fd_) { o.fd_ = -1; }
  Socket& operator=(Socket&& o) noexcept;
  Socket(const Socket&) = delete;
  Socket& operator=(const Socket&) = delete;

  int fd() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  void close();

 private:
  int fd_ = -1;
};

// A listening socket on every IPv4 interface at `port` (0: the system picks a free port). Errors name `what`.
Socket listen_tcp(int port, const std::string& what);
int local_port(const Socket& s);

// One connection from `listener`, or an invalid Socket when the deadline passes first. *peer_host gets the peer's
// IPv4 address.
Socket accept_until(const Socket& listener, Deadline d, std::string* peer_host);

// Connects to host:port, retrying while the address refuses or is unreachable (the peer is not listening yet) until
// the deadline. Errors name `who` (e.g. "rank 3: rendezvous with rank 0") and the address.
Socket connect_retry(const std::string& host, int port, Deadline d, const std::string& who);

enum class IoStatus : uint8_t { Ok, Timeout, Closed, Failed };

// Exactly n bytes, waiting at most until `d`. Closed: the peer closed before n bytes (EOF) or reset the connection;
// Failed: another socket error (text in *err).
IoStatus read_exact(int fd, void* buf, size_t n, Deadline d, std::string* err);
IoStatus write_all(int fd, const void* buf, size_t n, Deadline d, std::string* err);

// One non-blocking recv()/send() step for multiplexed transfers: bytes moved (0 when it would block), or -1 with
// *status set to Closed / Failed.
long recv_some(int fd, void* buf, size_t n, IoStatus* status, std::string* err);
long send_some(int fd, const void* buf, size_t n, IoStatus* status, std::string* err);

}  // namespace rlcu::dist
