"""End-to-end tests: the official `openai` Python SDK against Ember's OpenAI-compatible API.

Run:  EMBER_URL=http://127.0.0.1:8787 python -m pytest -v tests/e2e/test_openai_sdk.py

Env:
  EMBER_URL         base URL of a running Ember (required), e.g. http://127.0.0.1:8787
  EMBER_TOKEN       bearer token to send (default "dummy")
  EMBER_ACCOUNT_ID  account id used in paths (default "local")
  E2E_TIMEOUT       per-request timeout in seconds (default 300; CPU inference can be slow)

Ember is expected to be started with
  --alias @cf/meta/llama-3.1-8b-instruct=@hf/qwen/qwen2.5-coder-0.5b-instruct
and to host @hf/qwen/qwen2.5-coder-0.5b-instruct, @cf/google/embeddinggemma-300m and
@hf/sentence-transformers/all-minilm-l6-v2.

Every test runs against both base URLs a client may be given: Cloudflare's
`.../client/v4/accounts/{id}/ai/v1` and the OpenAI-style root `/v1`.

Facts about openai==3.51.0 that these tests rely on (read from the installed package):
  * `embeddings.create` without `encoding_format` asks for "base64" and decodes the little-endian
    f32 bytes itself; with `encoding_format="float"` it returns the JSON numbers untouched.
  * Errors are raised by HTTP status (400 BadRequestError, 404 NotFoundError, ...) with
    `.param`, `.code` and `.type` read from the body's `error` object.
  * In a stream, any event whose data holds an `error` object raises `openai.APIError`.
"""

from __future__ import annotations

import base64
import json
import math
import os
from pathlib import Path

import httpx
import openai
import pytest
from openai import OpenAI

ALIAS = "@cf/meta/llama-3.1-8b-instruct"
QWEN = "@hf/qwen/qwen2.5-coder-0.5b-instruct"
GEMMA_EMBED = "@cf/google/embeddinggemma-300m"
MINILM = "@hf/sentence-transformers/all-minilm-l6-v2"
MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant. Answer briefly."},
    {"role": "user", "content": "What is the capital of France?"},
]

ACCOUNT_ID = os.environ.get("EMBER_ACCOUNT_ID", "local")
TOKEN = os.environ.get("EMBER_TOKEN", "dummy")
TIMEOUT = float(os.environ.get("E2E_TIMEOUT", "300"))


@pytest.fixture(scope="session", params=["cloudflare", "root"])
def client(request, ember_url: str) -> OpenAI:
    base = {
        "cloudflare": f"{ember_url}/client/v4/accounts/{ACCOUNT_ID}/ai/v1",
        "root": f"{ember_url}/v1",
    }[request.param]
    # max_retries=0: a failure should show up as a failure, not be retried away.
    return OpenAI(base_url=base, api_key=TOKEN, max_retries=0, timeout=TIMEOUT)


# ---------------------------------------------------------------- chat completions


def test_chat(client: OpenAI):
    raw = client.chat.completions.with_raw_response.create(
        model=ALIAS, messages=MESSAGES, max_tokens=24, temperature=0
    )
    assert raw.headers.get("x-ember-model") == QWEN
    completion = raw.parse()
    assert completion.id.startswith("chatcmpl-")
    assert completion.object == "chat.completion"
    assert completion.model == ALIAS
    assert len(completion.choices) == 1
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert "Paris" in choice.message.content, choice.message.content
    assert choice.finish_reason in ("stop", "length")
    usage = completion.usage
    assert usage.prompt_tokens > 0 and 0 < usage.completion_tokens <= 24
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.prompt_tokens_details.cached_tokens >= 0


def test_chat_max_completion_tokens_and_content_parts(client: OpenAI):
    completion = client.chat.completions.create(
        model=QWEN,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Count from one to twenty"},
                    {"type": "text", "text": " in words."},
                ],
            }
        ],
        max_completion_tokens=3,
        temperature=0,
        seed=7,
        user="e2e",
    )
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 3


FIXTURES = Path(__file__).parents[2] / "crates/ember-engines/tests/fixtures"


def test_chat_with_an_image(client: OpenAI):
    # The tiny Gemma 3 with its image encoder (random weights): the text llama-mtmd-cli made.
    case = json.loads((FIXTURES / "vlm/reference.json").read_text())["cases"][0]
    image = base64.b64encode((FIXTURES / "vision/images" / case["image"]).read_bytes()).decode()
    completion = client.chat.completions.create(
        model="@hf/ember/tiny-gemma3-vision",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image}"}},
                    {"type": "text", "text": case["prompt"]},
                ],
            }
        ],
        max_tokens=16,
        temperature=0,
    )
    assert completion.choices[0].message.content == case["generated_text"]


