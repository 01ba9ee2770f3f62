//! Chat with images and image-to-text through the routes, on the tiny Gemma 3 with its image
//! encoder (`@hf/ember/tiny-gemma3-vision`, whose engine `ember-engines/tests/vlm_reference.rs`
//! compares with llama-mtmd-cli): image_url parts on `/ai/run` (whole and streamed), the binding
//! and `/v1/chat/completions` give llama-mtmd-cli's text; Llama 3.2 Vision's top-level `image`; the
//! image-to-text ids answer `{description}` from the raw body or a byte array (LLaVA's id
//! installed from the same files, UForm's stand-in served by it); bad images, image URLs and
//! images sent to a model without an encoder are refused naming the field; catalog models
//! without weights say how to pull them.

mod common;

use axum::http::StatusCode;
use base64::Engine as _;
use common::*;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::Arc;

const RUN: &str = "/client/v4/accounts/local/ai/run/";
const TINY: &str = "@hf/ember/tiny-gemma3-vision";
const LLAVA: &str = "@cf/llava-hf/llava-1.5-7b-hf";
const UFORM: &str = "@cf/unum/uform-gen2-qwen-500m";
const PROMPT: &str = "Describe this image.";

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../ember-engines/tests/fixtures")
}

fn cat() -> Vec<u8> {
    std::fs::read(fixtures().join("vision/images/cat.png")).unwrap()
}

/// What llama-mtmd-cli generated for the cat and `PROMPT`, 16 tokens, greedy.
fn reference_text() -> String {
    let path = fixtures().join("vlm/reference.json");
    let reference: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let case = &reference["cases"][0];
    assert_eq!(
        (case["image"].as_str(), case["prompt"].as_str()),
        (Some("cat.png"), Some(PROMPT))
    );
    case["generated_text"].as_str().unwrap().to_string()
}

/// An app whose model cache (its own, named after `test`) holds the tiny model under its id and
/// under LLaVA's.
fn app_with_tiny_vlm(test: &str) -> App {
    let home = std::env::temp_dir().join(format!("ember-tiny-vlm-{test}-{}", std::process::id()));
    for id in [TINY, LLAVA] {
        install_fixture(&home, id, &[fixtures().join("vlm")]);
    }
    let ember = ember::open_ember(&home, None, Default::default(), &engine_config(1)).unwrap();
    app_on(
        Arc::new(ember),
        ember_http::HttpConfig::default(),
        ember_access::AccessConfig::default(),
        Arc::new(ember_access::clock::SystemClock),
    )
}

