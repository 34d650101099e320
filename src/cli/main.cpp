// rlcu entry point: parses the command line (CLI11), runs the chosen subcommand and maps failures to exit codes:
// 0 success, 1 error (bad input file/config/data, runtime failure), 2 usage error. Errors are one line on stderr.
// Whatever a command printed to stdout is flushed and checked before a success exit: a failed write (a full disk,
// a closed pipe) exits 1 naming stdout instead of 0 with the output lost.
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <iostream>
#include <new>

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include "commands.h"
#include "rlcu/error.h"
#include "rlcu/json_error.h"
#include "rlcu/output_file.h"

int main(int argc, char** argv) {
  CLI::App app{"rlcu: reinforcement-learning post-training of LLMs in C++/CUDA"};
  app.name("rlcu");
  app.set_version_flag("--version", std::string("rlcu ") + RLCU_VERSION);
  app.require_subcommand(1);
  app.fallthrough(false);
  // Logs go to stderr so that commands writing results to stdout (score, tokenize, config show) stay clean; colour
  // only on a terminal, never with NO_COLOR set to anything non-empty (no-color.org).
  const char* no_color = std::getenv("NO_COLOR");
  const bool colour_off = no_color != nullptr && no_color[0] != '\0';
  spdlog::set_default_logger(
      spdlog::stderr_color_mt("rlcu", colour_off ? spdlog::color_mode::never : spdlog::color_mode::automatic));
  spdlog::set_pattern("[%H:%M:%S] %^%l%$ %v");

  rlcu::cli::Action action;
  rlcu::cli::add_info_command(app, action);
  rlcu::cli::add_tokenize_command(app, action);
  rlcu::cli::add_config_command(app, action);
  rlcu::cli::add_bench_command(app, action);
  rlcu::cli::add_score_command(app, action);
  rlcu::cli::add_generate_command(app, action);
  rlcu::cli::add_train_command(app, action);
  rlcu::cli::add_init_model_command(app, action);
  rlcu::cli::add_data_synth_command(app, action);
  rlcu::cli::add_sft_command(app, action);
  rlcu::cli::add_eval_command(app, action);
  rlcu::cli::add_merge_lora_command(app, action);

  if (argc == 1) {  // `rlcu` alone: the commands (a usage error: no command given)
    std::fputs(app.help().c_str(), stdout);
    return 2;
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "rlcu: error: %s\n", e.what());
    std::fprintf(stderr, "Run with --help for more information.\n");
    return 2;
  }
  try {
    const int code = action ? action() : 0;
    std::cout.flush();
    if (!std::cout.good()) throw rlcu::Error("stdout: write failed");
    rlcu::OutputFile::check_stdout();
    return code;
  } catch (const rlcu::UsageError& e) {
    std::fprintf(stderr, "rlcu: error: %s\n", e.what());
    return 2;
  } catch (const std::filesystem::filesystem_error& e) {
    // A filesystem call that was not given its own message: name the path and the reason, not the library's text.
    std::fprintf(stderr, "rlcu: error: %s: %s\n", e.path1().string().c_str(), e.code().message().c_str());
    return 1;
  } catch (const nlohmann::json::exception& e) {
    std::fprintf(stderr, "rlcu: error: unexpected JSON value: %s\n", rlcu::json_error_text(e).c_str());
    return 1;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "rlcu: error: out of host memory (an input, batch or model larger than this machine holds)\n");
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "rlcu: error: %s\n", e.what());
    return 1;
  }
}