def test_chat_image_url_is_400_naming_the_part(client: OpenAI):
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(
            model="@hf/ember/tiny-gemma3-vision",
            messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}],
        )
    assert error.value.param == "messages[0].content[0].image_url", error.value.body


def test_chat_stream_with_usage(client: OpenAI):
    stream = client.chat.completions.create(
        model=ALIAS,
        messages=MESSAGES,
        max_tokens=24,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks, "no chunks"
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    assert all(c.object == "chat.completion.chunk" and c.model == ALIAS for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    *content, usage_chunk = chunks
    text = "".join(c.choices[0].delta.content or "" for c in content)
    assert "Paris" in text, text
    assert content[-1].choices[0].finish_reason in ("stop", "length")
    assert all(c.usage is None for c in content)
    assert usage_chunk.choices == []
    assert 0 < usage_chunk.usage.completion_tokens <= 24


def test_chat_stream_without_usage(client: OpenAI):
    stream = client.chat.completions.create(
        model=QWEN, messages=MESSAGES, max_tokens=8, stream=True
    )
    chunks = list(stream)
    assert all(c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


# ---------------------------------------------------------------- completions


def test_completions(client: OpenAI):
    completion = client.completions.create(
        model=QWEN, prompt="def fibonacci(n):", max_tokens=16, temperature=0
    )
    assert completion.id.startswith("cmpl-")
    assert completion.object == "text_completion"
    assert completion.choices[0].text.strip(), completion
    assert completion.choices[0].finish_reason in ("stop", "length")
    # The raw prompt, no chat template around it.
    assert completion.usage.prompt_tokens < 10, completion.usage


def test_completions_stream(client: OpenAI):
    stream = client.completions.create(
        model=ALIAS,
        prompt="def fibonacci(n):",
        max_tokens=16,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text.strip()
    assert chunks[-1].usage.completion_tokens > 0


# ---------------------------------------------------------------- embeddings


@pytest.mark.parametrize("model, dims", [(GEMMA_EMBED, 768), (MINILM, 384)])
def test_embeddings(client: OpenAI, model: str, dims: int):
    texts = ["The quick brown fox.", "Rust is a systems language."]
    # The SDK's default: base64, decoded by the SDK.
    decoded = client.embeddings.create(model=model, input=texts)
    floats = client.embeddings.create(model=model, input=texts, encoding_format="float", dimensions=dims)
    assert decoded.object == "list" and decoded.model == model
    assert [d.index for d in decoded.data] == [0, 1]
    assert decoded.usage.prompt_tokens > 0
    assert decoded.usage.total_tokens == decoded.usage.prompt_tokens
    for a, b in zip(decoded.data, floats.data):
        assert len(a.embedding) == dims
        assert a.embedding == b.embedding
        assert math.isclose(math.sqrt(sum(x * x for x in a.embedding)), 1.0, rel_tol=1e-3)
    assert decoded.data[0].embedding != decoded.data[1].embedding

    single = client.embeddings.create(model=model, input="one text", encoding_format="float")
    assert len(single.data) == 1 and len(single.data[0].embedding) == dims


# ---------------------------------------------------------------- models


SPEECH = Path(__file__).parents[2] / "crates/ember-engines/tests/fixtures/whisper/short.wav"


def test_audio_transcriptions(client: OpenAI):
    # `whisper-1`, the SDK's usual model name, is served by @cf/openai/whisper.
    with SPEECH.open("rb") as audio:
        transcript = client.audio.transcriptions.create(model="whisper-1", file=audio)
    assert "lazy dog" in transcript.text.lower(), transcript
    with SPEECH.open("rb") as audio:
        verbose = client.audio.transcriptions.create(
            model="@cf/openai/whisper-tiny-en",
            file=audio,
            response_format="verbose_json",
            timestamp_granularities=["word", "segment"],
        )
    assert verbose.language == "english"
    assert verbose.words and all(w.start <= w.end <= verbose.duration + 0.01 for w in verbose.words)
    assert verbose.segments[0].text.strip()
    with SPEECH.open("rb") as audio:
        srt = client.audio.transcriptions.create(model="@cf/openai/whisper-tiny-en", file=audio, response_format="srt")
    assert srt.startswith("1\n00:00:00,000 --> "), srt


def test_audio_bad_request_names_the_param(client: OpenAI):
    with pytest.raises(openai.BadRequestError) as raised:
        with SPEECH.open("rb") as audio:
            client.audio.transcriptions.create(model="whisper-1", file=audio, response_format="xml")
    assert raised.value.param == "response_format"


def test_image_generation(client: OpenAI):
    import base64

    import httpx

    result = client.images.generate(
        model="@hf/ember/tiny-sd", prompt="a lighthouse", n=2, size="256x256", response_format="b64_json"
    )
    assert len(result.data) == 2
    for image in result.data:
        png = base64.b64decode(image.b64_json)
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(png[16:20], "big") == 256
    # OpenAI's default answer is a URL, which this server serves.
    url = client.images.generate(model="@hf/ember/tiny-sd", prompt="a lighthouse").data[0].url
    png = httpx.get(url).content
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(openai.BadRequestError) as raised:
        client.images.generate(model="@hf/ember/tiny-sd", prompt="a lighthouse", size="300x300")
    assert raised.value.param == "size"


def test_models_list(client: OpenAI):
    models = {m.id: m for m in client.models.list()}
    for model in (QWEN, GEMMA_EMBED, MINILM):
        assert model in models, sorted(models)
        assert models[model].object == "model"
        assert models[model].created > 0
    assert models[QWEN].owned_by == "qwen"


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "extra, param",
    [
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"temperature": 9}, "temperature"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"response_format": {"type": "xml"}}, "response_format.type"),
        (
            {"tools": [{"type": "function", "function": {"name": "no spaces", "parameters": {"type": "object"}}}]},
            "tools[0].function.name",
        ),
        ({"functions": [{"name": "f"}]}, "functions"),
    ],
)
def test_chat_bad_request_names_the_param(client: OpenAI, extra: dict, param: str):
    with pytest.raises(openai.BadRequestError) as ei:
        client.chat.completions.create(model=QWEN, messages=MESSAGES, **extra)
    err = ei.value
    assert err.status_code == 400
    assert err.param == param, err.body
    assert err.type == "invalid_request_error"


