//! Image classification on the real EfficientNet-Lite0 through the routes: `@cf/microsoft/resnet-50`
//! (served by EfficientNet-Lite0 where ResNet-50's weights are not installed) from the raw body,
//! byte arrays and base64 on REST and the binding's stream form, usage priced per image, and bad
//! images (not an image, truncated, 1×1, a 20000×20000 header) refused naming the field. The
//! engine test (`ember-engines/tests/vision_reference.rs`) compares logits with the reference.
//! Then DETR's id: without its weights, served by the stand-in MB3-CenterNet (the espresso is a
//! cup); with the tiny generated DETR installed under the id, by DETR; both in the contract's shape.

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use common::*;
use serde_json::{Value, json};
use std::path::PathBuf;

const RUN: &str = "/client/v4/accounts/local/ai/run/";
const RESNET: &str = "@cf/microsoft/resnet-50";
const EFFICIENTNET: &str = "@hf/google/efficientnet-lite0";

fn image(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../ember-engines/tests/fixtures/vision/images")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn raw(path: &str, content_type: &str, bytes: Vec<u8>) -> Request<Body> {
    Request::post(path)
        .header(header::CONTENT_TYPE, content_type)
        .body(Body::from(bytes))
        .unwrap()
}

/// The five labels of an answer, checked for shape: scores in (0, 1], descending.
fn labels(result: &Value) -> Vec<String> {
    let items = result.as_array().unwrap();
    assert_eq!(items.len(), 5, "{result}");
    let scores: Vec<f64> = items.iter().map(|i| i["score"].as_f64().unwrap()).collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{result}");
    assert!(scores.iter().all(|s| *s > 0.0 && *s <= 1.0), "{result}");
    items
        .iter()
        .map(|i| i["label"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn resnet_id_classifies_images_in_every_input_form() {
    use base64::Engine as _;
    let app = app();
    let cat = image("cat.png");
    let path = format!("{RUN}{RESNET}");
    let requests = [
        raw(&path, "image/png", cat.clone()),
        raw(&path, "application/octet-stream", cat.clone()),
        post(&path, json!({ "image": cat }).to_string()),
        post(
            &path,
            json!({ "image": base64::engine::general_purpose::STANDARD.encode(&cat) }).to_string(),
        ),
    ];
    for request in requests {
        let reply = send(&app, request).await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        assert_eq!(reply.header("x-ember-model"), EFFICIENTNET);
        let labels = labels(&reply.json()["result"]);
        assert_eq!(labels[0], "Egyptian cat");
    }
    // The binding's stream form.
    let stream = Request::post("/run?version=3")
        .header(header::CONTENT_TYPE, "image/png")
        .header("cf-consn-model-id", RESNET)
        .body(Body::from(image("espresso.png")))
        .unwrap();
    let reply = send(&app, stream).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(labels(&reply.json())[0], "espresso");
    // ... and its JSON form, `{inputs: {image: [bytes]}}`.
    let inputs = json!({ "image": image("espresso.png") });
    let reply = send(&app, binding_request("/run", RESNET, inputs)).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(labels(&reply.json())[0], "espresso");

    // The catalog lists the task and its price per image.
    let reply = send(
        &app,
        get("/client/v4/accounts/a/ai/models/search?task=Image+Classification"),
    )
    .await;
    let models = reply.json()["result"].as_array().unwrap().clone();
    let resnet = models.iter().find(|m| m["name"] == RESNET).unwrap();
    assert_eq!(resnet["task"]["name"], "Image Classification");
    let price = resnet["properties"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["property_id"] == "price")
        .unwrap();
    assert_eq!(price["value"][0]["unit"], "per M images");
    assert_eq!(price["value"][0]["price"], 2.509);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_images_are_refused_naming_the_field() {
    let app = app();
    let path = format!("{RUN}{RESNET}");
    let mut truncated = image("cat.png");
    truncated.truncate(truncated.len() / 3);
    let mut header_bomb = image("cat.png");
    // IHDR's width and height, big-endian, at bytes 16..24, then its CRC.
    header_bomb[16..20].copy_from_slice(&20_000u32.to_be_bytes());
    header_bomb[20..24].copy_from_slice(&20_000u32.to_be_bytes());
    let mut crc = flate2::Crc::new();
    crc.update(&header_bomb[12..29]);
    header_bomb[29..33].copy_from_slice(&crc.sum().to_be_bytes());
    let one_pixel = {
        let mut bytes = Vec::new();
        image::RgbImage::new(1, 1)
            .write_to(
                &mut std::io::Cursor::new(&mut bytes),
                image::ImageFormat::Png,
            )
            .unwrap();
        bytes
    };
    for (bytes, says) in [
        (b"definitely not an image".to_vec(), "not an image"),
        (truncated, "could not be decoded"),
        (one_pixel, "1×1"),
        (header_bomb, "20000×20000"),
    ] {
        let reply = send(&app, raw(&path, "image/png", bytes)).await;
        let message = reply.rest_error(400, 5006);
        assert!(
            message.contains("/image") && message.contains(says),
            "{message}"
        );
    }
    // Still serving.
    let reply = send(&app, raw(&path, "image/png", image("cat.png"))).await;
    assert_eq!(reply.status, StatusCode::OK);
}

const DETR: &str = "@cf/facebook/detr-resnet-50";
const CENTERNET: &str = "@hf/vladmandic/mb3-centernet";

/// The objects of an answer, checked for the contract's shape: scores above `min_score`, best
/// first, boxes in whole pixels, each with its left edge before its right.
fn objects(result: &Value, min_score: f64) -> Vec<Value> {
    let objects = result.as_array().unwrap().clone();
    assert!(!objects.is_empty(), "{result}");
    let scores: Vec<f64> = objects
        .iter()
        .map(|o| o["score"].as_f64().unwrap())
        .collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{result}");
    assert!(scores.iter().all(|s| *s > min_score), "{result}");
    for object in &objects {
        assert!(object["label"].is_string());
        for corner in ["xmin", "ymin", "xmax", "ymax"] {
            assert!(object["box"][corner].is_i64(), "{object}");
        }
        assert!(object["box"]["xmin"].as_i64() < object["box"]["xmax"].as_i64());
    }
    objects
}

#[tokio::test(flavor = "multi_thread")]
async fn detr_id_is_served_by_centernet_then_by_detr_once_installed() {
    // DETR's weights are not installed: MB3-CenterNet stands in, and says so.
    let reply = send(
        &app(),
        raw(&format!("{RUN}{DETR}"), "image/png", image("espresso.png")),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(reply.header("x-ember-model"), CENTERNET);
    let found = objects(&reply.json()["result"], 0.2);
    assert_eq!(found[0]["label"], "cup", "{found:?}");
    // Inside the 450×300 photo.
    assert!(
        found[0]["box"]["xmax"].as_i64() <= Some(450)
            && found[0]["box"]["ymax"].as_i64() <= Some(300)
    );

    // The tiny generated DETR (`ember-engines/tests/fixtures/vision/detr`, the architecture
    // checked against transformers) installed under the catalog id.
    let home = std::env::temp_dir().join(format!("ember-detr-{}", std::process::id()));
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../ember-engines/tests/fixtures/vision/detr");
    install_fixture(&home, DETR, &[fixture]);
    let ember = ember::open_ember(&home, None, Default::default(), &engine_config(1)).unwrap();
    let app = app_on(
        std::sync::Arc::new(ember),
        ember_http::HttpConfig::default(),
        ember_access::AccessConfig::default(),
        std::sync::Arc::new(ember_access::clock::SystemClock),
    );
    let reply = send(
        &app,
        raw(&format!("{RUN}{DETR}"), "image/png", image("cat.png")),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(reply.header("x-ember-model"), DETR);
    // The generated model is no detector, but its answers have the contract's shape, above DETR's
    // threshold.
    objects(&reply.json()["result"], 0.5);
    let reply = send(
        &app,
        raw(&format!("{RUN}{DETR}"), "image/png", b"GIF89a".to_vec()),
    )
    .await;
    assert!(reply.rest_error(400, 5006).contains("/image"));
    std::fs::remove_dir_all(home).unwrap();
}
