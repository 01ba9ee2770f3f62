"""End-to-end tests: the official `cloudflare` Python SDK (and raw httpx) against Ember.

Run:  EMBER_URL=http://127.0.0.1:8787 python -m pytest -v tests/e2e/test_cloudflare_sdk.py

Env:
  EMBER_URL         base URL of a running Ember (required), e.g. http://127.0.0.1:8787
  EMBER_TOKEN       bearer token to send (default "dummy")
  EMBER_ACCOUNT_ID  account id used in paths (default "local")
  E2E_TIMEOUT       per-request timeout in seconds (default 300; CPU inference can be slow)

Ember is expected to be started with
  --alias @cf/meta/llama-3.1-8b-instruct=@hf/qwen/qwen2.5-coder-0.5b-instruct
and to host @hf/qwen/qwen2.5-coder-0.5b-instruct and @hf/sentence-transformers/all-minilm-l6-v2.

Facts about cloudflare==5.9.0 that these tests rely on (read from the installed package):
  * `client.ai.run(model, ...)` percent-encodes the model as ONE path segment:
    POST /client/v4/accounts/local/ai/run/@hf%2Fqwen%2Fqwen2.5-coder-0.5b-instruct
    (`@` stays literal, `/` becomes %2F). The httpx tests below use literal slashes instead.
  * `client.ai.run(..., stream=True)` cannot stream: it buffers the whole SSE body, fails to parse
    it as JSON, and then crashes with AttributeError("'str' object has no attribute 'result'")
    in its ResultWrapper unwrapper. Incremental streaming through the SDK works only via
    `client.ai.with_streaming_response.run(...)` (raw httpx response, `iter_lines()`).
  * `client.ai.models.list()` auto-paginates: first GET .../ai/models/search (no query), then
    ?page=2, ?page=3, ... and stops only when a page has an EMPTY `result` list.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import time
from pathlib import Path

import cloudflare
import httpx
import pytest
from cloudflare import Cloudflare

QWEN = "@hf/qwen/qwen2.5-coder-0.5b-instruct"
ALIAS = "@cf/meta/llama-3.1-8b-instruct"
MINILM = "@hf/sentence-transformers/all-minilm-l6-v2"
MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant. Answer briefly."},
    {"role": "user", "content": "Write a Python function that adds two numbers."},
]

ACCOUNT_ID = os.environ.get("EMBER_ACCOUNT_ID", "local")
TOKEN = os.environ.get("EMBER_TOKEN", "dummy")
TIMEOUT = float(os.environ.get("E2E_TIMEOUT", "300"))


@pytest.fixture(scope="session")
def client(ember_url: str) -> Cloudflare:
    # max_retries=0: a failure should show up as a failure, not be retried away.
    return Cloudflare(
        api_token=TOKEN,
        base_url=ember_url + "/client/v4",
        max_retries=0,
        timeout=TIMEOUT,
    )


def as_dict(obj):
    """ai.run returns a plain dict for most outputs (its union type contains `object`)."""
    if isinstance(obj, dict):
        return obj
    if hasattr(obj, "model_dump"):
        return obj.model_dump()
    raise AssertionError(f"unexpected result type {type(obj)!r}: {obj!r}")


def assert_text_result(result, *, require_usage: bool = True):
    r = as_dict(result)
    assert isinstance(r.get("response"), str), r
    assert r["response"].strip(), f"empty response: {r!r}"
    if require_usage:
        assert isinstance(r.get("usage"), dict), r
        for k in ("prompt_tokens", "completion_tokens", "total_tokens"):
            assert isinstance(r["usage"].get(k), int), r["usage"]
    return r


# ---------------------------------------------------------------- text generation


def test_run_messages(client: Cloudflare):
    raw = client.ai.with_raw_response.run(QWEN, account_id=ACCOUNT_ID, messages=MESSAGES, max_tokens=24)
    assert raw.status_code == 200
    assert raw.headers.get("x-ember-model") == QWEN
    body = raw.http_response.json()
    assert body.get("success") is True and body.get("errors") == [], body
    assert_text_result(raw.parse())


def test_run_messages_plain(client: Cloudflare):
    result = client.ai.run(QWEN, account_id=ACCOUNT_ID, messages=MESSAGES, max_tokens=24)
    r = assert_text_result(result)
    assert 0 < r["usage"]["completion_tokens"] <= 24, r["usage"]


def test_run_prompt(client: Cloudflare):
    result = client.ai.run(QWEN, account_id=ACCOUNT_ID, prompt="def fibonacci(n):", max_tokens=24)
    assert_text_result(result)


def test_run_alias(client: Cloudflare):
    raw = client.ai.with_raw_response.run(ALIAS, account_id=ACCOUNT_ID, messages=MESSAGES, max_tokens=24)
    assert raw.status_code == 200
    # The alias is served by the qwen model, and Ember says so.
    assert raw.headers.get("x-ember-model") == QWEN, dict(raw.headers)
    assert_text_result(raw.parse())


LORA = Path(__file__).parents[2] / "crates/ember-engines/tests/fixtures/lora"


def test_finetune_create_upload_and_run_with_lora(client: Cloudflare):
    name = f"sdk-{os.getpid()}-{time.time_ns()}"
    finetune = client.ai.finetunes.create(account_id=ACCOUNT_ID, model=QWEN, name=name)
    assert finetune.name == name and finetune.model == QWEN and finetune.public is False
    try:
        for file_name in ("adapter_config.json", "adapter_model.safetensors"):
            client.ai.finetunes.assets.create(
                finetune.id, account_id=ACCOUNT_ID, file=(LORA / file_name).read_bytes(), file_name=file_name
            )
        listed = client.ai.finetunes.list(account_id=ACCOUNT_ID)
        assert any(f.id == finetune.id and f.name == name for f in listed), listed
        reference = json.loads((LORA / "reference.json").read_text())
        result = client.ai.run(
            QWEN, account_id=ACCOUNT_ID, prompt=reference["prompt"], raw=True,
            max_tokens=reference["max_tokens"], temperature=0, lora=name,
        )
        # llama.cpp's own text with the same adapter (scripts/reference/lora.sh).
        assert as_dict(result)["response"] == reference["with_lora"], result
        with pytest.raises(cloudflare.BadRequestError) as refused:
            client.ai.run(QWEN, account_id=ACCOUNT_ID, prompt="x", lora="no-such-finetune")
        assert "/lora" in str(refused.value), refused.value
    finally:
        httpx.delete(
            f"{client.base_url}accounts/{ACCOUNT_ID}/ai/finetunes/{finetune.id}",
            headers={"authorization": f"Bearer {TOKEN}"},
        ).raise_for_status()


# ---------------------------------------------------------------- embeddings


def test_embeddings_minilm(client: Cloudflare):
    raw = client.ai.with_raw_response.run(
        MINILM, account_id=ACCOUNT_ID, text=["The quick brown fox.", "Rust is a systems language."]
    )
    assert raw.headers.get("x-ember-model") == MINILM
    r = as_dict(raw.parse())
    assert list(r.get("shape", [])) == [2, 384], r.get("shape")
    data = r.get("data")
    assert isinstance(data, list) and len(data) == 2
    for vec in data:
        assert len(vec) == 384
        assert all(isinstance(x, (int, float)) and math.isfinite(x) for x in vec)
    assert data[0] != data[1], "two different texts produced identical embeddings"


# ---------------------------------------------------------------- the text tasks
# Each catalog id answers in its exact Workers AI shape; without the real weights installed, a
# stand-in serves it and x-ember-model names it.


def run_raw(client: Cloudflare, model: str, **inputs):
    raw = client.ai.with_raw_response.run(model, account_id=ACCOUNT_ID, **inputs)
    assert raw.status_code == 200
    return raw.http_response.json()["result"], raw.headers.get("x-ember-model")


def test_text_classification(client: Cloudflare):
    result, served_by = run_raw(client, "@cf/huggingface/distilbert-sst-2-int8", text="I love this movie")
    assert served_by in ("@cf/huggingface/distilbert-sst-2-int8", "@hf/ember/sentiment-embeddinggemma")
    assert [r["label"] for r in result] == ["NEGATIVE", "POSITIVE"], result
    assert abs(sum(r["score"] for r in result) - 1) < 1e-4, result
    assert result[1]["score"] > result[0]["score"], result


def test_reranking(client: Cloudflare):
    # The SDK has no reranking overload; its inputs go as extra body fields.
    result, _ = run_raw(
        client,
        "@cf/baai/bge-reranker-base",
        extra_body={
            "query": "Which planet is known as the Red Planet?",
            "contexts": [{"text": "Venus is the hottest planet."}, {"text": "Mars is called the Red Planet."}],
            "top_k": 2,
        },
    )
    assert [r["id"] for r in result["response"]] == [1, 0], result
    assert result["response"][0]["score"] > result["response"][1]["score"]


def test_translation(client: Cloudflare):
    result, _ = run_raw(client, "@cf/meta/m2m100-1.2b", text="Thank you very much.", target_lang="es")
    assert "gracias" in result["translated_text"].lower(), result


SPEECH = Path(__file__).parents[2] / "crates/ember-engines/tests/fixtures/whisper/short.wav"


def test_speech_recognition(client: Cloudflare):
    # The SDK's overload for whisper takes the audio as an array of byte values.
    result, served_by = run_raw(client, "@cf/openai/whisper-tiny-en", audio=list(SPEECH.read_bytes()))
    assert served_by == "@cf/openai/whisper-tiny-en"
    assert "lazy dog" in result["text"].lower(), result
    assert result["word_count"] == len(result["words"]) > 5, result
    assert result["vtt"].startswith("WEBVTT"), result


IMAGES = Path(__file__).parents[2] / "crates/ember-engines/tests/fixtures/vision/images"


def test_image_classification(client: Cloudflare):
    # The SDK's overload for resnet-50 takes the image as an array of byte values.
    result, served_by = run_raw(client, "@cf/microsoft/resnet-50", image=list((IMAGES / "cat.png").read_bytes()))
    assert served_by in ("@cf/microsoft/resnet-50", "@hf/google/efficientnet-lite0")
    assert len(result) == 5 and "cat" in result[0]["label"], result
    assert result[0]["score"] >= result[1]["score"], result


def test_object_detection(client: Cloudflare):
    result, served_by = run_raw(client, "@cf/facebook/detr-resnet-50", image=list((IMAGES / "espresso.png").read_bytes()))
    assert served_by in ("@cf/facebook/detr-resnet-50", "@hf/vladmandic/mb3-centernet")
    assert result and result[0]["label"] == "cup", result
    assert set(result[0]["box"]) == {"xmin", "ymin", "xmax", "ymax"}, result
    assert all(a["score"] >= b["score"] for a, b in zip(result, result[1:])), result


def test_text_to_image(client: Cloudflare):
    # The SDK answers the PNG itself (its `Uploadable` branch); the raw response carries it.
    raw = client.ai.with_raw_response.run(
        "@hf/ember/tiny-sd", account_id=ACCOUNT_ID, prompt="a lighthouse", num_steps=2, width=256, height=320
    )
    assert raw.status_code == 200 and raw.headers["content-type"] == "image/png"
    png = raw.http_response.content
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert int.from_bytes(png[16:20], "big") == 256 and int.from_bytes(png[20:24], "big") == 320


def test_text_to_image_bad_size_is_5006_naming_the_field(client: Cloudflare):
    with pytest.raises(cloudflare.BadRequestError) as ei:
        client.ai.run("@hf/ember/tiny-sd", account_id=ACCOUNT_ID, prompt="a lighthouse", width=300)
    assert "5006" in json.dumps(ei.value.body) and "/width" in json.dumps(ei.value.body), ei.value.body


def test_garbage_image_is_5006_naming_the_field(client: Cloudflare):
    with pytest.raises(cloudflare.BadRequestError) as ei:
        client.ai.run("@cf/microsoft/resnet-50", account_id=ACCOUNT_ID, image=list(b"not an image"))
    assert "5006" in json.dumps(ei.value.body) and "/image" in json.dumps(ei.value.body), ei.value.body


def test_summarization(client: Cloudflare):
    text = (
        "The museum reopened on Monday after a two-year renovation that cost 40 million euros. "
        "Visitors queued for hours to see the restored paintings, and the director said that "
        "ticket sales in the first week were the highest in the museum's history."
    )
    result, _ = run_raw(client, "@cf/facebook/bart-large-cnn", input_text=text, max_length=60)
    assert result["summary"].strip() and len(result["summary"]) < len(text), result


def test_unknown_language_is_5006_naming_the_field(client: Cloudflare):
    with pytest.raises(cloudflare.BadRequestError) as ei:
        client.ai.run("@cf/meta/m2m100-1.2b", account_id=ACCOUNT_ID, text="hi", target_lang="klingon")
    assert "5006" in json.dumps(ei.value.body) and "target_lang" in json.dumps(ei.value.body), ei.value.body


# ---------------------------------------------------------------- catalog


def test_models_list_finds_qwen(client: Cloudflare):
    # Bounded so a server that ignores `page` (and so never returns an empty page) fails
    # instead of looping forever.
    cap = 5000
    items = list(itertools.islice(client.ai.models.list(account_id=ACCOUNT_ID), cap + 1))
    assert len(items) <= cap, (
        "models.list pagination never ended: the SDK requests ?page=2,3,... until a page "
        "returns an empty `result`"
    )
    names = [as_dict(m).get("name") for m in items]
    assert QWEN in names, names
    assert MINILM in names, names
    assert len(names) == len(set(names)), f"duplicate models across pages: {names}"
    qwen = as_dict(items[names.index(QWEN)])
    assert isinstance(qwen.get("task"), dict) and qwen["task"].get("name") == "Text Generation", qwen


def test_models_schema(client: Cloudflare):
    schema = client.ai.models.schema.get(account_id=ACCOUNT_ID, model=QWEN)
    assert schema.input is not None and schema.output is not None
    raw = client.ai.models.schema.with_raw_response.get(account_id=ACCOUNT_ID, model=QWEN)
    result = raw.http_response.json()["result"]
    assert isinstance(result.get("input"), dict) and result["input"], result
    assert isinstance(result.get("output"), dict) and result["output"], result


# ---------------------------------------------------------------- errors


def test_unknown_model_is_5007(client: Cloudflare):
    with pytest.raises(cloudflare.BadRequestError) as ei:
        client.ai.run("@cf/nope/does-not-exist", account_id=ACCOUNT_ID, prompt="x")
    err = ei.value
    assert err.status_code == 400
    assert "5007" in json.dumps(err.body), err.body
    body = err.body if isinstance(err.body, dict) else {}
    assert body.get("success") is False, err.body
    assert any(e.get("code") == 5007 for e in body.get("errors", [])), err.body


# ---------------------------------------------------------------- streaming


def check_sse_lines(lines):
    """Assert an SSE text-generation stream: data: {"response":...} events, usage, then [DONE]."""
    data = [ln[len("data:"):].strip() for ln in lines if ln.startswith("data:")]
    assert data, f"no data: events in {lines!r}"
    assert data[-1] == "[DONE]", f"stream did not end with data: [DONE]: {data[-3:]!r}"
    events = [json.loads(d) for d in data[:-1]]
    assert events, "no JSON events before [DONE]"
    assert all("response" in e for e in events), events
    text = "".join(e["response"] for e in events if isinstance(e.get("response"), str))
    assert text.strip(), f"empty concatenated text from {len(events)} events"
    assert any(isinstance(e.get("usage"), dict) for e in events), "no usage event before [DONE]"
    return text


def test_stream_httpx(ember_url: str):
    # Literal slashes in the model path (curl/fetch style), unlike the SDK's %2F form.
    url = f"{ember_url}/client/v4/accounts/{ACCOUNT_ID}/ai/run/{QWEN}"
    body = {"messages": MESSAGES, "stream": True, "max_tokens": 24}
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.stream("POST", url, json=body, headers=headers, timeout=TIMEOUT) as resp:
        assert resp.status_code == 200, resp.read()
        assert resp.headers.get("content-type", "").startswith("text/event-stream"), resp.headers
        assert resp.headers.get("x-ember-model") == QWEN
        lines = list(resp.iter_lines())
    check_sse_lines(lines)


def test_stream_sdk_streaming_response(client: Cloudflare):
    # The SDK's only working way to consume a stream (see module docstring).
    with client.ai.with_streaming_response.run(
        ALIAS, account_id=ACCOUNT_ID, messages=MESSAGES, stream=True, max_tokens=24
    ) as resp:
        assert resp.status_code == 200
        assert resp.headers.get("content-type", "").startswith("text/event-stream")
        assert resp.headers.get("x-ember-model") == QWEN
        lines = list(resp.iter_lines())
    check_sse_lines(lines)


def test_ai_gateway(client: Cloudflare):
    """A gateway made, used, logged, rated and deleted with the SDK's ai_gateway resources."""
    gateway = client.ai_gateway.create(
        account_id=ACCOUNT_ID,
        id="e2e-gateway",
        cache_invalidate_on_update=False,
        cache_ttl=120,
        collect_logs=True,
        rate_limiting_interval=None,
        rate_limiting_limit=None,
        rate_limiting_technique="fixed",
        retry_max_attempts=2,
    )
    assert gateway.id == "e2e-gateway" and gateway.cache_ttl == 120
    try:
        headers = {"cf-aig-gateway-id": "e2e-gateway", "cf-aig-metadata": '{"suite": "sdk"}'}
        answers = []
        for _ in range(2):
            raw = client.ai.with_raw_response.run(
                "@cf/huggingface/distilbert-sst-2-int8",
                account_id=ACCOUNT_ID,
                text="I love this movie",
                extra_headers=headers,
            )
            answers.append((raw.headers.get("cf-aig-cache-status"), raw.headers.get("cf-aig-log-id"), raw.http_response.json()["result"]))
        assert [a[0] for a in answers] == ["MISS", "HIT"], answers
        assert answers[0][2] == answers[1][2]

        logs = list(client.ai_gateway.logs.list(gateway_id="e2e-gateway", account_id=ACCOUNT_ID))
        assert {log.id for log in logs} == {answers[0][1], answers[1][1]}
        assert sorted(log.cached for log in logs) == [False, True]
        client.ai_gateway.logs.edit(answers[0][1], account_id=ACCOUNT_ID, gateway_id="e2e-gateway", feedback=1)
        log = client.ai_gateway.logs.get(answers[0][1], account_id=ACCOUNT_ID, gateway_id="e2e-gateway")
        assert log.model == "@cf/huggingface/distilbert-sst-2-int8" and log.success
        assert json.loads(log.metadata) == {"suite": "sdk"}
        assert client.ai_gateway.logs.get(answers[0][1], account_id=ACCOUNT_ID, gateway_id="e2e-gateway").to_dict().get("feedback") == 1

        # The SDK's filters, on list and delete.
        hits = client.ai_gateway.logs.list(
            gateway_id="e2e-gateway", account_id=ACCOUNT_ID, filters=[{"key": "cached", "operator": "eq", "value": [True]}]
        )
        assert [log.id for log in hits] == [answers[1][1]]
        deleted = client.ai_gateway.logs.delete(
            "e2e-gateway",
            account_id=ACCOUNT_ID,
            filters=[
                {"key": "cached", "operator": "eq", "value": [False]},
                {"key": "created_at", "operator": "lt", "value": ["2999-01-01T00:00:00Z"]},
            ],
        )
        assert deleted.success and deleted.to_dict()["result"] == {"deleted": 1}, deleted
        left = list(client.ai_gateway.logs.list(gateway_id="e2e-gateway", account_id=ACCOUNT_ID))
        assert [log.id for log in left] == [answers[1][1]]
        with pytest.raises(cloudflare.BadRequestError, match="filters.key"):
            client.ai_gateway.logs.delete(
                "e2e-gateway", account_id=ACCOUNT_ID, filters=[{"key": "prompts.prompt_id", "operator": "eq", "value": ["x"]}]
            )
    finally:
        client.ai_gateway.delete("e2e-gateway", account_id=ACCOUNT_ID)
    with pytest.raises(cloudflare.NotFoundError):
        client.ai_gateway.get("e2e-gateway", account_id=ACCOUNT_ID)


