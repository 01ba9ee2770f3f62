"""End-to-end tests: tool calling and JSON mode through the official `openai` SDK, the native
REST route (`/ai/run`) and the Worker binding route (`/run`), against a running Ember serving
Qwen2.5-Coder-0.5B (see test_openai_sdk.py for the setup).

JSON mode is enforced by constrained decoding, so every output must validate against its schema
(checked with the `jsonschema` package), whatever the model would have liked to write. Tool calls
must name a tool and carry arguments that validate against its parameters.

Run:  EMBER_URL=http://127.0.0.1:8787 python -m pytest -v tests/e2e/test_structured_output.py
"""

from __future__ import annotations

import json
import os

import httpx
import jsonschema
import openai
import pytest
from openai import OpenAI

QWEN = "@hf/qwen/qwen2.5-coder-0.5b-instruct"
# Steadier at tool calling than the 0.5B: it makes parallel calls.
QWEN_1_5B = "@hf/qwen/qwen2.5-coder-1.5b-instruct"
ACCOUNT_ID = os.environ.get("EMBER_ACCOUNT_ID", "local")
TOKEN = os.environ.get("EMBER_TOKEN", "dummy")
TIMEOUT = float(os.environ.get("E2E_TIMEOUT", "300"))

# Strings and arrays are bounded so that every answer ends well inside max_tokens.
NAME = {"type": "string", "maxLength": 30}
SCHEMAS = {
    "country": {
        "type": "object",
        "properties": {
            "name": NAME,
            "capital": NAME,
            "languages": {"type": "array", "items": NAME, "minItems": 1, "maxItems": 3},
        },
        "required": ["name", "capital", "languages"],
    },
    "nested_person": {
        "type": "object",
        "properties": {
            "name": NAME,
            "address": {
                "type": "object",
                "properties": {"street": NAME, "city": NAME, "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
                "required": ["street", "city", "zip"],
            },
        },
        "required": ["name", "address"],
    },
    "enum_color": {
        "type": "object",
        "properties": {"color": {"type": "string", "enum": ["red", "green", "blue"]}},
        "required": ["color"],
    },
    "bounded_number": {
        "type": "object",
        "properties": {"temperature_c": {"type": "number", "minimum": -50, "maximum": 60}},
        "required": ["temperature_c"],
    },
    "bounded_integer": {
        "type": "object",
        "properties": {"age": {"type": "integer", "minimum": 0, "maximum": 120}, "name": NAME},
        "required": ["age", "name"],
    },
    "array_of_objects": {
        "type": "object",
        "properties": {
            "items": {
                "type": "array",
                "minItems": 1,
                "maxItems": 3,
                "items": {
                    "type": "object",
                    "properties": {"name": NAME, "quantity": {"type": "integer", "minimum": 1, "maximum": 99}},
                    "required": ["name", "quantity"],
                },
            }
        },
        "required": ["items"],
    },
    "boolean_and_reason": {
        "type": "object",
        "properties": {"is_prime": {"type": "boolean"}, "reason": {"type": "string", "maxLength": 60}},
        "required": ["is_prime", "reason"],
    },
    "matrix": {
        "type": "object",
        "properties": {
            "matrix": {
                "type": "array",
                "minItems": 2,
                "maxItems": 2,
                "items": {"type": "array", "minItems": 2, "maxItems": 2, "items": {"type": "integer"}},
            }
        },
        "required": ["matrix"],
    },
    "integer_enum_and_const": {
        "type": "object",
        "properties": {"level": {"enum": [1, 2, 3]}, "unit": {"const": "m"}},
        "required": ["level", "unit"],
    },
    "optional_fields": {
        "type": "object",
        "properties": {
            "title": NAME,
            "tags": {"type": "array", "items": NAME, "maxItems": 3},
            "rating": {"type": "number", "minimum": 0, "maximum": 5},
        },
        "required": ["title", "rating"],
    },
    "string_lengths_no_extras": {
        "type": "object",
        "properties": {"code": {"type": "string", "minLength": 3, "maxLength": 5}},
        "required": ["code"],
        "additionalProperties": False,
    },
}


def closed(schema):
    """Objects take no properties beyond those listed, as OpenAI's strict mode requires (and
    so that a small model cannot keep adding keys until max_tokens)."""
    if isinstance(schema, dict):
        schema = {key: closed(value) for key, value in schema.items()}
        if schema.get("type") == "object":
            schema.setdefault("additionalProperties", False)
    elif isinstance(schema, list):
        schema = [closed(item) for item in schema]
    return schema


SCHEMAS = {name: closed(schema) for name, schema in SCHEMAS.items()}
PROMPTS = {
    "country": "Describe France.",
    "nested_person": "Invent a person living in Paris.",
    "enum_color": "What color is the sky?",
    "bounded_number": "How warm is a summer day in Rome?",
    "bounded_integer": "Invent a person and their age.",
    "array_of_objects": "List a small grocery order.",
    "boolean_and_reason": "Is 7 a prime number?",
    "matrix": "Give the 2x2 identity matrix.",
    "integer_enum_and_const": "Pick a difficulty level and a unit of length.",
    "optional_fields": "Review the movie Casablanca.",
    "string_lengths_no_extras": "Give a short airport code.",
}

WEATHER = {
    "name": "get_weather",
    "description": "Current weather for a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 40}},
        "required": ["city"],
    },
}
TIME = {
    "name": "get_time",
    "description": "Current time in an IANA timezone",
    "parameters": {
        "type": "object",
        "properties": {"timezone": {"type": "string", "maxLength": 40}},
        "required": ["timezone"],
    },
}
OPENAI_TOOLS = [{"type": "function", "function": tool} for tool in (WEATHER, TIME)]
PARAMETERS = {tool["name"]: tool["parameters"] for tool in (WEATHER, TIME)}