fn data_url(bytes: &[u8]) -> String {
    format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

fn chat(image_url: Value) -> Value {
    json!({
        "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": image_url}},
            {"type": "text", "text": PROMPT},
        ]}],
        "max_tokens": 16,
        "temperature": 0,
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn image_parts_give_llama_mtmd_clis_text_on_every_route() {
    let app = app_with_tiny_vlm("routes");
    let expected = reference_text();
    let reply = send(
        &app,
        post(
            &format!("{RUN}{TINY}"),
            chat(json!(data_url(&cat()))).to_string(),
        ),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let result = &reply.json()["result"];
    assert_eq!(result["response"], expected.as_str());
    assert_eq!(result["usage"]["completion_tokens"], 16);
    // The image as an array of byte values, through the binding.
    let reply = send(&app, binding_request("/run", TINY, chat(json!(cat())))).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(reply.json()["response"], expected.as_str());
    // OpenAI's chat completions.
    let mut openai = chat(json!(data_url(&cat())));
    openai["model"] = json!(TINY);
    let reply = send(&app, post("/v1/chat/completions", openai.to_string())).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(
        reply.json()["choices"][0]["message"]["content"],
        expected.as_str()
    );
    // Streamed: the events' pieces make the same text.
    let mut streamed = chat(json!(data_url(&cat())));
    streamed["stream"] = json!(true);
    let reply = send(&app, post(&format!("{RUN}{TINY}"), streamed.to_string())).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let text: String = sse_events(&reply.body)
        .iter()
        .filter(|event| *event != "[DONE]")
        .filter_map(|event| {
            let event: Value = serde_json::from_str(event).unwrap();
            event["response"].as_str().map(str::to_string)
        })
        .collect();
    assert_eq!(text, expected);
    // Llama 3.2 Vision's shape: the image beside the prompt, read before it.
    let reply = send(
        &app,
        post(
            &format!("{RUN}{TINY}"),
            json!({"prompt": PROMPT, "image": cat(), "max_tokens": 16, "temperature": 0})
                .to_string(),
        ),
    )
    .await;
    assert_eq!(reply.json()["result"]["response"], expected.as_str());
}

#[tokio::test(flavor = "multi_thread")]
async fn image_to_text_answers_a_description() {
    let app = app_with_tiny_vlm("describe");
    let expected = reference_text();
    let reply = send(
        &app,
        axum::http::Request::post(format!("{RUN}{LLAVA}"))
            .header("content-type", "image/png")
            .body(axum::body::Body::from(cat()))
            .unwrap(),
    )
    .await;
    // The raw body takes the defaults: the default prompt, sampled; only the shape is known.
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert!(reply.json()["result"]["description"].is_string());
    let input = json!({"image": cat(), "prompt": PROMPT, "max_tokens": 16, "temperature": 0});
    for model in [LLAVA, UFORM] {
        let reply = send(&app, post(&format!("{RUN}{model}"), input.to_string())).await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        assert_eq!(reply.header("x-ember-model"), LLAVA);
        let result = reply.json()["result"].clone();
        assert_eq!(result, json!({"description": expected.trim()}));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_images_and_blind_models_are_refused_by_field() {
    let vlm = app_with_tiny_vlm("refusals");
    let cases = [
        (
            TINY,
            chat(json!("https://example.com/cat.png")),
            "/messages/0/content/0/image_url",
        ),
        (
            TINY,
            chat(json!(data_url(b"not an image"))),
            "/messages/0/content/0",
        ),
        (TINY, chat(json!([])), "/messages/0/content/0/image_url"),
        (LLAVA, json!({"prompt": PROMPT}), "/"),
        (
            LLAVA,
            json!({"image": b"GIF89a".to_vec(), "prompt": PROMPT}),
            "/image",
        ),
        (
            LLAVA,
            json!({"image": [1, 2], "max_tokens": 0}),
            "/max_tokens",
        ),
        (LLAVA, json!({"image": [1, 2], "raw": true}), "/raw"),
    ];
    for (model, input, field) in cases {
        let reply = send(&vlm, post(&format!("{RUN}{model}"), input.to_string())).await;
        let message = reply.rest_error(400, 5006);
        assert!(message.contains(field), "{model} {input}: {message}");
    }
    // A text model takes no images.
    let reply = send(
        &app(),
        post(
            &format!("{RUN}{SMOL}"),
            chat(json!(data_url(&cat()))).to_string(),
        ),
    )
    .await;
    let message = reply.rest_error(400, 5006);
    assert!(message.contains("does not take images"), "{message}");
}

#[tokio::test(flavor = "multi_thread")]
async fn vision_models_without_weights_say_how_to_pull_them() {
    for (model, input) in [
        ("@cf/google/gemma-3-12b-it", chat(json!(data_url(&cat())))),
        (
            "@cf/meta/llama-3.2-11b-vision-instruct",
            chat(json!(data_url(&cat()))),
        ),
        (LLAVA, json!({"image": [1, 2]})),
    ] {
        let reply = send(&app(), post(&format!("{RUN}{model}"), input.to_string())).await;
        let message = reply.rest_error(400, 5007);
        assert!(message.contains("ember models pull"), "{model}: {message}");
    }
}
