// SIGINT / SIGTERM handling (see include/rlcu/signals.h). The handler touches only lock-free atomics and calls only
// async-signal-safe functions (write, _exit): spdlog cannot be used inside a signal handler, so the one notice the
// user needs at once ("the stop was heard") is written to stderr directly; the trainer logs the rest via spdlog.
#include "rlcu/signals.h"

#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstring>

namespace rlcu {

namespace {

std::atomic<int> g_count{0};
constexpr int kMaxGroups = 16;
std::atomic<int> g_groups[kMaxGroups];  // 0 = free slot
std::atomic<int> g_signal{0};
std::atomic<bool> g_interrupt_waits{true};
static_assert(std::atomic<int>::is_always_lock_free, "signal flags must be lock-free");

void on_stop_signal(int sig) {
  if (g_count.fetch_add(1) > 0) {
    static const char kNow[] = "\nrlcu: second stop signal, exiting now without a checkpoint\n";
    (void)!write(STDERR_FILENO, kNow, sizeof(kNow) - 1);
    for (std::atomic<int>& g : g_groups) {
      const int pg = g.load();
      if (pg > 0) kill(-pg, SIGKILL);
    }
    _exit(130);
  }
  g_signal.store(sig);
  static const char kFirst[] =
      "\nrlcu: stop requested: saving a checkpoint at the end of this step (send the signal again to exit now)\n";
  (void)!write(STDERR_FILENO, kFirst, sizeof(kFirst) - 1);
}

void set_handler(int sig, void (*fn)(int)) {
  struct sigaction sa;
  std::memset(&sa, 0, sizeof(sa));
  sa.sa_handler = fn;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  sigaction(sig, &sa, nullptr);
}

}  // namespace

void install_stop_handlers() {
  clear_stop_request();
  set_handler(SIGINT, on_stop_signal);
  set_handler(SIGTERM, on_stop_signal);
}

void uninstall_stop_handlers() {
  set_handler(SIGINT, SIG_DFL);
  set_handler(SIGTERM, SIG_DFL);
}

bool stop_requested() { return g_count.load() > 0; }

void set_stop_interrupts_waits(bool on) { g_interrupt_waits.store(on); }

bool stop_interrupts_waits() { return g_interrupt_waits.load() && stop_requested(); }

int stop_signal() { return g_signal.load(); }

void register_child_group(int pgid) {
  for (std::atomic<int>& g : g_groups) {
    int expected = 0;
    if (g.compare_exchange_strong(expected, pgid)) return;
  }
}

void unregister_child_group(int pgid) {
  for (std::atomic<int>& g : g_groups) {
    int expected = pgid;
    if (g.compare_exchange_strong(expected, 0)) return;
  }
}

void clear_stop_request() {
  g_count.store(0);
  g_signal.store(0);
}

}  // namespace rlcu
