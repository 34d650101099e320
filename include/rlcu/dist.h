// Distributed runs: where this process sits in the job (DistEnv, read from the launcher's environment) and the
// Communicator that runs collectives over all processes. One process per GPU; a process without launcher variables
// is a job of one and needs no network at all.
//
// Launching (the variables each launcher sets; the first launcher whose variables are present wins, in this order):
//   torchrun --no-python --nproc-per-node N rlcu train CFG
//       RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT. By hand, RANK and WORLD_SIZE are
//       enough on one machine: LOCAL_RANK defaults to RANK, LOCAL_WORLD_SIZE to WORLD_SIZE, MASTER_ADDR to
//       127.0.0.1 when every rank is local, MASTER_PORT to 29500.
//   mpirun -np N rlcu train CFG  (Open MPI)
//       OMPI_COMM_WORLD_RANK, OMPI_COMM_WORLD_SIZE, OMPI_COMM_WORLD_LOCAL_RANK, OMPI_COMM_WORLD_LOCAL_SIZE; on several
//       nodes pass MASTER_ADDR (and MASTER_PORT) with `-x MASTER_ADDR=host`; on one node 127.0.0.1:29500 is used.
//   srun rlcu train CFG  (SLURM; inside the job step that srun starts, recognised by SLURM_STEP_ID)
//       SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID; this node's task count from SLURM_STEP_TASKS_PER_NODE (or
//       SLURM_TASKS_PER_NODE) and SLURM_NODEID. MASTER_ADDR defaults to the first host of SLURM_STEP_NODELIST
//       (else SLURM_JOB_NODELIST, SLURM_NODELIST), which is where task 0 runs with Slurm's default block
//       distribution; MASTER_PORT defaults to 29500 + SLURM_JOB_ID % 1000 so that jobs sharing a node differ.
//       A batch script that runs rlcu without srun has SLURM_PROCID but no SLURM_STEP_ID: that is one process
//       (DistEnv::note says so). Two nodes with 8 GPUs each:
//           #!/bin/bash
//           #SBATCH --nodes=2 --ntasks-per-node=8 --gpus-per-node=8 --cpus-per-task=8
//           export NCCL_SOCKET_IFNAME=ib0   # optional: the interface NCCL's bootstrap uses
//           srun rlcu train config.json
// Every process uses GPU LOCAL_RANK (local_device_index(): or device 0 when the launcher gave each process a
// single visible GPU, e.g. `srun --gpus-per-task=1`).
//
// Rendezvous: rank 0 listens on MASTER_PORT (all interfaces, IPv4), every other rank connects to
// MASTER_ADDR:MASTER_PORT, retrying until the rendezvous deadline, and says who it is (rank, world size); rank 0
// checks that every rank came exactly once with the same world size and backend and sends each the job's table
// (the NCCL unique id for CUDA; the socket addresses of every rank for the CPU backend), or, when something is
// wrong, the reason, so that every rank fails with the same account. Failures are rlcu::Errors naming the rank, the
// address and what did not happen in time.
//
// Environment read by dist_options_from_environment():
//   RLCU_DIST_RENDEZVOUS_TIMEOUT_S  seconds for the rendezvous and communicator set-up (default 300)
//   RLCU_DIST_TIMEOUT_S             seconds one collective may wait for the other ranks (default 600)
//   NCCL_NVLS_ENABLE                set to 0 before NCCL initialises unless already set (NVLink multicast stays off)
//
// Collectives (every rank calls the same ones in the same order; tensors are contiguous views):
//   all_reduce(x, op)              x = op over ranks of x, elementwise, in place
//   reduce_scatter(out, in, op)    in: world_size * n elements, out: n; out on rank r = op over ranks of in[r*n, (r+1)*n)
//   all_gather(out, in)            in: n elements, out: world_size * n; out[r*n, (r+1)*n) = in of rank r.
//                                  `in` may be rank r's own slice of `out` (in place)
//   broadcast(x, root)             x = x of rank `root`
//   barrier()                      returns (on the host, also for NCCL) once every rank has reached it
// Reductions: Sum, Max, Min over F32, F64, BF16, I32, I64 (NCCL also takes F16 and U8).
// Results are identical on every rank. The CPU backend reduces in rank order (x_0 op x_1 op ... op x_{n-1}, BF16
// accumulated in F32 and rounded once), so its results are also bitwise independent of timing; NCCL's order depends
// on its algorithm and the world size, fixed for a fixed job shape.
//
// Backends:
//   Local   world size 1, any device: all_reduce/broadcast/barrier do nothing, the out-of-place forms copy.
//   Socket  CPU tensors: TCP between every pair of processes (for tests and CPU smoke runs, not a production
//           transport). Every wait is bounded by the collective timeout; a peer that ends (EOF, reset) is an Error
//           naming it at once. After any failure the communicator closes its connections (so the other ranks fail
//           too) and every further call throws.
//   Nccl    CUDA tensors. Collectives run on the communicator's own stream: an event recorded on the caller's
//           context stream orders them after the work queued before, and the context stream waits on an event
//           recorded after them (no host or device-wide synchronisation). A watchdog thread aborts the NCCL
//           communicator (ncclCommAbort) when NCCL reports an asynchronous error, when a queued collective has not
//           finished within the collective timeout, or when another rank's process ends (each rank keeps its
//           rendezvous connection to rank 0 open for this). After an abort the results of collectives in flight are
//           undefined: every call, and check(), throws the recorded error — call check() before using results that
//           leave the process (metrics, checkpoints).
#pragma once