@pytest.fixture(scope="session")
def client(ember_url: str) -> OpenAI:
    return OpenAI(base_url=f"{ember_url}/v1", api_key=TOKEN, max_retries=0, timeout=TIMEOUT)


def native(ember_url: str, inputs: dict, model: str = QWEN) -> dict:
    """POST /ai/run: returns the envelope's result."""
    reply = httpx.post(
        f"{ember_url}/client/v4/accounts/{ACCOUNT_ID}/ai/run/{model}",
        json=inputs,
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=TIMEOUT,
    )
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["success"] is True, body
    return body["result"]


def binding(ember_url: str, inputs: dict, model: str = QWEN) -> dict:
    """What an unmodified Worker's env.AI.run sends: the bare result comes back."""
    reply = httpx.post(
        f"{ember_url}/run?version=3",
        json={"inputs": inputs, "options": {}},
        headers={"cf-consn-model-id": model, "Authorization": f"Bearer {TOKEN}"},
        timeout=TIMEOUT,
    )
    assert reply.status_code == 200, reply.text
    return reply.json()


def sse_data(ember_url: str, inputs: dict, model: str = QWEN) -> list[dict]:
    """A native stream's events, parsed, up to [DONE]."""
    events = []
    with httpx.stream(
        "POST",
        f"{ember_url}/client/v4/accounts/{ACCOUNT_ID}/ai/run/{model}",
        json={**inputs, "stream": True},
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=TIMEOUT,
    ) as reply:
        assert reply.status_code == 200
        for line in reply.iter_lines():
            if line.startswith("data: "):
                data = line[len("data: ") :]
                if data == "[DONE]":
                    return events
                events.append(json.loads(data))
    pytest.fail("the stream ended without [DONE]")


def chat(prompt: str) -> list[dict]:
    return [{"role": "user", "content": prompt}]


def check_call(name: str, arguments: dict):
    assert name in PARAMETERS, name
    jsonschema.validate(arguments, PARAMETERS[name])


# ---------------------------------------------------------------- JSON mode


@pytest.mark.parametrize("case", sorted(SCHEMAS))
def test_openai_json_schema_output_validates(client: OpenAI, case: str):
    completion = client.chat.completions.create(
        model=QWEN,
        messages=chat(PROMPTS[case]),
        max_tokens=200,
        temperature=0,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": case, "schema": SCHEMAS[case], "strict": True},
        },
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "stop", choice
    jsonschema.validate(json.loads(choice.message.content), SCHEMAS[case])


@pytest.mark.parametrize("case", ["country", "array_of_objects", "integer_enum_and_const"])
def test_native_and_binding_json_schema_return_objects(ember_url: str, case: str):
    inputs = {
        "messages": chat(PROMPTS[case]),
        "max_tokens": 200,
        "temperature": 0,
        "response_format": {"type": "json_schema", "json_schema": SCHEMAS[case]},
    }
    for result in (native(ember_url, inputs), binding(ember_url, inputs)):
        # Natively, JSON mode answers with the parsed object, not a string.
        assert isinstance(result["response"], dict), result
        jsonschema.validate(result["response"], SCHEMAS[case])