def test_bad_message_names_the_param(client: OpenAI):
    with pytest.raises(openai.BadRequestError) as ei:
        client.chat.completions.create(model=QWEN, messages=[{"role": "king", "content": "x"}])
    assert ei.value.param == "messages[0].role", ei.value.body


def test_embeddings_bad_request(client: OpenAI):
    with pytest.raises(openai.BadRequestError) as ei:
        client.embeddings.create(model=MINILM, input=[[1, 2, 3]])
    assert ei.value.param == "input", ei.value.body
    with pytest.raises(openai.BadRequestError) as ei:
        client.embeddings.create(model=MINILM, input="x", dimensions=64)
    assert ei.value.param == "dimensions", ei.value.body


def test_unknown_model_is_404(client: OpenAI):
    with pytest.raises(openai.NotFoundError) as ei:
        client.chat.completions.create(model="@cf/nope/does-not-exist", messages=MESSAGES)
    err = ei.value
    assert err.status_code == 404
    assert err.code == "model_not_found", err.body
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="@cf/nope/does-not-exist", input="x")


def test_unknown_route_is_404(client: OpenAI):
    with pytest.raises(openai.NotFoundError) as ei:
        client.post("/assistants", cast_to=object, body={"model": QWEN})
    assert ei.value.type == "invalid_request_error", ei.value.body


def test_chat_through_ai_gateway(ember_url: str):
    """The openai SDK pointed at AI Gateway's provider URL: a MISS, then the same answer from the
    cache, each with its log id; the log shows the tokens."""
    gateway = OpenAI(
        base_url=f"{ember_url}/v1/{ACCOUNT_ID}/default/workers-ai/v1",
        api_key=TOKEN,
        max_retries=0,
        timeout=TIMEOUT,
    )
    answers = []
    for _ in range(2):
        raw = gateway.chat.completions.with_raw_response.create(
            model=QWEN,
            messages=[{"role": "user", "content": "Say hi."}],
            max_tokens=8,
            temperature=0,
            extra_headers={"cf-aig-cache-ttl": "600"},
        )
        answers.append((raw.headers.get("cf-aig-cache-status"), raw.headers.get("cf-aig-log-id"), raw.parse()))
    assert [a[0] for a in answers] == ["MISS", "HIT"]
    assert answers[0][2].choices[0].message.content == answers[1][2].choices[0].message.content
    log = httpx.get(
        f"{ember_url}/client/v4/accounts/{ACCOUNT_ID}/ai-gateway/gateways/default/logs/{answers[0][1]}",
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=TIMEOUT,
    ).json()["result"]
    assert log["model"] == QWEN and log["tokens_in"] > 0 and log["tokens_out"] > 0, log
