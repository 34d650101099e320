// `rlcu tokenize --tokenizer DIR --input FILE.jsonl [--chat] [--decode]`: one JSON line out per JSON line in, in
// order, on stdout.
//   default   {"text": ...}                  -> {"ids": [...]}             (no special tokens added)
//   --chat    {"messages": [...]} or {"prompt": ...} -> {"text": rendered, "ids": [...]}  (the record's "tools" list
//             goes to the template; --template picks the template: auto, none, a built-in name or a Jinja file)
//   --decode  {"ids": [...]}                 -> {"text": ...}
// A bad line is an error naming the file and line (exit 1).
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <memory>

#include <nlohmann/json.hpp>

#include "commands.h"
#include "rlcu/chat.h"
#include "rlcu/data.h"
#include "rlcu/error.h"
#include "rlcu/input_file.h"
#include "rlcu/json_error.h"
#include "rlcu/output_file.h"
#include "rlcu/tokenizer.h"

namespace rlcu::cli {

namespace {

struct TokenizeOptions {
  std::string dir;
  std::string input;
  std::string chat_template = "auto";
  bool chat = false;
  bool decode = false;
  bool no_special = false;
  bool skip_special = false;
  bool no_thinking = false;
};

std::string process_line(const std::string& line, const TokenizeOptions& o, const Tokenizer& tok,
                         const PromptFormat* format) {
  const nlohmann::ordered_json in = nlohmann::ordered_json::parse(line);
  if (!in.is_object()) throw Error("expected a JSON object");
  nlohmann::ordered_json out;
  if (o.decode) {
    if (!in.contains("ids") || !in["ids"].is_array()) throw Error("expected {\"ids\": [...]}");
    std::vector<int32_t> ids;
    for (size_t i = 0; i < in["ids"].size(); ++i) {
      const auto& v = in["ids"][i];
      // An id beyond int32 would wrap to another token: the range is checked before the conversion. Ids the
      // vocabulary lacks are skipped by decode(), as Hugging Face tokenizers does.
      if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > INT32_MAX)
        throw Error(fmt::format("ids[{}] = {}: expected a token id (an integer in [0, 2^31))", i, v.dump()));
      ids.push_back(static_cast<int32_t>(v.get<int64_t>()));
    }
    DecodeOptions d;
    d.skip_special = o.skip_special;
    out["text"] = tok.decode(ids, d);
  } else if (o.chat) {
    DataConfig cfg;
    cfg.answer_field.clear();
    std::string text;
    std::vector<int32_t> ids;
    build_prompt(text, ids, record_messages(in, cfg), *format, record_tools(in, cfg));
    out["text"] = text;
    out["ids"] = ids;
  } else {
    if (!in.contains("text") || !in["text"].is_string()) throw Error("expected {\"text\": \"...\"}");
    EncodeOptions e;
    e.allow_special = !o.no_special;
    out["ids"] = tok.encode(in["text"].get<std::string>(), e);
  }
  return out.dump();
}

int run_tokenize(const TokenizeOptions& o) {
  const Tokenizer tok = Tokenizer::load(o.dir);
  std::unique_ptr<PromptFormat> format;
  if (o.chat) {
    format = std::make_unique<PromptFormat>(make_prompt_format(tok, o.chat_template));
    if (o.no_thinking) format->render.enable_thinking = false;
  }
  std::ifstream file;
  std::istream* in = &std::cin;
  if (o.input != "-") {
    require_not_directory(o.input, "a JSONL file (--input)");
    file.open(o.input, std::ios::binary);
    if (!file) throw Error(fmt::format("--input: cannot read {}", o.input));
    in = &file;
  }
  std::string line;
  int64_t n = 0;
  while (std::getline(*in, line)) {
    ++n;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    std::string out;
    try {
      out = process_line(line, o, tok, format.get());
    } catch (const nlohmann::json::parse_error& e) {
      throw Error(json_line_error(o.input, n, e));
    } catch (const nlohmann::json::exception& e) {
      throw Error(fmt::format("{}:{}: {}", o.input, n, json_error_text(e)));
    } catch (const InternalError&) {
      throw;
    } catch (const Error& e) {
      throw Error(fmt::format("{}:{}: {}", o.input, n, e.what()));
    }
    out.push_back('\n');
    if (std::fwrite(out.data(), 1, out.size(), stdout) != out.size())
      throw Error(fmt::format("stdout: write failed at the output of {}:{}: {}", o.input, n, std::strerror(errno)));
  }
  OutputFile::check_stdout();
  return 0;
}

}  // namespace

void add_tokenize_command(CLI::App& app, Action& action) {
  auto o = std::make_shared<TokenizeOptions>();
  CLI::App* cmd = app.add_subcommand(
      "tokenize", "Encode text, render chat prompts or decode ids with a model's tokenizer (JSONL in, JSONL out)");
  cmd->add_option("--tokenizer", o->dir, "Model or tokenizer directory (tokenizer.json, tokenizer_config.json)")
      ->required();
  cmd->add_option("--input", o->input, "JSONL file, one object a line ('-' reads stdin)")->required();
  CLI::Option* chat = cmd->add_flag("--chat", o->chat,
                                    "Input {\"messages\": [...]}: render with the chat template, output text and ids");
  CLI::Option* decode = cmd->add_flag("--decode", o->decode, "Input {\"ids\": [...]}: output {\"text\": ...}");
  decode->excludes(chat);
  cmd->add_option("--template", o->chat_template,
                  "Chat template with --chat: auto (the model's), none, chatml, qwen2, qwen2.5, qwen3, llama3, "
                  "llama3.1, or a Jinja file")
      ->capture_default_str();
  cmd->add_flag("--no-thinking", o->no_thinking, "Pass enable_thinking=false to the chat template (Qwen3, SmolLM3)");
  cmd->add_flag("--no-special", o->no_special, "Encode special-token text (e.g. <|im_end|>) as plain text");
  cmd->add_flag("--skip-special", o->skip_special, "With --decode: leave special tokens out of the text");
  cmd->callback([&action, o] { action = [o] { return run_tokenize(*o); }; });
}

}  // namespace rlcu::cli
