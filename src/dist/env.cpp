// The job's shape from the launcher's environment (torchrun, Open MPI's mpirun, SLURM's srun), the SLURM node-list
// and tasks-per-node forms, the dist timeouts, and the CUDA device of a rank. See include/rlcu/dist.h for the
// variables and their precedence.
#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <vector>

#include "rlcu/dist.h"
#include "rlcu/error.h"

namespace rlcu::dist {

namespace {

using Vars = std::map<std::string, std::string>;

const char* const kKnownVars[] = {
    "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
    "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE",
    "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_STEP_ID", "SLURM_STEPID", "SLURM_NODEID",
    "SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE", "SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST",
    "SLURM_NODELIST", "SLURM_JOB_ID", "RLCU_DIST_RENDEZVOUS_TIMEOUT_S", "RLCU_DIST_TIMEOUT_S"};

const std::string* find(const Vars& v, const char* name) {
  auto it = v.find(name);
  return it == v.end() ? nullptr : &it->second;
}

// A non-negative decimal integer below 2^31 (surrounding blanks allowed, nothing else).
int parse_int(const std::string& s, const char* name) {
  size_t b = 0, e = s.size();
  while (b < e && std::isspace(static_cast<unsigned char>(s[b]))) ++b;
  while (e > b && std::isspace(static_cast<unsigned char>(s[e - 1]))) --e;
  long long v = 0;
  bool ok = b < e;
  for (size_t i = b; ok && i < e; ++i) {
    ok = std::isdigit(static_cast<unsigned char>(s[i])) != 0;
    v = v * 10 + (s[i] - '0');
    if (v > 0x7fffffffLL) ok = false;
  }
  if (!ok) throw Error(fmt::format("{}='{}': expected a non-negative integer", name, s));
  return static_cast<int>(v);
}

int get_int(const Vars& v, const char* name, int fallback) {
  const std::string* s = find(v, name);
  return s ? parse_int(*s, name) : fallback;
}

// "2(x3),1" -> {2, 2, 2, 1}.
std::vector<int> parse_tasks_per_node(const std::string& s, const char* name) {
  auto bad = [&] { return Error(fmt::format("{}='{}': expected counts like '8' or '4(x2),3'", name, s)); };
  // Digits from s[i]: the number and the index after it.
  auto number = [&](size_t i, size_t* end) {
    size_t j = i;
    while (j < s.size() && std::isdigit(static_cast<unsigned char>(s[j]))) ++j;
    if (j == i || j - i > 6) throw bad();
    *end = j;
    return std::stoi(s.substr(i, j - i));
  };
  std::vector<int> out;
  size_t i = 0;
  for (;;) {
    size_t j = 0;
    const int count = number(i, &j);
    int repeat = 1;
    if (j < s.size() && s[j] == '(') {
      if (s.compare(j, 2, "(x") != 0) throw bad();
      repeat = number(j + 2, &j);
      if (j >= s.size() || s[j] != ')') throw bad();
      ++j;
    }
    out.insert(out.end(), static_cast<size_t>(repeat), count);
    if (j == s.size()) break;
    if (s[j] != ',') throw bad();
    i = j + 1;
  }
  return out;
}

double parse_seconds(const std::string& s, const char* name) {
  char* end = nullptr;
  const double v = std::strtod(s.c_str(), &end);
  if (s.empty() || *end != '\0' || !(v > 0) || v > 1e7)
    throw Error(fmt::format("{}='{}': expected a positive number of seconds", name, s));
  return v;
}

// The variables of kKnownVars that the process environment sets.
Vars known_environment() {
  Vars v;
  for (const char* name : kKnownVars)
    if (const char* value = std::getenv(name)) v[name] = value;
  return v;
}

// The fields every launcher fills in the same way: master address and port defaults, and the checks.
void finish(DistEnv& e, const Vars& v, const char* rank_var, const char* world_var, const char* local_rank_var,
            const char* local_world_var, int default_port) {
  if (e.world_size < 1) throw Error(fmt::format("{}={}: the world size must be at least 1", world_var, e.world_size));
  if (e.rank >= e.world_size)
    throw Error(fmt::format("{}={} with {}={}: the rank must be below the world size", rank_var, e.rank, world_var,
                            e.world_size));
  if (e.local_world_size > e.world_size)
    throw Error(fmt::format("{}={} is more than {}={}", local_world_var, e.local_world_size, world_var, e.world_size));
  if (e.local_world_size > 0 && e.local_rank >= e.local_world_size)
    throw Error(fmt::format("{}={} with {}={}: the local rank must be below the local world size", local_rank_var,
                            e.local_rank, local_world_var, e.local_world_size));
  if (e.local_rank >= e.world_size)
    throw Error(fmt::format("{}={} with {}={}: the local rank must be below the world size", local_rank_var,
                            e.local_rank, world_var, e.world_size));
  const std::string* addr = find(v, "MASTER_ADDR");
  const std::string* port = find(v, "MASTER_PORT");
  if (addr && addr->empty()) throw Error("MASTER_ADDR is set but empty: expected rank 0's host name or address");
  if (addr) e.master_addr = *addr;
  e.master_port = port ? parse_int(*port, "MASTER_PORT") : default_port;
  if (e.master_port < 1 || e.master_port > 65535)
    throw Error(fmt::format("MASTER_PORT={}: expected a TCP port between 1 and 65535", e.master_port));
  if (!e.distributed()) return;
  if (e.master_addr.empty()) {
    if (e.local_world_size != e.world_size)
      throw Error(fmt::format("{}={} over several nodes needs MASTER_ADDR (the host of rank 0)", world_var,
                              e.world_size));
    e.master_addr = "127.0.0.1";
  }
}

DistEnv parse_torchrun(const Vars& v) {
  const std::string* rank = find(v, "RANK");
  const std::string* world = find(v, "WORLD_SIZE");
  if (!rank || !world)
    throw Error(fmt::format("{} is set but {} is not: torchrun sets both; set both when launching by hand",
                            rank ? "RANK" : "WORLD_SIZE", rank ? "WORLD_SIZE" : "RANK"));
  DistEnv e;
  e.launcher = Launcher::Torchrun;
  e.rank = parse_int(*rank, "RANK");
  e.world_size = parse_int(*world, "WORLD_SIZE");
  const bool has_local = find(v, "LOCAL_RANK") || find(v, "LOCAL_WORLD_SIZE");
  e.local_rank = get_int(v, "LOCAL_RANK", e.rank);
  e.local_world_size = get_int(v, "LOCAL_WORLD_SIZE", has_local ? 0 : e.world_size);
  finish(e, v, "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", 29500);
  return e;
}

DistEnv parse_openmpi(const Vars& v) {
  const std::string* rank = find(v, "OMPI_COMM_WORLD_RANK");
  const std::string* world = find(v, "OMPI_COMM_WORLD_SIZE");
  if (!rank || !world)
    throw Error("OMPI_COMM_WORLD_RANK and OMPI_COMM_WORLD_SIZE must both be set (mpirun sets them)");
  DistEnv e;
  e.launcher = Launcher::OpenMpi;
  e.rank = parse_int(*rank, "OMPI_COMM_WORLD_RANK");
  e.world_size = parse_int(*world, "OMPI_COMM_WORLD_SIZE");
  if (!find(v, "OMPI_COMM_WORLD_LOCAL_RANK"))
    throw Error("OMPI_COMM_WORLD_RANK is set but OMPI_COMM_WORLD_LOCAL_RANK is not (mpirun sets both)");
  e.local_rank = get_int(v, "OMPI_COMM_WORLD_LOCAL_RANK", 0);
  e.local_world_size = get_int(v, "OMPI_COMM_WORLD_LOCAL_SIZE", 0);
  finish(e, v, "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK",
         "OMPI_COMM_WORLD_LOCAL_SIZE", 29500);
  return e;
}

int slurm_local_world(const Vars& v) {
  for (const char* name : {"SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE"}) {
    const std::string* s = find(v, name);
    if (!s) continue;
    const std::vector<int> counts = parse_tasks_per_node(*s, name);
    // SLURM_NODEID counts the job's nodes; a step on fewer nodes lists only its own, so stay within the list.
    const int node = get_int(v, "SLURM_NODEID", 0);
    return counts[std::min<size_t>(static_cast<size_t>(node), counts.size() - 1)];
  }
  return 0;
}

DistEnv parse_slurm(const Vars& v) {
  const std::string* rank = find(v, "SLURM_PROCID");
  const std::string* world = find(v, "SLURM_NTASKS");
  if (!world) throw Error("SLURM_PROCID is set but SLURM_NTASKS is not (srun sets both)");
  DistEnv e;
  e.launcher = Launcher::Slurm;
  e.rank = parse_int(*rank, "SLURM_PROCID");
  e.world_size = parse_int(*world, "SLURM_NTASKS");
  if (!find(v, "SLURM_LOCALID")) throw Error("SLURM_PROCID is set but SLURM_LOCALID is not (srun sets both)");
  e.local_rank = get_int(v, "SLURM_LOCALID", 0);
  e.local_world_size = slurm_local_world(v);
  int port = 29500;
  if (const std::string* job = find(v, "SLURM_JOB_ID")) port += parse_int(*job, "SLURM_JOB_ID") % 1000;
  Vars with_addr = v;
  if (!find(v, "MASTER_ADDR")) {
    for (const char* name : {"SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST"}) {
      if (const std::string* list = find(v, name)) {
        with_addr["MASTER_ADDR"] = slurm_first_host(*list, name);
        break;
      }
    }
  }
  finish(e, with_addr, "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_STEP_TASKS_PER_NODE", port);
  return e;
}

}  // namespace

const char* launcher_name(Launcher l) {
  switch (l) {
    case Launcher::None: return "single process";
    case Launcher::Torchrun: return "torchrun";
    case Launcher::OpenMpi: return "mpirun";
    case Launcher::Slurm: return "srun";
  }
  return "?";
}

std::string DistEnv::describe() const {
  if (!distributed()) return fmt::format("rank 0 of 1 ({})", launcher_name(launcher));
  return fmt::format("rank {} of {} (local {} of {}, {}), rank 0 at {}:{}", rank, world_size, local_rank,
                     local_world_size > 0 ? std::to_string(local_world_size) : "?", launcher_name(launcher),
                     master_addr, master_port);
}

DistEnv parse_dist_env(const Vars& v) {
  if (find(v, "RANK") || find(v, "WORLD_SIZE")) return parse_torchrun(v);
  if (find(v, "OMPI_COMM_WORLD_RANK") || find(v, "OMPI_COMM_WORLD_SIZE")) return parse_openmpi(v);
  if (find(v, "SLURM_PROCID")) {
    if (find(v, "SLURM_STEP_ID") || find(v, "SLURM_STEPID")) return parse_slurm(v);
    DistEnv e;
    e.note = "SLURM_PROCID is set without SLURM_STEP_ID (not started by srun): running as one process";
    return e;
  }
  return DistEnv{};
}

DistEnv dist_env_from_environment() { return parse_dist_env(known_environment()); }

DistOptions parse_dist_options(const Vars& v) {
  DistOptions o;
  if (const std::string* s = find(v, "RLCU_DIST_RENDEZVOUS_TIMEOUT_S"))
    o.rendezvous_timeout_s = parse_seconds(*s, "RLCU_DIST_RENDEZVOUS_TIMEOUT_S");
  if (const std::string* s = find(v, "RLCU_DIST_TIMEOUT_S")) o.collective_timeout_s = parse_seconds(*s, "RLCU_DIST_TIMEOUT_S");
  return o;
}

DistOptions dist_options_from_environment() { return parse_dist_options(known_environment()); }

std::string slurm_first_host(const std::string& list, const std::string& var) {
  auto bad = [&](const char* why) {
    return Error(fmt::format("{}='{}': {} (expected a node list like 'node[01-04,07],gpu5')", var, list, why));
  };
  std::string host;
  size_t i = 0;
  while (i < list.size() && list[i] != ',') {
    if (list[i] == ']') throw bad("']' without '['");
    if (list[i] != '[') {
      host += list[i++];
      continue;
    }
    // A bracket group: the first value of its first range ("01-04,07" -> "01").
    const size_t close = list.find(']', i);
    if (close == std::string::npos) throw bad("'[' without ']'");
    const std::string group = list.substr(i + 1, close - i - 1);
    size_t n = 0;
    while (n < group.size() && std::isdigit(static_cast<unsigned char>(group[n]))) ++n;
    if (n == 0 || (n < group.size() && group[n] != '-' && group[n] != ',')) throw bad("a bracket holds no number range");
    host += group.substr(0, n);
    i = close + 1;
  }
  if (host.empty()) throw bad("no host");
  return host;
}

int local_device_index(const DistEnv& env, int visible_devices) {
  if (visible_devices <= 0) throw Error(fmt::format("{}: no CUDA device is visible", env.describe()));
  if (env.local_rank < visible_devices) return env.local_rank;
  if (visible_devices == 1) return 0;
  throw Error(fmt::format("{}: local rank {} has no GPU: {} CUDA devices are visible (one process per GPU: use at most "
                          "{} processes per node)",
                          env.describe(), env.local_rank, visible_devices, visible_devices));
}

}  // namespace rlcu::dist
