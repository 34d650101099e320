// `rlcu info`: build type, CUDA runtime/driver versions, and each GPU's name, memory and compute capability.
#include "commands.h"
#include "rlcu/context.h"
#include "rlcu/output_file.h"

namespace rlcu::cli {

namespace {
std::string version_str(int v) { return v ? fmt::format("{}.{}", v / 1000, (v % 1000) / 10) : "none"; }
}  // namespace

void add_info_command(CLI::App& app, Action& action) {
  CLI::App* cmd = app.add_subcommand("info", "Show the build and the CUDA devices rlcu can use");
  cmd->callback([&action] {
    action = [] {
      std::string text;
      text += fmt::format("rlcu {}\n", RLCU_VERSION);
      text += fmt::format("build type:     {}\n", RLCU_BUILD_TYPE);
      text += fmt::format("CUDA runtime:   {}\n", version_str(cuda_runtime_version()));
      text += fmt::format("CUDA driver:    {}\n", version_str(cuda_driver_version()));
      const auto gpus = cuda_devices();
      if (gpus.empty()) {
        text += fmt::format("GPUs:           no CUDA device\n");
        OutputFile::write_stdout(text);
        return 0;
      }
      for (const GpuInfo& g : gpus)
        text += fmt::format("GPU {}:          {}, {:.1f} GiB ({:.1f} GiB free), compute capability {}.{}, {} SMs\n",
                            g.index, g.name, g.total_memory / 1073741824.0, g.free_memory / 1073741824.0, g.cc_major,
                            g.cc_minor, g.multiprocessors);
      OutputFile::write_stdout(text);
      return 0;
    };
  });
}

}  // namespace rlcu::cli
