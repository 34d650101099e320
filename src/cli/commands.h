// Subcommand registration. Each src/cli/<name>.cpp adds its subcommand to the app and, when the user chose it,
// stores the action in `action`; main() runs that action after parsing. Actions return the exit code.
#pragma once

#include <functional>

#include <CLI/CLI.hpp>

namespace rlcu::cli {

using Action = std::function<int()>;

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

}  // namespace rlcu::cli
