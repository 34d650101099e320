// Multi-process helpers of the dist tests: run N ranks as child processes (forked functions, or rlcu_dist_rank
// executed with a launcher's variables), each with its stdout captured, all bounded by a time limit after which the
// remaining ones are killed, so a hang fails the test instead of stalling it.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <string>
#include <vector>

namespace rlcu::test {

struct Outcome {
  int exit_code = -1;     // -1 when killed by a signal
  int signal = 0;         // the signal that ended it
  bool timed_out = false; // killed by run_children at its time limit
  double seconds = 0;     // from start until its output closed
  std::string out;        // its stdout
};

// Starts `n` children, child i running child_main(i) with stdout on a pipe (child_main must end the process, by
// exec or _exit), waits until each has closed its output and exited or `limit_s` passed (then SIGKILLs the rest).
inline std::vector<Outcome> run_children(int n, const std::function<void(int)>& child_main, double limit_s) {
  using Clock = std::chrono::steady_clock;
  const auto t0 = Clock::now();
  std::vector<pid_t> pids(static_cast<size_t>(n), -1);
  std::vector<int> fds(static_cast<size_t>(n), -1);
  std::vector<Outcome> res(static_cast<size_t>(n));
  std::fflush(stdout);
  std::fflush(stderr);
  for (int i = 0; i < n; ++i) {
    int p[2];
    if (pipe(p) != 0) std::abort();
    const pid_t pid = fork();
    if (pid == 0) {
      close(p[0]);
      for (int j = 0; j < i; ++j) close(fds[static_cast<size_t>(j)]);
      dup2(p[1], 1);
      close(p[1]);
      child_main(i);
      _exit(127);
    }
    close(p[1]);
    pids[static_cast<size_t>(i)] = pid;
    fds[static_cast<size_t>(i)] = p[0];
  }
  int open_fds = n;
  while (open_fds > 0) {
    const double left = limit_s - std::chrono::duration<double>(Clock::now() - t0).count();
    if (left <= 0) break;
    std::vector<pollfd> pf;
    std::vector<int> which;
    for (int i = 0; i < n; ++i)
      if (fds[static_cast<size_t>(i)] >= 0) {
        pf.push_back(pollfd{fds[static_cast<size_t>(i)], POLLIN, 0});
        which.push_back(i);
      }
    if (poll(pf.data(), pf.size(), static_cast<int>(std::min(left * 1000, 200.0)) + 1) <= 0) continue;
    for (size_t k = 0; k < pf.size(); ++k) {
      if (!pf[k].revents) continue;
      const auto i = static_cast<size_t>(which[k]);
      char buf[4096];
      const ssize_t r = read(fds[i], buf, sizeof buf);
      if (r > 0) {
        res[i].out.append(buf, static_cast<size_t>(r));
      } else {
        close(fds[i]);
        fds[i] = -1;
        --open_fds;
        res[i].seconds = std::chrono::duration<double>(Clock::now() - t0).count();
      }
    }
  }
  for (int i = 0; i < n; ++i) {
    const auto u = static_cast<size_t>(i);
    if (fds[u] >= 0) {
      kill(pids[u], SIGKILL);
      close(fds[u]);
      res[u].timed_out = true;
      res[u].seconds = limit_s;
    }
    int status = 0;
    // A child that closed its output may still be exiting: wait for it, but kill it at the limit.
    for (;;) {
      const pid_t w = waitpid(pids[u], &status, WNOHANG);
      if (w == pids[u]) break;
      if (std::chrono::duration<double>(Clock::now() - t0).count() > limit_s) {
        kill(pids[u], SIGKILL);
        res[u].timed_out = true;
        waitpid(pids[u], &status, 0);
        break;
      }
      usleep(2000);
    }
    if (WIFEXITED(status)) res[u].exit_code = WEXITSTATUS(status);
    if (WIFSIGNALED(status)) res[u].signal = WTERMSIG(status);
  }
  return res;
}

// Replaces the child with `bin args...`, its environment being this process's without any launcher variables
// (so that a test run under srun or mpirun stays a test), plus `env`.
[[noreturn]] inline void exec_with_env(const std::string& bin, const std::vector<std::string>& args,
                                       const std::map<std::string, std::string>& env) {
  std::vector<std::string> kv;
  const char* const launcher_prefixes[] = {"RANK=", "WORLD_SIZE=", "LOCAL_RANK=", "LOCAL_WORLD_SIZE=", "MASTER_ADDR=",
                                           "MASTER_PORT=", "OMPI_", "SLURM_", "RLCU_DIST_"};
  for (char** e = environ; *e; ++e) {
    bool launcher = false;
    for (const char* p : launcher_prefixes) launcher = launcher || std::strncmp(*e, p, std::strlen(p)) == 0;
    if (!launcher) kv.push_back(*e);
  }
  for (const auto& [k, v] : env) kv.push_back(k + "=" + v);
  std::vector<char*> envp, argv;
  argv.push_back(const_cast<char*>(bin.c_str()));
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  for (std::string& s : kv) envp.push_back(s.data());
  envp.push_back(nullptr);
  execve(bin.c_str(), argv.data(), envp.data());
  std::printf("exec %s failed: %s\n", bin.c_str(), std::strerror(errno));
  std::fflush(stdout);
  _exit(126);
}

// A TCP port on 127.0.0.1 that was free a moment ago (the system's pick for an ephemeral bind).
inline int free_port() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  socklen_t len = sizeof a;
  if (fd < 0 || bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0)
    std::abort();
  close(fd);
  return ntohs(a.sin_port);
}

}  // namespace rlcu::test