# ---------------------------------------------------------------- async batch


def test_async_batch(client: Cloudflare):
    """`?queueRequest=true` queues `requests`; polling with the request_id gives their results."""
    queue = {"queueRequest": "true"}
    texts = ["first queued text", "second queued text", "third queued text"]
    requests = [{"text": text, "external_reference": f"ref-{i}"} for i, text in enumerate(texts)]
    raw = client.ai.with_raw_response.run(MINILM, account_id=ACCOUNT_ID, extra_body={"requests": requests}, extra_query=queue)
    queued = raw.http_response.json()["result"]
    assert queued["status"] == "queued" and queued["model"] == MINILM, queued
    for _ in range(600):
        polled = client.ai.with_raw_response.run(
            MINILM, account_id=ACCOUNT_ID, extra_body={"request_id": queued["request_id"]}, extra_query=queue
        ).http_response.json()["result"]
        if "responses" in polled:
            break
        assert polled["status"] in ("queued", "running"), polled
        time.sleep(0.1)
    responses = polled["responses"]
    assert [r["id"] for r in responses] == [0, 1, 2]
    assert [r["external_reference"] for r in responses] == ["ref-0", "ref-1", "ref-2"]
    assert all(r["success"] and len(r["result"]["data"][0]) == 384 for r in responses)
    assert polled["usage"]["prompt_tokens"] > 0
    with pytest.raises(cloudflare.NotFoundError):
        client.ai.run(MINILM, account_id=ACCOUNT_ID, extra_body={"request_id": "nope"}, extra_query=queue)
    with pytest.raises(cloudflare.BadRequestError):
        client.ai.run(MINILM, account_id=ACCOUNT_ID, text="no requests", extra_query=queue)
