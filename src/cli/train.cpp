// `rlcu train [CONFIG] [--set key=value]... [--resume RUN_DIR | --overwrite] [--device cpu|cuda[:N]] [--stop-after N]
//             [--dry-run]`
// Runs RL post-training (see src/train/trainer.cpp). With --resume, CONFIG may be left out: the run's resolved
// config.json is used. --stop-after N saves a checkpoint and stops after N steps of this invocation. --dry-run checks
// the config, model headers, tokenizer, data and rewards, prints the memory plan and exits 0 without creating the
// run directory.
#include <memory>
#include <string>

#include "commands.h"
#include "rlcu/trainer.h"

namespace rlcu::cli {

void add_train_command(CLI::App& app, Action& action) {
  CLI::App* cmd = app.add_subcommand("train", "RL post-training (GRPO, PPO, RLOO, REINFORCE++) from a config file");
  auto a = std::make_shared<TrainArgs>();
  cmd->add_option("config", a->config, "Run config (JSON); optional with --resume");
  cmd->add_option("--set", a->overrides, "Override a config key: --set optimizer.lr=2e-6 (repeatable)");
  cmd->add_option("--resume", a->resume, "Continue the run in this directory from its latest checkpoint");
  cmd->add_flag("--overwrite", a->overwrite,
                "Start over in a run directory that holds a run (deletes its metrics, samples and checkpoints)");
  cmd->add_option("--device", a->device, "auto, cpu, cuda or cuda:N (overrides run.device)");
  cmd->add_option("--threads", a->threads, "Threads of the CPU kernels, 0 = all cores (overrides run.threads)")
      ->check(int_range(0, 4096));
  cmd->add_option("--stop-after", a->stop_after, "Save a checkpoint and stop after N steps of this invocation")
      ->check(int_range(1, int64_t{1} << 40));
  cmd->add_flag("--dry-run", a->dry_run,
                "Check the config, model headers, tokenizer, data and rewards, print the memory plan and exit "
                "without creating the run directory");
  cmd->callback([&action, a] {
    action = [a] {
      if (a->threads >= 0) a->overrides.push_back("run.threads=" + std::to_string(a->threads));
      return run_train(*a);
    };
  });
}

}  // namespace rlcu::cli
