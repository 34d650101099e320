// The run directory's pieces below the CLI: XXH64 against the specification's values and streaming against one-shot,
// the run lock (a second holder fails naming the first, a killed holder's lock is gone, the lock file is
// close-on-exec), and the reward command's process group (every process the command started ends with it: on
// timeout, on a normal stop, on a stop signal while a reply is awaited, on the immediate exit of a second signal).
#include <gtest/gtest.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "cli_util.h"
#include "rlcu/error.h"
#include "rlcu/reward.h"
#include "rlcu/run_dir.h"
#include "rlcu/signals.h"

using namespace rlcu;
namespace fs = std::filesystem;

namespace {

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// True while process `pid` exists and is not a zombie.
bool alive(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(in, line)) return false;
  const size_t p = line.rfind(')');
  return p != std::string::npos && p + 2 < line.size() && line[p + 2] != 'Z';
}

// Waits up to 10 s for `path` to hold a pid; returns it (0 when it never came).
pid_t wait_pid_file(const std::string& path) {
  for (int i = 0; i < 1000; ++i) {
    std::ifstream in(path);
    pid_t pid = 0;
    if (in >> pid && pid > 0) return pid;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return 0;
}

bool gone_within(pid_t pid, double secs) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(secs);
  while (std::chrono::steady_clock::now() < end) {
    if (!alive(pid)) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return !alive(pid);
}

std::string fresh(const std::string& name) {
  const std::string d = rlcu::test::temp_dir() + "/" + name;
  fs::remove_all(d);
  return d;
}

}  // namespace

TEST(Xxh64, SpecificationValues) {
  EXPECT_EQ(xxh64("", 0), 0xEF46DB3751D8E999ULL);
  EXPECT_EQ(xxh64("a", 1), 0xD24EC4F1A98C6E5BULL);
  EXPECT_EQ(xxh64("abc", 3), 0x44BC2CF5AD770999ULL);
}

TEST(Xxh64, FileHashEqualsOneShotAtEverySizeClass) {
  std::string data;
  for (size_t i = 0; i < (size_t{1} << 20) * 2 + 77; ++i) data += static_cast<char>((i * 2654435761u) >> 13);
  for (const size_t n : {size_t{0}, size_t{5}, size_t{31}, size_t{32}, size_t{100}, size_t{1} << 20,
                         (size_t{1} << 20) + 33, data.size()}) {
    const std::string p = rlcu::test::temp_dir() + "/xxh.bin";
    rlcu::test::write_file(p, data.substr(0, n));
    EXPECT_EQ(file_xxh64(p), xxh64(data.data(), n)) << n;
  }
  EXPECT_NE(error_of([] { file_xxh64("/nonexistent/file"); }).find("/nonexistent/file"), std::string::npos);
}

TEST(RunDirLock, SecondHolderFailsNamingTheFirstAndAKilledHolderReleases) {
  const std::string dir = fresh("lock");
  {
    RunDirLock a = RunDirLock::acquire(dir, "train");
    ASSERT_TRUE(a.held());
    const std::string e = error_of([&] { RunDirLock::acquire(dir, "sft"); });
    EXPECT_NE(e.find("in use by pid " + std::to_string(getpid()) + " on host"), std::string::npos) << e;
    EXPECT_NE(e.find("rlcu train"), std::string::npos) << e;
    // The descriptor is close-on-exec: a child process does not keep the run locked.
    const std::string content = rlcu::test::read_file(dir + "/rlcu.lock");
    EXPECT_NE(content.find("\"pid\":" + std::to_string(getpid())), std::string::npos) << content;
  }
  EXPECT_TRUE(RunDirLock::acquire(dir, "train").held());  // released with the first

  // A holder that is killed (no destructor runs) leaves no lock behind.
  int ready[2];
  ASSERT_EQ(pipe(ready), 0);
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    RunDirLock l = RunDirLock::acquire(dir, "train");
    (void)!write(ready[1], "x", 1);
    pause();
    _exit(0);
  }
  char c;
  ASSERT_EQ(read(ready[0], &c, 1), 1);
  EXPECT_NE(error_of([&] { RunDirLock::acquire(dir, "train"); }).find("pid " + std::to_string(child)),
            std::string::npos);
  kill(child, SIGKILL);
  int status = 0;
  waitpid(child, &status, 0);
  EXPECT_TRUE(RunDirLock::acquire(dir, "train").held());
  close(ready[0]);
  close(ready[1]);
}

