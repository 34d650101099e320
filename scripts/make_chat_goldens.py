#!/usr/bin/env python3
"""Renders the chat templates of tests/fixtures/chat_templates/ over a set of conversations with Python's jinja2,
configured the way transformers' apply_chat_template configures it, and writes the renders to
tests/fixtures/chat_templates/goldens.jsonl. test_chat compares rlcu's Jinja interpreter against them byte for byte.

The environment mirrors transformers.utils.chat_template_utils (_compile_jinja_template / render_jinja_template):
ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True) with the loopcontrols extension and the
{% generation %} tag (AssistantTracker), transformers' tojson (json.dumps with ensure_ascii=False), raise_exception
(TemplateError with the message) and strftime_now; the variables are the special tokens, messages, tools (None when
the case has none), documents (None), add_generation_prompt and the case's extra keyword arguments. strftime_now is
pinned to 2025-03-14 09:26:53 so that the goldens do not change with the calendar (the C++ test pins the same time).

Each output line: {"template", "case", "messages", "tools", "add_generation_prompt", "variables", "bos_token",
"eos_token"} plus "rendered" (the text) and "generation" (the texts of the {% generation %} blocks, for templates that
have them), or "raised" (the raise_exception message), or "error" (another jinja2 error, type and message).

Usage: python3 scripts/make_chat_goldens.py   (needs jinja2; the goldens were made with jinja2 3.1.6)
"""
import datetime
import json
import os
import sys

import jinja2
import jinja2.ext
import jinja2.sandbox
from jinja2.ext import Extension

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIR = os.path.join(ROOT, "tests", "fixtures", "chat_templates")
NOW = datetime.datetime(2025, 3, 14, 9, 26, 53)


class AssistantTracker(Extension):
    """transformers' {% generation %} tag: renders its body and records the body's span in the output."""

    tags = {"generation"}

    def __init__(self, environment):
        super().__init__(environment)
        environment.extend(activate_tracker=self)
        self.blocks = None
        self.spans = None

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_generation_support"), [], [], body).set_lineno(lineno)

    @jinja2.pass_eval_context
    def _generation_support(self, context, caller):
        rv = caller()
        if self.blocks is not None:
            start = len("".join(self.blocks))
            self.spans.append((start, start + len(rv)))
        return rv


def make_env():
    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[AssistantTracker, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: NOW.strftime(fmt)
    return env


ENV = make_env()

# name -> (file, bos_token, eos_token). bos/eos are what the model's tokenizer_config.json names (None: not set).
TEMPLATES = {
    "chatml": ("chatml.jinja", None, "<|im_end|>"),
    "qwen2": ("qwen2.jinja", None, "<|im_end|>"),
    "qwen2.5": ("qwen2.5.jinja", None, "<|im_end|>"),
    "qwen3": ("qwen3.jinja", None, "<|im_end|>"),
    "llama3": ("llama3.jinja", "<|begin_of_text|>", "<|eot_id|>"),
    "llama3.1": ("llama3.1.jinja", "<|begin_of_text|>", "<|eot_id|>"),
    "llama3.2": ("llama3.2.jinja", "<|begin_of_text|>", "<|eot_id|>"),
    "gemma2": ("gemma2.jinja", "<bos>", "<eos>"),
    "gemma3": ("gemma3.jinja", "<bos>", "<eos>"),
    "mistral-7b": ("mistral-7b.jinja", "<s>", "</s>"),
    "mistral-nemo": ("mistral-nemo.jinja", "<s>", "</s>"),
    "phi3": ("phi3.jinja", "<s>", "<|endoftext|>"),
    "deepseek-r1-distill": ("deepseek-r1-distill.jinja", "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"),
    "deepseek-r1": ("deepseek-r1.jinja", "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"),
    "smollm2": ("smollm2.jinja", None, "<|im_end|>"),
    "smollm3": ("smollm3.jinja", None, "<|im_end|>"),
    "edge_whitespace": ("edge_whitespace.jinja", "<s>", "</s>"),
    "edge_loops": ("edge_loops.jinja", None, None),
    "edge_macros": ("edge_macros.jinja", "<s>", "</s>"),
    "edge_expressions": ("edge_expressions.jinja", None, None),
    "edge_generation": ("edge_generation.jinja", None, "<|im_end|>"),
}

U = lambda c: {"role": "user", "content": c}
A = lambda c, **kw: dict({"role": "assistant", "content": c}, **kw)
S = lambda c: {"role": "system", "content": c}

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "The city, e.g. \"Paris\""},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
}


def tool_call(arguments):
    return {"id": "call12345", "type": "function", "function": {"name": "get_weather", "arguments": arguments}}


