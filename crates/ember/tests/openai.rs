//! HTTP tests for the OpenAI-compatible API with the real default models: the shapes of chat
//! completions, completions, embeddings (float and base64) and the model list under both
//! prefixes, SSE chunk framing (`include_usage`, `[DONE]`, an error after the headers), the
//! request log, and every error in OpenAI's `{"error": {message, type, param, code}}` shape.

mod common;

use axum::http::StatusCode;
use base64::Engine as _;
use common::*;
use ember_store::Plan;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use std::time::Duration;
use tower::ServiceExt;

const V1: &str = "/v1";
const CLOUDFLARE_V1: &str = "/client/v4/accounts/acct/ai/v1";

fn chat(model: &str, content: &str, max_tokens: u32) -> Value {
    json!({
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "temperature": 0,
    })
}

/// Asserts an OpenAI error with this status and type; returns its `error` object.
fn openai_error(reply: &Reply, status: u16, kind: &str) -> Value {
    assert_eq!(reply.status.as_u16(), status, "{:?}", reply.body);
    let error = reply.json()["error"].clone();
    assert_eq!(error["type"], kind, "{error}");
    assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
    let mut keys: Vec<&String> = error.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(keys, ["code", "message", "param", "type"], "{error}");
    error
}

/// The `data:` payloads of an OpenAI stream, parsed, up to (not including) `[DONE]`.
fn openai_chunks(body: &[u8]) -> Vec<Value> {
    let events = sse_events(body);
    assert_eq!(events.last().unwrap(), "[DONE]");
    events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect()
}

// ------------------------------------------------------------------ chat completions

