//! Text-to-image through the routes, on the tiny generated Stable Diffusion (`@hf/ember/tiny-sd`,
//! whose engine `ember-engines/tests/diffusion_reference.rs` compares with diffusers): a catalog
//! model without weights says how to pull it and the memory it needs; the test model answers a
//! PNG of the asked size on REST and the binding, the same PNG for the same seed, image-to-image
//! from a starting image, usage priced per tile and step; bad input is refused naming the field;
//! OpenAI's `/v1/images/generations` answers base64 or URLs this server then serves; a run whose
//! caller timed out stops at its next step.

mod common;

use axum::http::StatusCode;
use base64::Engine as _;
use common::*;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::Arc;

const RUN: &str = "/client/v4/accounts/local/ai/run/";
const TINY: &str = "@hf/ember/tiny-sd";
const TINY_TAESD: &str = "@hf/ember/tiny-sd-taesd";
const DREAMSHAPER: &str = "@cf/lykon/dreamshaper-8-lcm";

/// An app whose model cache (its own, named after `test`) holds the tiny test model (also under
/// the id that decodes it through TAESD).
fn app_with_tiny_sd(test: &str) -> App {
    app_for(tiny_sd_ember(test), ember_http::HttpConfig::default())
}

/// An Ember whose model cache (its own, named after `test`) holds the tiny test model (also under
/// the id that decodes it through TAESD).
fn tiny_sd_ember(test: &str) -> Arc<ember_core::Ember> {
    let home = std::env::temp_dir().join(format!("ember-tiny-sd-{test}-{}", std::process::id()));
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../ember-engines/tests/fixtures/diffusion/tiny-sd");
    for id in [TINY, TINY_TAESD] {
        install_fixture(&home, id, std::slice::from_ref(&fixture));
    }
    Arc::new(ember::open_ember(&home, None, Default::default(), &engine_config(1)).unwrap())
}

fn app_for(ember: Arc<ember_core::Ember>, config: ember_http::HttpConfig) -> App {
    app_on(
        ember,
        config,
        ember_access::AccessConfig::default(),
        Arc::new(ember_access::clock::SystemClock),
    )
}

/// The width and height of a PNG.
fn png_size(bytes: &[u8]) -> (u32, u32) {
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    let image = image::load_from_memory(bytes).unwrap();
    (image.width(), image.height())
}

