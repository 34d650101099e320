// `rlcu train`: on-policy RL post-training on one device (see src/train/trainer.cpp for the step).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace rlcu {

struct TrainArgs {
  std::string config;                  // config file; empty with resume = RUN_DIR/config.json
  std::vector<std::string> overrides;  // --set key=value
  std::string resume;                  // run directory to continue from its latest checkpoint
  bool overwrite = false;              // start over in a run directory that holds a run (deletes its outputs)
  std::string device;                  // overrides run.device when set
  int64_t threads = -1;                // >= 0: overrides run.threads (--threads)
  int64_t stop_after = 0;              // > 0: save a checkpoint and stop after this many steps of this invocation
  bool dry_run = false;                // check config, model headers, tokenizer, data and rewards, print the
                                       // memory plan and return 0 without creating the run directory
};

// Runs the training loop; returns the process exit code (0 done, 128 + signal after a stop request, with a
// checkpoint saved). Throws rlcu::Error for bad configs, data or models.
int run_train(const TrainArgs& args);

}  // namespace rlcu