#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "rlcu/context.h"
#include "rlcu/tensor.h"

namespace rlcu::dist {

enum class Launcher : uint8_t { None, Torchrun, OpenMpi, Slurm };
const char* launcher_name(Launcher l);

struct DistEnv {
  Launcher launcher = Launcher::None;
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;
  int local_world_size = 1;  // processes on this node; 0 when the launcher does not say
  std::string master_addr;   // host name or IPv4 address of rank 0; empty for a job of one
  int master_port = 0;
  std::string note;          // something worth logging about how the environment was read (or empty)

  bool distributed() const { return world_size > 1; }
  std::string describe() const;  // "rank 3 of 8 (local 3 of 4, torchrun), rank 0 at host:29500"
};

// Reads the launcher variables from `vars` (name -> value; absent names are unset). Inconsistent or malformed
// values are an rlcu::Error naming the variables (RANK=4 with WORLD_SIZE=4, MASTER_PORT=http, ...).
DistEnv parse_dist_env(const std::map<std::string, std::string>& vars);
// The same over the process environment.
DistEnv dist_env_from_environment();

// The first host of a SLURM node list: "node[01-04,07],gpu5" -> "node01", "rack[1-2]-n[3-4]" -> "rack1-n3".
// `var` names the variable in errors.
std::string slurm_first_host(const std::string& nodelist, const std::string& var);

// The CUDA device this process uses: LOCAL_RANK, or 0 when exactly one device is visible (the launcher bound one
// GPU to each process). Error when LOCAL_RANK names no visible device.
int local_device_index(const DistEnv& env, int visible_devices);

enum class Backend : uint8_t { Auto, Local, Socket, Nccl };  // Auto: Local for one rank, else by the device

struct DistOptions {
  double rendezvous_timeout_s = 300;
  double collective_timeout_s = 600;
  Backend backend = Backend::Auto;
};
// Defaults overridden by RLCU_DIST_RENDEZVOUS_TIMEOUT_S and RLCU_DIST_TIMEOUT_S (positive seconds).
DistOptions dist_options_from_environment();
DistOptions parse_dist_options(const std::map<std::string, std::string>& vars);

enum class ReduceOp : uint8_t { Sum, Max, Min };
const char* reduce_op_name(ReduceOp op);

class Communicator {
 public:
  virtual ~Communicator() = default;
  int rank() const { return rank_; }
  int world_size() const { return world_size_; }
  Device device() const { return device_; }
  virtual Backend backend() const = 0;

  virtual void all_reduce(const Tensor& x, ReduceOp op, Context& ctx) = 0;
  virtual void reduce_scatter(const Tensor& out, const Tensor& in, ReduceOp op, Context& ctx) = 0;
  virtual void all_gather(const Tensor& out, const Tensor& in, Context& ctx) = 0;
  virtual void broadcast(const Tensor& x, int root, Context& ctx) = 0;
  virtual void barrier(Context& ctx) = 0;
  // Throws the error that made this communicator unusable, if any (an aborted NCCL communicator, a dead peer).
  virtual void check() const = 0;

 protected:
  Communicator(int rank, int world_size, Device device) : rank_(rank), world_size_(world_size), device_(device) {}

 private:
  int rank_, world_size_;
  Device device_;
};

// Collectives on host vectors (the data-parallel trainer's batch statistics, completions and per-token rows) over a
// communicator of any backend. CPU tensors go to the communicator as they are; for CUDA tensors the values pass
// through one device staging buffer of `capacity_bytes`, allocated at construction (the step loop allocates
// nothing), with one synchronisation per call. A call that needs more than the capacity is a bug in the caller's
// sizing (RLCU_CHECK). Every rank calls the same functions in the same order; results are identical on every rank.
class HostCollectives {
 public:
  HostCollectives(Communicator& comm, Context& ctx, size_t capacity_bytes);
  Communicator& communicator() const { return comm_; }
  int rank() const { return comm_.rank(); }
  int world_size() const { return comm_.world_size(); }

  // v = op over ranks of v, elementwise (every rank passes the same size).
  void all_reduce(std::vector<double>& v, ReduceOp op);
  void all_reduce(std::vector<int64_t>& v, ReduceOp op);
  // The concatenation, in rank order, of every rank's `mine` (sizes may differ between ranks). 32-bit words:
  // callers put floats in by their bits (float_bits / bits_float), so the values arrive exactly.
  std::vector<int32_t> all_gather_concat(const std::vector<int32_t>& mine);
  // x = x of rank `root`.
  void broadcast(std::vector<int64_t>& x, int root);

 private:
  Tensor stage(DType dt, int64_t n);  // a view of the staging buffer (CUDA) or empty (CPU)
  Communicator& comm_;
  Context& ctx_;
  OwnedTensor staging_;
};

inline int32_t float_bits(float f) {
  int32_t w;
  static_assert(sizeof w == sizeof f, "32-bit float");
  std::memcpy(&w, &f, sizeof w);
  return w;
}
inline float bits_float(int32_t w) {
  float f;
  std::memcpy(&f, &w, sizeof f);
  return f;
}

// Sets up the communicator of this job for tensors on ctx's device (CUDA: ctx must be on local_device_index()).
// Every rank calls it; it returns once every rank has joined (the rendezvous), or throws.
std::unique_ptr<Communicator> create_communicator(const DistEnv& env, Context& ctx, const DistOptions& opt);

// Whether this build has the NCCL backend.
bool nccl_available();

}  // namespace rlcu::dist
