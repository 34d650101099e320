// External reward command (include/rlcu/reward.h): `/bin/sh -c CMD` with its stdin and stdout on pipes. A batch
// writes N JSON request lines and reads N reply lines; writing and reading are interleaved through poll() on
// non-blocking pipes, so a command that answers each line before reading the next cannot deadlock against a full
// pipe. The whole batch has one deadline (timeout_s after its start).
// Strictness: replies are matched to requests by position, so exactly n lines per batch. Lines are cut from one
// buffer (each read appends; the newline search resumes where the last one stopped, consumed lines are erased once
// per read); a line is bounded by kMaxReplyLine, so memory is too. Extra output is looked for without waiting when
// the batch's n-th line is in and again before the next batch is written: a command that prints two lines for one
// request is stopped there instead of shifting every later reward by one.
// Process group: the command runs as the leader of its own process group (setpgid in the child and in the parent,
// so neither order races), so a terminal's Ctrl-C reaches rlcu only, and stop() ends the whole group — the shell
// and whatever it started — not just the `sh` pid: closed stdin, 2 s for the shell to exit, then SIGTERM to the
// group, 1 s, then SIGKILL to the group. The group is registered with the stop handlers (signals.h), so a second
// SIGINT/SIGTERM, which exits at once, kills it too. A stop signal interrupts the wait for replies (poll wakes at
// least every 100 ms to look): the batch fails with "interrupted", and the trainer saves and exits 128 + signal.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>

#include "rlcu/error.h"
#include "rlcu/reward.h"
#include "rlcu/signals.h"

namespace rlcu {

using json = nlohmann::json;

namespace {

// A prefix of a reply line for messages: at most 120 bytes, control bytes shown as `?`.
std::string clip(const std::string& s) {
  std::string out = s.size() > 120 ? s.substr(0, 117) + "..." : s;
  for (char& ch : out)
    if (static_cast<unsigned char>(ch) < 0x20) ch = '?';
  return out;
}

// Waits up to `ms` for process `pid` to be reaped; true when it was.
bool reap_within(pid_t pid, int ms) {
  int status = 0;
  for (int i = 0; i <= ms / 10; ++i) {
    const pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid || (r < 0 && errno == ECHILD)) return true;
    usleep(10000);
  }
  return false;
}

// Waits up to `ms` for every process of group `pgid` to be gone; true when it is.
bool group_gone_within(pid_t pgid, int ms) {
  for (int i = 0; i <= ms / 10; ++i) {
    if (kill(-pgid, 0) != 0 && errno == ESRCH) return true;
    usleep(10000);
  }
  return false;
}

void set_nonblocking(int fd) {
  const int flags = fcntl(fd, F_GETFL, 0);
  fcntl(fd, F_SETFL, flags | O_NONBLOCK);
}

}  // namespace

std::string parse_reward_reply(const std::string& line, size_t expected_index, float* out) {
  const json j = json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return "not valid JSON";
  const json* v = &j;
  if (j.is_object()) {
    auto it = j.find("reward");
    if (it == j.end()) return "an object without a `reward` field";
    auto idx = j.find("index");
    if (idx != j.end() && !(idx->is_number_unsigned() && idx->get<uint64_t>() == expected_index))
      return fmt::format("its `index` is {}, but this line answers request index {}", idx->dump(), expected_index);
    v = &*it;
  }
  if (!v->is_number()) return "expected a number or {\"reward\": number}";
  const double d = v->get<double>();
  if (!std::isfinite(d)) return "the reward is not finite";
  *out = static_cast<float>(d);
  return "";
}

RewardCommand::RewardCommand(std::string command, double timeout_s)
    : command_(std::move(command)), timeout_s_(timeout_s) {
  if (command_.empty()) throw Error("reward.command_line: the reward command is empty");
  if (!(timeout_s_ > 0)) throw Error("reward.command_timeout_s: expected a number > 0");
}

RewardCommand::~RewardCommand() { stop(); }