# name -> (messages, tools or None)
CONVERSATIONS = {
    "single": ([U("What is 2+3?")], None),
    "system": ([S("You are a careful math tutor."), U("Solve x+1=3.\nShow work.")], None),
    "multi_turn": ([U("Hi"), A("Hello! How can I help?"), U("Count to 3 ✓")], None),
    "multi_turn_system": ([S("Be brief."), U("Q1"), A("A1"), U("Q2"), A("A2")], None),
    "whitespace": ([U("  padded question \n"), A(" spaced answer  "), U("\tnext\n")], None),
    "unicode_quotes": ([U("Привет 👋 «quotes» \"double\" 'single' \\backslash\\ {{ not jinja }} {% nor this %}")], None),
    "think_history": ([U("Q1"), A("<think>\nplan it\n</think>\n\nA1"), U("Q2")], None),
    "think_last": ([U("Q"), A("<think>\nreason\n</think>\n\nThe answer.")], None),
    "reasoning_content": ([U("Q"), A("A", reasoning_content="\nR\n")], None),
    "tools_dict_args": (
        [S("You are a weather bot."), U("What's the weather in Paris?"),
         A(None, tool_calls=[tool_call({"city": "Paris", "unit": "celsius"})]),
         {"role": "tool", "tool_call_id": "call12345", "name": "get_weather", "content": "{\"temp\": 21}"},
         A("It is 21 °C in Paris.")],
        [WEATHER_TOOL]),
    "tools_string_args": (
        [U("Weather in Oslo?"),
         A(None, tool_calls=[tool_call("{\"city\": \"Oslo\"}")]),
         {"role": "tool", "tool_call_id": "call12345", "name": "get_weather", "content": "-3"},
         {"role": "tool", "tool_call_id": "call12345", "name": "get_weather", "content": "snow"}],
        [WEATHER_TOOL]),
    "tools_offered": ([U("Weather in Rome?")], [WEATHER_TOOL]),
    "tools_empty_content": (
        [U("Weather in Paris and Oslo?"),
         A("", tool_calls=[tool_call({"city": "Paris"}), tool_call("{\"city\": \"Oslo\"}")]),
         {"role": "tool", "tool_call_id": "call12345", "content": "21"},
         {"role": "tool", "tool_call_id": "call12345", "content": "-3"}, A("Paris 21, Oslo -3.")],
        [WEATHER_TOOL]),
}

# Which conversations each template is rendered over (every template gets the first group).
COMMON = ["single", "system", "multi_turn", "multi_turn_system", "whitespace", "unicode_quotes"]
EXTRA = {
    "qwen2.5": ["tools_dict_args", "tools_string_args", "tools_offered", "tools_empty_content"],
    "qwen3": ["think_history", "think_last", "reasoning_content", "tools_dict_args", "tools_offered",
              "tools_empty_content"],
    "llama3.1": ["tools_dict_args", "tools_offered"],
    "llama3.2": ["tools_dict_args", "tools_offered"],
    "mistral-nemo": ["tools_dict_args", "tools_offered"],
    "deepseek-r1-distill": ["think_history", "think_last", "tools_string_args"],
    "deepseek-r1": ["think_history", "think_last", "tools_string_args"],
    "smollm3": ["think_history", "tools_offered"],
    "edge_loops": ["think_history"],
    "edge_expressions": ["tools_dict_args"],
    "edge_generation": ["think_last"],
}
# Extra keyword arguments (apply_chat_template(**kwargs)) per template, each a separate variant.
VARIANTS = {
    "qwen3": [{}, {"enable_thinking": False}, {"enable_thinking": True}],
    "smollm3": [{}, {"enable_thinking": False}],
    "llama3.1": [{}, {"date_string": "01 Jan 2025"}],
    "llama3.2": [{}, {"tools_in_user_message": False}],
    "edge_expressions": [{}, {"enable_thinking": False}],
}


def render(source, messages, tools, add_generation_prompt, bos, eos, variables):
    template = ENV.from_string(source)
    kwargs = {}
    if bos is not None:
        kwargs["bos_token"] = bos
    if eos is not None:
        kwargs["eos_token"] = eos
    kwargs.update(variables)
    blocks, spans = [], []
    tracker = ENV.activate_tracker
    tracker.blocks, tracker.spans = blocks, spans
    try:
        for block in template.generate(messages=messages, tools=tools, documents=None,
                                       add_generation_prompt=add_generation_prompt, **kwargs):
            blocks.append(block)
    finally:
        tracker.blocks, tracker.spans = None, None
    text = "".join(blocks)
    return text, [text[a:b] for a, b in spans]


def main():
    if jinja2.__version__ != "3.1.6":
        print(f"note: jinja2 {jinja2.__version__}; the committed goldens were made with 3.1.6", file=sys.stderr)
    out_path = os.path.join(DIR, "goldens.jsonl")
    n = 0
    with open(out_path, "w", encoding="utf-8") as out:
        for name, (file, bos, eos) in TEMPLATES.items():
            with open(os.path.join(DIR, file), encoding="utf-8") as f:
                source = f.read()
            uses_generation = "generation" in source
            for conv in COMMON + EXTRA.get(name, []):
                messages, tools = CONVERSATIONS[conv]
                for variables in VARIANTS.get(name, [{}]):
                    for gen in (True, False):
                        rec = {"template": file, "case": conv, "messages": messages, "tools": tools,
                               "add_generation_prompt": gen, "variables": variables, "bos_token": bos,
                               "eos_token": eos}
                        try:
                            text, generation = render(source, json.loads(json.dumps(messages)), tools, gen, bos,
                                                      eos, variables)
                            rec["rendered"] = text
                            if uses_generation:
                                rec["generation"] = generation
                        except jinja2.exceptions.TemplateError as e:
                            if type(e) is jinja2.exceptions.TemplateError:
                                rec["raised"] = str(e)
                            else:
                                rec["error"] = f"{type(e).__name__}: {e}"
                        except (TypeError, ValueError, KeyError) as e:
                            rec["error"] = f"{type(e).__name__}: {e}"
                        out.write(json.dumps(rec, ensure_ascii=False) + "\n")
                        n += 1
    print(f"wrote {n} renders of {len(TEMPLATES)} templates to {os.path.relpath(out_path, ROOT)}")


if __name__ == "__main__":
    main()