TEST(RunDirLock, ChildProcessesDoNotInheritIt) {
  const std::string dir = fresh("lock_exec");
  const std::string pidfile = rlcu::test::temp_dir() + "/lock_exec.pid";
  std::remove(pidfile.c_str());
  pid_t child = 0;
  {
    RunDirLock a = RunDirLock::acquire(dir, "train");
    child = fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
      execl("/bin/sh", "sh", "-c", ("echo $$ > " + pidfile + "; exec sleep 30").c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
    ASSERT_EQ(wait_pid_file(pidfile), child);
  }
  // The child (now `sleep`) still runs; the lock went with the parent's descriptor.
  EXPECT_TRUE(alive(child));
  EXPECT_TRUE(RunDirLock::acquire(dir, "train").held());
  kill(child, SIGKILL);
  int status = 0;
  waitpid(child, &status, 0);
}

TEST(RewardCommandGroup, TimeoutEndsEveryProcessTheCommandStarted) {
  const std::string pidfile = rlcu::test::temp_dir() + "/timeout_group.pid";
  std::remove(pidfile.c_str());
  RewardCommand c("sleep 300 & echo $! > " + pidfile + "; wait", 0.5);
  const std::string e = error_of([&] { c.score({"p"}, {"c"}, {"a"}); });
  EXPECT_NE(e.find("timed out"), std::string::npos) << e;
  const pid_t grandchild = wait_pid_file(pidfile);
  ASSERT_GT(grandchild, 0);
  EXPECT_TRUE(gone_within(grandchild, 5.0)) << "the command's child " << grandchild << " outlived the timeout";
}

TEST(RewardCommandGroup, StopEndsBackgroundChildrenOfAWellBehavedCommand) {
  const std::string pidfile = rlcu::test::temp_dir() + "/stop_group.pid";
  std::remove(pidfile.c_str());
  pid_t grandchild = 0;
  {
    RewardCommand c("sleep 300 & echo $! > " + pidfile + "; while read -r l; do echo 1; done", 10.0);
    EXPECT_EQ(c.score({"p"}, {"c"}, {"a"}), std::vector<float>{1.0f});
    grandchild = wait_pid_file(pidfile);
    ASSERT_GT(grandchild, 0);
    EXPECT_TRUE(alive(grandchild));
  }  // the destructor stops the command: stdin closed, the shell exits, its group is ended
  EXPECT_TRUE(gone_within(grandchild, 5.0)) << "the command's child " << grandchild << " outlived the command";
}

TEST(RewardCommandGroup, StopSignalInterruptsTheWaitForReplies) {
  const std::string pidfile = rlcu::test::temp_dir() + "/signal_group.pid";
  std::remove(pidfile.c_str());
  install_stop_handlers();
  RewardCommand c("sleep 300 & echo $! > " + pidfile + "; wait", 600.0);
  std::thread raiser([&] {
    wait_pid_file(pidfile);
    kill(getpid(), SIGINT);
  });
  const auto t0 = std::chrono::steady_clock::now();
  const std::string e = error_of([&] { c.score({"p"}, {"c"}, {"a"}); });
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  raiser.join();
  EXPECT_TRUE(stop_requested());
  clear_stop_request();
  uninstall_stop_handlers();
  EXPECT_NE(e.find("interrupted by a stop signal"), std::string::npos) << e;
  EXPECT_LT(secs, 30.0);  // not the 600 s timeout
  const pid_t grandchild = wait_pid_file(pidfile);
  ASSERT_GT(grandchild, 0);
  EXPECT_TRUE(gone_within(grandchild, 5.0));
}

TEST(RewardCommandGroup, SecondStopSignalExitsAtOnceAndKillsTheGroup) {
  const std::string pidfile = rlcu::test::temp_dir() + "/second_signal.pid";
  std::remove(pidfile.c_str());
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    install_stop_handlers();
    RewardCommand c("sleep 300 & echo $! > " + pidfile + "; wait", 600.0);
    try {
      c.score({"p"}, {"c"}, {"a"});
    } catch (...) {
    }
    sleep(20);  // the second signal has ended the process before this
    _exit(0);
  }
  const pid_t grandchild = wait_pid_file(pidfile);
  ASSERT_GT(grandchild, 0);
  kill(child, SIGINT);
  usleep(50000);  // delivered one at a time (a second pending SIGINT would merge with the first)
  kill(child, SIGINT);
  int status = 0;
  waitpid(child, &status, 0);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 130);
  EXPECT_TRUE(gone_within(grandchild, 1.0)) << "the command's child " << grandchild << " outlived rlcu";
  kill(grandchild, SIGKILL);
}
