"""End-to-end tests: the official `anthropic` Python SDK's Messages API against Ember.

Run:  EMBER_URL=http://127.0.0.1:8787 python -m pytest -v tests/e2e/test_anthropic_sdk.py

Both base URLs a client may be given: the root (the SDK posts to `{base}/v1/messages`) and
Workers AI's `.../client/v4/accounts/{id}/ai`. The SDK sends its key as `x-api-key`, which Ember
reads like a bearer token. Server setup as in test_openai_sdk.py.
"""

from __future__ import annotations

import os

import anthropic
import pytest
from anthropic import Anthropic

ALIAS = "@cf/meta/llama-3.1-8b-instruct"
ACCOUNT_ID = os.environ.get("EMBER_ACCOUNT_ID", "local")
TOKEN = os.environ.get("EMBER_TOKEN", "dummy")
TIMEOUT = float(os.environ.get("E2E_TIMEOUT", "300"))

WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Get the current weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def base_url(ember_url: str, kind: str) -> str:
    return {"root": ember_url, "cloudflare": f"{ember_url}/client/v4/accounts/{ACCOUNT_ID}/ai"}[kind]


@pytest.fixture(scope="module", params=["root", "cloudflare"])
def client(request, ember_url: str) -> Anthropic:
    return Anthropic(base_url=base_url(ember_url, request.param), api_key=TOKEN, max_retries=0, timeout=TIMEOUT)


def test_text(client: Anthropic):
    message = client.messages.create(
        model=ALIAS, max_tokens=16, system="Answer in one word.", messages=QUESTION
    )
    assert message.id.startswith("msg_") and message.type == "message" and message.role == "assistant"
    assert message.content[0].type == "text"
    assert "paris" in message.content[0].text.lower()
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0


def test_stream(client: Anthropic):
    with client.messages.stream(model=ALIAS, max_tokens=24, messages=QUESTION) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(pieces) > 1, "text arrives in pieces"
    assert final.content[0].text == "".join(pieces)
    assert final.usage.output_tokens > 0 and final.stop_reason in ("end_turn", "max_tokens")


def test_tool_use_round_trip(client: Anthropic):
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = client.messages.create(
        model=ALIAS, max_tokens=64, messages=ask, tools=[WEATHER_TOOL], tool_choice={"type": "any"}
    )
    uses = [block for block in first.content if block.type == "tool_use"]
    assert first.stop_reason == "tool_use" and uses, first.content
    assert uses[0].name == "get_weather" and "city" in uses[0].input
    second = client.messages.create(
        model=ALIAS,
        max_tokens=48,
        tools=[WEATHER_TOOL],
        # The small model might call the tool again; the round trip is what is tested.
        tool_choice={"type": "none"},
        messages=ask
        + [
            {"role": "assistant", "content": first.content},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "Sunny, 24 C"} for use in uses],
            },
        ],
    )
    assert second.content[0].type == "text" and second.content[0].text.strip()


def test_streamed_tool_use(client: Anthropic):
    with client.messages.stream(
        model=ALIAS,
        max_tokens=64,
        messages=[{"role": "user", "content": "Weather in Rome?"}],
        tools=[WEATHER_TOOL],
        tool_choice={"type": "tool", "name": "get_weather"},
    ) as stream:
        final = stream.get_final_message()
    uses = [block for block in final.content if block.type == "tool_use"]
    assert final.stop_reason == "tool_use"
    assert uses and uses[0].name == "get_weather" and isinstance(uses[0].input, dict) and "city" in uses[0].input


def test_errors(client: Anthropic, ember_url: str):
    with pytest.raises(anthropic.NotFoundError):
        client.messages.create(model="@cf/no/such-model", max_tokens=8, messages=QUESTION)
    with pytest.raises(anthropic.BadRequestError) as bad:
        client.messages.create(model=ALIAS, max_tokens=8, messages=[{"role": "wizard", "content": "hi"}])
    assert "messages[0].role" in str(bad.value)
    with pytest.raises(anthropic.BadRequestError):
        client.post("/v1/messages", cast_to=object, body={"model": ALIAS, "messages": QUESTION})


def test_a_wrong_key_is_refused(ember_url: str):
    if TOKEN == "dummy":
        pytest.skip("dev mode takes any key")
    wrong = Anthropic(base_url=ember_url, api_key="wrong", max_retries=0, timeout=TIMEOUT)
    with pytest.raises(anthropic.AuthenticationError):
        wrong.messages.create(model=ALIAS, max_tokens=8, messages=QUESTION)
