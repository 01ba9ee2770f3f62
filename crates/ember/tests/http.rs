//! HTTP tests for every route, with the real default models from the model cache: the REST
//! envelope, the Worker binding (native and through wrangler's proxy), catalog routes, SSE
//! framing and UTF-8 safety, every documented error, auth, the request log and shutdown.
//! Requests go through the router in-process (`oneshot`); streaming and shutdown use a real
//! socket on 127.0.0.1:0.

mod common;

use axum::body::{Body, Bytes};
use axum::http::{Request, StatusCode, header};
use common::*;
use ember_http::HttpConfig;
use ember_store::Plan;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::Duration;

const RUN: &str = "/client/v4/accounts/acct/ai/run/";

fn greedy_chat(content: &str, max_tokens: u32) -> Value {
    json!({ "messages": [{"role": "user", "content": content}], "temperature": 0, "max_tokens": max_tokens })
}

// ------------------------------------------------------------------ REST run

#[tokio::test(flavor = "multi_thread")]
async fn rest_chat_returns_the_envelope_with_usage_and_is_logged() {
    let app = app();
    let reply = send(
        &app,
        post(
            &format!("{RUN}{QWEN}"),
            greedy_chat("What is the capital of France?", 24).to_string(),
        ),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("content-type"), "application/json");
    assert_eq!(reply.header("x-ember-model"), QWEN);
    let body = reply.json();
    assert_eq!(body["success"], true);
    assert_eq!(body["errors"], json!([]));
    assert_eq!(body["messages"], json!([]));
    let result = &body["result"];
    assert!(
        result["response"].as_str().unwrap().contains("Paris"),
        "{result}"
    );
    let usage = &result["usage"];
    let (prompt, completion) = (
        usage["prompt_tokens"].as_u64().unwrap(),
        usage["completion_tokens"].as_u64().unwrap(),
    );
    assert!(prompt > 10 && completion > 0 && completion <= 24);
    assert_eq!(usage["total_tokens"].as_u64().unwrap(), prompt + completion);

    // The log row is written off the async threads; wait for it rather than for a fixed time.
    let mut record = None;
    for _ in 0..100 {
        let id = reply.header("cf-ai-req-id");
        record = app.store.ledger.request(id).await.unwrap();
        if record.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let record = record.expect("request logged");
    assert_eq!(
        (
            record.model.as_str(),
            record.served_by.as_deref(),
            record.http_status
        ),
        (QWEN, Some(QWEN), 200)
    );
    assert_eq!(u64::from(record.completion_tokens), completion);
}

#[tokio::test(flavor = "multi_thread")]
async fn percent_encoded_model_ids_and_aliases_resolve() {
    let app = app();
    let encoded = SMOL.replace('/', "%2F");
    let reply = send(
        &app,
        post(
            &format!("{RUN}{encoded}"),
            greedy_chat("Say hi", 4).to_string(),
        ),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);

    let reply = send(
        &app,
        post(
            &format!("{RUN}{ALIAS}"),
            greedy_chat("Say hi", 4).to_string(),
        ),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.header("x-ember-model"),
        SMOL,
        "the header names the model that served"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn embeddings_over_rest() {
    let app = app();
    let reply = send(
        &app,
        post(
            &format!("{RUN}{MINILM}"),
            json!({"text": ["hello", "world"]}).to_string(),
        ),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    let result = reply.json()["result"].clone();
    assert_eq!(result["shape"], json!([2, 384]));
    assert_eq!(result["pooling"], "mean");
    let first: Vec<f64> = serde_json::from_value(result["data"][0].clone()).unwrap();
    let norm: f64 = first.iter().map(|x| x * x).sum::<f64>().sqrt();
    assert!((norm - 1.0).abs() < 1e-3);
}

// ------------------------------------------------------------------ binding protocol

#[tokio::test(flavor = "multi_thread")]
async fn native_binding_returns_bare_json_with_exact_content_type() {
    let app = app();
    let reply = send(
        &app,
        binding_request("/run?version=3", ALIAS, greedy_chat("Hi", 8)),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.header("content-type"),
        "application/json",
        "no charset, or the binding returns a stream"
    );
    let body = reply.json();
    assert!(
        body["response"].is_string() && body["usage"].is_object() && body.get("success").is_none()
    );

    let reply = send(
        &app,
        binding_request("/run?version=3", "@cf/nope/nope", json!({"prompt": "x"})),
    )
    .await;
    let error = reply.binding_error(400, 5007);
    assert_eq!(error["name"], "InvalidModel");

    let missing_model = Request::post("/run?version=3")
        .body(Body::from("{}"))
        .unwrap();
    send(&app, missing_model).await.binding_error(400, 3003);
}

#[tokio::test(flavor = "multi_thread")]
async fn wrangler_proxy_with_chunked_body() {
    let app = app();
    let body = json!({"inputs": {"text": "proxy me"}, "options": {}}).to_string();
    let chunks: Vec<Result<Bytes, std::io::Error>> = body
        .as_bytes()
        .chunks(7)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let request = Request::post("/client/v4/accounts/local/ai/run/proxy")
        .header("x-forwarded", "https://workers-binding.ai/run?version=3")
        .header("cf-consn-model-id", MINILM)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::TRANSFER_ENCODING, "chunked")
        .body(Body::from_stream(futures::stream::iter(chunks)))
        .unwrap();
    let reply = send(&app, request).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(reply.header("content-type"), "application/json");
    assert_eq!(reply.json()["shape"], json!([1, 384]));

    let search = Request::get("/client/v4/accounts/local/ai/run/proxy")
        .header(
            "x-forwarded",
            "https://workers-binding.ai/ai-api/models/search?task=Text+Embeddings",
        )
        .body(Body::empty())
        .unwrap();
    let reply = send(&app, search).await;
    let items = reply.json()["result"].as_array().unwrap().clone();
    assert!(!items.is_empty() && items.iter().all(|m| m["task"]["name"] == "Text Embeddings"));

    let unknown = Request::post("/client/v4/accounts/local/ai/run/proxy")
        .header("x-forwarded", "https://workers-binding.ai/nothing-here")
        .body(Body::empty())
        .unwrap();
    send(&app, unknown).await.binding_error(400, 7000);
}

// ------------------------------------------------------------------ streaming

#[tokio::test(flavor = "multi_thread")]
async fn streams_follow_the_native_sse_format_and_reuse_the_cached_prompt() {
    let app = app();
    // Non-ASCII output: every streamed piece must hold whole characters.
    let question = "请用中文介绍一下你自己。";
    let mut input = greedy_chat(question, 40);
    let whole = send(&app, post(&format!("{RUN}{QWEN}"), input.to_string()))
        .await
        .json()["result"]
        .clone();
    input["stream"] = json!(true);
    let reply = send(&app, post(&format!("{RUN}{QWEN}"), input.to_string())).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("content-type"), "text/event-stream");
    let events = sse_events(&reply.body);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let last = serde_json::from_str::<Value>(&events[events.len() - 2]).unwrap();
    assert_eq!(last["response"], "");
    // The same prompt again: all but its last token come from the prefix cache.
    let prompt_tokens = whole["usage"]["prompt_tokens"].as_u64().unwrap();
    assert_eq!(last["usage"]["prompt_tokens"], prompt_tokens);
    assert_eq!(
        last["usage"]["prompt_tokens_details"]["cached_tokens"],
        prompt_tokens - 1
    );
    let mut text = String::new();
    for event in &events[..events.len() - 2] {
        let piece: Value = serde_json::from_str(event).unwrap();
        text.push_str(piece["response"].as_str().unwrap());
    }
    assert!(!text.is_ascii(), "the answer should hold CJK text: {text}");
    // The streamed text is the text the usage counts. (It need not equal the first answer:
    // reading the prompt from the cache changes kernel shapes, which can flip a near-tie.)
    assert!(last["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    assert!(!whole["response"].as_str().unwrap().is_empty());
}

/// Workers AI's chat-completions family (gemma-4 here, answered by its stand-in) speaks OpenAI's
/// chat shapes on `/ai/run` and the binding, and takes `messages` only.
#[tokio::test(flavor = "multi_thread")]
async fn chat_completions_models_answer_in_openai_shapes() {
    const GEMMA4: &str = "@cf/google/gemma-4-26b-a4b-it";
    let app = app();
    let mut input = greedy_chat("What is the capital of France?", 24);
    let reply = send(&app, post(&format!("{RUN}{GEMMA4}"), input.to_string())).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("x-ember-model"), QWEN, "the stand-in served");
    let body = reply.json();
    assert_eq!(body["success"], true);
    let completion = &body["result"];
    assert_eq!(completion["object"], "chat.completion");
    assert_eq!(completion["model"], GEMMA4);
    assert!(completion["id"].as_str().unwrap().starts_with("chatcmpl-"));
    let choice = &completion["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["finish_reason"], "stop");
    let content = choice["message"]["content"].as_str().unwrap();
    assert!(content.contains("Paris"), "{completion}");
    let usage = &completion["usage"];
    assert!(usage["prompt_tokens"].as_u64().unwrap() > 10);
    assert!(usage["prompt_tokens_details"]["cached_tokens"].is_u64());
    assert!(usage["neurons"].as_f64().unwrap() > 0.0, "{usage}");

    // Streamed: OpenAI chunks, the usage chunk, Workers AI's own usage event, [DONE].
    input["stream"] = json!(true);
    let reply = send(&app, post(&format!("{RUN}{GEMMA4}"), input.to_string())).await;
    assert_eq!(reply.header("content-type"), "text/event-stream");
    let events = sse_events(&reply.body);
    let n = events.len();
    assert_eq!(events[n - 1], "[DONE]");
    let chunks: Vec<Value> = events[..n - 1]
        .iter()
        .map(|event| serde_json::from_str(event).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let native = &chunks[n - 2];
    assert_eq!(native["response"], "");
    assert!(native["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    let usage_chunk = &chunks[n - 3];
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(usage_chunk["usage"], native["usage"]);
    assert_eq!(chunks[n - 4]["choices"][0]["finish_reason"], "stop");
    let streamed: String = chunks[..n - 3]
        .iter()
        .inspect(|chunk| assert_eq!(chunk["object"], "chat.completion.chunk"))
        .filter_map(|chunk| chunk["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert!(streamed.contains("Paris"), "{streamed}");

    // The binding gets the bare object; OpenAI's max_completion_tokens is honoured.
    let mut short = greedy_chat("Count from one to twenty.", 24);
    short["max_completion_tokens"] = json!(3);
    let reply = send(&app, binding_request("/run?version=3", GEMMA4, short)).await;
    let completion = reply.json();
    assert_eq!(completion["object"], "chat.completion");
    assert_eq!(completion["choices"][0]["finish_reason"], "length");
    assert_eq!(completion["usage"]["completion_tokens"], 3);

    // A tool call is OpenAI's: an id, and the arguments as a JSON string.
    let weather = json!({
        "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
        "tools": [{"type": "function", "function": {
            "name": "get_weather",
            "description": "The current weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        }}],
        "tool_choice": "required",
        "temperature": 0,
    });
    let reply = send(&app, post(&format!("{RUN}{GEMMA4}"), weather.to_string())).await;
    let choice = &reply.json()["result"]["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{choice}");
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "get_weather");
    let arguments: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert!(arguments["city"].is_string(), "{arguments}");

    // `messages` only; its schema is the chat-completions one.
    let message = send(
        &app,
        post(
            &format!("{RUN}{GEMMA4}"),
            json!({"prompt": "Hi"}).to_string(),
        ),
    )
    .await
    .rest_error(400, 5006);
    assert!(
        message.contains("/prompt") && message.contains("send messages"),
        "{message}"
    );
    let schema = send(
        &app,
        get(&format!(
            "/client/v4/accounts/a/ai/models/schema?model={GEMMA4}"
        )),
    )
    .await
    .json()["result"]
        .clone();
    assert_eq!(schema["input"]["required"], json!(["messages"]));
}

#[tokio::test(flavor = "multi_thread")]
async fn reject_if_busy_gets_3040_while_the_model_is_full() {
    // The test server runs one sequence per model: a long stream holds it.
    let (address, _server) = serve_on_socket(app().router).await;
    let client = reqwest::Client::new();
    let mut long = greedy_chat("Count from one to two hundred in words.", 400);
    long["stream"] = json!(true);
    let busy = client
        .post(format!("http://{address}{RUN}{QWEN}"))
        .json(&long)
        .send()
        .await
        .unwrap();
    let mut stream = busy.bytes_stream();
    // Its first token arrived: the sequence is running.
    futures::StreamExt::next(&mut stream)
        .await
        .unwrap()
        .unwrap();

    let mut input = greedy_chat("Hi", 4);
    input["options"] = json!({"rejectIfBusy": true});
    let app = app();
    let reply = send(&app, post(&format!("{RUN}{QWEN}"), input.to_string())).await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(reply.json()["errors"][0]["code"], 3040);
    assert_eq!(
        reply.json()["errors"][0]["message"],
        "Capacity temporarily exceeded, please try again."
    );
    // The query string form (workers-ai-provider) and the binding's options.
    let reply = send(
        &app,
        post(
            &format!("{RUN}{QWEN}?rejectIfBusy=true"),
            greedy_chat("Hi", 4).to_string(),
        ),
    )
    .await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    let binding = Request::post("/run?version=3")
        .header("content-type", "application/json")
        .header("cf-consn-model-id", QWEN)
        .header("x-session-affinity", "ses_1")
        .body(Body::from(
            json!({"inputs": greedy_chat("Hi", 4), "options": {"rejectIfBusy": true}}).to_string(),
        ))
        .unwrap();
    let reply = send(&app, binding).await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(reply.json()["internalCode"], 3040);
    drop(stream);
    wait_until_model_is_free(QWEN).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_are_served_as_openmetrics() {
    let app = app();
    send(
        &app,
        post(
            &format!("{RUN}{QWEN}"),
            greedy_chat("Say hi.", 4).to_string(),
        ),
    )
    .await;
    let reply = send(&app, get("/metrics")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(
        reply
            .header("content-type")
            .starts_with("application/openmetrics-text")
    );
    let text = String::from_utf8(reply.body.to_vec()).unwrap();
    for name in [
        "ember_queue_depth",
        "ember_running_sequences",
        "ember_kv_cells_used",
        "ember_kv_cells_free",
        "ember_prefix_cache_hit_ratio",
        "ember_generated_tokens_total",
        "ember_time_to_first_token_seconds_bucket",
        "ember_inter_token_latency_seconds_bucket",
    ] {
        let model = format!("model=\"{QWEN}\"");
        assert!(
            text.lines()
                .any(|line| line.starts_with(name) && line.contains(&model)),
            "{name} missing:\n{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn streamed_tokens_arrive_before_the_generation_ends() {
    let (address, _server) = serve_on_socket(app().router).await;
    let client = reqwest::Client::new();
    let mut input = greedy_chat("Count from one to thirty in words.", 120);
    input["stream"] = json!(true);
    let response = client
        .post(format!("http://{address}{RUN}{SMOL}"))
        .json(&input)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut stream = response.bytes_stream();
    let mut arrivals = Vec::new();
    let mut body = Vec::new();
    let started = std::time::Instant::now();
    while let Some(chunk) = futures::StreamExt::next(&mut stream).await {
        arrivals.push(started.elapsed());
        body.extend_from_slice(&chunk.unwrap());
    }
    let events = sse_events(&body);
    assert!(events.len() > 10);
    assert!(
        arrivals.len() > 5,
        "events are flushed one by one, got {} chunks",
        arrivals.len()
    );
}

// ------------------------------------------------------------------ catalog routes

#[tokio::test(flavor = "multi_thread")]
async fn model_search_filters_and_pages() {
    let app = app();
    let all = send(&app, get("/client/v4/accounts/a/ai/models/search"))
        .await
        .json();
    let total = all["result_info"]["total_count"].as_u64().unwrap();
    assert!(total >= 9);
    let names: Vec<&str> = all["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&QWEN) && names.contains(&"@cf/baai/bge-large-en-v1.5"));
    let qwen = all["result"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == QWEN)
        .unwrap();
    assert_eq!(qwen["task"]["id"], "c329a1f9-323d-4e91-b2aa-582dd4188d34");
    assert!(
        qwen["properties"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["property_id"] == "context_window")
    );

    let page = send(
        &app,
        get("/client/v4/accounts/a/ai/models/search?per_page=2&page=2"),
    )
    .await
    .json();
    assert_eq!(page["result"].as_array().unwrap().len(), 2);
    assert_eq!(
        page["result_info"],
        json!({"page": 2, "per_page": 2, "count": 2, "total_count": total})
    );
    let past_end = send(&app, get("/client/v4/accounts/a/ai/models/search?page=99"))
        .await
        .json();
    assert_eq!(
        past_end["result"],
        json!([]),
        "clients page until an empty page"
    );

    let embeddings = send(
        &app,
        get("/client/v4/accounts/a/ai/models/search?task=Text%20Embeddings&author=baai"),
    )
    .await
    .json();
    assert_eq!(embeddings["result"].as_array().unwrap().len(), 3);
    let search = send(
        &app,
        get("/client/v4/accounts/a/ai/models/search?search=SMOLLM"),
    )
    .await
    .json();
    assert_eq!(search["result"][0]["name"], SMOL);

    let native = send(&app, get("/ai-api/models/search?author=meta"))
        .await
        .json();
    assert!(
        native["result"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["name"].as_str().unwrap().starts_with("@cf/meta/"))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn model_schema() {
    let app = app();
    let reply = send(
        &app,
        get(&format!(
            "/client/v4/accounts/a/ai/models/schema?model={}",
            QWEN.replace('/', "%2F")
        )),
    )
    .await;
    let result = reply.json()["result"].clone();
    assert!(result["input"]["oneOf"].is_array() && result["output"].is_object());
    let reply = send(
        &app,
        get(&format!(
            "/client/v4/accounts/a/ai/models/schema?model={MINILM}"
        )),
    )
    .await;
    assert_eq!(reply.json()["result"]["input"]["required"], json!(["text"]));
    send(&app, get("/client/v4/accounts/a/ai/models/schema"))
        .await
        .rest_error(400, 5006);
    send(
        &app,
        get("/client/v4/accounts/a/ai/models/schema?model=@cf/x/y"),
    )
    .await
    .rest_error(400, 5007);
}

#[tokio::test(flavor = "multi_thread")]
async fn health() {
    let reply = send(&app(), get("/health")).await;
    assert_eq!(reply.json()["status"], "ok");
}

// ------------------------------------------------------------------ errors

#[tokio::test(flavor = "multi_thread")]
async fn bad_inputs_get_5006_naming_the_field() {
    let app = app();
    let cases = [
        (SMOL, "{not json".to_string(), "not valid JSON"),
        (SMOL, json!({"prompt": 5}).to_string(), "/prompt"),
        (SMOL, json!({"prompt": ""}).to_string(), "/prompt"),
        (
            SMOL,
            json!({"messages": [{"role": "user", "content": 1}]}).to_string(),
            "/messages/0/content",
        ),
        (
            SMOL,
            json!({"prompt": "x", "messages": []}).to_string(),
            "mutually exclusive",
        ),
        (
            SMOL,
            json!({"prompt": "x", "temperature": -1}).to_string(),
            "/temperature",
        ),
        (
            SMOL,
            json!({"text": "a chat model asked for embeddings"}).to_string(),
            "'prompt' or 'messages'",
        ),
        (
            MINILM,
            json!({"prompt": "an embedding model asked to chat"}).to_string(),
            "'text'",
        ),
        (MINILM, json!({"text": []}).to_string(), "/text"),
        (
            MINILM,
            json!({"text": "x", "pooling": "max"}).to_string(),
            "/pooling",
        ),
    ];
    for (model, body, needle) in cases {
        let message = send(&app, post(&format!("{RUN}{model}"), body.clone()))
            .await
            .rest_error(400, 5006);
        assert!(message.contains(needle), "{body}: {message}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_models_routes_and_empty_bodies() {
    let app = app();
    let message = send(&app, post(&format!("{RUN}@cf/nobody/nothing"), "{}"))
        .await
        .rest_error(400, 5007);
    assert!(message.contains("@cf/nobody/nothing"));
    send(&app, post("/client/v4/accounts/a/ai/nothing", "{}"))
        .await
        .rest_error(400, 7000);
    send(&app, get(&format!("{RUN}{SMOL}")))
        .await
        .rest_error(400, 7000);
    send(&app, post(&format!("{RUN}{SMOL}"), ""))
        .await
        .rest_error(400, 3003);
}

#[tokio::test(flavor = "multi_thread")]
async fn bodies_over_the_limit_get_3006() {
    let app = app();
    let huge = format!("{{\"prompt\": \"{}\"}}", "a".repeat(10_500_000));
    send(&app, post(&format!("{RUN}{SMOL}"), huge))
        .await
        .rest_error(413, 3006);
}

#[tokio::test(flavor = "multi_thread")]
async fn prompts_longer_than_the_context_get_3030() {
    let app = app();
    // SmolLM2's context is 8192 tokens; this prompt is well over it.
    let long = "hello world ".repeat(9000);
    let message = send(
        &app,
        post(
            &format!("{RUN}{SMOL}"),
            json!({"prompt": long, "raw": true}).to_string(),
        ),
    )
    .await
    .rest_error(400, 3030);
    assert!(message.contains("Sequence too long"), "{message}");
    assert!(message.contains("the model's context window"), "{message}");
    let streamed = json!({"prompt": long, "raw": true, "stream": true}).to_string();
    send(&app, post(&format!("{RUN}{SMOL}"), streamed))
        .await
        .rest_error(400, 3030);
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_runs_time_out_with_3007() {
    let app = app_with_http(HttpConfig {
        request_timeout: Duration::from_millis(50),
        ..HttpConfig::default()
    });
    let input = json!({"prompt": "Tell me a long story.", "max_tokens": 2000});
    send(&app, post(&format!("{RUN}{QWEN}"), input.to_string()))
        .await
        .rest_error(408, 3007);
}

#[tokio::test(flavor = "multi_thread")]
async fn runs_aborted_at_shutdown_get_3008() {
    let app = app();
    let abort = app.abort.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _ = abort.send(true);
    });
    let input = json!({"prompt": "Tell me a long story.", "max_tokens": 2000});
    send(&app, post(&format!("{RUN}{QWEN}"), input.to_string()))
        .await
        .rest_error(408, 3008);
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_are_required_once_an_account_exists() {
    let app = app();
    let body = greedy_chat("hi", 2).to_string();
    // Dev mode: no account yet, so no token is needed.
    assert_eq!(
        send(&app, post(&format!("{RUN}{SMOL}"), body.clone()))
            .await
            .status,
        StatusCode::OK
    );
    let (account, token) = account(&app, Plan::Free, 10_000.0).await;
    let path = format!("/client/v4/accounts/{}/ai/run/{SMOL}", account.id);
    send(&app, post(&path, body.clone()))
        .await
        .rest_error(401, 10000);
    send(&app, with_token(post(&path, body.clone()), "dummy"))
        .await
        .rest_error(401, 10000);
    let binding = binding_request("/run?version=3", SMOL, greedy_chat("hi", 2));
    send(&app, binding).await.binding_error(401, 10000);
    assert_eq!(
        send(&app, with_token(post(&path, body), &token))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        send(&app, get("/health")).await.status,
        StatusCode::OK,
        "health needs no token"
    );
}

// ------------------------------------------------------------------ shutdown

#[tokio::test(flavor = "multi_thread")]
async fn graceful_shutdown_lets_in_flight_streams_finish() {
    let home = ember_core::installed::default_home();
    let db = std::env::temp_dir().join(format!("ember-shutdown-{}.db", std::process::id()));
    let config = ember::ServeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        db: db.clone(),
        home,
        catalog: None,
        require_auth: false,
        rate_limits: true,
        task_rate_limits: HashMap::new(),
        aliases: HashMap::new(),
        request_timeout: Duration::from_secs(60),
        shutdown_grace: Duration::from_secs(60),
        preload: vec![SMOL.to_string()],
        providers: Vec::new(),
        engine: engine_config(4),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let server = tokio::spawn(ember::serve(
        config,
        async { stopped.await.unwrap_or(()) },
        move |address| {
            let _ = ready_tx.send(address);
        },
    ));
    let address = ready_rx.await.unwrap();
    let mut input = greedy_chat("Count from one to twenty in words.", 60);
    input["stream"] = json!(true);
    let response = reqwest::Client::new()
        .post(format!("http://{address}{RUN}{SMOL}"))
        .json(&input)
        .send()
        .await
        .unwrap();
    stop.send(()).unwrap();
    let body = response.bytes().await.unwrap();
    let events = sse_events(&body);
    assert_eq!(
        events.last().unwrap(),
        "[DONE]",
        "the stream finished after the shutdown signal"
    );
    server.await.unwrap().unwrap();
    let _ = std::fs::remove_file(db);
}
