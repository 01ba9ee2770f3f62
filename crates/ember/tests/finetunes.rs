//! Finetunes through the REST API, as wrangler's `ai finetune create` and the `cloudflare` SDK
//! drive them: create, upload the two PEFT files, run with `lora` (REST and binding) and get what
//! llama.cpp generates with the adapter (the fixture of `crates/ember-engines/tests/
//! lora_reference.rs`), list, delete; and every refusal with its Workers AI code, naming the field.

mod common;

use axum::body::Body;
use axum::http::{Request, header};
use common::{ALIAS, MINILM, QWEN, SMOL, app, binding_request, get, post, send};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use std::path::PathBuf;
use tower::ServiceExt;

const FINETUNES: &str = "/client/v4/accounts/local/ai/finetunes";

fn fixture(file: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../ember-engines/tests/fixtures/lora")
        .join(file);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn reference() -> Value {
    serde_json::from_slice(&fixture("reference.json")).unwrap()
}

/// The asset upload as the `cloudflare` SDK sends it: multipart `file_name` and `file`.
fn upload(finetune: &str, file_name: &str, bytes: &[u8]) -> Request<Body> {
    let boundary = "ember-test-boundary";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file_name\"\r\n\r\n{file_name}\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{file_name}\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(bytes);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    Request::post(format!("{FINETUNES}/{finetune}/finetune-assets"))
        .header(
            header::CONTENT_TYPE,
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(Body::from(body))
        .unwrap()
}

fn delete(finetune: &str) -> Request<Body> {
    Request::delete(format!("{FINETUNES}/{finetune}"))
        .body(Body::empty())
        .unwrap()
}

fn run(model: &str, input: Value) -> Request<Body> {
    post(
        &format!("/client/v4/accounts/local/ai/run/{model}"),
        input.to_string(),
    )
}

fn greedy_with(lora: &str) -> Value {
    let reference = reference();
    json!({
        "prompt": reference["prompt"], "raw": true, "max_tokens": reference["max_tokens"],
        "temperature": 0, "lora": lora,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finetune_is_created_uploaded_run_and_deleted() {
    let app = app();
    let create = |body: Value| post(FINETUNES, body.to_string());
    let created = send(
        &app,
        create(json!({"model": QWEN, "name": "terse", "description": "test adapter"})),
    )
    .await;
    assert_eq!(created.status, 200, "{:?}", created.body);
    let finetune = created.json()["result"].clone();
    let id = finetune["id"].as_str().unwrap().to_string();
    assert_eq!(finetune["name"], "terse");
    assert_eq!(finetune["model"], QWEN);
    assert_eq!(finetune["description"], "test adapter");
    assert!(finetune["created_at"].as_str().unwrap().ends_with('Z'));

    // Refusals at creation.
    let taken = send(&app, create(json!({"model": QWEN, "name": "terse"}))).await;
    taken.rest_error(409, 7004);
    for model in [MINILM, ALIAS] {
        let refused = send(&app, create(json!({"model": model, "name": "x"}))).await;
        let message = refused.rest_error(405, 5005);
        assert!(message.contains(model), "{message}");
    }
    let nameless = send(&app, create(json!({"model": QWEN}))).await;
    assert!(nameless.rest_error(400, 5006).contains("/name"));

    // Before both files are there, a run with it is refused as Workers AI refuses it.
    let early = send(&app, run(QWEN, greedy_with("terse"))).await;
    early.rest_error(400, 3039);

    // Uploads that cannot be applied are refused, naming the problem.
    let rank_64 = br#"{"r": 64, "lora_alpha": 16, "target_modules": ["q_proj"]}"#;
    let refused = send(&app, upload(&id, "adapter_config.json", rank_64)).await;
    assert!(refused.rest_error(400, 5006).contains("rank (r) 64"));
    let corrupt = &fixture("adapter_model.safetensors")[..4096];
    let refused = send(&app, upload(&id, "adapter_model.safetensors", corrupt)).await;
    assert!(
        refused
            .rest_error(400, 5006)
            .contains("not a readable safetensors")
    );
    let refused = send(&app, upload(&id, "model.bin", b"weights")).await;
    assert!(refused.rest_error(400, 5006).contains("/file_name"));
    let refused = send(
        &app,
        upload("no-such-finetune", "adapter_config.json", b"{}"),
    )
    .await;
    refused.rest_error(404, 7003);

    for file in ["adapter_config.json", "adapter_model.safetensors"] {
        let uploaded = send(&app, upload(&id, file, &fixture(file))).await;
        assert_eq!(uploaded.status, 200, "{:?}", uploaded.body);
        assert_eq!(uploaded.json()["success"], true);
    }

    // By name on the REST route, by id through the binding: llama.cpp's text with the adapter.
    let reference = reference();
    let by_name = send(&app, run(QWEN, greedy_with("terse"))).await;
    assert_eq!(by_name.status, 200, "{:?}", by_name.body);
    assert_eq!(by_name.json()["result"]["response"], reference["with_lora"]);
    let by_id = send(&app, binding_request("/run", QWEN, greedy_with(&id))).await;
    assert_eq!(by_id.status, 200, "{:?}", by_id.body);
    assert_eq!(by_id.json()["response"], reference["with_lora"]);

    // Refusals at run time.
    let unknown = send(&app, run(QWEN, greedy_with("nobody"))).await;
    assert!(unknown.rest_error(400, 5006).contains("/lora"));
    let other_model = send(&app, run(SMOL, greedy_with("terse"))).await;
    let message = other_model.rest_error(400, 5006);
    assert!(message.contains("is for"), "{message}");
    let unsupported = send(&app, run(ALIAS, greedy_with("terse"))).await;
    unsupported.rest_error(405, 5005);

    let listed = send(&app, get(FINETUNES)).await;
    assert_eq!(listed.json()["result"][0]["id"], id.as_str());
    let public = send(&app, get(&format!("{FINETUNES}/public"))).await;
    assert_eq!(public.json()["result"], json!([]));

    let deleted = send(&app, delete(&id)).await;
    assert_eq!(deleted.status, 200, "{:?}", deleted.body);
    let gone = send(&app, run(QWEN, greedy_with("terse"))).await;
    assert!(gone.rest_error(400, 5006).contains("/lora"));
    let listed = send(&app, get(FINETUNES)).await;
    assert_eq!(listed.json()["result"], json!([]));
}

/// Deleting a finetune while a request streams with its adapter: the request ends with the
/// adapter's text; later requests no longer find it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finetune_deleted_mid_stream_leaves_the_stream_whole() {
    let app = app();
    let created = send(
        &app,
        post(
            FINETUNES,
            json!({"model": QWEN, "name": "streamed"}).to_string(),
        ),
    )
    .await;
    let id = created.json()["result"]["id"].as_str().unwrap().to_string();
    for file in ["adapter_config.json", "adapter_model.safetensors"] {
        assert_eq!(
            send(&app, upload(&id, file, &fixture(file))).await.status,
            200
        );
    }
    let mut input = greedy_with("streamed");
    input["stream"] = json!(true);
    let response = app.router.clone().oneshot(run(QWEN, input)).await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    let deleted = send(&app, delete(&id)).await;
    assert_eq!(deleted.status, 200);
    let rest = body.collect().await.unwrap().to_bytes();
    let mut all = first.to_vec();
    all.extend_from_slice(&rest);
    let text: String = common::sse_events(&all)
        .iter()
        .filter(|event| *event != "[DONE]")
        .filter_map(|event| serde_json::from_str::<Value>(event).ok())
        .filter_map(|event| event["response"].as_str().map(str::to_string))
        .collect();
    assert_eq!(text, reference()["with_lora"].as_str().unwrap());
    let gone = send(&app, run(QWEN, greedy_with("streamed"))).await;
    assert!(gone.rest_error(400, 5006).contains("/lora"));
}