#[tokio::test(flavor = "multi_thread")]
async fn chat_completion_shape_and_request_log() {
    let app = app();
    let body = json!({
        "model": QWEN,
        "messages": [
            {"role": "system", "content": "Answer in one word."},
            {"role": "user", "content": [
                {"type": "text", "text": "What is the capital"},
                {"type": "text", "text": " of France?"},
            ]},
        ],
        "max_tokens": 16,
        "temperature": 0,
        "n": 1,
        "logprobs": false,
        "user": "someone",
        "response_format": {"type": "text"},
    });
    let reply = send(
        &app,
        post(&format!("{V1}/chat/completions"), body.to_string()),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(reply.header("content-type"), "application/json");
    assert_eq!(reply.header("x-ember-model"), QWEN);
    let answer = reply.json();
    let request_id = reply.header("cf-ai-req-id");
    assert_eq!(answer["id"], format!("chatcmpl-{request_id}"));
    assert_eq!(answer["object"], "chat.completion");
    assert!(answer["created"].as_u64().unwrap() > 1_700_000_000);
    assert_eq!(answer["model"], QWEN);
    let choice = &answer["choices"][0];
    assert_eq!(answer["choices"].as_array().unwrap().len(), 1);
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["message"]["refusal"], Value::Null);
    assert!(
        choice["message"]["content"]
            .as_str()
            .unwrap()
            .contains("Paris"),
        "{answer}"
    );
    assert_eq!(choice["logprobs"], Value::Null);
    assert_eq!(choice["finish_reason"], "stop");
    let usage = &answer["usage"];
    let (prompt, completion) = (
        usage["prompt_tokens"].as_u64().unwrap(),
        usage["completion_tokens"].as_u64().unwrap(),
    );
    assert!(prompt > 10 && completion > 0 && completion <= 16);
    assert_eq!(usage["total_tokens"].as_u64().unwrap(), prompt + completion);
    assert!(usage["prompt_tokens_details"]["cached_tokens"].is_u64());

    let mut record = None;
    for _ in 0..100 {
        record = app.store.ledger.request(request_id).await.unwrap();
        if record.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let record = record.expect("request logged");
    assert_eq!(
        (
            record.route.as_str(),
            record.model.as_str(),
            record.served_by.as_deref(),
            record.http_status,
            u64::from(record.completion_tokens),
        ),
        ("openai", QWEN, Some(QWEN), 200, completion)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn aliases_resolve_and_max_completion_tokens_cuts_with_length() {
    let app = app();
    let mut body = chat(ALIAS, "Count from one to twenty in words.", 0);
    body.as_object_mut().unwrap().remove("max_tokens");
    body["max_completion_tokens"] = json!(3);
    let reply = send(
        &app,
        post(
            &format!("{CLOUDFLARE_V1}/chat/completions"),
            body.to_string(),
        ),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(reply.header("x-ember-model"), SMOL);
    let answer = reply.json();
    assert_eq!(answer["model"], ALIAS, "the model as the client named it");
    assert_eq!(answer["choices"][0]["finish_reason"], "length");
    assert_eq!(answer["usage"]["completion_tokens"], 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn chat_streams_chunks_then_usage_then_done() {
    let app = app();
    let mut body = chat(QWEN, "Say hello.", 8);
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let reply = send(
        &app,
        post(&format!("{V1}/chat/completions"), body.to_string()),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("content-type"), "text/event-stream");
    assert_eq!(reply.header("x-ember-model"), QWEN);
    let chunks = openai_chunks(&reply.body);
    let id = format!("chatcmpl-{}", reply.header("cf-ai-req-id"));
    for chunk in &chunks {
        assert_eq!(chunk["id"], id);
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["created"], chunks[0]["created"]);
        assert_eq!(chunk["model"], QWEN);
    }
    let (first, rest) = chunks.split_first().unwrap();
    assert_eq!(
        first["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    let (usage, rest) = rest.split_last().unwrap();
    let (finish, pieces) = rest.split_last().unwrap();
    let mut text = String::new();
    for piece in pieces {
        assert_eq!(piece["choices"][0]["finish_reason"], Value::Null);
        assert_eq!(
            piece["usage"],
            Value::Null,
            "usage: null until the last chunk"
        );
        text.push_str(piece["choices"][0]["delta"]["content"].as_str().unwrap());
    }
    assert!(!text.is_empty());
    assert_eq!(finish["choices"][0]["delta"], json!({}));
    assert!(["stop", "length"].contains(&finish["choices"][0]["finish_reason"].as_str().unwrap()));
    assert_eq!(usage["choices"], json!([]));
    let completion_tokens = usage["usage"]["completion_tokens"].as_u64().unwrap();
    assert!(completion_tokens > 0 && completion_tokens <= 8);

    // Without include_usage: no usage anywhere.
    body["stream_options"] = json!(null);
    let reply = send(
        &app,
        post(&format!("{V1}/chat/completions"), body.to_string()),
    )
    .await;
    let chunks = openai_chunks(&reply.body);
    assert!(chunks.iter().all(|c| c.get("usage").is_none()));
    assert!(chunks.last().unwrap()["choices"][0]["finish_reason"].is_string());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_that_fails_midway_ends_with_an_openai_error_event() {
    let app = app();
    let mut body = chat(SMOL, "Tell me a long story.", 2000);
    body["stream"] = json!(true);
    // `oneshot` answers once the first event arrived; the rest of the body is still to come.
    let response = app
        .router
        .clone()
        .oneshot(post(&format!("{V1}/chat/completions"), body.to_string()))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    app.abort.send(true).unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let text = std::str::from_utf8(&body).unwrap();
    assert!(!text.contains("[DONE]"));
    let last = text.trim_end().rsplit("\n\n").next().unwrap();
    let data = last
        .strip_prefix("event: error\ndata: ")
        .unwrap_or_else(|| panic!("not an error event: {last:?}"));
    let error: Value = serde_json::from_str(data).unwrap();
    assert_eq!(error["error"]["type"], "server_error");
    assert_eq!(error["error"]["code"], "3008");
}

// ------------------------------------------------------------------ completions

#[tokio::test(flavor = "multi_thread")]
async fn completions_send_the_raw_prompt_whole_and_streamed() {
    let app = app();
    let body =
        json!({"model": QWEN, "prompt": ["def add(a, b):"], "max_tokens": 8, "temperature": 0});
    let reply = send(&app, post(&format!("{V1}/completions"), body.to_string())).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let answer = reply.json();
    assert_eq!(
        answer["id"],
        format!("cmpl-{}", reply.header("cf-ai-req-id"))
    );
    assert_eq!(answer["object"], "text_completion");
    let choice = &answer["choices"][0];
    assert!(!choice["text"].as_str().unwrap().is_empty());
    assert_eq!(choice["logprobs"], Value::Null);
    assert!(choice["finish_reason"].is_string());
    // No chat template: the prompt is its own handful of tokens.
    assert!(answer["usage"]["prompt_tokens"].as_u64().unwrap() < 10);

    let mut body = body;
    body["stream"] = json!(true);
    let reply = send(
        &app,
        post(&format!("{CLOUDFLARE_V1}/completions"), body.to_string()),
    )
    .await;
    let chunks = openai_chunks(&reply.body);
    assert!(chunks.iter().all(|c| c["object"] == "text_completion"));
    let (last, pieces) = chunks.split_last().unwrap();
    assert!(!pieces.is_empty());
    assert!(pieces.iter().all(|p| p["choices"][0]["text"].is_string()));
    assert_eq!(last["choices"][0]["text"], "");
    assert!(last["choices"][0]["finish_reason"].is_string());
}

// ------------------------------------------------------------------ embeddings and models

#[tokio::test(flavor = "multi_thread")]
async fn embeddings_as_floats_and_base64_agree() {
    let app = app();
    let body = json!({"model": MINILM, "input": ["hello", "world"], "dimensions": 384});
    let reply = send(&app, post(&format!("{V1}/embeddings"), body.to_string())).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(reply.header("x-ember-model"), MINILM);
    let floats = reply.json();
    assert_eq!(floats["object"], "list");
    assert_eq!(floats["model"], MINILM);
    let tokens = floats["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(tokens > 0);
    assert_eq!(floats["usage"]["total_tokens"], tokens);
    let data = floats["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);

    let mut body = body;
    body["encoding_format"] = json!("base64");
    let reply = send(
        &app,
        post(&format!("{CLOUDFLARE_V1}/embeddings"), body.to_string()),
    )
    .await;
    let encoded = reply.json();
    for (i, item) in data.iter().enumerate() {
        assert_eq!(
            (&item["object"], &item["index"]),
            (&json!("embedding"), &json!(i))
        );
        let vector: Vec<f32> = serde_json::from_value(item["embedding"].clone()).unwrap();
        assert_eq!(vector.len(), 384);
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded["data"][i]["embedding"].as_str().unwrap())
            .unwrap();
        let decoded: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        assert_eq!(decoded, vector);
    }

    let single = json!({"model": MINILM, "input": "one text"});
    let reply = send(&app, post(&format!("{V1}/embeddings"), single.to_string())).await;
    assert_eq!(reply.json()["data"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn models_lists_the_installed_models() {
    let app = app();
    for prefix in [V1, CLOUDFLARE_V1] {
        let reply = send(&app, get(&format!("{prefix}/models"))).await;
        assert_eq!(reply.status, StatusCode::OK);
        let list = reply.json();
        assert_eq!(list["object"], "list");
        let models = list["data"].as_array().unwrap();
        for id in [QWEN, SMOL, MINILM] {
            let model = models.iter().find(|m| m["id"] == id).expect(id);
            assert_eq!(model["object"], "model");
            assert!(model["created"].as_u64().unwrap() > 0);
            assert_eq!(model["owned_by"], id.split('/').nth(1).unwrap());
        }
    }
}

// ------------------------------------------------------------------ errors

#[tokio::test(flavor = "multi_thread")]
async fn invalid_requests_get_400_naming_the_param() {
    let app = app();
    let with = |path: &str, changes: Value| {
        let mut body = if path == "/embeddings" {
            json!({"model": MINILM, "input": "x"})
        } else if path == "/completions" {
            json!({"model": SMOL, "prompt": "x", "max_tokens": 1})
        } else {
            chat(SMOL, "x", 1)
        };
        for (key, value) in changes.as_object().unwrap() {
            if value.is_null() {
                body.as_object_mut().unwrap().remove(key);
            } else {
                body[key] = value.clone();
            }
        }
        (path.to_string(), body.to_string())
    };
    let chat_path = "/chat/completions";
    let cases = [
        (with(chat_path, json!({"n": 2})), Some("n")),
        (with(chat_path, json!({"logprobs": true})), Some("logprobs")),
        (
            with(chat_path, json!({"top_logprobs": 3})),
            Some("top_logprobs"),
        ),
        (
            with(
                chat_path,
                json!({"tools": [{"type": "function", "function": {"name": "no spaces"}}]}),
            ),
            Some("tools[0].function.name"),
        ),
        (
            with(chat_path, json!({"tool_choice": "sometimes"})),
            Some("tool_choice"),
        ),
        (
            with(chat_path, json!({"functions": [{"name": "f"}]})),
            Some("functions"),
        ),
        (
            with(chat_path, json!({"response_format": {"type": "xml"}})),
            Some("response_format.type"),
        ),
        (
            with(
                chat_path,
                json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "properties": {"a": {"type": "strin"}}}}}}),
            ),
            Some("response_format.json_schema"),
        ),
        (with(chat_path, json!({"stop": [1]})), Some("stop[0]")),
        (
            with(chat_path, json!({"temperature": 9})),
            Some("temperature"),
        ),
        (
            with(chat_path, json!({"max_tokens": 0})),
            Some("max_tokens"),
        ),
        (
            with(chat_path, json!({"max_completion_tokens": 0})),
            Some("max_completion_tokens"),
        ),
        (
            with(
                chat_path,
                json!({"messages": [{"role": "user", "content": 1}]}),
            ),
            Some("messages[0].content"),
        ),
        (
            with(
                chat_path,
                json!({"messages": [{"role": "king", "content": "x"}]}),
            ),
            Some("messages[0].role"),
        ),
        (with(chat_path, json!({"messages": null})), Some("messages")),
        (with(chat_path, json!({"model": null})), Some("model")),
        (with(chat_path, json!({"model": MINILM})), Some("model")),
        (with(chat_path, json!({"stream": "yes"})), Some("stream")),
        (
            with(
                chat_path,
                json!({"stream_options": {"include_usage": "yes"}}),
            ),
            Some("stream_options.include_usage"),
        ),
        (
            with("/completions", json!({"prompt": ["a", "b"]})),
            Some("prompt"),
        ),
        (
            with("/completions", json!({"prompt": [1, 2]})),
            Some("prompt"),
        ),
        (
            with("/embeddings", json!({"input": [1, 2, 3]})),
            Some("input"),
        ),
        (
            with("/embeddings", json!({"input": [[1, 2]]})),
            Some("input"),
        ),
        (
            with("/embeddings", json!({"input": ["a", ""]})),
            Some("input[1]"),
        ),
        (
            with("/embeddings", json!({"encoding_format": "hex"})),
            Some("encoding_format"),
        ),
        (
            with("/embeddings", json!({"dimensions": 100})),
            Some("dimensions"),
        ),
        (with("/embeddings", json!({"model": QWEN})), Some("model")),
        ((chat_path.to_string(), "{not json".to_string()), None),
        ((chat_path.to_string(), "[1]".to_string()), None),
    ];
    for ((path, body), param) in cases {
        let reply = send(&app, post(&format!("{V1}{path}"), body.clone())).await;
        let error = openai_error(&reply, 400, "invalid_request_error");
        assert_eq!(error["param"], json!(param), "{body}: {error}");
    }
    let reply = send(&app, post(&format!("{V1}/chat/completions"), "")).await;
    openai_error(&reply, 400, "invalid_request_error");
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_models_routes_and_methods() {
    let app = app();
    for path in ["/chat/completions", "/embeddings"] {
        let body = json!({"model": "@cf/nobody/nothing", "messages": [], "input": "x"});
        let reply = send(
            &app,
            post(&format!("{CLOUDFLARE_V1}{path}"), body.to_string()),
        )
        .await;
        let error = openai_error(&reply, 404, "invalid_request_error");
        assert_eq!(error["code"], "model_not_found");
        assert!(
            error["message"]
                .as_str()
                .unwrap()
                .contains("@cf/nobody/nothing")
        );
    }
    for path in [
        format!("{V1}/assistants"),
        format!("{CLOUDFLARE_V1}/nothing/here"),
    ] {
        openai_error(
            &send(&app, post(&path, "{}")).await,
            404,
            "invalid_request_error",
        );
    }
    openai_error(
        &send(&app, get(&format!("{V1}/chat/completions"))).await,
        405,
        "invalid_request_error",
    );
    openai_error(
        &send(&app, post(&format!("{CLOUDFLARE_V1}/models"), "{}")).await,
        405,
        "invalid_request_error",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_are_checked_with_openai_errors() {
    let app = app();
    let (account, token) = account(&app, Plan::Free, 10_000.0).await;
    let reply = send(&app, get(&format!("{V1}/models"))).await;
    let error = openai_error(&reply, 401, "authentication_error");
    assert_eq!(error["code"], "invalid_api_key");
    let wrong = with_token(get(&format!("{V1}/models")), "nope");
    openai_error(&send(&app, wrong).await, 401, "authentication_error");
    // A token of another account than the path's.
    let elsewhere = with_token(get(&format!("{CLOUDFLARE_V1}/models")), &token);
    openai_error(&send(&app, elsewhere).await, 403, "authentication_error");
    let right = with_token(
        get(&format!("/client/v4/accounts/{}/ai/v1/models", account.id)),
        &token,
    );
    assert_eq!(send(&app, right).await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread")]
async fn reject_if_busy_gets_429_while_the_model_is_full() {
    // The test server runs one sequence per model: a long stream holds it.
    let (address, _server) = serve_on_socket(app().router).await;
    let mut long = chat(SMOL, "Count from one to two hundred in words.", 400);
    long["stream"] = json!(true);
    let busy = reqwest::Client::new()
        .post(format!("http://{address}{V1}/chat/completions"))
        .json(&long)
        .send()
        .await
        .unwrap();
    let mut stream = busy.bytes_stream();
    // Its first chunk arrived: the sequence is running.
    futures::StreamExt::next(&mut stream)
        .await
        .unwrap()
        .unwrap();

    let mut body = chat(SMOL, "Hi", 4);
    body["options"] = json!({"rejectIfBusy": true});
    let reply = send(
        &app(),
        post(&format!("{V1}/chat/completions"), body.to_string()),
    )
    .await;
    let error = openai_error(&reply, 429, "rate_limit_error");
    assert_eq!(error["code"], "3040");
    assert_eq!(
        error["message"],
        "Capacity temporarily exceeded, please try again."
    );
    assert_eq!(reply.header("retry-after"), "1");
    drop(stream);
    wait_until_model_is_free(SMOL).await;
}