fn generate(input: Value) -> axum::http::Request<axum::body::Body> {
    post(&format!("{RUN}{TINY}"), input.to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_catalog_model_without_weights_says_how_to_pull_it() {
    let reply = send(
        &app(),
        post(
            &format!("{RUN}{DREAMSHAPER}"),
            json!({"prompt": "a cat"}).to_string(),
        ),
    )
    .await;
    let message = reply.rest_error(400, 5007);
    assert!(
        message.contains("ember models pull @cf/lykon/dreamshaper-8-lcm")
            && message.contains("8 GB"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_test_model_answers_pngs_on_rest_and_the_binding() {
    let app = app_with_tiny_sd("routes");
    // Its native size, 256×256.
    let reply = send(
        &app,
        generate(json!({"prompt": "a cat", "num_steps": 2, "seed": 5})),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(reply.header("content-type"), "image/png");
    assert_eq!(png_size(&reply.body), (256, 256));
    // The same seed gives the same image; another seed another.
    let again = send(
        &app,
        generate(json!({"prompt": "a cat", "num_steps": 2, "seed": 5})),
    )
    .await;
    assert_eq!(again.body, reply.body);
    let other = send(
        &app,
        generate(json!({"prompt": "a cat", "num_steps": 2, "seed": 6})),
    )
    .await;
    assert_ne!(other.body, reply.body);

    // The same seed through TAESD's decoder: the same size, other pixels.
    let tiny_decoder = send(
        &app,
        post(
            &format!("{RUN}{TINY_TAESD}"),
            json!({"prompt": "a cat", "num_steps": 2, "seed": 5}).to_string(),
        ),
    )
    .await;
    assert_eq!(
        tiny_decoder.status,
        StatusCode::OK,
        "{:?}",
        tiny_decoder.body
    );
    assert_eq!(png_size(&tiny_decoder.body), (256, 256));
    assert_ne!(tiny_decoder.body, reply.body);

    // The asked size, and image-to-image from the first image (as bytes and as base64).
    let sized = send(
        &app,
        generate(
            json!({"prompt": "a cat", "num_steps": 2, "width": 320, "height": 256,
                        "image": reply.body.to_vec(), "strength": 0.5}),
        ),
    )
    .await;
    assert_eq!(sized.status, StatusCode::OK, "{:?}", sized.body);
    assert_eq!(png_size(&sized.body), (320, 256));
    let encoded = base64::engine::general_purpose::STANDARD.encode(&reply.body);
    let from_base64 = send(
        &app,
        generate(
            json!({"prompt": "a cat", "num_steps": 4, "image_b64": encoded, "strength": 0.5,
                        "negative_prompt": "blurry", "guidance": 3}),
        ),
    )
    .await;
    assert_eq!(from_base64.status, StatusCode::OK, "{:?}", from_base64.body);
    assert_eq!(png_size(&from_base64.body), (256, 256));

    // The binding gets the PNG itself.
    let reply = send(
        &app,
        binding_request("/run", TINY, json!({"prompt": "a cat", "num_steps": 1})),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(reply.header("content-type"), "image/png");
    assert_eq!(png_size(&reply.body), (256, 256));

    // Priced per 512×512 tile and per step, as FLUX.1 schnell: one tile, two steps.
    let usage = send(&app, get("/client/v4/accounts/local/ai/usage")).await;
    let text = String::from_utf8_lossy(&usage.body).to_string();
    assert!(text.contains(TINY), "{text}");
    let reply = send(
        &app,
        get("/client/v4/accounts/a/ai/models/search?task=Text-to-Image"),
    )
    .await;
    let models = reply.json()["result"].as_array().unwrap().clone();
    let tiny = models.iter().find(|m| m["name"] == TINY).unwrap();
    let price = tiny["properties"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["property_id"] == "price")
        .unwrap()
        .clone();
    let units: Vec<&str> = price["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["unit"].as_str().unwrap())
        .collect();
    assert_eq!(units, ["per 512x512 tile", "per step"], "{price}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_refused_naming_the_field() {
    let app = app_with_tiny_sd("bad-input");
    let png = send(&app, generate(json!({"prompt": "a cat", "num_steps": 1})))
        .await
        .body;
    let mut truncated = png.to_vec();
    truncated.truncate(truncated.len() / 2);
    for (input, field) in [
        (json!({}), "/"),
        (json!({"prompt": ""}), "/prompt"),
        (json!({"prompt": "a cat", "width": 500}), "/width"),
        (json!({"prompt": "a cat", "height": 4096}), "/height"),
        (json!({"prompt": "a cat", "num_steps": 21}), "/num_steps"),
        (json!({"prompt": "a cat", "strength": 2}), "/strength"),
        (
            json!({"prompt": "a cat", "image": b"not an image".to_vec()}),
            "/image",
        ),
        (json!({"prompt": "a cat", "image": truncated}), "/image"),
        (
            json!({"prompt": "a cat", "image": png.to_vec(), "mask": png.to_vec()}),
            "/mask",
        ),
        (
            json!({"prompt": "a cat", "image": png.to_vec(), "num_steps": 3, "strength": 0.1}),
            "/strength",
        ),
    ] {
        let reply = send(&app, generate(input.clone())).await;
        let message = reply.rest_error(400, 5006);
        assert!(
            message.contains(&format!("'{field}'")),
            "{input}: {message}"
        );
    }
    // An image too large for this machine's memory is refused before it runs.
    let reply = send(
        &app,
        generate(json!({"prompt": "a cat", "width": 2048, "height": 2048})),
    )
    .await;
    let message = reply.rest_error(400, 3030);
    assert!(
        message.contains("2048×2048") && message.contains("MB"),
        "{message}"
    );
    // Still serving.
    let reply = send(&app, generate(json!({"prompt": "a cat", "num_steps": 1}))).await;
    assert_eq!(reply.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_timed_out_generation_stops_between_steps() {
    let ember = tiny_sd_ember("timeout");
    let hasty = ember_http::HttpConfig {
        request_timeout: std::time::Duration::from_millis(1500),
        ..Default::default()
    };
    let (hasty, app) = (
        app_for(ember.clone(), hasty),
        app_for(ember, Default::default()),
    );
    let long = json!({"prompt": "a cat", "num_steps": 20, "width": 512, "height": 512});
    let reply = send(&hasty, generate(long)).await;
    reply.rest_error(408, 3007);
    // A one-step request waits for the model thread, which stops the first run at its next step.
    // Then fewer than the first run's 20 steps have run, counting the one-step request's.
    let reply = send(&app, generate(json!({"prompt": "a cat", "num_steps": 1}))).await;
    assert_eq!(reply.status, StatusCode::OK);
    let metrics = String::from_utf8_lossy(&send(&app, get("/metrics")).await.body).to_string();
    let steps: u32 = metrics
        .lines()
        .find(|line| line.starts_with("ember_denoising_step_seconds_count"))
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(steps < 20, "{steps} steps ran");
}

#[tokio::test(flavor = "multi_thread")]
async fn openai_image_generations_answer_base64_and_urls() {
    let app = app_with_tiny_sd("openai");
    let reply = send(
        &app,
        post(
            "/v1/images/generations",
            json!({"model": TINY, "prompt": "a cat", "n": 2, "size": "256x320",
                   "response_format": "b64_json", "num_steps": 1})
            .to_string(),
        ),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let body = reply.json();
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    let images: Vec<Vec<u8>> = data
        .iter()
        .map(|item| {
            base64::engine::general_purpose::STANDARD
                .decode(item["b64_json"].as_str().unwrap())
                .unwrap()
        })
        .collect();
    assert!(images.iter().all(|png| png_size(png) == (256, 320)));
    assert_ne!(images[0], images[1], "each image has its own seed");
    assert!(body["created"].as_u64().unwrap() > 0);

    // OpenAI's default answer: a URL, served by this server.
    let reply = send(
        &app,
        post(
            "/v1/images/generations",
            json!({"model": TINY, "prompt": "a cat", "num_steps": 1}).to_string(),
        ),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let url = reply.json()["data"][0]["url"].as_str().unwrap().to_string();
    let path = &url[url.find("/v1/images/generated/").unwrap()..];
    let image = send(&app, get(path)).await;
    assert_eq!(image.status, StatusCode::OK);
    assert_eq!(png_size(&image.body), (256, 256));
    let missing = send(&app, get("/v1/images/generated/nothing.png")).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);

    for (input, field) in [
        (
            json!({"model": TINY, "prompt": "a cat", "size": "big"}),
            "'size'",
        ),
        (
            json!({"model": TINY, "prompt": "a cat", "size": "250x256"}),
            "'size'",
        ),
        (json!({"model": TINY, "prompt": "a cat", "n": 11}), "'n'"),
        (
            json!({"model": TINY, "prompt": "a cat", "response_format": "gif"}),
            "'response_format'",
        ),
        (json!({"model": TINY}), "'prompt'"),
        (json!({"prompt": "a cat"}), "'model'"),
        (
            json!({"model": "@cf/microsoft/resnet-50", "prompt": "a cat"}),
            "'model'",
        ),
    ] {
        let reply = send(&app, post("/v1/images/generations", input.to_string())).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{input}");
        let message = reply.json()["error"]["message"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(message.contains(field), "{input}: {message}");
    }
}
