// Graceful stop on SIGINT / SIGTERM. The first signal only sets a flag: the trainer polls stop_requested() at its
// safe points (between steps), saves a checkpoint and exits cleanly. A second signal ends the process at once with
// exit code 130 (no checkpoint), after killing the registered child process groups (reward commands), so that no
// child outlives it.
#pragma once

namespace rlcu {

// Installs the handlers for SIGINT and SIGTERM (idempotent) and clears any earlier request.
void install_stop_handlers();
// Puts the default SIGINT / SIGTERM dispositions back.
void uninstall_stop_handlers();
bool stop_requested();
// Whether a stop request also interrupts the waits inside a step (for a reply of a reward command): on by default.
// The data-parallel trainer turns it off, so that every rank finishes the step and all stop after it together (a
// second signal still exits at once). stop_interrupts_waits() = stop_requested() while it is on.
void set_stop_interrupts_waits(bool on);
bool stop_interrupts_waits();
int stop_signal();  // the signal that asked to stop (SIGINT or SIGTERM), 0 when none
// Forgets a request (after the trainer has acted on it, or between tests).
void clear_stop_request();
// Process groups (of child processes rlcu started) that the immediate exit on a second signal kills with SIGKILL.
// At most 16 at a time; further ones are not registered. Async-signal-safe state (lock-free atomics).
void register_child_group(int pgid);
void unregister_child_group(int pgid);

}  // namespace rlcu
