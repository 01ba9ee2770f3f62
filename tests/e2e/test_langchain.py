"""End-to-end tests: LangChain's Python Workers AI classes (`langchain-cloudflare`) against Ember.

Run:  EMBER_URL=http://127.0.0.1:8787 python -m pytest -v tests/e2e/test_langchain.py

`ChatCloudflareWorkersAI` takes a base URL (`base_url`, default `https://api.cloudflare.com/client/v4`)
and two endpoint formats, Workers AI's `/ai/run/{model}` and the OpenAI-compatible
`/ai/v1/chat/completions`; `CloudflareWorkersAIEmbeddings` takes `api_base_url` (default
`https://api.cloudflare.com/client/v4/accounts`). Nothing else changes. Server setup as in
test_openai_sdk.py.
"""

from __future__ import annotations

import math
import os

import pytest
from langchain_cloudflare import ChatCloudflareWorkersAI, CloudflareWorkersAIEmbeddings
from pydantic import BaseModel, Field

ALIAS = "@cf/meta/llama-3.1-8b-instruct"
GEMMA_EMBED = "@cf/google/embeddinggemma-300m"
ACCOUNT_ID = os.environ.get("EMBER_ACCOUNT_ID", "local")
TOKEN = os.environ.get("EMBER_TOKEN", "dummy")


@pytest.fixture(scope="module", params=["workers_ai", "openai_compatible"])
def chat(request, ember_url: str) -> ChatCloudflareWorkersAI:
    return ChatCloudflareWorkersAI(
        model=ALIAS,
        account_id=ACCOUNT_ID,
        api_token=TOKEN,
        base_url=f"{ember_url}/client/v4",
        endpoint_format=request.param,
        max_tokens=48,
        temperature=0,
        max_retries=0,
    )


def test_invoke(chat: ChatCloudflareWorkersAI):
    reply = chat.invoke([("system", "Answer in one word."), ("human", "What is the capital of France?")])
    assert "paris" in reply.content.lower()


def test_stream(chat: ChatCloudflareWorkersAI):
    pieces = [chunk.content for chunk in chat.stream("Count from one to five.")]
    assert len([p for p in pieces if p]) > 1, "text arrives in pieces"
    assert "".join(pieces).strip()


class Weather(BaseModel):
    """Get the current weather in a city."""

    city: str = Field(description="The city")


def test_tool_call(chat: ChatCloudflareWorkersAI):
    reply = chat.bind_tools([Weather], tool_choice="Weather").invoke("What is the weather in Paris?")
    assert reply.tool_calls, reply
    assert reply.tool_calls[0]["name"] == "Weather"
    assert isinstance(reply.tool_calls[0]["args"].get("city"), str)


class City(BaseModel):
    name: str
    country: str


def test_structured_output(chat: ChatCloudflareWorkersAI):
    # method="json_schema": constrained JSON. The default, function calling with the tool not
    # forced, leaves the choice to the model, which a 0.5B one may answer in prose.
    structured = chat.with_structured_output(City, method="json_schema")
    city = structured.invoke("Name the capital of Japan and its country.")
    assert isinstance(city, City) and city.name and city.country


def test_embeddings(ember_url: str):
    embeddings = CloudflareWorkersAIEmbeddings(
        account_id=ACCOUNT_ID,
        api_token=TOKEN,
        api_base_url=f"{ember_url}/client/v4/accounts",
        model_name=GEMMA_EMBED,
    )
    vectors = embeddings.embed_documents(["The quick brown fox.", "Rust is a systems language."])
    assert len(vectors) == 2 and all(len(v) == 768 for v in vectors)
    assert all(math.isfinite(x) for v in vectors for x in v) and vectors[0] != vectors[1]
    assert len(embeddings.embed_query("hello")) == 768
