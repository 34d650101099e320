// `rlcu data synth --task arithmetic|countdown|linear --n N --out FILE.jsonl|- [--seed S] [--difficulty D]
//   [--split train|test] [--sft]`   (`--out -` writes to stdout)
//
// Writes N synthetic verifiable problems as JSONL, one {"prompt", "answer"[, "completion"], task fields} object a
// line; the same options give the same bytes. Train and test splits never share a problem (the split is a
// function of the prompt text). See include/rlcu/synth.h for the tasks, difficulties and the countdown check.
#include <spdlog/spdlog.h>

#include <cstdio>
#include <memory>

#include "commands.h"
#include "rlcu/error.h"
#include "rlcu/synth.h"

namespace rlcu::cli {

namespace {

struct SynthArgs {
  SynthOptions opts;
  std::string split = "train";
  std::string out;
};

}  // namespace

void add_data_synth_command(CLI::App& app, Action& action) {
  // `data` groups the dataset tools; reuse it when another data tool registered it first.
  const auto existing = app.get_subcommands([](CLI::App* s) { return s->get_name() == "data"; });
  CLI::App* data = existing.empty() ? app.add_subcommand("data", "Dataset tools") : existing.front();
  data->require_subcommand(1);
  CLI::App* cmd = data->add_subcommand("synth", "Generate synthetic verifiable problems (JSONL)");
  auto a = std::make_shared<SynthArgs>();
  cmd->add_option("--task", a->opts.task, "arithmetic, countdown or linear")
      ->required()
      ->check(CLI::IsMember(synth_task_names()));
  cmd->add_option("--n", a->opts.n, "Number of problems")->required()->check(int_range(0, int64_t{1} << 32));
  cmd->add_option("--seed", a->opts.seed, "Seed")->capture_default_str();
  cmd->add_option("--difficulty", a->opts.difficulty, "Difficulty (1 = easiest)")
      ->capture_default_str()
      ->check(int_range(1, 100));
  cmd->add_option("--split", a->split, "train or test (disjoint problem sets)")
      ->capture_default_str()
      ->check(CLI::IsMember({"train", "test"}));
  cmd->add_flag("--sft", a->opts.sft, "Add a worked \"completion\" ending in \\boxed{answer}");
  cmd->add_option("--out", a->out, "Output JSONL file, or - for stdout")->required();
  cmd->callback([&action, a] {
    action = [a] {
      a->opts.split = a->split == "test" ? SynthSplit::Test : SynthSplit::Train;
      const std::vector<SynthExample> ex = synth_generate(a->opts);
      if (a->out == "-") {
        for (const SynthExample& e : ex) std::fputs((e.to_jsonl() + "\n").c_str(), stdout);
        if (std::fflush(stdout) != 0) throw Error("stdout: write failed");
      } else {
        write_synth_jsonl(a->out, ex);
      }
      spdlog::info("wrote {} {} problems (difficulty {}, {} split, seed {}) to {}", ex.size(), a->opts.task,
                   a->opts.difficulty, a->split, a->opts.seed, a->out == "-" ? "stdout" : a->out);
      return 0;
    };
  });
}

}  // namespace rlcu::cli
