//! The task platform through HTTP, on the fake runner kit (no real models): each of the text
//! tasks on REST, the binding and `/v1/rerank` with its exact shapes, its validation errors
//! naming the field, garbage bodies, the catalog routes, and an engine that panics.

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use common::fake::{FAKE_MODELS, PANIC, fake_ember};
use common::*;
use ember_gateway::GatewayConfig;
use ember_gateway::clock::SystemClock;
use ember_http::HttpConfig;
use serde_json::{Value, json};
use std::sync::Arc;

const RUN: &str = "/client/v4/accounts/local/ai/run/";
const CLASSIFIER: &str = "@cf/huggingface/distilbert-sst-2-int8";
const RERANKER: &str = "@cf/baai/bge-reranker-base";
const TRANSLATOR: &str = "@cf/meta/m2m100-1.2b";
const SUMMARIZER: &str = "@cf/facebook/bart-large-cnn";

fn fake_app() -> App {
    app_on(
        fake_ember(),
        HttpConfig::default(),
        GatewayConfig::default(),
        Arc::new(SystemClock),
    )
}

async fn rest(app: &App, model: &str, input: Value) -> Reply {
    send(app, post(&format!("{RUN}{model}"), input.to_string())).await
}

/// The REST result of a successful run, checking the envelope and `x-ember-model`.
async fn rest_result(app: &App, model: &str, input: Value) -> Value {
    let reply = rest(app, model, input).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(reply.header("content-type"), "application/json");
    assert_eq!(reply.header("x-ember-model"), model);
    let body = reply.json();
    assert_eq!(
        (&body["success"], &body["errors"], &body["messages"]),
        (&json!(true), &json!([]), &json!([]))
    );
    body["result"].clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn each_text_task_answers_rest_and_binding_in_its_exact_shape() {
    let app = fake_app();
    let cases = [
        (
            CLASSIFIER,
            json!({"text": "a good film"}),
            json!([{"label": "NEGATIVE", "score": 0.25}, {"label": "POSITIVE", "score": 0.75}]),
        ),
        (
            RERANKER,
            json!({"query": "red planet", "contexts": [{"text": "blue sea"}, {"text": "the red planet"}, {"text": "red wine"}], "top_k": 2}),
            json!({"response": [{"id": 1, "score": 2.0}, {"id": 2, "score": 1.0}]}),
        ),
        (
            TRANSLATOR,
            json!({"text": "hello", "source_lang": "english", "target_lang": "fr"}),
            json!({"translated_text": "[fr] hello"}),
        ),
        (
            TRANSLATOR,
            json!({"requests": [{"text": "a", "target_lang": "German"}, {"text": "b", "target_lang": "es"}]}),
            json!([{"translated_text": "[de] a"}, {"translated_text": "[es] b"}]),
        ),
        (
            SUMMARIZER,
            json!({"input_text": "First point. Second point.", "max_length": 20}),
            json!({"summary": "First point"}),
        ),
    ];
    for (model, input, expected) in cases {
        assert_eq!(
            rest_result(&app, model, input.clone()).await,
            expected,
            "{model}"
        );
        let reply = send(&app, binding_request("/run?version=3", model, input)).await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        assert_eq!(reply.header("content-type"), "application/json");
        assert_eq!(reply.json(), expected, "{model} through the binding");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn runs_are_priced_at_the_model_price_from_their_tokens() {
    let app = fake_app();
    let reply = rest(
        &app,
        TRANSLATOR,
        json!({"text": "one two three", "target_lang": "fr"}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    let id = reply.header("cf-ai-req-id").to_string();
    let mut record = None;
    for _ in 0..100 {
        record = app.store.ledger.request(&id).await.unwrap();
        if record.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let record = record.expect("logged");
    // 3 input tokens and 4 output tokens, both at 31,050 neurons per million.
    assert_eq!((record.prompt_tokens, record.completion_tokens), (3, 4));
    assert!(
        (record.neurons - 7.0 * 31_050.0 / 1e6).abs() < 1e-9,
        "{}",
        record.neurons
    );
    assert_eq!(record.served_by.as_deref(), Some(TRANSLATOR));
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_a_400_naming_the_field() {
    let app = fake_app();
    let long = "x".repeat(200_000);
    let cases = [
        (CLASSIFIER, json!({}), "'/'"),
        (CLASSIFIER, json!({"text": 5}), "/text"),
        (CLASSIFIER, json!({"text": ""}), "/text"),
        (CLASSIFIER, json!({"text": long}), "/text"),
        (RERANKER, json!({"query": "q"}), "'/'"),
        (RERANKER, json!({"query": "q", "contexts": []}), "/contexts"),
        (
            RERANKER,
            json!({"query": "q", "contexts": [{"text": 1}]}),
            "/contexts/0/text",
        ),
        (
            RERANKER,
            json!({"query": "q", "contexts": [{"text": "a"}], "top_k": "2"}),
            "/top_k",
        ),
        (
            TRANSLATOR,
            json!({"text": "a", "target_lang": "klingon"}),
            "/target_lang",
        ),
        (
            TRANSLATOR,
            json!({"text": "a", "source_lang": 7, "target_lang": "fr"}),
            "/source_lang",
        ),
        (TRANSLATOR, json!({"requests": []}), "/requests"),
        (
            TRANSLATOR,
            json!({"requests": [{"text": "a", "target_lang": "xx"}]}),
            "/requests/0/target_lang",
        ),
        (SUMMARIZER, json!({"input_text": ["a"]}), "/input_text"),
        (
            SUMMARIZER,
            json!({"input_text": "a", "max_length": 0}),
            "/max_length",
        ),
        (SUMMARIZER, json!([1, 2]), "'/'"),
    ];
    for (model, input, field) in cases {
        let reply = rest(&app, model, input.clone()).await;
        let message = reply.rest_error(400, 5006);
        assert!(message.contains(field), "{model} {input}: {message}");
        let reply = send(&app, binding_request("/run", model, input)).await;
        reply.binding_error(400, 5006);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_bodies_are_refused_without_harm() {
    let app = fake_app();
    for model in FAKE_MODELS {
        for body in [
            Body::from(vec![0xff, 0x00, 0xfe, 0x89, 0x50, 0x4e, 0x47]),
            Body::from("{\"text\": "),
            Body::from(""),
        ] {
            let request = Request::post(format!("{RUN}{model}"))
                .header(header::CONTENT_TYPE, "application/octet-stream")
                .body(body)
                .unwrap();
            let reply = send(&app, request).await;
            assert_eq!(
                reply.status,
                StatusCode::BAD_REQUEST,
                "{model}: {:?}",
                reply.body
            );
        }
    }
    // Still serving.
    rest_result(&app, CLASSIFIER, json!({"text": "good"})).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_panicking_engine_is_answered_with_500_and_loaded_again() {
    let app = fake_app();
    rest_result(&app, CLASSIFIER, json!({"text": "good"})).await;
    let reply = rest(&app, CLASSIFIER, json!({"text": format!("{PANIC} now")})).await;
    let message = reply.rest_error(500, 3000);
    assert!(
        !message.contains("panic"),
        "details stay in the log: {message}"
    );
    // The model is loaded again for the next request, and the restart is counted.
    let result = rest_result(&app, CLASSIFIER, json!({"text": "good"})).await;
    assert_eq!(result[1]["label"], "POSITIVE");
    let health = send(&app, get("/health")).await.json();
    let loaded = health["loaded"].as_array().unwrap();
    let classifier = loaded.iter().find(|m| m["model"] == CLASSIFIER).unwrap();
    assert_eq!(classifier["restarts"], 1, "{health}");
    let metrics = String::from_utf8(send(&app, get("/metrics")).await.body.to_vec()).unwrap();
    assert!(
        metrics.contains(&format!(
            "ember_model_restarts_total{{model=\"{CLASSIFIER}\"}} 1"
        )),
        "{metrics}"
    );
    // Other models never noticed.
    rest_result(&app, SUMMARIZER, json!({"input_text": "Still. Here."})).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rerank_answers_in_the_cohere_shape() {
    let app = fake_app();
    for prefix in ["/v1", "/client/v4/accounts/local/ai/v1"] {
        let reply = send(
            &app,
            post(
                &format!("{prefix}/rerank"),
                json!({"model": RERANKER, "query": "red planet", "documents": ["blue sea", {"text": "the red planet"}], "top_n": 1, "return_documents": true}).to_string(),
            ),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        let body = reply.json();
        assert_eq!(
            body["results"],
            json!([{"index": 1, "relevance_score": 2.0, "document": {"text": "the red planet"}}])
        );
        assert_eq!(body["model"], RERANKER);
        assert_eq!(body["usage"]["total_tokens"], 7);
    }
    for (input, field) in [
        (json!({"model": RERANKER, "documents": ["a"]}), "query"),
        (
            json!({"model": RERANKER, "query": "q", "documents": []}),
            "documents",
        ),
        (
            json!({"model": RERANKER, "query": "q", "documents": [3]}),
            "documents[0]",
        ),
        (
            json!({"model": RERANKER, "query": "q", "documents": ["a"], "top_n": 0}),
            "top_n",
        ),
        (
            json!({"model": CLASSIFIER, "query": "q", "documents": ["a"]}),
            "model",
        ),
    ] {
        let reply = send(&app, post("/v1/rerank", input.to_string())).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{input}");
        let error = reply.json();
        assert!(
            error["error"]["param"].as_str().unwrap().starts_with(field),
            "{input}: {error}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_catalog_lists_and_describes_the_text_tasks() {
    let app = fake_app();
    let search = send(
        &app,
        get("/client/v4/accounts/local/ai/models/search?task=Text%20Classification"),
    )
    .await
    .json();
    let names: Vec<&str> = search["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&CLASSIFIER) && names.contains(&RERANKER),
        "{names:?}"
    );
    for (model, required) in [
        (CLASSIFIER, json!(["text"])),
        (RERANKER, json!(["query", "contexts"])),
        (SUMMARIZER, json!(["input_text"])),
    ] {
        let schema = send(
            &app,
            get(&format!(
                "/client/v4/accounts/local/ai/models/schema?model={model}"
            )),
        )
        .await
        .json();
        assert_eq!(schema["result"]["input"]["required"], required, "{model}");
    }
    let translation = send(
        &app,
        get(&format!(
            "/client/v4/accounts/local/ai/models/schema?model={TRANSLATOR}"
        )),
    )
    .await
    .json();
    assert!(translation["result"]["input"]["oneOf"].is_array());
}
