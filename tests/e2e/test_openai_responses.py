"""End-to-end tests: the official `openai` Python SDK's Responses API against Ember.

Run:  EMBER_URL=http://127.0.0.1:8787 python -m pytest -v tests/e2e/test_openai_responses.py

Uses the same environment and server setup as test_openai_sdk.py (the `@cf/meta/llama-3.1-8b-instruct`
alias for Qwen2.5-Coder-0.5B, which calls tools and follows JSON schemas by constrained decoding).
Assertions are on structure and on what constrained decoding guarantees, not on clever content.
"""

from __future__ import annotations

import json
import os

import jsonschema
import openai
import pytest
from openai import OpenAI

ALIAS = "@cf/meta/llama-3.1-8b-instruct"
ACCOUNT_ID = os.environ.get("EMBER_ACCOUNT_ID", "local")
TOKEN = os.environ.get("EMBER_TOKEN", "dummy")
TIMEOUT = float(os.environ.get("E2E_TIMEOUT", "300"))

WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Get the current weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


@pytest.fixture(scope="module", params=["cloudflare", "root"])
def client(request, ember_url: str) -> OpenAI:
    base = {
        "cloudflare": f"{ember_url}/client/v4/accounts/{ACCOUNT_ID}/ai/v1",
        "root": f"{ember_url}/v1",
    }[request.param]
    return OpenAI(base_url=base, api_key=TOKEN, max_retries=0, timeout=TIMEOUT)


def test_text(client: OpenAI):
    response = client.responses.create(
        model=ALIAS,
        instructions="Answer in one word.",
        input="What is the capital of France?",
        max_output_tokens=16,
        temperature=0,
    )
    assert response.id.startswith("resp_")
    assert response.object == "response"
    assert response.status in ("completed", "incomplete")
    assert "paris" in response.output_text.lower()
    assert response.output[0].type == "message"
    assert response.usage.input_tokens > 0 and response.usage.output_tokens > 0
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens
    assert response.instructions == "Answer in one word."


def test_stream_events_add_up_to_the_response(client: OpenAI):
    events = list(
        client.responses.create(
            model=ALIAS, input="Count from one to five.", max_output_tokens=24, temperature=0, stream=True
        )
    )
    kinds = [event.type for event in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    assert [event.sequence_number for event in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert kinds.count("response.output_text.delta") > 1, "text arrives in pieces"
    final = events[-1].response
    assert deltas == final.output_text
    done = [e for e in events if e.type == "response.output_text.done"]
    assert len(done) == 1 and done[0].text == deltas


def test_sdk_stream_helper(client: OpenAI):
    with client.responses.stream(model=ALIAS, input="Say hi.", max_output_tokens=64, temperature=0) as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert final.output_text == text and text


def test_tool_call_round_trip_with_previous_response_id(client: OpenAI):
    first = client.responses.create(
        model=ALIAS,
        input="What is the weather in Paris?",
        tools=[WEATHER_TOOL],
        tool_choice="required",
        max_output_tokens=64,
    )
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) >= 1, first.output
    assert calls[0].name == "get_weather"
    assert "city" in json.loads(calls[0].arguments)
    second = client.responses.create(
        model=ALIAS,
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 24 C"} for call in calls],
        tools=[WEATHER_TOOL],
        # The small model might call the tool again; the round trip is what is tested.
        tool_choice="none",
        max_output_tokens=48,
    )
    assert second.output_text.strip(), second.output
    assert second.previous_response_id == first.id
    # The second request carried the first conversation: more input than its question alone.
    alone = client.responses.create(
        model=ALIAS, input="What is the weather in Paris?", tools=[WEATHER_TOOL], tool_choice="none", max_output_tokens=4
    )
    assert second.usage.input_tokens > alone.usage.input_tokens + 5


def test_streamed_tool_call(client: OpenAI):
    events = list(
        client.responses.create(
            model=ALIAS,
            input="What is the weather in Rome?",
            tools=[WEATHER_TOOL],
            tool_choice={"type": "function", "name": "get_weather"},
            max_output_tokens=64,
            stream=True,
        )
    )
    added = [e for e in events if e.type == "response.output_item.added" and e.item.type == "function_call"]
    assert len(added) == 1
    arguments = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert done[0].arguments == arguments or json.loads(done[0].arguments) == json.loads(arguments)
    final = events[-1].response
    assert final.output[-1].type == "function_call" and final.output[-1].name == "get_weather"


def test_structured_output(client: OpenAI):
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
        "required": ["city", "population"],
        "additionalProperties": False,
    }
    response = client.responses.create(
        model=ALIAS,
        input="Give the largest city of Japan and its population as JSON.",
        text={"format": {"type": "json_schema", "name": "city", "schema": schema, "strict": True}},
        max_output_tokens=64,
    )
    jsonschema.validate(json.loads(response.output_text), schema)


def test_retrieve_and_delete(client: OpenAI):
    created = client.responses.create(model=ALIAS, input="Say yes.", max_output_tokens=4)
    kept = client.responses.retrieve(created.id)
    assert kept.id == created.id and kept.output_text == created.output_text
    deleted = client.responses.delete(created.id)
    assert deleted is None or getattr(deleted, "deleted", True)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)


def test_store_false_keeps_nothing(client: OpenAI):
    created = client.responses.create(model=ALIAS, input="Say no.", max_output_tokens=4, store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)


def test_errors_name_the_field(client: OpenAI):
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model=ALIAS, input="hi", previous_response_id="resp_missing")
    with pytest.raises(openai.BadRequestError) as missing:
        client.responses.create(model=ALIAS)
    assert missing.value.param == "input"
    with pytest.raises(openai.BadRequestError) as tool:
        client.responses.create(model=ALIAS, input="hi", tools=[{"type": "web_search_preview"}])
    assert tool.value.param == "tools[0].type"
    with pytest.raises(openai.BadRequestError) as role:
        client.responses.create(model=ALIAS, input=[{"role": "wizard", "content": "hi"}])
    assert role.value.param == "input[0].role"
