// Subcommand registration. Each src/cli/<name>.cpp adds its subcommand to the app and, when the user chose it,
// stores the action in `action`; main() runs that action after parsing. Actions return the exit code.
#pragma once

#include <cstdint>
#include <functional>
#include <sstream>
#include <string>

#include <CLI/CLI.hpp>

namespace rlcu::cli {

using Action = std::function<int()>;

// CLI::Range with a description people read in --help: "INT:1 to 4096", "INT:at least 1" (an upper bound of 2^30
// or more is a guard, not a limit worth printing), "FLOAT:0.01 to 1".
inline CLI::Validator int_range(int64_t lo, int64_t hi) {
  CLI::Validator v = CLI::Range(lo, hi);
  v.description(hi >= (int64_t{1} << 30) ? "at least " + std::to_string(lo)
                                          : std::to_string(lo) + " to " + std::to_string(hi));
  return v;
}
inline CLI::Validator float_range(double lo, double hi) {
  CLI::Validator v = CLI::Range(lo, hi);
  std::ostringstream d;
  d << lo << " to " << hi;
  v.description(d.str());
  return v;
}

void add_info_command(CLI::App& app, Action& action);
void add_tokenize_command(CLI::App& app, Action& action);
void add_config_command(CLI::App& app, Action& action);
void add_bench_command(CLI::App& app, Action& action);
void add_score_command(CLI::App& app, Action& action);
void add_generate_command(CLI::App& app, Action& action);
void add_train_command(CLI::App& app, Action& action);
void add_bench_rollout_command(CLI::App* bench, Action& action);  // `bench rollout`, registered by bench
void add_init_model_command(CLI::App& app, Action& action);
void add_data_synth_command(CLI::App& app, Action& action);
void add_sft_command(CLI::App& app, Action& action);
void add_eval_command(CLI::App& app, Action& action);
void add_merge_lora_command(CLI::App& app, Action& action);

}  // namespace rlcu::cli
