// TCP helpers: non-blocking IPv4 sockets, deadline-bounded connect/accept/read/write (see socket.h).
#include "socket.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <thread>

#include "rlcu/error.h"

namespace rlcu::dist {

Deadline deadline_after(double seconds) {
  return Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
}

int ms_until(Deadline d, int cap_ms) {
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(d - Clock::now()).count();
  if (left <= 0) return 0;
  return static_cast<int>(std::min<long long>(left, cap_ms));
}

std::string errno_text(int err) {
  char buf[256];
  // GNU strerror_r returns the message (possibly not in buf).
  return std::string(strerror_r(err, buf, sizeof buf));
}

std::string seconds_text(double s) { return fmt::format("{:g} s", s); }

Socket& Socket::operator=(Socket&& o) noexcept {
  if (this != &o) {
    close();
    fd_ = o.fd_;
    o.fd_ = -1;
  }
  return *this;
}

void Socket::close() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

namespace {

void set_socket_flags(int fd) {
  const int fl = fcntl(fd, F_GETFL, 0);
  if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) throw Error("socket: cannot make it non-blocking: " + errno_text(errno));
  (void)fcntl(fd, F_SETFD, FD_CLOEXEC);
}

void set_nodelay(int fd) {
  const int one = 1;
  (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

std::string ipv4_text(const sockaddr_in& a) {
  char buf[INET_ADDRSTRLEN] = {0};
  inet_ntop(AF_INET, &a.sin_addr, buf, sizeof buf);
  return buf;
}

// poll() one fd for `events` until the deadline; returns false on timeout. EINTR restarts.
bool wait_fd(int fd, short events, Deadline d) {
  for (;;) {
    pollfd p{fd, events, 0};
    const int ms = ms_until(d, 1000);
    const int r = ::poll(&p, 1, ms);
    if (r > 0) return true;
    if (r < 0 && errno != EINTR) return true;  // let the following recv/send report the error
    if (r == 0 && Clock::now() >= d) return false;
  }
}

// A connect() error that means "not there yet": keep retrying until the deadline.
bool retryable_connect_error(int e) {
  return e == ECONNREFUSED || e == ETIMEDOUT || e == EHOSTUNREACH || e == ENETUNREACH || e == ECONNRESET ||
         e == EAGAIN || e == ECONNABORTED;
}

// One connection attempt; returns the socket or sets *err (errno in *eno) and returns an invalid Socket.
Socket try_connect(const sockaddr_in& addr, Deadline d, int* eno) {
  Socket s(::socket(AF_INET, SOCK_STREAM, 0));
  if (!s.valid()) {
    *eno = errno;
    return Socket();
  }
  set_socket_flags(s.fd());
  if (::connect(s.fd(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0) return s;
  if (errno != EINPROGRESS) {
    *eno = errno;
    return Socket();
  }
  if (!wait_fd(s.fd(), POLLOUT, d)) {
    *eno = ETIMEDOUT;
    return Socket();
  }
  int soerr = 0;
  socklen_t len = sizeof soerr;
  if (getsockopt(s.fd(), SOL_SOCKET, SO_ERROR, &soerr, &len) < 0) soerr = errno;
  if (soerr != 0) {
    *eno = soerr;
    return Socket();
  }
  return s;
}

}  // namespace

Socket listen_tcp(int port, const std::string& what) {
  Socket s(::socket(AF_INET, SOCK_STREAM, 0));
  if (!s.valid()) throw Error(fmt::format("{}: cannot create a socket: {}", what, errno_text(errno)));
  const int one = 1;
  // A restarted job must not wait for the previous run's TIME_WAIT connections on the same port.
  (void)setsockopt(s.fd(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_ANY);
  a.sin_port = htons(static_cast<uint16_t>(port));
  if (::bind(s.fd(), reinterpret_cast<sockaddr*>(&a), sizeof a) < 0) {
    const int e = errno;
    throw Error(fmt::format("{}: cannot listen on port {}: {}{}", what, port, errno_text(e),
                            e == EADDRINUSE ? " (another process uses it: pick another MASTER_PORT)" : ""));
  }
  if (::listen(s.fd(), 1024) < 0) throw Error(fmt::format("{}: listen on port {}: {}", what, port, errno_text(errno)));
  set_socket_flags(s.fd());
  return s;
}

int local_port(const Socket& s) {
  sockaddr_in a{};
  socklen_t len = sizeof a;
  RLCU_CHECK(getsockname(s.fd(), reinterpret_cast<sockaddr*>(&a), &len) == 0, "getsockname: {}", errno_text(errno));
  return ntohs(a.sin_port);
}

Socket accept_until(const Socket& listener, Deadline d, std::string* peer_host) {
  for (;;) {
    if (!wait_fd(listener.fd(), POLLIN, d)) return Socket();
    sockaddr_in a{};
    socklen_t len = sizeof a;
    const int fd = ::accept(listener.fd(), reinterpret_cast<sockaddr*>(&a), &len);
    if (fd >= 0) {
      Socket s(fd);
      set_socket_flags(fd);
      set_nodelay(fd);
      if (peer_host) *peer_host = ipv4_text(a);
      return s;
    }
    if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR && errno != ECONNABORTED)
      throw Error(fmt::format("accept on port {}: {}", local_port(listener), errno_text(errno)));
  }
}

Socket connect_retry(const std::string& host, int port, Deadline d, const std::string& who) {
  std::string last = "no attempt";
  auto backoff = std::chrono::milliseconds(20);
  for (;;) {
    addrinfo hints{};
    hints.ai_family = AF_INET;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* res = nullptr;
    const std::string port_s = std::to_string(port);
    const int gai = getaddrinfo(host.c_str(), port_s.c_str(), &hints, &res);
    if (gai == 0) {
      for (addrinfo* p = res; p; p = p->ai_next) {
        int eno = 0;
        Socket s = try_connect(*reinterpret_cast<const sockaddr_in*>(p->ai_addr), d, &eno);
        if (s.valid()) {
          freeaddrinfo(res);
          set_nodelay(s.fd());
          return s;
        }
        last = errno_text(eno);
        if (!retryable_connect_error(eno)) {
          freeaddrinfo(res);
          throw Error(fmt::format("{}: cannot connect to {}:{}: {}", who, host, port, last));
        }
      }
      freeaddrinfo(res);
    } else if (gai == EAI_AGAIN) {
      last = gai_strerror(gai);  // the resolver may come up late on a fresh node: retry
    } else {
      throw Error(fmt::format("{}: cannot resolve host '{}': {}", who, host, gai_strerror(gai)));
    }
    const auto now = Clock::now();
    if (now >= d)
      throw Error(fmt::format("{}: could not connect to {}:{} before the deadline (last error: {})", who, host, port,
                              last));
    std::this_thread::sleep_for(std::min<Clock::duration>(backoff, d - now));
    backoff = std::min(backoff * 2, std::chrono::milliseconds(500));
  }
}

long recv_some(int fd, void* buf, size_t n, IoStatus* status, std::string* err) {
  for (;;) {
    const ssize_t r = ::recv(fd, buf, n, 0);
    if (r > 0) return r;
    if (r == 0 && n > 0) {
      *status = IoStatus::Closed;
      *err = "end of stream";
      return -1;
    }
    if (r == 0) return 0;
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
    *status = (errno == ECONNRESET || errno == EPIPE) ? IoStatus::Closed : IoStatus::Failed;
    *err = errno_text(errno);
    return -1;
  }
}

long send_some(int fd, const void* buf, size_t n, IoStatus* status, std::string* err) {
  for (;;) {
    const ssize_t r = ::send(fd, buf, n, MSG_NOSIGNAL);
    if (r >= 0) return r;
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
    *status = (errno == ECONNRESET || errno == EPIPE) ? IoStatus::Closed : IoStatus::Failed;
    *err = errno_text(errno);
    return -1;
  }
}

IoStatus read_exact(int fd, void* buf, size_t n, Deadline d, std::string* err) {
  char* p = static_cast<char*>(buf);
  size_t done = 0;
  while (done < n) {
    IoStatus st = IoStatus::Ok;
    const long r = recv_some(fd, p + done, n - done, &st, err);
    if (r < 0) return st;
    if (r > 0) {
      done += static_cast<size_t>(r);
      continue;
    }
    if (!wait_fd(fd, POLLIN, d)) return IoStatus::Timeout;
  }
  return IoStatus::Ok;
}

IoStatus write_all(int fd, const void* buf, size_t n, Deadline d, std::string* err) {
  const char* p = static_cast<const char*>(buf);
  size_t done = 0;
  while (done < n) {
    IoStatus st = IoStatus::Ok;
    const long r = send_some(fd, p + done, n - done, &st, err);
    if (r < 0) return st;
    if (r > 0) {
      done += static_cast<size_t>(r);
      continue;
    }
    if (!wait_fd(fd, POLLOUT, d)) return IoStatus::Timeout;
  }
  return IoStatus::Ok;
}

}  // namespace rlcu::dist
