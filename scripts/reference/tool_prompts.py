#!/usr/bin/env python3
"""Reference prompts for tool calling: the GGUF's chat template rendered by transformers'
own `render_jinja_template` (what `apply_chat_template(..., tools=...)` does) with tools and a
tool-call history, tokenized by llama.cpp (llama-cpp-python, vocab only).

Usage:
    python tool_prompts.py --gguf PATH --model-id ID --out tests/fixtures/generation/<slug>-tools.json

Each case holds the Workers AI input Ember receives (`input`: tools in the legacy or the OpenAI
form, assistant `tool_calls` with `arguments` as a JSON string as OpenAI clients send them) and
what transformers renders for the same conversation (tools in OpenAI form, `arguments` as an
object), then `prompt_text` and `prompt_tokens`. Ember must produce exactly these tokens.
"""

import argparse
import copy
import json

from llama_cpp import Llama
from transformers.utils.chat_template_utils import render_jinja_template

WEATHER = {
    "name": "get_weather",
    "description": "Current weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "City name"}},
                   "required": ["city"]},
}
TIME = {
    "name": "get_time",
    "description": "Current time in an IANA timezone",
    "parameters": {"type": "object", "properties": {"timezone": {"type": "string"}}, "required": ["timezone"]},
}

CASES = [
    {"name": "tools_legacy_form",
     "input": {"messages": [{"role": "user", "content": "What is the weather in Paris?"}],
               "tools": [WEATHER, TIME]}},
    {"name": "tools_openai_form_with_system",
     "input": {"messages": [{"role": "system", "content": "You are a weather bot."},
                            {"role": "user", "content": "Weather in Zürich?"}],
               "tools": [{"type": "function", "function": WEATHER}]}},
    {"name": "parallel_calls_and_results",
     "input": {"messages": [
         {"role": "user", "content": "Weather in Paris and time in Tokyo?"},
         {"role": "assistant", "content": None, "tool_calls": [
             {"id": "call_a", "type": "function",
              "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}},
             {"id": "call_b", "type": "function",
              "function": {"name": "get_time", "arguments": "{\"timezone\": \"Asia/Tokyo\"}"}}]},
         {"role": "tool", "tool_call_id": "call_a", "content": "{\"temperature_c\": 22}"},
         {"role": "tool", "tool_call_id": "call_b", "content": "21:04"},
         {"role": "user", "content": "Thanks! And in Rome?"}],
         "tools": [WEATHER, TIME]}},
]


def for_transformers(case_input):
    """The same conversation the way transformers takes it."""
    tools = [t if t.get("type") == "function" else {"type": "function", "function": t}
             for t in case_input.get("tools", [])]
    messages = copy.deepcopy(case_input["messages"])
    for message in messages:
        for call in message.get("tool_calls") or []:
            call["function"]["arguments"] = json.loads(call["function"]["arguments"])
        if message.get("content") is None:
            message["content"] = ""
    return messages, tools


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--model-id", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    llm = Llama(model_path=args.gguf, vocab_only=True, verbose=False)
    template = llm.metadata["tokenizer.chat_template"]
    out = []
    for case in CASES:
        messages, tools = for_transformers(case["input"])
        text = render_jinja_template([messages], tools=tools, chat_template=template,
                                     add_generation_prompt=True)[0][0]
        tokens = llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)
        out.append({"name": case["name"], "input": case["input"], "prompt_text": text, "prompt_tokens": tokens})
    fixture = {
        "model": args.model_id,
        "reference": "transformers.utils.chat_template_utils.render_jinja_template + llama_tokenize(add_special, parse_special)",
        "cases": out,
    }
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(fixture, f, ensure_ascii=False, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
