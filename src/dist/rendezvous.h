// Rendezvous of a job's processes over TCP at MASTER_ADDR:MASTER_PORT, and the liveness links it leaves behind.
//
// Protocol (little-endian): every rank k > 0 connects to rank 0 (retrying until the deadline) and sends
//   hello = magic "RLCU", version, rank, world size, tag (the backend: ranks must agree), blob (k's own data).
// Rank 0 accepts until every rank 1..W-1 has said hello exactly once with rank 0's world size and tag, then sends
// each   reply = magic, status 0, table: for every rank r its host as rank 0 saw it (rank 0: MASTER_ADDR) and its blob
// or, when the rendezvous failed, status 1 and rank 0's error message (so every rank fails with the same reason).
// A connection that says no valid hello within a few seconds (not one of ours) is dropped and does not count.
// Rank k waits for the reply 10 s longer than the rendezvous timeout: rank 0 always answers by its own deadline,
// and its account (which ranks did not come) is the one worth reporting.
//
// The connections stay open afterwards (rank 0 holds one to every rank, every other rank one to rank 0): a
// PeerMonitor on them notices within one poll when a linked process ends without saying goodbye.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "rlcu/dist.h"
#include "socket.h"

namespace rlcu::dist {

struct RendezvousEntry {
  std::string host;  // address the rank connected from (rank 0: MASTER_ADDR)
  std::string blob;  // what the rank sent
};

struct RendezvousResult {
  std::vector<RendezvousEntry> ranks;  // by rank
  std::vector<Socket> links;           // rank 0: links[r] to rank r (links[0] unused); other ranks: links[0] to rank 0
};

// Every rank of `env` calls it with the same tag. Throws rlcu::Error naming the rank, the address and what did
// not arrive within timeout_s.
RendezvousResult rendezvous(const DistEnv& env, const std::string& tag, const std::string& blob, double timeout_s);

// Watches the rendezvous links for processes that end: EOF (or a reset) on a link that has not said goodbye.
class PeerMonitor {
 public:
  PeerMonitor() = default;
  PeerMonitor(int rank, std::vector<Socket> links, std::vector<std::string> hosts);
  PeerMonitor(PeerMonitor&&) = default;
  PeerMonitor& operator=(PeerMonitor&&) = default;

  // Waits up to timeout_ms for activity on the links; returns a message naming the rank when a linked process
  // ended without saying goodbye (or sent something unexpected), else nothing.
  std::optional<std::string> poll(int timeout_ms);
  // Tells the linked processes that this one finishes normally, then closes the links.
  void goodbye();
  // Closes the links without a goodbye: the linked processes learn that this one failed.
  void close_all();
  bool watching() const;

 private:
  int rank_ = 0;
  std::vector<Socket> links_;
  std::vector<std::string> hosts_;
};

}  // namespace rlcu::dist