void RewardCommand::start() {
  signal(SIGPIPE, SIG_IGN);
  int in_pipe[2], out_pipe[2];
  if (pipe(in_pipe) != 0) throw Error(fmt::format("reward command `{}`: pipe: {}", command_, std::strerror(errno)));
  if (pipe(out_pipe) != 0) {
    close(in_pipe[0]);
    close(in_pipe[1]);
    throw Error(fmt::format("reward command `{}`: pipe: {}", command_, std::strerror(errno)));
  }
  const pid_t pid = fork();
  if (pid < 0) {
    for (int fd : {in_pipe[0], in_pipe[1], out_pipe[0], out_pipe[1]}) close(fd);
    throw Error(fmt::format("reward command `{}`: fork: {}", command_, std::strerror(errno)));
  }
  if (pid == 0) {
    // Child: only async-signal-safe calls until exec.
    setpgid(0, 0);
    signal(SIGPIPE, SIG_DFL);
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    dup2(in_pipe[0], STDIN_FILENO);
    dup2(out_pipe[1], STDOUT_FILENO);
    close(in_pipe[0]);
    close(in_pipe[1]);
    close(out_pipe[0]);
    close(out_pipe[1]);
    execl("/bin/sh", "sh", "-c", command_.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  setpgid(pid, pid);  // also done by the child; whichever runs first wins, the other fails harmlessly
  register_child_group(pid);
  close(in_pipe[0]);
  close(out_pipe[1]);
  fcntl(in_pipe[1], F_SETFD, FD_CLOEXEC);
  fcntl(out_pipe[0], F_SETFD, FD_CLOEXEC);
  set_nonblocking(in_pipe[1]);
  set_nonblocking(out_pipe[0]);
  pid_ = pid;
  to_child_ = in_pipe[1];
  from_child_ = out_pipe[0];
  pending_.clear();
  scan_ = 0;
  spdlog::debug("reward command `{}` started (pid {})", command_, pid_);
}

void RewardCommand::stop() {
  if (to_child_ >= 0) close(to_child_);
  if (from_child_ >= 0) close(from_child_);
  to_child_ = from_child_ = -1;
  pending_.clear();
  scan_ = 0;
  if (pid_ <= 0) return;
  // Closed stdin asks a well-behaved command to finish; give the shell 2 s, then end its whole group: SIGTERM, 1 s
  // for the shell and every process it started, SIGKILL. While any of them lives the group id is not reused.
  const pid_t pgid = pid_;
  bool reaped = reap_within(pid_, 2000);
  if (kill(-pgid, 0) == 0) {
    kill(-pgid, SIGTERM);
    if (!reaped) reaped = reap_within(pid_, 1000);
    if (!group_gone_within(pgid, reaped ? 1000 : 0)) kill(-pgid, SIGKILL);
  }
  if (!reaped) {
    int status = 0;
    kill(pid_, SIGKILL);
    waitpid(pid_, &status, 0);
  }
  unregister_child_group(pgid);
  pid_ = -1;
}

std::vector<float> RewardCommand::score(const std::vector<std::string>& prompts,
                                        const std::vector<std::string>& completions,
                                        const std::vector<std::string>& answers) {
  const size_t n = completions.size();
  RLCU_CHECK(prompts.size() == n && answers.size() == n, "RewardCommand::score: {} prompts, {} completions, {} answers",
             prompts.size(), n, answers.size());
  std::vector<float> out(n, 0.0f);
  if (n == 0) return out;
  if (pid_ <= 0) start();

  std::string request;
  for (size_t i = 0; i < n; ++i) {
    json j = json::object();
    j["prompt"] = prompts[i];
    j["completion"] = completions[i];
    j["answer"] = answers[i];
    j["index"] = i;
    request += j.dump(-1, ' ', false, json::error_handler_t::replace);
    request += '\n';
  }

  // Output that arrived after the previous batch's last reply (and was not there when it ended) is an extra line.
  check_no_output("before this batch's requests were written (after the previous batch's last reply)");

  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s_);
  size_t written = 0, replies = 0;
  // On failure: stop the process (the next batch restarts it) and throw.
  const auto fail = [&](const std::string& what) {
    stop();
    throw Error(fmt::format("reward command `{}`: {}", command_, what));
  };
  char buf[65536];
  while (replies < n) {
    // Complete lines already buffered: pending_[head, ...) is unconsumed; the search for '\n' resumes at scan_.
    size_t head = 0, nl;
    while (replies < n && (nl = pending_.find('\n', scan_)) != std::string::npos) {
      std::string line = pending_.substr(head, nl - head);
      head = scan_ = nl + 1;
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (line.size() > kMaxReplyLine)
        fail(fmt::format("reply line {} of the batch is longer than {} bytes: `{}`", replies + 1, kMaxReplyLine,
                         clip(line)));
      float r = 0.0f;
      const std::string err = parse_reward_reply(line, replies, &r);
      if (!err.empty())
        fail(fmt::format("reply line {} of the batch (completion index {}): {}: `{}`", replies + 1, replies, err,
                         clip(line)));
      out[replies++] = r;
    }
    if (head > 0) {
      pending_.erase(0, head);  // once per read, not per line
    }
    scan_ = pending_.size();  // no newline in what is left (or all replies are in)
    if (replies == n) break;
    if (pending_.size() > kMaxReplyLine)
      fail(fmt::format("reply line {} of {} of the batch is longer than {} bytes (no newline yet): `{}`", replies + 1,
                       n, kMaxReplyLine, clip(pending_)));

    const double left_ms =
        std::chrono::duration<double, std::milli>(deadline - std::chrono::steady_clock::now()).count();
    if (left_ms <= 0)
      fail(fmt::format("timed out after {} s waiting for reply line {} of {} of the batch", timeout_s_, replies + 1, n));
    pollfd fds[2];
    int nfds = 0;
    fds[nfds++] = pollfd{from_child_, POLLIN, 0};
    if (written < request.size()) fds[nfds++] = pollfd{to_child_, POLLOUT, 0};
    if (stop_interrupts_waits())
      fail(fmt::format("interrupted by a stop signal while waiting for reply line {} of {} of the batch", replies + 1,
                       n));
    const int rc = poll(fds, static_cast<nfds_t>(nfds), static_cast<int>(std::ceil(std::min(left_ms, 100.0))));
    if (rc < 0) {
      if (errno == EINTR) continue;
      fail(fmt::format("poll: {}", std::strerror(errno)));
    }
    if (nfds == 2 && (fds[1].revents & (POLLOUT | POLLERR | POLLHUP))) {
      const ssize_t w = write(to_child_, request.data() + written, request.size() - written);
      if (w > 0) {
        written += static_cast<size_t>(w);
        if (written == request.size()) spdlog::trace("reward command: batch of {} requests written", n);
      } else if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        fail(fmt::format("exited or closed its input before reply line {} of {} of the batch ({})", replies + 1, n,
                         std::strerror(errno)));
      }
    }
    if (fds[0].revents & (POLLIN | POLLERR | POLLHUP)) {
      const ssize_t r = read(from_child_, buf, sizeof buf);
      if (r > 0) {
        pending_.append(buf, static_cast<size_t>(r));
      } else if (r == 0) {
        if (!pending_.empty())
          fail(fmt::format("reply line {} of {} of the batch has no newline at the end of the output: `{}`",
                           replies + 1, n, clip(pending_)));
        fail(fmt::format("exited (end of output) before reply line {} of {} of the batch", replies + 1, n));
      } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        fail(fmt::format("read: {}", std::strerror(errno)));
      }
    }
  }
  // Exactly n lines: anything past the last reply, buffered or already in the pipe, answers no request.
  check_no_output(fmt::format("after reply line {} of {}, the batch's last", n, n));
  return out;
}

void RewardCommand::check_no_output(const std::string& when) {
  if (pid_ <= 0) return;
  char buf[4096];
  while (pending_.size() < 4096) {
    const ssize_t r = read(from_child_, buf, sizeof buf);
    if (r > 0) {
      pending_.append(buf, static_cast<size_t>(r));
      continue;
    }
    if (r < 0 && errno == EINTR) continue;
    break;  // EAGAIN (nothing more now), EOF (noticed by the next read that waits) or an error (likewise)
  }
  scan_ = pending_.size();
  if (pending_.empty()) return;
  const std::string line = pending_.substr(0, pending_.find('\n'));
  stop();
  throw Error(fmt::format("reward command `{}`: an extra reply line {}: `{}` (expected exactly one line per request)",
                          command_, when, clip(line)));
}

}  // namespace rlcu