def test_json_object_mode_streams_on_both_routes(client: OpenAI, ember_url: str):
    stream = client.chat.completions.create(
        model=QWEN,
        messages=chat("Describe a cat as JSON."),
        max_tokens=120,
        temperature=0,
        stream=True,
        response_format={"type": "json_object"},
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert isinstance(json.loads(text), dict)
    events = sse_data(
        ember_url,
        {
            "messages": chat(PROMPTS["enum_color"]),
            "max_tokens": 60,
            "temperature": 0,
            "response_format": {"type": "json_schema", "json_schema": SCHEMAS["enum_color"]},
        },
    )
    text = "".join(event.get("response", "") for event in events)
    jsonschema.validate(json.loads(text), SCHEMAS["enum_color"])


# ---------------------------------------------------------------- tools


def test_openai_tool_call(client: OpenAI):
    completion = client.chat.completions.create(
        model=QWEN,
        messages=chat("What is the weather in Paris?"),
        tools=OPENAI_TOOLS,
        max_tokens=120,
        temperature=0,
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    calls = choice.message.tool_calls
    assert calls and calls[0].id.startswith("call_") and calls[0].type == "function"
    for call in calls:
        check_call(call.function.name, json.loads(call.function.arguments))
    assert calls[0].function.name == "get_weather"
    assert "paris" in json.loads(calls[0].function.arguments)["city"].lower()
    assert not (choice.message.content or "").strip().startswith(("<tool_call>", "```", "{"))


def test_openai_forced_tool_choices(client: OpenAI):
    named = client.chat.completions.create(
        model=QWEN,
        messages=chat("Hello there!"),
        tools=OPENAI_TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        max_tokens=120,
        temperature=0,
    )
    calls = named.choices[0].message.tool_calls
    assert named.choices[0].finish_reason == "tool_calls"
    assert [c.function.name for c in calls] == ["get_time"]
    check_call("get_time", json.loads(calls[0].function.arguments))
    required = client.chat.completions.create(
        model=QWEN,
        messages=chat("Tell me a joke."),
        tools=OPENAI_TOOLS,
        tool_choice="required",
        max_tokens=120,
        temperature=0,
    )
    calls = required.choices[0].message.tool_calls
    assert calls, required
    for call in calls:
        check_call(call.function.name, json.loads(call.function.arguments))
    none = client.chat.completions.create(
        model=QWEN,
        messages=chat("What is the weather in Paris?"),
        tools=OPENAI_TOOLS,
        tool_choice="none",
        max_tokens=40,
        temperature=0,
    )
    assert none.choices[0].message.tool_calls is None
    assert none.choices[0].message.content


def test_openai_streamed_tool_call_deltas(client: OpenAI):
    stream = client.chat.completions.create(
        model=QWEN,
        messages=chat("What is the weather in Paris?"),
        tools=OPENAI_TOOLS,
        max_tokens=120,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    calls: dict[int, dict] = {}
    content, finish, usage = "", None, None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            content += choice.delta.content or ""
            finish = choice.finish_reason or finish
            for delta in choice.delta.tool_calls or []:
                call = calls.setdefault(delta.index, {"id": None, "name": None, "arguments": ""})
                if delta.id:
                    assert call["id"] is None, "the id comes once"
                    call["id"] = delta.id
                if delta.function and delta.function.name:
                    call["name"] = delta.function.name
                if delta.function and delta.function.arguments:
                    call["arguments"] += delta.function.arguments
    assert finish == "tool_calls"
    assert usage and usage.completion_tokens > 0
    assert "<tool_call>" not in content and "```" not in content
    assert calls[0]["id"].startswith("call_") and calls[0]["name"] == "get_weather"
    check_call(calls[0]["name"], json.loads(calls[0]["arguments"]))


def test_openai_multi_turn_with_tool_results(client: OpenAI):
    completion = client.chat.completions.create(
        model=QWEN,
        messages=[
            {"role": "user", "content": "What is the weather in Paris and the time in Tokyo?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
                    {"id": "call_b", "type": "function", "function": {"name": "get_time", "arguments": '{"timezone": "Asia/Tokyo"}'}},
                ],
            },
            {"role": "tool", "tool_call_id": "call_a", "content": '{"temperature_c": 22, "sky": "sunny"}'},
            {"role": "tool", "tool_call_id": "call_b", "content": '{"time": "21:04"}'},
        ],
        tools=OPENAI_TOOLS,
        max_tokens=80,
        temperature=0,
    )
    choice = completion.choices[0]
    # The history (two parallel calls and their results) reaches the model through its own
    # template (checked token for token in the Rust reference test); what the small model
    # answers is either text or calls that validate.
    assert choice.finish_reason in ("stop", "tool_calls", "length")
    for call in choice.message.tool_calls or []:
        check_call(call.function.name, json.loads(call.function.arguments))
    assert completion.usage.prompt_tokens > 200


def test_native_and_binding_tool_calls(ember_url: str):
    inputs = {
        "messages": chat("What is the weather in Paris?"),
        "tools": [WEATHER, TIME],  # Workers AI's legacy form
        "max_tokens": 120,
        "temperature": 0,
    }
    for result in (native(ember_url, inputs), binding(ember_url, inputs)):
        calls = result["tool_calls"]
        assert calls[0]["name"] == "get_weather", result
        assert isinstance(calls[0]["arguments"], dict)
        check_call(calls[0]["name"], calls[0]["arguments"])
    events = sse_data(ember_url, inputs)
    with_calls = [event for event in events if event.get("tool_calls")]
    assert len(with_calls) == 1 and with_calls[0]["response"] == ""
    assert with_calls[0]["tool_calls"][0]["name"] == "get_weather"
    assert "usage" in events[-1]
    text = "".join(event.get("response", "") for event in events)
    assert "<tool_call>" not in text and "```" not in text


PARALLEL = [
    {
        "role": "system",
        "content": "You are a helpful assistant. When the user asks about several things, call every "
        "tool needed at once: one <tool_call></tool_call> block per call, all in the same reply.",
    },
    {"role": "user", "content": "What's the weather in Paris, and what time is it in Tokyo?"},
]
PARALLEL_TOKENS = 160


def check_parallel(calls: list[tuple[str, dict]]):
    """Two calls in one answer: the weather in Paris and the time in Tokyo."""
    assert [name for name, _ in calls] == ["get_weather", "get_time"], calls
    for name, arguments in calls:
        check_call(name, arguments)
    assert "paris" in calls[0][1]["city"].lower()
    assert "tokyo" in calls[1][1]["timezone"].lower()


def test_openai_parallel_tool_calls(client: OpenAI):
    completion = client.chat.completions.create(
        model=QWEN_1_5B, messages=PARALLEL, tools=OPENAI_TOOLS, max_tokens=PARALLEL_TOKENS, temperature=0
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    calls = choice.message.tool_calls
    assert len({call.id for call in calls}) == len(calls)
    check_parallel([(c.function.name, json.loads(c.function.arguments)) for c in calls])
    assert not (choice.message.content or "").strip()

    stream = client.chat.completions.create(
        model=QWEN_1_5B,
        messages=PARALLEL,
        tools=OPENAI_TOOLS,
        max_tokens=PARALLEL_TOKENS,
        temperature=0,
        stream=True,
    )
    streamed: dict[int, dict] = {}
    content, finish = "", None
    for chunk in stream:
        for choice in chunk.choices:
            content += choice.delta.content or ""
            finish = choice.finish_reason or finish
            for delta in choice.delta.tool_calls or []:
                call = streamed.setdefault(delta.index, {"id": None, "name": None, "arguments": ""})
                call["id"] = call["id"] or delta.id
                if delta.function and delta.function.name:
                    call["name"] = delta.function.name
                if delta.function and delta.function.arguments:
                    call["arguments"] += delta.function.arguments
    assert finish == "tool_calls" and not content.strip(), content
    assert sorted(streamed) == [0, 1] and all(call["id"] for call in streamed.values())
    check_parallel([(streamed[i]["name"], json.loads(streamed[i]["arguments"])) for i in (0, 1)])


def test_native_and_binding_parallel_tool_calls(ember_url: str):
    inputs = {"messages": PARALLEL, "tools": [WEATHER, TIME], "max_tokens": PARALLEL_TOKENS, "temperature": 0}
    for result in (native(ember_url, inputs, QWEN_1_5B), binding(ember_url, inputs, QWEN_1_5B)):
        check_parallel([(call["name"], call["arguments"]) for call in result["tool_calls"]])
    events = sse_data(ember_url, inputs, QWEN_1_5B)
    with_calls = [event for event in events if event.get("tool_calls")]
    assert len(with_calls) == 1, events
    check_parallel([(call["name"], call["arguments"]) for call in with_calls[0]["tool_calls"]])


def test_stop_sequences_are_not_emitted(client: OpenAI, ember_url: str):
    completion = client.chat.completions.create(
        model=QWEN,
        messages=chat("Count from 1 to 10, separated by spaces."),
        max_tokens=60,
        temperature=0,
        stop=["5"],
    )
    text = completion.choices[0].message.content
    assert completion.choices[0].finish_reason == "stop"
    assert "5" not in text and "4" in text
    events = sse_data(
        ember_url,
        {"messages": chat("Count from 1 to 10, separated by spaces."), "max_tokens": 60, "temperature": 0, "stop": "5"},
    )
    streamed = "".join(event.get("response", "") for event in events)
    assert streamed == text


def test_structured_output_errors(client: OpenAI):
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(
            model=QWEN,
            messages=chat("Hi"),
            tools=OPENAI_TOOLS,
            tool_choice={"type": "function", "function": {"name": "get_stock_price"}},
        )
    assert error.value.param == "tool_choice.function.name"
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(
            model=QWEN,
            messages=chat("Hi"),
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "properties": {"a": {"type": "strng"}}}}},
        )
    assert error.value.param == "response_format.json_schema"
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(model=QWEN, messages=chat("Hi"), stop=["a", "b", "c", "d", "e"])
    assert error.value.param == "stop"
