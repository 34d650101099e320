// `rlcu config check|show|keys`: validate a config file (with --set overrides), print it resolved with every
// default filled in, or list every key with its type, default and meaning.
#include <iostream>

#include <fmt/format.h>

#include "commands.h"
#include "rlcu/config.h"
#include "rlcu/output_file.h"

namespace rlcu::cli {

namespace {

struct ConfigArgs {
  std::string path;
  std::vector<std::string> sets;
};

void add_config_args(CLI::App* cmd, ConfigArgs& a) {
  cmd->add_option("CONFIG", a.path, "JSON config file")->required();
  cmd->add_option("--set", a.sets, "Override a key: --set optimizer.lr=2e-6 (repeatable; values are JSON, "
                                   "bare words are strings)");
}

std::string kind_name(const FieldSpec& f) {
  switch (f.kind) {
    case FieldKind::Int: return "int";
    case FieldKind::Float: return "float";
    case FieldKind::Bool: return "bool";
    case FieldKind::String: return "string";
    case FieldKind::Enum: return "enum";
  }
  return "";
}

}  // namespace

void add_config_command(CLI::App& app, Action& action) {
  CLI::App* cfg = app.add_subcommand("config", "Check, show or list configuration keys");
  cfg->require_subcommand(1);

  static ConfigArgs check_args, show_args;
  CLI::App* check = cfg->add_subcommand("check", "Validate a config file (exit 0 when valid)");
  add_config_args(check, check_args);
  check->callback([&action] {
    action = [] {
      load_config(check_args.path, check_args.sets);
      OutputFile::write_stdout(fmt::format("{}: ok\n", check_args.path));
      return 0;
    };
  });

  CLI::App* show = cfg->add_subcommand("show", "Print the resolved config (defaults filled in) as JSON");
  add_config_args(show, show_args);
  show->callback([&action] {
    action = [] {
      const RunConfig c = load_config(show_args.path, show_args.sets);
      OutputFile::write_stdout(config_to_json(c).dump(2) + "\n");
      return 0;
    };
  });

  CLI::App* keys = cfg->add_subcommand("keys", "List every config key with its type, default and meaning");
  static bool markdown = false;
  keys->add_flag("--markdown", markdown, "Print a Markdown table");
  keys->callback([&action] {
    action = [] {
      const RunConfig defaults;
      std::string text;
      if (markdown) text += fmt::format("| key | type | default | meaning |\n|---|---|---|---|\n");
      for (const FieldSpec& f : config_schema()) {
        const std::string def = f.get(defaults).dump();
        std::string type = kind_name(f);
        if (f.kind != FieldKind::String && f.kind != FieldKind::Bool) type = f.expectation();
        if (markdown)
          text += fmt::format("| `{}` | {} | `{}` | {} |\n", f.path, type, def, f.doc);
        else
          text += fmt::format("{:<28} {:<40} default {}\n    {}\n", f.path, type, def, f.doc);
      }
      OutputFile::write_stdout(text);
      return 0;
    };
  });
}

}  // namespace rlcu::cli
