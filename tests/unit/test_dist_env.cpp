// DistEnv from launcher variables: torchrun, Open MPI and SLURM sets, their precedence, the defaults of a hand
// launch, consistency errors that name the variables; SLURM node-list and tasks-per-node forms; the dist timeouts;
// the CUDA device of a rank.
#include <gtest/gtest.h>

#include "rlcu/dist.h"
#include "rlcu/error.h"

using namespace rlcu;
using namespace rlcu::dist;

namespace {

using Vars = std::map<std::string, std::string>;

// The Error message of parse_dist_env(v), or "" when it parses.
std::string env_error(const Vars& v) {
  try {
    (void)parse_dist_env(v);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

#define EXPECT_CONTAINS(s, part) EXPECT_NE(std::string(s).find(part), std::string::npos) << (s)

TEST(DistEnv, NoLauncherIsOneProcess) {
  const DistEnv e = parse_dist_env({{"PATH", "/usr/bin"}, {"MASTER_PORT", "1234"}});
  EXPECT_EQ(e.launcher, Launcher::None);
  EXPECT_EQ(e.rank, 0);
  EXPECT_EQ(e.world_size, 1);
  EXPECT_FALSE(e.distributed());
  EXPECT_TRUE(e.note.empty());
}

TEST(DistEnv, Torchrun) {
  const DistEnv e = parse_dist_env({{"RANK", "5"}, {"WORLD_SIZE", "8"}, {"LOCAL_RANK", "1"},
                                    {"LOCAL_WORLD_SIZE", "4"}, {"MASTER_ADDR", "node07"}, {"MASTER_PORT", "29400"}});
  EXPECT_EQ(e.launcher, Launcher::Torchrun);
  EXPECT_EQ(e.rank, 5);
  EXPECT_EQ(e.world_size, 8);
  EXPECT_EQ(e.local_rank, 1);
  EXPECT_EQ(e.local_world_size, 4);
  EXPECT_EQ(e.master_addr, "node07");
  EXPECT_EQ(e.master_port, 29400);
  EXPECT_TRUE(e.distributed());
  EXPECT_CONTAINS(e.describe(), "rank 5 of 8");
  EXPECT_CONTAINS(e.describe(), "node07:29400");
}

TEST(DistEnv, HandLaunchOnOneNodeDefaults) {
  const DistEnv e = parse_dist_env({{"RANK", "2"}, {"WORLD_SIZE", "3"}});
  EXPECT_EQ(e.local_rank, 2);
  EXPECT_EQ(e.local_world_size, 3);
  EXPECT_EQ(e.master_addr, "127.0.0.1");
  EXPECT_EQ(e.master_port, 29500);
}

TEST(DistEnv, TorchrunErrorsNameTheVariables) {
  EXPECT_CONTAINS(env_error({{"RANK", "4"}, {"WORLD_SIZE", "4"}}), "RANK=4 with WORLD_SIZE=4");
  EXPECT_CONTAINS(env_error({{"RANK", "1"}}), "WORLD_SIZE");
  EXPECT_CONTAINS(env_error({{"WORLD_SIZE", "2"}}), "RANK");
  EXPECT_CONTAINS(env_error({{"RANK", "one"}, {"WORLD_SIZE", "2"}}), "RANK='one'");
  EXPECT_CONTAINS(env_error({{"RANK", "-1"}, {"WORLD_SIZE", "2"}}), "RANK='-1'");
  EXPECT_CONTAINS(env_error({{"RANK", "0"}, {"WORLD_SIZE", "0"}}), "WORLD_SIZE=0");
  EXPECT_CONTAINS(env_error({{"RANK", "0"}, {"WORLD_SIZE", "99999999999"}}), "WORLD_SIZE='99999999999'");
  EXPECT_CONTAINS(env_error({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_PORT", "http"}}), "MASTER_PORT='http'");
  EXPECT_CONTAINS(env_error({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_PORT", "70000"}}), "MASTER_PORT=70000");
  EXPECT_CONTAINS(env_error({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", ""}}), "MASTER_ADDR");
  EXPECT_CONTAINS(env_error({{"RANK", "1"}, {"WORLD_SIZE", "8"}, {"LOCAL_RANK", "4"}, {"LOCAL_WORLD_SIZE", "4"}}),
                  "LOCAL_RANK=4 with LOCAL_WORLD_SIZE=4");
  EXPECT_CONTAINS(env_error({{"RANK", "1"}, {"WORLD_SIZE", "2"}, {"LOCAL_WORLD_SIZE", "4"}}),
                  "LOCAL_WORLD_SIZE=4 is more than WORLD_SIZE=2");
  // Several nodes need rank 0's address.
  EXPECT_CONTAINS(env_error({{"RANK", "5"}, {"WORLD_SIZE", "8"}, {"LOCAL_RANK", "1"}, {"LOCAL_WORLD_SIZE", "4"}}),
                  "MASTER_ADDR");
  EXPECT_EQ(env_error({{"RANK", "0"}, {"WORLD_SIZE", "1"}}), "");
}

TEST(DistEnv, OpenMpi) {
  const DistEnv one = parse_dist_env({{"OMPI_COMM_WORLD_RANK", "3"}, {"OMPI_COMM_WORLD_SIZE", "4"},
                                      {"OMPI_COMM_WORLD_LOCAL_RANK", "3"}, {"OMPI_COMM_WORLD_LOCAL_SIZE", "4"}});
  EXPECT_EQ(one.launcher, Launcher::OpenMpi);
  EXPECT_EQ(one.rank, 3);
  EXPECT_EQ(one.local_rank, 3);
  EXPECT_EQ(one.master_addr, "127.0.0.1");  // every rank on this node
  EXPECT_EQ(one.master_port, 29500);
  const Vars two_nodes = {{"OMPI_COMM_WORLD_RANK", "6"}, {"OMPI_COMM_WORLD_SIZE", "8"},
                          {"OMPI_COMM_WORLD_LOCAL_RANK", "2"}, {"OMPI_COMM_WORLD_LOCAL_SIZE", "4"}};
  EXPECT_CONTAINS(env_error(two_nodes), "OMPI_COMM_WORLD_SIZE=8 over several nodes needs MASTER_ADDR");
  Vars with_addr = two_nodes;
  with_addr["MASTER_ADDR"] = "10.1.2.3";
  with_addr["MASTER_PORT"] = "23456";
  const DistEnv e = parse_dist_env(with_addr);
  EXPECT_EQ(e.master_addr, "10.1.2.3");
  EXPECT_EQ(e.master_port, 23456);
  EXPECT_CONTAINS(env_error({{"OMPI_COMM_WORLD_RANK", "0"}, {"OMPI_COMM_WORLD_SIZE", "2"}}),
                  "OMPI_COMM_WORLD_LOCAL_RANK");
  EXPECT_CONTAINS(env_error({{"OMPI_COMM_WORLD_RANK", "2"}, {"OMPI_COMM_WORLD_SIZE", "2"},
                             {"OMPI_COMM_WORLD_LOCAL_RANK", "0"}}),
                  "OMPI_COMM_WORLD_RANK=2 with OMPI_COMM_WORLD_SIZE=2");
}

Vars srun_vars() {
  return {{"SLURM_PROCID", "5"},           {"SLURM_NTASKS", "8"},       {"SLURM_LOCALID", "1"},
          {"SLURM_STEP_ID", "0"},          {"SLURM_NODEID", "1"},       {"SLURM_STEP_TASKS_PER_NODE", "4(x2)"},
          {"SLURM_JOB_NODELIST", "gpu[07-08]"}, {"SLURM_JOB_ID", "123456"}};
}

TEST(DistEnv, Slurm) {
  const DistEnv e = parse_dist_env(srun_vars());
  EXPECT_EQ(e.launcher, Launcher::Slurm);
  EXPECT_EQ(e.rank, 5);
  EXPECT_EQ(e.world_size, 8);
  EXPECT_EQ(e.local_rank, 1);
  EXPECT_EQ(e.local_world_size, 4);
  EXPECT_EQ(e.master_addr, "gpu07");
  EXPECT_EQ(e.master_port, 29500 + 456);
  // The step's node list wins over the job's; MASTER_ADDR / MASTER_PORT over both.
  Vars v = srun_vars();
  v["SLURM_STEP_NODELIST"] = "gpu08";
  EXPECT_EQ(parse_dist_env(v).master_addr, "gpu08");
  v["MASTER_ADDR"] = "10.0.0.9";
  v["MASTER_PORT"] = "31000";
  EXPECT_EQ(parse_dist_env(v).master_addr, "10.0.0.9");
  EXPECT_EQ(parse_dist_env(v).master_port, 31000);
  // Uneven tasks per node: node 2 of "3(x2),2" runs 2.
  v = srun_vars();
  v["SLURM_STEP_TASKS_PER_NODE"] = "3(x2),2";
  v["SLURM_NODEID"] = "2";
  v["SLURM_LOCALID"] = "0";
  EXPECT_EQ(parse_dist_env(v).local_world_size, 2);
  v["SLURM_STEP_TASKS_PER_NODE"] = "3(y2)";
  EXPECT_CONTAINS(env_error(v), "SLURM_STEP_TASKS_PER_NODE='3(y2)'");
  v["SLURM_STEP_TASKS_PER_NODE"] = "3,";
  EXPECT_CONTAINS(env_error(v), "SLURM_STEP_TASKS_PER_NODE='3,'");
}

TEST(DistEnv, SlurmErrors) {
  Vars v = srun_vars();
  v["SLURM_PROCID"] = "8";
  EXPECT_CONTAINS(env_error(v), "SLURM_PROCID=8 with SLURM_NTASKS=8");
  v = srun_vars();
  v.erase("SLURM_LOCALID");
  EXPECT_CONTAINS(env_error(v), "SLURM_LOCALID");
  v = srun_vars();
  v.erase("SLURM_JOB_NODELIST");
  EXPECT_CONTAINS(env_error(v), "MASTER_ADDR");  // two nodes and no node list: nowhere to find rank 0
  v = srun_vars();
  v["SLURM_JOB_NODELIST"] = "gpu[07-08";
  EXPECT_CONTAINS(env_error(v), "SLURM_JOB_NODELIST='gpu[07-08'");
}

TEST(DistEnv, SlurmBatchScriptWithoutSrunIsOneProcess) {
  Vars v = srun_vars();
  v.erase("SLURM_STEP_ID");
  const DistEnv e = parse_dist_env(v);
  EXPECT_EQ(e.world_size, 1);
  EXPECT_EQ(e.launcher, Launcher::None);
  EXPECT_CONTAINS(e.note, "SLURM_STEP_ID");
  v["SLURM_STEPID"] = "3";  // the older name
  EXPECT_EQ(parse_dist_env(v).world_size, 8);
}

TEST(DistEnv, Precedence) {
  // torchrun started by srun (one agent per node): torchrun's variables describe the ranks.
  Vars v = srun_vars();
  v["RANK"] = "2";
  v["WORLD_SIZE"] = "16";
  v["LOCAL_RANK"] = "2";
  v["LOCAL_WORLD_SIZE"] = "8";
  v["MASTER_ADDR"] = "gpu07";
  EXPECT_EQ(parse_dist_env(v).launcher, Launcher::Torchrun);
  EXPECT_EQ(parse_dist_env(v).world_size, 16);
  // mpirun inside a SLURM batch script: the batch step's SLURM_PROCID=0 is stale for every process.
  v = srun_vars();
  v["OMPI_COMM_WORLD_RANK"] = "7";
  v["OMPI_COMM_WORLD_SIZE"] = "8";
  v["OMPI_COMM_WORLD_LOCAL_RANK"] = "3";
  v["OMPI_COMM_WORLD_LOCAL_SIZE"] = "4";
  v["MASTER_ADDR"] = "gpu07";
  EXPECT_EQ(parse_dist_env(v).launcher, Launcher::OpenMpi);
  EXPECT_EQ(parse_dist_env(v).rank, 7);
}

TEST(DistEnv, SlurmFirstHost) {
  EXPECT_EQ(slurm_first_host("node[01-04,07],gpu5", "L"), "node01");
  EXPECT_EQ(slurm_first_host("gpu5", "L"), "gpu5");
  EXPECT_EQ(slurm_first_host("gpu5,node[1-2]", "L"), "gpu5");
  EXPECT_EQ(slurm_first_host("node[05,01-02]", "L"), "node05");
  EXPECT_EQ(slurm_first_host("a[7]", "L"), "a7");
  EXPECT_EQ(slurm_first_host("rack[1-2]-n[003-004]", "L"), "rack1-n003");
  EXPECT_EQ(slurm_first_host("[3-4]x", "L"), "3x");
  for (const char* bad : {"", "node[01-04", "node]1", "node[]", "node[ab]", ",node1", "node[1x]"}) {
    try {
      (void)slurm_first_host(bad, "SLURM_JOB_NODELIST");
      ADD_FAILURE() << "accepted '" << bad << "'";
    } catch (const Error& e) {
      EXPECT_CONTAINS(e.what(), "SLURM_JOB_NODELIST='" + std::string(bad) + "'");
    }
  }
}

TEST(DistEnv, Options) {
  const DistOptions d = parse_dist_options({});
  EXPECT_EQ(d.rendezvous_timeout_s, 300);
  EXPECT_EQ(d.collective_timeout_s, 600);
  const DistOptions o = parse_dist_options({{"RLCU_DIST_TIMEOUT_S", "2.5"}, {"RLCU_DIST_RENDEZVOUS_TIMEOUT_S", "30"}});
  EXPECT_EQ(o.collective_timeout_s, 2.5);
  EXPECT_EQ(o.rendezvous_timeout_s, 30);
  for (const char* bad : {"0", "-1", "abc", "5s", ""}) {
    try {
      (void)parse_dist_options({{"RLCU_DIST_TIMEOUT_S", bad}});
      ADD_FAILURE() << "accepted '" << bad << "'";
    } catch (const Error& e) {
      EXPECT_CONTAINS(e.what(), "RLCU_DIST_TIMEOUT_S='" + std::string(bad) + "'");
    }
  }
}

TEST(DistEnv, LocalDeviceIndex) {
  DistEnv e = parse_dist_env({{"RANK", "3"}, {"WORLD_SIZE", "4"}});
  EXPECT_EQ(local_device_index(e, 8), 3);
  EXPECT_EQ(local_device_index(e, 1), 0);  // one GPU bound to each process
  try {
    (void)local_device_index(e, 2);
    ADD_FAILURE() << "local rank 3 on 2 devices";
  } catch (const Error& err) {
    EXPECT_CONTAINS(err.what(), "local rank 3 has no GPU: 2 CUDA devices are visible");
  }
  EXPECT_THROW((void)local_device_index(e, 0), Error);
}

}  // namespace
